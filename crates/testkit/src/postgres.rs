//! A throwaway PostgreSQL cluster for tests: `initdb` in a temporary
//! directory, `pg_ctl start` on a free loopback port (its socket in the same
//! directory), stopped with `pg_ctl -m fast stop` when dropped; and a fresh
//! database on it per test ([`PgCluster::database`]).
//!
//! PostgreSQL refuses to run as root: as root (as CI runs), `initdb` and
//! `pg_ctl` run as the unprivileged `postgres` account, which then owns the
//! directory. Authentication is `trust` for the user `netsync` (loopback
//! only), so URLs carry no password.
//!
//! One cluster is shared by every test of a process ([`PgCluster::shared`]):
//! starting one takes about a second, a database a few tens of ms. A static
//! is never dropped, so every cluster also has a guardian: a shell that
//! stops it (and removes its directory) once the test process is gone, even
//! after a kill -9 or a panic in another thread.
//!
//! Where PostgreSQL is missing, [`crate::tools::postgres`] says so and the
//! caller skips, unless `NETSYNC_REQUIRE_POSTGRES=1` (CI) makes it a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::tools::{self, Postgres};

/// The superuser every test cluster has (`initdb -U`).
pub const USER: &str = "netsync";

/// A running PostgreSQL cluster, stopped on drop.
#[derive(Debug)]
pub struct PgCluster {
    tools: Postgres,
    /// The temporary directory: `data/` (the cluster), the socket, `log`.
    dir: PathBuf,
    /// Whether `dir` is removed on drop (not for the shared cluster, whose
    /// guardian removes it).
    remove: bool,
    /// The loopback port it listens on.
    pub port: u16,
    /// Whether the programs run as the `postgres` account (we are root).
    as_postgres: bool,
    guardian: Option<Child>,
}

/// Databases created by this process, for unique names.
static DATABASES: AtomicU64 = AtomicU64::new(0);

impl PgCluster {
    /// Starts a new cluster; `None` (after saying why) when PostgreSQL is
    /// not installed and not required. Panics if it is installed but does
    /// not start.
    pub fn start() -> Option<Self> {
        let tools = tools::postgres()?;
        Some(Self::start_as(tools, true, None))
    }

    /// Starts a new cluster that takes only TLS connections on its port,
    /// with certificate `server` (see [`crate::pki`]); `None` as for
    /// [`PgCluster::start`].
    pub fn start_tls(server: &crate::pki::Leaf) -> Option<Self> {
        let tools = tools::postgres()?;
        Some(Self::start_as(tools, true, Some(server)))
    }

