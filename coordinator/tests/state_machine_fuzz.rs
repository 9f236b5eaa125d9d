//! A fuzzer over the round state machine itself (it does no I/O, as quinn-proto's connection
//! does none, and is fuzzed the same way): random sequences of joins, reports, pulls,
//! downloads, uploads (valid, truncated, oversized, wrong hash, NaN), evaluations,
//! heartbeats, departures and clock ticks from several sites, honest and hostile, with the
//! invariants checked after every step:
//!
//! - nothing panics;
//! - the global model changes only when a training phase closes;
//! - every accepted update was a valid one (the fuzzer knows what it sent);
//! - a closed round's counts add up (updates accepted = clients, clients ≤ selected, …);
//! - rounds close in order, one at a time, and never past the last.
//!
//! `cargo test` runs a short version; `scripts/fuzz_state.sh` runs a long one in release
//! (`FUZZ_CASES` sequences of `FUZZ_STEPS` steps).

use std::time::{Duration, Instant};

use flotilla_common::data::{ColumnStats, SiteStats};
use flotilla_common::train::{Evaluation, TrainReport};
use flotilla_common::{FlatParams, Task};
use flotilla_coordinator::federation::Policy;
use flotilla_coordinator::federation::state::{Event, Federation, UpdateClaim, Work};
use proptest::prelude::*;

/// Site names the fuzzer speaks for: honest ones and names a hostile site might pick.
const SITES: [&str; 6] = ["alpha", "beta", "gamma", "delta", "aaaaaaaaaaaé", "\u{1F600}\u{1F600}\u{1F600}"];

#[derive(Debug, Clone)]
enum Report {
    Honest,
    /// Counts that overflow u64 when added up.
    Overflowing,
    /// Sums that are huge but finite (two of them make infinity).
    HugeSums,
    /// More categories than the federation accepts.
    ManyCategories,
    /// A different number of training examples than before.
    Reweighted,
    /// A regression label's aggregates, in a classification federation.
    LabelValues,
}

#[derive(Debug, Clone)]
enum Upload {
    Valid,
    Nan,
    WrongBase,
    Truncated,
    Oversized,
    TooManyExamples,
    HugeNorm,
    Partial,
}

