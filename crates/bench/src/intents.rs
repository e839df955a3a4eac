//! Intent writes at a steady rate, spread over many datastores, as a fleet's
//! controllers make them: SetIntent of an intent on one datastore, its
//! DeleteIntent a fixed time later, the next intent on the next datastore.
//! Each call is timed and its gRPC code kept.
//!
//! The schedule is open-loop: a call starts at its time whether or not the
//! calls before it have been answered, so a server that stalls meets the
//! calls that pile up meanwhile, as it would in production.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use netsync_proto::netsync::v1 as pb;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::api::Netsync;
use crate::markers::Latency;

/// Name of the intent that is set and deleted again.
pub const WRITTEN: &str = "bench-write";

/// What to write and how often.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Datastores written to, in turn, each with the leaf its intents claim.
    pub targets: Vec<(String, pb::Leaf)>,
    /// SetIntent and DeleteIntent calls per second, together.
    pub writes_per_second: f64,
    /// From an intent's SetIntent to its DeleteIntent (rounded so that the
    /// deletes fall halfway between two sets).
    pub lifetime: Duration,
    /// Longest wait for an answer; a call still unanswered then counts as
    /// DEADLINE_EXCEEDED.
    pub timeout: Duration,
}

/// Which call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// SetIntent.
    Set,
    /// DeleteIntent.
    Delete,
}

/// One call made.
#[derive(Debug, Clone)]
pub struct Record {
    /// Which call.
    pub call: Call,
    /// When it was sent.
    pub started: Instant,
    /// Until its answer.
    pub took: Duration,
    /// The answer's code.
    pub code: tonic::Code,
    /// The answer's message, for an error.
    pub message: String,
}

/// Writes intents by [`Plan`] until stopped.
pub struct Writer {
    stop: watch::Sender<bool>,
    /// `None` once stopped.
    task: Option<JoinHandle<anyhow::Result<Vec<Record>>>>,
}

impl Writer {
    /// Starts writing, the first SetIntent now.
    pub fn start(api: Netsync, plan: Plan) -> Self {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(write(api, plan, stopped));
        Self {
            stop,
            task: Some(task),
        }
    }

    /// Stops starting calls, lets the calls in flight be answered (an intent
    /// set and not yet due for deletion stays), and returns every call made.
    pub async fn stop(mut self) -> anyhow::Result<Vec<Record>> {
        let _ = self.stop.send(true);
        let task = self
            .task
            .take()
            .ok_or_else(|| anyhow::anyhow!("intent writer stopped twice"))?;
        task.await?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The writer's task: one SetIntent every `2 / writes_per_second`, each
/// intent in a task of its own (its set, then its delete).
async fn write(
    api: Netsync,
    plan: Plan,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::new();
    if plan.writes_per_second <= 0.0 {
        return Ok(records);
    }
    let mut targets = plan.targets.iter().cycle();
    let period = set_period(plan.writes_per_second);
    let lifetime = delete_after(plan.writes_per_second, plan.lifetime);
    let mut intents = JoinSet::new();
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stopped.changed() => break,
            Some(done) = intents.join_next() => records.extend(done?),
            _ = ticker.tick() => {
                let Some((datastore, leaf)) = targets.next() else { break };
                intents.spawn(intent(
                    api.clone(),
                    datastore.clone(),
                    leaf.clone(),
                    Instant::now() + lifetime,
                    plan.timeout,
                    stopped.clone(),
                ));
            }
        }
    }
    while let Some(done) = intents.join_next().await {
        records.extend(done?);
    }
    records.sort_by_key(|r| r.started);
    Ok(records)
}

/// Time between two SetIntent calls: a set and a delete per intent.
fn set_period(writes_per_second: f64) -> Duration {
    Duration::from_secs_f64(2.0 / writes_per_second)
}

/// How long after its SetIntent an intent's DeleteIntent is sent: `lifetime`
/// rounded so that the deletes fall halfway between two sets.
pub fn delete_after(writes_per_second: f64, lifetime: Duration) -> Duration {
    let period = set_period(writes_per_second);
    let periods = (lifetime.as_secs_f64() / period.as_secs_f64()).round();
    period.mul_f64(periods + 0.5)
}

/// One intent on `datastore`: set now, deleted at `delete_at` unless the
/// writer stops first. A set that failed is not deleted (there is nothing to
/// delete, and a NOT_FOUND would count its error twice).
async fn intent(
    mut api: Netsync,
    datastore: String,
    leaf: pb::Leaf,
    delete_at: Instant,
    timeout: Duration,
    mut stopped: watch::Receiver<bool>,
) -> Vec<Record> {
    let request = pb::SetIntentRequest {
        datastore: datastore.clone(),
        intent: Some(pb::Intent {
            name: WRITTEN.into(),
            priority: 10,
            updates: vec![leaf],
            ..Default::default()
        }),
        validate_only: false,
        ..Default::default()
    };
    let set = timed(Call::Set, timeout, api.client.set_intent(request)).await;
    let was_set = set.code == tonic::Code::Ok;
    let mut records = vec![set];
    if !was_set {
        return records;
    }
    tokio::select! {
        biased;
        _ = stopped.wait_for(|stop| *stop) => return records,
        () = tokio::time::sleep_until(delete_at.into()) => {}
    }
    let request = pb::DeleteIntentRequest {
        datastore,
        name: WRITTEN.into(),
        ..Default::default()
    };
    records.push(timed(Call::Delete, timeout, api.client.delete_intent(request)).await);
    records
}

