//! Mutual TLS for the coordinator: its certificate and key, and the CA whose certificates
//! identify sites. With TLS on, every request must come with a site certificate.

use std::path::Path;

use flotilla_common::pki::{read_pem, PkiError};
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
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.client_ca_pem))
    }
}

/// Selects rustls' ring provider once per process (a no-op if one is already installed).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
