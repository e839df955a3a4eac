//! Datastores for the netsync API, built field by field: a test says only
//! what matters to it, and everything it leaves out is what a client that
//! leaves it out sends (the server's defaults apply).

use std::time::Duration;

use netsync_proto::netsync::v1 as pb;

/// A protobuf duration of `ms` milliseconds.
pub fn millis(ms: u64) -> prost_types::Duration {
    duration(Duration::from_millis(ms))
}

/// A protobuf duration.
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).expect("a test duration fits"),
        nanos: i32::try_from(d.subsec_nanos()).expect("below a second"),
    }
}

/// Builds a [`pb::Datastore`].
#[derive(Debug, Clone)]
pub struct DatastoreBuilder(pb::Datastore);

impl DatastoreBuilder {
    /// A datastore `name` of the device at `address`, with nothing else set.
    pub fn new(name: &str, address: impl ToString) -> Self {
        Self(pb::Datastore {
            name: name.into(),
            target: Some(pb::Target {
                address: address.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// A datastore `name` with every field set, secrets included (a password
    /// and a client key, to check that they never come back), syncing a
    /// device at 127.0.0.1:57400 that is not there.
    pub fn every_field(name: &str) -> Self {
        Self::new(name, "127.0.0.1:57400")
            .tls(pb::TlsConfig {
                ca_pem: "CA".into(),
                cert_pem: "CERT".into(),
                key_pem: "TOP-SECRET-KEY".into(),
                insecure_skip_verify: false,
                server_name: "r1.lab".into(),
            })
            .credentials("admin", "TOP-SECRET-PASSWORD")
            .encoding(pb::Encoding::Proto)
            .target_name("r1")
            .mode(pb::SyncMode::OnChange)
            .paths(&["/interfaces", "/system/aaa"])
            .interval_ms(10_000)
            .commit_interval_ms(500)
            .list_keys(&["/interfaces/interface[name]"])
            .revert(true, 2_000)
    }

    fn target(&mut self) -> &mut pb::Target {
        self.0.target.get_or_insert_with(Default::default)
    }

    fn sync(&mut self) -> &mut pb::SyncConfig {
        self.0.sync.get_or_insert_with(Default::default)
    }

    /// The device's address.
    pub fn address(mut self, address: impl ToString) -> Self {
        self.target().address = address.to_string();
        self
    }

    /// The encoding asked of the device.
    pub fn encoding(mut self, encoding: pb::Encoding) -> Self {
        self.target().encoding = encoding as i32;
        self
    }

    /// TLS towards the device.
    pub fn tls(mut self, tls: pb::TlsConfig) -> Self {
        self.target().tls = Some(tls);
        self
    }

    /// Username and password for the device.
    pub fn credentials(mut self, username: &str, password: &str) -> Self {
        self.target().credentials = Some(pb::Credentials {
            username: username.into(),
            password: password.into(),
        });
        self
    }

    /// Lets the credentials travel without TLS (a lab device).
    pub fn allow_insecure_credentials(mut self) -> Self {
        self.target().allow_insecure_credentials = true;
        self
    }

    /// The gNMI target name.
    pub fn target_name(mut self, name: &str) -> Self {
        self.target().target_name = name.into();
        self
    }

    /// The sync mode.
    pub fn mode(mut self, mode: pb::SyncMode) -> Self {
        self.sync().mode = mode as i32;
        self
    }

    /// The subscribed paths.
    pub fn paths(mut self, paths: &[&str]) -> Self {
        self.sync().paths = paths.iter().map(|p| p.to_string()).collect();
        self
    }

    /// The sample or poll interval.
    pub fn interval_ms(mut self, ms: u64) -> Self {
        self.sync().interval = Some(millis(ms));
        self
    }

    /// How often changes are committed.
    pub fn commit_interval_ms(mut self, ms: u64) -> Self {
        self.sync().commit_interval = Some(millis(ms));
        self
    }

    /// Longest wait for the end of a dump.
    pub fn initial_sync_timeout_ms(mut self, ms: u64) -> Self {
        self.sync().initial_sync_timeout = Some(millis(ms));
        self
    }

    /// Device-side caps: largest message, most leaves, largest leaf value
    /// (0: the server's default).
    pub fn caps(mut self, max_message_bytes: u64, max_leaves: u64, max_leaf_bytes: u64) -> Self {
        let sync = self.sync();
        sync.max_message_bytes = max_message_bytes;
        sync.max_leaves = max_leaves;
        sync.max_leaf_bytes = max_leaf_bytes;
        self
    }

    /// Key names of JSON lists.
    pub fn list_keys(mut self, keys: &[&str]) -> Self {
        self.sync().list_keys = keys.iter().map(|k| k.to_string()).collect();
        self
    }

    /// Whether drift is reverted, and after how long.
    pub fn revert(mut self, enabled: bool, debounce_ms: u64) -> Self {
        self.0.revert = Some(pb::RevertConfig {
            enabled,
            debounce: Some(millis(debounce_ms)),
        });
        self
    }

    /// Adds label `key` = `value`.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0.labels.insert(key.into(), value.into());
        self
    }

    /// The datastore.
    pub fn build(self) -> pb::Datastore {
        self.0
    }

    /// A CreateDatastore request for it.
    pub fn create(self) -> pb::CreateDatastoreRequest {
        create(self.0)
    }
}

/// A CreateDatastore request for `datastore`.
pub fn create(datastore: pb::Datastore) -> pb::CreateDatastoreRequest {
    pb::CreateDatastoreRequest {
        datastore: Some(datastore),
    }
}

/// An intent `name` at `priority` setting string leaves and deleting paths
/// (revertive; set `non_revertive` on the result otherwise).
pub fn intent(name: &str, priority: i32, updates: &[(&str, &str)], deletes: &[&str]) -> pb::Intent {
    pb::Intent {
        name: name.into(),
        priority,
        updates: updates
            .iter()
            .map(|(path, value)| pb::Leaf {
                path: path.to_string(),
                value: Some(crate::gnmi::string(*value)),
                owner: String::new(),
            })
            .collect(),
        deletes: deletes.iter().map(|d| d.to_string()).collect(),
        non_revertive: false,
        revision: 0,
        status: None,
        plan: None,
    }
}