    /// The cluster shared by every test of this process, started at first
    /// use; `None` as for [`PgCluster::start`].
    pub fn shared() -> Option<&'static Self> {
        static SHARED: OnceLock<Option<PgCluster>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let tools = tools::postgres()?;
                Some(Self::start_as(tools, false, None))
            })
            .as_ref()
    }

    fn start_as(tools: Postgres, remove: bool, tls: Option<&crate::pki::Leaf>) -> Self {
        let as_postgres = rustix::process::geteuid().is_root();
        let dir = std::env::temp_dir().join(format!(
            "netsync-pg-{}-{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        if as_postgres {
            let chown = Command::new("chown")
                .arg("postgres:")
                .arg(&dir)
                .output()
                .expect("chown runs");
            tools::assert_success("chown postgres: of the cluster directory", &chown);
        }
        let mut cluster = Self {
            tools,
            dir,
            remove,
            port: 0,
            as_postgres,
            guardian: None,
        };
        let data = cluster.data();
        let initdb = cluster
            .command(&cluster.tools.initdb.clone())
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", USER, "-E", "UTF8", "--no-sync"])
            .output()
            .expect("initdb runs");
        tools::assert_success("initdb", &initdb);
        let tls_options = match tls {
            Some(server) => cluster.take_only_tls(server),
            None => String::new(),
        };
        // A free port, taken back from the system just before the start; a
        // port taken meanwhile fails the start, which is tried again.
        let mut last = None;
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300{tls_options}",
                cluster.dir.display()
            );
            let started = cluster
                .command(&cluster.tools.pg_ctl.clone())
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(cluster.dir.join("log"))
                .args(["-o", &options, "-w", "-t", "60", "start"])
                .stdout(Stdio::null())
                .output()
                .expect("pg_ctl runs");
            if started.status.success() {
                cluster.port = port;
                cluster.guardian = Some(cluster.guardian());
                return cluster;
            }
            last = Some(started);
        }
        let log = std::fs::read_to_string(cluster.dir.join("log")).unwrap_or_default();
        panic!(
            "PostgreSQL does not start: {:?}\nits log:\n{log}",
            last.expect("tried")
        );
    }

    /// Puts `server`'s certificate and key in the data directory (the key
    /// private to the account that runs the cluster, as PostgreSQL demands)
    /// and lets loopback TCP in only over TLS (`hostssl`); returns the
    /// server options that turn TLS on.
    fn take_only_tls(&self, server: &crate::pki::Leaf) -> String {
        let data = self.data();
        let write = |name: &str, contents: &str| {
            let path = data.join(name);
            std::fs::write(&path, contents).expect("a file in the data directory");
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod");
            if self.as_postgres {
                let chown = Command::new("chown")
                    .arg("postgres:")
                    .arg(&path)
                    .output()
                    .expect("chown runs");
                tools::assert_success("chown postgres: of a TLS file", &chown);
            }
        };
        write("server.crt", &server.cert_pem);
        write("server.key", &server.key_pem);
        // The socket (local) stays open for the test's own set-up; TCP only
        // over TLS.
        write(
            "pg_hba.conf",
            &format!(
                "local all all trust\nhostssl all {USER} 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n"
            ),
        );
        " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key".into()
    }

    /// The cluster's data directory.
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `program`, as the `postgres` account when we are root.
    fn command(&self, program: &Path) -> Command {
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    /// A shell that waits for this process to end, then stops the cluster
    /// and removes its directory.
    fn guardian(&self) -> Child {
        let stop = format!(
            "{} '{}' -D '{}' -m fast stop",
            if self.as_postgres {
                "runuser -u postgres --"
            } else {
                ""
            },
            self.tools.pg_ctl.display(),
            self.data().display()
        );
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            dir = self.dir.display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh runs")
    }

    /// The URL of database `name` on this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates database `name` if it does not exist yet (so a test that
    /// restarts netsyncd on "the same database" gets it back), and returns
    /// its URL. `name` is a plain identifier (letters, digits, `_`).
    pub fn database(&self, name: &str) -> String {
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "a database name of lowercase letters, digits and _: {name:?}"
        );
        let admin = self.url("postgres");
        let sql = format!("CREATE DATABASE {name}");
        // On a thread of its own with its own runtime: callers are sync
        // functions, often called from inside a test's runtime.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("cannot connect to {admin}: {e}"));
                match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                    .execute(&mut conn)
                    .await
                {
                    Ok(_) => {}
                    // duplicate_database: created before, by this process.
                    Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
                    Err(e) => panic!("{sql}: {e}"),
                }
                let _ = conn.close().await;
            });
        })
        .join()
        .expect("CREATE DATABASE");
        self.url(name)
    }

    /// A new database with a name never used before in this process.
    pub fn fresh_database(&self) -> String {
        let n = DATABASES.fetch_add(1, Ordering::Relaxed);
        self.database(&format!("t{}_{n}", std::process::id()))
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command(&self.tools.pg_ctl.clone())
            .arg("-D")
            .arg(&data)
            .args(["-m", "fast", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut guardian) = self.guardian.take() {
            let _ = guardian.kill();
            let _ = guardian.wait();
        }
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_serves_fresh_databases_and_stops_on_drop() {
        let Some(cluster) = PgCluster::start() else {
            return;
        };
        let url = cluster.fresh_database();
        // The same name again is the same database, not an error.
        let name = url.rsplit('/').next().unwrap().to_string();
        assert_eq!(cluster.database(&name), url);
        let port = cluster.port;
        let data = cluster.data();
        drop(cluster);
        assert!(!data.exists(), "the directory is removed");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "the cluster stopped"
        );
    }
}
