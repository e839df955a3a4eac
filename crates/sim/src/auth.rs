//! Credentials (gRPC metadata `username` and `password`, checked on every
//! gNMI call when configured) and the TLS identity the server presents.

use tonic::metadata::MetadataMap;

use crate::error::SimError;

/// The username and password a client must send.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Expected `username` metadata.
    pub username: String,
    /// Expected `password` metadata.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password never reaches a log line.
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// PEM-encoded certificate chain and private key for TLS.
#[derive(Clone)]
pub struct TlsIdentity {
    /// Certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Private key, PEM.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

/// The `username` a call carries, if any (also without configured
/// credentials: faults can target one user).
pub fn username(metadata: &MetadataMap) -> Option<String> {
    metadata
        .get("username")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Checks a call's credentials against `expected`; returns the caller's
/// username.
pub fn authenticate(
    expected: Option<&Credentials>,
    metadata: &MetadataMap,
) -> Result<Option<String>, SimError> {
    let user = username(metadata);
    if let Some(expected) = expected {
        let password = metadata.get("password").and_then(|v| v.to_str().ok());
        if user.as_deref() != Some(expected.username.as_str())
            || password != Some(expected.password.as_str())
        {
            tracing::debug!(username = ?user, "rejected gNMI call: bad credentials");
            return Err(SimError::Unauthenticated);
        }
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(pairs: &[(&'static str, &'static str)]) -> MetadataMap {
        let mut map = MetadataMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn checks_both_fields() {
        let expected = Credentials {
            username: "admin".into(),
            password: "secret".into(),
        };
        let good = metadata(&[("username", "admin"), ("password", "secret")]);
        assert_eq!(
            authenticate(Some(&expected), &good),
            Ok(Some("admin".into()))
        );
        for bad in [
            metadata(&[("username", "admin"), ("password", "wrong")]),
            metadata(&[("username", "admin")]),
            metadata(&[]),
        ] {
            assert_eq!(
                authenticate(Some(&expected), &bad),
                Err(SimError::Unauthenticated)
            );
        }
        assert_eq!(authenticate(None, &metadata(&[])), Ok(None));
        assert!(!format!("{expected:?}").contains("secret"));
    }
}