#[derive(Debug, Clone)]
enum Op {
    Join(usize),
    Report(usize, Report),
    Pull(usize),
    Download(usize, bool),
    Upload(usize, Upload),
    /// Examples claimed, and whether the metrics are a regression's (this federation classifies).
    Evaluate(usize, u64, bool),
    Heartbeat(usize),
    Leave(usize),
    /// Declines the round it is asked to train: from the model it was given (true), or from
    /// a made-up one.
    Decline(usize, bool),
    Tick(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let site = 0..SITES.len();
    let report = prop_oneof![
        6 => Just(Report::Honest),
        1 => Just(Report::Overflowing),
        1 => Just(Report::HugeSums),
        1 => Just(Report::ManyCategories),
        1 => Just(Report::Reweighted),
        1 => Just(Report::LabelValues),
    ];
    let upload = prop_oneof![
        8 => Just(Upload::Valid),
        1 => Just(Upload::Nan),
        1 => Just(Upload::WrongBase),
        1 => Just(Upload::Truncated),
        1 => Just(Upload::Oversized),
        1 => Just(Upload::TooManyExamples),
        1 => Just(Upload::HugeNorm),
        1 => Just(Upload::Partial),
    ];
    prop_oneof![
        2 => site.clone().prop_map(Op::Join),
        2 => (site.clone(), report).prop_map(|(s, r)| Op::Report(s, r)),
        4 => site.clone().prop_map(Op::Pull),
        1 => (site.clone(), any::<bool>()).prop_map(|(s, b)| Op::Download(s, b)),
        5 => (site.clone(), upload).prop_map(|(s, u)| Op::Upload(s, u)),
        4 => (site.clone(), prop_oneof![8 => Just(40u64), 1 => Just(0u64), 1 => Just(u64::MAX)], prop_oneof![8 => Just(false), 1 => Just(true)])
            .prop_map(|(s, n, r)| Op::Evaluate(s, n, r)),
        2 => site.clone().prop_map(Op::Heartbeat),
        1 => site.clone().prop_map(Op::Leave),
        1 => (site.clone(), prop_oneof![4 => Just(true), 1 => Just(false)]).prop_map(|(s, b)| Op::Decline(s, b)),
        3 => prop_oneof![Just(0u64), Just(500), Just(3_000), Just(20_000)].prop_map(Op::Tick),
    ]
}

fn honest_stats() -> SiteStats {
    SiteStats { columns: vec![ColumnStats { name: "x".into(), numeric_count: 40, sum: 20.0, sum_squares: 30.0, ..Default::default() }], ..Default::default() }
}

/// What the fuzzer remembers of each site it speaks for.
#[derive(Debug, Default, Clone)]
struct SiteState {
    client: Option<String>,
    declared: Option<u64>,
}

struct Harness {
    fed: Federation,
    now: Instant,
    sites: Vec<SiteState>,
    rounds: u32,
    /// Updates accepted per training round since the last close.
    accepted: usize,
    last_round_closed: Option<u32>,
    /// The global model's hash before it last changed: what a site that missed no round holds.
    previous_hash: Option<String>,
}

impl Harness {
    fn new() -> Self {
        let policy = Policy {
            rounds: 3,
            min_clients: 2,
            lease: Duration::from_secs(5),
            round_timeout: Duration::from_secs(15),
            grace: Duration::from_secs(2),
            max_update_norm: Some(1e3),
            ..Policy::default()
        };
        let mut task = Task::banks();
        task.training.local_epochs = 2;
        Self {
            fed: Federation::new(task, 7, policy),
            now: Instant::now(),
            sites: vec![SiteState::default(); SITES.len()],
            rounds: 3,
            accepted: 0,
            last_round_closed: None,
            previous_hash: None,
        }
    }

    fn client(&self, s: usize) -> String {
        // Unknown ids are part of the game: a site that never joined still sends requests.
        self.sites[s].client.clone().unwrap_or_else(|| format!("{}#999", SITES[s]))
    }

