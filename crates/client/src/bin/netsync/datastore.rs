//! `netsync datastore`: create from a spec file, get, list (by label, every
//! page), update with a field mask, delete.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use netsync_client::{Client, pb};

use crate::Output;
use crate::codec;
use crate::error::CliError;
use crate::show;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a datastore from a spec file (a netsync.v1.Datastore in protobuf JSON, or the same in YAML).
    Create {
        /// The spec file: .json for JSON, anything else is read as YAML.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Show one datastore.
    Get {
        /// The datastore's name.
        name: String,
        #[command(flatten)]
        output: OutputArg,
    },
    /// List datastores, optionally those a label selector matches.
    #[command(visible_alias = "ls")]
    List {
        /// Label selector in Kubernetes syntax: env=lab,role!=spine, tier in (a,b), !key.
        #[arg(
            short = 'l',
            long = "selector",
            value_name = "SELECTOR",
            default_value = ""
        )]
        selector: String,
        /// Datastores per page asked of netsyncd while reading every page
        /// (0: its default).
        #[arg(long, default_value_t = 0)]
        page_size: i32,
        /// Only the first N datastores, one page (as kubectl's --limit); a
        /// note on stderr, or nextPageToken in json/yaml, says where the rest
        /// starts (--page-token).
        #[arg(long, value_name = "N")]
        limit: Option<i32>,
        /// Start at this page (the next_page_token of an earlier list, same selector).
        #[arg(long, default_value = "")]
        page_token: String,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Change a datastore from a spec file; history, revisions and intents are kept.
    Update {
        /// The datastore's name (a name in the file must be the same).
        name: String,
        /// The spec file, as for create; output-only fields (status, uid, createTime) are ignored.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Fields to change, comma-separated (target, sync, revert, labels, target.address...);
        /// default: the top-level fields the file sets.
        #[arg(long, value_delimiter = ',', value_name = "PATHS")]
        update_mask: Vec<String>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Delete a datastore, its running, history and intents.
    #[command(visible_alias = "rm")]
    Delete {
        /// The datastore's name.
        name: String,
    },
}

/// `-o`: how a result is printed.
#[derive(Debug, Args)]
pub struct OutputArg {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Output,
}

/// Fields netsyncd sets, never the client: left out of a default update mask,
/// so that the output of `get -o yaml`, edited, is a valid update.
const OUTPUT_ONLY: &[&str] = &["name", "status", "create_time", "uid"];

pub async fn run(client: Client, command: Command) -> Result<(), CliError> {
    let mut raw = client.raw();
    match command {
        Command::Create { file, output } => {
            let (datastore, _) = codec::read_file::<pb::Datastore>(&file)?;
            let created = raw
                .create_datastore(pb::CreateDatastoreRequest {
                    datastore: Some(datastore),
                })
                .await?
                .into_inner();
            done(&created, "created", output.output)
        }
        Command::Get { name, output } => {
            let datastore = raw
                .get_datastore(pb::GetDatastoreRequest { name })
                .await?
                .into_inner();
            print(vec![datastore], output.output)
        }
        Command::List {
            selector,
            page_size,
            limit,
            mut page_token,
            output,
        } => {
            let mut datastores = Vec::new();
            let progress = show::progress();
            loop {
                let page = raw
                    .list_datastores(pb::ListDatastoresRequest {
                        page_size: limit.unwrap_or(page_size),
                        page_token,
                        filter: selector.clone(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                datastores.extend(page.datastores);
                progress.set_message(format!("{} datastores", datastores.len()));
                page_token = page.next_page_token;
                if page_token.is_empty() || limit.is_some() {
                    break;
                }
            }
            progress.finish_and_clear();
            if !page_token.is_empty() && output.output == Output::Table {
                eprintln!("more datastores: --page-token {page_token}");
            }
            if output.output == Output::Table {
                return table(&datastores);
            }
            codec::print(
                &codec::to_json(&pb::ListDatastoresResponse {
                    datastores,
                    next_page_token: page_token,
                }),
                output.output,
            )
        }
        Command::Update {
            name,
            file,
            update_mask,
            output,
        } => {
            let (mut datastore, fields) = codec::read_file::<pb::Datastore>(&file)?;
            if !datastore.name.is_empty() && datastore.name != name {
                return Err(CliError::Input(format!(
                    "{} names datastore {:?}, the command {name:?}",
                    file.display(),
                    datastore.name
                )));
            }
            datastore.name = name;
            let paths = if update_mask.is_empty() {
                fields
                    .into_iter()
                    .filter(|f| !OUTPUT_ONLY.contains(&f.as_str()))
                    .collect::<Vec<_>>()
            } else {
                update_mask
            };
            if paths.is_empty() {
                return Err(CliError::Input(format!(
                    "{} sets no field to change (only name or output-only fields)",
                    file.display()
                )));
            }
            let updated = raw
                .update_datastore(pb::UpdateDatastoreRequest {
                    datastore: Some(datastore),
                    update_mask: Some(prost_types::FieldMask { paths }),
                })
                .await?
                .into_inner();
            done(&updated, "updated", output.output)
        }
        Command::Delete { name } => {
            raw.delete_datastore(pb::DeleteDatastoreRequest { name: name.clone() })
                .await?;
            show::out(&format!("datastore/{name} deleted\n"))
        }
    }
}

/// After a change: the object itself with -o json|yaml, a line saying what
/// happened otherwise (kubectl's `datastore/r1 created`).
fn done(datastore: &pb::Datastore, what: &str, output: Output) -> Result<(), CliError> {
    match output {
        Output::Table => show::out(&format!("datastore/{} {what}\n", datastore.name)),
        _ => codec::print(&codec::to_json(datastore), output),
    }
}

fn print(datastores: Vec<pb::Datastore>, output: Output) -> Result<(), CliError> {
    match output {
        Output::Table => table(&datastores),
        _ => {
            for datastore in &datastores {
                codec::print(&codec::to_json(datastore), output)?;
            }
            Ok(())
        }
    }
}

fn table(datastores: &[pb::Datastore]) -> Result<(), CliError> {
    let rows: Vec<Vec<String>> = datastores
        .iter()
        .map(|d| {
            let status = d.status.clone().unwrap_or_default();
            let labels: Vec<String> = {
                let mut labels: Vec<_> = d.labels.iter().collect();
                labels.sort();
                labels
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect()
            };
            vec![
                d.name.clone(),
                d.target
                    .as_ref()
                    .map(|t| t.address.clone())
                    .unwrap_or_default(),
                state_name(status.state()),
                status.revision.to_string(),
                status.leaves.to_string(),
                labels.join(","),
            ]
        })
        .collect();
    show::table(
        &["NAME", "ADDRESS", "STATE", "REVISION", "LEAVES", "LABELS"],
        &rows,
    )
}

/// A sync state without its enum prefix (`IN_SYNC`).
pub fn state_name(state: pb::SyncState) -> String {
    state
        .as_str_name()
        .trim_start_matches("SYNC_STATE_")
        .to_string()
}
