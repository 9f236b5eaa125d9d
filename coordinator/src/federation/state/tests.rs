//! Unit tests of the round state machine.
use std::time::Duration;

use flotilla_common::data::ColumnStats;

use super::*;

fn stats() -> SiteStats {
    SiteStats { columns: vec![ColumnStats { name: "x".into(), numeric_count: 4, sum: 2.0, sum_squares: 3.0, ..Default::default() }], ..Default::default() }
}

fn eval() -> Evaluation {
    Evaluation { examples: 10, loss: 0.5, accuracy: 0.5, auc: None, validation_loss: None, validation_examples: 0, regression: None }
}

/// Two sites joined, round 0 evaluated, round 1 open for training.
fn in_round_one(policy: Policy) -> (Federation, String, String, Instant) {
    let now = Instant::now();
    let mut f = Federation::new(Task::banks(), 1, Policy { min_clients: 2, rounds: 2, ..policy });
    let cols = vec!["creditability".to_owned(), "x".to_owned()];
    let a = f.join("a", &cols, 100, now).unwrap().0.client_id;
    let b = f.join("b", &cols, 100, now).unwrap().0.client_id;
    f.report_stats(&a, stats(), 10, now).unwrap();
    f.report_stats(&b, stats(), 20, now).unwrap();
    let (_, h) = f.global().unwrap();
    f.submit_evaluation(&a, 0, &h, eval(), now).unwrap();
    f.submit_evaluation(&b, 0, &h, eval(), now).unwrap();
    assert!(matches!(f.pull_work(&a, now).unwrap(), Work::Fit { round: 1, .. }));
    (f, a, b, now)
}

/// A claim for `submit_update` (which fills in the layout from the delta itself).
fn claim(client: &str, round: u32, base: &str, n: u64) -> UpdateClaim {
    UpdateClaim { client_id: client.into(), round, base_hash: base.into(), fingerprint: String::new(), total: 0, num_examples: n, masked: false }
}

fn delta(f: &Federation, v: f32) -> FlatParams {
    let (g, _) = f.global().unwrap();
    FlatParams::new(g.layout().clone(), vec![v; g.layout().total()]).unwrap()
}

#[test]
fn a_second_update_for_the_same_round_is_refused_and_not_counted() {
    let (mut f, a, _, now) = in_round_one(Policy::default());
    let (_, h) = f.global().unwrap();
    let d = delta(&f, 0.01);
    f.submit_update(&claim(&a, 1, &h, 10), &d, TrainReport { epochs: 5, ..TrainReport::default() }, now).unwrap();
    let err = f.submit_update(&claim(&a, 1, &h, 10), &d, TrainReport { epochs: 5, ..TrainReport::default() }, now).unwrap_err();
    assert!(matches!(err, Rejection::Duplicate(_)), "{err:?}");
    let Phase::Fit(round) = &f.phase else { panic!("round 1 must still be open") };
    assert_eq!((round.sum.count(), round.rejected), (1, 1));
}

#[test]
fn every_bad_update_is_refused_with_its_reason_and_leaves_the_model_alone() {
    let (mut f, a, b, now) = in_round_one(Policy { max_update_norm: Some(100.0), ..Policy::default() });
    let (g, h) = f.global().unwrap();
    let (fp, total) = (g.layout().fingerprint().to_owned(), g.layout().total() as u64);
    let mut nan = delta(&f, 0.01);
    nan.values_mut()[3] = f32::NAN;
    let mut inf = delta(&f, 0.01);
    inf.values_mut()[0] = f32::INFINITY;
    let huge = delta(&f, 10.0);
    let ok = delta(&f, 0.01);
    let m = TrainReport { epochs: 5, ..TrainReport::default() };
    let cases: Vec<(&str, Result<Vec<Event>, Rejection>)> = vec![
        ("claims 11 examples", f.submit_update(&claim(&a, 1, &h, 11), &ok, m, now)),
        ("computed from model", f.submit_update(&claim(&a, 1, "ffff", 10), &ok, m, now)),
        ("not open", f.submit_update(&claim(&a, 2, &h, 10), &ok, m, now)),
        ("has layout", f.begin_update(&UpdateClaim { fingerprint: "beef".into(), total, ..claim(&a, 1, &h, 10) }, now).map(|_| Vec::new())),
        ("has layout", f.begin_update(&UpdateClaim { fingerprint: fp.clone(), total: total - 1, ..claim(&a, 1, &h, 10) }, now).map(|_| Vec::new())),
        ("unknown", f.submit_update(&claim("a#99", 1, &h, 10), &ok, m, now)),
    ];
    for (reason, result) in cases {
        let err = result.expect_err(reason);
        assert!(err.to_string().contains(reason), "expected `{reason}`, got `{err}`");
    }
    assert_eq!(f.global().unwrap().1, h, "nothing changed the global model");
    let Phase::Fit(round) = &f.phase else { panic!("round 1 must still be open") };
    assert_eq!((round.sum.count(), round.rejected), (0, 5), "the update for round 2 counts against round 2, not this one");
    // A header refused is no verdict on the site: its honest update still counts.
    f.submit_update(&claim(&a, 1, &h, 10), &ok, m, now).unwrap();
    f.submit_update(&claim(&b, 1, &h, 20), &ok, m, now).unwrap();
    assert_ne!(f.global().unwrap().1, h);

    // Refused values cost the site the round (it stays in the federation; the same update
    // would come back), and the other sites' updates close it.
    for (reason, bad) in [("not finite", nan), ("not finite", inf), ("L2 norm", huge)] {
        let (mut f, a, b, now) = in_round_one(Policy { max_update_norm: Some(100.0), ..Policy::default() });
        let err = f.submit_update(&claim(&a, 1, &h, 10), &bad, m, now).unwrap_err();
        assert!(err.to_string().contains(reason), "expected `{reason}`, got `{err}`");
        let again = f.submit_update(&claim(&a, 1, &h, 10), &ok, m, now).unwrap_err();
        assert!(again.to_string().contains("dropped from round 1"), "{again}");
        let Phase::Fit(round) = &f.phase else { panic!("round 1 must still be open") };
        assert!(round.failed.contains("a") && !round.pending.contains("a") && round.rejected == 2);
        f.submit_update(&claim(&b, 1, &h, 20), &ok, m, now).unwrap();
        assert_ne!(f.global().unwrap().1, h, "b's update closed the round");
        assert!(f.clients.values().any(|c| c.site == "a"), "a is still in the federation");
    }
}