    fn step(&mut self, op: &Op) {
        let before = self.fed.global().map(|(_, h)| h);
        let round_before = self.fed.round();
        let mut valid_upload = None;
        let events: Vec<Event> = match op {
            Op::Join(s) => {
                let cols = vec!["creditability".to_owned(), "x".to_owned()];
                match self.fed.join(SITES[*s], &cols, 100, self.now) {
                    Ok((joined, ev)) => {
                        self.sites[*s].client = Some(joined.client_id);
                        ev
                    }
                    Err(_) => Vec::new(),
                }
            }
            Op::Report(s, kind) => {
                let mut stats = honest_stats();
                let mut n = self.sites[*s].declared.unwrap_or(50);
                match kind {
                    Report::Honest => {}
                    Report::Overflowing => {
                        stats.columns[0].numeric_count = u64::MAX;
                        stats.columns[0].missing = u64::MAX;
                    }
                    Report::HugeSums => {
                        stats.columns[0].sum = 1e308;
                        stats.columns[0].sum_squares = f64::MAX;
                    }
                    Report::ManyCategories => {
                        stats.columns[0] = ColumnStats {
                            name: "x".into(),
                            categorical: true,
                            categories: (0..5_000).map(|i| (format!("c{i}"), 1)).collect(),
                            ..Default::default()
                        }
                    }
                    Report::Reweighted => n += 7,
                    Report::LabelValues => {
                        stats.label_values = Some(ColumnStats { name: "<label>".into(), numeric_count: 40, sum: 4.0, sum_squares: 1.0, ..Default::default() })
                    }
                }
                let result = self.fed.report_stats(&self.client(*s), stats, n, self.now);
                if result.is_ok() {
                    assert!(matches!(kind, Report::Honest | Report::Reweighted | Report::HugeSums), "hostile aggregates were accepted: {kind:?}");
                    self.sites[*s].declared = Some(n);
                }
                result.unwrap_or_default()
            }
            Op::Pull(s) => {
                let _ = self.fed.pull_work(&self.client(*s), self.now);
                Vec::new()
            }
            Op::Download(s, current) => {
                let hash = match (current, &before) {
                    (true, Some(h)) => h.clone(),
                    _ => "aaaaaaaaaaaé-not-a-hash".to_owned(),
                };
                // The site says it holds the previous model it saw, or something made up.
                let have = if *current { self.previous_hash.clone().unwrap_or_default() } else { "made-up".to_owned() };
                let got = self.fed.model(&self.client(*s), round_before, &hash, &have, self.now);
                if !current {
                    assert!(got.is_err(), "a made-up hash named a model");
                }
                if let Ok(served) = &got {
                    assert_eq!(served.model.hash(), hash, "another model than the one asked for");
                    if let Some((h, base)) = &served.base {
                        assert!(h == &have && base.hash() == have, "a delta base the site does not hold");
                    }
                }
                Vec::new()
            }
            Op::Upload(s, kind) => self.upload(*s, kind, &mut valid_upload),
            Op::Evaluate(s, n, regression) => {
                let hash = before.clone().unwrap_or_default();
                let regression = regression.then_some(flotilla_common::train::RegressionMetrics { mae: 1.0, mse: 2.0, total_squares: 4.0 });
                let eval =
                    Evaluation { examples: *n, loss: 0.5, accuracy: 0.5, auc: Some(0.5), validation_loss: Some(0.4), validation_examples: 3, regression };
                let result = self.fed.submit_evaluation(&self.client(*s), round_before, &hash, eval, self.now);
                if result.is_ok() {
                    assert!(*n > 0 && *n <= 100, "an evaluation of {n} examples was accepted from a site of 100 rows");
                    assert!(regression.is_none(), "regression metrics were accepted in a classification federation");
                }
                result.unwrap_or_default()
            }
            Op::Heartbeat(s) => {
                let _ = self.fed.touch(&self.client(*s), self.now);
                Vec::new()
            }
            Op::Leave(s) => {
                let ev = self.fed.leave(&self.client(*s), self.now);
                self.sites[*s].client = None;
                ev
            }
            Op::Decline(s, current) => {
                let client = self.client(*s);
                let (round, hash) = match self.fed.pull_work(&client, self.now) {
                    Ok(Work::Fit { round, model_hash, .. }) => (round, model_hash),
                    _ => (round_before, before.clone().unwrap_or_default()),
                };
                let hash = if *current { hash } else { "made-up".to_owned() };
                let result = self.fed.decline_fit(&client, round, &hash, flotilla_common::train::DeclineCause::Diverged, self.now);
                if result.is_ok() {
                    assert!(*current, "a decline for a made-up model was accepted");
                }
                result.unwrap_or_default()
            }
            Op::Tick(ms) => {
                self.now += Duration::from_millis(*ms);
                self.fed.tick(self.now)
            }
        };
        self.check(before, &events, valid_upload);
    }

    fn upload(&mut self, s: usize, kind: &Upload, valid: &mut Option<bool>) -> Vec<Event> {
        let client = self.client(s);
        let Ok(Work::Fit { round, model_hash, .. }) = self.fed.pull_work(&client, self.now) else { return Vec::new() };
        let Some((global, _)) = self.fed.global() else { return Vec::new() };
        let layout = global.layout().clone();
        let mut values = vec![0.01f32; layout.total()];
        let declared = self.sites[s].declared.unwrap_or(1);
        let mut claim =
            UpdateClaim { client_id: client, round, base_hash: model_hash, fingerprint: String::new(), total: 0, num_examples: declared, masked: false };
        let mut epochs = 2;
        match kind {
            Upload::Valid => {}
            Upload::Nan => {
                let mid = values.len() / 2;
                values[mid] = f32::NAN;
            }
            Upload::WrongBase => claim.base_hash = "aaaaaaaaaaaé".into(),
            Upload::TooManyExamples => claim.num_examples = declared + 1,
            Upload::HugeNorm => values.iter_mut().for_each(|v| *v = 1e6),
            Upload::Partial => epochs = 1,
            Upload::Truncated | Upload::Oversized => {
                // The header claims a length the layout does not have: refused before any value.
                let total = if matches!(kind, Upload::Truncated) { layout.total() as u64 - 1 } else { u64::MAX };
                let header = UpdateClaim { fingerprint: layout.fingerprint().to_owned(), total, ..claim.clone() };
                assert!(self.fed.begin_update(&header, self.now).is_err(), "a header with {total} values was accepted");
                return Vec::new();
            }
        }
        let delta = FlatParams::new(layout, values).expect("the layout's length");
        let metrics = TrainReport { epochs, loss: 0.3, ..TrainReport::default() };
        match self.fed.submit_update(&claim, &delta, metrics, self.now) {
            Ok(events) => {
                *valid = Some(matches!(kind, Upload::Valid));
                self.accepted += 1;
                events
            }
            Err(_) => Vec::new(),
        }
    }

