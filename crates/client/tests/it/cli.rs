//! The `netsync` binary against netsyncd (in this process) and the
//! simulator: every command, in every output format, and the unkind paths
//! first (an unreachable server, a missing datastore, a bad spec file),
//! each with its message on stderr and its own exit code.

use crate::support::{Netsyncd, assert_failed, file, netsync};
use netsync_core::datastore::Secret;
use netsync_server::tls::ApiTls;
use netsync_testkit::client::{self, wait_revision};
use netsync_testkit::gnmi::string;
use netsync_testkit::pki::Ca;
use netsync_testkit::process::{Echo, Process, Stream};
use netsync_testkit::sim::{Sim, failing_sets, generated};
use netsync_testkit::{DEADLINE, tools};

/// Exit codes, as the binary documents them (src/bin/netsync/error.rs).
const INPUT: i32 = 1;
const UNREACHABLE: i32 = 3;
const NOT_FOUND: i32 = 4;

/// A YAML spec of datastore `name` of the device at `address`.
fn spec_yaml(name: &str, address: &str, env: &str) -> String {
    format!(
        "name: {name}\nlabels:\n  env: {env}\ntarget:\n  address: {address}\nsync:\n  commitInterval: 0.01s\n"
    )
}

/// A JSON spec of datastore `name` of the device at `address`.
fn spec_json(name: &str, address: &str, env: &str) -> String {
    format!(
        r#"{{"name": "{name}", "labels": {{"env": "{env}"}}, "target": {{"address": "{address}"}},
            "sync": {{"commitInterval": "0.01s"}}}}"#
    )
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// netsyncd with datastore "r1" of a simulator, created through the CLI
/// from YAML and synced (revision 1 committed).
async fn with_datastore() -> (Netsyncd, Sim, tempfile::TempDir) {
    let server = Netsyncd::start().await;
    let sim = Sim::start(generated(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let spec = file(
        &dir,
        "r1.yaml",
        &spec_yaml("r1", &sim.addr.to_string(), "lab"),
    );
    assert_eq!(
        server.ok(&["datastore", "create", "-f", &spec]).await,
        "datastore/r1 created\n"
    );
    wait_revision(&mut server.client().await, "r1", 1).await;
    (server, sim, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_server_is_its_own_exit_code_and_netsync_server_is_honoured() {
    // Nothing listens on port 1 of loopback.
    let output = tools::output(&mut netsync(&[
        "--server",
        "http://127.0.0.1:1",
        "datastore",
        "list",
    ]))
    .await;
    assert_failed(&output, UNREACHABLE, &["cannot connect", "127.0.0.1:1"]);

    let output =
        tools::output(netsync(&["datastore", "list"]).env("NETSYNC_SERVER", "http://127.0.0.1:1"))
            .await;
    assert_failed(&output, UNREACHABLE, &["127.0.0.1:1"]);

    let (server, _sim, _dir) = with_datastore().await;
    let output = tools::run(
        netsync(&["datastore", "list", "-o", "json"]).env("NETSYNC_SERVER", server.url()),
    )
    .await;
    let list = json(&String::from_utf8(output.stdout).unwrap());
    assert_eq!(list["datastores"][0]["name"], "r1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_datastore_is_not_found_on_stderr() {
    let server = Netsyncd::start().await;
    for args in [
        &["datastore", "get", "nope"][..],
        &["datastore", "delete", "nope"],
        &["running", "get", "nope"],
        &["intent", "list", "nope"],
        &["deviations", "nope"],
        &["watch", "nope"],
    ] {
        let output = server.fails(args).await;
        assert_failed(&output, NOT_FOUND, &["NOT_FOUND", "nope"]);
        assert!(
            output.stdout.is_empty(),
            "{args:?} printed {:?}",
            output.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_spec_file_is_named_with_its_line_and_field() {
    let server = Netsyncd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let misspelt = file(
        &dir,
        "bad.yaml",
        "name: r1\ntarget:\n  adress: 127.0.0.1:1\n",
    );
    let output = server
        .fails(&["datastore", "create", "-f", &misspelt])
        .await;
    assert_failed(&output, INPUT, &["bad.yaml", "adress", "line 3"]);

    let bad_enum = file(
        &dir,
        "bad.json",
        "{\"name\": \"r1\",\n \"sync\": {\"mode\": \"SYNC_MODE_FAST\"}}",
    );
    let output = server
        .fails(&["datastore", "create", "-f", &bad_enum])
        .await;
    assert_failed(&output, INPUT, &["bad.json", "SYNC_MODE_FAST", "line 2"]);

    let empty = file(&dir, "empty.json", "\n");
    let output = server.fails(&["datastore", "create", "-f", &empty]).await;
    assert_failed(&output, INPUT, &["empty.json", "empty"]);

    let output = server
        .fails(&["datastore", "create", "-f", "/nonexistent/spec.yaml"])
        .await;
    assert_failed(&output, INPUT, &["/nonexistent/spec.yaml"]);

    // A valid file the server refuses: its code and message, naming the field.
    let no_address = file(&dir, "no-target.yaml", "name: r1\n");
    let output = server
        .fails(&["datastore", "create", "-f", &no_address])
        .await;
    assert_failed(&output, 5, &["INVALID_ARGUMENT", "datastore.target"]);
    assert!(server.ok(&["datastore", "list"]).await.lines().count() == 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn datastores_are_created_listed_updated_and_deleted() {
    let (server, sim, dir) = with_datastore().await;
    let json_spec = file(
        &dir,
        "r2.json",
        &spec_json("r2", &sim.addr.to_string(), "prod"),
    );
    assert_eq!(
        server.ok(&["datastore", "create", "-f", &json_spec]).await,
        "datastore/r2 created\n"
    );

    let r1 = json(&server.ok(&["datastore", "get", "r1", "-o", "json"]).await);
    assert_eq!(r1["labels"]["env"], "lab");
    assert_eq!(r1["target"]["address"], sim.addr.to_string());
    assert_eq!(r1["sync"]["commitInterval"], "0.010s");
    let yaml: serde_json::Value =
        serde_yaml_ng::from_str(&server.ok(&["datastore", "get", "r2", "-o", "yaml"]).await)
            .unwrap();
    assert_eq!(yaml["labels"]["env"], "prod");

    // The selector matches r1 only; the table has a header and one row.
    let lab = server.ok(&["datastore", "list", "-l", "env=lab"]).await;
    let rows: Vec<&str> = lab.lines().collect();
    assert_eq!(rows.len(), 2, "{lab}");
    assert!(
        rows[0].starts_with("NAME") && rows[1].starts_with("r1 "),
        "{lab}"
    );
    assert!(rows[1].contains("env=lab"), "{lab}");
    let names = |list: serde_json::Value| -> Vec<String> {
        list["datastores"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|d| d["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        names(json(
            &server
                .ok(&["datastore", "list", "-l", "env!=lab", "-o", "json"])
                .await
        )),
        ["r2"]
    );
    // Every page by default (one datastore a page here); --limit: the first.
    let all = json(
        &server
            .ok(&["datastore", "list", "--page-size", "1", "-o", "json"])
            .await,
    );
    assert_eq!(names(all), ["r1", "r2"]);
    let first = json(
        &server
            .ok(&["datastore", "list", "--limit", "1", "-o", "json"])
            .await,
    );
    assert_eq!(names(first.clone()), ["r1"]);
    let token = first["nextPageToken"].as_str().unwrap().to_string();
    let rest = json(
        &server
            .ok(&["datastore", "list", "--page-token", &token, "-o", "json"])
            .await,
    );
    assert_eq!(names(rest), ["r2"]);

    // Update r1 to another device: the same uid, revisions go on from where they were.
    let mut client = server.client().await;
    let hostname = "/system/config/hostname";
    let before = client::running(&mut client, "r1", 1).await;
    let other = Sim::start(generated(20)).await;
    other
        .set_leaves(vec![(hostname.into(), string("other"))], vec![])
        .await;
    let moved = file(
        &dir,
        "moved.yaml",
        &format!("target:\n  address: {}\n", other.addr),
    );
    let updated = json(
        &server
            .ok(&["datastore", "update", "r1", "-f", &moved, "-o", "json"])
            .await,
    );
    assert_eq!(updated["target"]["address"], other.addr.to_string());
    assert_eq!(updated["uid"], r1["uid"]);
    assert_eq!(
        updated["labels"]["env"], "lab",
        "a field outside the mask is kept"
    );
    let after = client::until_running(&mut client, "r1", "the other device's hostname", |leaves| {
        leaves.get(hostname) != before.leaves.get(hostname)
    })
    .await;
    assert!(
        after > before.revision,
        "revision {after} after the update, {} before",
        before.revision
    );

    // What get prints, edited, is an update: output-only fields stay out of the mask.
    let got = server.ok(&["datastore", "get", "r1", "-o", "yaml"]).await;
    let edited = file(&dir, "edited.yaml", &got.replace("env: lab", "env: edited"));
    server
        .ok(&["datastore", "update", "r1", "-f", &edited])
        .await;
    let r1 = json(&server.ok(&["datastore", "get", "r1", "-o", "json"]).await);
    assert_eq!(r1["labels"]["env"], "edited");

    // A mask given explicitly: only the labels change.
    let relabel = file(
        &dir,
        "relabel.yaml",
        "labels:\n  env: staging\ntarget:\n  address: 127.0.0.1:1\n",
    );
    server
        .ok(&[
            "datastore",
            "update",
            "r1",
            "-f",
            &relabel,
            "--update-mask",
            "labels",
        ])
        .await;
    let r1 = json(&server.ok(&["datastore", "get", "r1", "-o", "json"]).await);
    assert_eq!(r1["labels"]["env"], "staging");
    assert_eq!(r1["target"]["address"], other.addr.to_string());

    assert_eq!(
        server.ok(&["datastore", "delete", "r2"]).await,
        "datastore/r2 deleted\n"
    );
    let output = server.fails(&["datastore", "get", "r2"]).await;
    assert_failed(&output, NOT_FOUND, &["NOT_FOUND", "r2"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn running_reads_in_every_format_now_and_at_a_past_revision() {
    let (server, sim, _dir) = with_datastore().await;
    let mut client = server.client().await;
    let hostname = "/system/config/hostname";
    let initial = client::running(&mut client, "r1", 1).await;
    sim.set_leaves(vec![(hostname.into(), string("first"))], vec![])
        .await;
    let earlier = client::until_running(&mut client, "r1", "the first hostname", |leaves| {
        leaves.get(hostname) != initial.leaves.get(hostname)
    })
    .await;
    let running = client::running(&mut client, "r1", earlier).await;

    let now = json(&server.ok(&["running", "get", "r1", "-o", "json"]).await);
    assert_eq!(now["datastore"], "r1");
    assert_eq!(now["revision"], running.revision);
    let paths: Vec<&String> = now["leaves"].as_object().unwrap().keys().collect();
    assert_eq!(paths, running.leaves.keys().collect::<Vec<_>>());
    // A plain value, not the device's encoding of it.
    assert_eq!(now["leaves"][hostname], "first");

    let yaml: serde_json::Value =
        serde_yaml_ng::from_str(&server.ok(&["running", "get", "r1", "-o", "yaml"]).await).unwrap();
    assert_eq!(yaml, now);

    let table = server.ok(&["running", "get", "r1"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), running.leaves.len() + 1, "{table}");
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["PATH", "VALUE"]
    );
    assert!(
        lines
            .iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == [hostname, "first"]),
        "{table}"
    );

    let one = server.ok(&["running", "get", "r1", hostname]).await;
    assert_eq!(one.lines().count(), 2, "{one}");

    // A later change; the earlier revision still reads as it was.
    sim.set_leaves(vec![(hostname.into(), string("second"))], vec![])
        .await;
    client::until_running(&mut client, "r1", "the second hostname", |leaves| {
        leaves.get(hostname) != running.leaves.get(hostname)
    })
    .await;
    let now = json(
        &server
            .ok(&["running", "get", "r1", hostname, "-o", "json"])
            .await,
    );
    assert_eq!(now["leaves"][hostname], "second");
    let past = json(
        &server
            .ok(&[
                "running",
                "get",
                "r1",
                "--revision",
                &earlier.to_string(),
                "-o",
                "json",
            ])
            .await,
    );
    assert_eq!(past["revision"], earlier);
    assert_eq!(past["leaves"][hostname], "first");
    assert_eq!(
        past["leaves"].as_object().unwrap().len(),
        running.leaves.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_of_one_datastore_prints_a_line_per_event_from_a_revision() {
    let (server, sim, _dir) = with_datastore().await;
    let hostname = "/system/config/hostname";
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_netsync"));
    command
        .args(["--server", &server.url(), "watch", "r1", "--from", "1"])
        .env_remove("NETSYNC_SERVER");
    let text = Process::start("netsync watch", command, Echo::default()).unwrap();
    let stdout = |line: &netsync_testkit::process::Line| {
        (line.stream == Stream::Stdout).then(|| line.text.clone())
    };
    // Revision 1 replayed first: the initial sync's commit.
    let first = text
        .output()
        .wait_for(DEADLINE, stdout)
        .expect("a first event line");
    assert!(first.starts_with("1 "), "{first}");

    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_netsync"));
    command
        .args([
            "--server",
            &server.url(),
            "watch",
            "r1",
            "--from",
            "1",
            "-o",
            "json",
        ])
        .env_remove("NETSYNC_SERVER");
    let json_lines = Process::start("netsync watch -o json", command, Echo::default()).unwrap();

    sim.set_leaves(vec![(hostname.into(), string("watched"))], vec![])
        .await;
    let line = text
        .output()
        .wait_for(DEADLINE, |line| {
            stdout(line).filter(|text| text.contains(&format!("{hostname}=watched")))
        })
        .expect("a line with the change");
    assert!(line.split_whitespace().nth(1) == Some("commit"), "{line}");

    let event = json_lines
        .output()
        .wait_for_json(DEADLINE, |event| {
            let updates = event["commit"]["updates"].as_array()?;
            updates
                .iter()
                .find(|u| u["path"] == hostname && u["value"]["stringVal"] == "watched")
                .map(|_| event.clone())
        })
        .expect("a JSON event with the change");
    assert_eq!(event["datastore"], "r1");
    assert!(event["revision"].as_str().unwrap().parse::<u64>().unwrap() > 1);
    // Every stdout line of the JSON watch is one JSON object.
    for line in json_lines.output().lines() {
        if line.stream == Stream::Stdout {
            assert!(line.json().is_some_and(|j| j.is_object()), "{}", line.text);
        }
    }
    // Both are killed and reaped when dropped.
}

#[tokio::test(flavor = "multi_thread")]
async fn intents_are_set_read_listed_and_deleted_and_deviations_shown() {
    let (server, sim, dir) = with_datastore().await;
    // Every Set fails for good, so the intents stay deviations.
    sim.set_faults(failing_sets(tonic::Code::InvalidArgument))
        .await;
    let intent = file(
        &dir,
        "motd.yaml",
        "name: motd\npriority: 10\nupdates:\n  - path: /system/config/motd-banner\n    value:\n      stringVal: managed by netsync\n",
    );
    assert_eq!(
        server.ok(&["intent", "set", "r1", "-f", &intent]).await,
        "intent/motd set on r1\n"
    );
    let set = json(
        &server
            .ok(&[
                "intent",
                "set",
                "r1",
                "--name",
                "desc",
                "--leaf",
                "/interfaces/interface[name=eth0]/config/description=uplink",
                "-o",
                "json",
            ])
            .await,
    );
    assert_eq!(set["name"], "desc");
    assert_eq!(
        set["updates"][0]["path"],
        "/interfaces/interface[name=eth0]/config/description"
    );

    let motd = json(
        &server
            .ok(&["intent", "get", "r1", "motd", "-o", "json"])
            .await,
    );
    assert_eq!(motd["priority"], 10);
    assert_eq!(
        motd["updates"][0]["value"]["stringVal"],
        "managed by netsync"
    );

    let list = server.ok(&["intent", "list", "r1"]).await;
    let names: Vec<&str> = list
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["desc", "motd"], "{list}");

    let deviations = server.ok(&["deviations", "r1"]).await;
    let rows: Vec<Vec<&str>> = deviations
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        rows[0],
        ["PATH", "INTENT", "EXPECTED", "ACTUAL"],
        "{deviations}"
    );
    assert!(
        rows.contains(&vec![
            "/system/config/motd-banner",
            "motd",
            "managed by netsync",
            "<absent>"
        ]),
        "{deviations}"
    );
    let deviations = json(&server.ok(&["deviations", "r1", "-o", "json"]).await);
    assert_eq!(deviations["deviations"].as_array().unwrap().len(), 2);

    assert_eq!(
        server.ok(&["intent", "delete", "r1", "motd"]).await,
        "intent/motd deleted from r1\n"
    );
    let output = server.fails(&["intent", "get", "r1", "motd"]).await;
    assert_failed(&output, NOT_FOUND, &["NOT_FOUND", "motd"]);
    let left = json(&server.ok(&["intent", "list", "r1", "-o", "json"]).await);
    assert_eq!(left["intents"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_flags_reach_a_mutual_tls_netsyncd() {
    let ca = Ca::new("API CA");
    let clients = Ca::new("client CA");
    let server = Netsyncd::start_with(|mut config| {
        let identity = ca.server(&["localhost"]);
        config.tls = Some(ApiTls {
            cert_pem: identity.cert_pem,
            key_pem: Secret::new(identity.key_pem),
            client_ca_pem: Some(clients.cert_pem.clone()),
            reload_from: None,
        });
        config
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let me = clients.client("operator");
    let ca_file = file(&dir, "ca.pem", &ca.cert_pem);
    let cert_file = file(&dir, "client.pem", &me.cert_pem);
    let key_file = file(&dir, "client.key", &me.key_pem);
    let address = server.addr.to_string();
    let tls = |extra: &[&str]| {
        let mut args = vec![
            "--server",
            &address,
            "--tls-ca",
            &ca_file,
            "--tls-server-name",
            "localhost",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["datastore", "list", "-o", "json"]);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };

    // Without a client certificate, netsyncd refuses the call.
    let output = tools::output(netsync(&[]).args(tls(&[]))).await;
    assert_failed(&output, UNREACHABLE, &["connection"]);
    // A plaintext address with TLS flags is a contradiction, said so.
    let output = tools::output(&mut netsync(&[
        "--server",
        &server.url(),
        "--tls-ca",
        &ca_file,
        "datastore",
        "list",
    ]))
    .await;
    assert_failed(&output, INPUT, &["TLS", "https://"]);

    let output =
        tools::run(netsync(&[]).args(tls(&["--tls-cert", &cert_file, "--tls-key", &key_file])))
            .await;
    let list = json(&String::from_utf8(output.stdout).unwrap());
    assert!(
        list.as_object()
            .is_some_and(|l| l.get("datastores").is_none()),
        "{list}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_of_many_by_selector_follows_datastores_created_later_and_resumes() {
    let (server, sim, dir) = with_datastore().await;
    let address = sim.addr.to_string();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_netsync"));
    command
        .args([
            "--server",
            &server.url(),
            "watch",
            "-l",
            "env=lab",
            "-o",
            "json",
        ])
        .env_remove("NETSYNC_SERVER");
    let watch = Process::start("netsync watch -l", command, Echo::default()).unwrap();
    let json_line = |want: fn(&serde_json::Value) -> bool| {
        move |line: &netsync_testkit::process::Line| {
            let event = line.json()?;
            (line.stream == Stream::Stdout && want(&event)).then_some(event)
        }
    };
    watch
        .output()
        .wait_for(
            DEADLINE,
            json_line(|e| e["datastore"] == "r1" && e["baseline"].is_object()),
        )
        .expect("r1's Baseline");
    let progress = watch
        .output()
        .wait_for(DEADLINE, json_line(|e| e["progress"].is_object()))
        .expect("a Progress after the Baselines");
    let token = progress["resumeToken"].as_str().unwrap().to_string();

    // Created while it runs: one matching, one not.
    for (name, env) in [("r2", "prod"), ("r3", "lab")] {
        let spec = file(
            &dir,
            &format!("{name}.yaml"),
            &spec_yaml(name, &address, env),
        );
        server.ok(&["datastore", "create", "-f", &spec]).await;
    }
    let baseline = watch
        .output()
        .wait_for(
            DEADLINE,
            json_line(|e| e["datastore"] == "r3" && e["baseline"].is_object()),
        )
        .expect("r3's Baseline");
    assert_eq!(baseline["baseline"]["reason"], "created");
    watch
        .output()
        .wait_for(
            DEADLINE,
            json_line(|e| e["datastore"] == "r3" && e["commit"].is_object()),
        )
        .expect("r3's first commit");
    assert!(
        watch
            .output()
            .lines()
            .iter()
            .all(|line| line.json().is_none_or(|e| e["datastore"] != "r2")),
        "r2 does not match"
    );

    // Resumed in text form from the first token: r1 continues (no new
    // Baseline), r3 was not in the token (a Baseline of its own).
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_netsync"));
    command
        .args(["--server", &server.url(), "watch", "-l", "env=lab"])
        .args(["--resume-token", &token])
        .env_remove("NETSYNC_SERVER");
    let resumed = Process::start("netsync watch --resume-token", command, Echo::default()).unwrap();
    let progress_line = resumed
        .output()
        .wait_for(DEADLINE, |line| {
            (line.stream == Stream::Stdout && line.text.starts_with("progress --resume-token "))
                .then(|| line.text.clone())
        })
        .expect("a progress line with its token");
    let text: Vec<String> = resumed
        .output()
        .lines()
        .into_iter()
        .filter(|line| line.stream == Stream::Stdout)
        .map(|line| line.text.clone())
        .collect();
    assert!(
        text.iter().any(|l| l.starts_with("r3 0 baseline")),
        "{text:?}"
    );
    assert!(
        !text
            .iter()
            .any(|l| l.starts_with("r1 ") && l.contains("baseline")),
        "{text:?}"
    );
    assert!(progress_line.len() > "progress --resume-token ".len());
}
