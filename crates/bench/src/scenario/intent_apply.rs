//! `intent-apply`: how long an intent takes to reach the device and be
//! confirmed (SetIntent to its status APPLIED) while the device churns.
//!
//! One simulated device churning at a steady rate, synced by several
//! datastores (each with its own gNMI target name, as in `fleet`), half of
//! them in PROTO encoding and half in JSON_IETF, revert on. On each datastore
//! a client writes one intent over and over, a new value in each of its
//! leaves every time, and times each write from its SetIntent call, and from
//! SetIntent's answer, to the WatchSync APPLIED event of the job that set
//! those values. Then GetIntent must say APPLIED, at a revision no older than
//! the write: the event is published right after the job marks the status
//! (`reconcile.rs`: the same plan step), so the event's arrival is when a
//! client could first read APPLIED, to within the event's delivery, without
//! the granularity of polling.
//!
//! The intents claim leaves created after churn chose its own, so churn
//! never changes them: they stand for configuration, the device's churn for
//! its state. Each client waits for APPLIED before its next write (a write
//! made while the previous one is applying is taken into that job and the
//! previous write never reports APPLIED of its own), and pauses first by a
//! fraction of the commit interval that goes round a low-discrepancy
//! sequence: writes fall evenly over the phase of the commit cycle, instead
//! of all right after a commit (which is when the previous APPLIED comes).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use netsync_proto::gnmi;
use netsync_proto::gnmi::typed_value::Value;
use netsync_proto::netsync::v1 as pb;
use pb::net_sync_client::NetSyncClient;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use super::{Ctx, Rig, resyncs, settle_and_compare};
use crate::api::datastore;
use crate::markers::{Applied, Latency, Markers, Watcher, analyse};
use crate::report::Report;

/// Name of the intent each client writes.
const INTENT: &str = "bench-apply";

/// Leaves the intent sets: a text, a number and a flag, so that both
/// encodings' value forms are confirmed (in JSON_IETF a uint64 is a JSON
/// string, RFC 7951).
const LEAVES: [&str; 3] = ["description", "mtu", "enabled"];