#[test]
fn partial_work_is_dropped_by_fedavg_and_used_by_fedprox() {
    let (mut f, a, _, now) = in_round_one(Policy::default());
    let (_, h) = f.global().unwrap();
    let partial = TrainReport { epochs: 2, ..TrainReport::default() };
    let err = f.submit_update(&claim(&a, 1, &h, 10), &delta(&f, 0.01), partial, now).unwrap_err();
    assert!(err.to_string().contains("did 2 of 5 local epochs"), "{err}");
    let Phase::Fit(round) = &f.phase else { panic!("round 1 must still be open") };
    assert!(round.failed.contains("a") && round.sum.count() == 0);

    let mut task = Task::banks();
    task.strategy.name = flotilla_common::strategy::StrategyName::Fedprox;
    let mut g = Federation::new(task, 1, Policy { min_clients: 2, rounds: 2, ..Policy::default() });
    let cols = vec!["creditability".to_owned(), "x".to_owned()];
    let a = g.join("a", &cols, 100, now).unwrap().0.client_id;
    let b = g.join("b", &cols, 100, now).unwrap().0.client_id;
    g.report_stats(&a, stats(), 10, now).unwrap();
    g.report_stats(&b, stats(), 20, now).unwrap();
    let (_, h) = g.global().unwrap();
    g.submit_evaluation(&a, 0, &h, eval(), now).unwrap();
    g.submit_evaluation(&b, 0, &h, eval(), now).unwrap();
    assert!(matches!(g.pull_work(&a, now).unwrap(), Work::Fit { proximal_mu, .. } if proximal_mu > 0.0));
    g.submit_update(&claim(&a, 1, &h, 10), &delta(&g, 0.01), partial, now).unwrap();
}

#[test]
fn the_allow_list_and_the_label_column_are_checked_at_join() {
    let allowed = Some(["a".to_owned()].into_iter().collect());
    let mut f = Federation::new(Task::banks(), 1, Policy { allowed_sites: allowed, ..Policy::default() });
    let cols = vec!["creditability".to_owned()];
    let now = Instant::now();
    assert!(matches!(f.join("b", &cols, 100, now), Err(Rejection::Forbidden(_))));
    assert!(matches!(f.join("a", &["x".to_owned()], 100, now), Err(Rejection::InvalidArgument(_))));
    assert!(f.join("a", &cols, 100, now).is_ok());
}

#[test]
fn a_silent_site_loses_its_lease_and_the_round_closes_without_it() {
    let (mut f, a, b, now) = in_round_one(Policy { lease: Duration::from_secs(1), ..Policy::default() });
    let (_, h) = f.global().unwrap();
    f.submit_update(&claim(&a, 1, &h, 10), &delta(&f, 0.01), TrainReport { epochs: 5, ..TrainReport::default() }, now).unwrap();
    f.touch(&a, now + Duration::from_secs(2)).unwrap();
    let events = f.tick(now + Duration::from_secs(2));
    assert!(events.iter().any(|e| matches!(e, Event::Dropped { site, .. } if site == "b")), "{events:?}");
    assert!(matches!(f.pull_work(&a, now + Duration::from_secs(2)).unwrap(), Work::Evaluate { round: 1, .. }));
    assert!(matches!(f.pull_work(&b, now), Err(Rejection::UnknownClient(_))));
}

