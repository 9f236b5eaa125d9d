//! `summary.json`: the machine-readable result of a run.

use std::collections::BTreeMap;

use flotilla_common::Task;
use serde_json::{json, Value};

use crate::federation::Outcome;
use crate::simulate::baselines::{Comparison, Scorecard};
use crate::simulate::report::local_mean_accuracy;

/// The summary of a finished federation; with a comparison, `final` is measured on the
/// pooled test split and the baselines are included.
pub fn summary(task: &Task, seed: u64, o: &Outcome, comparison: Option<&Comparison>) -> Value {
    let last = o.history.last();
    let federated_final = match comparison {
        Some(c) => metrics(&c.federated),
        None => json!({
            "accuracy": last.map(|r| r.accuracy),
            "loss": last.map(|r| r.loss),
            "auc": last.and_then(|r| r.auc),
            "per_site": o.final_site_metrics,
        }),
    };
    let mut v = json!({
        "task": task.name,
        "rounds": o.history.last().map_or(0, |r| r.round),
        "seed": seed,
        "final": federated_final,
        "sites": o.sites.iter().map(|(s, n)| (s.clone(), json!({ "train_examples": n }))).collect::<BTreeMap<_, _>>(),
        "model": { "hidden": task.model.hidden, "inputs": o.shape.inputs, "outputs": o.shape.outputs, "parameters": o.shape.num_params() },
        "training": task.training,
        "history": o.history,
        "epsilon": o.history.last().and_then(|r| r.epsilon),
    });
    if let Some(c) = comparison {
        v["baselines"] = json!({
            "epochs": c.epochs,
            "centralized": metrics(&c.centralized),
            "local": c.local.iter().map(|(s, sc)| (s.clone(), metrics(sc))).collect::<BTreeMap<_, _>>(),
            "local_mean_accuracy": local_mean_accuracy(c),
        });
    }
    v
}

fn metrics(s: &Scorecard) -> Value {
    json!({
        "accuracy": s.pooled.accuracy,
        "loss": s.pooled.loss,
        "auc": s.pooled.auc,
        "examples": s.pooled.examples,
        "per_site": s.per_site,
    })
}
