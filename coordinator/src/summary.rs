//! `summary.json`: the machine-readable result of a run.

use std::collections::BTreeMap;

use flotilla_common::Task;
use serde_json::{Value, json};

use crate::federation::{Outcome, Policy};
use crate::simulate::baselines::{Comparison, Scorecard};
use crate::simulate::report::local_mean_score;

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
            "mae": last.and_then(|r| r.regression.map(|m| m.mae)),
            "rmse": last.and_then(|r| r.regression.map(|m| m.rmse())),
            "r2": last.and_then(|r| r.regression.and_then(|m| m.r2())),
            "per_site": o.final_site_metrics,
        }),
    };
    let mut v = json!({
        "task": task.name,
        "rounds": o.history.last().map_or(0, |r| r.round),
        "seed": seed,
        "final": federated_final,
        "sites": o.sites.iter().map(|(s, n)| (s.clone(), json!({ "train_examples": n, "record_epsilon": o.record_epsilon.get(s) }))).collect::<BTreeMap<_, _>>(),
        "record_epsilon": o.record_epsilon.values().copied().reduce(f64::max),
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
        });
        // The local-only models' mean headline metric, named for what it is.
        let key = if c.federated.pooled.regression.is_some() { "local_mean_r2" } else { "local_mean_accuracy" };
        v["baselines"][key] = json!(local_mean_score(c));
    }
    v
}

fn metrics(s: &Scorecard) -> Value {
    let r = s.pooled.regression;
    json!({
        "accuracy": s.pooled.accuracy,
        "loss": s.pooled.loss,
        "auc": s.pooled.auc,
        "mae": r.map(|r| r.mae),
        "rmse": r.map(|r| r.rmse()),
        "r2": r.and_then(|r| r.r2()),
        "examples": s.pooled.examples,
        "per_site": s.per_site,
    })
}

/// The configuration a run was made with, as `summary.json`'s `config`: what a reader needs to
/// know to interpret (or repeat) it. `backend` is the sites' burn backend when the coordinator
/// knows it (`simulate`); served sites choose their own.
pub fn config(task: &Task, policy: &Policy, seed: u64, backend: Option<&str>) -> Value {
    json!({
        "seed": seed,
        "rounds": policy.rounds,
        "strategy": task.strategy,
        "server_learning_rate": task.training.server_learning_rate,
        "training": task.training,
        "model": task.model,
        "differential_privacy": task.privacy,
        "record_privacy": task.record_privacy,
        "secure_aggregation": task.secure_aggregation,
        "round_policy": {
            "min_clients": policy.min_clients,
            "fraction_fit": policy.fraction_fit,
            "min_fit_results": policy.min_fit_results,
            "over_selection": policy.over_selection,
            "sampling": format!("{:?}", policy.sampling).to_lowercase(),
            "max_update_norm": policy.max_update_norm,
            "lease_seconds": policy.lease.as_secs_f64(),
            "round_timeout_seconds": policy.round_timeout.as_secs_f64(),
            "grace_seconds": policy.grace.as_secs_f64(),
            "allowed_sites": policy.allowed_sites,
            "early_stop_patience": policy.patience,
        },
        "backend": backend,
    })
}