#[test]
fn cohorts_are_seeded_and_weighted_sampling_favours_big_sites() {
    let sites: Vec<(String, u64)> = [("a", 10), ("b", 10), ("c", 10), ("d", 10_000)].into_iter().map(|(s, n)| (s.to_owned(), n)).collect();
    assert_eq!(sample_cohort(&sites, 2, Sampling::Uniform, 7), sample_cohort(&sites, 2, Sampling::Uniform, 7));
    let picks = |sampling| (0..200).filter(|&seed| sample_cohort(&sites, 1, sampling, seed).contains("d")).count();
    let (uniform, weighted) = (picks(Sampling::Uniform), picks(Sampling::Weighted));
    assert!((30..=70).contains(&uniform), "uniform picks d about a quarter of the time: {uniform}/200");
    assert!(weighted >= 190, "weighted picks the big site almost always: {weighted}/200");
}

/// Four sites joined and evaluated, round 1 open.
fn four_sites(policy: Policy) -> (Federation, Vec<String>, Instant) {
    four_sites_of(Task::banks(), Policy { min_clients: 4, rounds: 2, ..policy })
}

/// Four sites of `task` joined and evaluated, round 1 open.
fn four_sites_of(task: Task, policy: Policy) -> (Federation, Vec<String>, Instant) {
    let now = Instant::now();
    let mut f = Federation::new(task, 1, policy);
    let cols = vec!["creditability".to_owned(), "x".to_owned()];
    let ids: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| f.join(s, &cols, 100, now).unwrap().0.client_id).collect();
    for id in &ids {
        f.report_stats(id, stats(), 10, now).unwrap();
    }
    let (_, h) = f.global().unwrap();
    for id in &ids {
        f.submit_evaluation(id, 0, &h, eval(), now).unwrap();
    }
    (f, ids, now)
}

fn fit_sites(f: &mut Federation, ids: &[String], now: Instant) -> Vec<String> {
    ids.iter().filter(|id| matches!(f.pull_work(id, now).unwrap(), Work::Fit { .. })).cloned().collect()
}

#[test]
fn an_over_selected_round_closes_as_soon_as_enough_sites_reported() {
    let (mut f, ids, now) = four_sites(Policy { fraction_fit: 0.5, over_selection: 2.0, ..Policy::default() });
    let asked = fit_sites(&mut f, &ids, now);
    assert_eq!(asked.len(), 4, "2 needed, 4 selected");
    let (_, h) = f.global().unwrap();
    let m = TrainReport { epochs: 5, ..TrainReport::default() };
    f.submit_update(&claim(&asked[0], 1, &h, 10), &delta(&f, 0.01), m, now).unwrap();
    f.submit_update(&claim(&asked[1], 1, &h, 10), &delta(&f, 0.01), m, now).unwrap();
    let late = f.submit_update(&claim(&asked[2], 1, &h, 10), &delta(&f, 0.01), m, now).unwrap_err();
    assert!(matches!(late, Rejection::Closed(_)), "{late:?}");
    assert!(matches!(f.pull_work(&asked[0], now).unwrap(), Work::Evaluate { round: 1, .. }));
}

#[test]
fn the_grace_period_closes_a_round_once_the_minimum_is_in() {
    let (mut f, ids, now) = four_sites(Policy { min_fit_results: 2, grace: Duration::from_secs(5), ..Policy::default() });
    let (_, h) = f.global().unwrap();
    let m = TrainReport { epochs: 5, ..TrainReport::default() };
    f.submit_update(&claim(&ids[0], 1, &h, 10), &delta(&f, 0.01), m, now).unwrap();
    f.tick(now + Duration::from_secs(10));
    assert!(matches!(f.pull_work(&ids[1], now).unwrap(), Work::Fit { .. }), "one update is not the minimum: keep waiting");
    let t = now + Duration::from_secs(11);
    f.submit_update(&claim(&ids[1], 1, &h, 10), &delta(&f, 0.01), m, t).unwrap();
    f.touch(&ids[2], t + Duration::from_secs(6)).unwrap();
    f.touch(&ids[3], t + Duration::from_secs(6)).unwrap();
    f.touch(&ids[0], t + Duration::from_secs(6)).unwrap();
    f.touch(&ids[1], t + Duration::from_secs(6)).unwrap();
    f.tick(t + Duration::from_secs(6));
    assert!(matches!(f.pull_work(&ids[2], t + Duration::from_secs(6)).unwrap(), Work::Evaluate { round: 1, .. }));
}

