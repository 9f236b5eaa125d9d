//! The coordinator's Prometheus metrics (`flotilla_` prefix, base units, `_total` counters).
//! No label carries data or a site's name: labels are phases and refusal kinds only.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// A refusal's kind (the gRPC status it becomes) and what was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub what: String,
    pub kind: String,
}

/// A phase of the round state machine.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeclineLabels {
    pub cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

/// Every metric the coordinator exports.
#[derive(Debug)]
pub struct Metrics {
    pub rounds_closed: Counter,
    pub round: Gauge,
    pub rounds_planned: Gauge,
    pub phase: Family<PhaseLabels, Gauge>,
    pub sites_joined: Counter,
    pub sites_connected: Gauge,
    pub cohort_sites: Gauge,
    pub updates_accepted: Counter,
    pub updates_declined: Family<DeclineLabels, Counter>,
    pub refused: Family<RefusalLabels, Counter>,
    pub received_bytes: Counter,
    pub sent_bytes: Counter,
    pub delta_downloads: Counter,
    pub delta_saved_bytes: Counter,
    pub round_seconds: Histogram,
    pub durable_write_seconds: Histogram,
    pub aggregation_seconds: Histogram,
    pub evaluation_accuracy: Gauge<f64, AtomicU64>,
    pub evaluation_loss: Gauge<f64, AtomicU64>,
    pub evaluation_auc: Gauge<f64, AtomicU64>,
    pub evaluation_r2: Gauge<f64, AtomicU64>,
    pub evaluation_rmse: Gauge<f64, AtomicU64>,
    pub validation_loss: Gauge<f64, AtomicU64>,
    pub epsilon: Gauge<f64, AtomicU64>,
    pub secagg_dropouts: Counter,
    pub ready: Gauge,
}

impl Metrics {
    /// The metrics, registered under `flotilla_` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            rounds_closed: Counter::default(),
            round: Gauge::default(),
            rounds_planned: Gauge::default(),
            phase: Family::default(),
            sites_joined: Counter::default(),
            sites_connected: Gauge::default(),
            cohort_sites: Gauge::default(),
            updates_accepted: Counter::default(),
            updates_declined: Family::default(),
            refused: Family::default(),
            received_bytes: Counter::default(),
            sent_bytes: Counter::default(),
            delta_downloads: Counter::default(),
            delta_saved_bytes: Counter::default(),
            round_seconds: Histogram::new(exponential_buckets(0.01, 3.0, 10)),
            durable_write_seconds: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
            aggregation_seconds: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
            evaluation_accuracy: Gauge::default(),
            evaluation_loss: Gauge::default(),
            evaluation_auc: Gauge::default(),
            evaluation_r2: Gauge::default(),
            evaluation_rmse: Gauge::default(),
            validation_loss: Gauge::default(),
            epsilon: Gauge::default(),
            secagg_dropouts: Counter::default(),
            ready: Gauge::default(),
        };
        registry.register("rounds_closed", "Rounds closed (round 0, the initial model's evaluation, included)", m.rounds_closed.clone());
        registry.register("round", "The round the federation is in", m.round.clone());
        registry.register("rounds_planned", "Rounds the run will train", m.rounds_planned.clone());
        registry.register("phase", "1 for the phase the round state machine is in", m.phase.clone());
        registry.register("sites_joined", "Joins accepted (a rejoin counts again)", m.sites_joined.clone());
        registry.register("sites_connected", "Sites connected now", m.sites_connected.clone());
        registry.register("cohort_sites", "Sites selected for the open training round", m.cohort_sites.clone());
        registry.register("updates_accepted", "Updates accepted into a round's sum", m.updates_accepted.clone());
        registry.register("updates_declined", "Training requests a site declined, by cause (its local training diverged)", m.updates_declined.clone());
        registry.register("refused", "Messages refused, by what and kind", m.refused.clone());
        registry.register("received_bytes", "Model bytes received in updates", m.received_bytes.clone());
        registry.register("sent_bytes", "Model bytes sent in downloads", m.sent_bytes.clone());
        registry.register("delta_downloads", "Downloads sent as the difference from the model the site held", m.delta_downloads.clone());
        registry.register("delta_saved_bytes", "Bytes delta downloads saved against sending the full models", m.delta_saved_bytes.clone());
        registry.register("round_duration_seconds", "Wall time of each closed round", m.round_seconds.clone());
        registry.register(
            "aggregation_duration_seconds",
            "Time of the coordinator's step that closed each training phase (the aggregation and the model update)",
            m.aggregation_seconds.clone(),
        );
        registry.register("durable_write_duration_seconds", "Time to write each snapshot or update durably", m.durable_write_seconds.clone());
        registry.register("evaluation_accuracy", "Federated test accuracy of the last closed round", m.evaluation_accuracy.clone());
        registry.register("evaluation_loss", "Federated test loss of the last closed round", m.evaluation_loss.clone());
        registry.register("evaluation_auc", "Federated ROC AUC of the last closed round", m.evaluation_auc.clone());
        registry.register("evaluation_r2", "Regression: federated R² of the last closed round (against the federation's mean)", m.evaluation_r2.clone());
        registry.register("evaluation_rmse", "Regression: federated RMSE of the last closed round, in the label's units", m.evaluation_rmse.clone());
        registry.register("validation_loss", "Federated validation loss of the last closed round", m.validation_loss.clone());
        registry.register("epsilon", "Central DP: epsilon spent so far at the task's delta", m.epsilon.clone());
        registry.register("secagg_dropouts", "Secure aggregation: selected sites that did not deliver their masked input", m.secagg_dropouts.clone());
        registry.register("ready", "1 once the coordinator serves with its state loaded", m.ready.clone());
        m
    }
}
