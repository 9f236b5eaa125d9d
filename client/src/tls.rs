//! Mutual TLS for a site: the federation CA to trust, and the site's own certificate and key.

use std::path::Path;

use flotilla_common::pki::{PkiError, read_pem};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// A site's TLS material (PEM).
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The federation CA: the only issuer the site trusts for the coordinator.
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl ClientTls {
    /// Reads the three PEM files.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, PkiError> {
        Ok(Self { ca_pem: read_pem(ca)?, cert_pem: read_pem(cert)?, key_pem: read_pem(key)? })
    }

    /// tonic's configuration; the server name is checked against the URL's host.
    pub fn config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem)).identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

/// Selects rustls' ring provider once per process (a no-op if one is already installed).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
