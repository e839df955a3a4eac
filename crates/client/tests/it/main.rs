//! Integration tests of netsync-client, one binary: the `netsync` CLI
//! ([`cli`]) against netsyncd and the simulator.

mod cli;
mod support;
