//! The answers of GetIntent, ListIntents and GetDeviations, built the same
//! way whoever answers: the replica that syncs the datastore, from its sync,
//! or, in replica mode, any other replica, from the database (the stored
//! intents with their recorded statuses, and running at its newest
//! revision; see [`crate::status_record`]).

use netsync_core::intent::{Deviation, Intended};
use netsync_core::running::Running;
use netsync_proto::netsync::v1 as pb;

use crate::convert::{self, ValueFormat};
use crate::error::Error;
use crate::log::CommitLog;
use crate::store::{Store, StoredDatastore};

use super::page;

/// What a list call asked for: its page size in force and where its page
/// starts (see [`page`]).
pub struct PageRequest {
    scope: String,
    after: Option<String>,
    size: usize,
}

impl PageRequest {
    /// The page of list `scope` a request's `page_size` and `page_token`
    /// ask for; INVALID_ARGUMENT naming the field otherwise.
    pub fn new(scope: String, page_size: i32, page_token: &str) -> Result<Self, Error> {
        let size = page::size(page_size)?;
        let after = page::after(&scope, page_token)?;
        Ok(Self { scope, after, size })
    }

    /// The page scope of the intents of `datastore`.
    pub fn intents(datastore: &str, page_size: i32, page_token: &str) -> Result<Self, Error> {
        Self::new(format!("intents\n{datastore}"), page_size, page_token)
    }

    /// The page scope of the deviations of `datastore`.
    pub fn deviations(datastore: &str, page_size: i32, page_token: &str) -> Result<Self, Error> {
        Self::new(format!("deviations\n{datastore}"), page_size, page_token)
    }
}

/// A page of `intents` (every intent of the datastore, in any order).
pub fn intents_page(
    mut intents: Vec<pb::Intent>,
    request: &PageRequest,
) -> pb::ListIntentsResponse {
    intents.sort_by(|a, b| a.name.cmp(&b.name));
    let (intents, next_page_token) = page::page(
        intents,
        |i| &i.name,
        &request.scope,
        request.after.as_deref(),
        request.size,
    );
    pb::ListIntentsResponse {
        intents,
        next_page_token,
    }
}

/// A page of the `deviations` of running at `revision`, values in `format`.
pub fn deviations_page<'a>(
    revision: u64,
    deviations: impl IntoIterator<Item = &'a Deviation>,
    format: ValueFormat,
    request: &PageRequest,
) -> pb::GetDeviationsResponse {
    let mut deviations: Vec<pb::Deviation> = deviations
        .into_iter()
        .map(|d| format.deviation(convert::deviation_to_proto(d)))
        .collect();
    deviations.sort_by(|a, b| a.path.cmp(&b.path));
    let (deviations, next_page_token) = page::page(
        deviations,
        |d| &d.path,
        &request.scope,
        request.after.as_deref(),
        request.size,
    );
    pb::GetDeviationsResponse {
        revision,
        deviations,
        next_page_token,
    }
}

/// The deviations of `ds` from the database, for a datastore another
/// replica syncs: running at its newest stored revision, and the stored
/// intents today's validation takes (those its owner syncs), merged by the
/// owner's own [`Intended`]. Returns that revision with them: at the same
/// revision and intents, the owner's answer.
pub async fn stored_deviations(
    store: &Store,
    log: &CommitLog,
    ds: &StoredDatastore,
) -> Result<(u64, Vec<Deviation>), Error> {
    let name = ds.spec.name.as_str();
    // With no commit left (compacted up to the newest snapshot), that
    // snapshot is the current revision.
    let revision = match log.newest(name).await? {
        Some(newest) => newest,
        None => log.oldest_readable(name).await?.unwrap_or(0),
    };
    let running = if revision == 0 {
        Running::new()
    } else {
        log.read_at(name, revision).await?
    };
    let intents: Vec<_> = store
        .list_intents(name)
        .await?
        .into_iter()
        .filter_map(|proto| convert::check_stored_intent(&ds.spec, proto).ok())
        .collect();
    // Proportional to the intents' claims (and running below their
    // absence claims): on the blocking pool, as large reads are.
    let deviations = tokio::task::spawn_blocking(move || {
        Intended::from_intents(intents, &running)
            .deviations()
            .cloned()
            .collect()
    })
    .await
    .map_err(|e| Error::Internal(format!("computing deviations failed: {e}")))?;
    Ok((revision, deviations))
}
