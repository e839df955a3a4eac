//! The netsync domain: gNMI path grammar and canonical form, values, and the
//! sync engine. Knows neither SQLite nor the netsync gRPC API.

pub mod datastore;
pub mod device;
pub mod histogram;
pub mod human;
pub mod intent;
mod leaves;
pub mod notification;
pub mod path;
pub mod running;
pub mod shutdown;
pub mod sync;
pub mod value;
mod wire;

pub use path::{Path, PathElem, PathError};
