//! The site decides: a real client with a policy against a fake, hostile coordinator
//! (`flotilla_tests::fake_coordinator`). Each hostile request is refused with its rule, and
//! nothing the policy forbids leaves the site (the fake records everything it received).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flotilla_client::policy::SitePolicy;
use flotilla_client::{ClientError, SiteOptions, run_site};
use flotilla_common::Task;
use flotilla_common::data::RawTable;
use flotilla_tests::fake_coordinator::{FakeCoordinator, Hostility, Received, Script};
use tokio_util::sync::CancellationToken;

/// A hospital's export: an identifier, a column the site never shares (with values that
/// must never leave it), two numbers, a categorical column, and the label.
fn hospital_table() -> RawTable {
    let mut text = String::from("id,hiv_status,age,chol,smoker,num\n");
    for i in 0..80 {
        let age = 30 + (i * 7) % 45;
        let chol = 150 + (i * 13) % 120;
        let smoker = ["yes", "no", "former"][i % 3];
        let num = u8::from(age + chol / 10 > 70);
        text.push_str(&format!("{i},SECRET-HIV-{i},{age},{chol},{smoker},{num}\n"));
    }
    RawTable::from_reader(text.as_bytes(), Path::new("hospital.csv")).expect("test csv")
}

fn task() -> Task {
    Task::from_toml(
        "name = \"cardio\"\n[model]\nhidden = [8]\n[training]\nlocal_epochs = 1\nbatch_size = 16\n\
         [data]\ndrop = [\"id\", \"hiv_status\"]\ncategorical = [\"smoker\"]\n[data.label]\ncolumn = \"num\"\npositive_above = 0\n",
        "the test task",
    )
    .expect("test task")
}

const POLICY: &str = "[columns]\nlabels = [\"num\"]\nfeatures = [\"age\", \"chol\", \"smoker\"]\n\
                      [bounds]\nmax_parameters = 2000\nmin_batch_size = 8\nmax_local_epochs = 3\n";

fn policy(text: &str) -> Arc<SitePolicy> {
    Arc::new(SitePolicy::from_toml(text, Path::new("site-policy.toml")).expect("test policy"))
}

fn site(url: &str, policy: Option<Arc<SitePolicy>>, state_dir: Option<&Path>) -> SiteOptions {
    let mut o = SiteOptions::new(url, "st-mary");
    o.heartbeat = Duration::from_millis(200);
    o.reconnect_patience = Duration::from_secs(5);
    o.policy = policy;
    o.state_dir = state_dir.map(Path::to_owned);
    o
}

async fn run(script: Script, opts: impl FnOnce(&str) -> SiteOptions) -> (Result<flotilla_client::SiteReport, ClientError>, Received) {
    let fake = FakeCoordinator::start(script).await;
    let opts = opts(&fake.url);
    let result = tokio::time::timeout(Duration::from_secs(60), run_site(opts, hospital_table(), CancellationToken::new())).await.expect("the site finishes");
    (result, fake.received())
}

/// The rule a refusal names.
fn rule(result: &Result<flotilla_client::SiteReport, ClientError>) -> &'static str {
    match result {
        Err(ClientError::Policy { violation, .. }) => violation.rule,
        other => panic!("expected a refusal by the site's policy, got {other:?}"),
    }
}

/// Nothing of the withheld columns, not even their names, reached the coordinator.
fn nothing_withheld_left(r: &Received) {
    for secret in ["hiv_status", "SECRET-HIV", "\"id\""] {
        assert!(!r.transcript.contains(secret), "`{secret}` left the site:\n{}", r.transcript);
    }
}

#[tokio::test]
async fn an_allowed_task_runs_and_only_allowed_columns_are_named_or_summarised() {
    let (result, r) = run(Script { task: task(), rounds: 2, hostility: Hostility::None }, |url| site(url, Some(policy(POLICY)), None)).await;
    let report = result.expect("an allowed task runs");
    assert_eq!(report.rounds_trained, 2);
    assert_eq!(r.joins[0].columns, vec!["age", "chol", "smoker", "num"], "the join names only the allowed columns");
    let reported: Vec<&str> = r.stats[0].columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(reported, vec!["age", "chol", "smoker"]);
    assert_eq!(r.updates.len(), 2);
    nothing_withheld_left(&r);

    // Without a policy the same site names every column: the policy is what withholds them.
    let (result, r) = run(Script { task: task(), rounds: 1, hostility: Hostility::None }, |url| site(url, None, None)).await;
    result.expect("runs");
    assert!(r.joins[0].columns.contains(&"hiv_status".to_owned()));
}

