//! The server's error type and the one place that decides which gRPC code a
//! failure becomes, and which `google.rpc.Status` details it carries: a
//! `BadRequest` for INVALID_ARGUMENT, a `ResourceInfo` for NOT_FOUND and
//! ALREADY_EXISTS, an `ErrorInfo` for a cut watch and a revision out of
//! range. The message text is the same with or without them: grpcurl users
//! read it, clients read the details instead of parsing it.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `domain` of every `ErrorInfo` netsyncd sends.
pub const DOMAIN: &str = "netsync.dev";

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client sent something invalid; `field` names it as the API spells it.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// Dotted field path, e.g. `datastore.target.address`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The named thing does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// What kind of thing, e.g. "datastore".
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A thing of that name exists already.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// What kind of thing.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A wait did not finish within the caller's deadline.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A revision of a datastore that cannot be served (OUT_OF_RANGE with an
    /// `ErrorInfo`): compacted away, or not reached yet.
    #[error("{message}")]
    Revision {
        /// Compacted or not yet.
        reason: RevisionReason,
        /// The datastore.
        datastore: String,
        /// The revision asked for.
        revision: u64,
        /// The oldest kept revision (not kept) or the latest (not yet), when known.
        bound: Option<u64>,
        /// The text of the status, as the client sees it.
        message: String,
    },
    /// A limit of this server is reached; the message names the setting.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The call cannot be served in the thing's current state (e.g. a
    /// datastore that could not be loaded at start); the message says why.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Replica mode: another replica syncs the datastore, or this one no
    /// longer does (UNAVAILABLE: ask the owner, or retry); the message names
    /// the owner when known.
    #[error("{0}")]
    NotOwner(String),
    /// The capability belongs to a later part of netsync that this build lacks.
    #[error("{0}")]
    Unimplemented(&'static str),
    /// The store failed. The detail is logged, never sent to the client.
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),
    /// Data read back from the store does not decode. Logged, never sent.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// A bug (a task panicked). Logged, never sent.
    #[error("internal: {0}")]
    Internal(String),
    /// The store cannot write now (a full disk, an I/O error); nothing of the
    /// request was written. The writer recovers by itself; the client may
    /// retry. The reason is logged, never sent.
    #[error("{0}")]
    StorageUnavailable(String),
    /// A stored part of a datastore cannot be used. Unlike [`Error::Corrupt`]
    /// it says which part, so a datastore that cannot be loaded can report it
    /// in its status: `what` is safe to show to clients (no SQL, no bytes).
    #[error("corrupt stored data of datastore {datastore:?}: {what}: {detail}")]
    Damaged {
        /// The datastore.
        datastore: String,
        /// Which part, in words an operator can act on, e.g. `revision 7 of
        /// the change log is damaged`.
        what: String,
        /// The decoder's own words, for the log only.
        detail: String,
    },
}

impl Error {
    /// An INVALID_ARGUMENT error naming `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why a revision cannot be served: the `reason` of its `ErrorInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevisionReason {
    /// Older than the oldest revision the log keeps.
    NotKept,
    /// Newer than the latest revision.
    NotYet,
}

impl RevisionReason {
    /// The stable word sent as `ErrorInfo.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotKept => "REVISION_NOT_KEPT",
            Self::NotYet => "REVISION_NOT_YET",
        }
    }

    /// The metadata key naming the bound: the oldest kept revision, or the latest.
    fn bound_key(self) -> &'static str {
        match self {
            Self::NotKept => "oldest_kept",
            Self::NotYet => "latest",
        }
    }
}

/// Why a WatchSync was cut: the `reason` of its `ErrorInfo`, and its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    /// The ring of live events lapped the watcher.
    WatcherLagged,
    /// The watcher owed its client more than `max_watcher_bytes`.
    WatcherOverBudget,
    /// All watchers together hold `max_watch_bytes_total`; this one waited longest.
    WatchMemoryFull,
    /// The datastore's sync stopped (deleted, or netsyncd stopping).
    SyncStopped,
    /// netsyncd's shutdown started.
    ShuttingDown,
}

