//! netsyncd's integration tests, in one binary: netsyncd in this process or
//! as its own process, driven over its gRPC API against real gNMI devices
//! (netsync-sim, or the test kit's small scriptable device) on loopback.
//! What every test needs comes from `netsync-testkit`; `support` holds the
//! two ways to start netsyncd, which only this crate can.

mod support;

mod against_sim;
mod api;
mod client_fleet;
mod client_reflector;
mod damaged;
mod device_caps;
mod error_details;
mod health_reflection;
mod incarnation;
mod intent_plan;
mod intent_values;
mod intents;
mod limits;
mod observability;
mod postgres_tls;
mod process;
mod reconcile;
mod reconcile_lifecycle;
mod reconcile_property;
mod replica_intent_reads;
mod replica_intents;
mod replica_reads;
mod replicas;
mod storage;
mod sync;
mod time_travel;
mod tls_api;
mod tls_device;
mod update_list;
mod watch_many;
mod watch_memory;
mod watch_races;
mod wildcard;
