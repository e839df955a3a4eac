//! Micro-benchmarks of the engine's hot paths, one group each: a path read
//! and printed, a notification turned into delta operations, a delta
//! committed to running (apply, and apply plus the durable write), and running
//! loaded back from the store (what restart does).
//!
//! `cargo bench -p netsync-bench --bench hot_paths`; figures in
//! `docs/BENCHMARKS.md`. The device shape is the simulator's: keyed, 5 to 7
//! element paths of about 100 bytes, scalar values.

use std::hint::black_box;
use std::sync::Arc;
use std::time::SystemTime;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use netsync_core::notification::{self, Decoder, Prepared};
use netsync_core::path::{Path, write_canonical_gnmi};
use netsync_core::running::{Change, Delta, Key, Running, Value};
use netsync_core::sync::{Committed, Persist};
use netsync_proto::gnmi::{self, typed_value};
use netsync_proto::netsync::v1 as pb;
use netsync_server::convert::datastore_from_proto;
use netsync_server::log::{CommitLog, Retention};
use netsync_server::store::Store;
use prost::Message as _;

/// Path of leaf `i` of a device: 64 interfaces, 16 subinterfaces each, a
/// handful of counters per subinterface.
fn leaf_path(i: usize) -> String {
    const LEAVES: [&str; 8] = [
        "in-octets",
        "in-pkts",
        "in-errors",
        "in-discards",
        "out-octets",
        "out-pkts",
        "out-errors",
        "out-discards",
    ];
    format!(
        "/interfaces/interface[name=ethernet-1/{}]/subinterfaces/subinterface[index={}]/state/counters/{}",
        i / 128,
        (i / 8) % 16,
        LEAVES[i % 8]
    )
}

fn value(i: usize) -> Value {
    Value {
        value: Some(typed_value::Value::UintVal(i as u64 * 7919)),
    }
}

fn running(leaves: usize) -> Running {
    Running::from_leaves((0..leaves).map(|i| (Key::from(leaf_path(i)), value(i))))
}

/// One notification of `updates` leaves starting at leaf `from`, with the
/// interface prefix in `prefix` as a device would send it.
fn notification(from: usize, updates: usize) -> gnmi::Notification {
    gnmi::Notification {
        prefix: Some(Path::parse("/interfaces").unwrap().to_gnmi()),
        update: (from..from + updates)
            .map(|i| {
                let mut path = Path::parse(&leaf_path(i)).unwrap().to_gnmi();
                path.elem.remove(0);
                gnmi::Update {
                    path: Some(path),
                    val: Some(value(i)),
                    ..Default::default()
                }
            })
            .collect(),
        ..Default::default()
    }
}

fn paths(c: &mut Criterion) {
    let mut group = c.benchmark_group("path");
    let text = leaf_path(12_345);
    let gnmi_path = Path::parse(&text).unwrap().to_gnmi();
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse and print", |b| {
        b.iter(|| Path::parse(black_box(&text)).unwrap().to_string())
    });
    group.bench_function("canonical from gNMI", |b| {
        let mut out = String::new();
        b.iter(|| {
            write_canonical_gnmi(None, black_box(&gnmi_path), &mut out).unwrap();
            out.len()
        })
    });
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("notification");
    let n = notification(0, 1000);
    let decoder = Decoder::new(&[]);
    group.throughput(Throughput::Elements(1000));
    group.bench_function("1000 updates into an open delta", |b| {
        b.iter_batched(
            Delta::new,
            |mut delta| {
                decoder.apply(black_box(&n), &mut delta).unwrap();
                delta
            },
            BatchSize::SmallInput,
        )
    });
    let wire = gnmi::SubscribeResponse {
        response: Some(gnmi::subscribe_response::Response::Update(n.clone())),
        ..Default::default()
    }
    .encode_to_vec();
    group.bench_function("1000 updates read from the wire into an open delta", |b| {
        b.iter_batched(
            Delta::new,
            |mut delta| {
                match notification::prepare(black_box(&wire)) {
                    Some(Prepared::Notification(n)) => n.apply(&mut delta),
                    _ => unreachable!("the fast path reads scalars"),
                };
                delta
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("1000 updates into a dump", |b| {
        b.iter_batched(
            || Delta::replacing(&[Path::root()]),
            |mut delta| {
                decoder.apply(black_box(&n), &mut delta).unwrap();
                delta
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("commit");
    let base = running(100_000);
    let churn = |changes: usize| {
        let mut delta = Delta::new();
        for j in 0..changes {
            let i = (j * 7_919) % 100_000;
            delta.update(Key::from(leaf_path(i)), value(i + 1));
        }
        delta
    };
    for changes in [100, 10_000, 80_000] {
        group.throughput(Throughput::Elements(changes as u64));
        group.bench_function(format!("apply {changes} changes to 100k leaves"), |b| {
            b.iter_batched(|| churn(changes), |d| base.apply(d), BatchSize::LargeInput)
        });
    }
    let dump = || {
        let mut delta = Delta::replacing(&[Path::root()]);
        for i in 0..100_000 {
            delta.update_ref(&leaf_path(i), &value(i + 1));
        }
        delta
    };
    group.throughput(Throughput::Elements(100_000));
    group.bench_function("apply a 100k-leaf dump (resync)", |b| {
        b.iter_batched(dump, |d| base.apply(d), BatchSize::LargeInput)
    });

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&runtime, dir.path());
    let mut revision = 0;
    for changes in [100, 10_000] {
        let (after, change) = base.apply(churn(changes));
        group.throughput(Throughput::Elements(changes as u64));
        group.bench_function(format!("persist {changes} changes (SQLite)"), |b| {
            b.iter(|| {
                revision += 1;
                persist(&runtime, &log, revision, &change, &after);
            })
        });
    }
    group.finish();
}

/// A store in `dir` holding the datastore `bench` (commits refer to it).
fn open_log(runtime: &tokio::runtime::Runtime, dir: &std::path::Path) -> Arc<CommitLog> {
    runtime.block_on(async {
        let store = Store::open(dir.join("bench.db").to_str().unwrap())
            .await
            .unwrap();
        let spec = datastore_from_proto(
            pb::Datastore {
                name: "bench".into(),
                target: Some(pb::Target {
                    address: "127.0.0.1:1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            "datastore",
        )
        .unwrap();
        store
            .create_datastore(spec, Default::default(), SystemTime::now())
            .await
            .unwrap();
        CommitLog::new(store, Retention::default())
    })
}

fn persist(
    runtime: &tokio::runtime::Runtime,
    log: &Arc<CommitLog>,
    revision: u64,
    change: &Change,
    running: &Running,
) {
    let commit = Committed {
        revision,
        time: SystemTime::now(),
        replace: false,
        change,
        running,
    };
    runtime
        .block_on(log.persist("bench", commit))
        .expect("persisted");
}

fn load(c: &mut Criterion) {
    let mut group = c.benchmark_group("restart");
    group.sample_size(10);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(&runtime, dir.path());
    let full = running(100_000);
    let (_, change) = Running::new().apply({
        let mut d = Delta::replacing(&[Path::root()]);
        full.iter().for_each(|(k, v)| d.update_ref(&k, &v));
        d
    });
    persist(&runtime, &log, 1, &change, &full);
    group.throughput(Throughput::Elements(100_000));
    group.bench_function("load 100k leaves from SQLite", |b| {
        b.iter(|| runtime.block_on(log.load("bench")).unwrap().running.len())
    });
    group.finish();
}

criterion_group!(benches, paths, decode, commit, load);
criterion_main!(benches);
