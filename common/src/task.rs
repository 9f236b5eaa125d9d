//! The federation's task: model, local training and data specification.
//!
//! Written by an operator as TOML (see `examples/*.toml`), validated once, then sent to
//! every site at join so that all of them train the same model on the same schema.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::TaskError;

/// Everything a site needs to know to take part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// A short name shown in logs and summaries.
    #[serde(default = "default_name")]
    pub name: String,
    /// Secure aggregation (Bonawitz et al. 2017): the coordinator learns only the sum of each
    /// round's updates. FedAvg only (robust rules need to see individual updates).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secure_aggregation: bool,
    pub model: ModelSpec,
    pub training: TrainingSpec,
    pub data: DataSpec,
    /// How updates are combined (FedAvg unless configured).
    #[serde(default)]
    pub strategy: crate::strategy::StrategyConfig,
    /// Central differential privacy (DP-FedAvg with a fixed clip); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<crate::privacy::DpConfig>,
    /// Record-level DP (DP-SGD at every site); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_privacy: Option<crate::privacy::RecordDp>,
    /// How sites encode their updates (plain f32 unless set).
    #[serde(default, skip_serializing_if = "Compression::is_plain")]
    pub compression: Compression,
}

/// The `[compression]` section: the codec of the sites' updates.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compression {
    /// `f32` (the default), `fp16`, `bf16`, `int8` or `topk:FRACTION` (with error feedback).
    #[serde(default)]
    pub update: crate::compress::Codec,
}

impl Compression {
    fn is_plain(&self) -> bool {
        self.update == crate::compress::Codec::F32
    }
}

fn default_name() -> String {
    "federation".to_owned()
}

/// The model: a multilayer perceptron `inputs → hidden… → outputs` with ReLU between layers,
/// or a CNN whose convolutions feed such layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// `mlp` (the default) or `cnn` (images only: `[data.images]`).
    #[serde(default, skip_serializing_if = "ModelKind::is_mlp")]
    pub kind: ModelKind,
    /// Hidden layer widths; the seed article's model is `[64, 32]`. In a CNN, the fully
    /// connected layers after the convolutions (the FedAvg paper's CNN: `[512]`).
    #[serde(default = "default_hidden")]
    pub hidden: Vec<usize>,
    /// CNN: the filters of each convolution (`"same"` padding, ReLU, then a 2×2 max-pool);
    /// the FedAvg paper's CNN is `[32, 64]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<usize>,
    /// CNN: the convolutions' kernel size, odd (5 unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<usize>,
    /// `kind = "custom"`: the name a site's own burn module is registered under
    /// ([`crate::model::register`]); a site without a module of that name refuses to train.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `kind = "custom"`: the module's parameter tensors in the order burn visits them. The
    /// coordinator fills it in from the initial model (`serve --init-model`, or
    /// [`ModelSpec::custom`]); every site checks it against its own module before training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Vec<crate::params::TensorSpec>>,
    /// `kind = "custom"`: the SHA-256 of the initial parameters, when the federation starts
    /// from given values instead of the seeded initialisation, so that a resumed federation
    /// cannot start again from other values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<String>,
}

/// Limits on a custom model's layout (it arrives in a task file or an initial-model file).
pub const MAX_CUSTOM_TENSORS: usize = 4096;
/// A custom model's name: letters, digits, `-`, `_`, `.`, at most this long.
pub const MAX_MODEL_NAME: usize = 64;
/// A custom model's parameters; the wire and the policy bound every model further.
pub const MAX_CUSTOM_PARAMS: usize = 1 << 30;

impl ModelSpec {
    /// A custom model `name` with these tensors (from `flotilla_common::model::bridge::read_layout`
    /// of the module) and, when the federation starts from given values, their hash.
    pub fn custom(name: &str, layout: &crate::params::Layout, initial: Option<String>) -> Self {
        Self {
            kind: ModelKind::Custom,
            hidden: Vec::new(),
            filters: Vec::new(),
            kernel: None,
            name: Some(name.to_owned()),
            layout: Some(layout.tensors().to_vec()),
            initial,
        }
    }
}

/// The kind of model a task trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    #[default]
    Mlp,
    Cnn,
    /// A site's own burn module, registered under `model.name` (see `examples/custom_model`).
    Custom,
}

impl ModelKind {
    fn is_mlp(&self) -> bool {
        *self == ModelKind::Mlp
    }
}

/// The kernel of a CNN's convolutions unless the task sets one.
pub const DEFAULT_KERNEL: usize = 5;