/// Runs the scenario.
pub async fn run(ctx: &Ctx, dir: &Path) -> anyhow::Result<Report> {
    let sizes = &ctx.sizes;
    let mut rig = Rig::start(ctx, dir, sizes.apply_leaves).await?;
    let names: Vec<String> = (0..sizes.apply_datastores)
        .map(|i| format!("apply-{i}"))
        .collect();
    for (i, name) in names.iter().enumerate() {
        let mut spec = datastore(name, rig.sim.addr, sizes.commit_interval);
        if let Some(target) = spec.target.as_mut() {
            target.target_name = name.clone();
            target.encoding = encoding(i) as i32;
        }
        // Revert on, with the default debounce: what a user of intents runs.
        spec.revert = Some(pb::RevertConfig {
            enabled: true,
            debounce: None,
        });
        rig.api.create(spec).await?;
    }
    for name in &names {
        rig.api.wait_in_sync(name, sizes.deadline).await?;
    }

    // As `Churning::start`, with a watcher on every datastore: churn picks
    // its leaves now, so the intents' leaves, created later, are never
    // churned; markers give the commit latency of the first datastore.
    rig.device.fix_churn_population().await?;
    let mut watchers = Vec::new();
    for name in &names {
        watchers.push(Arc::new(Watcher::open(&rig.netsyncd.url(), name).await?));
    }
    rig.device.start_churn(sizes.apply_churn_rate, 3).await?;
    let markers = Markers::start(rig.device.control.clone(), sizes.marker_period, 0);

    let window_from = Instant::now() + sizes.warmup;
    let window_to = window_from + sizes.apply_window;
    let mut clients = JoinSet::new();
    for (i, (name, watcher)) in names.iter().zip(&watchers).enumerate() {
        clients.spawn(write_and_wait(
            rig.api.client.clone(),
            name.clone(),
            Arc::clone(watcher),
            Pacing {
                first: i,
                interval: sizes.commit_interval,
                until: window_to,
                deadline: sizes.deadline,
            },
        ));
    }
    rig.hold(sizes.warmup).await?;
    let phase = rig.measure(sizes.apply_window, &names[0]).await?;
    let mut writes = Vec::new();
    while let Some(done) = clients.join_next().await {
        writes.extend(done.context("an intent client panicked")??);
    }

    rig.device.stop_churn().await?;
    let sent = markers.stop().await?;
    if let Some(last) = sent.last() {
        watchers[0]
            .wait_marker(last.id, sizes.commit_interval + sizes.deadline)
            .await?;
    }
    let commits = analyse(&sent, &watchers[0].log().arrivals, phase.from, phase.to)
        .context("commit latency during the writes")?;
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    settle_and_compare(&mut rig.device, &mut rig.api, &name_refs, sizes.deadline).await?;
    rig.sim.check_running()?;
    rig.netsyncd.check_running()?;
    let mut resynced = 0;
    let mut reconnects = 0;
    for name in &names {
        let status = rig.api.status(name).await?;
        resynced += resyncs(&status);
        reconnects += status.stats.as_ref().map_or(0, |s| s.reconnects);
    }

    let counted: Vec<&Write> = writes
        .iter()
        .filter(|w| !w.first && w.started >= phase.from && w.started <= phase.to)
        .collect();
    let of = |pick: fn(&Write) -> Duration, encoding: Option<pb::Encoding>| {
        let values: Vec<Duration> = counted
            .iter()
            .filter(|w| encoding.is_none_or(|e| w.encoding == e))
            .map(|w| pick(w))
            .collect();
        Latency::of(&values)
    };
    let from_call = of(|w| w.applied - w.started, None);
    let from_answer = of(|w| w.applied - w.answered, None);
    let set_intent = of(|w| w.answered - w.started, None);
    let proto = of(|w| w.applied - w.started, Some(pb::Encoding::Proto));
    let json_ietf = of(|w| w.applied - w.started, Some(pb::Encoding::JsonIetf));

    let interval_ms = sizes.commit_interval.as_secs_f64() * 1e3;
    let mut report = Report::new("intent-apply", ctx.quick);
    report.count("datastores", names.len() as u64);
    report.count("leaves", rig.leaves);
    report.count("intent_leaves", LEAVES.len() as u64);
    report.rate("churn_rate_asked", sizes.apply_churn_rate);
    report.rate("device_changes_per_second", phase.device_rate());
    report.rate("ingest_updates_per_second", phase.ingest_rate());
    report.number("commit_interval_ms", interval_ms);
    report.count("applies", counted.len() as u64);
    report.millis_if("apply_p50_ms", from_call.map(|l| l.p50));
    report.millis_if("apply_p99_ms", from_call.map(|l| l.p99));
    report.millis_if("apply_max_ms", from_call.map(|l| l.max));
    report.millis_if("after_answer_p50_ms", from_answer.map(|l| l.p50));
    report.millis_if("after_answer_p99_ms", from_answer.map(|l| l.p99));
    report.millis_if("after_answer_max_ms", from_answer.map(|l| l.max));
    report.millis_if("set_intent_p50_ms", set_intent.map(|l| l.p50));
    report.millis_if("set_intent_p99_ms", set_intent.map(|l| l.p99));
    report.millis_if("proto_apply_p99_ms", proto.map(|l| l.p99));
    report.millis_if("json_ietf_apply_p99_ms", json_ietf.map(|l| l.p99));
    // The floor of an apply: its echo has to be committed like any change.
    report.millis_if("commit_latency_p99_ms", commits.latency.map(|l| l.p99));
    report.count("sets", phase.sets);
    report.count("reconnects", reconnects);
    report.count("resyncs", resynced);
    report.flag("running_equals_device", true);
    report.at_most("apply_p99_ms", interval_ms + 200.0);
    report.at_most("reconnects", 0.0);
    report.at_most("resyncs", 0.0);
    report.note(format!(
        "{:.1} s window after {:.1} s of churn; apply = SetIntent called to the WatchSync APPLIED \
         event of the job that set the write's values (GetIntent then checked APPLIED), one \
         client per datastore, each waiting for APPLIED and a pause of up to one commit \
         interval before its next write; after_answer = from SetIntent's answer; datastores \
         alternate PROTO and JSON_IETF; ingest and device rate of the first datastore; \
         commit_latency = marker commit latency on the first datastore",
        sizes.apply_window.as_secs_f64(),
        sizes.warmup.as_secs_f64()
    ));
    Ok(report)
}

/// The encoding of the `i`th datastore: PROTO and JSON_IETF in turn.
fn encoding(i: usize) -> pb::Encoding {
    if i.is_multiple_of(2) {
        pb::Encoding::Proto
    } else {
        pb::Encoding::JsonIetf
    }
}

/// When a client writes.
#[derive(Debug, Clone, Copy)]
struct Pacing {
    /// Where in the pause sequence it starts (its datastore's index, so that
    /// clients do not pause alike).
    first: usize,
    /// The commit interval: pauses are fractions of it.
    interval: Duration,
    /// No write starts after this.
    until: Instant,
    /// Longest wait for a write's APPLIED.
    deadline: Duration,
}

/// One intent write, timed.
#[derive(Debug, Clone)]
struct Write {
    /// The client's first write: it creates the leaves, and is not counted.
    first: bool,
    /// The datastore's encoding.
    encoding: pb::Encoding,
    /// SetIntent called.
    started: Instant,
    /// SetIntent answered.
    answered: Instant,
    /// The APPLIED event of the job that set its values arrived.
    applied: Instant,
}

/// The pause before write `k`: the fractional part of `k` times the golden
/// ratio, of `interval` (a sequence that covers [0, 1) evenly at any length).
fn pause(k: usize, interval: Duration) -> Duration {
    const PHI: f64 = 0.618_033_988_749_895;
    interval.mul_f64((k as f64 * PHI).fract())
}

