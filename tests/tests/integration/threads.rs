//! A site's compute-thread cap (`--threads`, the policy's `resources.threads`) changes how
//! fast it trains, never what it trains: the same federation with sites on one thread and on
//! two gives the same model bit for bit, on a model wide enough that the kernels split work.

async fn run(threads: Option<usize>, policy_threads: Option<usize>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let running = flotilla_tests::start_coordinator(flotilla_tests::synthetic_task(vec![512, 512]), 9, flotilla_tests::test_policy(2, 2), dir.path()).await;
    let token = tokio_util::sync::CancellationToken::new();
    let mut sites = Vec::new();
    for (i, name) in ["north", "south"].into_iter().enumerate() {
        let mut opts = flotilla_tests::test_site(running.url(), name);
        opts.threads = threads;
        if let Some(n) = policy_threads {
            let path = dir.path().join(format!("{name}-policy.toml"));
            std::fs::write(&path, format!("[resources]\nthreads = {n}\n")).unwrap();
            opts.policy = Some(std::sync::Arc::new(flotilla_client::policy::SitePolicy::from_file(&path).unwrap()));
        }
        sites.push(tokio::spawn(flotilla_client::run_site(opts, flotilla_tests::synthetic_table(name, 200, i * 200), token.clone())));
    }
    for s in sites {
        assert_eq!(s.await.unwrap().unwrap().rounds_trained, 2);
    }
    running.stop(std::time::Duration::from_secs(1)).await.unwrap().model.hash()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_thread_cap_changes_no_bit_of_the_model() {
    let free = run(None, None).await;
    assert_eq!(run(Some(1), None).await, free, "one thread");
    assert_eq!(run(Some(2), None).await, free, "two threads");
    assert_eq!(run(Some(2), Some(1)).await, free, "the policy's lower cap");
}

#[tokio::test]
async fn a_site_without_a_thread_to_compute_on_says_so() {
    let mut opts = flotilla_tests::test_site("http://127.0.0.1:9".into(), "north");
    opts.threads = Some(0);
    let err = flotilla_client::run_site(opts, flotilla_tests::synthetic_table("north", 20, 0), tokio_util::sync::CancellationToken::new()).await.unwrap_err();
    assert!(err.to_string().contains("at least one compute thread"), "{err}");
}
