//! Mutual TLS for the coordinator: its certificate and key, and the CA whose certificates
//! identify sites. With TLS on, every request must come with a site certificate.

use std::path::Path;

use flotilla_common::pki::{PkiError, read_pem};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// The coordinator's TLS material (PEM).
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    /// CA that signed the sites' certificates.
    pub client_ca_pem: String,
}

impl ServerTls {
    /// Reads the three PEM files.
    pub fn from_files(cert: &Path, key: &Path, client_ca: &Path) -> Result<Self, PkiError> {
        Ok(Self { cert_pem: read_pem(cert)?, key_pem: read_pem(key)?, client_ca_pem: read_pem(client_ca)? })
    }

    /// tonic's configuration: TLS 1.3/1.2 via rustls, client certificates required.
    pub fn config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem)).client_ca_root(Certificate::from_pem(&self.client_ca_pem))
    }
}

impl ServerTls {
    /// The rustls configuration the coordinator accepts connections with: its certificate,
    /// client certificates required and verified against the federation's CA, HTTP/2.
    pub fn rustls_config(&self) -> Result<std::sync::Arc<rustls::ServerConfig>, PkiError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        install_crypto_provider();
        let invalid = |what: &str, e: &dyn std::fmt::Display| PkiError::Invalid(format!("{what}: {e}"));
        let certs = |pem: &str, what: &str| -> Result<Vec<CertificateDer<'static>>, PkiError> {
            CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| invalid(what, &e))
        };
        let mut roots = rustls::RootCertStore::empty();
        for ca in certs(&self.client_ca_pem, "the client CA (--client-ca)")? {
            roots.add(ca).map_err(|e| invalid("the client CA (--client-ca)", &e))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(roots.into()).build().map_err(|e| invalid("the client CA (--client-ca)", &e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| invalid("the coordinator's key (--tls-key)", &e))?;
        let mut config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&self.cert_pem, "the coordinator's certificate (--tls-cert)")?, key)
            .map_err(|e| invalid("the coordinator's certificate and key", &e))?;
        config.alpn_protocols.push(b"h2".to_vec());
        Ok(std::sync::Arc::new(config))
    }
}

/// Selects rustls' ring provider once per process (a no-op if one is already installed).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
