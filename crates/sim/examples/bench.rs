//! Throughput benchmark of netsync-sim (not a test: it prints numbers).
//!
//! ```text
//! cargo run --release -p netsync-sim --example bench -- [--leaves N] [--decode count|prost]
//!     [--runs R] [--sim-threads T] [--churn-rate R]
//! ```
//!
//! Starts the simulator in this process on a runtime with T worker threads
//! (default 1, so that the simulator uses one core), and a client on a second
//! runtime with one thread. The client subscribes over loopback gRPC and decodes and
//! discards what it gets, either fully with prost (`--decode prost`) or by
//! walking the protobuf framing and counting updates and deletes without
//! building messages (`--decode count`, the default: prost decoding alone
//! tops out near 650k updates/s on this machine, below what the simulator
//! sends). It measures:
//!
//! 1. the initial dump of N leaves (default 1,000,000) in PROTO encoding,
//! 2. ON_CHANGE churn: a `Burst` of N changes streamed to the subscriber,
//! 3. ON_CHANGE churn at a steady rate (`StartChurn`) for a few seconds,
//!
//! and prints, for each, updates per second seen by the client and the
//! simulator thread's CPU time per million updates (from
//! `/proc/self/task/<tid>/stat`), from which the one-core rate follows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Buf;
use netsync_proto::gnmi;
use netsync_proto::netsync::sim::v1 as pb;
use netsync_proto::netsync::sim::v1::sim_control_client::SimControlClient;
use netsync_sim::{InitialState, SimConfig};
use prost::Message;
use tokio_stream::StreamExt;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

/// The same allocator as the netsync-sim binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What one SubscribeResponse carried.
#[derive(Clone, Copy, Debug, Default)]
struct Counted {
    updates: u64,
    deletes: u64,
    sync: bool,
}

/// How the client decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decode {
    /// Walk the framing, count entries.
    Count,
    /// Full prost decode.
    Prost,
}

/// Client codec: encodes requests with prost, decodes responses by `Decode`.
#[derive(Clone, Copy, Debug)]
struct BenchCodec(Decode);

struct ReqEncoder;
struct RespDecoder(Decode);

impl Codec for BenchCodec {
    type Encode = gnmi::SubscribeRequest;
    type Decode = Counted;
    type Encoder = ReqEncoder;
    type Decoder = RespDecoder;

    fn encoder(&mut self) -> ReqEncoder {
        ReqEncoder
    }

    fn decoder(&mut self) -> RespDecoder {
        RespDecoder(self.0)
    }
}

impl Encoder for ReqEncoder {
    type Item = gnmi::SubscribeRequest;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl Decoder for RespDecoder {
    type Item = Counted;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Counted>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        let bad = |what: &str| Status::internal(format!("bad SubscribeResponse: {what}"));
        match self.0 {
            Decode::Prost => {
                let response =
                    gnmi::SubscribeResponse::decode(bytes).map_err(|e| bad(&e.to_string()))?;
                Ok(Some(match response.response {
                    Some(gnmi::subscribe_response::Response::Update(n)) => Counted {
                        updates: n.update.len() as u64,
                        deletes: n.delete.len() as u64,
                        sync: false,
                    },
                    Some(gnmi::subscribe_response::Response::SyncResponse(s)) => Counted {
                        sync: s,
                        ..Counted::default()
                    },
                    _ => Counted::default(),
                }))
            }
            Decode::Count => count(&bytes).map(Some).ok_or_else(|| bad("framing")),
        }
    }
}

/// Reads a varint.
fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

/// Skips one field of wire type `wire`; returns its bytes when length-delimited.
fn field<'a>(buf: &mut &'a [u8], wire: u64) -> Option<&'a [u8]> {
    match wire {
        0 => varint(buf).map(|_| &[][..]),
        1 => {
            *buf = buf.get(8..)?;
            Some(&[])
        }
        2 => {
            let len = varint(buf)? as usize;
            let (data, rest) = (buf.get(..len)?, buf.get(len..)?);
            *buf = rest;
            Some(data)
        }
        5 => {
            *buf = buf.get(4..)?;
            Some(&[])
        }
        _ => None,
    }
}

