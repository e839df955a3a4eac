//! The sync engine's integration tests, in one binary: the engine against a
//! scripted device (`engine`) and a property test against a model device
//! (`engine_model`), and against devices that do not behave (`caps`), all
//! through `netsync_core::device::fake`; and the ingest's fast path against
//! prost on mutated wire bytes (`wire_differential`).

mod support;

mod caps;
mod engine;
mod engine_model;
mod wire_differential;
