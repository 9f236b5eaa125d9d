#![allow(clippy::unwrap_used)] // a test file: a failed unwrap is a failed test
//! A user's own data, end to end through the binaries: a CSV the project has never seen, as
//! Excel writes it in a comma-decimal locale (`;`, decimal commas, CRLF, a byte-order mark)
//! with R's `NA` and an id column → `init` drafts the task → `simulate --data` federates it
//! and writes the data profile → `predict` and `evaluate` use the model file on new rows.

use std::path::Path;
use std::process::{Command, Output};

use flotilla_common::data::RawTable;
use flotilla_common::predict::Model;
use flotilla_common::site::PreparedSite;
use flotilla_coordinator::scenario::{Scenario, SiteSource};
use flotilla_tests::process::binary;

fn run(bin: &str, args: &[&str]) -> Output {
    let out = Command::new(binary(bin)).args(args).env("NO_COLOR", "1").output().unwrap();
    assert!(out.status.success(), "{bin} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    out
}

/// The bundled hospitals as a comma-decimal Excel export: another spelling of everything.
fn excel_export(path: &Path, with_label: bool) {
    let table = RawTable::read(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/heart_disease_uci.csv"))).unwrap();
    let mut text = String::from("\u{feff}");
    let keep: Vec<usize> = (0..table.header.len()).filter(|&i| with_label || table.header[i] != "num").collect();
    text.push_str(&keep.iter().map(|&i| format!("\"{}\"", table.header[i])).collect::<Vec<_>>().join(";"));
    text.push_str("\r\n");
    for row in &table.rows {
        let fields: Vec<String> = keep
            .iter()
            .map(|&i| {
                let v = &row.fields[i];
                if v.is_empty() { "NA".to_owned() } else { v.replace('.', ",") }
            })
            .collect();
        text.push_str(&fields.join(";"));
        text.push_str("\r\n");
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn init_simulate_predict_on_a_csv_never_seen() {
    let dir = tempfile::tempdir().unwrap();
    let (data, task, out) = (dir.path().join("study.csv"), dir.path().join("task.toml"), dir.path().join("run"));
    excel_export(&data, true);
    let s = |p: &Path| p.to_str().unwrap().to_owned();

    run("flotilla-coordinator", &["init", "--data", &s(&data), "--label", "num", "--out", &s(&task)]);
    let drafted = std::fs::read_to_string(&task).unwrap();
    let t = flotilla_common::Task::from_toml(&drafted, "task").unwrap();
    assert_eq!(t.data.drop, vec!["id"], "{drafted}");
    assert!(drafted.contains("`NA`"), "the spellings found are named: {drafted}");
    for numeric in ["age", "chol", "oldpeak"] {
        assert!(!matches!(&t.data.categorical, flotilla_common::task::Categorical::Listed(l) if l.iter().any(|c| c == numeric)), "{numeric}: {drafted}");
    }

    run(
        "flotilla-coordinator",
        &["simulate", "--data", &s(&data), "--config", &s(&task), "--partition", "column:dataset", "--out", &s(&out), "--rounds", "4", "--insecure", "--quiet"],
    );
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!(summary["final"]["accuracy"].as_f64().unwrap() > 0.7, "{}", summary["final"]);
    // 1 input per numeric column (oldpeak's decimal commas read as numbers), not one per value.
    assert!(summary["model"]["inputs"].as_u64().unwrap() < 40, "{}", summary["model"]);
    let profile: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("profile.json")).unwrap()).unwrap();
    let flags = profile["flags"].as_array().unwrap();
    // The drafted task cannot know that Switzerland's cholesterol of 0 means "not measured"
    // (the bundled task says so); the profile shows it as that site's drift.
    assert!(flags.iter().any(|f| f["kind"] == "drift" && f["site"] == "Switzerland" && f["column"] == "chol"), "{flags:?}");
    assert!(flags.iter().any(|f| f["kind"] == "missing_column" && f["site"] == "Hungary" && f["column"] == "ca"), "{flags:?}");
    assert!(out.join("profile.svg").exists());

    // New rows without the label: one prediction per row, in order.
    let new = dir.path().join("new.csv");
    excel_export(&new, false);
    let predictions = dir.path().join("predictions.csv");
    run("flotilla-client", &["predict", "--model", &s(&out.join("model.safetensors")), "--data", &s(&new), "--out", &s(&predictions), "--id", "id"]);
    let written = std::fs::read_to_string(&predictions).unwrap();
    let mut lines = written.lines();
    assert_eq!(lines.next(), Some("line,id,probability,class"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 920);
    assert_eq!((rows[0][0], rows[0][1]), ("2", "1"), "line 2 of the file is its first row");
    assert!(rows.iter().all(|r| r[2].parse::<f64>().is_ok_and(|p| (0.0..=1.0).contains(&p)) && (r[3] == "0" || r[3] == "1")));

    // A file without the model's columns is refused, naming them.
    let wrong = dir.path().join("wrong.csv");
    std::fs::write(&wrong, "id;age\r\n1;50\r\n").unwrap();
    let err = Command::new(binary("flotilla-client"))
        .args(["predict", "--model", &s(&out.join("model.safetensors")), "--data", &s(&wrong), "--out", &s(&predictions)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(!err.status.success() && stderr.contains("wrong.csv") && stderr.contains("`chol`"), "{stderr}");
}

/// `evaluate` on a site's own test rows gives what the site reported for the kept model, and
/// `predict` on the same rows gives the classes that accuracy counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_equal_the_models_own_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let task = flotilla_common::Task::hospitals();
    let opts = flotilla_coordinator::simulate::SimulateOptions {
        baselines: false,
        ..flotilla_tests::sim_options(SiteSource::Scenario(Scenario::Hospitals), task.clone(), 5, 5, dir.path())
    };
    let sim = flotilla_coordinator::simulate::simulate(opts).await.unwrap();
    let model = Model::load(&dir.path().join("model.safetensors")).unwrap();
    assert_eq!(model.params.hash(), sim.outcome.model.hash());
    assert_eq!(model.card.plan, *sim.outcome.plan, "the file carries the plan the sites encoded with");
    let sites = flotilla_coordinator::scenario::load_sites(&SiteSource::Scenario(Scenario::Hospitals), &task, 5).unwrap();
    for (name, input) in &sites {
        let table = input.table().expect("the hospitals are tables");
        let prepared = PreparedSite::new(name, table, &task, 5).unwrap();
        let test_rows: Vec<_> = prepared.test.iter().map(|&i| table.rows[i].clone()).collect();
        let test = table.with_rows(dir.path().join(format!("{name}.csv")), test_rows);
        let e = model.evaluate(&test, flotilla_common::train::Backend::Ndarray).unwrap();
        let reported = &sim.outcome.final_site_metrics[name];
        assert_eq!((e.examples, e.accuracy), (reported.examples, reported.accuracy), "{name}");
        assert!((e.loss - reported.loss).abs() < 1e-9, "{name}: {} vs {}", e.loss, reported.loss);
        let predicted = model.predict(&test, flotilla_common::train::Backend::Ndarray).unwrap();
        let labels = flotilla_common::data::SiteRows::from_table(&test, &task.data).unwrap().labels();
        let correct = predicted.iter().zip(&labels).filter(|(p, l)| p.class == **l).count();
        assert_eq!(correct as f64 / labels.len() as f64, e.accuracy, "{name}");
    }
}

/// The hospitals as a database tool exports a table: tab-separated, `NULL` for missing.
fn database_export(path: &Path, drop: &[&str]) {
    let table = RawTable::read(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/heart_disease_uci.csv"))).unwrap();
    let keep: Vec<usize> = (0..table.header.len()).filter(|&i| !drop.contains(&table.header[i].as_str())).collect();
    let mut text = keep.iter().map(|&i| table.header[i].clone()).collect::<Vec<_>>().join("\t");
    text.push('\n');
    for row in &table.rows {
        let fields: Vec<&str> = keep.iter().map(|&i| if row.fields[i].is_empty() { "NULL" } else { row.fields[i].as_str() }).collect();
        text.push_str(&fields.join("\t"));
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// A numeric label end to end: `init` drafts a regression task (and skips the rows without
/// a label), `simulate` trains it on the squared error and reports MAE, RMSE and R² beside
/// its baselines, and `predict` writes values whose errors are the ones `evaluate` reports.
#[test]
fn a_regression_target_from_init_to_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let (data, task, out) = (dir.path().join("export.tsv"), dir.path().join("task.toml"), dir.path().join("run"));
    database_export(&data, &[]);
    let s = |p: &Path| p.to_str().unwrap().to_owned();

    // The maximum heart rate reached in the exercise test, from everything else.
    run("flotilla-coordinator", &["init", "--data", &s(&data), "--label", "thalch", "--out", &s(&task)]);
    let drafted = std::fs::read_to_string(&task).unwrap();
    let t = flotilla_common::Task::from_toml(&drafted, "task").unwrap();
    assert!(t.data.label.is_regression(), "{drafted}");
    assert_eq!(t.data.bad_rows, flotilla_common::task::BadRows::Skip, "55 rows have no label: {drafted}");

    run(
        "flotilla-coordinator",
        &["simulate", "--data", &s(&data), "--config", &s(&task), "--partition", "column:dataset", "--out", &s(&out), "--rounds", "8", "--insecure", "--quiet"],
    );
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let (fin, central) = (&summary["final"], &summary["baselines"]["centralized"]);
    let r2 = fin["r2"].as_f64().unwrap();
    assert!(r2 > 0.2, "the federated model explains part of the variance: {fin}");
    assert!(fin["accuracy"].is_null(), "no accuracy for a number: {fin}");
    let (rmse, mae) = (fin["rmse"].as_f64().unwrap(), fin["mae"].as_f64().unwrap());
    assert!(mae <= rmse && rmse > 5.0 && rmse < 40.0, "errors in beats per minute: {fin}");
    assert!(central["r2"].as_f64().is_some() && summary["baselines"]["local_mean_r2"].as_f64().is_some(), "{}", summary["baselines"]);
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let header: Vec<&str> = metrics.lines().next().unwrap().split(',').collect();
    let last: Vec<&str> = metrics.lines().last().unwrap().split(',').collect();
    let col = |name: &str| last[header.iter().position(|h| *h == name).unwrap()];
    assert!(col("accuracy").is_empty() && col("r2").parse::<f64>().is_ok() && col("rmse").parse::<f64>().is_ok(), "{metrics}");
    let profile: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("profile.json")).unwrap()).unwrap();
    assert!(profile["label"]["mean"].as_f64().is_some_and(|m| (100.0..170.0).contains(&m)), "the label is profiled: {}", profile["label"]);

    // Predictions on the labelled rows, in the label's units, against what `evaluate` says.
    let model = out.join("model.safetensors");
    let predictions = dir.path().join("predictions.csv");
    run("flotilla-client", &["predict", "--model", &s(&model), "--data", &s(&data), "--out", &s(&predictions), "--id", "id"]);
    let written = std::fs::read_to_string(&predictions).unwrap();
    assert_eq!(written.lines().next(), Some("line,id,thalch"));
    let truth = RawTable::read(&data).unwrap();
    let column = truth.column_index("thalch").unwrap();
    let (mut sq, mut n) = (0.0, 0usize);
    for (line, raw) in written.lines().skip(1).zip(&truth.rows) {
        let predicted: f64 = line.split(',').nth(2).unwrap().parse().unwrap();
        assert!((40.0..230.0).contains(&predicted), "a heart rate: {line}");
        if let Ok(actual) = raw.fields[column].parse::<f64>() {
            sq += (predicted - actual).powi(2);
            n += 1;
        }
    }
    let evaluated: serde_json::Value =
        serde_json::from_slice(&run("flotilla-client", &["evaluate", "--model", &s(&model), "--data", &s(&data)]).stdout).unwrap();
    assert_eq!(evaluated["examples"].as_u64(), Some(n as u64), "{evaluated}");
    let rmse_of_predictions = (sq / n as f64).sqrt();
    assert!((rmse_of_predictions - evaluated["rmse"].as_f64().unwrap()).abs() < 1e-3, "{rmse_of_predictions} vs {evaluated}");
}
