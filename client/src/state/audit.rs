//! The site's append-only audit log (`DIR/audit.jsonl`): one JSON object a line, for the
//! site's data officer. Every join, task and plan accepted, every round trained (model
//! received, update sent, examples, ε spent), every evaluation and every refusal.

use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StateError;

/// One thing the site did or refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuditEvent {
    /// The client started.
    Started { site: String, coordinator: String, policy: Option<String>, policy_sha256: Option<String> },
    /// The site joined and accepted the coordinator's task; `columns` are the only column
    /// names it sent.
    Joined { client_id: String, task: String, task_fingerprint: String, columns: Vec<String>, min_category_count: u64 },
    /// The site accepted a preprocessing plan and encoded its data with it.
    PlanAccepted { plan_fingerprint: String, features: u64, parameters: u64 },
    /// The site trained a round and sent its update.
    Trained {
        round: u32,
        model_hash: String,
        /// SHA-256 of the values sent (empty under secure aggregation: only masked values leave).
        update_sha256: String,
        update_bytes: u64,
        examples: u64,
        local_epochs: u32,
        /// Differential privacy of the round: "local", "central (declared)" or "none".
        dp: String,
        /// The site's total ε after this round (infinite once any round had no DP).
        epsilon: Option<f64>,
        secure_aggregation: bool,
    },
    /// The site was asked to train a round and could not (`cause`, e.g. `diverged`): it sent
    /// the coordinator that cause and nothing else.
    Declined { round: u32, model_hash: String, cause: String },
    /// The site evaluated a global model on its test split.
    Evaluated { round: u32, model_hash: String, examples: u64 },
    /// The site refused what the coordinator asked, by its policy or its budget.
    Refused { round: Option<u32>, rule: String, message: String },
    /// The site left the federation.
    Left { reason: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    at: String,
    #[serde(flatten)]
    event: AuditEvent,
}

/// The open log, appended to.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: std::fs::File,
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let file = std::fs::File::options().create(true).append(true).open(path).map_err(|source| StateError::Io { path: path.to_owned(), source })?;
        Ok(Self { path: path.to_owned(), file })
    }

    /// Appends one event and syncs it: what the log says happened, happened.
    pub fn append(&mut self, event: AuditEvent) -> Result<(), StateError> {
        let at = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        let mut line = serde_json::to_string(&Record { at, event }).map_err(|e| StateError::Corrupt { path: self.path.clone(), message: e.to_string() })?;
        line.push('\n');
        let io = |source| StateError::Io { path: self.path.clone(), source };
        self.file.write_all(line.as_bytes()).map_err(io)?;
        self.file.sync_data().map_err(|source| StateError::Io { path: self.path.clone(), source })
    }
}

/// Reads a log; a line that is not an event is an error naming the file and line.
pub fn read(path: &Path) -> Result<Vec<(String, AuditEvent)>, StateError> {
    let file = std::fs::File::open(path).map_err(|source| StateError::Io { path: path.to_owned(), source })?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| StateError::Io { path: path.to_owned(), source })?;
        if line.trim().is_empty() {
            continue;
        }
        let r: Record = serde_json::from_str(&line)
            .map_err(|e| StateError::Corrupt { path: path.to_owned(), message: format!("line {}, column {}: {e}", i + 1, e.column()) })?;
        out.push((r.at, r.event));
    }
    Ok(out)
}