#[tokio::test]
async fn a_forbidden_label_is_refused_at_join_and_no_aggregate_is_sent() {
    let mut t = task();
    t.data.label.column = "smoker".into();
    t.data.label.positive_above = None;
    t.data.label.positive_values = Some(vec!["yes".into()]);
    t.data.categorical = flotilla_common::task::Categorical::Listed(vec![]);
    let (result, r) = run(Script { task: t, rounds: 1, hostility: Hostility::None }, |url| site(url, Some(policy(POLICY)), None)).await;
    assert_eq!(rule(&result), "columns.labels");
    assert!(result.unwrap_err().to_string().contains("`smoker`"));
    assert!(r.stats.is_empty() && r.updates.is_empty(), "nothing after the join");
    assert_eq!(r.leaves, 1, "the site leaves cleanly");
    nothing_withheld_left(&r);
}

#[tokio::test]
async fn a_model_wider_than_the_policy_allows_is_refused_at_join() {
    let mut t = task();
    t.model.hidden = vec![4096, 4096];
    let (result, r) = run(Script { task: t, rounds: 1, hostility: Hostility::None }, |url| site(url, Some(policy(POLICY)), None)).await;
    assert_eq!(rule(&result), "bounds.max_parameters");
    assert!(r.stats.is_empty() && r.updates.is_empty());
}

#[tokio::test]
async fn a_model_announced_wider_than_the_plan_is_refused_before_it_is_downloaded() {
    // No policy needed: the plan fixes the model's layout, and a header announcing another is
    // refused before anything is allocated for it.
    let (result, r) = run(Script { task: task(), rounds: 1, hostility: Hostility::WiderModel }, |url| site(url, None, None)).await;
    let err = result.expect_err("a wider model is refused").to_string();
    assert!(err.contains("the federation's plan makes"), "{err}");
    assert!(r.updates.is_empty());
}

#[tokio::test]
async fn a_plan_whose_vocabulary_blows_up_the_input_width_is_refused_before_encoding() {
    let (result, r) = run(Script { task: task(), rounds: 1, hostility: Hostility::HugeVocabulary(50_000) }, |url| site(url, Some(policy(POLICY)), None)).await;
    assert_eq!(rule(&result), "bounds.max_parameters");
    let err = result.unwrap_err().to_string();
    assert!(err.contains("parameters") && err.contains("2000"), "{err}");
    assert!(r.updates.is_empty());
}

#[tokio::test]
async fn batches_of_one_are_refused() {
    let mut t = task();
    t.training.batch_size = 1;
    let (result, r) = run(Script { task: t, rounds: 1, hostility: Hostility::None }, |url| site(url, Some(policy(POLICY)), None)).await;
    assert_eq!(rule(&result), "bounds.min_batch_size");
    assert!(r.stats.is_empty());
}

#[tokio::test]
async fn work_asking_more_local_epochs_than_allowed_is_refused() {
    let (result, r) = run(Script { task: task(), rounds: 1, hostility: Hostility::Epochs(50) }, |url| site(url, Some(policy(POLICY)), None)).await;
    assert_eq!(rule(&result), "bounds.max_local_epochs");
    assert!(r.updates.is_empty(), "no update of an over-long training");
}

#[tokio::test]
async fn a_task_changed_mid_run_is_refused_with_a_diff() {
    // Whatever the policy (here none): the site accepted one task, and keeps to it.
    let mut changed = task();
    changed.training.batch_size = 2;
    let script = Script { task: task(), rounds: 3, hostility: Hostility::ChangeTaskOnRejoin(Box::new(changed)) };
    let (result, r) = run(script, |url| site(url, None, None)).await;
    assert_eq!(rule(&result), "task (unchanged while the site runs)");
    let err = result.unwrap_err().to_string();
    assert!(err.contains("training.batch_size: approved 16, the coordinator's 2"), "{err}");
    assert_eq!(r.updates.len(), 1, "one round of the first task, none of the changed one");
    assert_eq!(r.stats.len(), 1, "no aggregates for the changed task");
}

