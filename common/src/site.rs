//! A site's data, from its table (or its images) to encoded train, validation and test splits.
//!
//! Before the federation's plan exists a site can only clean, split and summarise
//! ([`PreparedSite`]); with the plan it encodes and augments ([`SiteData`]).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::augment::augment;
use crate::data::images::ImageSet;
use crate::data::rows::Row;
use crate::data::split::stratified_split;
use crate::data::{Dataset, Plan, RawTable, SiteRows, SiteStats};
use crate::error::DataError;
use crate::seed::derive_seed;
use crate::task::Task;

/// What a site trains on: the rows of a CSV file, or labelled images.
#[derive(Debug, Clone)]
pub enum SiteInput {
    Table(RawTable),
    Images(ImageSet),
    /// Images on disk, read once the task says their size and classes (a site joins before
    /// it has the task): `count` images, as counted without decoding them.
    ImageFiles {
        path: std::path::PathBuf,
        count: usize,
    },
}

impl From<RawTable> for SiteInput {
    fn from(t: RawTable) -> Self {
        SiteInput::Table(t)
    }
}

impl From<ImageSet> for SiteInput {
    fn from(i: ImageSet) -> Self {
        SiteInput::Images(i)
    }
}

impl SiteInput {
    /// Images at `path` (an IDX file, a folder with an IDX pair, or a folder per class),
    /// counted now and read with [`SiteInput::load`] once the task is known.
    pub fn image_files(path: &std::path::Path) -> Result<Self, DataError> {
        Ok(SiteInput::ImageFiles { path: path.to_owned(), count: crate::data::images::count_images(path)? })
    }

    /// True when `path` looks like images rather than a CSV file: a folder, or an IDX file.
    pub fn looks_like_images(path: &std::path::Path) -> bool {
        path.is_dir() || path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains("idx3") || n.contains("idx1"))
    }

    /// The input ready for `task`: image files read with the task's size and classes (and
    /// refused when they are not the images counted at join); anything else as it is.
    pub fn load(&self, task: &Task) -> Result<std::borrow::Cow<'_, SiteInput>, DataError> {
        match self {
            SiteInput::ImageFiles { path, count } => {
                let spec = task.data.images.ok_or_else(|| DataError::File {
                    file: path.clone(),
                    message: "holds images, and this task trains on a table (it has no [data.images])".into(),
                })?;
                let images = ImageSet::read(path, spec, task.data.label.classes.as_deref().unwrap_or_default())?;
                if images.len() != *count {
                    return Err(DataError::File {
                        file: path.clone(),
                        message: format!("held {count} images at join and now {}: it changed while the site ran", images.len()),
                    });
                }
                Ok(std::borrow::Cow::Owned(SiteInput::Images(images)))
            }
            other => Ok(std::borrow::Cow::Borrowed(other)),
        }
    }

    /// Where the data came from.
    pub fn source(&self) -> &std::path::Path {
        match self {
            SiteInput::Table(t) => &t.source,
            SiteInput::Images(i) => &i.source,
            SiteInput::ImageFiles { path, .. } => path,
        }
    }

    /// Rows (or images) before cleaning.
    pub fn len(&self) -> usize {
        match self {
            SiteInput::Table(t) => t.rows.len(),
            SiteInput::Images(i) => i.len(),
            SiteInput::ImageFiles { count, .. } => *count,
        }
    }

    /// True when there is nothing to train on.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The table, when the input is one.
    pub fn table(&self) -> Option<&RawTable> {
        match self {
            SiteInput::Table(t) => Some(t),
            SiteInput::Images(_) | SiteInput::ImageFiles { .. } => None,
        }
    }
}

/// A site's cleaned rows, its seeded split and the aggregates of its training split.
#[derive(Debug, Clone)]
pub struct PreparedSite {
    pub name: String,
    /// The cleaned rows; for images, one row per image holding only its label.
    pub rows: SiteRows,
    /// The images, for an image task.
    pub images: Option<ImageSet>,
    pub train: Vec<usize>,
    /// Held out of the training rows: its loss picks the round whose model is kept.
    pub validation: Vec<usize>,
    /// Held out for reporting only.
    pub test: Vec<usize>,
    /// Aggregates of the training split: all the coordinator learns of the data.
    pub stats: SiteStats,
}

/// A site's encoded examples under the federation's plan.
#[derive(Debug, Clone)]
pub struct SiteData {
    /// The training split after augmentation.
    pub train: Dataset,
    pub validation: Dataset,
    pub test: Dataset,
}

impl SiteData {
    /// What a site reports of a global model: its metrics on the test rows, with the loss on
    /// the validation rows (when the site has any).
    pub fn evaluate(
        &self,
        params: &crate::FlatParams,
        shape: &crate::model::ModelShape,
        backend: crate::train::Backend,
    ) -> Result<crate::train::Evaluation, crate::TrainError> {
        let mut eval = crate::train::evaluate(params, shape, &self.test, backend)?;
        if !self.validation.is_empty() {
            let v = crate::train::evaluate(params, shape, &self.validation, backend)?;
            (eval.validation_loss, eval.validation_examples) = (Some(v.loss), v.examples);
        }
        Ok(eval)
    }
}

