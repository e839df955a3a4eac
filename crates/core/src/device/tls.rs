//! TLS towards a device: the CA to trust (else the webpki roots), a client
//! identity for mutual TLS, the name to verify, and `insecure_skip_verify`,
//! which accepts any device certificate but still checks that the device
//! holds the key of the certificate it presented.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::TargetError;
use crate::datastore::TlsSpec;

/// Adds the TLS settings of `tls` to `endpoint` (an `https://` endpoint of
/// the device at `address`).
pub(super) fn configure(
    endpoint: Endpoint,
    tls: &TlsSpec,
    address: &str,
) -> Result<Endpoint, TargetError> {
    let mut config = ClientTlsConfig::new();
    if !tls.cert_pem.is_empty() {
        config = config.identity(Identity::from_pem(&tls.cert_pem, tls.key_pem.expose()));
    }
    if !tls.server_name.is_empty() {
        config = config.domain_name(tls.server_name.clone());
    }
    let configured = if tls.insecure_skip_verify {
        // The verifier replaces the roots: `ca_pem`, if given, is not used.
        let verifier = AcceptAnyCertificate::new(address);
        endpoint.tls_config_with_verifier(config, Arc::new(verifier))
    } else if tls.ca_pem.is_empty() {
        endpoint.tls_config(config.with_webpki_roots())
    } else {
        endpoint.tls_config(config.ca_certificate(Certificate::from_pem(&tls.ca_pem)))
    };
    configured.map_err(|e| {
        // tonic's message says what is wrong (no certificate in the PEM, a key
        // that does not parse); it never quotes the key.
        let detail = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
        TargetError::new(
            tonic::Code::InvalidArgument,
            format!("tls settings: {detail}"),
        )
    })
}

/// `insecure_skip_verify`: accepts whatever certificate the device presents,
/// whoever issued it and whatever names it holds, and says so in the log at
/// every handshake. The handshake signatures are still verified, so the device
/// must hold the private key of the certificate it sent: this gives up
/// authentication of the device, not the encryption of the session.
#[derive(Debug)]
struct AcceptAnyCertificate {
    /// The device address, for the log line.
    address: String,
    /// Signature algorithms of the process's crypto provider.
    algorithms: WebPkiSupportedAlgorithms,
}

impl AcceptAnyCertificate {
    fn new(address: &str) -> Self {
        // The provider tonic itself uses: the process default, else ring.
        let algorithms = CryptoProvider::get_default().map_or_else(
            || rustls::crypto::ring::default_provider().signature_verification_algorithms,
            |p| p.signature_verification_algorithms,
        );
        Self {
            address: address.to_owned(),
            algorithms,
        }
    }
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        tracing::warn!(
            address = %self.address,
            server_name = %server_name.to_str(),
            "tls.insecure_skip_verify: accepting the device certificate without verifying it"
        );
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What went wrong, in the terms of the datastore's `tls` settings, when
/// `error`'s source chain holds a TLS failure; `None` otherwise.
pub(super) fn explain(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(describe(tls));
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            // io::Error's `source()` skips the error it wraps.
            if let Some(found) = io.get_ref().and_then(|inner| explain(inner)) {
                return Some(found);
            }
            // An alert that arrives after the handshake (TLS 1.3 refuses a
            // client certificate only then) reaches us through h2, which keeps
            // nothing of an I/O error but its kind and text.
            if io.kind() == std::io::ErrorKind::InvalidData {
                let text = io.to_string();
                if let Some(alert) = text.strip_prefix("received fatal alert: ") {
                    return Some(format!("TLS: {}: {text}", alert_meaning(alert)));
                }
            }
        }
        next = error.source();
    }
    None
}

fn describe(error: &rustls::Error) -> String {
    use rustls::{CertificateError, Error};
    let what = match error {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the device certificate is not signed by a CA in tls.ca_pem (without tls.ca_pem: by \
             one of the public webpki roots)"
        }
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            "the device certificate is not valid for the name checked (tls.server_name, else \
             the address host)"
        }
        Error::InvalidCertificate(_) => "the device certificate was refused",
        Error::AlertReceived(alert) => alert_meaning(&format!("{alert:?}")),
        _ => "the TLS handshake with the device failed",
    };
    format!("TLS: {what}: {error}")
}

/// What a fatal alert from the device means, by its name as rustls prints it.
fn alert_meaning(alert: &str) -> &'static str {
    match alert {
        "CertificateRequired" => {
            "the device requires a client certificate (tls.cert_pem and tls.key_pem)"
        }
        "BadCertificate"
        | "UnknownCA"
        | "UnsupportedCertificate"
        | "CertificateRevoked"
        | "CertificateExpired"
        | "CertificateUnknown"
        | "AccessDenied"
        | "DecryptError" => "the device refused the client certificate in tls.cert_pem",
        _ => "the device ended the TLS session",
    }
}
