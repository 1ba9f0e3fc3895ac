//! TLS for plinth's listeners (rustls, ring): a certificate and key read from PEM files and
//! read again on demand (`plinth serve` does it on SIGHUP), so a renewed certificate takes
//! effect without dropping a connection. A reload that fails (a file half written, a key that
//! does not match) keeps the certificate in use and says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_rustls::rustls::{self, ServerConfig, crypto::CryptoProvider, sign::CertifiedKey};

/// A certificate chain and key from two PEM files, the TLS configuration built on them.
#[derive(Debug)]
pub struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl TlsFiles {
    /// Reads both files; an error names the file and what is wrong with it.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<TlsFiles>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ck = read(cert, key, &provider)?;
        Ok(Arc::new(TlsFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            current: RwLock::new(Arc::new(ck)),
        }))
    }

    /// Reads the files again. On error the certificate in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let ck = read(&self.cert, &self.key, &self.provider)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ck);
        Ok(())
    }

    /// The rustls server configuration: TLS 1.2 and 1.3, HTTP/1.1, no client certificates;
    /// every handshake takes the certificate current at that moment.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, String> {
        let mut c = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(c))
    }

    /// The certificate files, for messages.
    pub fn describe(&self) -> String {
        format!("{} and {}", self.cert.display(), self.key.display())
    }
}

impl rustls::server::ResolvesServerCert for TlsFiles {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn read(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate in it", cert.display()));
    }
    let k = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "{}: {e} (a PEM private key: PKCS#8, PKCS#1 or SEC1)",
            key.display()
        )
    })?;
    CertifiedKey::from_der(chain, k, provider)
        .map_err(|e| format!("{} with {}: {e}", cert.display(), key.display()))
}
