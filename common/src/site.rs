//! A site's data, from its table to encoded train and test splits.
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
    pub test: Vec<usize>,
    /// Aggregates of the training split: all the coordinator learns of the data.
    pub stats: SiteStats,
}

/// A site's encoded examples under the federation's plan.
#[derive(Debug, Clone)]
pub struct SiteData {
    /// The training split after augmentation.
    pub train: Dataset,
    pub test: Dataset,
}

impl PreparedSite {
    /// Cleans, labels and splits a table; `seed` is the federation seed. Categories rarer
    /// than the task's k are folded before anything is summarised.
    pub fn new(name: &str, table: &RawTable, task: &Task, seed: u64) -> Result<Self, DataError> {
        Self::with_min_count(name, table, task, seed, task.data.min_category_count)
    }

    /// As [`PreparedSite::new`] with the site's own k (its policy may raise the task's).
    pub fn with_min_count(name: &str, table: &RawTable, task: &Task, seed: u64, k: u64) -> Result<Self, DataError> {
        let mut rows = SiteRows::from_table(table, &task.data)?;
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, &[name, "split"]));
        let (train, test) = stratified_split(&rows.labels(), task.data.test_fraction, &mut rng);
        if train.is_empty() || test.is_empty() {
            return Err(DataError::File { file: table.source.clone(), message: format!("{} usable rows are too few for a train/test split", rows.rows.len()) });
        }
        rows.fold_rare_categories(&train, k.max(task.data.min_category_count));
        let stats = SiteStats::of_rows(&rows, &train);
        Ok(Self { name: name.to_owned(), rows, train, test, stats })
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
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, &[&self.name, "augment"]));
        let train = augment(&train, &task.data.augmentation, &plan.numeric_positions(), &mut rng);
        Ok(SiteData { train, test })
    }
}
