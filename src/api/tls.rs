//! TLS, and optionally mutual TLS, on the gRPC listener.

use std::{fmt, path::PathBuf, time::Duration};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// A client that connects and never finishes its handshake would otherwise
/// hold its socket and task for as long as it likes.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A PEM file as read at start-up. The path is kept to name the file when
/// its contents are refused.
#[derive(Clone)]
pub struct PemFile {
    pub path: PathBuf,
    pub pem: Vec<u8>,
}

// By hand: the bytes may be a private key, and options get logged.
impl fmt::Debug for PemFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The gRPC listener's certificate and key, and, for mutual TLS, the CAs
/// whose client certificates it accepts.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The certificate chain, leaf first.
    pub cert: PemFile,
    pub key: PemFile,
    /// When set, a client without a certificate signed by one of these is
    /// refused during the handshake.
    pub client_ca: Option<PemFile>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: not PEM: {source}", path.display())]
    NotPem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: no PEM certificate in it", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoPrivateKey { path: PathBuf },
    #[error("the certificate {} and the key {} are unusable together: {reason}", cert.display(), key.display())]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("{}: unusable as client CA certificates: {reason}", path.display())]
    ClientCa { path: PathBuf, reason: String },
}

impl TlsSettings {
    /// Checks every file and that together they make a server TLS
    /// configuration, so that a bad file stops the daemon before it opens
    /// anything else.
    pub fn check(&self) -> Result<(), TlsError> {
        self.apply(Server::builder()).map(drop)
    }

    /// `server` serving TLS only.
    pub(super) fn apply(&self, server: Server) -> Result<Server, TlsError> {
        // tonic parses the PEM itself but its errors do not say which file
        // was wrong; these checks do.
        certificates(&self.cert)?;
        if let Err(err) = PrivateKeyDer::from_pem_slice(&self.key.pem) {
            return Err(match err {
                rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
                    path: self.key.path.clone(),
                },
                source => TlsError::NotPem {
                    path: self.key.path.clone(),
                    source,
                },
            });
        }
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert.pem, &self.key.pem))
            .timeout(HANDSHAKE_TIMEOUT);
        // Twice when there is a client CA, to tell which file is at fault
        // (a key that is not the certificate's, a CA that is no certificate).
        let server = server
            .tls_config(config.clone())
            .map_err(|err| TlsError::Identity {
                cert: self.cert.path.clone(),
                key: self.key.path.clone(),
                reason: error_chain(&err),
            })?;
        let Some(ca) = &self.client_ca else {
            return Ok(server);
        };
        certificates(ca)?;
        server
            .tls_config(config.client_ca_root(Certificate::from_pem(&ca.pem)))
            .map_err(|err| TlsError::ClientCa {
                path: ca.path.clone(),
                reason: error_chain(&err),
            })
    }
}

/// Checks that `file` holds at least one certificate, all of them PEM.
fn certificates(file: &PemFile) -> Result<(), TlsError> {
    let mut found = false;
    for cert in CertificateDer::pem_slice_iter(&file.pem) {
        cert.map_err(|source| TlsError::NotPem {
            path: file.path.clone(),
            source,
        })?;
        found = true;
    }
    if found {
        Ok(())
    } else {
        Err(TlsError::NoCertificate {
            path: file.path.clone(),
        })
    }
}

/// tonic's transport error says only "transport error"; the reason is in
/// its sources.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut reason = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    reason
}

/// Whether serving plaintext on `addr` exposes API keys and tool arguments
/// to a network beyond this host.
pub(super) fn exposed_in_clear(addr: std::net::IpAddr, tls: bool) -> bool {
    !tls && !addr.to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::exposed_in_clear;

    #[test]
    fn only_plaintext_beyond_loopback_is_exposed() {
        for addr in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            let addr: IpAddr = addr.parse().unwrap();
            assert!(!exposed_in_clear(addr, false), "{addr}");
        }
        for addr in [
            "0.0.0.0",
            "::",
            "10.0.0.1",
            "192.168.1.1",
            "::ffff:10.0.0.1",
        ] {
            let addr: IpAddr = addr.parse().unwrap();
            assert!(exposed_in_clear(addr, false), "{addr}");
            assert!(!exposed_in_clear(addr, true), "{addr}");
        }
    }
}
