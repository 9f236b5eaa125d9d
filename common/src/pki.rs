//! A federation's public-key infrastructure, so nobody needs openssl: a CA, the coordinator's
//! server certificate, one client certificate per site, and certificate signing requests for
//! sites that keep their private key at home. A site's identity is the common name (CN) of
//! its certificate.

use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

/// A certificate and, when we made the key, its private key (both PEM).
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A CSR and the private key that stays with the site.
#[derive(Debug, Clone)]
pub struct Request {
    pub csr_pem: String,
    pub key_pem: String,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clock skew) for `days` days.
    pub fn days(days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Self { not_before: now - Duration::hours(1), not_after: now + Duration::days(i64::from(days)) }
    }
}

/// Problems issuing or reading certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
}

/// A new self-signed federation CA.
pub fn new_ca(name: &str, validity: Validity) -> Result<Issued, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, format!("{name} federation CA"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

fn issuer(ca: &Issued) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let key = KeyPair::from_pem(&ca.key_pem)?;
    Ok(Issuer::from_ca_cert_pem(&ca.cert_pem, key)?)
}

/// The coordinator's server certificate for the given DNS names and IP addresses.
pub fn issue_server(ca: &Issued, dns: &[String], ips: &[IpAddr], validity: Validity) -> Result<Issued, PkiError> {
    let mut params = CertificateParams::new(dns.to_vec())?;
    params.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.distinguished_name.push(DnType::CommonName, "flotilla coordinator");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer(ca)?)?;
    Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

fn client_params(site: &str, validity: Validity) -> Result<CertificateParams, PkiError> {
    check_site_name(site)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, site);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    Ok(params)
}

/// A site's client certificate (and key), made by the CA holder.
pub fn issue_client(ca: &Issued, site: &str, validity: Validity) -> Result<Issued, PkiError> {
    let key = KeyPair::generate()?;
    let cert = client_params(site, validity)?.signed_by(&key, &issuer(ca)?)?;
    Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A site's key and certificate signing request: the key never leaves the site.
pub fn request(site: &str) -> Result<Request, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = client_params(site, Validity::days(1))?;
    // Validity and the issuer's key identifier are the CA's to set, not the request's.
    params.use_authority_key_identifier_extension = false;
    let csr = params.serialize_request(&key)?;
    Ok(Request { csr_pem: csr.pem()?, key_pem: key.serialize_pem() })
}

/// Signs a site's CSR; returns the certificate and the site name it certifies.
///
/// Only the CSR's public key and common name are used: whatever else it asks for (CA rights,
/// other key usages, alternative names) is ignored.
pub fn sign_request(ca: &Issued, csr_pem: &str, validity: Validity) -> Result<(String, String), PkiError> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
    let der = pem_contents(csr_pem, "CERTIFICATE REQUEST")?;
    let (_, parsed) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| PkiError::Invalid(format!("not a certificate request: {e}")))?;
    let site = parsed
        .certification_request_info
        .subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| PkiError::Invalid("the request names no site (no common name)".into()))?
        .to_owned();
    let signed = CertificateSigningRequestParams { params: client_params(&site, validity)?, public_key: csr.public_key }.signed_by(&issuer(ca)?)?;
    Ok((signed.pem(), site))
}

/// The site a certificate (DER) belongs to: its common name.
pub fn site_of_certificate(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::Invalid(format!("unreadable certificate: {e}")))?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| PkiError::Invalid("the certificate names no site (no common name)".into()))
}

/// Signs `message` with a private key (PEM): a site signs its secure-aggregation keys with
/// its certificate's key.
pub fn sign(key_pem: &str, message: &[u8]) -> Result<Vec<u8>, PkiError> {
    let key = KeyPair::from_pem(key_pem)?;
    rcgen::SigningKey::sign(&key, message).map_err(PkiError::from)
}

/// Checks that `signature` over `message` is site `site`'s: its certificate (DER) is issued
/// by the federation CA (PEM) and valid now, names `site`, and its key verifies the signature.
/// The reason names what failed.
pub fn verify_site_signature(ca_pem: &str, cert_der: &[u8], site: &str, message: &[u8], signature: &[u8]) -> Result<(), PkiError> {
    let ca_der = certificate_der(ca_pem)?;
    let (_, ca) = X509Certificate::from_der(&ca_der).map_err(|e| PkiError::Invalid(format!("the CA certificate: {e}")))?;
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|e| PkiError::Invalid(format!("the certificate of `{site}` is unreadable: {e}")))?;
    if cert.issuer() != ca.subject() || cert.verify_signature(Some(ca.public_key())).is_err() {
        return Err(PkiError::Invalid(format!("the certificate offered for `{site}` is not issued by the federation's CA")));
    }
    if !cert.validity().is_valid() {
        return Err(PkiError::Invalid(format!("the certificate of `{site}` is expired or not yet valid")));
    }
    let named = site_of_certificate(cert_der)?;
    if named != site {
        return Err(PkiError::Invalid(format!("the certificate offered for `{site}` names `{named}`")));
    }
    let spki = cert.public_key();
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|o| o.to_id_string());
    let algorithm: &dyn ring::signature::VerificationAlgorithm = match (spki.algorithm.algorithm.to_id_string().as_str(), curve.as_deref()) {
        ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7")) => &ring::signature::ECDSA_P256_SHA256_ASN1,
        ("1.2.840.10045.2.1", Some("1.3.132.0.34")) => &ring::signature::ECDSA_P384_SHA384_ASN1,
        ("1.3.101.112", _) => &ring::signature::ED25519,
        (other, _) => return Err(PkiError::Invalid(format!("the key of `{site}` is of a type signed secure aggregation does not support ({other})"))),
    };
    ring::signature::UnparsedPublicKey::new(algorithm, spki.subject_public_key.data.as_ref())
        .verify(message, signature)
        .map_err(|_| PkiError::Invalid(format!("the signature of `{site}` does not verify with its certificate's key")))
}

