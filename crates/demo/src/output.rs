//! What the demo prints: timestamped lines for what its reflector (the
//! client library's list-then-WatchSync helper) reports, and the
//! progress of the initial sync (an indicatif bar on a terminal, plain lines
//! otherwise, so that a pipe or a log file gets readable text).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use netsync_client::{Event, Leaves};
use netsync_proto::gnmi;
use netsync_proto::netsync::v1 as pb;

/// Most leaves of one commit or revert listed one by one; the rest are counted.
const LISTED_LEAVES: usize = 5;
/// Without a terminal, at most one progress line per this period.
const PLAIN_PROGRESS_PERIOD: Duration = Duration::from_secs(1);
/// Indent of the lines that detail an event, under its kind.
const DETAIL_INDENT: &str = "                         ";

/// The demo's standard output.
pub struct Out {
    start: Instant,
    terminal: bool,
    progress: Mutex<Progress>,
}

/// The initial sync's progress display.
#[derive(Default)]
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    last_plain: Option<Instant>,
}

impl Out {
    /// Output whose timestamps count from `start`.
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            terminal: std::io::stdout().is_terminal(),
            progress: Mutex::new(Progress::default()),
        }
    }

    /// Time since the demo started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Prints a line (above the progress bar, if one is shown).
    pub fn line(&self, text: impl AsRef<str>) {
        let text = text.as_ref();
        let progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        match &progress.bar {
            Some(bar) => bar.println(text),
            None => {
                // A closed stdout (`netsync-demo | head`) must not panic the
                // demo: it keeps serving for the grpcurl commands.
                let mut stdout = std::io::stdout().lock();
                let _ = writeln!(stdout, "{text}");
                let _ = stdout.flush();
            }
        }
    }

    /// Prints a line with the time since the start and revision `revision`.
    pub fn at(&self, revision: u64, text: impl AsRef<str>) {
        self.line(format!(
            "[{:>8.3}s] r{revision:<4} {}",
            self.elapsed().as_secs_f64(),
            text.as_ref()
        ));
    }

    /// Prints what the reflector reported, `leaves` its map after it.
    pub fn event(&self, event: &Event, leaves: &Leaves) {
        let (revision, lines) = describe_reflected(event, leaves);
        let mut lines = lines.into_iter();
        if let Some(first) = lines.next() {
            self.at(revision, first);
        }
        for detail in lines {
            self.line(format!("{DETAIL_INDENT}{detail}"));
        }
    }

    /// Starts showing the initial sync's progress towards `total` leaves.
    pub fn start_progress(&self, total: u64) {
        let mut progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        progress.total = total;
        if self.terminal {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stdout());
            bar.set_style(
                ProgressStyle::with_template(
                    "             initial sync [{bar:40.cyan/blue}] {pos:>8}/{len} leaves received{msg}",
                )
                .expect("the template is valid")
                .progress_chars("=> "),
            );
            progress.bar = Some(bar);
        }
    }

    /// Shows that `received` leaves of the dump arrived.
    pub fn progress(&self, received: u64) {
        let mut progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        let received = received.min(progress.total);
        if let Some(bar) = &progress.bar {
            bar.set_position(received);
            if received == progress.total {
                // Persisting a large first revision takes a moment of its own.
                bar.set_message(", writing revision 1");
            }
            return;
        }
        let due = progress
            .last_plain
            .is_none_or(|last| last.elapsed() >= PLAIN_PROGRESS_PERIOD);
        if due && received > 0 && received < progress.total {
            progress.last_plain = Some(Instant::now());
            let total = progress.total;
            drop(progress);
            self.line(format!(
                "             initial sync: {received}/{total} leaves received"
            ));
        }
    }

    /// Removes the progress bar.
    pub fn finish_progress(&self) {
        let mut progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bar) = progress.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// The revision of what the reflector reported, and the lines that show it.
/// A revision applied is shown as the WatchSync commit it came in (whole:
/// the reflector joins the parts of a large one), its values read from the
/// map `leaves` the commit was applied to.
pub fn describe_reflected(event: &Event, leaves: &Leaves) -> (u64, Vec<String>) {
    let watched = |revision, event| {
        let lines = describe(&pb::SyncEvent {
            revision,
            event: Some(event),
            ..Default::default()
        });
        (revision, lines)
    };
    match event {
        Event::Listed { revision, after } => {
            let why = match after {
                None => String::new(),
                Some(status) => format!(" again ({})", status.message()),
            };
            let lines = vec![format!(
                "list     running read whole{why}: {} at revision {revision} (GetRunning), \
                 watched from revision {} (WatchSync)",
                count(leaves.len()),
                revision + 1
            )];
            (*revision, lines)
        }
        Event::Recreated {
            revision,
            uid,
            previous_uid,
            ..
        } => (
            *revision,
            vec![format!(
                "list     the datastore was created again (uid {uid}, was {previous_uid}): \
                 running read whole, {}",
                count(leaves.len())
            )],
        ),
        Event::Cut {
            status,
            from_revision,
        } => (
            from_revision.saturating_sub(1),
            vec![format!(
                "watch    cut ({}), resumed from revision {from_revision}",
                status.message()
            )],
        ),
        Event::Applied {
            revision,
            replace,
            updated_paths,
            deleted_paths,
            ..
        } => {
            let commit = pb::Commit {
                replace: *replace,
                updates: updated_paths
                    .iter()
                    .map(|path| pb::Leaf {
                        path: path.clone(),
                        value: leaves.get(path).cloned(),
                        owner: String::new(),
                    })
                    .collect(),
                deletes: deleted_paths.clone(),
                more: false,
            };
            watched(*revision, pb::sync_event::Event::Commit(commit))
        }
        Event::StateChanged { revision, state } => watched(
            *revision,
            pb::sync_event::Event::StateChanged(state.clone()),
        ),
        Event::Revert { revision, revert } => {
            watched(*revision, pb::sync_event::Event::Revert(revert.clone()))
        }
    }
}