#[test]
fn an_attempt_without_enough_updates_is_abandoned_and_retried_with_a_fresh_cohort() {
    let (mut f, ids, now) =
        four_sites(Policy { fraction_fit: 0.5, round_timeout: Duration::from_secs(5), lease: Duration::from_secs(100), ..Policy::default() });
    let first = fit_sites(&mut f, &ids, now);
    let events = f.tick(now + Duration::from_secs(6));
    assert!(events.iter().any(|e| matches!(e, Event::Abandoned { round: 1, attempt: 1, updates: 0 })), "{events:?}");
    let t = now + Duration::from_secs(6);
    let second = fit_sites(&mut f, &ids, t);
    assert_eq!(second.len(), 2);
    // Each attempt draws its own cohort from its own seed: the retry is a fresh draw, not
    // the same sites asked again.
    let sites_of = |ids: &[String]| ids.iter().map(|id| site_of_client_id(id).unwrap().to_owned()).collect::<BTreeSet<_>>();
    let eligible: Vec<(String, u64)> = ["a", "b", "c", "d"].iter().map(|s| (s.to_string(), 10)).collect();
    let drawn = |labels: &[&str]| sample_cohort(&eligible, 2, Sampling::Uniform, derive_seed(1, labels));
    assert_eq!(sites_of(&first), drawn(&["cohort", "1"]));
    assert_eq!(sites_of(&second), drawn(&["cohort", "1", "attempt", "2"]));
    assert_ne!(sites_of(&first), sites_of(&second), "with seed 1 the two draws differ");
    let (_, h) = f.global().unwrap();
    let m = TrainReport { epochs: 5, ..TrainReport::default() };
    if let Some(stale) = first.iter().find(|id| !second.contains(id)) {
        let err = f.submit_update(&claim(stale, 1, &h, 10), &delta(&f, 0.01), m, t).unwrap_err();
        assert!(matches!(err, Rejection::NotSelected(_)), "a site of the abandoned attempt is not asked any more: {err:?}");
    }
    for id in &second {
        f.submit_update(&claim(id, 1, &h, 10), &delta(&f, 0.01), m, t).unwrap();
    }
    for id in &ids {
        f.submit_evaluation(id, 1, &f.global().unwrap().1, eval(), t).unwrap();
    }
    let record = f.history.last().unwrap();
    assert_eq!((record.round, record.attempts, record.clients, record.rejected), (1, 2, 2, 1));
}

#[test]
fn a_federation_resumed_mid_round_ends_with_the_model_of_one_that_never_stopped() {
    let m = TrainReport { epochs: 5, loss: 0.25, ..TrainReport::default() };
    let (mut reference, a, b, now) = in_round_one(Policy::default());
    let (_, h) = reference.global().unwrap();
    let (da, db) = (delta(&reference, 0.01), delta(&reference, -0.03));
    reference.submit_update(&claim(&a, 1, &h, 10), &da, m, now).unwrap();
    reference.submit_update(&claim(&b, 1, &h, 20), &db, m, now).unwrap();
    let expected = reference.global().unwrap().1;

    // The same run, stopped after a's update: its snapshot and the kept update survive.
    let (mut crashed, a, _, now) = in_round_one(Policy::default());
    crashed.submit_update(&claim(&a, 1, &h, 10), &da, m, now).unwrap();
    let snapshot = crashed.snapshot();
    assert_eq!(crashed.open_attempt(), Some((1, 1)));
    let kept = vec![AcceptedUpdate { site: "a".into(), round: 1, attempt: 1, num_examples: 10, metrics: m, delta: da.clone() }];
    let policy = Policy { min_clients: 2, rounds: 2, ..Policy::default() };

    let wrong_seed = Federation::resume(Task::banks(), 2, policy.clone(), snapshot.clone(), kept.clone(), now).unwrap_err();
    assert!(wrong_seed.contains("seed 1"), "{wrong_seed}");
    let wrong_policy = Federation::resume(Task::banks(), 1, Policy { fraction_fit: 0.5, ..policy.clone() }, snapshot.clone(), kept.clone(), now).unwrap_err();
    assert!(wrong_policy.contains("round policy"), "{wrong_policy}");

    let mut resumed = Federation::resume(Task::banks(), 1, policy, snapshot, kept, now).unwrap();
    assert_eq!(resumed.global().unwrap().1, h);
    let cols = vec!["creditability".to_owned(), "x".to_owned()];
    let a2 = resumed.join("a", &cols, 100, now).unwrap().0.client_id;
    assert!(a2 != a, "client ids are never reused: {a2}");
    resumed.report_stats(&a2, stats(), 10, now).unwrap();
    assert!(matches!(resumed.pull_work(&a2, now).unwrap(), Work::Wait { .. }), "waits for b to rejoin first");
    let b2 = resumed.join("b", &cols, 100, now).unwrap().0.client_id;
    let events = resumed.report_stats(&b2, stats(), 20, now).unwrap();
    assert!(events.iter().any(|e| matches!(e, Event::Resumed { round: 1, missing } if missing.is_empty())), "{events:?}");
    assert!(matches!(resumed.pull_work(&a2, now).unwrap(), Work::Wait { .. }), "a's update is already in");
    assert!(matches!(resumed.pull_work(&b2, now).unwrap(), Work::Fit { round: 1, .. }), "b is asked again");
    let dup = resumed.submit_update(&claim(&a2, 1, &h, 10), &da, m, now).unwrap_err();
    assert!(matches!(dup, Rejection::Duplicate(_)), "a's update is not counted twice: {dup:?}");
    resumed.submit_update(&claim(&b2, 1, &h, 20), &db, m, now).unwrap();
    assert_eq!(resumed.global().unwrap().1, expected, "bit-identical to the run that never stopped");
}

