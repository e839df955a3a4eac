//! `netsync intent`: set (from a file, or from `--name` and `--leaf
//! PATH=VALUE` flags), get, list, delete.

use std::path::PathBuf;

use clap::Subcommand;
use netsync_client::{Client, gnmi, pb};

use crate::Output;
use crate::codec;
use crate::datastore::OutputArg;
use crate::error::CliError;
use crate::show;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or replace an intent, from a file (a netsync.v1.Intent in
    /// protobuf JSON or YAML) or from flags.
    Set {
        /// The datastore's name.
        datastore: String,
        /// The intent file: .json for JSON, anything else is read as YAML.
        #[arg(short = 'f', long = "file", value_name = "FILE", conflicts_with_all = ["name", "leaf", "delete"])]
        file: Option<PathBuf>,
        /// The intent's name (instead of a file).
        #[arg(long, required_unless_present = "file")]
        name: Option<String>,
        /// A leaf to keep at a value (a string), repeatable: --leaf /system/config/hostname=r1.
        #[arg(long, value_name = "PATH=VALUE")]
        leaf: Vec<String>,
        /// A path to keep deleted, repeatable.
        #[arg(long, value_name = "PATH")]
        delete: Vec<String>,
        /// Priority among intents on the same path (higher wins).
        #[arg(long, default_value_t = 0)]
        priority: i32,
        /// Set the values once and never revert them.
        #[arg(long)]
        non_revertive: bool,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Show one intent and its status.
    Get {
        /// The datastore's name.
        datastore: String,
        /// The intent's name.
        name: String,
        #[command(flatten)]
        output: OutputArg,
    },
    /// List the intents of a datastore.
    #[command(visible_alias = "ls")]
    List {
        /// The datastore's name.
        datastore: String,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Delete an intent (its values stay on the device, no longer kept).
    #[command(visible_alias = "rm")]
    Delete {
        /// The datastore's name.
        datastore: String,
        /// The intent's name.
        name: String,
    },
}

pub async fn run(client: Client, command: Command) -> Result<(), CliError> {
    let mut raw = client.raw();
    match command {
        Command::Set {
            datastore,
            file,
            name,
            leaf,
            delete,
            priority,
            non_revertive,
            output,
        } => {
            let intent = match file {
                Some(file) => codec::read_file::<pb::Intent>(&file)?.0,
                None => pb::Intent {
                    name: name.unwrap_or_default(),
                    priority,
                    updates: leaf
                        .iter()
                        .map(|l| parse_leaf(l))
                        .collect::<Result<_, _>>()?,
                    deletes: delete,
                    non_revertive,
                    ..Default::default()
                },
            };
            let set = raw
                .set_intent(pb::SetIntentRequest {
                    datastore: datastore.clone(),
                    intent: Some(intent),
                    ..Default::default()
                })
                .await?
                .into_inner();
            match output.output {
                Output::Table => show::out(&format!("intent/{} set on {datastore}\n", set.name)),
                format => codec::print(&codec::to_json(&set), format),
            }
        }
        Command::Get {
            datastore,
            name,
            output,
        } => {
            let intent = raw
                .get_intent(pb::GetIntentRequest { datastore, name })
                .await?
                .into_inner();
            match output.output {
                Output::Table => table(&[intent]),
                format => codec::print(&codec::to_json(&intent), format),
            }
        }
        Command::List { datastore, output } => {
            let mut all = pb::ListIntentsResponse::default();
            loop {
                let page = raw
                    .list_intents(pb::ListIntentsRequest {
                        datastore: datastore.clone(),
                        page_token: all.next_page_token.clone(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                all.intents.extend(page.intents);
                all.next_page_token = page.next_page_token;
                if all.next_page_token.is_empty() {
                    break;
                }
            }
            match output.output {
                Output::Table => table(&all.intents),
                format => codec::print(&codec::to_json(&all), format),
            }
        }
        Command::Delete { datastore, name } => {
            raw.delete_intent(pb::DeleteIntentRequest {
                datastore: datastore.clone(),
                name: name.clone(),
                ..Default::default()
            })
            .await?;
            show::out(&format!("intent/{name} deleted from {datastore}\n"))
        }
    }
}

/// `PATH=VALUE` as a leaf with a string value; the path is everything up to
/// the first `=` that is not inside a list key (`[name=eth0]`).
fn parse_leaf(text: &str) -> Result<pb::Leaf, CliError> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            '=' if depth == 0 => {
                return Ok(pb::Leaf {
                    path: text[..i].to_string(),
                    value: Some(gnmi::TypedValue {
                        value: Some(gnmi::typed_value::Value::StringVal(
                            text[i + 1..].to_string(),
                        )),
                    }),
                    owner: String::new(),
                });
            }
            _ => {}
        }
    }
    Err(CliError::Input(format!(
        "--leaf {text:?}: expected PATH=VALUE"
    )))
}

fn table(intents: &[pb::Intent]) -> Result<(), CliError> {
    let rows: Vec<Vec<String>> = intents
        .iter()
        .map(|intent| {
            let status = intent.status.clone().unwrap_or_default();
            vec![
                intent.name.clone(),
                intent.priority.to_string(),
                status
                    .state()
                    .as_str_name()
                    .trim_start_matches("INTENT_STATE_")
                    .to_string(),
                intent.updates.len().to_string(),
                intent.deletes.len().to_string(),
                intent.revision.to_string(),
                status.last_error,
            ]
        })
        .collect();
    show::table(
        &[
            "NAME", "PRIORITY", "STATE", "UPDATES", "DELETES", "REVISION", "ERROR",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaf_splits_at_the_first_equals_outside_a_key() {
        let leaf =
            parse_leaf("/interfaces/interface[name=eth0]/config/description=up=down").unwrap();
        assert_eq!(
            leaf.path,
            "/interfaces/interface[name=eth0]/config/description"
        );
        assert_eq!(show::value_text(leaf.value.as_ref()), "up=down");
        assert!(parse_leaf("/a/b").is_err());
    }
}
