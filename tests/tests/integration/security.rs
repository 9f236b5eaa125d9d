//! Mutual TLS, site identity, the allow list, CSRs, and updates that must never reach the
//! global model.

use std::time::Duration;

use flotilla_client::{ClientError, ClientTls, run_site};
use flotilla_common::pki::{self, Issued, Validity};
use flotilla_coordinator::federation::Policy;
use flotilla_coordinator::run_dir::RunDir;
use flotilla_coordinator::runner::{self, Running};
use flotilla_coordinator::tls::ServerTls;
use flotilla_proto::PROTOCOL_VERSION;
use flotilla_proto::pb::{self, federation_client::FederationClient};
use flotilla_tests::{synthetic_table, synthetic_task, test_site};
use time::{Duration as TimeDelta, OffsetDateTime};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

struct Federation {
    ca: Issued,
    running: Running,
    _dir: tempfile::TempDir,
}

async fn federation_over_mtls(policy: Policy) -> Federation {
    let ca = pki::new_ca("test", Validity::days(1)).unwrap();
    let server = pki::issue_server(&ca, &["localhost".into()], &["127.0.0.1".parse().unwrap()], Validity::days(1)).unwrap();
    let tls = ServerTls { cert_pem: server.cert_pem, key_pem: server.key_pem, client_ca_pem: ca.cert_pem.clone() };
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = runner::start(synthetic_task(vec![8]), 5, policy, Some(RunDir::create(dir.path()).unwrap()), listener, Some(tls)).unwrap();
    Federation { ca, running, _dir: dir }
}

fn client_tls(ca: &Issued, cert: &Issued) -> ClientTls {
    ClientTls { ca_pem: ca.cert_pem.clone(), cert_pem: cert.cert_pem.clone(), key_pem: cert.key_pem.clone() }
}

fn site_options(f: &Federation, name: &str, tls: ClientTls) -> flotilla_client::SiteOptions {
    let mut o = test_site(f.running.url(), name);
    o.tls = Some(tls);
    o.connect_patience = Duration::from_secs(2);
    o
}

