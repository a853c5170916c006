//! Certificates made for a test: a CA, a server certificate for 127.0.0.1 and localhost signed
//! by it, and an unrelated CA to prove that a mismatched CA is refused.

use std::path::PathBuf;

use anyhow::Result;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// PEM files in a temporary directory.
pub struct TlsFiles {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

fn certificate_authority(name: &str) -> Result<(rcgen::Certificate, KeyPair)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert, key))
}

impl TlsFiles {
    pub fn generate() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("ferry-tls-").tempdir()?;
        let (ca, ca_key) = certificate_authority("Ferry test CA")?;
        let (other, _) = certificate_authority("Some other CA")?;
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        let key = KeyPair::generate()?;
        let server = params.signed_by(&key, &ca, &ca_key)?;
        let write = |name: &str, pem: String| -> Result<PathBuf> {
            let path = dir.path().join(name);
            std::fs::write(&path, pem)?;
            Ok(path)
        };
        Ok(Self {
            ca: write("ca.pem", ca.pem())?,
            other_ca: write("other-ca.pem", other.pem())?,
            server_cert: write("server.pem", server.pem())?,
            server_key: write("server.key", key.serialize_pem())?,
            _dir: dir,
        })
    }
}
