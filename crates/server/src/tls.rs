//! TLS on the API: the server's certificate and key (`--tls-cert`,
//! `--tls-key`) and, for mutual TLS, the CA that client certificates must be
//! signed by (`--tls-client-ca`). Files are read and checked at start-up, so a
//! mistake stops netsyncd with a message naming the setting.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use netsync_core::datastore::Secret;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// Longest a client may take over its TLS handshake; one that opens a
/// connection and sends nothing is dropped then instead of holding it.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS flags of `netsyncd serve`.
#[derive(Debug, Default, Args)]
pub struct TlsArgs {
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "NETSYNC_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "NETSYNC_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: require client certificates signed by this CA bundle (PEM).
    #[arg(long, env = "NETSYNC_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
}

/// The `[tls]` table of the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
}

/// The API's TLS settings, read from their files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTls {
    /// Certificate chain, PEM.
    pub cert_pem: String,
    /// Private key, PEM; `Debug` does not print it.
    pub key_pem: Secret,
    /// CA bundle that signs client certificates, PEM; `None`: no client
    /// certificate is asked for.
    pub client_ca_pem: Option<String>,
    /// The files these were read from, re-read while netsyncd serves so
    /// that rotated certificates are picked up; `None`: never re-read.
    pub reload_from: Option<TlsPaths>,
}

impl ApiTls {
    /// Flags and environment (in `args`) over the file's `[tls]`: `None`
    /// for plaintext. Reads and checks the files.
    pub fn resolve(args: &TlsArgs, file: Option<&TlsFile>) -> Result<Option<Self>, TlsError> {
        let pick = |flag: &Option<PathBuf>, key: fn(&TlsFile) -> &Option<PathBuf>| {
            flag.clone().or_else(|| file.and_then(|f| key(f).clone()))
        };
        let cert = pick(&args.tls_cert, |f| &f.cert);
        let key = pick(&args.tls_key, |f| &f.key);
        let client_ca = pick(&args.tls_client_ca, |f| &f.client_ca);
        let (cert, key) = match (cert, key) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) if client_ca.is_none() => return Ok(None),
            (None, None) => return Err(TlsError::ClientCaWithoutTls),
            _ => return Err(TlsError::CertWithoutKey),
        };
        let tls = Self {
            cert_pem: read("--tls-cert", &cert)?,
            key_pem: Secret::new(read("--tls-key", &key)?),
            client_ca_pem: client_ca
                .as_ref()
                .map(|ca| read("--tls-client-ca", ca))
                .transpose()?,
            reload_from: Some(TlsPaths {
                cert: cert.clone(),
                key: key.clone(),
                client_ca,
            }),
        };
        // Built once here only to check the files: the same call at serve
        // time then cannot fail.
        server_config(&tls).map_err(|detail| TlsError::Refused {
            files: format!(
                "--tls-cert {}, --tls-key {}{}",
                cert.display(),
                key.display(),
                if tls.client_ca_pem.is_some() {
                    ", --tls-client-ca"
                } else {
                    ""
                }
            ),
            detail,
        })?;
        Ok(Some(tls))
    }
}

/// Where the TLS files are read from again when they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// Client CA bundle, for mutual TLS.
    pub client_ca: Option<PathBuf>,
}

/// The rustls server configuration of `tls`: HTTP/2 only (gRPC), client
/// certificates required when a client CA is set.
pub fn server_config(tls: &ApiTls) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    if chain.is_empty() {
        return Err("certificate: no certificate in the file".into());
    }
    let key =
        PrivateKeyDer::from_pem_slice(tls.key_pem.expose().as_bytes()).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key in the file".to_owned()
            }
            e => format!("private key: {e}"),
        })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &tls.client_ca_pem {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                let certificate = certificate.map_err(|e| format!("client CA: {e}"))?;
                roots
                    .add(certificate)
                    .map_err(|e| format!("client CA: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("client CA: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Why the API's TLS settings cannot be used; each message names the flags.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A client CA without a certificate and key to serve TLS with.
    #[error("--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS first")]
    ClientCaWithoutTls,
    /// A certificate without its key, or a key without its certificate.
    #[error("--tls-cert and --tls-key go together: give both to serve TLS, or neither")]
    CertWithoutKey,
    /// A file could not be read.
    #[error("{flag} {}: cannot read: {source}", path.display())]
    Unreadable {
        /// The flag that names the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The files were read, but do not make a TLS configuration (not PEM, a
    /// key that is not the certificate's, ...).
    #[error("{files}: {detail}")]
    Refused {
        /// The flags and files given.
        files: String,
        /// Why, with every cause.
        detail: String,
    },
}

fn read(flag: &'static str, path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Unreadable {
        flag,
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cert: Option<&Path>, key: Option<&Path>, ca: Option<&Path>) -> TlsArgs {
        TlsArgs {
            tls_cert: cert.map(Path::to_owned),
            tls_key: key.map(Path::to_owned),
            tls_client_ca: ca.map(Path::to_owned),
        }
    }

    fn error(args: &TlsArgs) -> String {
        ApiTls::resolve(args, None).unwrap_err().to_string()
    }

    #[test]
    fn files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let garbage = dir.path().join("garbage.pem");
        let missing = dir.path().join("missing.pem");
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        std::fs::write(&garbage, "not a key").unwrap();

        assert_eq!(ApiTls::resolve(&TlsArgs::default(), None).unwrap(), None);
        let tls = ApiTls::resolve(&args(Some(&cert), Some(&key), Some(&cert)), None)
            .unwrap()
            .unwrap();
        assert_eq!(tls.cert_pem, certified.cert.pem());
        assert!(tls.client_ca_pem.is_some());
        assert!(!format!("{tls:?}").contains("PRIVATE KEY"));

        let only_cert = error(&args(Some(&cert), None, None));
        assert!(only_cert.contains("--tls-key"), "{only_cert}");
        let only_key = error(&args(None, Some(&key), None));
        assert!(only_key.contains("--tls-cert"), "{only_key}");
        let only_ca = error(&args(None, None, Some(&cert)));
        assert!(only_ca.contains("--tls-client-ca"), "{only_ca}");
        let unreadable = error(&args(Some(&cert), Some(&missing), None));
        assert!(
            unreadable.contains("--tls-key") && unreadable.contains("missing.pem"),
            "{unreadable}"
        );
        let bad_key = error(&args(Some(&cert), Some(&garbage), None));
        assert!(
            bad_key.contains("garbage.pem") && bad_key.contains("private key"),
            "{bad_key}"
        );
    }
}
