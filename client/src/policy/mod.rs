//! The site's policy: what this site accepts from any coordinator, written by its data
//! officer (`flotilla-client --policy site-policy.toml`) and enforced by its own binary.
//!
//! The coordinator may be compromised or simply wrong, so nothing it sends is trusted: the
//! task is checked at join (and again at every rejoin), the plan before the data is encoded
//! with it, each piece of work before it runs, and a model's announced size before it is
//! downloaded. What the site runs itself (local DP, its k-threshold, its budget) is enforced;
//! what the coordinator adds (central DP) can only be checked as declared.
//!
//! Every rule is optional: an absent rule allows. An empty policy is today's behaviour.

mod check;
mod diff;
mod memory;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use flotilla_common::Task;
use flotilla_common::strategy::StrategyName;
use serde::Deserialize;

pub use check::{PlanFacts, Violation, model_params};
pub use diff::task_diff;
pub use memory::estimate_bytes;

/// A site's policy file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SitePolicy {
    /// The task pinned, if the site wants it.
    #[serde(default)]
    pub task: TaskPin,
    /// Columns that may be read: everything else is never read past the header.
    #[serde(default)]
    pub columns: ColumnRules,
    /// Bounds on the model and the training.
    #[serde(default)]
    pub bounds: Bounds,
    /// The privacy floor.
    #[serde(default)]
    pub privacy: PrivacyFloor,
    /// What the site's machine gives to the federation.
    #[serde(default)]
    pub resources: Resources,
    /// Where the policy came from (named in refusals); not part of the file.
    #[serde(skip)]
    pub source: PathBuf,
}

/// The one task the site runs: an approved task file, or its fingerprint.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskPin {
    /// An approved task file (relative to the policy file). Read once, at start.
    pub approved: Option<PathBuf>,
    /// The SHA-256 of an approved task (`flotilla-client policy fingerprint --task FILE`).
    pub fingerprint: Option<String>,
    /// The approved task, loaded from `approved`.
    #[serde(skip)]
    pub loaded: Option<Task>,
}

/// Columns the site lets the federation use.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnRules {
    /// Columns the task may name as its label.
    pub labels: Option<BTreeSet<String>>,
    /// Columns that may be features. With `labels`, the only columns read from the file.
    pub features: Option<BTreeSet<String>>,
}

/// Bounds on what the federation may ask of the site.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bounds {
    /// Most parameters of the model.
    pub max_parameters: Option<u64>,
    /// Most bytes of the model on the wire (4 a parameter).
    pub max_model_bytes: Option<u64>,
    /// Fewest rows per batch: batches of 1 over many epochs make an update close to a copy of
    /// single records.
    pub min_batch_size: Option<usize>,
    /// Most local epochs per round.
    pub max_local_epochs: Option<u32>,
    /// Most rounds this site trains in for one task (counted in its state directory).
    pub max_rounds: Option<u64>,
    /// Strategies the site takes part in.
    pub strategies: Option<BTreeSet<StrategyName>>,
}

/// Which differential privacy the site requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequiredDp {
    /// Local DP: the site clips and noises its own update (enforced).
    Local,
    /// Central DP: the coordinator announces it adds noise (declared, not verifiable).
    Central,
    /// Record-level DP: the site runs DP-SGD on its own rows (enforced).
    Record,
    /// Distributed DP: the site adds its share of the noise under secure aggregation (enforced).
    Distributed,
    /// Local or central.
    Any,
}

/// The privacy floor.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyFloor {
    /// Refuse tasks without this kind of DP.
    pub require: Option<RequiredDp>,
    /// Smallest noise multiplier z the site accepts.
    pub min_noise_multiplier: Option<f64>,
    /// Largest clip norm S the site accepts.
    pub max_clip_norm: Option<f64>,
    /// The site's k: no category is reported for fewer of its rows (raises the task's k).
    pub min_category_count: Option<u64>,
    /// The site's privacy budget over every round it ever trains (with `--state-dir`, across
    /// restarts); the stricter of this and `--max-epsilon` applies.
    pub max_epsilon: Option<f64>,
    /// δ of that budget.
    pub delta: Option<f64>,
    /// Refuse tasks without secure aggregation.
    #[serde(default)]
    pub require_secure_aggregation: bool,
}