/// A summary a data officer can read: what ran on the site's data, what left it, what was
/// refused.
pub fn summary(path: &Path) -> Result<String, StateError> {
    let events = read(path)?;
    let mut s = String::new();
    let (first, last) = match (events.first(), events.last()) {
        (Some(f), Some(l)) => (f.0.as_str(), l.0.as_str()),
        _ => return Ok(format!("{}: no events yet\n", path.display())),
    };
    let _ = writeln!(s, "{}: {} events, {first} to {last}", path.display(), events.len());
    let mut tasks: Vec<(String, String, u32)> = Vec::new();
    let (mut starts, mut plans, mut trained, mut evaluated, mut bytes, mut examples) = (0u32, 0u32, 0u32, 0u32, 0u64, 0u64);
    let mut epsilon = None;
    let mut refusals = Vec::new();
    let mut declined = Vec::new();
    let mut columns = None;
    for (at, e) in &events {
        match e {
            AuditEvent::Started { .. } => starts += 1,
            AuditEvent::Joined { task, task_fingerprint, columns: c, .. } => {
                match tasks.iter_mut().find(|t| &t.1 == task_fingerprint) {
                    Some(t) => t.2 += 1,
                    None => tasks.push((task.clone(), task_fingerprint.clone(), 1)),
                }
                columns = Some(c.clone());
            }
            AuditEvent::PlanAccepted { .. } => plans += 1,
            AuditEvent::Trained { update_bytes, examples: n, epsilon: eps, .. } => {
                trained += 1;
                bytes = bytes.saturating_add(*update_bytes);
                examples = examples.saturating_add(*n);
                epsilon = *eps;
            }
            AuditEvent::Evaluated { .. } => evaluated += 1,
            AuditEvent::Declined { round, cause, .. } => declined.push(format!("{round} ({cause})")),
            AuditEvent::Refused { round, rule, message } => refusals.push((at.clone(), *round, rule.clone(), message.clone())),
            AuditEvent::Left { .. } => {}
        }
    }
    let _ = writeln!(s, "  client starts: {starts}");
    for (name, fp, joins) in &tasks {
        let _ = writeln!(s, "  task accepted: `{name}` {fp} ({joins} joins)");
    }
    if let Some(c) = columns {
        let _ = writeln!(s, "  columns sent (names only, last join): {}", c.join(", "));
    }
    let _ = writeln!(s, "  plans accepted: {plans}");
    let _ = writeln!(s, "  rounds trained: {trained} (updates sent: {bytes} bytes; {examples} training examples counted); evaluations: {evaluated}");
    match epsilon {
        Some(e) if e.is_finite() => {
            let _ = writeln!(s, "  privacy: ε = {e:.3} spent in total after the last round (the ledger's δ)");
        }
        Some(_) => {
            let _ = writeln!(s, "  privacy: rounds without differential privacy were trained (ε unbounded)");
        }
        None => {}
    }
    if !declined.is_empty() {
        let _ = writeln!(s, "  rounds declined (only the cause was sent): {}", declined.join(", "));
    }
    let _ = writeln!(s, "  refusals: {}", refusals.len());
    for (at, round, rule, message) in refusals {
        let round = round.map_or_else(String::new, |r| format!(" round {r}"));
        let _ = writeln!(s, "    {at}{round}: {rule}: {message}");
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_appended_and_summarised_and_a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        log.append(AuditEvent::Joined {
            client_id: "h#1".into(),
            task: "hospitals".into(),
            task_fingerprint: "ab".repeat(32),
            columns: vec!["age".into(), "num".into()],
            min_category_count: 5,
        })
        .unwrap();
        log.append(AuditEvent::Trained {
            round: 1,
            model_hash: "m".into(),
            update_sha256: "u".into(),
            update_bytes: 400,
            examples: 10,
            local_epochs: 1,
            dp: "local".into(),
            epsilon: Some(1.5),
            secure_aggregation: false,
        })
        .unwrap();
        log.append(AuditEvent::Refused { round: Some(2), rule: "bounds.max_local_epochs".into(), message: "9 local epochs asked".into() }).unwrap();
        drop(log);
        // Reopening appends; it never truncates.
        AuditLog::open(&path).unwrap().append(AuditEvent::Left { reason: "done".into() }).unwrap();
        assert_eq!(read(&path).unwrap().len(), 4);
        let s = summary(&path).unwrap();
        assert!(s.contains("rounds trained: 1") && s.contains("400 bytes") && s.contains("ε = 1.500"), "{s}");
        assert!(s.contains("refusals: 1") && s.contains("round 2: bounds.max_local_epochs"), "{s}");
        assert!(s.contains("columns sent (names only, last join): age, num"), "{s}");

        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"at\":\"x\",\"event\":\"nonsense\"}\n").unwrap();
        let err = summary(&path).unwrap_err().to_string();
        assert!(err.contains("audit.jsonl") && err.contains("line 5"), "{err}");
    }
}
