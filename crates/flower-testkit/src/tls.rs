//! Throwaway TLS certificates.

use std::path::PathBuf;

/// A throwaway CA and a server certificate for `localhost`, `127.0.0.1` and
/// `::1`, written as PEM files into a temporary directory (removed on drop).
#[derive(Debug)]
pub struct DevCertificates {
    dir: tempfile::TempDir,
}

impl DevCertificates {
    /// Generates the CA and the server certificate.
    pub fn generate() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "flower-rs test CA");
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");

        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
        for ip in [
            std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::Ipv6Addr::LOCALHOST.into(),
        ] {
            params.subject_alt_names.push(SanType::IpAddress(ip));
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &ca, &ca_key).expect("server cert");

        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write ca.pem");
        std::fs::write(dir.path().join("server.pem"), cert.pem()).expect("write server.pem");
        std::fs::write(dir.path().join("server.key"), key.serialize_pem())
            .expect("write server.key");
        Self { dir }
    }

    /// CA certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    /// Server certificate (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }
    /// Server private key (PEM).
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}
