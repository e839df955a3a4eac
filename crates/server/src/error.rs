//! The server's error type and the one place that decides which gRPC code a
//! failure becomes.

use tonic::Status;

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
    /// The requested revision is no longer kept.
    #[error("{0}")]
    OutOfRange(String),
    /// A limit of this server is reached; the message names the setting.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The call cannot be served in the thing's current state (e.g. a
    /// datastore that could not be loaded at start); the message says why.
    #[error("{0}")]
    FailedPrecondition(String),
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
            Error::InvalidArgument { .. } => Status::invalid_argument(error.to_string()),
            Error::NotFound { .. } => Status::not_found(error.to_string()),
            Error::AlreadyExists { .. } => Status::already_exists(error.to_string()),
            Error::Unimplemented(what) => Status::unimplemented(what),
            Error::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            Error::OutOfRange(m) => Status::out_of_range(m),
            Error::ResourceExhausted(m) => Status::resource_exhausted(m),
            Error::StorageUnavailable(_) => {
                tracing::warn!(%error, "a request could not be stored");
                Status::unavailable(
                    "netsyncd cannot write to its database at the moment; nothing was changed, \
                     try again",
                )
            }
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::Store(_) | Error::Corrupt(_) | Error::Internal(_) | Error::Damaged { .. } => {
                tracing::error!(%error, "internal error");
                Status::internal("internal error; the server log has the details")
            }
        }
    }
}
