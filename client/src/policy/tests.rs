use std::path::Path;

use flotilla_common::Task;

use super::*;

fn policy(text: &str) -> SitePolicy {
    SitePolicy::from_toml(text, Path::new("site-policy.toml")).unwrap()
}

fn refused(p: &SitePolicy, task: &Task) -> Violation {
    p.check_task(task).expect_err("the policy refuses this task")
}

#[test]
fn the_bundled_example_policy_accepts_the_hospitals_task() {
    let p = SitePolicy::from_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/site-policy.toml")).unwrap();
    assert_eq!(p.check_task(&Task::hospitals()), Ok(()));
    assert!(p.may_read("age") && p.may_read("num") && !p.may_read("id") && !p.may_read("dataset"));
}

#[test]
fn each_rule_refuses_with_its_name_and_the_values() {
    let task = Task::hospitals();
    let p = policy("[columns]\nlabels = [\"num\"]\nfeatures = [\"age\"]\n");
    let mut t = task.clone();
    t.data.label.column = "age".into();
    let v = refused(&p, &t);
    assert_eq!(v.rule, "columns.labels");
    assert!(v.message.contains("`age`") && v.message.contains("num"), "{v}");

    let p = policy("[bounds]\nmin_batch_size = 16\nmax_local_epochs = 3\nstrategies = [\"fedavg\", \"fedprox\"]\nmax_parameters = 5000\n");
    let mut t = task.clone();
    t.training.batch_size = 1;
    assert_eq!(refused(&p, &t).rule, "bounds.min_batch_size");
    let mut t = task.clone();
    t.training.local_epochs = 4;
    assert_eq!(refused(&p, &t).rule, "bounds.max_local_epochs");
    let mut t = task.clone();
    t.training.local_epochs = 1;
    t.strategy.name = flotilla_common::strategy::StrategyName::Median;
    assert!(refused(&p, &t).message.contains("median"));
    let mut t = task.clone();
    t.training.local_epochs = 1;
    t.model.hidden = vec![100_000, 100_000];
    let v = refused(&p, &t);
    assert_eq!(v.rule, "bounds.max_parameters");
    // A hostile width cannot overflow the count.
    t.model.hidden = vec![usize::MAX, usize::MAX];
    assert_eq!(refused(&p, &t).rule, "bounds.max_parameters");

    let mut ok = task.clone();
    ok.training.local_epochs = 1;
    assert_eq!(p.check_task(&ok), Ok(()));
    assert_eq!(p.check_epochs(3), Ok(()));
    assert_eq!(p.check_epochs(9).unwrap_err().rule, "bounds.max_local_epochs");
}

#[test]
fn the_privacy_floor_is_checked() {
    let dp = |local: bool, z: f64| {
        let mut t = Task::hospitals();
        t.privacy = Some(flotilla_common::privacy::DpConfig { clip_norm: 1.0, noise_multiplier: z, delta: 1e-5, adaptive: None, local, distributed: false });
        t
    };
    let p = policy("[privacy]\nrequire = \"local\"\nmin_noise_multiplier = 1.0\nmin_category_count = 10\n");
    assert_eq!(refused(&p, &Task::hospitals()).rule, "privacy.require");
    assert_eq!(refused(&p, &dp(false, 2.0)).rule, "privacy.require");
    assert_eq!(refused(&p, &dp(true, 0.5)).rule, "privacy.min_noise_multiplier");
    assert_eq!(p.check_task(&dp(true, 1.0)), Ok(()));
    assert_eq!(p.min_category_count(5), 10);
    assert_eq!(p.min_category_count(20), 20, "the policy raises k, never lowers it");
    let distributed = policy("[privacy]\nrequire = \"distributed\"\n");
    assert_eq!(refused(&distributed, &dp(false, 2.0)).rule, "privacy.require");
    let mut shared = dp(false, 2.0);
    shared.secure_aggregation = true;
    shared.privacy = shared.privacy.map(|p| flotilla_common::privacy::DpConfig { distributed: true, ..p });
    assert_eq!(distributed.check_task(&shared), Ok(()));
    let central = policy("[privacy]\nrequire = \"central\"\n");
    assert_eq!(central.check_task(&dp(false, 1.0)), Ok(()));
    assert_eq!(refused(&central, &Task::hospitals()).rule, "privacy.require");
}

#[test]
fn a_pinned_task_is_refused_with_a_readable_diff() {
    let approved = Task::hospitals();
    let p = SitePolicy::default().with_approved_task(approved.clone());
    let mut other = approved.clone();
    other.training.batch_size = 1;
    let v = refused(&p, &other);
    assert_eq!(v.rule, "task.approved");
    assert!(v.message.contains("training.batch_size: approved 32, the coordinator's 1"), "{v}");
    assert_eq!(p.check_task(&approved), Ok(()));

    let p = policy(&format!("[task]\nfingerprint = \"{}\"\n", approved.fingerprint()));
    assert_eq!(p.check_task(&approved), Ok(()));
    assert_eq!(refused(&p, &other).rule, "task.fingerprint");
}

#[test]
fn bad_policy_files_are_refused_with_the_place() {
    let err = SitePolicy::from_toml("[bounds]\nmin_batch = 3\n", Path::new("p.toml")).unwrap_err().to_string();
    assert!(err.contains("p.toml") && err.contains("min_batch") && err.contains("line 2"), "{err}");
    for bad in [
        "[columns]\nfeatures = [\"a\"]\n",
        "[columns]\nlabels = []\n",
        "[bounds]\nmin_batch_size = 0\n",
        "[privacy]\nmin_noise_multiplier = -1\n",
        "[privacy]\ndelta = 0.1\n",
        "[task]\nfingerprint = \"abc\"\n",
        "[resources]\nthreads = 0\n",
    ] {
        assert!(SitePolicy::from_toml(bad, Path::new("p.toml")).is_err(), "{bad}");
    }
}

#[test]
fn the_plan_is_bounded_by_parameters_and_memory() {
    let p = policy("[bounds]\nmax_parameters = 100000\n[resources]\nmax_memory_mb = 100\n");
    let task = Task::hospitals();
    assert_eq!(p.check_plan(&task, PlanFacts { width: 30, train_rows: 200, test_rows: 50 }), Ok(()));
    let v = p.check_plan(&task, PlanFacts { width: 100_000, train_rows: 200, test_rows: 50 }).unwrap_err();
    assert_eq!(v.rule, "bounds.max_parameters");
    let v = p.check_plan(&task, PlanFacts { width: 1000, train_rows: 10_000_000, test_rows: 50 }).unwrap_err();
    assert_eq!(v.rule, "resources.max_memory_mb");
    assert!(v.message.contains("MiB"), "{v}");
}

#[test]
fn an_image_tasks_model_is_counted_from_its_image_and_its_convolutions() {
    // The plan of an image task has one column per channel: the input is still the image.
    assert_eq!(super::check::model_params(&Task::mnist_cnn(), 1), Some(1_663_370));
    assert_eq!(super::check::model_params(&Task::mnist_2nn(), 1), Some(199_210));
    let mut hostile = Task::mnist_cnn();
    hostile.model.filters = vec![usize::MAX, usize::MAX];
    assert_eq!(super::check::model_params(&hostile, 1), None, "a hostile filter count cannot overflow the count");
    let p = policy("[bounds]\nmax_parameters = 1000000\n");
    let err = p.check_model(&Task::mnist_cnn(), 1).unwrap_err();
    assert!(err.message.contains("1663370 parameters"), "{}", err.message);
    assert_eq!(p.check_model(&Task::mnist_2nn(), 1), Ok(199_210));
}
