//! TLS set-up for both legs: the certificate Custos presents to clients, and the trust
//! anchors it checks the upstream server against.
//!
//! Both legs use rustls with the `ring` provider, TLS 1.2 and 1.3 only. Verification of the
//! upstream is always on: a proxy that silently accepted any upstream certificate would
//! hand every user's password to whoever sits on the path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// ALPN protocol id for client-to-server XMPP over Direct TLS (XEP-0368).
pub const ALPN_XMPP_CLIENT: &[u8] = b"xmpp-client";

/// Why a TLS configuration could not be built. Always a local configuration problem.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{path}: cannot read certificate chain: {reason}")]
    Certificates { path: PathBuf, reason: String },
    #[error("{path}: no certificate found in PEM file")]
    NoCertificates { path: PathBuf },
    #[error("{path}: cannot read private key: {reason}")]
    PrivateKey { path: PathBuf, reason: String },
    #[error("certificate and key do not form a usable server identity: {0}")]
    Identity(rustls::Error),
    #[error("{path}: cannot read trust anchors: {reason}")]
    TrustAnchors { path: PathBuf, reason: String },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM chain, leaf first.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| TlsSetupError::Certificates {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::Certificates {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificates {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Builds the server-side configuration for a client listener.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let chain = load_certificates(cert)?;
    // The error text of the PEM parser never contains key material, only the section kind.
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsSetupError::PrivateKey {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Identity)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsSetupError::Identity)?;
    config.alpn_protocols = vec![ALPN_XMPP_CLIENT.to_vec()];
    Ok(Arc::new(config))
}

/// Builds the client-side configuration for the upstream leg: the system's trust anchors
/// plus any extra PEM file from the configuration (a private CA, a test CA).
pub fn upstream_config(
    extra_ca: Option<&Path>,
    direct_tls: bool,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    // Native roots may be partly unreadable on odd systems; whatever loads is used, and an
    // explicit `ca` is what deployments with a private CA rely on anyway.
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca {
        for cert in load_certificates(path)? {
            roots.add(cert).map_err(|e| TlsSetupError::TrustAnchors {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        }
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Identity)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if direct_tls {
        config.alpn_protocols = vec![ALPN_XMPP_CLIENT.to_vec()];
    }
    Ok(Arc::new(config))
}
