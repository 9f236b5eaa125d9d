//! Error types of the shared library, one per concern.

use std::path::PathBuf;

/// A flat parameter vector that does not fit its layout.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    #[error("layout mismatch: expected fingerprint {expected}, found {found}")]
    LayoutMismatch { expected: String, found: String },
    #[error("wrong number of values: expected {expected}, found {found}")]
    LengthMismatch { expected: usize, found: usize },
    #[error("byte length {len} is not a multiple of 4 (f32)")]
    RaggedBytes { len: usize },
    #[error("model: {0}")]
    Invalid(String),
    #[error("model file: {0}")]
    Safetensors(String),
}

/// An update that cannot be added to a round's sum.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    #[error(transparent)]
    Params(#[from] ParamsError),
    #[error("an update must carry a positive number of examples")]
    ZeroWeight,
    #[error("number of examples {0} is implausibly large")]
    WeightTooLarge(u64),
    #[error("value {value} at index {index} is not finite or too large to aggregate")]
    ValueOutOfRange { index: usize, value: f32 },
    #[error("a round aggregates at most {} updates", crate::aggregate::MAX_UPDATES)]
    TooManyUpdates,
}

/// Where in a data file something went wrong: file, 1-based line and column name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: u64,
    pub column: Option<String>,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)?;
        if let Some(c) = &self.column {
            write!(f, ", column `{c}`")?;
        }
        Ok(())
    }
}

/// A problem with a site's data or with the federation's data specification.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{at}: {message}")]
    Row { at: Location, message: String },
    #[error("{file}: {message}")]
    File { file: PathBuf, message: String },
    #[error("data specification: {0}")]
    Spec(String),
}

/// A federation task (TOML) that cannot be read or is inconsistent.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("cannot read task file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("task {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("task: {0}")]
    Invalid(String),
}

/// Local training or evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Params(#[from] ParamsError),
    #[error("dataset has {found} features but the model expects {expected}")]
    FeatureMismatch { expected: usize, found: usize },
    #[error("dataset is empty")]
    Empty,
    #[error("training diverged: loss is {0}")]
    Diverged(f64),
    #[error("DP-SGD: {0}")]
    DpSgd(String),
    #[error("{0}")]
    CustomModel(String),
}
