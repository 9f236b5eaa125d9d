//! What an operator sees of a running federation: Prometheus metrics, health probes, and a
//! live dashboard with its JSON API, all on one HTTP port of the coordinator
//! (`--metrics-listen`). The actor feeds [`Telemetry`] with every event and refusal; the
//! HTTP side only reads it.
//!
//! Nothing secret is kept here: no DP seed, no key, no data value. Site names appear in the
//! dashboard's JSON (which the port's protection guards), never in a metric's labels.

pub mod http;
pub mod metrics;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::federation::{Event, Federation, Rejection, RoundRecord};
#[cfg(test)]
use flotilla_common::Task;
use metrics::{Metrics, PhaseLabels, RefusalLabels};

/// The live view of one federation.
#[derive(Debug)]
pub struct Telemetry {
    pub metrics: Metrics,
    registry: Registry,
    board: Mutex<Board>,
    /// The most sites the board keeps (the federation's `max_sites`): a name that joined once
    /// and left is forgotten first, so hostile joins under new names cannot grow it.
    max_sites: usize,
}

/// What the dashboard shows, kept up to date by the actor.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Board {
    pub task: String,
    pub phase: String,
    pub round: u32,
    pub rounds: u32,
    pub done: bool,
    pub ready: bool,
    pub connected: usize,
    pub epsilon: Option<f64>,
    /// The task's DP budget is not a coordinator setting; the target ε of record-level DP is.
    pub sites: BTreeMap<String, SiteBoard>,
    /// The data profile's findings, once the plan is made.
    pub findings: Vec<String>,
    /// Refusals not tied to a known site (a join under a bad name, a stream cut short).
    pub other_refusals: u64,
    #[serde(skip)]
    pub history: Vec<RoundRecord>,
}

/// One site on the dashboard.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SiteBoard {
    pub connected: bool,
    /// Seconds since the Unix epoch of the last thing heard of it.
    pub last_seen: f64,
    pub rounds_contributed: u32,
    /// Rounds it was asked to train and declined (its local training diverged).
    pub rounds_declined: u32,
    pub refusals: u64,
    pub last_refusal: Option<String>,
    /// Its evaluation of the last evaluated model.
    pub accuracy: Option<f64>,
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl Telemetry {
    pub fn new(task: &str, rounds: u32, max_sites: usize) -> Arc<Self> {
        let mut registry = Registry::with_prefix("flotilla");
        let metrics = Metrics::register(&mut registry);
        metrics.rounds_planned.set(i64::from(rounds));
        let board = Board { task: task.to_owned(), rounds, phase: "gathering".into(), ..Board::default() };
        Arc::new(Self { metrics, registry, board: Mutex::new(board), max_sites: max_sites.max(1) })
    }

    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        // A panic while holding the lock leaves a board that is still worth showing.
        self.board.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The coordinator serves with its state loaded (`/readyz`).
    pub fn set_ready(&self) {
        self.metrics.ready.set(1);
        self.board().ready = true;
    }

    /// Everything `events` changed, with the federation after them.
    pub fn on_events(&self, fed: &Federation, events: &[Event]) {
        let m = &self.metrics;
        let mut b = self.board();
        for ev in events {
            match ev {
                Event::Joined { site, .. } => {
                    m.sites_joined.inc();
                    if !b.sites.contains_key(site) && b.sites.len() >= self.max_sites {
                        forget_oldest_away(&mut b.sites);
                    }
                    let s = b.sites.entry(site.clone()).or_default();
                    (s.connected, s.last_seen) = (true, now());
                }
                Event::Dropped { site, .. } | Event::Left { site } => {
                    if let Some(s) = b.sites.get_mut(site) {
                        s.connected = false;
                    }
                }
                Event::Declined { site, cause, .. } => {
                    m.updates_declined.get_or_create(&crate::observe::metrics::DeclineLabels { cause: cause.as_str().to_owned() }).inc();
                    let s = b.sites.entry(site.clone()).or_default();
                    (s.rounds_declined, s.last_seen) = (s.rounds_declined + 1, now());
                }
                Event::UpdateAccepted { site, .. } => {
                    m.updates_accepted.inc();
                    let s = b.sites.entry(site.clone()).or_default();
                    (s.rounds_contributed, s.last_seen) = (s.rounds_contributed + 1, now());
                }
                Event::FitOpened { cohort, .. } => {
                    m.cohort_sites.set(cohort.len() as i64);
                }
                Event::PlanReady { profile, .. } => b.findings = profile.flags.iter().map(|f| f.message.clone()).collect(),
                Event::RoundClosed(r) => {
                    m.rounds_closed.inc();
                    m.round_seconds.observe(r.seconds);
                    for (gauge, v) in [
                        (&m.evaluation_accuracy, Some(r.accuracy)),
                        (&m.evaluation_loss, Some(r.loss)),
                        (&m.evaluation_auc, r.auc),
                        (&m.evaluation_r2, r.regression.and_then(|x| x.r2())),
                        (&m.evaluation_rmse, r.regression.map(|x| x.rmse())),
                        (&m.validation_loss, r.validation_loss),
                        (&m.epsilon, r.epsilon),
                    ] {
                        if let Some(v) = v.filter(|v| v.is_finite()) {
                            gauge.set(v);
                        }
                    }
                    if r.round > 0 && fed.task().secure_aggregation {
                        m.secagg_dropouts.inc_by(r.failed as u64);
                    }
                    b.epsilon = r.epsilon;
                    b.history.push(r.clone());
                    for (site, e) in fed.site_metrics() {
                        // The site table's figure: accuracy, or R² in a regression task.
                        b.sites.entry(site.clone()).or_default().accuracy = Some(e.headline()).filter(|v| v.is_finite());
                    }
                }
                Event::Done => b.done = true,
                _ => {}
            }
        }
        let phase = fed.phase_name();
        if b.phase != phase {
            m.phase.get_or_create(&PhaseLabels { phase: b.phase.clone() }).set(0);
        }
        m.phase.get_or_create(&PhaseLabels { phase: phase.to_owned() }).set(1);
        b.phase = phase.to_owned();
        b.round = fed.round();
        b.connected = fed.connected_count();
        m.round.set(i64::from(b.round));
        m.sites_connected.set(b.connected as i64);
    }

    /// A refused message: counted by kind, and on the site's row when it is known.
    pub fn refused(&self, site: Option<&str>, what: &str, reason: &Rejection) {
        self.metrics.refused.get_or_create(&RefusalLabels { what: what.to_owned(), kind: rejection_kind(reason).to_owned() }).inc();
        let mut b = self.board();
        match site.and_then(|s| b.sites.get_mut(s)) {
            Some(s) => {
                s.refusals += 1;
                // Refusal messages name sites, rounds and rules, never data values.
                s.last_refusal = Some(reason.to_string().chars().take(200).collect());
            }
            None => b.other_refusals += 1,
        }
    }

    /// The Prometheus exposition (OpenMetrics text format).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// `/api/status`: the board, without the rounds.
    pub fn status(&self) -> serde_json::Value {
        serde_json::to_value(&*self.board()).unwrap_or_default()
    }

    /// `/api/rounds`: every closed round's record.
    pub fn rounds(&self) -> serde_json::Value {
        serde_json::to_value(&self.board().history).unwrap_or_default()
    }

    pub fn is_ready(&self) -> bool {
        self.board().ready
    }
}