/// The optimiser of local training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerName {
    /// Adam (β = 0.9, 0.999), the default.
    #[default]
    Adam,
    /// Stochastic gradient descent, with `momentum` when set (the FedAvg paper's optimiser).
    Sgd,
}

impl OptimizerName {
    fn is_adam(&self) -> bool {
        *self == OptimizerName::Adam
    }
}

/// Images of a fixed size: a site reads them from IDX files (MNIST's format, gzipped or
/// not) or a folder per class (`root/<class>/*.png`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageSpec {
    /// Values per image: the model's input width.
    pub fn values(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// Largest image side accepted (a hostile task cannot make sites allocate without bound).
pub const MAX_IMAGE_SIDE: usize = 1024;

fn default_hidden() -> Vec<usize> {
    vec![64, 32]
}

/// Local training on each site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    /// Local epochs per round.
    #[serde(default = "default_epochs")]
    pub local_epochs: u32,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// The sites' learning rate.
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    /// `adam` (the default) or `sgd`.
    #[serde(default, skip_serializing_if = "OptimizerName::is_adam")]
    pub optimizer: OptimizerName,
    /// SGD's momentum (0: plain SGD, as in the FedAvg paper); no dampening.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub momentum: f64,
    /// Server learning rate η in `w ← w + η · Σ (n_k / n) Δ_k`.
    #[serde(default = "default_server_lr")]
    pub server_learning_rate: f32,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn default_epochs() -> u32 {
    1
}
fn default_batch() -> usize {
    32
}
fn default_lr() -> f64 {
    1e-3
}
fn default_server_lr() -> f32 {
    1.0
}

/// How a site turns its CSV into examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub label: LabelSpec,
    /// Columns that are not features (identifiers, the site column).
    #[serde(default)]
    pub drop: Vec<String>,
    /// Which feature columns are categorical; the rest are numeric.
    #[serde(default)]
    pub categorical: Categorical,
    /// Spellings of "missing" in every column; empty is always missing. The default is the
    /// set pandas reads as missing plus `?` (UCI's marker): see [`DEFAULT_MISSING`].
    #[serde(default = "default_missing")]
    pub missing: Vec<String>,
    /// Extra spellings of "missing" per column, e.g. `chol = ["0"]`.
    #[serde(default)]
    pub missing_values: BTreeMap<String, Vec<String>>,
    /// Columns read as numbers even under `categorical = "infer"` (an inferred column whose
    /// values are mostly not numbers is categorical).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub numeric: Vec<String>,
    /// Inference refuses a column it finds categorical at a site with more distinct values
    /// than this, or with a distinct value for every two rows: that is free text, an
    /// identifier or a mistyped number, not a category. Declare it `numeric` or drop it.
    #[serde(default = "default_max_inferred_categories")]
    pub max_inferred_categories: u64,
    /// What to do with a row that cannot be parsed.
    #[serde(default)]
    pub bad_rows: BadRows,
    /// Share of each site's rows held out for evaluation (test: reported only).
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    /// Share of each site's training rows held out for validation: the federated validation
    /// loss picks the round whose model is kept (and stops early when asked). 0 turns it off.
    #[serde(default = "default_validation_fraction")]
    pub validation_fraction: f64,
    #[serde(default)]
    pub augmentation: Augmentation,
    /// Images instead of a CSV: their size. The label's `classes` name the classes (IDX
    /// label values or folder names). Absent for tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<ImageSpec>,
    /// k: a site reports a category only when at least k of its training rows have it;
    /// rarer values become one `(other)` category at the site before anything is sent (or
    /// missing, when even those are fewer than k). A site's policy may raise it.
    #[serde(default = "default_min_category_count")]
    pub min_category_count: u64,
}

fn default_test_fraction() -> f64 {
    0.2
}

fn default_validation_fraction() -> f64 {
    0.1
}

/// The default of [`DataSpec::max_inferred_categories`].
pub fn default_max_inferred_categories() -> u64 {
    100
}

/// What every column reads as missing by default: pandas' `read_csv` defaults and `?`.
pub const DEFAULT_MISSING: [&str; 23] = [
    "NA", "N/A", "n/a", "NaN", "nan", "-NaN", "-nan", "NULL", "null", "Null", "None", "none", "#N/A", "#N/A N/A", "#NA", "<NA>", "-1.#IND", "-1.#QNAN",
    "1.#IND", "1.#QNAN", "na", "?", "",
];

fn default_missing() -> Vec<String> {
    DEFAULT_MISSING.iter().filter(|s| !s.is_empty()).map(|s| (*s).to_owned()).collect()
}

/// The k of [`DataSpec::min_category_count`]: 5, as statistical offices' threshold rules.
pub fn default_min_category_count() -> u64 {
    5
}