impl PreparedSite {
    /// Cleans, labels and splits a table; `seed` is the federation seed. Categories rarer
    /// than the task's k are folded before anything is summarised.
    pub fn new(name: &str, table: &RawTable, task: &Task, seed: u64) -> Result<Self, DataError> {
        Self::with_min_count(name, table, task, seed, task.data.min_category_count)
    }

    /// As [`PreparedSite::new`] with the site's own k (its policy may raise the task's).
    pub fn with_min_count(name: &str, table: &RawTable, task: &Task, seed: u64, k: u64) -> Result<Self, DataError> {
        if task.data.images.is_some() {
            return Err(DataError::File { file: table.source.clone(), message: "is a table, and this task trains on images ([data.images])".into() });
        }
        Self::prepare(name, SiteRows::from_table(table, &task.data)?, None, &table.source, task, seed, k)
    }

    /// Cleans (a table) or labels (images), splits and summarises a site's input under the
    /// site's k. The input must be of the task's kind.
    pub fn from_input(name: &str, input: &SiteInput, task: &Task, seed: u64, k: u64) -> Result<Self, DataError> {
        let input = input.load(task)?;
        match (input.as_ref(), &task.data.images) {
            (SiteInput::Table(table), _) => Self::with_min_count(name, table, task, seed, k),
            // `load` read them; nothing is left unread.
            (SiteInput::ImageFiles { path, .. }, _) => Err(DataError::File { file: path.clone(), message: "the images were not read".into() }),
            (SiteInput::Images(images), Some(spec)) if images.spec == *spec => {
                Self::prepare(name, image_rows(images), Some(images.clone()), &images.source, task, seed, k)
            }
            (SiteInput::Images(images), Some(spec)) => Err(DataError::File {
                file: images.source.clone(),
                message: format!(
                    "holds {}×{}×{} images; the task's are {}×{}×{}",
                    images.spec.channels, images.spec.height, images.spec.width, spec.channels, spec.height, spec.width
                ),
            }),
            (SiteInput::Images(i), None) => {
                Err(DataError::File { file: i.source.clone(), message: "holds images, and this task trains on a table (it has no [data.images])".into() })
            }
        }
    }

    /// Splits and summarises cleaned rows (and, for images, the images they label).
    fn prepare(name: &str, rows: SiteRows, images: Option<ImageSet>, source: &std::path::Path, task: &Task, seed: u64, k: u64) -> Result<Self, DataError> {
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, &[name, "split"]));
        let labels = rows.labels();
        let (train, test) = stratified_split(&labels, task.data.test_fraction, &mut rng);
        // The validation rows come out of the training rows, with their own stream so that
        // the test split does not move when the validation share does.
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, &[name, "validation"]));
        let train_labels: Vec<u32> = train.iter().map(|&i| labels[i]).collect();
        let (fit, held) = stratified_split(&train_labels, task.data.validation_fraction, &mut rng);
        let (validation, train): (Vec<usize>, Vec<usize>) = (held.iter().map(|&i| train[i]).collect(), fit.iter().map(|&i| train[i]).collect());
        if train.is_empty() || test.is_empty() {
            return Err(DataError::File { file: source.to_owned(), message: format!("{} usable rows are too few for a train/test split", rows.rows.len()) });
        }
        let k = k.max(task.data.min_category_count);
        let classes = task.data.label.num_classes();
        let stats = match &images {
            Some(i) => i.summarise(&train, classes, k),
            None => SiteStats::summarise(&rows, &train, classes, k),
        };
        Ok(Self { name: name.to_owned(), rows, images, train, validation, test, stats })
    }

    /// Number of training examples (before augmentation): the site's weight in FedAvg.
    pub fn num_train(&self) -> usize {
        self.train.len()
    }

    /// Encodes both splits with the plan and augments the training split.
    pub fn encode(&self, plan: &Plan, task: &Task, seed: u64) -> Result<SiteData, DataError> {
        let classes = task.data.label.num_classes();
        let encode = |indices: &[usize]| match &self.images {
            Some(images) => images.encode(plan, indices, classes),
            None => plan.encode(&self.rows, indices, classes),
        };
        let (train, test, validation) = (encode(&self.train)?, encode(&self.test)?, encode(&self.validation)?);
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, &[&self.name, "augment"]));
        // Every value of an image is a standardised number.
        let numeric = if self.images.is_some() { (0..train.n_features).collect() } else { plan.numeric_positions() };
        let mut train = augment(&train, &task.data.augmentation, &numeric, &mut rng);
        if let Some(images) = self.images.as_ref().filter(|_| task.data.augmentation.image_copies > 0) {
            // Black, in each channel's standard units, fills what a shift or a turn uncovers.
            let black: Vec<f32> = crate::data::images::channel_moments(plan, images.spec.channels)?.iter().map(|(mean, std)| -mean / std).collect();
            train = crate::data::images::augment_images(&train, images.spec, &task.data.augmentation, &black, &mut rng);
        }
        Ok(SiteData { train, validation, test })
    }
}

/// An image set's rows for splitting: one per image, holding only its label.
fn image_rows(images: &ImageSet) -> SiteRows {
    let rows = images.labels.iter().enumerate().map(|(i, &label)| Row { line: i as u64 + 1, label, target: 0.0, values: Vec::new() }).collect();
    SiteRows { columns: Vec::new(), categorical: Vec::new(), rows, skipped: Vec::new(), identifiers: Vec::new() }
}
