//! TLS on the listener: the certificate files, loaded at start and reloaded
//! on request (the binary does on SIGHUP).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Why the certificate files cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {key} {}: {source}", path.display())]
    Read {
        /// The setting naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why reading failed.
        source: io::Error,
    },
    /// A file is not PEM.
    #[error("{key} {} is not valid PEM: {source}", path.display())]
    Pem {
        /// The setting naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What the parser found.
        source: pem::Error,
    },
    /// The certificate file has no `CERTIFICATE` block.
    #[error("server.tls.cert_file {} holds no certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file has no private key block.
    #[error(
        "server.tls.key_file {} holds no private key (PKCS#8, PKCS#1 or SEC1)",
        path.display()
    )]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key is not the certificate's: every handshake would fail.
    #[error(
        "server.tls.key_file {} does not match the certificate in server.tls.cert_file {}",
        key.display(),
        cert.display()
    )]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the certificate or key (bad encoding, unsupported key).
    #[error(
        "server.tls.cert_file {} with key_file {}: {source}",
        cert.display(),
        key.display()
    )]
    Invalid {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
}

/// Replaces the certificate new connections are served with; cheap to clone.
/// Open connections keep the one they were accepted with.
#[derive(Clone)]
pub struct TlsReloader(Arc<Inner>);

struct Inner {
    /// Reread on every reload, so renewed files need no restart.
    cert_file: PathBuf,
    /// Reread with `cert_file`; the two must match.
    key_file: PathBuf,
    /// Whether HTTP/2 is offered.
    http2: bool,
    /// What new connections handshake with; replaced whole, so sessions
    /// made under an old certificate are not resumed under a new one.
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl TlsReloader {
    /// Loads the files `config` names; `None` when TLS is off.
    pub(crate) fn load(config: &TlsConfig) -> Result<Option<Self>, TlsError> {
        let Some((cert, key)) = config.files() else {
            return Ok(None);
        };
        let current = server_config(cert, key, config.http2)?;
        Ok(Some(Self(Arc::new(Inner {
            cert_file: cert.to_owned(),
            key_file: key.to_owned(),
            http2: config.http2,
            current: RwLock::new(current),
        }))))
    }

    /// Rereads the certificate and key. New connections get them; if they do
    /// not load, the ones in use stay and the error is logged and returned.
    pub fn reload(&self) -> Result<(), TlsError> {
        let inner = &self.0;
        match server_config(&inner.cert_file, &inner.key_file, inner.http2) {
            Ok(config) => {
                *inner.current.write() = config;
                tracing::info!(cert_file = %inner.cert_file.display(), "TLS certificate reloaded.");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded; keeping the current one.");
                Err(e)
            }
        }
    }

    /// Handshakes with the current certificate.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.0.current.read().clone())
    }
}

/// A server configuration for the chain in `cert` and the key in `key`,
/// with `ring`, offering HTTP/2 before HTTP/1.1 when `http2`.
pub(crate) fn server_config(
    cert: &Path,
    key: &Path,
    http2: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    const CERT: &str = "server.tls.cert_file";
    const KEY: &str = "server.tls.key_file";
    let chain = CertificateDer::pem_slice_iter(&read(CERT, cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| pem_error(CERT, cert, source))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let private = match PrivateKeyDer::from_pem_slice(&read(KEY, key)?) {
        Ok(private) => private,
        Err(pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey {
                path: key.to_owned(),
            });
        }
        Err(source) => return Err(pem_error(KEY, key, source)),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| {
            builder
                .with_no_client_auth()
                .with_single_cert(chain, private)
        })
        .map_err(|source| match source {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                TlsError::Mismatch {
                    cert: cert.to_owned(),
                    key: key.to_owned(),
                }
            }
            source => TlsError::Invalid {
                cert: cert.to_owned(),
                key: key.to_owned(),
                source,
            },
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if http2 {
        config.alpn_protocols.insert(0, b"h2".to_vec());
    }
    Ok(Arc::new(config))
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

fn pem_error(key: &'static str, path: &Path, source: pem::Error) -> TlsError {
    TlsError::Pem {
        key,
        path: path.to_owned(),
        source,
    }
}