impl CutReason {
    /// The stable word sent as `ErrorInfo.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WatcherLagged => "WATCHER_LAGGED",
            Self::WatcherOverBudget => "WATCHER_OVER_BUDGET",
            Self::WatchMemoryFull => "WATCH_MEMORY_FULL",
            Self::SyncStopped => "SYNC_STOPPED",
            Self::ShuttingDown => "SHUTTING_DOWN",
        }
    }

    /// RESOURCE_EXHAUSTED when the watcher was too slow, UNAVAILABLE when the
    /// server went away: both are resumed the same way.
    pub fn code(self) -> Code {
        match self {
            Self::WatcherLagged | Self::WatcherOverBudget | Self::WatchMemoryFull => {
                Code::ResourceExhausted
            }
            Self::SyncStopped | Self::ShuttingDown => Code::Unavailable,
        }
    }
}

/// The status that ends a WatchSync of `datastore` which the client resumes
/// with `from_revision`; `message` already names that revision.
pub fn watch_cut(
    reason: CutReason,
    datastore: &str,
    from_revision: u64,
    message: String,
) -> Status {
    let metadata = HashMap::from([
        ("datastore".to_string(), datastore.to_string()),
        ("from_revision".to_string(), from_revision.to_string()),
    ]);
    Status::with_error_details(
        reason.code(),
        message,
        ErrorDetails::with_error_info(reason.as_str(), DOMAIN, metadata),
    )
}

/// The API's name of a kind of thing, as `ResourceInfo.resource_type`.
fn resource_type(kind: &str) -> String {
    match kind {
        "datastore" => "netsync.v1.Datastore".to_string(),
        "intent" => "netsync.v1.Intent".to_string(),
        other => other.to_string(),
    }
}

/// A NOT_FOUND or ALREADY_EXISTS status naming the thing in a `ResourceInfo`
/// (its description is the message; no owner: netsync has none to tell).
fn resource_status(code: Code, kind: &str, name: &str, message: String) -> Status {
    let details = ErrorDetails::with_resource_info(resource_type(kind), name, "", &message);
    Status::with_error_details(code, message, details)
}

/// The status of a revision that cannot be served.
fn revision_status(
    reason: RevisionReason,
    datastore: String,
    revision: u64,
    bound: Option<u64>,
    message: String,
) -> Status {
    let mut metadata = HashMap::from([
        ("datastore".to_string(), datastore),
        ("revision".to_string(), revision.to_string()),
    ]);
    if let Some(bound) = bound {
        metadata.insert(reason.bound_key().to_string(), bound.to_string());
    }
    Status::with_error_details(
        Code::OutOfRange,
        message,
        ErrorDetails::with_error_info(reason.as_str(), DOMAIN, metadata),
    )
}

