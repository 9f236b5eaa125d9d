//! The comparisons a federation must beat: each site training alone, and centralised training
//! on the pooled data (which a real federation is not allowed to do). Same model, same
//! initial parameters, the same rounds of local epochs as the federation made, and the same
//! rule for the model kept: the round with the lowest validation loss (the site's own
//! validation rows for local-only, all of them pooled for centralised), stopping early after
//! `patience` rounds without improvement when the federation does.

use std::collections::BTreeMap;

use rayon::prelude::*;

use flotilla_common::data::Dataset;
use flotilla_common::model::ModelShape;
use flotilla_common::seed::derive_seed;
use flotilla_common::site::SiteData;
use flotilla_common::train::local::LocalConfig;
use flotilla_common::train::{Backend, Evaluation, evaluate, train_local};
use flotilla_common::{FlatParams, Task, TrainError};

/// One model evaluated on every site's test split and on the pooled test split.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scorecard {
    pub pooled: Evaluation,
    pub per_site: BTreeMap<String, Evaluation>,
}

/// Every model of the comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Comparison {
    pub federated: Scorecard,
    pub local: BTreeMap<String, Scorecard>,
    pub centralized: Scorecard,
    /// Epochs each baseline trained: rounds × local epochs.
    pub epochs: u32,
}

/// Evaluates `params` on each site's test split and on their union.
pub fn scorecard(params: &FlatParams, shape: &ModelShape, sites: &BTreeMap<String, SiteData>, backend: Backend) -> Result<Scorecard, TrainError> {
    let mut per_site = BTreeMap::new();
    for (name, d) in sites {
        per_site.insert(name.clone(), evaluate(params, shape, &d.test, backend)?);
    }
    let pooled = Dataset::concat(sites.values().map(|d| &d.test));
    Ok(Scorecard { pooled: evaluate(params, shape, &pooled, backend)?, per_site })
}

/// Trains the local-only and centralised baselines and scores them with the federated model.
pub fn compare(task: &Task, shape: &ModelShape, sites: &BTreeMap<String, SiteData>, federated: &FlatParams, rounds: Rounds) -> Result<Comparison, TrainError> {
    let Rounds { rounds, patience, seed, backend } = rounds;
    let epochs = rounds * task.training.local_epochs;
    let init = shape.init_params(seed);
    let schedule = Schedule { task, shape, rounds, patience, seed, backend };
    let pooled_train = Dataset::concat(sites.values().map(|d| &d.train));
    let pooled_validation = Dataset::concat(sites.values().map(|d| &d.validation));
    // Every baseline trains on its own seeds, so they train side by side (one per core) and
    // each gives the model it would give alone.
    let mut jobs: Vec<(&str, &Dataset, &Dataset)> = sites.iter().map(|(name, d)| (name.as_str(), &d.train, &d.validation)).collect();
    jobs.push(("<centralized>", &pooled_train, &pooled_validation));
    let mut models = jobs.into_par_iter().map(|(label, train, validation)| schedule.train(&init, train, validation, label)).collect::<Result<Vec<_>, _>>()?;
    let central = models.pop().unwrap_or_else(|| unreachable!("the centralised job is always there"));
    let mut local = BTreeMap::new();
    for (name, model) in sites.keys().zip(&models) {
        local.insert(name.clone(), scorecard(model, shape, sites, backend)?);
    }
    Ok(Comparison { federated: scorecard(federated, shape, sites, backend)?, local, centralized: scorecard(&central, shape, sites, backend)?, epochs })
}

/// The federation's schedule, which the baselines follow.
#[derive(Debug, Clone, Copy)]
pub struct Rounds {
    pub rounds: u32,
    /// Early stopping after this many rounds without a lower validation loss.
    pub patience: Option<u32>,
    pub seed: u64,
    pub backend: Backend,
}

/// How a baseline trains: the federation's rounds of local epochs, keeping the round with the
/// lowest validation loss (the last round without validation rows).
struct Schedule<'a> {
    task: &'a Task,
    shape: &'a ModelShape,
    rounds: u32,
    patience: Option<u32>,
    seed: u64,
    backend: Backend,
}

impl Schedule<'_> {
    fn train(&self, init: &FlatParams, train: &Dataset, validation: &Dataset, label: &str) -> Result<FlatParams, TrainError> {
        let validation_loss = |p: &FlatParams| -> Result<Option<f64>, TrainError> {
            if validation.is_empty() { Ok(None) } else { Ok(Some(evaluate(p, self.shape, validation, self.backend)?.loss)) }
        };
        let mut current = init.clone();
        let mut best = (validation_loss(&current)?, 0u32, current.clone());
        for round in 1..=self.rounds {
            let cfg = LocalConfig {
                epochs: self.task.training.local_epochs,
                batch_size: self.task.training.batch_size,
                learning_rate: self.task.training.learning_rate,
                seed: derive_seed(self.seed, &[label, "baseline", &round.to_string()]),
                proximal_mu: 0.0,
                scaffold_correction: None,
                backend: self.backend,
                optimizer: flotilla_common::train::local::Optim::for_task(&self.task.training),
            };
            current = train_local(&current, self.shape, train, &cfg)?.0;
            match (validation_loss(&current)?, best.0) {
                (None, _) => best = (None, round, current.clone()),
                (Some(loss), Some(b)) if loss < b => best = (Some(loss), round, current.clone()),
                (Some(_), Some(_)) if self.patience.is_some_and(|p| round - best.1 >= p) => break,
                _ => {}
            }
        }
        Ok(best.2)
    }
}