/// A raw join over TLS with whatever identity (or none) the test wants to present.
async fn raw_join(f: &Federation, identity: Option<&Issued>, site: &str) -> Result<pb::JoinResponse, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&f.ca.cert_pem));
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
    }
    let channel = Endpoint::from_shared(f.running.url()).unwrap().tls_config(tls).unwrap().connect().await.map_err(|e| format!("connect: {e:?}"))?;
    FederationClient::new(channel)
        .join(pb::JoinRequest { site: site.into(), protocol_version: PROTOCOL_VERSION, num_rows: 10, columns: vec!["x1".into(), "y".into()] })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| flotilla_client::ClientError::rpc(format!("{:?}", s.code()), s).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_with_provisioned_certificates_federate_over_mutual_tls() {
    let f = federation_over_mtls(Policy { rounds: 2, min_clients: 2, ..Policy::default() }).await;
    assert!(f.running.url().starts_with("https://"));
    let token = CancellationToken::new();
    let mut sites = Vec::new();
    for (i, name) in ["north", "south"].into_iter().enumerate() {
        let cert = pki::issue_client(&f.ca, name, Validity::days(1)).unwrap();
        sites.push(tokio::spawn(run_site(site_options(&f, name, client_tls(&f.ca, &cert)), synthetic_table(name, 60, i * 60), token.clone())));
    }
    for s in sites {
        assert_eq!(s.await.unwrap().unwrap().rounds_trained, 2);
    }
    let outcome = f.running.stop(Duration::from_secs(1)).await.unwrap();
    assert_eq!(outcome.history.last().unwrap().clients, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_impostors_and_expired_certificates_are_refused() {
    let allowed = Some(["north".to_owned(), "south".to_owned()].into_iter().collect());
    let f = federation_over_mtls(Policy { rounds: 1, min_clients: 2, allowed_sites: allowed, ..Policy::default() }).await;

    // A good certificate joins.
    let north = pki::issue_client(&f.ca, "north", Validity::days(1)).unwrap();
    assert!(raw_join(&f, Some(&north), "north").await.is_ok());

    // No certificate at all.
    // Every try is refused; the alert that says why reaches the client on most tries (on
    // others the client's HTTP/2 layer reports only the closed connection).
    let mut errors = Vec::new();
    for _ in 0..5 {
        errors.push(raw_join(&f, None, "north").await.unwrap_err());
    }
    assert!(
        errors.iter().any(|e| e.contains("received fatal alert: CertificateRequired")),
        "a client without a certificate is refused in the handshake: {errors:?}"
    );

    // A certificate from another CA.
    let other_ca = pki::new_ca("other", Validity::days(1)).unwrap();
    let forged = pki::issue_client(&other_ca, "north", Validity::days(1)).unwrap();
    let mut errors = Vec::new();
    for _ in 0..5 {
        errors.push(raw_join(&f, Some(&forged), "north").await.unwrap_err());
    }
    assert!(errors.iter().any(|e| e.contains("received fatal alert: UnknownCA")), "a certificate of another CA is refused in the handshake: {errors:?}");

    // An expired certificate, and one not valid yet.
    let now = OffsetDateTime::now_utc();
    let expired = pki::issue_client(&f.ca, "north", Validity { not_before: now - TimeDelta::days(10), not_after: now - TimeDelta::days(1) }).unwrap();
    assert!(raw_join(&f, Some(&expired), "north").await.is_err());
    let early = pki::issue_client(&f.ca, "north", Validity { not_before: now + TimeDelta::days(1), not_after: now + TimeDelta::days(10) }).unwrap();
    assert!(raw_join(&f, Some(&early), "north").await.is_err());

    // A valid certificate claiming another site's name.
    let err = raw_join(&f, Some(&north), "south").await.unwrap_err();
    assert!(err.starts_with("PermissionDenied") && err.contains("`north`") && err.contains("`south`"), "{err}");

    // A valid certificate for a site that is not on the allow list.
    let west = pki::issue_client(&f.ca, "west", Validity::days(1)).unwrap();
    let err = raw_join(&f, Some(&west), "west").await.unwrap_err();
    assert!(err.starts_with("PermissionDenied") && err.contains("allow list"), "{err}");

    // The real client says why it was refused.
    let expired_site = run_site(site_options(&f, "north", client_tls(&f.ca, &expired)), synthetic_table("north", 20, 0), CancellationToken::new()).await;
    let err = expired_site.unwrap_err();
    assert!(matches!(err, ClientError::Certificate(_)) && err.to_string().contains("expired"), "{err}");
    // Refused at once (an alert is final), not retried for the reconnect patience.
    let mut o = site_options(&f, "north", client_tls(&f.ca, &forged));
    o.reconnect_patience = Duration::from_secs(120);
    let foreign =
        tokio::time::timeout(Duration::from_secs(30), run_site(o, synthetic_table("north", 20, 0), CancellationToken::new())).await.expect("not retried");
    let err = foreign.unwrap_err();
    assert!(matches!(err, ClientError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("UnknownCA"), "the message says why: {err}");
    let impostor = run_site(site_options(&f, "south", client_tls(&f.ca, &north)), synthetic_table("south", 20, 0), CancellationToken::new()).await;
    let err = impostor.unwrap_err().to_string();
    assert!(err.contains("refused site `south`") && err.contains("certificate is for site `north`"), "{err}");
    f.running.stop(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_keeps_its_key_at_home_joins_with_a_signed_request() {
    let f = federation_over_mtls(Policy { rounds: 1, min_clients: 1, ..Policy::default() }).await;
    // At the site: a key that never leaves, and a request.
    let request = pki::request("east").unwrap();
    assert!(!request.csr_pem.contains("PRIVATE KEY"), "the request carries no private key");
    // At the CA: only the request is seen.
    let (cert_pem, site) = pki::sign_request(&f.ca, &request.csr_pem, Validity::days(1)).unwrap();
    assert_eq!(site, "east");
    // Back at the site: its own key with the signed certificate.
    let tls = ClientTls { ca_pem: f.ca.cert_pem.clone(), cert_pem, key_pem: request.key_pem };
    let report = run_site(site_options(&f, "east", tls), synthetic_table("east", 60, 0), CancellationToken::new()).await.unwrap();
    assert_eq!(report.rounds_trained, 1);
    f.running.stop(Duration::from_secs(1)).await;
}