/// Runs `call`, bounded by `timeout`, and records it.
async fn timed<T>(
    call: Call,
    timeout: Duration,
    answer: impl Future<Output = Result<T, tonic::Status>>,
) -> Record {
    let started = Instant::now();
    let (code, message) = match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(_)) => (tonic::Code::Ok, String::new()),
        Ok(Err(status)) => (status.code(), status.message().to_string()),
        Err(_) => (
            tonic::Code::DeadlineExceeded,
            format!("no answer within {timeout:?} (the harness gave up)"),
        ),
    };
    Record {
        call,
        started,
        took: started.elapsed(),
        code,
        message,
    }
}

/// What the calls of one kind started in a window came to.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Calls started in the window.
    pub calls: usize,
    /// Their latency, answered or not (an error's answer is timed too).
    pub latency: Option<Latency>,
}

/// The calls of kind `call` started from `from` to `to`.
pub fn summarise(records: &[Record], call: Call, from: Instant, to: Instant) -> Summary {
    let took: Vec<Duration> = records
        .iter()
        .filter(|r| r.call == call && r.started >= from && r.started <= to)
        .map(|r| r.took)
        .collect();
    Summary {
        calls: took.len(),
        latency: Latency::of(&took),
    }
}

/// The calls that did not answer OK, by code (in the order of the codes'
/// numbers): how many, and the first one's message.
pub fn errors(records: &[Record]) -> Vec<(tonic::Code, u64, String)> {
    let mut errors: BTreeMap<i32, (u64, String)> = BTreeMap::new();
    for record in records.iter().filter(|r| r.code != tonic::Code::Ok) {
        errors
            .entry(record.code as i32)
            .or_insert_with(|| (0, record.message.clone()))
            .0 += 1;
    }
    errors
        .into_iter()
        .map(|(code, (count, message))| (tonic::Code::from(code), count, message))
        .collect()
}

/// The report key of the count of intent calls that answered `code`.
pub fn errors_key(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "intent_ok_calls",
        C::Cancelled => "intent_errors_cancelled",
        C::Unknown => "intent_errors_unknown",
        C::InvalidArgument => "intent_errors_invalid_argument",
        C::DeadlineExceeded => "intent_errors_deadline_exceeded",
        C::NotFound => "intent_errors_not_found",
        C::AlreadyExists => "intent_errors_already_exists",
        C::PermissionDenied => "intent_errors_permission_denied",
        C::ResourceExhausted => "intent_errors_resource_exhausted",
        C::FailedPrecondition => "intent_errors_failed_precondition",
        C::Aborted => "intent_errors_aborted",
        C::OutOfRange => "intent_errors_out_of_range",
        C::Unimplemented => "intent_errors_unimplemented",
        C::Internal => "intent_errors_internal",
        C::Unavailable => "intent_errors_unavailable",
        C::DataLoss => "intent_errors_data_loss",
        C::Unauthenticated => "intent_errors_unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(call: Call, started: Instant, ms: u64, code: tonic::Code) -> Record {
        Record {
            call,
            started,
            took: Duration::from_millis(ms),
            code,
            message: format!("{code:?}"),
        }
    }

    #[test]
    fn calls_are_summarised_by_kind_and_window() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let records = vec![
            record(Call::Set, at(0), 500, tonic::Code::Ok),
            record(Call::Set, at(100), 10, tonic::Code::Ok),
            record(Call::Delete, at(150), 30, tonic::Code::Ok),
            record(Call::Set, at(200), 20, tonic::Code::Internal),
            record(Call::Set, at(900), 900, tonic::Code::Ok),
        ];
        let sets = summarise(&records, Call::Set, at(100), at(800));
        assert_eq!(sets.calls, 2);
        let latency = sets.latency.unwrap();
        assert_eq!(latency.p50, Duration::from_millis(10));
        assert_eq!(latency.max, Duration::from_millis(20));
        let deletes = summarise(&records, Call::Delete, at(100), at(800));
        assert_eq!(deletes.calls, 1);
        let none = summarise(&records, Call::Delete, at(300), at(800));
        assert!(none.calls == 0 && none.latency.is_none());
    }

    #[test]
    fn deletes_fall_between_sets() {
        let after = delete_after(10.0, Duration::from_secs(5));
        assert!((after.as_secs_f64() - 5.1).abs() < 1e-9, "{after:?}");
        let after = delete_after(10.0, Duration::from_secs(1));
        assert!((after.as_secs_f64() - 1.1).abs() < 1e-9, "{after:?}");
    }

    #[test]
    fn errors_are_counted_by_code() {
        let t0 = Instant::now();
        let records = vec![
            record(Call::Set, t0, 1, tonic::Code::Unavailable),
            record(Call::Set, t0, 1, tonic::Code::Ok),
            record(Call::Set, t0, 1, tonic::Code::Internal),
            record(Call::Delete, t0, 1, tonic::Code::Internal),
        ];
        let errors = errors(&records);
        let counts: Vec<_> = errors.iter().map(|(code, n, _)| (*code, *n)).collect();
        assert_eq!(
            counts,
            [(tonic::Code::Internal, 2), (tonic::Code::Unavailable, 1)]
        );
        assert_eq!(errors[0].2, "Internal");
        assert_eq!(errors_key(tonic::Code::Internal), "intent_errors_internal");
    }
}