/// The label column and how its values become classes (or, for regression, targets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSpec {
    pub column: String,
    /// `classification` (the default: one of the rules below) or `regression` (a numeric
    /// label, mean squared error; none of the rules).
    #[serde(default, skip_serializing_if = "LabelKind::is_classification")]
    pub kind: LabelKind,
    /// Binary task: numeric labels above this value are the positive class (hospitals: `num > 0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positive_above: Option<f64>,
    /// Binary task: these label values are the positive class (banks: `["bad"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positive_values: Option<Vec<String>>,
    /// Multi-class task (softmax): the label values, in class order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
}

/// What the label is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelKind {
    /// Classes: binary (sigmoid and cross-entropy) or several (softmax).
    #[default]
    Classification,
    /// A number: one linear output trained on the mean squared error of the label in the
    /// federation's standard units; MAE, RMSE and R² reported in the label's own units.
    Regression,
}

impl LabelKind {
    fn is_classification(&self) -> bool {
        *self == LabelKind::Classification
    }
}

/// The rule that maps a label value to a class index (or a regression target).
#[derive(Debug, Clone, PartialEq)]
pub enum LabelRule {
    PositiveAbove(f64),
    PositiveValues(Vec<String>),
    Classes(Vec<String>),
    /// The label is a number, the target itself (its one "class" is 0).
    Value,
}

impl LabelSpec {
    /// The one rule this spec names.
    pub fn rule(&self) -> Result<LabelRule, TaskError> {
        if self.kind == LabelKind::Regression {
            if self.positive_above.is_some() || self.positive_values.is_some() || self.classes.is_some() {
                return Err(TaskError::Invalid(format!(
                    "label `{}` is a regression target: positive_above, positive_values and classes belong to classification",
                    self.column
                )));
            }
            return Ok(LabelRule::Value);
        }
        match (&self.positive_above, &self.positive_values, &self.classes) {
            (Some(t), None, None) => Ok(LabelRule::PositiveAbove(*t)),
            (None, Some(v), None) if !v.is_empty() => Ok(LabelRule::PositiveValues(v.clone())),
            (None, None, Some(c)) if c.len() >= 2 => Ok(LabelRule::Classes(c.clone())),
            _ => Err(TaskError::Invalid(format!(
                "label `{}` needs exactly one of positive_above, positive_values (non-empty) or classes (two or more), \
                 or kind = \"regression\" for a numeric target",
                self.column
            ))),
        }
    }

    /// True for a regression task.
    pub fn is_regression(&self) -> bool {
        self.kind == LabelKind::Regression
    }

    /// Number of classes of the task: 2 for binary tasks, and 1 for regression (every
    /// row's class is 0; its value is the target).
    pub fn num_classes(&self) -> usize {
        match (&self.classes, self.kind) {
            (_, LabelKind::Regression) => 1,
            (Some(c), _) => c.len(),
            (None, _) => 2,
        }
    }
}

/// Categorical columns: listed, or inferred (a column with a non-numeric value anywhere).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Categorical {
    Listed(Vec<String>),
    Rule(InferRule),
}

/// The only rule besides a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InferRule {
    Infer,
}

impl Default for Categorical {
    fn default() -> Self {
        Categorical::Rule(InferRule::Infer)
    }
}

/// Policy for rows that cannot be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BadRows {
    /// The first bad row stops the site with an error naming file, line and column.
    #[default]
    Reject,
    /// Bad rows are skipped, counted and reported.
    Skip,
}

/// Augmentation of a site's training split (off by default).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Augmentation {
    /// Standard deviation of Gaussian noise added to standardised numeric features (0 = off).
    #[serde(default)]
    pub jitter_std: f64,
    /// Extra jittered copies of each training row (needs `jitter_std > 0`).
    #[serde(default)]
    pub jitter_copies: u32,
    /// Randomly duplicate minority-class rows until classes are balanced.
    #[serde(default)]
    pub oversample_minority: bool,
    /// Images: extra copies of each training image, each randomly shifted, mirrored and
    /// rotated as the next three settings allow (0 = off).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub image_copies: u32,
    /// Images: a copy is shifted by up to this many pixels each way, the uncovered border
    /// filled with black (a random crop of the image padded by this much; MNIST: 2).
    #[serde(default, skip_serializing_if = "is_zero_usize")]
    pub crop_padding: usize,
    /// Images: a copy is mirrored left to right half the time (not for digits or text).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flip: bool,
    /// Images: a copy is rotated by a random angle within ± this many degrees (at most 45).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rotation_degrees: f64,
}

