//! What writing an intent would do now (SetIntent with `validate_only`):
//! the result [`crate::reconcile::dry_run`] plans and the API answers.

use netsync_core::intent::Deviation;
use netsync_proto::gnmi;

/// What writing an intent would do now (SetIntent with `validate_only`).
#[derive(Debug)]
pub struct DryRun {
    /// The revision of running it was planned at.
    pub revision: u64,
    /// The first Set the write's job would send; `None`: nothing to send.
    pub set: Option<gnmi::SetRequest>,
    /// Deviations now that the write and that Set resolve.
    pub clears: Vec<Deviation>,
    /// Deviations that would remain after them.
    pub remaining: Vec<Deviation>,
}
