//! What can end a command, and the exit code of each class, so that a script
//! can tell "not there" from "refused" from "cannot reach netsyncd" without
//! reading stderr.

use tonic::Code;

/// Exit codes (2 is clap's, for a command line it cannot parse).
pub mod exit {
    /// A local mistake: a file that cannot be read or is not a valid spec, flags that do not fit.
    pub const INPUT: i32 = 1;
    /// netsyncd could not be reached, answered UNAVAILABLE, or the connection broke.
    pub const UNREACHABLE: i32 = 3;
    /// NOT_FOUND: no such datastore, intent, or path.
    pub const NOT_FOUND: i32 = 4;
    /// The request was refused as it stands: INVALID_ARGUMENT, ALREADY_EXISTS,
    /// FAILED_PRECONDITION, OUT_OF_RANGE, PERMISSION_DENIED, UNAUTHENTICATED.
    pub const REFUSED: i32 = 5;
    /// Any other error status from netsyncd.
    pub const SERVER: i32 = 6;
}

/// Why a command failed.
#[derive(Debug)]
pub enum CliError {
    /// A local mistake, with the whole message.
    Input(String),
    /// No connection to netsyncd.
    Unreachable(String),
    /// netsyncd answered with an error status.
    Status(tonic::Status),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Input(_) => exit::INPUT,
            Self::Unreachable(_) => exit::UNREACHABLE,
            // A status made by tonic from a broken connection: netsyncd
            // never answered (a TLS handshake refused, a netsyncd killed).
            Self::Status(status) if std::error::Error::source(status).is_some() => {
                exit::UNREACHABLE
            }
            Self::Status(status) => match status.code() {
                Code::NotFound => exit::NOT_FOUND,
                Code::Unavailable => exit::UNREACHABLE,
                Code::InvalidArgument
                | Code::AlreadyExists
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::PermissionDenied
                | Code::Unauthenticated => exit::REFUSED,
                _ => exit::SERVER,
            },
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Input(message) | Self::Unreachable(message) => f.write_str(message),
            // The code as grpcurl and the gRPC docs spell it, then netsyncd's
            // message, which names the field or the thing.
            // tonic's status for a broken connection says only "transport
            // error"; its causes say what broke (a TLS alert, a reset).
            Self::Status(status) => match std::error::Error::source(status) {
                Some(cause) => {
                    let causes = source_chain(cause);
                    let causes = causes
                        .strip_prefix(status.message())
                        .map_or(causes.as_str(), |rest| rest.trim_start_matches(": "));
                    write!(
                        f,
                        "{}: {}: {causes}",
                        code_name(status.code()),
                        status.message()
                    )
                }
                None => write!(f, "{}: {}", code_name(status.code()), status.message()),
            },
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        Self::Status(status)
    }
}

impl From<netsync_client::Error> for CliError {
    fn from(error: netsync_client::Error) -> Self {
        use netsync_client::Error;
        match error {
            Error::Status(status) => Self::Status(status),
            Error::Transport(e) => {
                Self::Unreachable(format!("cannot connect: {}", source_chain(&e)))
            }
            e @ (Error::InvalidAddress { .. } | Error::Tls(_)) => Self::Input(e.to_string()),
        }
    }
}

/// An error and its causes, `a: b: c` (tonic's transport error alone says
/// only "transport error").
fn source_chain(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        // Layers often repeat their cause's words ("transport error").
        if parts.last() != Some(&part) {
            parts.push(part);
        }
        source = cause.source();
    }
    parts.join(": ")
}

/// The canonical name of a gRPC code (`NOT_FOUND`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