fn is_zero_u32(x: &u32) -> bool {
    *x == 0
}

fn is_zero_usize(x: &usize) -> bool {
    *x == 0
}

impl DataSpec {
    /// Whether `value` of `column` is missing: empty, one of `missing`, or one of the
    /// column's own `missing_values`.
    pub fn is_missing(&self, column: &str, value: &str) -> bool {
        value.is_empty() || self.missing.iter().any(|m| m == value) || self.missing_values.get(column).is_some_and(|extra| extra.iter().any(|m| m == value))
    }
}

impl Task {
    /// Parses and validates a task from TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, TaskError> {
        let task: Task = toml::from_str(text).map_err(|e| TaskError::Parse { origin: origin.to_owned(), message: e.to_string() })?;
        task.validate()?;
        Ok(task)
    }

    /// Reads a task file.
    pub fn from_file(path: &Path) -> Result<Self, TaskError> {
        let text = std::fs::read_to_string(path).map_err(|source| TaskError::Io { path: path.to_owned(), source })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// The task as TOML, as sent to sites.
    pub fn to_toml(&self) -> String {
        // Serialising plain structs of strings and numbers cannot fail.
        toml::to_string(self).unwrap_or_default()
    }

    /// SHA-256 of the task's canonical TOML (what the coordinator sends): the same task,
    /// however its file is laid out or commented, has the same fingerprint. A site's policy
    /// can pin it.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(self.to_toml().as_bytes()))
    }

    /// Checks the values a site or the coordinator would otherwise trip over later.
    pub fn validate(&self) -> Result<(), TaskError> {
        self.data.label.rule()?;
        if self.model.hidden.contains(&0) {
            return Err(TaskError::Invalid("model.hidden: every layer needs at least one unit".into()));
        }
        self.validate_model_and_images()?;
        let t = &self.training;
        if t.local_epochs == 0 || t.batch_size == 0 {
            return Err(TaskError::Invalid("training: local_epochs and batch_size must be positive".into()));
        }
        if !(t.learning_rate.is_finite() && t.learning_rate > 0.0) {
            return Err(TaskError::Invalid(format!("training.learning_rate must be positive, got {}", t.learning_rate)));
        }
        if !(t.server_learning_rate.is_finite() && t.server_learning_rate > 0.0) {
            return Err(TaskError::Invalid("training.server_learning_rate must be positive".into()));
        }
        let f = self.data.test_fraction;
        if !(0.0..1.0).contains(&f) || f == 0.0 {
            return Err(TaskError::Invalid(format!("data.test_fraction must be in (0, 1), got {f}")));
        }
        let v = self.data.validation_fraction;
        if !(0.0..0.5).contains(&v) {
            return Err(TaskError::Invalid(format!("data.validation_fraction must be in [0, 0.5), got {v}")));
        }
        if let Categorical::Listed(listed) = &self.data.categorical
            && let Some(both) = self.data.numeric.iter().find(|c| listed.contains(c))
        {
            return Err(TaskError::Invalid(format!("data: column `{both}` is listed both as categorical and as numeric")));
        }
        if self.data.max_inferred_categories < 2 {
            return Err(TaskError::Invalid("data.max_inferred_categories must be at least 2".into()));
        }
        if let Some(dp) = &self.privacy {
            dp.validate().map_err(TaskError::Invalid)?;
            if self.strategy.name != crate::strategy::StrategyName::Fedavg {
                return Err(TaskError::Invalid(format!("differential privacy is implemented for fedavg only, not {}", self.strategy.name)));
            }
        }
        if self.secure_aggregation && self.strategy.name != crate::strategy::StrategyName::Fedavg {
            return Err(TaskError::Invalid(format!(
                "secure aggregation reveals only the sum of updates: it works with fedavg, not {} (which needs each update)",
                self.strategy.name
            )));
        }
        if self.secure_aggregation && self.compression.update != crate::compress::Codec::F32 {
            return Err(TaskError::Invalid(format!(
                "compression.update = \"{}\" cannot be combined with secure aggregation: masked values are uniform in Z/2^64, so a \
                 cast or quantisation saves nothing and a sparse update cannot be masked",
                self.compression.update
            )));
        }
        if self.privacy.is_some_and(|p| p.distributed) && !self.secure_aggregation {
            return Err(TaskError::Invalid("distributed DP needs secure aggregation: the sites' noise shares only add up to the noise under the masks".into()));
        }
        if self.secure_aggregation && self.privacy.is_some_and(|p| p.adaptive.is_some()) {
            return Err(TaskError::Invalid("adaptive clipping needs the count of unclipped updates: it cannot be combined with secure aggregation".into()));
        }
        if self.data.label.is_regression() && self.data.augmentation.oversample_minority {
            return Err(TaskError::Invalid("data.augmentation.oversample_minority balances classes: a regression task has none".into()));
        }
        if let Some(r) = &self.record_privacy {
            r.validate().map_err(TaskError::Invalid)?;
            if self.data.label.is_regression() {
                return Err(TaskError::Invalid(
                    "record-level DP (DP-SGD) computes per-example gradients of the cross-entropy: it is not implemented for regression".into(),
                ));
            }
            let aug = &self.data.augmentation;
            if aug.jitter_copies > 0 || aug.oversample_minority || aug.image_copies > 0 {
                return Err(TaskError::Invalid(
                    "record-level DP (DP-SGD) cannot be combined with augmentation that copies rows (jitter_copies, oversample_minority, image_copies): \
                     the copies of one record would each count as another record"
                        .into(),
                ));
            }
            if self.strategy.name == crate::strategy::StrategyName::Scaffold {
                return Err(TaskError::Invalid(
                    "record-level DP (DP-SGD) cannot be combined with scaffold, whose correction bypasses the clipped gradients".into(),
                ));
            }
        }
        if self.data.min_category_count == 0 {
            return Err(TaskError::Invalid("data.min_category_count must be at least 1 (1 reports every category)".into()));
        }
        if self.data.augmentation.jitter_std < 0.0 {
            return Err(TaskError::Invalid("data.augmentation.jitter_std must be >= 0".into()));
        }
        Ok(())
    }

    /// The model kind against the data: a CNN needs images, images need classes, the
    /// optimiser's settings agree.
    fn validate_model_and_images(&self) -> Result<(), TaskError> {
        let invalid = |m: String| Err(TaskError::Invalid(m));
        let t = &self.training;
        if !(t.momentum.is_finite() && (0.0..1.0).contains(&t.momentum)) {
            return invalid(format!("training.momentum must be in [0, 1), got {}", t.momentum));
        }
        if t.momentum > 0.0 && t.optimizer != OptimizerName::Sgd {
            return invalid("training.momentum is SGD's: set optimizer = \"sgd\" (Adam has its own moments)".into());
        }
        let aug = &self.data.augmentation;
        if aug.image_copies > 0 || aug.crop_padding > 0 || aug.flip || aug.rotation_degrees != 0.0 {
            let Some(img) = &self.data.images else {
                return invalid("data.augmentation: image_copies, crop_padding, flip and rotation_degrees transform images; this task has none".into());
            };
            if !(aug.rotation_degrees.is_finite() && (0.0..=45.0).contains(&aug.rotation_degrees)) {
                return invalid(format!("data.augmentation.rotation_degrees must be in [0, 45], got {}", aug.rotation_degrees));
            }
            if aug.crop_padding >= img.height.min(img.width) {
                return invalid(format!("data.augmentation.crop_padding {} would shift a {}×{} image out of itself", aug.crop_padding, img.height, img.width));
            }
            if aug.image_copies > 16 {
                return invalid(format!("data.augmentation.image_copies is {}; at most 16 copies of each image", aug.image_copies));
            }
            if aug.image_copies > 0 && aug.crop_padding == 0 && !aug.flip && aug.rotation_degrees == 0.0 {
                return invalid("data.augmentation.image_copies needs crop_padding, flip or rotation_degrees: identical copies only reweight".into());
            }
        }
        if let Some(img) = &self.data.images {
            if !matches!(img.channels, 1 | 3) || img.height == 0 || img.width == 0 || img.height > MAX_IMAGE_SIDE || img.width > MAX_IMAGE_SIDE {
                return invalid(format!(
                    "data.images: {}×{}×{} is not an image size this federation reads (1 or 3 channels, sides 1 to {MAX_IMAGE_SIDE})",
                    img.channels, img.height, img.width
                ));
            }
            if self.data.label.is_regression() || self.data.label.classes.is_none() {
                return invalid("data.images: image labels are classes; list them in data.label.classes (IDX label values or folder names)".into());
            }
        }
        let m = &self.model;
        if m.kind != ModelKind::Custom && (m.name.is_some() || m.layout.is_some() || m.initial.is_some()) {
            return invalid("model.name, model.layout and model.initial belong to kind = \"custom\"".into());
        }
        match m.kind {
            ModelKind::Mlp => {
                if !m.filters.is_empty() || m.kernel.is_some() {
                    return invalid("model.filters and model.kernel belong to kind = \"cnn\"".into());
                }
            }
            ModelKind::Custom => validate_custom(m, self.record_privacy.is_some())?,
            ModelKind::Cnn => {
                let Some(img) = &self.data.images else {
                    return invalid("model.kind = \"cnn\" convolves images: the task needs [data.images]".into());
                };
                let kernel = m.kernel.unwrap_or(DEFAULT_KERNEL);
                if m.filters.is_empty() || m.filters.contains(&0) || m.filters.len() > 8 {
                    return invalid("model.filters: a CNN needs 1 to 8 convolutions, each with at least one filter".into());
                }
                if kernel.is_multiple_of(2) || kernel > 15 {
                    return invalid(format!("model.kernel must be odd and at most 15 (\"same\" padding), got {kernel}"));
                }
                if img.height >> m.filters.len() == 0 || img.width >> m.filters.len() == 0 {
                    return invalid(format!(
                        "model.filters: {} convolutions each halve the image, and {}×{} does not survive {} halvings",
                        m.filters.len(),
                        img.height,
                        img.width,
                        m.filters.len()
                    ));
                }
                if self.record_privacy.is_some() {
                    return invalid("record-level DP (DP-SGD) computes per-example gradients of the MLP only: it is not implemented for a CNN".into());
                }
            }
        }
        Ok(())
    }

    /// A custom model's layout, or why the task has none yet (the coordinator fills it in
    /// from the initial model before the federation starts).
    pub fn custom_layout(&self) -> Result<Option<crate::params::Layout>, TaskError> {
        match (self.model.kind, &self.model.layout) {
            (ModelKind::Custom, Some(tensors)) => Ok(Some(crate::params::Layout::new(tensors.clone()))),
            (ModelKind::Custom, None) => Err(TaskError::Invalid(
                "model.kind = \"custom\" needs the model's layout: start the coordinator with --init-model FILE.safetensors \
                 (written by the model's own binary), or set model.layout"
                    .into(),
            )),
            _ => Ok(None),
        }
    }

    /// The hospitals task (UCI Heart Disease, the seed article's model).
    pub fn hospitals() -> Self {
        // The bundled example file is the source of truth; this keeps the CLI scenario equal to it.
        Self::from_toml(include_str!("../../examples/hospitals.toml"), "examples/hospitals.toml")
            .unwrap_or_else(|e| panic!("bundled hospitals task is invalid: {e}"))
    }

    /// The task of synthetic workloads (`simulate --synthetic`): every column but `y` is a
    /// numeric feature; 1 local epoch of Adam 0.001 at batch 32, as the benchmarks specify.
    pub fn synthetic(hidden: Vec<usize>) -> Self {
        const TEMPLATE: &str = "name = \"synthetic\"\n[model]\n[training]\nlocal_epochs = 1\nbatch_size = 32\nlearning_rate = 0.001\n\
                                [data]\ncategorical = []\n[data.label]\ncolumn = \"y\"\npositive_above = 0.5\n";
        let mut task = Self::from_toml(TEMPLATE, "the synthetic task").unwrap_or_else(|e| panic!("the synthetic task template is invalid: {e}"));
        // Set after parsing, so widths from the command line can never panic here; callers
        // validate the task they run (zero widths are refused there).
        task.model.hidden = hidden;
        task
    }

    /// MNIST with the FedAvg paper's 2NN (`examples/mnist_2nn.toml`).
    pub fn mnist_2nn() -> Self {
        Self::from_toml(include_str!("../../examples/mnist_2nn.toml"), "examples/mnist_2nn.toml")
            .unwrap_or_else(|e| panic!("bundled MNIST task is invalid: {e}"))
    }

    /// MNIST with the FedAvg paper's CNN (`examples/mnist_cnn.toml`).
    pub fn mnist_cnn() -> Self {
        Self::from_toml(include_str!("../../examples/mnist_cnn.toml"), "examples/mnist_cnn.toml")
            .unwrap_or_else(|e| panic!("bundled MNIST task is invalid: {e}"))
    }

    /// The banks task (German credit).
    pub fn banks() -> Self {
        Self::from_toml(include_str!("../../examples/banks.toml"), "examples/banks.toml").unwrap_or_else(|e| panic!("bundled banks task is invalid: {e}"))
    }
}