#[test]
fn client_ids_name_their_site() {
    assert_eq!(site_of_client_id("VA Long Beach#3"), Some("VA Long Beach"));
    assert_eq!(site_of_client_id("nohash"), None);
}

#[test]
fn the_dp_noise_seed_is_secret_and_survives_a_resume() {
    let now = Instant::now();
    let (a, b) = (Federation::new(Task::banks(), 1, Policy::default()), Federation::new(Task::banks(), 1, Policy::default()));
    assert_ne!(a.noise_seed, b.noise_seed, "drawn from the OS, not from the federation seed");
    let pinned = Federation::new(Task::banks(), 1, Policy { dp_seed: Some(5), ..Policy::default() });
    assert_eq!(pinned.noise_seed, 5);
    let (joined, _) = Federation::new(Task::banks(), 1, Policy::default()).join("a", &["creditability".to_owned()], 10, now).unwrap();
    assert_eq!(joined.seed, 1, "a site receives the federation seed only");
    let resumed = Federation::resume(Task::banks(), 1, Policy::default(), a.snapshot(), Vec::new(), now).unwrap();
    assert_eq!(resumed.noise_seed, a.noise_seed);
}

/// Four sites of a central-DP federation on a wide model (40,801 parameters), round 1 open.
fn dp_federation(z: f64, fraction_fit: f64, adaptive: Option<flotilla_common::privacy::dp_fedavg::AdaptiveClip>) -> (Federation, Vec<String>, Instant) {
    let mut task = Task::banks();
    task.model.hidden = vec![200, 200];
    task.privacy = Some(flotilla_common::privacy::DpConfig { clip_norm: 1.0, noise_multiplier: z, delta: 1e-5, adaptive, local: false, distributed: false });
    four_sites_of(task, Policy { min_clients: 4, rounds: 200, fraction_fit, min_fit_results: 1, dp_seed: Some(3), ..Policy::default() })
}