/// Counts the updates and deletes of an encoded SubscribeResponse, checking
/// the framing of every field on the way.
fn count(mut buf: &[u8]) -> Option<Counted> {
    let mut counted = Counted::default();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let data = field(&mut buf, key & 7)?;
        match key >> 3 {
            1 => {
                let mut notification = data;
                while !notification.is_empty() {
                    let key = varint(&mut notification)?;
                    let entry = field(&mut notification, key & 7)?;
                    match key >> 3 {
                        4 => {
                            // Walk the Update too: path and value framing.
                            let mut update = entry;
                            while !update.is_empty() {
                                let key = varint(&mut update)?;
                                field(&mut update, key & 7)?;
                            }
                            counted.updates += 1;
                        }
                        5 => counted.deletes += 1,
                        _ => {}
                    }
                }
            }
            3 => counted.sync = true,
            _ => {}
        }
    }
    Some(counted)
}

/// CPU time used so far by each of the threads `tids`, in clock ticks.
fn cpu_ticks(tids: &[u32]) -> HashMap<u32, u64> {
    // utime and stime are fields 14 and 15 of /proc/<pid>/task/<tid>/stat, in
    // clock ticks (100 per second on Linux).
    tids.iter()
        .filter_map(|tid| {
            let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
            let after_name = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            let ticks = fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?;
            Some((*tid, ticks))
        })
        .collect()
}

