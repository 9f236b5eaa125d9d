//! The run directory: `metrics.csv` (a row per round), an atomic checkpoint after every
//! round, and at the end `model.safetensors`, `summary.json` and `accuracy.svg`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use flotilla_common::FlatParams;
use flotilla_common::model_file::{ModelCard, to_safetensors};
use sha2::{Digest, Sha256};

use crate::chart;
use crate::federation::RoundRecord;

/// Errors writing the run directory name the file.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Other { path: PathBuf, message: String },
    /// The folder holds the files of an earlier run: starting afresh there would mix or lose them.
    #[error("{} holds an earlier run ({}): {advice}", path.display(), found.join(", "))]
    Occupied { path: PathBuf, found: Vec<&'static str>, advice: &'static str },
}

/// What a run leaves in its directory: any of these there means the folder holds a run.
/// (`pki/` of `simulate` is throwaway material, rewritten by every simulation, and not listed:
/// `--force` never deletes certificates.)
pub const RUN_FILES: [&str; 9] = [
    "metrics.csv",
    "summary.json",
    "model.safetensors",
    "model-last.safetensors",
    "site-metrics.csv",
    "holdout.csv",
    "checkpoint.safetensors",
    "checkpoint-strategy.safetensors",
    "state/snapshot.safetensors",
];

/// The files of an earlier run in `root` (empty for a new or empty folder).
pub fn earlier_run(root: &Path) -> Vec<&'static str> {
    RUN_FILES.into_iter().filter(|f| root.join(f).exists()).collect()
}

/// Refuses a folder that holds an earlier run, unless `force`: then the earlier run's files
/// (those of [`RUN_FILES`], `accuracy.svg` and `state/`) are deleted, and nothing else.
/// `advice` says what the operator can do instead (it names the command's flags).
pub fn claim_for_new_run(root: &Path, force: bool, advice: &'static str) -> Result<(), RunDirError> {
    let found = earlier_run(root);
    if found.is_empty() {
        return Ok(());
    }
    if !force {
        return Err(RunDirError::Occupied { path: root.to_owned(), found, advice });
    }
    // The data profile alone (`flotilla-coordinator profile`) is no run, but goes with one.
    for name in RUN_FILES.iter().chain(&["accuracy.svg", "profile.json", "profile.svg"]).filter(|f| !f.starts_with("state/")) {
        let path = root.join(name);
        if path.exists() {
            std::fs::remove_file(&path).map_err(|source| RunDirError::Io { path, source })?;
        }
    }
    let state = root.join("state");
    if state.exists() {
        std::fs::remove_dir_all(&state).map_err(|source| RunDirError::Io { path: state, source })?;
    }
    tracing::warn!(dir = %root.display(), "--force: deleted the earlier run in this folder");
    Ok(())
}

/// A run directory being written.
#[derive(Debug)]
pub struct RunDir {
    root: PathBuf,
    metrics: csv::Writer<File>,
    /// Every round so far, for the chart.
    history: Vec<RoundRecord>,
    /// `--test-data`: every round's model evaluated on held-out rows (`holdout.csv`).
    holdout: Option<crate::holdout::Holdout>,
}

impl RunDir {
    /// Creates the directory (if needed) and starts `metrics.csv` afresh.
    pub fn create(root: &Path) -> Result<Self, RunDirError> {
        std::fs::create_dir_all(root).map_err(|source| RunDirError::Io { path: root.to_owned(), source })?;
        let path = root.join("metrics.csv");
        let file = OpenOptions::new().create(true).write(true).truncate(true).open(&path).map_err(|source| RunDirError::Io { path: path.clone(), source })?;
        let mut metrics = csv::Writer::from_writer(file);
        metrics.write_record(RoundRecord::HEADER).map_err(|e| other(&path, e))?;
        metrics.flush().map_err(|source| RunDirError::Io { path: path.clone(), source })?;
        Ok(Self { root: root.to_owned(), metrics, history: Vec::new(), holdout: None })
    }

    /// The directory's path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Evaluates every round's model on `data` (a labelled CSV apart from any site's).
    pub fn with_holdout(mut self, data: &Path, task: &flotilla_common::Task) -> Result<Self, RunDirError> {
        let holdout = crate::holdout::Holdout::open(data, task, &self.root).map_err(|message| RunDirError::Other { path: data.to_owned(), message })?;
        self.holdout = Some(holdout);
        Ok(self)
    }

    /// The federation's plan is made: held-out rows can be encoded.
    pub fn plan_ready(&mut self, plan: &flotilla_common::data::Plan) -> Result<(), RunDirError> {
        match &mut self.holdout {
            Some(h) => h.plan_ready(plan).map_err(|message| RunDirError::Other { path: self.root.join("holdout.csv"), message }),
            None => Ok(()),
        }
    }

    /// Reopens the directory of a run being resumed: `metrics.csv` is rewritten with the rounds
    /// the saved state knows (a row written just before a crash may be ahead of it).
    pub fn resume(root: &Path, history: &[RoundRecord]) -> Result<Self, RunDirError> {
        let mut dir = Self::create(root)?;
        let path = root.join("metrics.csv");
        for r in history {
            dir.metrics.write_record(r.fields()).map_err(|e| other(&path, e))?;
        }
        dir.metrics.flush().map_err(|source| RunDirError::Io { path, source })?;
        dir.history = history.to_vec();
        Ok(dir)
    }

