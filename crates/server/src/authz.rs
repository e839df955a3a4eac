//! Authorization by client-certificate identity: the `[authorization]` table
//! names who may read and who may write, and a tower layer in front of the
//! API's services refuses every other call with PERMISSION_DENIED.
//!
//! An identity is a DNS name of the certificate's subject alternative names
//! or its subject common name; the certificate has already been verified
//! against the client CA by the TLS handshake (authorization needs mutual
//! TLS, which the configuration enforces). Readers may call the reading RPCs
//! (Get*, List*, WatchSync), health and reflection; writers may call
//! everything. A method not known to be reading needs a writer, so an RPC
//! added later is closed until it is classified.

use std::collections::BTreeSet;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use serde::Deserialize;
use tonic::Status;
use tonic::body::Body;

use crate::tls_serve::PeerInfo;
use tower_layer::Layer;
use tower_service::Service;

/// Services every reader may call in full.
const READING_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Who may call what, by certificate identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    /// Identities allowed the reading RPCs.
    #[serde(default)]
    pub readers: BTreeSet<String>,
    /// Identities allowed every RPC.
    #[serde(default)]
    pub writers: BTreeSet<String>,
}

/// The role a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Reader,
    Writer,
}

impl Role {
    /// What `path` (`/package.Service/Method`) needs.
    fn needed_for(path: &str) -> Self {
        let (service, method) = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .unwrap_or(("", ""));
        let reading = READING_SERVICES.contains(&service)
            || (service == "netsync.v1.NetSync"
                && (method.starts_with("Get")
                    || method.starts_with("List")
                    || method == "WatchSync"));
        if reading { Self::Reader } else { Self::Writer }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Reader => "reader",
            Self::Writer => "writer",
        }
    }
}

impl Authorization {
    /// Whether any of `identities` holds `role` (a writer holds both).
    fn allows(&self, identities: &[String], role: Role) -> bool {
        identities.iter().any(|identity| {
            self.writers.contains(identity)
                || (role == Role::Reader && self.readers.contains(identity))
        })
    }
}

/// The identities a client certificate (DER) carries: its DNS subject
/// alternative names, then its subject common names. Empty when it cannot
/// be parsed (then no role matches).
pub fn identities(der: &[u8]) -> Vec<String> {
    let Ok((_, certificate)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = certificate.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    for common_name in certificate.subject().iter_common_name() {
        if let Ok(text) = common_name.as_str() {
            names.push(text.to_owned());
        }
    }
    names
}

/// Applies an [`Authorization`] to a service; without one, every call
/// passes (netsyncd without an `[authorization]` table).
#[derive(Debug, Clone)]
pub struct AuthzLayer {
    authorization: Option<std::sync::Arc<Authorization>>,
}

impl AuthzLayer {
    /// A layer enforcing `authorization`, if any.
    pub fn new(authorization: Option<Authorization>) -> Self {
        Self {
            authorization: authorization.map(std::sync::Arc::new),
        }
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            authorization: self.authorization.clone(),
        }
    }
}

/// A service behind the authorization check.
#[derive(Debug, Clone)]
pub struct Authz<S> {
    inner: S,
    authorization: Option<std::sync::Arc<Authorization>>,
}

impl<S> Service<http::Request<Body>> for Authz<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let Some(authorization) = &self.authorization else {
            return Box::pin(self.inner.call(request));
        };
        let role = Role::needed_for(request.uri().path());
        let identities = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|peer| peer.certificates.clone())
            .and_then(|chain| chain.first().map(|leaf| identities(leaf)))
            .unwrap_or_default();
        if authorization.allows(&identities, role) {
            return Box::pin(self.inner.call(request));
        }
        let who = match identities.first() {
            Some(_) => format!("client {:?}", identities.join(", ")),
            None => "a client without a certificate identity".to_owned(),
        };
        tracing::warn!(method = %request.uri().path(), client = ?identities, role = role.name(), "call refused: missing role");
        let status = Status::permission_denied(format!(
            "{who} does not hold the {} role that {} needs ([authorization] {}s)",
            role.name(),
            request.uri().path().trim_start_matches('/'),
            role.name(),
        ));
        Box::pin(async move { Ok(status.into_http()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_rpcs_need_a_reader_and_everything_else_a_writer() {
        for path in [
            "/netsync.v1.NetSync/GetRunning",
            "/netsync.v1.NetSync/ListDatastores",
            "/netsync.v1.NetSync/WatchSync",
            "/netsync.v1.NetSync/GetDeviations",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(Role::needed_for(path), Role::Reader, "{path}");
        }
        for path in [
            "/netsync.v1.NetSync/SetIntent",
            "/netsync.v1.NetSync/CreateDatastore",
            "/netsync.v1.NetSync/DeleteDatastore",
            "/netsync.v1.NetSync/Resync",
            "/netsync.v1.NetSync/SomethingNew",
            "/other.Service/GetThing",
            "/",
            "",
        ] {
            assert_eq!(Role::needed_for(path), Role::Writer, "{path}");
        }
    }

    #[test]
    fn writers_may_read_and_readers_may_not_write() {
        let authorization = Authorization {
            readers: ["ro".to_owned()].into(),
            writers: ["rw".to_owned()].into(),
        };
        let ro = ["x".to_owned(), "ro".to_owned()];
        let rw = ["rw".to_owned()];
        assert!(authorization.allows(&ro, Role::Reader));
        assert!(!authorization.allows(&ro, Role::Writer));
        assert!(authorization.allows(&rw, Role::Reader));
        assert!(authorization.allows(&rw, Role::Writer));
        assert!(!authorization.allows(&[], Role::Reader));
    }

    #[test]
    fn identities_are_dns_names_then_common_name() {
        let ca = netsync_testkit::pki::Ca::new("CA");
        let leaf = ca.client_named("operator-cn", &["operator.example", "ops.example"]);
        let (_, pem) = x509_parser::pem::parse_x509_pem(leaf.cert_pem.as_bytes()).unwrap();
        let der = pem.contents;
        assert_eq!(
            identities(&der),
            ["operator.example", "ops.example", "operator-cn"]
        );
        assert!(identities(b"not a certificate").is_empty());
    }
}
