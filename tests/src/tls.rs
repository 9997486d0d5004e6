//! Certificates for a TLS `redis-server`: a CA made for the test and a server
//! certificate it signed for `localhost` and `127.0.0.1`.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::{free_port, RedisServer};

/// PEM files in a directory of their own.
pub struct TlsFiles {
    /// The CA certificate clients must trust.
    pub ca: PathBuf,
    /// The server's certificate.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Makes a CA and a server certificate and writes them into `dir`.
    pub fn generate(dir: &Path) -> TlsFiles {
        std::fs::create_dir_all(dir).expect("certificate directory");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "redisaq test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server = server_params.signed_by(&server_key, &ca).unwrap();
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        std::fs::write(&files.ca, ca.pem()).unwrap();
        std::fs::write(&files.cert, server.pem()).unwrap();
        std::fs::write(&files.key, server_key.serialize_pem()).unwrap();
        files
    }

    /// [`TlsFiles::generate`] into `{name}-{process id}` in the system's temp directory.
    pub fn generate_temp(name: &str) -> TlsFiles {
        Self::generate(&std::env::temp_dir().join(format!("{name}-{}", std::process::id())))
    }

    /// A private `redis-server` serving TLS with these files on a free port, and the
    /// `rediss://localhost:PORT` URL that reaches it.
    pub fn start_server(&self) -> Result<(RedisServer, String), String> {
        let port = free_port();
        let args = self.server_args(port);
        let server = RedisServer::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        Ok((server, format!("rediss://localhost:{port}")))
    }

    /// `redis-server` arguments serving TLS on `port` with these files (clients need no
    /// certificate of their own).
    pub fn server_args(&self, port: u16) -> Vec<String> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path(&self.cert),
            "--tls-key-file".into(),
            path(&self.key),
            "--tls-ca-cert-file".into(),
            path(&self.ca),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    }
}