/// Drops the site away from the federation that was seen longest ago (a connected one when
/// none is away: the federation refuses joins beyond `max_sites` anyway).
fn forget_oldest_away(sites: &mut BTreeMap<String, SiteBoard>) {
    let oldest = sites
        .iter()
        .min_by(|a, b| (a.1.connected, a.1.last_seen).partial_cmp(&(b.1.connected, b.1.last_seen)).unwrap_or(std::cmp::Ordering::Equal))
        .map(|(n, _)| n.clone());
    if let Some(name) = oldest {
        sites.remove(&name);
    }
}

/// A refusal's kind as a label: the gRPC status it is answered with.
pub fn rejection_kind(r: &Rejection) -> &'static str {
    match r {
        Rejection::UnknownClient(_) => "not_found",
        Rejection::InvalidArgument(_) => "invalid_argument",
        Rejection::Closed(_) => "closed",
        Rejection::Stale(_) => "stale",
        Rejection::NotSelected(_) => "not_selected",
        Rejection::Forbidden(_) => "forbidden",
        Rejection::Duplicate(_) => "duplicate",
        Rejection::Exhausted(_) => "exhausted",
        Rejection::Unavailable(_) => "unavailable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_site_table_never_holds_more_than_max_sites() {
        let t = Telemetry::new("t", 1, 3);
        let fed = Federation::new(Task::hospitals(), 1, crate::federation::Policy::default());
        for i in 0..50 {
            let site = format!("s{i}");
            t.on_events(&fed, &[Event::Joined { site: site.clone(), client_id: format!("{site}#1") }, Event::Left { site }]);
        }
        let status = t.status();
        let sites = status["sites"].as_object().unwrap_or_else(|| panic!("{status}"));
        assert_eq!(sites.len(), 3);
        assert!(sites.contains_key("s49"), "the newest stays: {status}");
        assert_eq!(t.metrics.sites_joined.get(), 50);
    }

    #[test]
    fn a_regression_round_sets_r2_and_rmse_and_leaves_accuracy_alone() {
        let t = Telemetry::new("t", 1, 3);
        let fed = Federation::new(Task::hospitals(), 1, crate::federation::Policy::default());
        let m = flotilla_common::train::RegressionMetrics { mae: 3.0, mse: 16.0, total_squares: 64.0 };
        let record = crate::federation::RoundRecord { round: 1, accuracy: f64::NAN, loss: 0.25, evaluated: 2, regression: Some(m), ..Default::default() };
        t.on_events(&fed, &[Event::RoundClosed(record)]);
        assert_eq!((t.metrics.evaluation_r2.get(), t.metrics.evaluation_rmse.get()), (0.75, 4.0));
        assert_eq!(t.metrics.evaluation_accuracy.get(), 0.0, "no accuracy was set from a NaN");
    }
}
