//! Connecting to netsyncd: plaintext, or TLS with an optional CA (system
//! roots otherwise), client certificate and server name.

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::{Client, Error};

/// TLS towards netsyncd. All PEM fields hold the PEM text, not a file name.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    /// CA bundle that signs netsyncd's certificate; `None`: the Mozilla roots
    /// (webpki-roots), as a public certificate would need.
    pub ca_pem: Option<String>,
    /// Client certificate, for mutual TLS; needs `key_pem`.
    pub cert_pem: Option<String>,
    /// The client certificate's key.
    pub key_pem: Option<String>,
    /// Name to verify netsyncd's certificate against (and sent as SNI);
    /// `None`: the host of the address.
    pub server_name: Option<String>,
}

/// Connects to netsyncd at `address` (`host:port`, or a URI with `http://`
/// or `https://`; a bare `host:port` gets `https://` when `tls` is given).
/// Fails at once if nothing answers there; once connected, the client
/// reconnects by itself after netsyncd restarts.
pub async fn connect(address: &str, tls: Option<&Tls>) -> Result<Client, Error> {
    let uri = if address.contains("://") {
        address.to_string()
    } else if tls.is_some() {
        format!("https://{address}")
    } else {
        format!("http://{address}")
    };
    let mut endpoint = Endpoint::from_shared(uri).map_err(|e| Error::InvalidAddress {
        address: address.into(),
        reason: e.to_string(),
    })?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls_config(tls)?)?;
    }
    Ok(Client::from_channel(endpoint.connect().await?))
}

fn tls_config(tls: &Tls) -> Result<ClientTlsConfig, Error> {
    let mut config = ClientTlsConfig::new();
    config = match &tls.ca_pem {
        Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
        None => config.with_webpki_roots(),
    };
    match (&tls.cert_pem, &tls.key_pem) {
        (Some(cert), Some(key)) => config = config.identity(Identity::from_pem(cert, key)),
        (None, None) => {}
        _ => {
            return Err(Error::Tls(
                "a client certificate needs its key, and a key its certificate".into(),
            ));
        }
    }
    if let Some(name) = &tls.server_name {
        config = config.domain_name(name.clone());
    }
    Ok(config)
}
