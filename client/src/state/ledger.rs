//! The site's privacy ledger: every round it trained, with the noise that protected it.
//!
//! The site counts each round it trains in with sampling rate 1 (it knows it was selected,
//! so it claims no amplification by sampling): conservative, and nothing the coordinator says
//! can lower it. A round is written down before its update leaves the site, so a crash between
//! the two can only over-count.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use flotilla_common::privacy::{self, Step};
use serde::{Deserialize, Serialize};

use super::StateError;

const FORMAT: u32 = 1;

/// Rounds trained under one noise multiplier.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpRounds {
    pub noise_multiplier: f64,
    pub rounds: u64,
}

/// What the site has spent, over every federation it took part in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ledger {
    pub format: u32,
    /// Rounds trained with differential privacy, by noise multiplier.
    pub dp_rounds: Vec<DpRounds>,
    /// Rounds trained without differential privacy (no bound on ε).
    pub plain_rounds: u64,
    /// Rounds trained per task fingerprint (the policy's `bounds.max_rounds`).
    pub rounds_by_task: BTreeMap<String, u64>,
    /// DP-SGD steps (record-level DP), by sampling rate and noise multiplier.
    #[serde(default)]
    pub sgd_steps: Vec<Step>,
}

impl Default for Ledger {
    fn default() -> Self {
        Self { format: FORMAT, dp_rounds: Vec::new(), plain_rounds: 0, rounds_by_task: BTreeMap::new(), sgd_steps: Vec::new() }
    }
}

