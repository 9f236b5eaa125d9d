//! The comparisons a federation must beat: each site training alone, and centralised training
//! on the pooled data (which a real federation is not allowed to do). Same model, same
//! initial parameters, same number of passes over the data as the federation made.

use std::collections::BTreeMap;

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
pub fn compare(
    task: &Task,
    shape: &ModelShape,
    sites: &BTreeMap<String, SiteData>,
    federated: &FlatParams,
    rounds: u32,
    seed: u64,
    backend: Backend,
) -> Result<Comparison, TrainError> {
    let epochs = rounds * task.training.local_epochs;
    let init = shape.init_params(seed);
    let cfg = |label: &str| LocalConfig {
        epochs,
        batch_size: task.training.batch_size,
        learning_rate: task.training.learning_rate,
        seed: derive_seed(seed, &[label, "baseline"]),
        proximal_mu: 0.0,
        scaffold_correction: None,
        backend,
    };
    let mut local = BTreeMap::new();
    for (name, d) in sites {
        let (model, _) = train_local(&init, shape, &d.train, &cfg(name))?;
        local.insert(name.clone(), scorecard(&model, shape, sites, backend)?);
    }
    let pooled_train = Dataset::concat(sites.values().map(|d| &d.train));
    let (central, _) = train_local(&init, shape, &pooled_train, &cfg("<centralized>"))?;
    Ok(Comparison { federated: scorecard(federated, shape, sites, backend)?, local, centralized: scorecard(&central, shape, sites, backend)?, epochs })
}