impl From<netsync_core::datastore::FieldError> for Error {
    fn from(e: netsync_core::datastore::FieldError) -> Self {
        Self::InvalidArgument {
            field: e.field,
            message: e.message,
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidArgument {
                ref field,
                ref message,
            } => {
                let details = ErrorDetails::with_bad_request_violation(field, message);
                Status::with_error_details(Code::InvalidArgument, error.to_string(), details)
            }
            Error::NotFound { kind, ref name } => {
                resource_status(Code::NotFound, kind, name, error.to_string())
            }
            Error::AlreadyExists { kind, ref name } => {
                resource_status(Code::AlreadyExists, kind, name, error.to_string())
            }
            Error::Unimplemented(what) => Status::unimplemented(what),
            Error::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            Error::Revision {
                reason,
                datastore,
                revision,
                bound,
                message,
            } => revision_status(reason, datastore, revision, bound, message),
            Error::ResourceExhausted(m) => Status::resource_exhausted(m),
            Error::StorageUnavailable(_) => {
                tracing::warn!(%error, "a request could not be stored");
                Status::unavailable(
                    "netsyncd cannot write to its database at the moment; nothing was changed, \
                     try again",
                )
            }
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::NotOwner(m) => Status::unavailable(m),
            Error::Store(_) | Error::Corrupt(_) | Error::Internal(_) | Error::Damaged { .. } => {
                tracing::error!(%error, "internal error");
                Status::internal("internal error; the server log has the details")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_argument_names_its_field_in_a_bad_request() {
        let status = Status::from(Error::invalid("datastore.target.address", "is empty"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "datastore.target.address: is empty");
        let bad = status.get_details_bad_request().expect("a BadRequest");
        assert_eq!(bad.field_violations.len(), 1);
        assert_eq!(bad.field_violations[0].field, "datastore.target.address");
        assert_eq!(bad.field_violations[0].description, "is empty");
    }

    #[test]
    fn not_found_and_already_exists_name_the_resource() {
        let status = Status::from(Error::NotFound {
            kind: "datastore",
            name: "leaf1".into(),
        });
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), r#"datastore "leaf1" not found"#);
        let info = status.get_details_resource_info().expect("a ResourceInfo");
        assert_eq!(info.resource_type, "netsync.v1.Datastore");
        assert_eq!(info.resource_name, "leaf1");
        assert_eq!(info.description, status.message());

        let status = Status::from(Error::AlreadyExists {
            kind: "intent",
            name: "ntp".into(),
        });
        assert_eq!(status.code(), Code::AlreadyExists);
        assert_eq!(status.message(), r#"intent "ntp" already exists"#);
        let info = status.get_details_resource_info().expect("a ResourceInfo");
        assert_eq!(info.resource_type, "netsync.v1.Intent");
        assert_eq!(info.resource_name, "ntp");
    }

    #[test]
    fn a_revision_out_of_range_says_why_and_the_bound_when_known() {
        let status = Status::from(Error::Revision {
            reason: RevisionReason::NotKept,
            datastore: "leaf1".into(),
            revision: 3,
            bound: Some(10),
            message: "revision 3 is gone".into(),
        });
        assert_eq!(status.code(), Code::OutOfRange);
        assert_eq!(status.message(), "revision 3 is gone");
        let info = status.get_details_error_info().expect("an ErrorInfo");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("REVISION_NOT_KEPT", DOMAIN)
        );
        assert_eq!(info.metadata["datastore"], "leaf1");
        assert_eq!(info.metadata["revision"], "3");
        assert_eq!(info.metadata["oldest_kept"], "10");

        let status = Status::from(Error::Revision {
            reason: RevisionReason::NotYet,
            datastore: "leaf1".into(),
            revision: 30,
            bound: Some(12),
            message: "not yet".into(),
        });
        let info = status.get_details_error_info().expect("an ErrorInfo");
        assert_eq!(info.reason, "REVISION_NOT_YET");
        assert_eq!(info.metadata["latest"], "12");
        assert!(!info.metadata.contains_key("oldest_kept"));

        let status = Status::from(Error::Revision {
            reason: RevisionReason::NotKept,
            datastore: "leaf1".into(),
            revision: 3,
            bound: None,
            message: "gone".into(),
        });
        let info = status.get_details_error_info().expect("an ErrorInfo");
        assert_eq!(info.metadata.len(), 2, "{:?}", info.metadata);
    }

    #[test]
    fn a_cut_watch_tells_its_code_reason_and_where_to_resume() {
        let cases = [
            (
                CutReason::WatcherLagged,
                Code::ResourceExhausted,
                "WATCHER_LAGGED",
            ),
            (
                CutReason::WatcherOverBudget,
                Code::ResourceExhausted,
                "WATCHER_OVER_BUDGET",
            ),
            (
                CutReason::WatchMemoryFull,
                Code::ResourceExhausted,
                "WATCH_MEMORY_FULL",
            ),
            (CutReason::SyncStopped, Code::Unavailable, "SYNC_STOPPED"),
            (CutReason::ShuttingDown, Code::Unavailable, "SHUTTING_DOWN"),
        ];
        for (reason, code, word) in cases {
            let status = watch_cut(reason, "leaf1", 42, "resume with from_revision=42".into());
            assert_eq!(status.code(), code, "{reason:?}");
            assert_eq!(status.message(), "resume with from_revision=42");
            let info = status.get_details_error_info().expect("an ErrorInfo");
            assert_eq!((info.reason.as_str(), info.domain.as_str()), (word, DOMAIN));
            assert_eq!(info.metadata["from_revision"], "42");
            assert_eq!(info.metadata["datastore"], "leaf1");
        }
    }

    #[test]
    fn internal_and_plain_errors_carry_no_details() {
        for error in [
            Error::Internal("a task panicked at src/x.rs".into()),
            Error::Corrupt("bad bytes".into()),
            Error::StorageUnavailable("disk full".into()),
            Error::ResourceExhausted("max_datastores".into()),
        ] {
            let status = Status::from(error);
            assert!(status.details().is_empty(), "{status:?}");
        }
    }
}
