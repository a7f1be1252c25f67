//! TLS for the HTTP listener: a certificate chain and private key in PEM files, served
//! with rustls, offering HTTP/2 and HTTP/1.1 by ALPN.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Where the listener's certificate and key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Reads both files and builds the acceptor, with errors naming the file at fault.
    pub fn acceptor(&self) -> Result<TlsAcceptor> {
        let certs = read_pem(&self.cert, "certificate")?;
        let certs = CertificateDer::pem_slice_iter(&certs)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("{}: not a PEM certificate chain: {e}", self.cert.display()))?;
        if certs.is_empty() {
            return Err(anyhow!(
                "{} holds no certificate (expected `-----BEGIN CERTIFICATE-----`)",
                self.cert.display()
            ));
        }
        let key = read_pem(&self.key, "private key")?;
        let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
            anyhow!(
                "{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {e}",
                self.key.display()
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("configuring TLS")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .with_context(|| {
                format!(
                    "the key {} does not fit the certificate {}",
                    self.key.display(),
                    self.cert.display()
                )
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the TLS {what} {}", path.display()))
}
