//! The coordinator's durable state on disk, in `<run>/state/`, so that `serve --resume` can
//! continue a run after a crash without losing or repeating anything.
//!
//! - `snapshot.safetensors`: the federation's state as JSON metadata, with the global model
//!   and the strategy's optimiser state as tensors. Rewritten whenever the phase changes.
//! - `updates/<round>-<attempt>-<site>.safetensors`: each update accepted into the open round,
//!   written before the site is told it was accepted.
//!
//! Every file is written atomically (temporary file, fsync, rename, fsync of the directory), so
//! after a crash each file is the old version or the new one, never a mix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flotilla_common::model_file::{from_safetensors, to_safetensors};
use flotilla_common::params::{TensorSpec, extend_from_le_bytes, f32_to_le_bytes};
use flotilla_common::train::TrainReport;
use flotilla_common::{FlatParams, Layout};
use safetensors::tensor::{Dtype, TensorView};

use crate::federation::{AcceptedUpdate, Snapshot};
use crate::run_dir::write_atomic;

const SNAPSHOT: &str = "snapshot.safetensors";
const UPDATES: &str = "updates";
const META_STATE: &str = "flotilla.state";
const META_LAYOUT: &str = "flotilla.global_layout";

/// Errors name the file.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: no saved state to resume from (was the run started with `serve --out` on this directory?)")]
    Missing { path: PathBuf },
}

/// The `state/` directory of a run.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// `<run>/state`, created if needed.
    pub fn create(run: &Path) -> Result<Self, DurableError> {
        let root = run.join("state");
        let updates = root.join(UPDATES);
        std::fs::create_dir_all(&updates).map_err(|source| DurableError::Io { path: updates, source })?;
        Ok(Self { root })
    }

    /// Removes any saved state (a fresh run in a directory that held another).
    pub fn clear(&self) -> Result<(), DurableError> {
        let snapshot = self.root.join(SNAPSHOT);
        if snapshot.exists() {
            std::fs::remove_file(&snapshot).map_err(|source| DurableError::Io { path: snapshot, source })?;
        }
        self.prune_updates(None)
    }

    /// Writes the snapshot, then drops kept updates that no longer belong to the open round.
    pub fn save(&self, snapshot: &Snapshot, open: Option<(u32, u32)>) -> Result<(), DurableError> {
        let path = self.root.join(SNAPSHOT);
        let bytes = encode_snapshot(snapshot).map_err(|message| DurableError::Invalid { path: path.clone(), message })?;
        write_atomic(&path, &bytes).map_err(|e| DurableError::Invalid { path: path.clone(), message: e.to_string() })?;
        self.prune_updates(open)
    }

    /// Keeps an update accepted into training attempt `attempt` of `round`.
    pub fn save_update(&self, site: &str, round: u32, attempt: u32, num_examples: u64, metrics: &TrainReport, delta: &FlatParams) -> Result<(), DurableError> {
        let path = self.root.join(UPDATES).join(update_file_name(site, round, attempt));
        let invalid = |message: String| DurableError::Invalid { path: path.clone(), message };
        let meta = HashMap::from([
            ("site".to_owned(), site.to_owned()),
            ("round".to_owned(), round.to_string()),
            ("attempt".to_owned(), attempt.to_string()),
            ("num_examples".to_owned(), num_examples.to_string()),
            ("metrics".to_owned(), serde_json::to_string(metrics).map_err(|e| invalid(e.to_string()))?),
        ]);
        let bytes = to_safetensors(delta, meta).map_err(|e| invalid(e.to_string()))?;
        write_atomic(&path, &bytes).map_err(|e| invalid(e.to_string()))
    }

    /// The saved snapshot and the updates kept after it.
    pub fn load(&self) -> Result<(Snapshot, Vec<AcceptedUpdate>), DurableError> {
        let path = self.root.join(SNAPSHOT);
        if !path.exists() {
            return Err(DurableError::Missing { path });
        }
        let bytes = std::fs::read(&path).map_err(|source| DurableError::Io { path: path.clone(), source })?;
        let snapshot = decode_snapshot(&bytes).map_err(|message| DurableError::Invalid { path: path.clone(), message })?;
        let mut updates = Vec::new();
        for path in self.update_files()? {
            let bytes = std::fs::read(&path).map_err(|source| DurableError::Io { path: path.clone(), source })?;
            updates.push(decode_update(&bytes).map_err(|message| DurableError::Invalid { path: path.clone(), message })?);
        }
        Ok((snapshot, updates))
    }

    fn update_files(&self) -> Result<Vec<PathBuf>, DurableError> {
        let dir = self.root.join(UPDATES);
        let io = |source| DurableError::Io { path: dir.clone(), source };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "safetensors") {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }

    /// Deletes kept updates other than those of the open attempt `open`.
    fn prune_updates(&self, open: Option<(u32, u32)>) -> Result<(), DurableError> {
        let keep = open.map(|(round, attempt)| format!("{round:06}-{attempt:03}-"));
        for path in self.update_files()? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if keep.as_ref().is_none_or(|k| !name.starts_with(k.as_str())) {
                std::fs::remove_file(&path).map_err(|source| DurableError::Io { path: path.clone(), source })?;
            }
        }
        Ok(())
    }
}

