//! Helpers for the demo's tests: for now only finding grpcurl, a copy of the
//! server tests' finder (crates/server/tests/common/grpcurl.rs).

pub mod grpcurl;
