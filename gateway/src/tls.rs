//! Mutual TLS for the peering: loads PEM material, builds the rustls/quinn
//! client and server configs (TLS 1.3, ALPN `wanmig/1`, client certificates
//! required and chained to the deployment CA), and reads the site identity
//! out of a peer's certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::config::{site_dns_name, TlsPaths, SITE_DNS_SUFFIX};

/// The ALPN protocol id of gateway peering.
pub const ALPN: &[u8] = b"wanmig/1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {what}", path.display())]
    Pem { path: PathBuf, what: &'static str },
    #[error("{}: {what}: {source}", path.display())]
    PemBlock {
        path: PathBuf,
        what: &'static str,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: not a usable CA certificate: {source}", path.display())]
    Ca {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{}: certificate names {names:?}, but this gateway's site is '{site}' (expected SAN DNS name '{expected}'); issue it with `wanmig certs`", path.display())]
    WrongOwnName {
        path: PathBuf,
        site: String,
        expected: String,
        names: Vec<String>,
    },
    #[error("the private key {} does not belong to the certificate {}: give [tls] key the key issued with that certificate, or issue a new pair with `wanmig certs add-site --dir CERTS_DIR SITE --force`", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: not a usable private key: {source}", path.display())]
    UnusableKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("cannot parse certificate: {0}")]
    Parse(#[from] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("{0}")]
    PeerIdentity(&'static str),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("QUIC crypto configuration: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// This site's certificate chain and private key.
#[derive(Debug)]
pub struct Identity {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Loads the certificate chain and key named in the config.
    /// Fails, naming both files, when the key is not the certificate's.
    pub fn load(paths: &TlsPaths) -> Result<Self, TlsError> {
        let certs = load_certs(&paths.cert)?;
        let key = load_key(&paths.key)?;
        match CertifiedKey::from_der(certs.clone(), key.clone_key(), &provider()) {
            Ok(_) => Ok(Identity { certs, key }),
            Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch {
                cert: paths.cert.clone(),
                key: paths.key.clone(),
            }),
            Err(source) => Err(TlsError::UnusableKey {
                path: paths.key.clone(),
                source,
            }),
        }
    }

    /// Fails unless the leaf certificate names `site` (`<site>.wanmig`).
    pub fn check_site(&self, site: &str, path: &Path) -> Result<(), TlsError> {
        let names = cert_site_names(&self.certs[0])?;
        if names.iter().any(|n| n == site) {
            return Ok(());
        }
        Err(TlsError::WrongOwnName {
            path: path.to_path_buf(),
            site: site.to_string(),
            expected: site_dns_name(site),
            names,
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// All certificates in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::PemBlock {
            path: path.to_path_buf(),
            what: "not a PEM certificate file",
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "contains no CERTIFICATE block",
        });
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|source| TlsError::PemBlock {
        path: path.to_path_buf(),
        what: "no usable private key",
        source,
    })
}

/// The deployment CA(s) from a PEM file (a bundle may hold several).
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|source| TlsError::Ca {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(roots)
}

/// The site names (`x` of SAN DNS `x.wanmig`) a certificate carries.
pub fn cert_site_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, TlsError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert)?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                if let Some(site) = dns.strip_suffix(&format!(".{SITE_DNS_SUFFIX}")) {
                    out.push(site.to_string());
                }
            }
        }
    }
    Ok(out)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks that `cert` chains to `roots` as a client certificate.
pub fn verify_chain(roots: &RootCertStore, cert: &CertificateDer<'_>) -> Result<(), TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots.clone()), provider()).build()?;
    verifier.verify_client_cert(cert, &[], UnixTime::now())?;
    Ok(())
}

/// The QUIC server crypto: our certificate, client certificates required
/// and verified against the deployment CA.
pub fn server_crypto(
    identity: &Identity,
    roots: &RootCertStore,
) -> Result<Arc<QuicServerConfig>, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots.clone()), provider()).build()?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.certs.clone(), identity.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let q = QuicServerConfig::try_from(cfg)?;
    Ok(Arc::new(q))
}

/// The QUIC client crypto: verifies the server against the deployment CA
/// and the server name we dial (`<site>.wanmig`), presents our certificate.
pub fn client_crypto(
    identity: &Identity,
    roots: &RootCertStore,
) -> Result<Arc<QuicClientConfig>, TlsError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(identity.certs.clone(), identity.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let q = QuicClientConfig::try_from(cfg)?;
    Ok(Arc::new(q))
}

/// The site names in the certificate a connected peer presented.
pub fn peer_site_names(conn: &quinn::Connection) -> Result<Vec<String>, TlsError> {
    let identity = conn
        .peer_identity()
        .ok_or_else(|| TlsError::PeerIdentity("peer presented no certificate"))?;
    let certs = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TlsError::PeerIdentity("peer identity is not an X.509 chain"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| TlsError::PeerIdentity("peer presented an empty certificate chain"))?;
    cert_site_names(leaf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs;

    #[test]
    fn chain_check_rejects_a_foreign_ca() {
        let ca1 = certs::generate_ca("one").unwrap();
        let ca2 = certs::generate_ca("two").unwrap();
        let leaf = certs::issue_site(&ca2, "site-a").unwrap();
        let d = tempfile::tempdir().unwrap();
        let ca1_path = d.path().join("ca1.pem");
        std::fs::write(&ca1_path, &ca1.cert_pem).unwrap();
        let leaf_path = d.path().join("leaf.pem");
        std::fs::write(&leaf_path, &leaf.cert_pem).unwrap();
        let roots = load_roots(&ca1_path).unwrap();
        let cert = &load_certs(&leaf_path).unwrap()[0];
        assert!(verify_chain(&roots, cert).is_err());
        // A bundle with both CAs accepts it.
        std::fs::write(&ca1_path, format!("{}{}", ca1.cert_pem, ca2.cert_pem)).unwrap();
        let roots = load_roots(&ca1_path).unwrap();
        verify_chain(&roots, cert).unwrap();
    }

    #[test]
    fn own_name_check() {
        let ca = certs::generate_ca("one").unwrap();
        let d = tempfile::tempdir().unwrap();
        let leaf = certs::issue_site(&ca, "site-a").unwrap();
        let paths = TlsPaths {
            ca: d.path().join("ca.pem"),
            cert: d.path().join("a.pem"),
            key: d.path().join("a.key"),
        };
        std::fs::write(&paths.ca, &ca.cert_pem).unwrap();
        std::fs::write(&paths.cert, &leaf.cert_pem).unwrap();
        std::fs::write(&paths.key, &leaf.key_pem).unwrap();
        let id = Identity::load(&paths).unwrap();
        id.check_site("site-a", &paths.cert).unwrap();
        let e = id.check_site("site-b", &paths.cert).unwrap_err();
        assert!(e.to_string().contains("site-b.wanmig"), "{e}");
    }

    #[test]
    fn garbage_pem_is_an_error_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.pem");
        std::fs::write(&p, "hello").unwrap();
        assert!(load_certs(&p).is_err());
        assert!(load_key(&p).is_err());
        assert!(load_roots(&p).is_err());
    }
}