/// Site names may hold any printable character and up to 128 bytes; the file name uses the
/// first 32 hex digits of their SHA-256 (the name itself is in the file's metadata), so it
/// stays 55 characters long, far inside any file system's limit of 255.
fn update_file_name(site: &str, round: u32, attempt: u32) -> String {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(site.as_bytes()));
    format!("{round:06}-{attempt:03}-{}.safetensors", &digest[..32])
}

fn encode_snapshot(s: &Snapshot) -> Result<Vec<u8>, String> {
    let mut meta = HashMap::from([(META_STATE.to_owned(), serde_json::to_string(s).map_err(|e| e.to_string())?)]);
    let mut buffers: Vec<(String, Dtype, Vec<u8>)> = Vec::new();
    if let Some(g) = &s.global {
        let layout: Vec<(&str, &[usize])> = g.layout().tensors().iter().map(|t| (t.name.as_str(), t.shape.as_slice())).collect();
        meta.insert(META_LAYOUT.to_owned(), serde_json::to_string(&layout).map_err(|e| e.to_string())?);
        buffers.push(("global".to_owned(), Dtype::F32, f32_to_le_bytes(g.values())));
    }
    if let Some(b) = &s.best {
        buffers.push(("best".to_owned(), Dtype::F32, f32_to_le_bytes(b.values())));
    }
    for (name, values) in &s.strategy_state {
        buffers.push((name.clone(), Dtype::F64, values.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }
    let views = buffers
        .iter()
        .map(|(name, dtype, bytes)| {
            let n = bytes.len() / if *dtype == Dtype::F32 { 4 } else { 8 };
            TensorView::new(*dtype, vec![n], bytes).map(|v| (name.clone(), v)).map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, Some(meta)).map_err(|e| e.to_string())
}

fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, String> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let meta = header.metadata().clone().unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let json = meta.get(META_STATE).ok_or("no `flotilla.state` metadata: not a Flotilla snapshot")?;
    let mut snapshot: Snapshot = serde_json::from_str(json).map_err(|e| format!("the state metadata: {e}"))?;
    if let Some(layout) = meta.get(META_LAYOUT) {
        let specs: Vec<(String, Vec<usize>)> = serde_json::from_str(layout).map_err(|e| format!("the model layout metadata: {e}"))?;
        let layout = Layout::new(specs.into_iter().map(|(name, shape)| TensorSpec { name, shape }).collect());
        let read = |name: &str| -> Result<Option<Arc<FlatParams>>, String> {
            let Ok(t) = st.tensor(name) else { return Ok(None) };
            if t.dtype() != Dtype::F32 {
                return Err(format!("tensor `{name}` is {:?}, not F32", t.dtype()));
            }
            let mut values = Vec::new();
            extend_from_le_bytes(&mut values, t.data()).map_err(|e| e.to_string())?;
            Ok(Some(Arc::new(FlatParams::new(layout.clone(), values).map_err(|e| format!("the model `{name}`: {e}"))?)))
        };
        snapshot.global = Some(read("global")?.ok_or("tensor `global` is missing")?);
        snapshot.best = read("best")?;
    }
    for (name, t) in st.tensors() {
        if name == "global" || name == "best" {
            continue;
        }
        if t.dtype() != Dtype::F64 || t.data().len() % 8 != 0 {
            return Err(format!("tensor `{name}` is {:?}, not F64", t.dtype()));
        }
        let values = t.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect();
        snapshot.strategy_state.push((name, values));
    }
    snapshot.strategy_state.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(snapshot)
}

fn decode_update(bytes: &[u8]) -> Result<AcceptedUpdate, String> {
    let (delta, meta) = from_safetensors(bytes).map_err(|e| e.to_string())?;
    let field = |k: &str| meta.get(k).ok_or_else(|| format!("no `{k}` metadata"));
    let number = |k: &str| field(k).and_then(|v| v.parse::<u64>().map_err(|e| format!("`{k}` = `{v}`: {e}")));
    Ok(AcceptedUpdate {
        site: field("site")?.clone(),
        round: u32::try_from(number("round")?).map_err(|e| e.to_string())?,
        attempt: u32::try_from(number("attempt")?).map_err(|e| e.to_string())?,
        num_examples: number("num_examples")?,
        metrics: serde_json::from_str(field("metrics")?).map_err(|e| format!("`metrics`: {e}"))?,
        delta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::federation::snapshot::{RunIdentity, SNAPSHOT_VERSION, SavedPhase};

    fn snapshot() -> Snapshot {
        let layout = Layout::new(vec![TensorSpec { name: "w".into(), shape: vec![2, 3] }, TensorSpec { name: "b".into(), shape: vec![3] }]);
        let global = FlatParams::new(layout, (0..9).map(|i| i as f32 * 0.1 + f32::EPSILON).collect()).unwrap();
        Snapshot {
            version: SNAPSHOT_VERSION,
            identity: RunIdentity { task_toml: "x".into(), seed: 7, policy: "p".into() },
            next_client: 5,
            plan: None,
            global_hash: global.hash(),
            phase: SavedPhase::Fit { round: 3, attempt: 1, cohort: vec!["a".into(), "b".into()], target: 2, failed: vec![], declined: vec![], rejected: 1 },
            history: vec![],
            final_site_metrics: Default::default(),
            record_epsilon: Default::default(),
            sites_seen: [("a".to_owned(), 10), ("b".to_owned(), 20)].into_iter().collect(),
            connected: vec!["a".into(), "b".into()],
            dp_steps: vec![],
            dp_skellam: vec![],
            epsilon: Some(0.1 + 0.2),
            clip_norm: 1.0 / 3.0,
            noise_seed: Some(17),
            best_round: Some(2),
            best_loss: Some(0.25),
            best_site_metrics: Default::default(),
            best: Some(Arc::new(FlatParams::new(global.layout().clone(), (0..9).map(|i| -(i as f32)).collect()).unwrap())),
            global: Some(Arc::new(global)),
            strategy_state: vec![("strategy.m".into(), vec![1.0 / 7.0, -0.0, 1e-300])],
        }
    }

    #[test]
    fn a_snapshot_and_its_updates_come_back_bit_for_bit_and_stale_updates_go() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::create(dir.path()).unwrap();
        let s = snapshot();
        state.save(&s, Some((3, 1))).unwrap();
        let g = s.global.clone().unwrap();
        let m = TrainReport { loss: 0.1 + 0.2, epochs: 5, ..TrainReport::default() };
        state.save_update("VA Long Beach", 3, 1, 10, &m, &g).unwrap();
        // The longest site name a federation accepts (128 bytes, 4 of them a character).
        let longest = "é".repeat(64);
        state.save_update(&longest, 3, 1, 10, &m, &g).unwrap();
        state.save_update("a", 2, 1, 10, &m, &g).unwrap();
        let (back, updates) = state.load().unwrap();
        assert_eq!(back.global.as_deref(), s.global.as_deref());
        assert_eq!((back.best.as_deref(), back.best_round), (s.best.as_deref(), Some(2)), "the best round's model survives too");
        assert_eq!((back.epsilon, back.clip_norm, back.phase.clone()), (s.epsilon, s.clip_norm, s.phase.clone()));
        assert_eq!(back.noise_seed, Some(17), "the DP noise seed survives, so a resumed run adds the same noise");
        assert_eq!(
            back.strategy_state[0].1.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            s.strategy_state[0].1.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(updates.len(), 3);
        assert!(updates.iter().any(|u| u.site == longest), "a 128-byte name survives the trip");
        let u = updates.iter().find(|u| u.site == "VA Long Beach").unwrap();
        assert_eq!((u.round, u.attempt, u.num_examples, u.metrics, &u.delta), (3, 1, 10, m, g.as_ref()));
        // A new snapshot for round 3 keeps round 3's update and drops the stale one.
        state.save(&s, Some((3, 1))).unwrap();
        assert_eq!(state.load().unwrap().1.len(), 2);
        state.save(&s, None).unwrap();
        assert!(state.load().unwrap().1.is_empty());
    }

    #[test]
    fn damaged_or_missing_state_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::create(dir.path()).unwrap();
        assert!(matches!(state.load(), Err(DurableError::Missing { .. })));
        std::fs::write(dir.path().join("state").join(SNAPSHOT), b"not a snapshot").unwrap();
        let err = state.load().unwrap_err().to_string();
        assert!(err.contains("snapshot.safetensors"), "{err}");
    }
}