/// What the site's machine gives.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Compute threads (the model does not depend on them).
    pub threads: Option<usize>,
    /// A memory ceiling in MiB, checked against an estimate of the task's needs before training.
    pub max_memory_mb: Option<u64>,
}

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl SitePolicy {
    /// Reads and checks a policy file; an approved task it names is read too.
    pub fn from_file(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io { path: path.to_owned(), source })?;
        let mut policy = Self::from_toml(&text, path)?;
        if let Some(approved) = &policy.task.approved {
            let file = path.parent().unwrap_or(Path::new(".")).join(approved);
            let task = Task::from_file(&file).map_err(|e| PolicyError::Invalid { path: path.to_owned(), message: format!("task.approved: {e}") })?;
            policy.task.loaded = Some(task);
        }
        Ok(policy)
    }

    /// Parses policy text; `path` names it in errors (toml's messages give line and column).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, PolicyError> {
        let invalid = |message: String| PolicyError::Invalid { path: path.to_owned(), message };
        let mut policy: SitePolicy = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        policy.source = path.to_owned();
        policy.validate().map_err(invalid)?;
        Ok(policy)
    }

    /// A policy with an approved task given directly (library users, tests).
    pub fn with_approved_task(mut self, task: Task) -> Self {
        self.task.loaded = Some(task);
        self
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(fp) = &self.task.fingerprint
            && !(fp.len() == 64 && fp.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(format!("task.fingerprint `{fp}` is not a SHA-256 in hex (64 characters)"));
        }
        if self.task.approved.is_some() && self.task.fingerprint.is_some() {
            return Err("task: give `approved` or `fingerprint`, not both".into());
        }
        if self.columns.labels.as_ref().is_some_and(BTreeSet::is_empty) {
            return Err("columns.labels is empty: no task could run (remove the key to allow any label)".into());
        }
        if self.columns.features.is_some() && self.columns.labels.is_none() {
            return Err("columns.features needs columns.labels: the site reads only those columns, and the label must be one of them".into());
        }
        if self.bounds.min_batch_size == Some(0) || self.bounds.max_local_epochs == Some(0) || self.bounds.max_rounds == Some(0) {
            return Err("bounds: min_batch_size, max_local_epochs and max_rounds must be at least 1".into());
        }
        let p = &self.privacy;
        for (name, value) in [("min_noise_multiplier", p.min_noise_multiplier), ("max_clip_norm", p.max_clip_norm), ("max_epsilon", p.max_epsilon)] {
            if value.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                return Err(format!("privacy.{name} must be a positive number"));
            }
        }
        if p.delta.is_some_and(|d| !(d > 0.0 && d < 1.0)) {
            return Err("privacy.delta must be in (0, 1)".into());
        }
        if p.delta.is_some() && p.max_epsilon.is_none() {
            return Err("privacy.delta is the δ of privacy.max_epsilon: give both".into());
        }
        if p.min_category_count == Some(0) {
            return Err("privacy.min_category_count must be at least 1".into());
        }
        if self.resources.threads == Some(0) || self.resources.max_memory_mb == Some(0) {
            return Err("resources: threads and max_memory_mb must be at least 1".into());
        }
        Ok(())
    }

    /// Whether a column of the site's file may be read at all: with `columns.features`, only
    /// those and the allowed labels.
    pub fn may_read(&self, column: &str) -> bool {
        match &self.columns.features {
            None => true,
            Some(features) => features.contains(column) || self.columns.labels.as_ref().is_some_and(|l| l.contains(column)),
        }
    }

    /// Whether a column may be used once the task's label is known: the label itself, or an
    /// allowed feature (another allowed label is not a feature unless listed as one).
    pub fn may_use(&self, column: &str, label: &str) -> bool {
        column == label || self.columns.features.as_ref().is_none_or(|f| f.contains(column))
    }

    /// The site's k, given the task's.
    pub fn min_category_count(&self, task_k: u64) -> u64 {
        self.privacy.min_category_count.map_or(task_k, |k| k.max(task_k))
    }

    /// The stricter of the policy's budget and the flag's (`--max-epsilon`, `--max-delta`).
    pub fn budget(&self, flag: Option<(f64, f64)>) -> Option<(f64, f64)> {
        let own = self.privacy.max_epsilon.map(|e| (e, self.privacy.delta.unwrap_or(1e-5)));
        match (own, flag) {
            (Some((e1, d1)), Some((e2, d2))) => Some((e1.min(e2), d1.min(d2))),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests;
