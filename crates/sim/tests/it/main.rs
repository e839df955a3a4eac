//! netsync-sim's integration tests, in one binary: the simulator in this
//! process on loopback, driven by our gNMI client and by clients from outside
//! this project (pygnmi, grpcurl). What every test needs comes from
//! `netsync-testkit`.

mod auth_tls;
mod faults;
mod gnmi;
mod grpcurl;
mod pygnmi;
mod subscribe;
