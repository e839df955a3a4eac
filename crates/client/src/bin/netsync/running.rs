//! Reading a device's state: `netsync running get` (now or at a past
//! revision), `netsync watch` (one datastore, or every datastore a label
//! selector matches) and `netsync deviations`. Values are asked for as
//! SCALAR, so JSON_IETF devices print `managed by netsync`, not base64.

use clap::{Args, Subcommand};
use netsync_client::{Client, pb};

use crate::Output;
use crate::codec;
use crate::datastore::{OutputArg, state_name};
use crate::error::CliError;
use crate::show::{self, value_json, value_text};

#[derive(Debug, Subcommand)]
pub enum RunningCommand {
    /// Running of a datastore (or the subtree at PATH), now or at --revision.
    Get {
        /// The datastore's name.
        datastore: String,
        /// A gNMI path (`/interfaces/interface[name=eth0]`); default: everything.
        #[arg(default_value = "")]
        path: String,
        /// Read running as it was right after this revision's commit (default: now).
        #[arg(long, default_value_t = 0)]
        revision: u64,
        #[command(flatten)]
        output: OutputArg,
    },
}

/// `netsync watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The datastore to watch; none: every datastore --selector matches (all without one).
    #[arg(conflicts_with = "selector")]
    datastore: Option<String>,
    /// Label selector (Kubernetes syntax): watch every datastore it matches,
    /// including those created later.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    selector: Option<String>,
    /// Replay the commits from this revision on, then continue live (one datastore only);
    /// default: from now.
    #[arg(
        long = "from",
        value_name = "REVISION",
        requires = "datastore",
        conflicts_with = "selector"
    )]
    from: Option<u64>,
    /// Resume a watch of many datastores from an event's resumeToken.
    #[arg(
        long,
        value_name = "TOKEN",
        default_value = "",
        conflicts_with = "datastore"
    )]
    resume_token: String,
    /// `json`: one SyncEvent per line in protobuf JSON; `yaml`: one document per event;
    /// `table`: one line per event (revision, kind, path=value and -path; on a terminal
    /// a long commit shows its first changes and a count).
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    output: Output,
}

/// `netsync deviations`.
#[derive(Debug, Args)]
pub struct DeviationsArgs {
    /// The datastore's name.
    datastore: String,
    #[command(flatten)]
    output: OutputArg,
}

