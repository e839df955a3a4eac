//! The netsync domain: gNMI path grammar and canonical form, values, and the
//! sync engine. Knows neither SQLite nor the netsync gRPC API.

pub mod datastore;
pub mod path;

pub use path::{Path, PathElem, PathError};