/// The intent of write `k`: every leaf a new value.
fn intent(datastore: &str, k: u64) -> pb::Intent {
    let value = |leaf: &str| match leaf {
        "description" => Value::StringVal(format!("written by netsync-bench, #{k}")),
        "mtu" => Value::UintVal(1500 + k),
        _ => Value::BoolVal(k.is_multiple_of(2)),
    };
    pb::Intent {
        name: INTENT.into(),
        priority: 10,
        updates: LEAVES
            .iter()
            .map(|leaf| pb::Leaf {
                path: format!("/netsync-bench/apply/{datastore}/{leaf}"),
                value: Some(gnmi::TypedValue {
                    value: Some(value(leaf)),
                }),
                owner: String::new(),
            })
            .collect(),
        ..Default::default()
    }
}

/// Whether `event` is the APPLIED of a job that set every leaf of `intent`
/// to its value: the values are new in each write, so only the job of this
/// write (or one that took it in) sets them.
fn applies(event: &Applied, intent: &pb::Intent) -> bool {
    intent
        .updates
        .iter()
        .all(|leaf| event.updates.contains(leaf))
}

/// One client: writes the intent on `datastore`, waits for its APPLIED,
/// checks GetIntent, pauses, again, until `pacing.until`.
async fn write_and_wait(
    mut client: NetSyncClient<Channel>,
    datastore: String,
    watcher: Arc<Watcher>,
    pacing: Pacing,
) -> anyhow::Result<Vec<Write>> {
    let encoding = datastore_encoding(&mut client, &datastore).await?;
    let mut writes = Vec::new();
    for k in 0u64.. {
        if k > 0 {
            tokio::time::sleep(pause(pacing.first + k as usize, pacing.interval)).await;
        }
        if Instant::now() >= pacing.until {
            break;
        }
        let intent = intent(&datastore, k);
        let started = Instant::now();
        let written = client
            .set_intent(pb::SetIntentRequest {
                datastore: datastore.clone(),
                intent: Some(intent.clone()),
                validate_only: false,
                ..Default::default()
            })
            .await
            .with_context(|| format!("SetIntent on {datastore}"))?
            .into_inner();
        let answered = Instant::now();
        let applied = watcher
            .wait_until(
                pacing.deadline,
                &format!("APPLIED of intent write #{k} on {datastore}"),
                |log| {
                    log.applied
                        .iter()
                        .find(|event| event.at >= started && applies(event, &intent))
                        .map(|event| event.at)
                },
            )
            .await?;
        let read = client
            .get_intent(pb::GetIntentRequest {
                datastore: datastore.clone(),
                name: INTENT.into(),
            })
            .await
            .with_context(|| format!("GetIntent on {datastore}"))?
            .into_inner();
        let status = read.status.unwrap_or_default();
        ensure!(
            status.state == pb::IntentState::Applied as i32
                && status.applied_revision >= written.revision,
            "{datastore}: write #{k} (revision {}) had its APPLIED event, but GetIntent says {:?} \
             at revision {} ({:?})",
            written.revision,
            pb::IntentState::try_from(status.state).unwrap_or_default(),
            status.applied_revision,
            status.last_error
        );
        writes.push(Write {
            first: k == 0,
            encoding,
            started,
            answered,
            applied,
        });
    }
    Ok(writes)
}

/// The encoding datastore `name` was created with.
async fn datastore_encoding(
    client: &mut NetSyncClient<Channel>,
    name: &str,
) -> anyhow::Result<pb::Encoding> {
    let spec = client
        .get_datastore(pb::GetDatastoreRequest { name: name.into() })
        .await
        .with_context(|| format!("GetDatastore {name}"))?
        .into_inner();
    let encoding = spec.target.map_or(0, |t| t.encoding);
    Ok(pb::Encoding::try_from(encoding).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_cover_the_interval_evenly() {
        let interval = Duration::from_millis(1000);
        // Any 20 pauses in a row: one in each twentieth of the interval, give
        // or take a neighbour.
        let mut tenths = [0usize; 10];
        for k in 7..27 {
            let p = pause(k, interval);
            assert!(p < interval);
            tenths[(p.as_millis() / 100) as usize] += 1;
        }
        assert!(tenths.iter().all(|&n| (1..=3).contains(&n)), "{tenths:?}");
    }

    #[test]
    fn an_applied_event_is_matched_by_every_value_of_the_write() {
        let at = Instant::now();
        let written = intent("d", 7);
        let event = |updates: Vec<pb::Leaf>| Applied { at, updates };
        let mut more = written.updates.clone();
        more.push(intent("e", 7).updates[0].clone());
        assert!(applies(&event(more), &written));
        // An earlier write's job set other values.
        assert!(!applies(&event(intent("d", 6).updates), &written));
        // A job that set only some of the leaves.
        assert!(!applies(&event(written.updates[..2].to_vec()), &written));
    }

    #[test]
    fn each_write_changes_every_leaf() {
        let (a, b) = (intent("d", 1), intent("d", 2));
        for (x, y) in a.updates.iter().zip(&b.updates) {
            assert_eq!(x.path, y.path);
            assert_ne!(x.value, y.value);
        }
        assert_eq!(encoding(0), pb::Encoding::Proto);
        assert_eq!(encoding(1), pb::Encoding::JsonIetf);
    }
}
