//! netsyncd reaches PostgreSQL over TLS when its URL asks for it
//! (`sslmode=verify-full&sslrootcert=...`, as libpq spells them): a cluster
//! that takes TCP connections only over TLS, with a certificate of a test
//! CA. netsyncd trusting that CA syncs as usual; trusting another CA, or not
//! asking for TLS, it refuses to start and says why.
//!
//! PostgreSQL only, whatever `NETSYNC_TEST_DB` says; passes without running
//! when PostgreSQL is missing, unless `NETSYNC_REQUIRE_POSTGRES=1`.

use netsync_testkit::client;
use netsync_testkit::pki::Ca;
use netsync_testkit::postgres::PgCluster;
use netsync_testkit::sim::{Sim, generated};

use crate::support::{Netsyncd, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netsyncd_reaches_postgres_over_verified_tls_and_refuses_a_server_it_cannot_verify() {
    let ca = Ca::new("database CA");
    let Some(cluster) = PgCluster::start_tls(&ca.server(&["127.0.0.1"])) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let trusted = dir.path().join("ca.pem");
    std::fs::write(&trusted, &ca.cert_pem).unwrap();
    let stranger = dir.path().join("other-ca.pem");
    std::fs::write(&stranger, Ca::new("another CA").cert_pem).unwrap();
    let plain = cluster.database("tls");
    let with_ca =
        |ca: &std::path::Path| format!("{plain}?sslmode=verify-full&sslrootcert={}", ca.display());

    // Without TLS the server refuses it; with a CA that did not sign the
    // server's certificate netsyncd refuses the server.
    for (url, expected) in [
        (format!("{plain}?sslmode=disable"), "no encryption"),
        (with_ca(&stranger), "certificate"),
    ] {
        let output = Netsyncd::run_to_exit(&["--db", &url]);
        assert!(!output.status.success(), "{url}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{url}: {stderr}");
    }

    // Verified: it syncs, over TLS (the only way in).
    let sim = Sim::start(generated(10)).await;
    let daemon = Netsyncd::start_with(
        std::path::Path::new("unused"),
        Options {
            db_url: Some(with_ca(&trusted)),
            ..Default::default()
        },
    );
    let mut api = client::Client::new(netsync_testkit::channel(daemon.addr).await);
    client::create_synced(&mut api, "over-tls", sim.addr).await;
    let running = client::running(&mut api, "over-tls", 1).await;
    assert!(!running.leaves.is_empty());
    assert!(daemon.terminate().success());
}