impl Ledger {
    /// Reads a ledger; a missing file is an empty ledger, anything unreadable is an error
    /// naming line and column (a budget that cannot be read is not reset).
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(StateError::Io { path: path.to_owned(), source }),
        };
        let corrupt = |message: String| StateError::Corrupt { path: path.to_owned(), message };
        let ledger: Ledger = serde_json::from_str(&text).map_err(|e| corrupt(format!("line {}, column {}: {e}", e.line(), e.column())))?;
        if ledger.format != FORMAT {
            return Err(corrupt(format!("ledger format {} is not {FORMAT}, the one this client reads", ledger.format)));
        }
        if let Some(bad) = ledger.dp_rounds.iter().find(|r| !(r.noise_multiplier.is_finite() && r.noise_multiplier > 0.0)) {
            return Err(corrupt(format!("noise multiplier {} must be positive", bad.noise_multiplier)));
        }
        if let Some(bad) = ledger.sgd_steps.iter().find(|s| !(s.sigma.is_finite() && s.sigma > 0.0 && (0.0..=1.0).contains(&s.q))) {
            return Err(corrupt(format!("DP-SGD steps at rate {} and noise multiplier {} are not valid", bad.q, bad.sigma)));
        }
        Ok(ledger)
    }

    /// Writes the ledger durably: temporary file, fsync, rename, fsync of the directory.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let io = |p: &Path| {
            let p = p.to_owned();
            move |source| StateError::Io { path: p, source }
        };
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| StateError::Corrupt { path: path.to_owned(), message: e.to_string() })?;
        let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(text.as_bytes()).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
        if let Some(dir) = path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            // Makes the rename durable; not every filesystem allows it on a directory.
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Writes down one more round of task `task`, protected by noise multiplier `sigma`
    /// (`None`: no differential privacy).
    pub fn record(&mut self, task: &str, sigma: Option<f64>) {
        match sigma {
            Some(z) => match self.dp_rounds.iter_mut().find(|r| r.noise_multiplier == z) {
                Some(r) => r.rounds = r.rounds.saturating_add(1),
                None => self.dp_rounds.push(DpRounds { noise_multiplier: z, rounds: 1 }),
            },
            None => self.plain_rounds = self.plain_rounds.saturating_add(1),
        }
        let n = self.rounds_by_task.entry(task.to_owned()).or_default();
        *n = n.saturating_add(1);
    }

    /// Counts one round of task `task` protected by DP-SGD alone (its steps: [`Ledger::record_sgd`]).
    pub fn record_round(&mut self, task: &str) {
        let n = self.rounds_by_task.entry(task.to_owned()).or_default();
        *n = n.saturating_add(1);
    }

    /// Writes down DP-SGD steps (with the round that took them: [`Ledger::record`]).
    pub fn record_sgd(&mut self, q: f64, sigma: f64, count: u64) {
        match self.sgd_steps.iter_mut().find(|s| s.q == q && s.sigma == sigma) {
            Some(s) => s.count = s.count.saturating_add(count),
            None => self.sgd_steps.push(Step { q, sigma, count }),
        }
    }

    /// Rounds trained of task `task`.
    pub fn rounds_of(&self, task: &str) -> u64 {
        self.rounds_by_task.get(task).copied().unwrap_or(0)
    }

    /// Every round trained.
    pub fn rounds(&self) -> u64 {
        self.rounds_by_task.values().fold(0, |a, b| a.saturating_add(*b))
    }

    /// ε at `delta` of every recorded round plus `next` more at noise multiplier `sigma`;
    /// infinite once a round without DP was trained.
    /// Client-level rounds (rate 1) and DP-SGD steps compose in one account: a bound on what a
    /// site's whole data reveals bounds what any one record of it reveals.
    pub fn epsilon_with(&self, next: Option<(f64, u64)>, delta: f64) -> Result<f64, String> {
        self.epsilon_with_steps(next.map(|(sigma, count)| Step { q: 1.0, sigma, count }).as_slice(), delta)
    }

    /// ε at `delta` of every recorded round and step plus `next`.
    pub fn epsilon_with_steps(&self, next: &[Step], delta: f64) -> Result<f64, String> {
        if self.plain_rounds > 0 {
            return Ok(f64::INFINITY);
        }
        let mut steps: Vec<Step> = self.dp_rounds.iter().map(|r| Step { q: 1.0, sigma: r.noise_multiplier, count: r.rounds }).collect();
        steps.extend(self.sgd_steps.iter().copied());
        steps.extend(next.iter().copied());
        if steps.iter().all(|s| s.count == 0) {
            return Ok(0.0);
        }
        privacy::epsilon(&steps, delta, privacy::accountant::default_orders()).map(|p| p.epsilon).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_survives_a_save_and_refuses_to_be_reset_by_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        assert_eq!(Ledger::load(&path).unwrap(), Ledger::default());
        let mut l = Ledger::default();
        l.record("t1", Some(1.0));
        l.record("t1", Some(1.0));
        l.record("t2", Some(2.0));
        l.save(&path).unwrap();
        let again = Ledger::load(&path).unwrap();
        assert_eq!(again, l);
        assert_eq!((again.rounds_of("t1"), again.rounds()), (2, 3));
        let two = again.epsilon_with(None, 1e-5).unwrap();
        let three = again.epsilon_with(Some((1.0, 1)), 1e-5).unwrap();
        assert!(two > 0.0 && three > two, "{two} {three}");

        std::fs::write(&path, "{\"format\": 1,\n \"dp_rounds\": [oops]}").unwrap();
        let err = Ledger::load(&path).unwrap_err().to_string();
        assert!(err.contains("ledger.json") && err.contains("line 2"), "{err}");
        std::fs::write(&path, r#"{"format":1,"dp_rounds":[{"noise_multiplier":-1.0,"rounds":1}],"plain_rounds":0,"rounds_by_task":{}}"#).unwrap();
        assert!(Ledger::load(&path).unwrap_err().to_string().contains("must be positive"));
    }

    #[test]
    fn dp_sgd_steps_compose_with_client_level_rounds_in_one_account() {
        let mut l = Ledger::default();
        l.record_round("t");
        l.record_sgd(0.1, 1.1, 300);
        let sgd = l.epsilon_with(None, 1e-5).unwrap();
        let alone = flotilla_common::privacy::epsilon(&[Step { q: 0.1, sigma: 1.1, count: 300 }], 1e-5, flotilla_common::privacy::accountant::default_orders())
            .unwrap();
        assert!((sgd - alone.epsilon).abs() < 1e-12, "a DP-SGD round alone is no plain round: {sgd}");
        l.record_sgd(0.1, 1.1, 300);
        assert_eq!(l.sgd_steps.len(), 1, "same rate and noise: one entry");
        l.record("t", Some(2.0));
        let both = l.epsilon_with_steps(&[Step { q: 0.1, sigma: 1.1, count: 30 }], 1e-5).unwrap();
        assert!(both > l.epsilon_with(None, 1e-5).unwrap() && l.epsilon_with(None, 1e-5).unwrap() > sgd);
    }

    #[test]
    fn a_round_without_dp_makes_epsilon_unbounded() {
        let mut l = Ledger::default();
        assert_eq!(l.epsilon_with(None, 1e-5).unwrap(), 0.0);
        l.record("t", None);
        assert_eq!(l.epsilon_with(Some((1.0, 1)), 1e-5).unwrap(), f64::INFINITY);
    }
}