fn count(leaves: usize) -> String {
    format!("{leaves} {}", plural(leaves, "leaf"))
}

/// The lines that show `event`: a headline, then details.
pub fn describe(event: &pb::SyncEvent) -> Vec<String> {
    match &event.event {
        Some(pb::sync_event::Event::StateChanged(s)) => {
            let state = pb::SyncState::try_from(s.state).map_or("UNKNOWN", |s| {
                s.as_str_name().trim_start_matches("SYNC_STATE_")
            });
            vec![format!("state    {state:<13} {}", s.reason)]
        }
        Some(pb::sync_event::Event::Commit(c)) => {
            let changes = c.updates.len() + c.deletes.len();
            // A large revision comes in parts (`Commit.more`).
            let part = if c.more {
                ", more of this revision follows"
            } else {
                ""
            };
            if c.replace {
                let mut headline = if c.more {
                    format!("commit   replace       {} leaves", c.updates.len())
                } else {
                    format!(
                        "commit   replace       {} leaves: the device's whole state",
                        c.updates.len()
                    )
                };
                if !c.deletes.is_empty() {
                    headline.push_str(&format!(" ({} pruned)", c.deletes.len()));
                }
                headline.push_str(part);
                return vec![headline];
            }
            let mut lines = vec![format!(
                "commit   {changes} {}{part}",
                if changes == 1 { "change" } else { "changes" }
            )];
            lines.extend(leaves(&c.updates, &c.deletes));
            lines
        }
        Some(pb::sync_event::Event::Revert(r)) => {
            let phase = pb::RevertPhase::try_from(r.phase).map_or("UNKNOWN", |p| {
                p.as_str_name().trim_start_matches("REVERT_PHASE_")
            });
            let n = r.updates.len() + r.deletes.len();
            let what = match pb::RevertPhase::try_from(r.phase) {
                // A job queued by SetIntent works out its leaves when it runs.
                Ok(pb::RevertPhase::Queued) if n == 0 => {
                    "a job to bring the device to its intents".into()
                }
                Ok(pb::RevertPhase::Queued) => {
                    format!("{n} {} to bring back to the intents", plural(n, "leaf"))
                }
                Ok(pb::RevertPhase::Applying) => {
                    format!(
                        "attempt {}: one gNMI Set of {n} {}",
                        r.attempt,
                        plural(n, "leaf")
                    )
                }
                Ok(pb::RevertPhase::Applied) => "running shows the device at its intents".into(),
                Ok(pb::RevertPhase::Failed) => format!("attempt {}: {}", r.attempt, r.error),
                _ => String::new(),
            };
            let mut lines = vec![format!("revert   {phase:<13} {what}")];
            if r.phase == pb::RevertPhase::Queued as i32 {
                lines.extend(leaves(&r.updates, &r.deletes));
            }
            lines
        }
        Some(pb::sync_event::Event::Baseline(b)) => vec![format!("baseline {}", b.reason)],
        Some(pb::sync_event::Event::Left(l)) => vec![format!("left     {}", l.reason)],
        Some(pb::sync_event::Event::Progress(_)) => vec!["progress".into()],
        None => vec!["(empty event)".into()],
    }
}

fn plural(n: usize, word: &str) -> String {
    match (n, word) {
        (1, w) => w.to_string(),
        (_, "leaf") => "leaves".into(),
        (_, w) => format!("{w}s"),
    }
}

/// One line per leaf, at most [`LISTED_LEAVES`] of them.
fn leaves(updates: &[pb::Leaf], deletes: &[String]) -> Vec<String> {
    let all = updates
        .iter()
        .map(|l| format!("{} = {}", l.path, value(l.value.as_ref())))
        .chain(deletes.iter().map(|d| format!("{d} deleted")));
    let total = updates.len() + deletes.len();
    let mut lines: Vec<String> = all.take(LISTED_LEAVES).collect();
    if total > LISTED_LEAVES {
        lines.push(format!("... and {} more", total - LISTED_LEAVES));
    }
    lines
}

