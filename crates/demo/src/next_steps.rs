//! The grpcurl commands the demo suggests at the end, for the addresses it
//! actually serves on. They are written for grpcurl 1.8.6 with reflection:
//! JSON field names in lowerCamelCase, enums by name, one command per line so
//! that each can be copied (and the tests run them as printed).

use std::net::SocketAddr;

use super::DATASTORE;

/// One suggested command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What it shows.
    pub what: &'static str,
    /// The shell command line.
    pub command: String,
    /// Whether it streams until interrupted.
    pub streams: bool,
}

/// The commands to try against netsyncd on `api` and the simulated device on
/// `sim`; WatchSync replays from `after_dump`, the first revision after the
/// initial dump (which would be one large message of every leaf).
pub fn steps(api: SocketAddr, sim: SocketAddr, after_dump: u64) -> Vec<Step> {
    let call = |body: &str, method: &str| {
        format!("grpcurl -plaintext -d '{body}' {api} netsync.v1.NetSync/{method}")
    };
    let step = |what, command, streams| Step {
        what,
        command,
        streams,
    };
    vec![
        step(
            "the services netsyncd serves (server reflection)",
            format!("grpcurl -plaintext {api} list"),
            false,
        ),
        step(
            "the datastore: its spec and live status (state, revision, leaves, counters)",
            call(&format!(r#"{{"name":"{DATASTORE}"}}"#), "GetDatastore"),
            false,
        ),
        step(
            "a subtree of running, at one consistent revision",
            call(
                &format!(r#"{{"datastore":"{DATASTORE}","path":"/system/config"}}"#),
                "GetRunning",
            ),
            false,
        ),
        step(
            "where the device differs from the intents (nothing, after the revert)",
            call(
                &format!(r#"{{"datastore":"{DATASTORE}"}}"#),
                "GetDeviations",
            ),
            false,
        ),
        step(
            "the commits after the initial dump (intent, drift, revert), then live ones (Ctrl-C to stop)",
            call(
                &format!(r#"{{"datastore":"{DATASTORE}","fromRevision":{after_dump}}}"#),
                "WatchSync",
            ),
            true,
        ),
        step(
            "declare another intent: netsync sets it on the device at once",
            call(
                &format!(
                    r#"{{"datastore":"{DATASTORE}","intent":{{"name":"dns","priority":20,"updates":[{{"path":"/system/config/domain-name","value":{{"stringVal":"example.net"}}}}]}}}}"#
                ),
                "SetIntent",
            ),
            false,
        ),
        step(
            "make the device drift yourself (its control API), and watch netsync put it back",
            format!(
                r#"grpcurl -plaintext -d '{{"updates":[{{"path":"/system/config/hostname","value":{{"stringVal":"edited-again"}}}}]}}' {sim} netsync.sim.v1.SimControl/SetLeaves"#
            ),
            false,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_name_the_served_addresses_and_carry_valid_json() {
        let api: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let sim: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let steps = steps(api, sim, 2);
        assert!(
            steps
                .iter()
                .any(|s| s.command.contains(r#""fromRevision":2"#))
        );
        assert_eq!(steps.iter().filter(|s| s.streams).count(), 1);
        for step in &steps {
            assert!(step.command.starts_with("grpcurl -plaintext "), "{step:?}");
            let target = if step.command.contains("SimControl") {
                "127.0.0.1:40000"
            } else {
                "127.0.0.1:50051"
            };
            assert!(step.command.contains(target), "{step:?}");
            if let Some((_, rest)) = step.command.split_once("-d '") {
                let body = rest.split_once('\'').unwrap().0;
                let json: serde_json::Value =
                    serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: {e}"));
                assert!(json.is_object());
            }
        }
    }
}
