//! A site's data, from its table to encoded train, validation and test splits.
//!
//! Before the federation's plan exists a site can only clean, split and summarise
//! ([`PreparedSite`]); with the plan it encodes and augments ([`SiteData`]).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::augment::augment;
use crate::data::split::stratified_split;
use crate::data::{Dataset, Plan, RawTable, SiteRows, SiteStats};
use crate::error::DataError;
use crate::seed::derive_seed;
use crate::task::Task;

/// A site's cleaned rows, its seeded split and the aggregates of its training split.
#[derive(Debug, Clone)]
pub struct PreparedSite {
    pub name: String,
    pub rows: SiteRows,
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
        let rows = SiteRows::from_table(table, &task.data)?;
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
            return Err(DataError::File { file: table.source.clone(), message: format!("{} usable rows are too few for a train/test split", rows.rows.len()) });
        }
        let k = k.max(task.data.min_category_count);
        let stats = SiteStats::summarise(&rows, &train, task.data.label.num_classes(), k);
        Ok(Self { name: name.to_owned(), rows, train, validation, test, stats })
    }

    /// Number of training examples (before augmentation): the site's weight in FedAvg.
    pub fn num_train(&self) -> usize {
        self.train.len()
    }

    /// Encodes both splits with the plan and augments the training split.
    pub fn encode(&self, plan: &Plan, task: &Task, seed: u64) -> Result<SiteData, DataError> {
        let classes = task.data.label.num_classes();
        let train = plan.encode(&self.rows, &self.train, classes)?;
        let test = plan.encode(&self.rows, &self.test, classes)?;
        let validation = plan.encode(&self.rows, &self.validation, classes)?;
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, &[&self.name, "augment"]));
        let train = augment(&train, &task.data.augmentation, &plan.numeric_positions(), &mut rng);
        Ok(SiteData { train, validation, test })
    }
}
