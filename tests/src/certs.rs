//! Test certificates: one CA per scenario and leaf certificates it signs.
//!
//! Clients trust only the test CA and verify the server name as usual, so a
//! scenario exercises real certificate validation on every TLS leg (client →
//! proxy, proxy → Prosody) instead of switching verification off.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Creating or writing a certificate failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen rejected the parameters (e.g. an invalid DNS name).
    #[error("generating certificate for {subject}: {source}")]
    Generate {
        /// CA name or leaf domain.
        subject: String,
        /// rcgen's reason.
        source: rcgen::Error,
    },
    /// The PEM file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// File being written.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// A self-signed test CA whose certificate is written to `<dir>/ca.crt`.
///
/// The CA key stays in memory: only leaf certificates signed through
/// [`TestCa::leaf`] are ever issued.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_path: PathBuf,
    cert_pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// A leaf certificate and its key, written as PEM files.
#[derive(Debug, Clone)]
pub struct LeafCert {
    /// The domain it was issued for (also its common name).
    pub domain: String,
    /// Certificate chain: the leaf followed by the CA certificate.
    pub chain_path: PathBuf,
    /// PKCS#8 private key.
    pub key_path: PathBuf,
    /// The chain's PEM text (same content as `chain_path`).
    pub chain_pem: String,
}

impl TestCa {
    /// Generates a CA (ECDSA P-256) and writes its certificate to
    /// `<dir>/ca.crt`.
    pub fn generate(dir: &Path) -> Result<Self, CertError> {
        let subject = "Custos Test CA".to_string();
        let gen = |source| CertError::Generate {
            subject: subject.clone(),
            source,
        };
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, subject.clone());
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate().map_err(gen)?;
        let cert = params.self_signed(&key).map_err(gen)?;
        let cert_pem = cert.pem();
        let cert_path = dir.join("ca.crt");
        write(&cert_path, &cert_pem)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_path,
            cert_pem,
        })
    }

    /// Path of the CA certificate (PEM): what clients and the proxy trust.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The CA certificate as PEM text.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a server certificate for `domain` with SANs `domain`,
    /// `localhost` and `127.0.0.1`, written to `<dir>/<domain>.crt` (leaf then
    /// CA) and `<dir>/<domain>.key`.
    pub fn leaf(&self, dir: &Path, domain: &str) -> Result<LeafCert, CertError> {
        self.leaf_with_names(dir, domain, &[domain, "localhost", "127.0.0.1"])
    }

    /// Issues a server certificate for `domain` whose subject alternative
    /// names are exactly `names` (an entry that parses as an IP address
    /// becomes an IP SAN).
    pub fn leaf_with_names(
        &self,
        dir: &Path,
        domain: &str,
        names: &[&str],
    ) -> Result<LeafCert, CertError> {
        let gen = |source| CertError::Generate {
            subject: domain.to_string(),
            source,
        };
        let sans: Vec<String> = names.iter().map(|n| (*n).to_string()).collect();
        let mut params = CertificateParams::new(sans).map_err(gen)?;
        params.distinguished_name.push(DnType::CommonName, domain);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // XMPP servers also act as TLS clients on s2s; harmless here and it
        // lets the same leaf serve a proxy's upstream client identity later.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(gen)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen)?;
        let chain_pem = format!("{}{}", cert.pem(), self.cert_pem);
        let chain_path = dir.join(format!("{domain}.crt"));
        let key_path = dir.join(format!("{domain}.key"));
        write(&chain_path, &chain_pem)?;
        write(&key_path, &key.serialize_pem())?;
        Ok(LeafCert {
            domain: domain.to_string(),
            chain_path,
            key_path,
            chain_pem,
        })
    }
}

fn write(path: &Path, contents: &str) -> Result<(), CertError> {
    fs::write(path, contents).map_err(|source| CertError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// A TLS client configuration that trusts only the test CA in `ca` (a PEM file) and
/// offers ALPN `xmpp-client` (XEP-0368).
pub fn client_tls_config(
    ca: &std::path::Path,
) -> Result<rustls::ClientConfig, Box<dyn std::error::Error + Send + Sync>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"xmpp-client".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestDir;
    use std::process::Command;

    #[test]
    fn leaf_verifies_against_ca_with_openssl() -> Result<(), Box<dyn std::error::Error>> {
        let dir = TestDir::new("certs")?;
        let ca = TestCa::generate(dir.path())?;
        let leaf = ca.leaf(dir.path(), "example.test")?;
        assert!(leaf.chain_pem.matches("BEGIN CERTIFICATE").count() == 2);
        let key = fs::read_to_string(&leaf.key_path)?;
        assert!(key.contains("BEGIN PRIVATE KEY"));

        // An independent verifier (installed by scripts/setup.sh): openssl
        // checks chain, name and IP.
        let out = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(ca.cert_path())
            .args([
                "-verify_hostname",
                "example.test",
                "-verify_ip",
                "127.0.0.1",
            ])
            .arg(&leaf.chain_path)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let wrong = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(ca.cert_path())
            .args(["-verify_hostname", "example.org"])
            .arg(&leaf.chain_path)
            .output()?;
        assert!(
            !wrong.status.success(),
            "leaf must not be valid for example.org"
        );
        Ok(())
    }

    #[test]
    fn leaf_from_another_ca_does_not_verify() -> Result<(), Box<dyn std::error::Error>> {
        let dir = TestDir::new("certs")?;
        let ca = TestCa::generate(dir.path())?;
        let other_dir = TestDir::new("certs")?;
        let other = TestCa::generate(other_dir.path())?;
        let leaf = other.leaf(other_dir.path(), "example.test")?;
        let out = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(ca.cert_path())
            .arg(&leaf.chain_path)
            .output()?;
        assert!(!out.status.success());
        Ok(())
    }
}