/// A value as a newcomer reads it: strings quoted, numbers and booleans bare.
pub fn value(value: Option<&gnmi::TypedValue>) -> String {
    use gnmi::typed_value::Value;
    match value.and_then(|v| v.value.as_ref()) {
        None => "(no value)".into(),
        Some(Value::StringVal(s)) => format!("{s:?}"),
        Some(Value::IntVal(i)) => i.to_string(),
        Some(Value::UintVal(u)) => u.to_string(),
        Some(Value::BoolVal(b)) => b.to_string(),
        Some(Value::DoubleVal(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &str) -> Option<gnmi::TypedValue> {
        Some(gnmi::TypedValue {
            value: Some(gnmi::typed_value::Value::StringVal(s.into())),
        })
    }

    fn event(revision: u64, event: pb::sync_event::Event) -> pb::SyncEvent {
        pb::SyncEvent {
            datastore: "d".into(),
            revision,
            time: None,
            event: Some(event),
            ..Default::default()
        }
    }

    #[test]
    fn a_revision_the_reflector_applied_shows_its_values_from_the_map() {
        let leaves: Leaves = [
            ("/a".to_string(), string("new").unwrap()),
            ("/b".to_string(), string("kept").unwrap()),
        ]
        .into();
        let applied = Event::Applied {
            revision: 7,
            replace: false,
            updated: 1,
            deleted: 1,
            updated_paths: vec!["/a".into()],
            deleted_paths: vec!["/c".into()],
        };
        assert_eq!(
            describe_reflected(&applied, &leaves),
            (
                7,
                vec![
                    "commit   2 changes".to_string(),
                    "/a = \"new\"".into(),
                    "/c deleted".into()
                ]
            )
        );
        let listed = Event::Listed {
            revision: 3,
            after: None,
        };
        assert_eq!(
            describe_reflected(&listed, &leaves),
            (
                3,
                vec![
                    "list     running read whole: 2 leaves at revision 3 (GetRunning), watched \
                     from revision 4 (WatchSync)"
                        .to_string()
                ]
            )
        );
    }

    #[test]
    fn a_replace_commit_is_one_line_with_its_size() {
        let commit = pb::Commit {
            replace: true,
            updates: (0..3)
                .map(|i| pb::Leaf {
                    path: format!("/a/{i}"),
                    value: string("x"),
                    owner: String::new(),
                })
                .collect(),
            deletes: vec![],
            more: false,
        };
        let lines = describe(&event(1, pb::sync_event::Event::Commit(commit.clone())));
        assert_eq!(
            lines,
            vec!["commit   replace       3 leaves: the device's whole state"]
        );
        // A part of a larger revision does not claim to be the whole state.
        let part = pb::Commit {
            more: true,
            ..commit
        };
        let lines = describe(&event(1, pb::sync_event::Event::Commit(part)));
        assert_eq!(
            lines,
            vec!["commit   replace       3 leaves, more of this revision follows"]
        );
    }

    #[test]
    fn a_small_commit_lists_its_leaves_and_a_large_one_counts_the_rest() {
        let commit = pb::Commit {
            replace: false,
            updates: vec![pb::Leaf {
                path: "/system/config/hostname".into(),
                value: string("r1"),
                owner: String::new(),
            }],
            deletes: vec!["/x".into()],
            more: false,
        };
        let lines = describe(&event(2, pb::sync_event::Event::Commit(commit)));
        assert_eq!(
            lines,
            vec![
                "commit   2 changes",
                "/system/config/hostname = \"r1\"",
                "/x deleted"
            ]
        );
        let many = pb::Commit {
            replace: false,
            updates: vec![],
            deletes: (0..8).map(|i| format!("/d/{i}")).collect(),
            more: false,
        };
        let lines = describe(&event(3, pb::sync_event::Event::Commit(many)));
        assert_eq!(lines.len(), 1 + LISTED_LEAVES + 1);
        assert_eq!(lines.last().unwrap(), "... and 3 more");
    }

    #[test]
    fn states_and_phases_are_shown_without_their_enum_prefix() {
        let state = describe(&event(
            1,
            pb::sync_event::Event::StateChanged(pb::StateChanged {
                state: pb::SyncState::InSync as i32,
                reason: "initial dump committed".into(),
            }),
        ));
        assert_eq!(state, vec!["state    IN_SYNC       initial dump committed"]);
        let applying = describe(&event(
            4,
            pb::sync_event::Event::Revert(pb::Revert {
                phase: pb::RevertPhase::Applying as i32,
                attempt: 1,
                updates: vec![pb::Leaf {
                    path: "/a".into(),
                    value: string("v"),
                    owner: String::new(),
                }],
                deletes: vec![],
                error: String::new(),
            }),
        ));
        assert_eq!(
            applying,
            vec!["revert   APPLYING      attempt 1: one gNMI Set of 1 leaf"]
        );
    }

    #[test]
    fn values_read_naturally() {
        use gnmi::typed_value::Value;
        let v = |value| gnmi::TypedValue { value: Some(value) };
        assert_eq!(value(Some(&v(Value::StringVal("a b".into())))), "\"a b\"");
        assert_eq!(value(Some(&v(Value::UintVal(9000)))), "9000");
        assert_eq!(value(Some(&v(Value::BoolVal(true)))), "true");
        assert_eq!(value(None), "(no value)");
    }
}