    fn check(&mut self, before: Option<String>, events: &[Event], valid_upload: Option<bool>) {
        if let Some(valid) = valid_upload {
            assert!(valid, "an invalid update was accepted");
        }
        let after = self.fed.global().map(|(_, h)| h);
        let training_closed = events.iter().any(|e| matches!(e, Event::EvaluationOpened { round, .. } if *round > 0));
        if before.is_some() && before != after {
            self.previous_hash = before.clone();
            assert!(training_closed, "the global model changed without a training phase closing: {events:?}");
        }
        for e in events {
            if let Event::RoundClosed(r) = e {
                let expected = self.last_round_closed.map_or(0, |l| l + 1);
                assert_eq!(r.round, expected, "rounds close in order");
                assert!(r.round <= self.rounds, "no round past the last");
                assert!(r.clients <= r.selected, "{r:?}");
                assert!(r.failed <= r.selected, "{r:?}");
                assert!(r.declined <= r.failed, "a declined site is one that did not deliver: {r:?}");
                assert!(r.evaluated <= SITES.len(), "{r:?}");
                assert!(r.accuracy.is_nan() || (0.0..=1.0).contains(&r.accuracy), "{r:?}");
                if r.round > 0 {
                    assert!(r.clients <= self.accepted, "{} clients counted, {} updates accepted: {r:?}", r.clients, self.accepted);
                }
                self.last_round_closed = Some(r.round);
            }
            if matches!(e, Event::FitOpened { .. } | Event::Abandoned { .. }) {
                self.accepted = 0;
            }
        }
        // The snapshot of any state can be taken (the actor writes it after every change).
        let _ = self.fed.snapshot();
    }
}

fn steps() -> usize {
    std::env::var("FUZZ_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(150)
}

fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(64)
}

#[test]
fn any_sequence_of_messages_keeps_the_invariants() {
    use proptest::test_runner::{Config, TestRunner};
    let (cases, steps) = (cases(), steps());
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let total = std::cell::Cell::new(0usize);
    let result = runner.run(&proptest::collection::vec(op(), steps / 2..=steps), |ops| {
        total.set(total.get() + ops.len());
        let mut h = Harness::new();
        for op in &ops {
            h.step(op);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!("state machine fuzz: {cases} sequences, {} steps, every invariant held", total.get());
}

/// A scripted honest run through the same harness: the fuzzer's moves can finish a
/// federation (so the random sequences explore real rounds, not only refusals).
#[test]
fn the_harness_can_drive_a_federation_to_its_end() {
    let mut h = Harness::new();
    for s in 0..2 {
        h.step(&Op::Join(s));
        h.step(&Op::Report(s, Report::Honest));
    }
    for _ in 0..200 {
        for s in 0..2 {
            h.step(&Op::Evaluate(s, 40, false));
            h.step(&Op::Upload(s, Upload::Valid));
        }
        h.step(&Op::Tick(100));
        if h.fed.is_done() {
            break;
        }
    }
    assert!(h.fed.is_done(), "round {}", h.fed.round());
    assert_eq!(h.last_round_closed, Some(3));
}
