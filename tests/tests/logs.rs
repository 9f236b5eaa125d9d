//! Logs never carry data: a whole simulation at debug level mentions no category value and
//! no row of the sites' files.

use std::io::Write;
use std::sync::{Arc, Mutex};

use flotilla_common::Task;
use flotilla_coordinator::scenario::{HEART_DISEASE_CSV, Scenario, SiteSource};
use flotilla_coordinator::simulate::{SimulateOptions, simulate};
use flotilla_tests::sim_options;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debug_log_of_a_whole_run_holds_no_data() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("flotilla_coordinator=trace,flotilla_client=trace,flotilla_common=trace,info"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let dir = tempfile::tempdir().unwrap();
    simulate(SimulateOptions { tls: true, ..sim_options(SiteSource::Scenario(Scenario::Hospitals), Task::hospitals(), 3, 2, dir.path()) }).await.unwrap();
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("round closed"), "the log was captured: {}", &log[..log.len().min(500)]);
    for value in ["typical angina", "asymptomatic", "lv hypertrophy", "reversable defect", "downsloping", "non-anginal"] {
        assert!(!log.contains(value), "the log mentions the data value `{value}`");
    }
    for row in HEART_DISEASE_CSV.lines().skip(1).take(50) {
        assert!(!log.contains(row), "the log contains a data row");
    }
}
