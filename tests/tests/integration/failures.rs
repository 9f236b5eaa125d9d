//! Failure is a normal outcome: a site that vanishes mid-round, requests for closed rounds,
//! and bad data files.

use std::time::Duration;

use flotilla_client::run_site;
use flotilla_common::Task;
use flotilla_common::data::RawTable;
use flotilla_common::model::ModelShape;
use flotilla_common::site::PreparedSite;
use flotilla_common::train::evaluate;
use flotilla_common::wire;
use flotilla_proto::PROTOCOL_VERSION;
use flotilla_proto::pb::{self, federation_client::FederationClient};
use flotilla_tests::{hospital_sites, start_coordinator, test_policy, test_site};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// A site driven by hand: joins and reports like a real one, evaluates when asked, and
/// disappears without a word as soon as it is asked to train.
async fn vanishing_site(url: String, name: String, table: RawTable) -> u32 {
    let mut rpc = FederationClient::<Channel>::connect(url).await.unwrap();
    let joined = rpc
        .join(pb::JoinRequest { site: name.clone(), protocol_version: PROTOCOL_VERSION, num_rows: table.rows.len() as u64, columns: table.header.clone() })
        .await
        .unwrap()
        .into_inner();
    let task = Task::from_toml(&joined.task_toml, "task").unwrap();
    let prepared = PreparedSite::new(&name, &table, &task, joined.seed).unwrap();
    let id = joined.client_id.clone();
    rpc.report_stats(wire::stats_to_pb(&id, &prepared.stats, prepared.num_train() as u64)).await.unwrap();
    loop {
        let work = rpc.pull_work(pb::PullWorkRequest { client_id: id.clone(), known_round: 0 }).await.unwrap().into_inner();
        match work.kind.unwrap() {
            pb::work_item::Kind::Fit(f) => return f.round, // vanish: no update, no heartbeat, no goodbye
            pb::work_item::Kind::Evaluate(e) => {
                let plan = wire::plan_from_pb(rpc.get_plan(pb::GetPlanRequest { client_id: id.clone() }).await.unwrap().into_inner()).unwrap().unwrap();
                let data = prepared.encode(&plan, &task, joined.seed).unwrap();
                let mut stream = rpc
                    .download_model(pb::DownloadModelRequest { client_id: id.clone(), round: e.round, model_hash: e.model_hash.clone(), ..Default::default() })
                    .await
                    .unwrap()
                    .into_inner();
                let mut chunks = Vec::new();
                while let Some(c) = stream.message().await.unwrap() {
                    chunks.push(c);
                }
                let (_, model) = wire::model_from_chunks(chunks).unwrap();
                let shape = ModelShape::for_task(&task, plan.width());
                let eval = evaluate(&model, &shape, &data.test, flotilla_common::train::Backend::Ndarray).unwrap();
                rpc.submit_evaluation(wire::evaluation_to_pb(&id, e.round, &e.model_hash, &eval)).await.unwrap();
            }
            pb::work_item::Kind::Wait(_) => {}
            pb::work_item::Kind::Done(_) => panic!("the federation ended before asking this site to train"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_vanishes_mid_round_does_not_hang_the_round() {
    let dir = tempfile::tempdir().unwrap();
    let sites = hospital_sites(1);
    let running = start_coordinator(Task::hospitals(), 1, test_policy(2, 4), dir.path()).await;
    let token = CancellationToken::new();
    let mut honest = Vec::new();
    for (name, table) in sites.iter().take(3).cloned() {
        honest.push(tokio::spawn(run_site(test_site(running.url(), &name), table, token.clone())));
    }
    let (name, table) = sites[3].clone();
    let vanished_in = vanishing_site(running.url(), name, table).await;
    assert_eq!(vanished_in, 1);

    // Bounded so a regression fails instead of hanging CI.
    let finished = tokio::time::timeout(Duration::from_secs(120), running.wait_done(&CancellationToken::new())).await;
    assert_eq!(finished, Ok(true), "the federation must finish without the vanished site");
    for h in honest {
        let report = h.await.unwrap().unwrap();
        assert_eq!(report.rounds_trained, 2);
    }
    let outcome = running.stop(Duration::from_secs(1)).await.unwrap();
    let round1 = &outcome.history[1];
    assert_eq!((round1.selected, round1.clients, round1.failed), (4, 3, 1), "{round1:?}");
    assert_eq!(outcome.history[2].selected, 3, "the vanished site is no longer sampled");
}

/// A decline of `fit` with `cause` (1 = diverged), as a site would send it.
fn decline(id: &str, fit: &pb::FitWork, cause: i32) -> pb::DeclineFitRequest {
    pb::DeclineFitRequest { client_id: id.to_owned(), round: fit.round, model_hash: fit.model_hash.clone(), cause }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_declines_a_round_is_not_waited_for_and_stays_in_the_federation() {
    let dir = tempfile::tempdir().unwrap();
    let sites = hospital_sites(1);
    // The deadline is an hour away: without the decline, round 1 would wait for it.
    let policy = flotilla_coordinator::federation::Policy { round_timeout: Duration::from_secs(3600), ..test_policy(2, 4) };
    let running = start_coordinator(Task::hospitals(), 1, policy, dir.path()).await;
    let token = CancellationToken::new();
    let honest: Vec<_> =
        sites.iter().take(3).cloned().map(|(name, table)| tokio::spawn(run_site(test_site(running.url(), &name), table, token.clone()))).collect();
    let (name, table) = sites[3].clone();
    let mut raw = flotilla_tests::RawSite::join(running.url(), &name, &table).await;
    let mut declined = Vec::new();
    let driven = async {
        loop {
            match raw.pull().await {
                pb::work_item::Kind::Fit(fit) => {
                    if fit.round == 1 {
                        // A cause the coordinator does not know, or none, is refused with it.
                        for cause in [0, 99] {
                            let err = raw.rpc.decline_fit(decline(&raw.id, &fit, cause)).await.unwrap_err();
                            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
                            assert!(err.message().contains(&format!("cause {cause}")) && err.message().contains("round 1"), "{}", err.message());
                        }
                        let stale = pb::DeclineFitRequest { model_hash: "00".into(), ..decline(&raw.id, &fit, 1) };
                        let err = raw.rpc.decline_fit(stale).await.unwrap_err();
                        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
                    }
                    raw.rpc.decline_fit(decline(&raw.id, &fit, 1)).await.unwrap();
                    declined.push(fit.round);
                    if fit.round == 1 {
                        let err = raw.rpc.decline_fit(decline(&raw.id, &fit, 1)).await.unwrap_err();
                        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "a second decline: {err:?}");
                    }
                }
                pb::work_item::Kind::Evaluate(e) => raw.evaluate(e).await,
                pb::work_item::Kind::Wait(_) => {}
                pb::work_item::Kind::Done(_) => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), driven).await.expect("the federation must go on without the declining site, long before the deadline");
    assert_eq!(declined, vec![1, 2], "the site is asked again after declining");
    for h in honest {
        assert_eq!(h.await.unwrap().unwrap().rounds_trained, 2);
    }
    let outcome = running.stop(Duration::from_secs(1)).await.unwrap();
    for r in &outcome.history[1..] {
        assert_eq!((r.selected, r.clients, r.failed, r.declined, r.evaluated), (4, 3, 1, 1, 4), "{r:?}");
    }
    let metrics = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    let header: Vec<&str> = metrics.lines().next().unwrap().split(',').collect();
    let column = header.iter().position(|c| *c == "declined").expect("metrics.csv has a `declined` column");
    let declined_column: Vec<&str> = metrics.lines().skip(1).map(|l| l.split(',').nth(column).unwrap()).collect();
    assert_eq!(declined_column, ["0", "1", "1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_whose_training_diverges_decline_and_the_model_is_never_touched() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut task = Task::hospitals();
    // Far beyond any sane rate: every site's loss overflows within a few steps.
    task.training.learning_rate = 1e30;
    let policy = flotilla_coordinator::federation::Policy { round_timeout: Duration::from_secs(3600), ..test_policy(2, 4) };
    let running = start_coordinator(task, 1, policy, dir.path()).await;
    let token = CancellationToken::new();
    let sites: Vec<_> = hospital_sites(1)
        .into_iter()
        .enumerate()
        .map(|(i, (name, table))| {
            let mut o = test_site(running.url(), &name);
            o.state_dir = (i == 0).then(|| state.path().to_owned());
            tokio::spawn(run_site(o, table, token.clone()))
        })
        .collect();
    let reports = tokio::time::timeout(Duration::from_secs(120), async {
        let mut reports = Vec::new();
        for s in sites {
            reports.push(s.await.unwrap().expect("a diverging site declines and stays on; it does not fail"));
        }
        reports
    })
    .await
    .expect("declines close the rounds long before their deadline");
    for r in &reports {
        assert_eq!((r.rounds_trained, r.rounds_declined, r.evaluations), (0, 2, 3), "{r:?}");
    }
    let outcome = running.stop(Duration::from_secs(1)).await.unwrap();
    let initial = &outcome.history[0].model_hash;
    for r in &outcome.history[1..] {
        assert_eq!((r.clients, r.declined), (0, 4), "{r:?}");
        assert_eq!(&r.model_hash, initial, "no update was sent, so the global model never moved");
    }
    let verdict = flotilla_coordinator::verdict::unusable_model(&outcome.history).expect("a run that never aggregated is not a success");
    assert!(verdict.contains("8 declined") && verdict.contains("learning rate"), "{verdict}");
    let audit = flotilla_client::state::audit::summary(&state.path().join("audit.jsonl")).unwrap();
    assert!(audit.contains("rounds declined (only the cause was sent): 1 (diverged), 2 (diverged)"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_closed_rounds_and_unknown_clients_get_clear_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let sites = hospital_sites(1);
    let running = start_coordinator(Task::hospitals(), 1, test_policy(1, 1), dir.path()).await;
    let mut rpc = FederationClient::<Channel>::connect(running.url()).await.unwrap();

    let err = rpc.pull_work(pb::PullWorkRequest { client_id: "nobody#1".into(), known_round: 0 }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("join again"), "{}", err.message());

    let err = rpc.join(pb::JoinRequest { site: "Cleveland".into(), protocol_version: 99, num_rows: 1, columns: vec!["num".into()] }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("protocol version 99"), "{}", err.message());

    let err =
        rpc.join(pb::JoinRequest { site: "Cleveland".into(), protocol_version: PROTOCOL_VERSION, num_rows: 1, columns: vec!["age".into()] }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("`num`"), "{}", err.message());

    // A joined site uploads for a round that is not open.
    let (name, table) = sites[0].clone();
    let joined = rpc
        .join(pb::JoinRequest { site: name.clone(), protocol_version: PROTOCOL_VERSION, num_rows: table.rows.len() as u64, columns: table.header.clone() })
        .await
        .unwrap()
        .into_inner();
    let header = pb::UpdateChunk {
        kind: Some(pb::update_chunk::Kind::Header(pb::UpdateHeader {
            client_id: joined.client_id.clone(),
            round: 5,
            base_model_hash: "00".into(),
            layout_fingerprint: "00".into(),
            total_values: 1,
            num_examples: 1,
            metrics: None,
            values_sha256: String::new(),
            masked: false,
            encoding: 0,
        })),
    };
    let err = rpc.upload_update(tokio_stream::iter(vec![header])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("round 5") && err.message().contains("not open"), "{}", err.message());
    running.stop(std::time::Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_csv_is_reported_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad-hospital.csv");
    let (_, cleveland) = hospital_sites(1).into_iter().next().unwrap();
    let mut text = cleveland.header.join(",") + "\n";
    for (i, row) in cleveland.rows.iter().take(20).enumerate() {
        let mut fields = row.fields.clone();
        if i == 3 {
            fields[1] = "sixty-one".into(); // age, data line 4 = file line 5
        }
        text += &(fields.iter().map(|f| if f.contains(',') { format!("\"{f}\"") } else { f.clone() }).collect::<Vec<_>>().join(",") + "\n");
    }
    std::fs::write(&path, text).unwrap();
    let table = RawTable::read(&path).unwrap();

    let running = start_coordinator(Task::hospitals(), 1, test_policy(1, 1), &dir.path().join("run")).await;
    let err = run_site(test_site(running.url(), "Bad"), table, CancellationToken::new()).await.unwrap_err().to_string();
    assert!(err.contains("bad-hospital.csv:5"), "{err}");
    assert!(err.contains("column `age`") && err.contains("not a number"), "{err}");
    assert!(!err.contains("sixty-one"), "the value itself must not reach logs: {err}");
    running.stop(std::time::Duration::ZERO).await;

    // A ragged row is caught when the file is read, before anything is sent.
    std::fs::write(&path, "age,num\n63,0\n64\n").unwrap();
    let err = RawTable::read(&path).unwrap_err().to_string();
    assert!(err.contains("bad-hospital.csv:3") && err.contains("1 fields"), "{err}");
}