/// Checks that a certificate (PEM) is valid now, so a site with an expired or not-yet-valid
/// certificate learns why before the coordinator refuses it.
pub fn check_validity(cert_pem: &str) -> Result<(), PkiError> {
    let der = certificate_der(cert_pem)?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| PkiError::Invalid(format!("unreadable certificate: {e}")))?;
    let v = cert.validity();
    let (from, to) = (v.not_before.to_datetime(), v.not_after.to_datetime());
    let now = OffsetDateTime::now_utc();
    if now < from {
        return Err(PkiError::Invalid(format!("the certificate is not valid yet: valid from {from} to {to}, now is {now}")));
    }
    if now > to {
        return Err(PkiError::Invalid(format!("the certificate expired: valid from {from} to {to}, now is {now}")));
    }
    Ok(())
}

/// Site names become certificate names and file names: keep them printable.
pub fn check_site_name(site: &str) -> Result<(), PkiError> {
    if site.is_empty() || site.len() > 64 || site.chars().any(|c| c.is_control() || matches!(c, '/' | '\\' | '#')) {
        return Err(PkiError::Invalid(format!("`{site}` is not a usable site name (1-64 printable characters, no / \\ #)")));
    }
    Ok(())
}

fn pem_contents(pem_text: &str, label: &str) -> Result<Vec<u8>, PkiError> {
    pem::parse_many(pem_text)
        .map_err(|e| PkiError::Invalid(format!("not PEM: {e}")))?
        .into_iter()
        .find(|p| p.tag() == label)
        .map(|p| p.into_contents())
        .ok_or_else(|| PkiError::Invalid(format!("no {label} in the PEM text")))
}

/// The DER of the first certificate in a PEM text.
pub fn certificate_der(pem_text: &str) -> Result<Vec<u8>, PkiError> {
    pem_contents(pem_text, "CERTIFICATE")
}

/// Writes a PEM file; private keys get mode 0600 (owner read/write only).
pub fn write_pem(path: &Path, text: &str, private: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io { path: path.to_owned(), source };
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mode = if private { 0o600 } else { 0o644 };
        let _ = std::fs::remove_file(path);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        Ok(())
    }
    #[cfg(not(unix))]
    {
        let _ = private;
        std::fs::write(path, text).map_err(io)
    }
}

/// Reads a PEM file with a clear error.
pub fn read_pem(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io { path: path.to_owned(), source })
}

/// The files `certs init` writes into a directory.
pub fn init_dir(dir: &Path, sites: &[String], dns: &[String], ips: &[IpAddr], days: u32) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io { path: dir.to_owned(), source })?;
    let validity = Validity::days(days);
    let ca = new_ca("flotilla", validity)?;
    write_pem(&dir.join("ca.pem"), &ca.cert_pem, false)?;
    write_pem(&dir.join("ca.key"), &ca.key_pem, true)?;
    let server = issue_server(&ca, dns, ips, validity)?;
    write_pem(&dir.join("coordinator.pem"), &server.cert_pem, false)?;
    write_pem(&dir.join("coordinator.key"), &server.key_pem, true)?;
    for site in sites {
        let c = issue_client(&ca, site, validity)?;
        write_pem(&dir.join(format!("{site}.pem")), &c.cert_pem, false)?;
        write_pem(&dir.join(format!("{site}.key")), &c.key_pem, true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der_of(pem_text: &str) -> Vec<u8> {
        pem_contents(pem_text, "CERTIFICATE").unwrap()
    }

    #[test]
    fn client_certificates_carry_the_site_name() {
        let ca = new_ca("test", Validity::days(1)).unwrap();
        let c = issue_client(&ca, "VA Long Beach", Validity::days(1)).unwrap();
        assert_eq!(site_of_certificate(&der_of(&c.cert_pem)).unwrap(), "VA Long Beach");
    }

    #[test]
    fn a_signed_request_certifies_the_requested_site_and_nothing_more() {
        let ca = new_ca("test", Validity::days(1)).unwrap();
        let req = request("Hungary").unwrap();
        let (cert, site) = sign_request(&ca, &req.csr_pem, Validity::days(30)).unwrap();
        assert_eq!(site, "Hungary");
        assert_eq!(site_of_certificate(&der_of(&cert)).unwrap(), "Hungary");
        assert!(!cert.contains("PRIVATE KEY"));
        let der = der_of(&cert);
        let (_, parsed) = X509Certificate::from_der(&der).unwrap();
        assert!(!parsed.is_ca());
        assert!(sign_request(&ca, "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", Validity::days(1)).is_err());
    }

    #[test]
    fn bad_site_names_are_refused() {
        assert!(check_site_name("a/b").is_err());
        assert!(check_site_name("").is_err());
        assert!(check_site_name("Cleveland").is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn private_keys_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        init_dir(dir.path(), &["a".into()], &["localhost".into()], &["127.0.0.1".parse().unwrap()], 1).unwrap();
        for (f, mode) in [("ca.key", 0o600), ("coordinator.key", 0o600), ("a.key", 0o600), ("ca.pem", 0o644), ("a.pem", 0o644)] {
            let m = std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(m, mode, "{f}");
        }
    }
}