pub async fn run(client: Client, command: RunningCommand) -> Result<(), CliError> {
    let RunningCommand::Get {
        datastore,
        path,
        revision,
        output,
    } = command;
    let mut stream = client
        .raw()
        .get_running(pb::GetRunningRequest {
            datastore: datastore.clone(),
            path,
            revision,
            value_format: pb::ValueFormat::Scalar as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut read_at = 0;
    let mut leaves = Vec::new();
    let progress = show::progress();
    while let Some(batch) = stream.message().await? {
        // Every message of one call is of one revision.
        read_at = batch.revision;
        leaves.extend(batch.leaves);
        progress.set_message(format!("{} leaves at revision {read_at}", leaves.len()));
    }
    progress.finish_and_clear();
    match output.output {
        Output::Table => show::table(
            &["PATH", "VALUE"],
            &leaves
                .iter()
                .map(|leaf| vec![leaf.path.clone(), value_text(leaf.value.as_ref())])
                .collect::<Vec<_>>(),
        ),
        // A plain document rather than the GetRunningResponse messages:
        // `jq '.leaves["/system/config/hostname"]'` is what a script wants.
        format => codec::print(
            &serde_json::json!({
                "datastore": datastore,
                "revision": read_at,
                "leaves": leaves
                    .iter()
                    .map(|leaf| (leaf.path.clone(), value_json(leaf.value.as_ref())))
                    .collect::<serde_json::Map<_, _>>(),
            }),
            format,
        ),
    }
}

/// The WatchSync request of `netsync watch`: one datastore by name, or
/// (datastore empty) every datastore the selector matches, all of them
/// without one.
fn watch_request(args: &WatchArgs) -> pb::WatchSyncRequest {
    pb::WatchSyncRequest {
        datastore: args.datastore.clone().unwrap_or_default(),
        from_revision: args.from.unwrap_or(0),
        label_selector: args.selector.clone().unwrap_or_default(),
        resume_token: args.resume_token.clone(),
        value_format: pb::ValueFormat::Scalar as i32,
        ..Default::default()
    }
}

pub async fn watch(client: Client, args: WatchArgs) -> Result<(), CliError> {
    let many = args.datastore.is_none();
    let mut stream = client
        .raw()
        .watch_sync(watch_request(&args))
        .await?
        .into_inner();
    while let Some(event) = stream.message().await? {
        let line = match args.output {
            Output::Json => codec::to_json(&event).to_string(),
            Output::Yaml => {
                // A YAML stream: one document per event.
                let yaml = serde_yaml_ng::to_string(&codec::to_json(&event))
                    .expect("JSON values are YAML");
                format!("---\n{}", yaml.trim_end())
            }
            Output::Table => event_line(&event, many),
        };
        show::out(&format!("{line}\n"))?;
    }
    Err(CliError::Status(tonic::Status::unavailable(
        "netsyncd ended the watch",
    )))
}

/// One event as one line: revision, kind, then what changed (`path=value`
/// for an update, `-path` for a delete); the datastore first when the watch
/// covers many.
fn event_line(event: &pb::SyncEvent, many: bool) -> String {
    use pb::sync_event::Event;
    let (kind, colour, detail) = match &event.event {
        Some(Event::Commit(commit)) => (
            if commit.replace { "replace" } else { "commit" },
            "32",
            changes(&commit.updates, &commit.deletes),
        ),
        Some(Event::StateChanged(state)) => (
            "state",
            "33",
            format!("{} {}", state_name(state.state()), state.reason)
                .trim_end()
                .to_string(),
        ),
        Some(Event::Revert(revert)) => (
            "revert",
            "35",
            format!(
                "{} {}",
                revert
                    .phase()
                    .as_str_name()
                    .trim_start_matches("REVERT_PHASE_"),
                if revert.error.is_empty() {
                    changes(&revert.updates, &revert.deletes)
                } else {
                    revert.error.clone()
                }
            ),
        ),
        Some(Event::Baseline(baseline)) => ("baseline", "36", baseline.reason.clone()),
        Some(Event::Left(left)) => ("left", "31", left.reason.clone()),
        Some(Event::Progress(_)) => {
            // No datastore, no revision: a point to resume the whole watch
            // from, written as the flag that does it.
            return format!(
                "{} --resume-token {}",
                show::paint("2", "progress"),
                event.resume_token
            );
        }
        None => ("unknown", "2", String::new()),
    };
    let mut line = String::new();
    if many {
        line.push_str(&event.datastore);
        line.push(' ');
    }
    line.push_str(&event.revision.to_string());
    line.push(' ');
    line.push_str(&show::paint(colour, kind));
    if !detail.is_empty() {
        line.push(' ');
        line.push_str(&detail);
    }
    line
}

/// Changes shown in full on one line; on a terminal, a replace of a whole
/// device would fill the screen, so past this many the rest is counted.
const SHOWN_ON_A_TERMINAL: usize = 10;

fn changes(updates: &[pb::Leaf], deletes: &[String]) -> String {
    let mut all: Vec<String> = updates
        .iter()
        .map(|leaf| format!("{}={}", leaf.path, value_text(leaf.value.as_ref())))
        .chain(deletes.iter().map(|path| format!("-{path}")))
        .collect();
    if show::is_terminal() && all.len() > SHOWN_ON_A_TERMINAL {
        let more = all.len() - SHOWN_ON_A_TERMINAL;
        all.truncate(SHOWN_ON_A_TERMINAL);
        all.push(show::paint("2", &format!("(+{more} more)")));
    }
    all.join(" ")
}

pub async fn deviations(client: Client, args: DeviationsArgs) -> Result<(), CliError> {
    let mut raw = client.raw();
    let mut all = pb::GetDeviationsResponse::default();
    loop {
        let page = raw
            .get_deviations(pb::GetDeviationsRequest {
                datastore: args.datastore.clone(),
                value_format: pb::ValueFormat::Scalar as i32,
                page_token: all.next_page_token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        all.revision = page.revision;
        all.deviations.extend(page.deviations);
        all.next_page_token = page.next_page_token;
        if all.next_page_token.is_empty() {
            break;
        }
    }
    match args.output.output {
        Output::Table => show::table(
            &["PATH", "INTENT", "EXPECTED", "ACTUAL"],
            &all.deviations
                .iter()
                .map(|d| {
                    vec![
                        d.path.clone(),
                        d.intent.clone(),
                        or_absent(value_text(d.expected.as_ref()), d.expected.is_some()),
                        or_absent(value_text(d.actual.as_ref()), d.actual.is_some()),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
        format => codec::print(&codec::to_json(&all), format),
    }
}

/// `<absent>` for a value that is not there (a leaf an intent deletes, or one
/// missing on the device), which an empty cell would not say.
fn or_absent(text: String, present: bool) -> String {
    if present { text } else { "<absent>".into() }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Watch {
        #[command(flatten)]
        args: WatchArgs,
    }

    fn request(args: &[&str]) -> pb::WatchSyncRequest {
        let parsed = Watch::try_parse_from(std::iter::once("watch").chain(args.iter().copied()));
        watch_request(&parsed.unwrap_or_else(|e| panic!("{args:?}: {e}")).args)
    }

    #[test]
    fn a_watch_names_one_datastore_or_selects_many() {
        let one = request(&["r1", "--from", "7"]);
        assert_eq!((one.datastore.as_str(), one.from_revision), ("r1", 7));
        assert_eq!(one.value_format, pb::ValueFormat::Scalar as i32);
        let many = request(&["-l", "env=lab"]);
        assert_eq!(
            (many.datastore.as_str(), many.label_selector.as_str()),
            ("", "env=lab")
        );
        let all = request(&["--resume-token", "t1"]);
        assert_eq!(
            (all.datastore.as_str(), all.label_selector.as_str()),
            ("", "")
        );
        assert_eq!(all.resume_token, "t1");
        // --from is a revision of one datastore; many resume by token.
        assert!(Watch::try_parse_from(["watch", "-l", "env=lab", "--from", "3"]).is_err());
        assert!(Watch::try_parse_from(["watch", "r1", "-l", "env=lab"]).is_err());
    }

    #[test]
    fn an_event_of_many_datastores_starts_with_its_datastore() {
        use pb::sync_event::Event;
        let event = |event| pb::SyncEvent {
            datastore: "r2".into(),
            revision: 4,
            event: Some(event),
            ..Default::default()
        };
        let commit = event(Event::Commit(pb::Commit {
            updates: vec![pb::Leaf {
                path: "/a".into(),
                value: Some(netsync_client::gnmi::TypedValue {
                    value: Some(netsync_client::gnmi::typed_value::Value::UintVal(5)),
                }),
                owner: String::new(),
            }],
            deletes: vec!["/b".into()],
            ..Default::default()
        }));
        assert_eq!(event_line(&commit, false), "4 commit /a=5 -/b");
        assert_eq!(event_line(&commit, true), "r2 4 commit /a=5 -/b");
        let left = event(Event::Left(pb::Left {
            reason: "deleted".into(),
        }));
        assert_eq!(event_line(&left, true), "r2 4 left deleted");
        let mut progress = event(Event::Progress(pb::Progress {}));
        progress.resume_token = "t1".into();
        assert_eq!(event_line(&progress, true), "progress --resume-token t1");
    }
}