/// A custom model's name and layout, which arrive in files and over the network.
fn validate_custom(m: &ModelSpec, record_privacy: bool) -> Result<(), TaskError> {
    let invalid = |m: String| Err(TaskError::Invalid(m));
    let name = m.name.as_deref().unwrap_or("");
    if name.is_empty() || name.len() > MAX_MODEL_NAME || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return invalid(format!(
            "model.name: kind = \"custom\" needs the name its sites registered the module under (1 to {MAX_MODEL_NAME} letters, digits, '-', '_' or '.'), got {name:?}"
        ));
    }
    if !m.filters.is_empty() || m.kernel.is_some() {
        return invalid("model.filters and model.kernel describe the built-in CNN; a custom model's module defines its own layers".into());
    }
    if record_privacy {
        return invalid(
            "record-level DP (DP-SGD) computes per-example gradients of the MLP only: it is not implemented for a custom model (update-level DP is)".into(),
        );
    }
    if let Some(h) = &m.initial
        && (h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return invalid(format!("model.initial must be a SHA-256 in hex (64 characters), got {:?}", h.chars().take(80).collect::<String>()));
    }
    let Some(tensors) = &m.layout else { return Ok(()) };
    if tensors.is_empty() || tensors.len() > MAX_CUSTOM_TENSORS {
        return invalid(format!("model.layout has {} tensors; a model has 1 to {MAX_CUSTOM_TENSORS}", tensors.len()));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut total: usize = 0;
    for (i, t) in tensors.iter().enumerate() {
        if t.name.is_empty() || t.name.len() > 256 || !names.insert(t.name.as_str()) {
            return invalid(format!(
                "model.layout: tensor {i} has an empty, overlong (over 256 bytes) or repeated name {:?}",
                t.name.chars().take(80).collect::<String>()
            ));
        }
        if t.shape.is_empty() || t.shape.len() > 8 || t.shape.contains(&0) {
            return invalid(format!("model.layout: tensor `{}` has shape {:?}; every tensor has 1 to 8 dimensions, none of them 0", t.name, t.shape));
        }
        let len = t.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).filter(|&n| n <= MAX_CUSTOM_PARAMS);
        total = match len.and_then(|n| total.checked_add(n)).filter(|&n| n <= MAX_CUSTOM_PARAMS) {
            Some(t) => t,
            None => return invalid(format!("model.layout: the tensors up to `{}` hold more than {MAX_CUSTOM_PARAMS} values", t.name)),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_tasks_parse_and_round_trip() {
        for task in [Task::hospitals(), Task::banks(), Task::mnist_2nn(), Task::mnist_cnn()] {
            let again = Task::from_toml(&task.to_toml(), "round trip").unwrap();
            assert_eq!(task, again);
        }
        assert_eq!(Task::hospitals().data.label.rule().unwrap(), LabelRule::PositiveAbove(0.0));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let text = include_str!("../../examples/hospitals.toml").replace("local_epochs", "local_epoch");
        let err = Task::from_toml(&text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("x.toml") && err.contains("local_epoch"), "{err}");
        let text = include_str!("../../examples/hospitals.toml").replace("batch_size = 32", "batch_size = 0");
        let err = Task::from_toml(&text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("batch_size"), "{err}");
    }

    #[test]
    fn the_fingerprint_ignores_layout_and_sees_every_value() {
        let text = include_str!("../../examples/hospitals.toml");
        let a = Task::from_toml(text, "a").unwrap();
        let reformatted = Task::from_toml(&format!("# a comment\n{}", text.replace("batch_size = 32", "batch_size    =   32")), "b").unwrap();
        assert_eq!(a.fingerprint(), reformatted.fingerprint());
        let changed = Task::from_toml(&text.replace("batch_size = 32", "batch_size = 31"), "c").unwrap();
        assert_ne!(a.fingerprint(), changed.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
    }

    #[test]
    fn a_cnn_needs_images_and_image_tasks_need_classes() {
        let cnn = include_str!("../../examples/mnist_cnn.toml");
        let task = Task::from_toml(cnn, "c.toml").unwrap();
        assert_eq!((task.model.kind, task.training.optimizer), (ModelKind::Cnn, OptimizerName::Sgd));
        let refused = |text: String, expected: &str| {
            let err = Task::from_toml(&text, "x.toml").unwrap_err().to_string();
            assert!(err.contains(expected), "expected `{expected}` in: {err}");
        };
        let no_images = cnn.replace("[data.images]\nchannels = 1\nheight = 28\nwidth = 28\n", "");
        refused(no_images, "needs [data.images]");
        refused(cnn.replace("height = 28", "height = 2"), "does not survive 2 halvings");
        refused(cnn.replace("kernel = 5", "kernel = 4"), "model.kernel must be odd");
        refused(cnn.replace("channels = 1", "channels = 2"), "not an image size");
        refused(cnn.replace("optimizer = \"sgd\"", "momentum = 0.9"), "set optimizer = \"sgd\"");
        refused(cnn.replace("optimizer = \"sgd\"", "optimizer = \"sgd\"\nmomentum = 1.5"), "momentum must be in [0, 1)");
        let two_nn = include_str!("../../examples/mnist_2nn.toml");
        refused(two_nn.replace("hidden = [200, 200]", "hidden = [200, 200]\nfilters = [8]"), "belong to kind = \"cnn\"");
        refused(
            two_nn.replace("classes = [\"0\", \"1\", \"2\", \"3\", \"4\", \"5\", \"6\", \"7\", \"8\", \"9\"]", "positive_above = 4"),
            "list them in data.label.classes",
        );
        assert!(!Task::hospitals().to_toml().contains("optimizer") && !Task::hospitals().to_toml().contains("images"), "table tasks keep their fingerprint");
    }

    #[test]
    fn a_custom_models_name_and_layout_are_checked_as_hostile_input() {
        let base = include_str!("../../examples/custom_model/task.toml");
        let task = Task::from_toml(base, "t.toml").unwrap();
        assert_eq!((task.model.kind, task.model.name.as_deref()), (ModelKind::Custom, Some("tiny-net")));
        assert!(task.custom_layout().unwrap_err().to_string().contains("--init-model"), "no layout yet: the coordinator must be given one");
        let with_layout = |tensors: &str| format!("{base}\n{tensors}").replace("name = \"tiny-net\"", "name = \"tiny-net\"\nlayout = LAYOUT");
        let refused = |text: String, expected: &str| {
            let err = Task::from_toml(&text, "x.toml").unwrap_err().to_string();
            assert!(err.contains(expected), "expected `{expected}` in: {err}");
        };
        let layout = |l: &str| with_layout("").replace("LAYOUT", l);
        let ok = Task::from_toml(&layout(r#"[{ name = "w", shape = [3, 2] }, { name = "b", shape = [2] }]"#), "ok.toml").unwrap();
        assert_eq!(ok.custom_layout().unwrap().unwrap().total(), 8);
        assert_ne!(ok.fingerprint(), task.fingerprint(), "the layout is part of the task's identity");
        refused(layout("[]"), "1 to 4096");
        refused(layout(r#"[{ name = "w", shape = [3] }, { name = "w", shape = [2] }]"#), "repeated name");
        refused(layout(r#"[{ name = "", shape = [3] }]"#), "empty");
        refused(layout(r#"[{ name = "w", shape = [3, 0] }]"#), "none of them 0");
        refused(layout(r#"[{ name = "w", shape = [] }]"#), "1 to 8 dimensions");
        refused(layout(r#"[{ name = "w", shape = [65536, 65536, 65536] }]"#), "more than");
        refused(layout(r#"[{ name = "a", shape = [1073741824] }, { name = "b", shape = [1] }]"#), "up to `b`");
        refused(base.replace("name = \"tiny-net\"", "name = \"../etc\""), "model.name");
        refused(base.replace("name = \"tiny-net\"", "name = \"tiny-net\"\ninitial = \"beef\""), "SHA-256 in hex");
        refused(base.replace("name = \"tiny-net\"", "name = \"tiny-net\"\nfilters = [8]"), "built-in CNN");
        refused(base.replace("kind = \"custom\"\n", ""), "belong to kind = \"custom\"");
    }

    #[test]
    fn label_needs_exactly_one_rule() {
        let spec = LabelSpec {
            column: "y".into(),
            kind: LabelKind::Classification,
            positive_above: Some(0.0),
            positive_values: Some(vec!["a".into()]),
            classes: None,
        };
        assert!(spec.rule().is_err());
        let regression = LabelSpec { kind: LabelKind::Regression, positive_above: None, ..spec.clone() };
        assert!(regression.rule().unwrap_err().to_string().contains("regression target"), "a rule and regression contradict");
        let regression = LabelSpec { positive_values: None, ..regression };
        assert_eq!((regression.rule().unwrap(), regression.num_classes()), (LabelRule::Value, 1));
    }

    #[test]
    fn a_regression_task_parses_and_refuses_what_needs_classes() {
        let text = include_str!("../../examples/hospitals.toml").replace("positive_above = 0   # num > 0: disease present", "kind = \"regression\"");
        let task = Task::from_toml(&text, "r.toml").unwrap();
        assert!(task.data.label.is_regression());
        assert!(task.to_toml().contains("kind = \"regression\""), "the kind reaches the sites");
        assert!(!Task::hospitals().to_toml().contains("kind"), "classification tasks keep their fingerprint");
        let oversampled = text.replace("oversample_minority = false", "oversample_minority = true");
        assert!(Task::from_toml(&oversampled, "r.toml").unwrap_err().to_string().contains("oversample_minority"));
    }
}
