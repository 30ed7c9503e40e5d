//! rustls configurations with mutual authentication: the core accepts only client certificates
//! signed by its CA; the edge verifies the core against the CA and the configured server name.

use crate::Error;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use std::path::Path;
use std::sync::Arc;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads all certificates of a PEM file.
pub fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let data = std::fs::read(path).map_err(|e| Error::Pem {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut &data[..]).collect();
    let certs = certs.map_err(|e| Error::Pem {
        what,
        path: path.to_path_buf(),
        reason: format!("not valid PEM: {e}"),
    })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            what,
            path: path.to_path_buf(),
            reason: "contains no certificate".into(),
        });
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let data = std::fs::read(path).map_err(|e| Error::Pem {
        what: "private key",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    rustls_pemfile::private_key(&mut &data[..])
        .map_err(|e| Error::Pem {
            what: "private key",
            path: path.to_path_buf(),
            reason: format!("not valid PEM: {e}"),
        })?
        .ok_or_else(|| Error::Pem {
            what: "private key",
            path: path.to_path_buf(),
            reason: "contains no private key".into(),
        })
}

fn roots(ca: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for c in load_certs("CA certificate", ca)? {
        roots.add(c).map_err(|e| Error::Pem {
            what: "CA certificate",
            path: ca.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// TLS 1.3 server config of a core: client certificates required and verified against `ca`.
pub fn server_config(ca: &Path, cert: &Path, key: &Path) -> Result<rustls::ServerConfig, Error> {
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
        .build()
        .map_err(|e| Error::Tls(format!("client verifier: {e}")))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs("certificate", cert)?, load_key(key)?)
        .map_err(|e| {
            Error::Tls(format!(
                "certificate {} / key {}: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    cfg.alpn_protocols = vec![strait_wire::ALPN.to_vec()];
    Ok(cfg)
}

/// TLS 1.3 client config of an edge: verifies the core against `ca`; presents `cert` when given.
pub fn client_config(
    ca: &Path,
    cert_key: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, Error> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots(ca)?);
    let mut cfg = match cert_key {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs("certificate", cert)?, load_key(key)?)
            .map_err(|e| {
                Error::Tls(format!(
                    "certificate {} / key {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![strait_wire::ALPN.to_vec()];
    Ok(cfg)
}

/// The common name (or first DNS name) of a peer's leaf certificate: the edge's identity.
pub fn peer_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if let Some(cn) = x.subject().iter_common_name().next() {
        if let Ok(s) = cn.as_str() {
            return Some(s.to_string());
        }
    }
    let san = x.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
        _ => None,
    })
}