    /// Appends a round to `metrics.csv` and checkpoints the global model after it, with the
    /// strategy's optimiser state (`checkpoint-strategy.safetensors`, f64) when it has one.
    pub fn record_round(&mut self, record: &RoundRecord, model: &FlatParams, strategy_state: &[(&'static str, Vec<f64>)]) -> Result<(), RunDirError> {
        let path = self.root.join("metrics.csv");
        self.metrics.write_record(record.fields()).map_err(|e| other(&path, e))?;
        self.metrics.flush().map_err(|source| RunDirError::Io { path, source })?;
        self.history.push(record.clone());
        if let Some(h) = &mut self.holdout {
            h.record(record.round, model).map_err(|message| RunDirError::Other { path: self.root.join("holdout.csv"), message })?;
        }
        let meta = HashMap::from([("round".to_owned(), record.round.to_string()), ("params_sha256".to_owned(), record.model_hash.clone())]);
        let bytes = to_safetensors(model, meta).map_err(|e| other(&self.root.join("checkpoint.safetensors"), e))?;
        write_atomic(&self.root.join("checkpoint.safetensors"), &bytes)?;
        if !strategy_state.is_empty() {
            let path = self.root.join("checkpoint-strategy.safetensors");
            let bytes = strategy_state_bytes(record.round, strategy_state).map_err(|e| other(&path, e))?;
            write_atomic(&path, &bytes)?;
        }
        // The chart is cheap and a person watching a long run likes to see it grow.
        chart::write_accuracy_chart(&self.root.join("accuracy.svg"), &self.history, &[]).map_err(|e| other(&self.root.join("accuracy.svg"), e))?;
        Ok(())
    }
}

/// Writes the kept model (`model.safetensors`: the best round by federated validation loss,
/// or the last round without validation rows), the last round's (`model-last.safetensors`)
/// and `summary.json` into `root`; returns the kept model file's SHA-256. Each model file
/// carries what is needed to use it (the task, the preprocessing plan, its round; see
/// `flotilla_common::model_file::ModelCard`). In `summary.json`, `model_file_sha256` is the hash
/// of the file `model.safetensors`, `params_sha256` that of its parameters (as `metrics.csv`
/// names each round's model), and `models` lists both files with both hashes.
pub fn write_final(
    root: &Path,
    task: &flotilla_common::Task,
    outcome: &crate::federation::Outcome,
    summary: &serde_json::Value,
) -> Result<String, RunDirError> {
    let last_round = outcome.history.last().map_or(0, |r| r.round);
    let kept_round = outcome.best_round.unwrap_or(last_round);
    let mut models = serde_json::Map::new();
    let mut kept_sha = String::new();
    for (file, params, round, chosen_by) in [
        ("model.safetensors", &outcome.model, kept_round, if outcome.best_round.is_some() { "lowest federated validation loss" } else { "last round" }),
        ("model-last.safetensors", &outcome.last_model, last_round, "last round"),
    ] {
        let path = root.join(file);
        let card = ModelCard { task: task.clone(), plan: (*outcome.plan).clone(), round };
        let bytes = to_safetensors(params, card.metadata(params)).map_err(|e| other(&path, e))?;
        write_atomic(&path, &bytes)?;
        let sha = hex::encode(Sha256::digest(&bytes));
        if file == "model.safetensors" {
            kept_sha = sha.clone();
        }
        models.insert(file.to_owned(), serde_json::json!({ "round": round, "chosen_by": chosen_by, "file_sha256": sha, "params_sha256": params.hash() }));
    }
    let mut summary = summary.clone();
    summary["model_file_sha256"] = serde_json::Value::String(kept_sha.clone());
    summary["params_sha256"] = serde_json::Value::String(outcome.model.hash());
    summary["models"] = serde_json::Value::Object(models);
    let path = root.join("summary.json");
    let text = serde_json::to_string_pretty(&summary).map_err(|e| other(&path, e))?;
    write_atomic(&path, text.as_bytes())?;
    Ok(kept_sha)
}

/// The strategy state as safetensors: one F64 tensor per named vector, the round as metadata.
fn strategy_state_bytes(round: u32, state: &[(&'static str, Vec<f64>)]) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let bytes: Vec<Vec<u8>> = state.iter().map(|(_, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views = state
        .iter()
        .zip(&bytes)
        .map(|((name, v), b)| safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![v.len()], b).map(|t| (name.to_string(), t)))
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, Some(HashMap::from([("round".to_owned(), round.to_string())])))
}

/// Writes a file so that readers see the old content or the new, never a mix: a temporary
/// file is written and synced, renamed over the target, and the directory is synced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunDirError> {
    let io = |source| RunDirError::Io { path: path.to_owned(), source };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    {
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

fn other(path: &Path, e: impl std::fmt::Display) -> RunDirError {
    RunDirError::Other { path: path.to_owned(), message: e.to_string() }
}