#[tokio::test]
async fn differential_privacy_weaker_than_the_floor_is_refused() {
    let mut t = task();
    t.privacy =
        Some(flotilla_common::privacy::DpConfig { clip_norm: 1.0, noise_multiplier: 0.3, delta: 1e-5, adaptive: None, local: true, distributed: false });
    let floor = format!("{POLICY}[privacy]\nrequire = \"local\"\nmin_noise_multiplier = 1.0\n");
    let (result, r) = run(Script { task: t.clone(), rounds: 1, hostility: Hostility::None }, |url| site(url, Some(policy(&floor)), None)).await;
    assert_eq!(rule(&result), "privacy.min_noise_multiplier");
    assert!(r.stats.is_empty());
    // Central DP where the site requires local DP is refused too.
    t.privacy = t.privacy.map(|mut p| {
        p.local = false;
        p.noise_multiplier = 2.0;
        p
    });
    let (result, _) = run(Script { task: t, rounds: 1, hostility: Hostility::None }, |url| site(url, Some(policy(&floor)), None)).await;
    assert_eq!(rule(&result), "privacy.require");
}

#[tokio::test]
async fn a_model_that_does_not_match_its_announced_hash_is_refused() {
    let (result, r) = run(Script { task: task(), rounds: 1, hostility: Hostility::WrongModelHash }, |url| site(url, None, None)).await;
    let err = result.expect_err("a model with the wrong hash is refused").to_string();
    assert!(err.contains("does not match the announced"), "{err}");
    assert!(r.updates.is_empty(), "nothing was trained on it");
}

#[tokio::test]
async fn a_delta_download_from_a_model_the_site_does_not_hold_is_refused() {
    let (result, r) = run(Script { task: task(), rounds: 1, hostility: Hostility::DeltaFromAnotherModel }, |url| site(url, None, None)).await;
    let err = result.expect_err("a delta from a model the site never had is refused").to_string();
    assert!(err.contains("comes as a delta from 000000000000") && err.contains("asked for the full model"), "{err}");
    assert!(r.updates.is_empty(), "nothing was trained on it");
}

#[tokio::test]
async fn categories_rarer_than_the_sites_k_are_not_reported() {
    // 80 rows, 64 in training: each smoker value has about 21. A k of 25 folds them all.
    let raised = format!("{POLICY}[privacy]\nmin_category_count = 25\n");
    let (result, r) = run(Script { task: task(), rounds: 1, hostility: Hostility::None }, |url| site(url, Some(policy(&raised)), None)).await;
    result.expect("runs");
    let smoker = r.stats[0].columns.iter().find(|c| c.name == "smoker").expect("smoker reported");
    assert!(smoker.categories.values().all(|&n| n >= 25), "{:?}", smoker.categories);
    assert!(!smoker.categories.contains_key("former"), "{:?}", smoker.categories);
}