/// CPU time used between two snapshots by the threads alive at both (a
/// blocking-pool thread that exits in between takes its time with it).
fn cpu_between(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> Duration {
    let ticks: u64 = after
        .iter()
        .filter_map(|(tid, t)| Some(t.saturating_sub(*before.get(tid)?)))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// The id of the calling thread.
fn current_tid() -> u32 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

struct Args {
    leaves: usize,
    sim_threads: usize,
    decode: Decode,
    runs: usize,
    churn_rate: f64,
}

fn args() -> Args {
    let mut args = Args {
        leaves: 1_000_000,
        sim_threads: 1,
        decode: Decode::Count,
        runs: 3,
        churn_rate: 600_000.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--leaves" => args.leaves = value.parse().expect("--leaves N"),
            "--sim-threads" => args.sim_threads = value.parse().expect("--sim-threads N"),
            "--runs" => args.runs = value.parse().expect("--runs N"),
            "--churn-rate" => args.churn_rate = value.parse().expect("--churn-rate R"),
            "--decode" => {
                args.decode = match value.as_str() {
                    "count" => Decode::Count,
                    "prost" => Decode::Prost,
                    other => panic!("--decode count|prost, not {other}"),
                }
            }
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// Opens a Subscribe stream with the bench codec.
async fn subscribe(
    channel: Channel,
    decode: Decode,
    list: gnmi::SubscriptionList,
) -> tonic::Streaming<Counted> {
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
    grpc.ready().await.unwrap();
    let request = gnmi::SubscribeRequest {
        request: Some(gnmi::subscribe_request::Request::Subscribe(list)),
        ..Default::default()
    };
    // The request stream stays open (a pending stream after the first item),
    // though the simulator keeps streaming after a half-close anyway.
    let requests = tokio_stream::iter([request]).chain(tokio_stream::pending());
    grpc.streaming(
        tonic::Request::new(requests),
        tonic::codegen::http::uri::PathAndQuery::from_static("/gnmi.gNMI/Subscribe"),
        BenchCodec(decode),
    )
    .await
    .unwrap()
    .into_inner()
}

fn root_list(mode: gnmi::subscription_list::Mode, updates_only: bool) -> gnmi::SubscriptionList {
    gnmi::SubscriptionList {
        subscription: vec![gnmi::Subscription {
            path: Some(gnmi::Path::default()),
            mode: gnmi::SubscriptionMode::OnChange as i32,
            ..Default::default()
        }],
        mode: mode as i32,
        encoding: gnmi::Encoding::Proto as i32,
        updates_only,
        ..Default::default()
    }
}

/// Reads until `want` changes (or a sync_response when `until_sync`).
async fn drain(stream: &mut tonic::Streaming<Counted>, want: u64, until_sync: bool) -> u64 {
    let mut seen = 0;
    if !until_sync && want == 0 {
        return 0;
    }
    while let Some(message) = stream.next().await {
        let c = message.unwrap();
        seen += c.updates + c.deletes;
        if (until_sync && c.sync) || (!until_sync && seen >= want) {
            break;
        }
    }
    seen
}

fn report(name: &str, updates: u64, wall: Duration, cpu: Duration) {
    let rate = updates as f64 / wall.as_secs_f64();
    let cpu_per_m = cpu.as_secs_f64() / (updates as f64 / 1e6);
    println!(
        "{name:<28} {updates:>9} updates in {:>6.3} s = {:>9.0} updates/s seen by the client; \
         simulator CPU {:>6.3} s = {:>5.3} CPU-s per million (one-core rate {:>9.0}/s)",
        wall.as_secs_f64(),
        rate,
        cpu.as_secs_f64(),
        cpu_per_m,
        1e6 / cpu_per_m.max(1e-9),
    );
}

fn main() {
    let args = args();
    let sim_tids = Arc::new(Mutex::new(Vec::new()));
    let recorder = Arc::clone(&sim_tids);
    let sim_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.sim_threads)
        .thread_name("sim")
        .on_thread_start(move || recorder.lock().unwrap().push(current_tid()))
        .enable_all()
        .build()
        .unwrap();
    let listener = sim_runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = SimConfig {
        initial: InitialState::Generated {
            leaves: args.leaves,
            seed: 1,
        },
        ..SimConfig::default()
    };
    let built = Instant::now();
    let server = sim_runtime.spawn(netsync_sim::serve(config, listener, async {
        let _ = stopped.await;
    }));

    let client_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    client_runtime.block_on(async {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .initial_connection_window_size(Some(16 << 20))
            .initial_stream_window_size(Some(8 << 20))
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap();
        let mut control = SimControlClient::new(channel.clone());
        // Counters answer once the state is built.
        control.get_counters(pb::GetCountersRequest {}).await.unwrap();
        println!(
            "netsync-sim benchmark: {} leaves built in {:.2} s; simulator worker threads: {}; client decode: {:?}; {} core(s) on this machine",
            args.leaves,
            built.elapsed().as_secs_f64(),
            args.sim_threads,
            args.decode,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
        let tids = || sim_tids.lock().unwrap().clone();

        for run in 1..=args.runs {
            // 1. Initial dump, PROTO.
            let cpu0 = cpu_ticks(&tids());
            let start = Instant::now();
            let mut stream = subscribe(
                channel.clone(),
                args.decode,
                root_list(gnmi::subscription_list::Mode::Once, false),
            )
            .await;
            let dumped = drain(&mut stream, 0, true).await;
            report(&format!("dump, run {run}"), dumped, start.elapsed(), cpu_between(&cpu0, &cpu_ticks(&tids())));
            drop(stream);

            // 2. A burst of N changes, streamed ON_CHANGE.
            let mut stream = subscribe(
                channel.clone(),
                args.decode,
                root_list(gnmi::subscription_list::Mode::Stream, true),
            )
            .await;
            drain(&mut stream, 0, true).await;
            let cpu0 = cpu_ticks(&tids());
            let start = Instant::now();
            let count = args.leaves as u64;
            let burst = control.burst(pb::BurstRequest {
                count,
                delete_share: 0.1,
                seed: run as u64,
            });
            let (burst, seen) = tokio::join!(burst, drain(&mut stream, count, false));
            burst.unwrap();
            report(&format!("burst ON_CHANGE, run {run}"), seen, start.elapsed(), cpu_between(&cpu0, &cpu_ticks(&tids())));

            // 3. Steady churn for a few seconds.
            let cpu0 = cpu_ticks(&tids());
            let start = Instant::now();
            control
                .start_churn(pb::StartChurnRequest {
                    rate: args.churn_rate,
                    delete_share: 0.1,
                    seed: run as u64,
                })
                .await
                .unwrap();
            let window = Duration::from_secs(3);
            let mut seen = 0;
            while start.elapsed() < window {
                if let Ok(Some(message)) =
                    tokio::time::timeout(window, stream.next()).await
                {
                    let c = message.unwrap();
                    seen += c.updates + c.deletes;
                }
            }
            let made = control
                .stop_churn(pb::StopChurnRequest {})
                .await
                .unwrap()
                .into_inner()
                .changes;
            let wall = start.elapsed();
            seen += drain(&mut stream, made.saturating_sub(seen), false).await;
            report(
                &format!("churn {:.0}/s, run {run}", args.churn_rate),
                seen,
                wall.max(start.elapsed()),
                cpu_between(&cpu0, &cpu_ticks(&tids())),
            );
        }
        let _ = stop.send(());
    });
    sim_runtime.block_on(server).unwrap().unwrap();
}