#[test]
fn central_dp_clips_every_update_and_adds_exactly_the_noise_it_accounts_for() {
    // Every site sends a delta of norm 202 (all ones); the clip is 1, z = 0.5, 4 sites at q = 1.
    let (mut f, ids, now) = dp_federation(0.5, 1.0, None);
    let (before, h) = f.global().unwrap();
    let asked = fit_sites(&mut f, &ids, now);
    assert_eq!(asked.len(), 4);
    let n = before.layout().total();
    for id in &asked {
        let big = FlatParams::new(before.layout().clone(), vec![1.0; n]).unwrap();
        f.submit_update(&claim(id, 1, &h, 10), &big, TrainReport { epochs: 5, ..TrainReport::default() }, now).unwrap();
    }
    let (after, _) = f.global().unwrap();
    // w' = w + (Σ clip(Δ_k) + N(0, (zS)²)) / m with m = 4: recover the noise coordinate by coordinate.
    let clipped = 1.0 / (n as f64).sqrt();
    let noise: Vec<f64> = after.values().iter().zip(before.values()).map(|(a, b)| (f64::from(*a) - f64::from(*b)) * 4.0 - 4.0 * clipped).collect();
    let mean = noise.iter().sum::<f64>() / n as f64;
    let std = (noise.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
    // 40,801 draws: the standard error of the std is 0.35 %, of the mean 0.0025.
    let step = f.dp_steps[0];
    assert_eq!((step.q, step.count), (1.0, 1), "each site was sampled with probability 1");
    assert!((std / f.clip_norm - step.sigma).abs() < 0.02 * step.sigma, "measured noise multiplier {} vs accounted {}", std / f.clip_norm, step.sigma);
    assert!(mean.abs() < 0.015, "noise has mean 0 and the updates were clipped to S (unclipped they would add 4): {mean}");
    assert!(f.epsilon.is_some());
}

#[test]
fn central_dp_cohorts_are_poisson_samples_from_the_secret_seed() {
    let sites: Vec<(String, u64)> = (0..40).map(|i| (format!("s{i:02}"), 10)).collect();
    let sizes: Vec<usize> = (0..400).map(|seed| poisson_cohort(&sites, 0.25, seed).len()).collect();
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
    assert!((mean - 10.0).abs() < 0.5, "expected size q·N = 10: {mean}");
    assert!(sizes.iter().any(|&k| k != 10), "sizes vary, as Poisson sampling does");
    assert_eq!(poisson_cohort(&sites, 1.0, 9).len(), 40);
    // The cohort follows the coordinator's secret seed, not the federation seed every site holds.
    let cohort = |dp_seed| {
        let (mut f, ids, now) = dp_federation(0.5, 0.5, None);
        f.noise_seed = dp_seed;
        f.phase = Phase::Gathering { next: 1 };
        f.advance(now);
        fit_sites(&mut f, &ids, now)
    };
    let draws: BTreeSet<Vec<String>> = (0..8).map(cohort).collect();
    assert!(draws.len() > 1, "different secret seeds, different cohorts under the same federation seed");
    let (f, _, _) = dp_federation(0.5, 0.5, None);
    assert_eq!(f.release(&f.task.privacy.unwrap(), 2).unwrap().q, 0.5, "the accountant's q is the sampling rate");
}

#[test]
fn adaptive_clipping_is_accounted_as_its_two_gaussians_and_releases_nothing_it_cannot_afford() {
    use flotilla_common::privacy::dp_fedavg::AdaptiveClip;
    let (f, _, _) = dp_federation(0.5, 1.0, Some(AdaptiveClip { count_stddev: Some(2.0), ..AdaptiveClip::default() }));
    let r = f.release(&f.task.privacy.unwrap(), 4).unwrap();
    assert!((r.noise_multiplier() - 0.5).abs() < 1e-12, "z_Δ and σ_b compose to the announced z: {}", r.noise_multiplier());
    assert!(r.noise_std > 0.5 * r.sensitivity, "the update's share of the noise is larger than z·S");
    // σ_b = 4/20 is too small for z = 0.5: the round releases nothing and costs nothing.
    let (mut f, ids, now) = dp_federation(0.5, 1.0, Some(AdaptiveClip::default()));
    let (before, h) = f.global().unwrap();
    let clip_before = f.clip_norm;
    let asked = fit_sites(&mut f, &ids, now);
    let mut events = Vec::new();
    for id in &asked {
        events.extend(f.submit_update(&claim(id, 1, &h, 10), &delta(&f, 0.01), TrainReport { epochs: 5, ..TrainReport::default() }, now).unwrap());
    }
    assert!(events.iter().any(|e| matches!(e, Event::ModelKept { reason, .. } if reason.contains("releases nothing"))), "{events:?}");
    assert_eq!(f.global().unwrap().0.values(), before.values());
    assert_eq!(f.clip_norm, clip_before);
    assert!(f.dp_steps.is_empty() && f.epsilon.is_none());
}

/// Plays rounds with site `a` alone: each round, an update and an evaluation whose validation
/// loss is the next of `losses` (round 0's first).
fn rounds_with_validation(policy: Policy, losses: &[f64]) -> (Federation, Vec<String>) {
    let now = Instant::now();
    let mut f = Federation::new(Task::banks(), 1, Policy { min_clients: 1, ..policy });
    let cols = vec!["creditability".to_owned(), "x".to_owned()];
    let a = f.join("a", &cols, 100, now).unwrap().0.client_id;
    f.report_stats(&a, stats(), 10, now).unwrap();
    let mut hashes = Vec::new();
    for (round, &loss) in losses.iter().enumerate() {
        if f.is_done() {
            break;
        }
        let (_, h) = f.global().unwrap();
        if round > 0 {
            let d = delta(&f, 0.01 * round as f32);
            f.submit_update(&claim(&a, round as u32, &h, 10), &d, TrainReport { epochs: 5, ..TrainReport::default() }, now).unwrap();
        }
        let (_, h) = f.global().unwrap();
        hashes.push(h.clone());
        let e = Evaluation { validation_loss: Some(loss), validation_examples: 4, ..eval() };
        f.submit_evaluation(&a, round as u32, &h, e, now).unwrap();
    }
    (f, hashes)
}

#[test]
fn the_model_kept_is_the_round_of_lowest_validation_loss_and_survives_a_resume() {
    let (f, hashes) = rounds_with_validation(Policy { rounds: 4, ..Policy::default() }, &[0.7, 0.5, 0.3, 0.4, 0.6]);
    let o = f.outcome().unwrap();
    assert_eq!((o.best_round, o.model.hash()), (Some(2), hashes[2].clone()));
    assert_eq!(o.last_model.hash(), hashes[4], "the last round's model is kept too");
    assert_eq!(o.history[2].validation_loss, Some(0.3));

    // The best round's model comes back from a snapshot taken after it.
    let (f, hashes) = rounds_with_validation(Policy { rounds: 4, ..Policy::default() }, &[0.7, 0.5, 0.3, 0.4]);
    let snapshot = f.snapshot();
    assert_eq!(snapshot.best_round, Some(2));
    let resumed =
        Federation::resume(Task::banks(), 1, Policy { min_clients: 1, rounds: 4, ..Policy::default() }, snapshot, Vec::new(), Instant::now()).unwrap();
    assert_eq!(resumed.best.as_ref().map(|b| (b.round, b.model.hash())), Some((2, hashes[2].clone())));
}

#[test]
fn early_stopping_ends_the_run_after_patience_rounds_without_improvement() {
    let (f, hashes) = rounds_with_validation(Policy { rounds: 10, patience: Some(2), ..Policy::default() }, &[0.7, 0.5, 0.6, 0.55, 0.2, 0.1]);
    assert!(f.is_done(), "rounds 2 and 3 did not beat round 1");
    let o = f.outcome().unwrap();
    assert_eq!(o.history.len(), 4, "rounds 0 to 3");
    assert_eq!((o.best_round, o.model.hash()), (Some(1), hashes[1].clone()));
    // Without validation rows the last round's model is kept.
    let now = Instant::now();
    let mut f = Federation::new(Task::banks(), 1, Policy { min_clients: 1, rounds: 1, ..Policy::default() });
    let a = f.join("a", &["creditability".to_owned(), "x".to_owned()], 100, now).unwrap().0.client_id;
    f.report_stats(&a, stats(), 10, now).unwrap();
    let (_, h) = f.global().unwrap();
    f.submit_evaluation(&a, 0, &h, eval(), now).unwrap();
    let d = delta(&f, 0.01);
    f.submit_update(&claim(&a, 1, &h, 10), &d, TrainReport { epochs: 5, ..TrainReport::default() }, now).unwrap();
    let (_, h) = f.global().unwrap();
    f.submit_evaluation(&a, 1, &h, eval(), now).unwrap();
    let o = f.outcome().unwrap();
    assert_eq!((o.best_round, o.model.hash()), (None, h));
}

#[test]
fn a_regression_federation_pools_errors_and_refuses_the_other_kind_of_report() {
    let now = Instant::now();
    let mut task = Task::banks();
    task.data.label = flotilla_common::task::LabelSpec {
        column: "creditability".into(),
        kind: flotilla_common::task::LabelKind::Regression,
        positive_above: None,
        positive_values: None,
        classes: None,
    };
    let mut f = Federation::new(task, 1, Policy { min_clients: 2, rounds: 2, ..Policy::default() });
    let cols = vec!["creditability".to_owned(), "x".to_owned()];
    let a = f.join("a", &cols, 100, now).unwrap().0.client_id;
    let b = f.join("b", &cols, 100, now).unwrap().0.client_id;
    let err = f.report_stats(&a, stats(), 10, now).unwrap_err();
    assert!(matches!(&err, Rejection::InvalidArgument(m) if m.contains("regression")), "a regression site reports its label: {err:?}");
    let label = ColumnStats { name: "<label>".into(), numeric_count: 10, sum: 5.0, sum_squares: 10.0, ..Default::default() };
    let with_label = || SiteStats { label_values: Some(label.clone()), ..stats() };
    f.report_stats(&a, with_label(), 10, now).unwrap();
    f.report_stats(&b, with_label(), 10, now).unwrap();
    let (_, h) = f.global().unwrap();
    let err = f.submit_evaluation(&a, 0, &h, eval(), now).unwrap_err();
    assert!(matches!(err, Rejection::InvalidArgument(_)), "an accuracy for a regression task: {err:?}");
    let m = |mse: f64| RegressionMetrics { mae: 1.0, mse, total_squares: 8.0 };
    let e = |examples: u64, mse: f64| Evaluation { examples, accuracy: f64::NAN, regression: Some(m(mse)), ..eval() };
    f.submit_evaluation(&a, 0, &h, e(10, 2.0), now).unwrap();
    f.submit_evaluation(&b, 0, &h, e(30, 6.0), now).unwrap();
    let r = f.history.last().unwrap().regression.unwrap();
    // Row-weighted: mse (10·2 + 30·6) / 40 = 5, so R² = 1 − 5/8.
    assert!((r.mse - 5.0).abs() < 1e-12 && (r.r2().unwrap() - 0.375).abs() < 1e-12, "{r:?}");
}

#[test]
fn a_classification_federation_refuses_label_values_and_regression_metrics() {
    let now = Instant::now();
    let mut f = Federation::new(Task::banks(), 1, Policy { min_clients: 1, rounds: 1, ..Policy::default() });
    let a = f.join("a", &["creditability".to_owned(), "x".to_owned()], 100, now).unwrap().0.client_id;
    let label = ColumnStats { name: "<label>".into(), numeric_count: 10, sum: 5.0, sum_squares: 10.0, ..Default::default() };
    let err = f.report_stats(&a, SiteStats { label_values: Some(label), ..stats() }, 10, now).unwrap_err();
    assert!(matches!(&err, Rejection::InvalidArgument(m) if m.contains("regression")), "{err:?}");
    f.report_stats(&a, stats(), 10, now).unwrap();
    let (_, h) = f.global().unwrap();
    let regression = Evaluation { regression: Some(RegressionMetrics { mae: 1.0, mse: 2.0, total_squares: 4.0 }), ..eval() };
    assert!(matches!(f.submit_evaluation(&a, 0, &h, regression, now), Err(Rejection::InvalidArgument(_))));
    f.submit_evaluation(&a, 0, &h, eval(), now).unwrap();
}

#[test]
fn a_site_that_declines_leaves_the_round_at_once_keeps_its_place_and_is_counted() {
    // A deadline far away: only the decline can close the round now.
    let (mut f, a, b, now) = in_round_one(Policy { round_timeout: Duration::from_secs(3600), min_fit_results: 1, ..Policy::default() });
    let (_, h) = f.global().unwrap();
    // Hostile or confused declines are refused with their reason and change nothing.
    let cases: Vec<(&str, Result<Vec<Event>, Rejection>)> = vec![
        ("not open", f.decline_fit(&a, 2, &h, DeclineCause::Diverged, now)),
        ("declined round 1 for model", f.decline_fit(&a, 1, "ffff", DeclineCause::Diverged, now)),
        ("unknown", f.decline_fit("a#99", 1, &h, DeclineCause::Diverged, now)),
    ];
    for (reason, result) in cases {
        let err = result.expect_err(reason);
        assert!(err.to_string().contains(reason), "expected `{reason}`, got `{err}`");
    }
    f.submit_update(&claim(&a, 1, &h, 10), &delta(&f, 0.01), TrainReport { epochs: 5, ..TrainReport::default() }, now).unwrap();
    let err = f.decline_fit(&a, 1, &h, DeclineCause::Diverged, now).expect_err("a site that delivered cannot decline");
    assert!(matches!(err, Rejection::Duplicate(_)), "{err:?}");

    let events = f.decline_fit(&b, 1, &h, DeclineCause::Diverged, now).unwrap();
    assert!(events.iter().any(|e| matches!(e, Event::Declined { site, round: 1, cause: DeclineCause::Diverged } if site == "b")), "{events:?}");
    assert!(matches!(f.phase, Phase::Evaluate(_)), "the round closed without waiting for its deadline: {:?}", f.phase_name());
    assert!(matches!(f.decline_fit(&b, 1, &h, DeclineCause::Diverged, now), Err(Rejection::Closed(_))), "a second decline is refused");
    // `b` is still a member: it evaluates, and is asked to train in the next round.
    let (_, h1) = f.global().unwrap();
    assert_ne!(h1, h, "a's update was aggregated");
    for c in [&a, &b] {
        assert!(matches!(f.pull_work(c, now).unwrap(), Work::Evaluate { round: 1, .. }));
        f.submit_evaluation(c, 1, &h1, eval(), now).unwrap();
    }
    let record = f.history.last().unwrap().clone();
    assert_eq!((record.clients, record.failed, record.declined), (1, 1, 1), "{record:?}");
    assert!(matches!(f.pull_work(&b, now).unwrap(), Work::Fit { round: 2, .. }));
}

#[test]
fn a_decline_survives_a_restart_of_the_coordinator() {
    let policy = Policy { min_clients: 2, rounds: 2, round_timeout: Duration::from_secs(3600), min_fit_results: 1, ..Policy::default() };
    let (mut crashed, _, b, now) = in_round_one(policy.clone());
    let (_, h) = crashed.global().unwrap();
    crashed.decline_fit(&b, 1, &h, DeclineCause::Diverged, now).unwrap();
    let snapshot = crashed.snapshot();
    let SavedPhase::Fit { declined, .. } = &snapshot.phase else { panic!("training is open: {:?}", snapshot.phase) };
    assert_eq!(declined, &["b".to_owned()]);

    let mut resumed = Federation::resume(Task::banks(), 1, policy, snapshot, Vec::new(), now).unwrap();
    let cols = vec!["creditability".to_owned(), "x".to_owned()];
    let (a2, b2) = (resumed.join("a", &cols, 100, now).unwrap().0.client_id, resumed.join("b", &cols, 100, now).unwrap().0.client_id);
    resumed.report_stats(&a2, stats(), 10, now).unwrap();
    resumed.report_stats(&b2, stats(), 20, now).unwrap();
    assert!(matches!(resumed.pull_work(&b2, now).unwrap(), Work::Wait { .. }), "b declined before the crash: it is not asked again");
    assert!(matches!(resumed.pull_work(&a2, now).unwrap(), Work::Fit { round: 1, .. }));
    resumed.submit_update(&claim(&a2, 1, &h, 10), &delta(&resumed, 0.01), TrainReport { epochs: 5, ..TrainReport::default() }, now).unwrap();
    let (_, h1) = resumed.global().unwrap();
    for c in [&a2, &b2] {
        resumed.submit_evaluation(c, 1, &h1, eval(), now).unwrap();
    }
    let record = resumed.history.last().unwrap();
    assert_eq!((record.round, record.clients, record.declined), (1, 1, 1), "{record:?}");
}