#[tokio::test]
async fn a_restarted_site_continues_its_privacy_ledger_where_it_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut t = task();
    t.privacy =
        Some(flotilla_common::privacy::DpConfig { clip_norm: 1.0, noise_multiplier: 1.5, delta: 1e-5, adaptive: None, local: true, distributed: false });
    // The budget of exactly 5 rounds at z = 1.5 (each counted with sampling rate 1).
    let mut five = flotilla_client::state::Ledger::default();
    (0..5).for_each(|_| five.record("x", Some(1.5)));
    let eps5 = five.epsilon_with(None, 1e-5).expect("ε");
    let eps6 = five.epsilon_with(Some((1.5, 1)), 1e-5).expect("ε");
    let budget = (eps5 + eps6) / 2.0;
    let opts = |url: &str| {
        let mut o = site(url, Some(policy(POLICY)), Some(dir.path()));
        o.budget = Some((budget, 1e-5));
        o
    };
    let (first, r1) = run(Script { task: t.clone(), rounds: 3, hostility: Hostility::None }, opts).await;
    assert_eq!(first.expect("first run").rounds_trained, 3);
    assert_eq!(r1.updates.len(), 3);
    // The restarted site (a new process: a new guard over the same directory) has 2 rounds left.
    let (second, r2) = run(Script { task: t.clone(), rounds: 10, hostility: Hostility::None }, opts).await;
    let second = second.expect("second run");
    assert_eq!((second.rounds_trained, r2.updates.len()), (2, 2), "{}", second.reason);
    assert!(second.reason.contains("privacy budget"), "{}", second.reason);
    let ledger = flotilla_client::state::Ledger::load(&dir.path().join("ledger.json")).expect("ledger");
    assert_eq!(ledger.rounds(), 5);

    // The audit log has every round, the refusal, and a readable summary.
    let summary = flotilla_client::state::audit::summary(&dir.path().join("audit.jsonl")).expect("summary");
    assert!(summary.contains("rounds trained: 5"), "{summary}");
    assert!(summary.contains("refusals: 1") && summary.contains("privacy.max_epsilon"), "{summary}");
    assert!(summary.contains("client starts: 2"), "{summary}");
    assert!(summary.contains(&t.fingerprint()), "{summary}");

    // Two processes cannot share a state directory.
    let _held = flotilla_client::state::StateDir::open(dir.path()).expect("lock");
    let (third, _) = run(Script { task: t, rounds: 1, hostility: Hostility::None }, opts).await;
    assert!(third.expect_err("locked").to_string().contains("locked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_hospital_policy_runs_the_hospitals_against_the_real_coordinator() {
    let out = tempfile::tempdir().expect("tempdir");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/site-policy.toml");
    let policy = Arc::new(SitePolicy::from_file(&example).expect("the example policy"));
    let running = flotilla_tests::start_coordinator(Task::hospitals(), 7, flotilla_tests::test_policy(2, 4), &out.path().join("run")).await;
    let url = format!("http://{}", running.addr);
    let token = CancellationToken::new();
    let sites: Vec<_> = flotilla_tests::hospital_sites(7)
        .into_iter()
        .map(|(name, table)| {
            let mut o = flotilla_tests::test_site(url.clone(), &name);
            o.policy = Some(policy.clone());
            o.state_dir = Some(out.path().join(&name));
            tokio::spawn(run_site(o, table, token.clone()))
        })
        .collect();
    for s in sites {
        let report = tokio::time::timeout(Duration::from_secs(120), s).await.expect("site ends").expect("site task").expect("site runs");
        assert_eq!(report.rounds_trained, 2, "{}", report.reason);
    }
    running.finish(Duration::from_secs(5)).await.expect("the federation completes");
    for (name, _) in flotilla_tests::hospital_sites(7) {
        let summary = flotilla_client::state::audit::summary(&out.path().join(&name).join("audit.jsonl")).expect("summary");
        assert!(summary.contains("rounds trained: 2") && summary.contains("refusals: 0"), "{summary}");
        assert!(!summary.contains("dataset"), "the hospital's name column is not sent: {summary}");
    }
}

#[tokio::test]
async fn under_dp_sgd_the_site_counts_its_steps_and_stops_at_its_budget() {
    // DP-SGD at σ = 1: 64 training rows at batch 16 is q = 1/4, 4 steps an epoch, one epoch a
    // round. A budget between 3 and 4 rounds' worth of steps lets the site train 3 rounds.
    let mut t = task();
    t.data.validation_fraction = 0.0; // every one of the 64 rows trains
    t.record_privacy =
        Some(flotilla_common::privacy::RecordDp { clip_norm: 1.0, noise_multiplier: Some(1.0), target_epsilon: None, rounds: None, delta: 1e-5 });
    let spent = |steps| {
        let step = flotilla_common::privacy::Step { q: 0.25, sigma: 1.0, count: steps };
        flotilla_common::privacy::epsilon(&[step], 1e-5, flotilla_common::privacy::accountant::default_orders()).unwrap().epsilon
    };
    let budget = (spent(12) + spent(16)) / 2.0;
    let dir = tempfile::tempdir().unwrap();
    let (result, r) = run(Script { task: t, rounds: 10, hostility: Hostility::None }, |url| {
        let mut o = site(url, None, Some(dir.path()));
        o.budget = Some((budget, 1e-5));
        o
    })
    .await;
    let report = result.expect("the site stops cleanly");
    assert_eq!((report.rounds_trained, r.updates.len()), (3, 3), "{}", report.reason);
    assert!(report.reason.contains("privacy budget"), "{}", report.reason);
    let ledger = flotilla_client::state::Ledger::load(&dir.path().join("ledger.json")).unwrap();
    assert_eq!(ledger.sgd_steps, vec![flotilla_common::privacy::Step { q: 0.25, sigma: 1.0, count: 12 }]);
    // Each update carried the site's ε per record after its round.
    let reported: Vec<f64> = r.updates.iter().filter_map(|(h, _)| h.metrics.as_ref().and_then(|m| m.record_epsilon)).collect();
    assert_eq!(reported.len(), 3);
    assert!((reported[2] - spent(12)).abs() < 1e-9, "{reported:?}");
}
