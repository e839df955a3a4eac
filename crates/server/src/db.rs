//! The two storage backends, SQLite (the embedded default) and PostgreSQL,
//! behind one set of types: a connection ([`Conn`]), a pool of readers
//! ([`Readers`]) and how to open the writer's connection ([`Connect`]).
//!
//! Each is an enum with one variant per backend, and the code that runs SQL
//! writes its statement once, inside [`on_conn!`] or [`on_readers!`], which
//! expand to a `match` with the same code in each arm. So each arm is
//! compiled against its driver's own types (the SQLite arm is exactly the
//! code that ran before PostgreSQL existed, with no conversion layer between
//! it and the driver, unlike sqlx's `Any` driver), and a statement that does
//! not suit both drivers fails to compile rather than at run time. Making the
//! storage code generic over `sqlx::Database` would do the same, at the cost
//! of a type parameter on the store and everything holding it (engine, log,
//! API), and of long trait bounds on every query.
//!
//! Statements use `$N` placeholders, which both drivers take. The few that
//! must differ (a uid from the database's random generator, the writer's
//! `BEGIN`) match on the backend themselves.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqlitePool};

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file: `sqlite://PATH` or a plain path.
    Sqlite,
    /// A PostgreSQL database: `postgres://...` or `postgresql://...`.
    Postgres,
}

impl Backend {
    /// The backend of `url`: PostgreSQL for `postgres:` and `postgresql:`
    /// URLs, SQLite for everything else (a `sqlite:` URL or a file path).
    pub fn of(url: &str) -> Self {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::Postgres
        } else {
            Self::Sqlite
        }
    }
}

/// One database connection, of either backend.
#[derive(Debug)]
pub enum Conn {
    /// SQLite.
    Sqlite(SqliteConnection),
    /// PostgreSQL.
    Postgres(PgConnection),
}

impl Conn {
    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(_) => Backend::Sqlite,
            Self::Postgres(_) => Backend::Postgres,
        }
    }
}

/// A pool of read-only connections, of either backend.
#[derive(Debug, Clone)]
pub enum Readers {
    /// SQLite.
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Postgres(PgPool),
}

impl Readers {
    /// Closes every connection of the pool.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(pool) => pool.close().await,
            Self::Postgres(pool) => pool.close().await,
        }
    }
}

/// How the writer opens its connection (again after a failure).
#[derive(Debug, Clone)]
pub enum Connect {
    /// A SQLite file, with the pragmas every connection gets.
    Sqlite(SqliteConnectOptions),
    /// A PostgreSQL database.
    Postgres(PgConnectOptions),
}

impl Connect {
    /// PostgreSQL options from a `postgres://` URL.
    pub fn postgres(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
        use sqlx::ConnectOptions;
        // No per-statement log. With it, the reconcile job's span went
        // missing from the traces, reproducibly, and never without it: sqlx
        // asks `tracing::enabled!` after every statement, on the runtime's
        // threads (SQLite's statements run on a thread of their own), and
        // that question, answered no by both of our per-layer filters,
        // seems to leave the next span created on that thread disabled.
        // Slow statements are still logged (WARN, over 1 s), so a slow
        // statement may still cost a span.
        Ok(PgConnectOptions::from_str(url)?
            .application_name("netsyncd")
            .log_statements(log::LevelFilter::Off))
    }
}

/// Runs `$body` with `$c` bound to the driver's own connection inside the
/// [`Conn`] `$conn` (an `&mut Conn`): the same code, compiled once per
/// backend.
macro_rules! on_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::db::Conn::Sqlite($c) => $body,
            $crate::db::Conn::Postgres($c) => $body,
        }
    };
}

/// Runs `$body` with `$p` bound to the driver's own pool inside the
/// [`Readers`] `$readers` (an `&Readers`).
macro_rules! on_readers {
    ($readers:expr, $p:ident => $body:expr) => {
        match $readers {
            $crate::db::Readers::Sqlite($p) => $body,
            $crate::db::Readers::Postgres($p) => $body,
        }
    };
}

pub(crate) use {on_conn, on_readers};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_urls_select_postgres_and_everything_else_sqlite() {
        assert_eq!(Backend::of("postgres://u@h/db"), Backend::Postgres);
        assert_eq!(Backend::of("postgresql://h/db"), Backend::Postgres);
        assert_eq!(Backend::of("sqlite://netsync.db"), Backend::Sqlite);
        assert_eq!(Backend::of("netsync.db"), Backend::Sqlite);
        // A file whose name starts like a scheme is still a file.
        assert_eq!(Backend::of("postgres.db"), Backend::Sqlite);
    }
}
