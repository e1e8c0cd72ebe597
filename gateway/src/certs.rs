//! Deployment PKI: creates the deployment CA and per-site certificates
//! (rcgen) and writes them as PEM files, private keys with mode 0600.
//!
//! A site's identity is its certificate's subjectAltName DNS name
//! `<site>.wanmig` (see [`crate::config::site_dns_name`]). Site certificates
//! carry both serverAuth and clientAuth usages because every gateway both
//! accepts and dials.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::config::{site_dns_name, validate_site_name};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating {what}: {source}")]
    Generate { what: String, source: rcgen::Error },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} already exists; pass --force to overwrite, or choose another --out directory", path.display())]
    Exists { path: PathBuf },
    #[error("{0}")]
    SiteName(String),
    #[error("{}: cannot use it as the deployment CA: {source}", path.display())]
    BadCa { path: PathBuf, source: rcgen::Error },
}

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct PemPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// File names inside a certificate directory.
pub fn ca_cert_file(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}
pub fn ca_key_file(dir: &Path) -> PathBuf {
    dir.join("ca.key")
}
pub fn site_cert_file(dir: &Path, site: &str) -> PathBuf {
    dir.join(format!("{site}.pem"))
}
pub fn site_key_file(dir: &Path, site: &str) -> PathBuf {
    dir.join(format!("{site}.key"))
}

fn gen_err(what: &str) -> impl FnOnce(rcgen::Error) -> CertError + '_ {
    move |source| CertError::Generate {
        what: what.to_string(),
        source,
    }
}

/// Creates a self-signed deployment CA called `name`.
pub fn generate_ca(name: &str) -> Result<PemPair, CertError> {
    let key = KeyPair::generate().map_err(gen_err("the CA key"))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(gen_err("the CA parameters"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, "wanmig deployment");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params
        .self_signed(&key)
        .map_err(gen_err("the CA certificate"))?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues the certificate of `site` (SAN `<site>.wanmig`) signed by `ca`.
pub fn issue_site(ca: &PemPair, site: &str) -> Result<PemPair, CertError> {
    issue_for_dns_name(ca, site, &site_dns_name(site))
}

/// Issues a certificate for an arbitrary DNS name (tests use this to build
/// certificates that name the wrong site).
pub fn issue_for_dns_name(
    ca: &PemPair,
    common_name: &str,
    dns_name: &str,
) -> Result<PemPair, CertError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(gen_err("the CA key (parsing)"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)
        .map_err(gen_err("the CA certificate (parsing)"))?;
    let key = KeyPair::generate().map_err(gen_err("the site key"))?;
    let mut params = CertificateParams::new(vec![dns_name.to_string()])
        .map_err(gen_err("the site certificate parameters"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(gen_err("the site certificate"))?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes `contents` to `path`; `private` files get mode 0600 from creation
/// on (never world-readable, even briefly).
pub fn write_file(
    path: &Path,
    contents: &str,
    private: bool,
    overwrite: bool,
) -> Result<(), CertError> {
    if !overwrite && path.exists() {
        return Err(CertError::Exists {
            path: path.to_path_buf(),
        });
    }
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if private {
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    if private {
        // An existing file keeps its old mode on open; force 0600.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    f.write_all(contents.as_bytes()).map_err(io)?;
    Ok(())
}

/// Creates `out/ca.{pem,key}` and `out/<site>.{pem,key}` for every site.
/// Returns the files written.
pub fn create_deployment(
    out: &Path,
    sites: &[String],
    overwrite: bool,
) -> Result<Vec<PathBuf>, CertError> {
    for s in sites {
        validate_site_name(s).map_err(CertError::SiteName)?;
    }
    std::fs::create_dir_all(out).map_err(|source| CertError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let ca = generate_ca("wanmig deployment CA")?;
    let mut written = Vec::new();
    write_file(&ca_cert_file(out), &ca.cert_pem, false, overwrite)?;
    written.push(ca_cert_file(out));
    write_file(&ca_key_file(out), &ca.key_pem, true, overwrite)?;
    written.push(ca_key_file(out));
    for s in sites {
        written.extend(write_site(out, &ca, s, overwrite)?);
    }
    Ok(written)
}

/// Issues a certificate for one more site from the CA already in `dir`.
pub fn add_site(dir: &Path, site: &str, overwrite: bool) -> Result<Vec<PathBuf>, CertError> {
    validate_site_name(site).map_err(CertError::SiteName)?;
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path).map_err(|source| CertError::Io { path, source })
    };
    let ca = PemPair {
        cert_pem: read(ca_cert_file(dir))?,
        key_pem: read(ca_key_file(dir))?,
    };
    // Parse once here so a damaged CA is reported against its file.
    KeyPair::from_pem(&ca.key_pem).map_err(|source| CertError::BadCa {
        path: ca_key_file(dir),
        source,
    })?;
    write_site(dir, &ca, site, overwrite)
}

fn write_site(
    dir: &Path,
    ca: &PemPair,
    site: &str,
    overwrite: bool,
) -> Result<Vec<PathBuf>, CertError> {
    let pair = issue_site(ca, site)?;
    let (c, k) = (site_cert_file(dir, site), site_key_file(dir, site));
    write_file(&c, &pair.cert_pem, false, overwrite)?;
    write_file(&k, &pair.key_pem, true, overwrite)?;
    Ok(vec![c, k])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn deployment_files_exist_and_keys_are_private() {
        let d = tempfile::tempdir().unwrap();
        let files =
            create_deployment(d.path(), &["site-a".into(), "site-b".into()], false).unwrap();
        assert_eq!(files.len(), 6);
        for f in &files {
            let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
            if f.extension().unwrap() == "key" {
                assert_eq!(mode, 0o600, "{}", f.display());
            } else {
                assert_ne!(mode & 0o044, 0, "{} should be readable", f.display());
            }
        }
        let names = crate::tls::cert_site_names(
            &crate::tls::load_certs(&site_cert_file(d.path(), "site-b")).unwrap()[0],
        )
        .unwrap();
        assert_eq!(names, vec!["site-b".to_string()]);
    }

    #[test]
    fn refuses_to_overwrite_without_force() {
        let d = tempfile::tempdir().unwrap();
        create_deployment(d.path(), &["site-a".into()], false).unwrap();
        let e = create_deployment(d.path(), &["site-a".into()], false).unwrap_err();
        assert!(matches!(e, CertError::Exists { .. }), "{e}");
        create_deployment(d.path(), &["site-a".into()], true).unwrap();
    }

    #[test]
    fn add_site_uses_the_existing_ca() {
        let d = tempfile::tempdir().unwrap();
        create_deployment(d.path(), &["site-a".into()], false).unwrap();
        add_site(d.path(), "site-c", false).unwrap();
        let roots = crate::tls::load_roots(&ca_cert_file(d.path())).unwrap();
        let cert = crate::tls::load_certs(&site_cert_file(d.path(), "site-c")).unwrap();
        crate::tls::verify_chain(&roots, &cert[0]).unwrap();
    }

    #[test]
    fn rejects_bad_site_names() {
        let d = tempfile::tempdir().unwrap();
        let e = create_deployment(d.path(), &["Bad_Name".into()], false).unwrap_err();
        assert!(matches!(e, CertError::SiteName(_)));
    }
}
