//! Faults to inject, switched on and off at run time (`SimControl.SetFaults`)
//! or set from flags at start, and one-shot disconnect orders for the open
//! Subscribe streams. Both are published through `watch` channels, so a stream
//! notices a change while it is idle.

use std::time::Duration;

use netsync_proto::netsync::sim::v1 as pb;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::SimError;

/// How Sets fail under the `set_failure` fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetFailure {
    /// The status code returned.
    pub code: tonic::Code,
    /// The status message returned.
    pub message: String,
    /// Sets still to fail; `None` fails every Set until cleared.
    pub remaining: Option<u64>,
}

/// The faults in force. `Default` is "no fault".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Delay before each Set is processed.
    pub set_delay: Option<Duration>,
    /// Only Sets by this username are delayed (all when `None`).
    pub set_delay_username: Option<String>,
    /// Sets fail instead of being applied.
    pub set_failure: Option<SetFailure>,
    /// Subscribe streams send nothing until then.
    pub stall_until: Option<Instant>,
    /// Every stream ends with UNAVAILABLE after this many messages.
    pub disconnect_after_messages: Option<u64>,
    /// Initial dumps end with UNAVAILABLE after this many updates.
    pub drop_dump_after_updates: Option<u64>,
}

impl Faults {
    /// The faults described by `faults`, with a stall starting `now`.
    pub fn from_proto(faults: pb::Faults, now: Instant) -> Result<Self, SimError> {
        let duration = |d: Option<prost_types::Duration>, field: &str| -> Result<_, SimError> {
            match d {
                None => Ok(None),
                Some(d) => {
                    let d = Duration::try_from(d).map_err(|_| {
                        SimError::InvalidArgument(format!("faults.{field} must not be negative"))
                    })?;
                    Ok((!d.is_zero()).then_some(d))
                }
            }
        };
        let set_failure = match faults.set_failure {
            None => None,
            Some(f) => {
                if !(1..=16).contains(&f.code) {
                    return Err(SimError::InvalidArgument(format!(
                        "faults.set_failure.code must be a gRPC error code (1..=16), got {}",
                        f.code
                    )));
                }
                let code = tonic::Code::from_i32(f.code);
                Some(SetFailure {
                    code,
                    message: if f.message.is_empty() {
                        format!("netsync-sim: Set failed by the set_failure fault ({code:?})")
                    } else {
                        f.message
                    },
                    remaining: (f.count != 0).then_some(f.count),
                })
            }
        };
        let stall = duration(faults.subscribe_stall, "subscribe_stall")?;
        Ok(Self {
            set_delay: duration(faults.set_delay, "set_delay")?,
            set_delay_username: (!faults.set_delay_username.is_empty())
                .then_some(faults.set_delay_username),
            set_failure,
            stall_until: stall.map(|d| now + d),
            disconnect_after_messages: (faults.disconnect_after_messages != 0)
                .then_some(faults.disconnect_after_messages),
            drop_dump_after_updates: (faults.drop_dump_after_updates != 0)
                .then_some(faults.drop_dump_after_updates),
        })
    }

    /// The faults as the control API reports them; a stall shows the time
    /// left.
    pub fn to_proto(&self, now: Instant) -> pb::Faults {
        let duration = |d: Duration| prost_types::Duration::try_from(d).unwrap_or_default();
        pb::Faults {
            set_delay: self.set_delay.map(duration),
            set_delay_username: self.set_delay_username.clone().unwrap_or_default(),
            set_failure: self.set_failure.as_ref().map(|f| pb::SetFailure {
                code: f.code as i32,
                message: f.message.clone(),
                count: f.remaining.unwrap_or(0),
            }),
            subscribe_stall: self
                .stall_until
                .filter(|until| *until > now)
                .map(|until| duration(until - now)),
            disconnect_after_messages: self.disconnect_after_messages.unwrap_or(0),
            drop_dump_after_updates: self.drop_dump_after_updates.unwrap_or(0),
        }
    }

    /// The delay a Set by `username` gets.
    pub fn set_delay_for(&self, username: Option<&str>) -> Option<Duration> {
        match &self.set_delay_username {
            Some(only) if Some(only.as_str()) != username => None,
            _ => self.set_delay,
        }
    }
}

/// Takes one failure from the `set_failure` fault, if it is on: counts it down
/// and switches it off after the last one.
pub fn take_set_failure(faults: &watch::Sender<Faults>) -> Option<tonic::Status> {
    let mut status = None;
    faults.send_if_modified(|f| {
        let Some(failure) = f.set_failure.as_mut() else {
            return false;
        };
        status = Some(tonic::Status::new(failure.code, failure.message.clone()));
        match &mut failure.remaining {
            Some(1) => f.set_failure = None,
            Some(n) => *n -= 1,
            None => return false,
        }
        true
    });
    status
}

/// An order to end the open streams: every stream that started before the
/// order (a lower `epoch`) ends after `after_messages` more messages (0: now).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DisconnectOrder {
    /// Increases by one with each order.
    pub epoch: u64,
    /// Messages each stream may still send.
    pub after_messages: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_round_trip_and_validation() {
        let now = Instant::now();
        let proto = pb::Faults {
            set_delay: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            }),
            set_delay_username: "alice".into(),
            set_failure: Some(pb::SetFailure {
                code: tonic::Code::Aborted as i32,
                message: String::new(),
                count: 2,
            }),
            subscribe_stall: None,
            disconnect_after_messages: 5,
            drop_dump_after_updates: 0,
        };
        let faults = Faults::from_proto(proto.clone(), now).unwrap();
        assert_eq!(
            faults.set_delay_for(Some("alice")),
            Some(Duration::from_secs(2))
        );
        assert_eq!(faults.set_delay_for(Some("bob")), None);
        assert_eq!(faults.set_delay_for(None), None);
        let back = faults.to_proto(now);
        assert_eq!(back.set_delay, proto.set_delay);
        assert_eq!(back.disconnect_after_messages, 5);
        assert!(back.set_failure.unwrap().message.contains("Aborted"));

        let bad = pb::Faults {
            set_failure: Some(pb::SetFailure {
                code: 0,
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = Faults::from_proto(bad, now).unwrap_err();
        assert!(err.to_string().contains("faults.set_failure.code"), "{err}");
    }

    #[test]
    fn set_failure_counts_down() {
        let failure = SetFailure {
            code: tonic::Code::Internal,
            message: "boom".into(),
            remaining: Some(2),
        };
        let faults = watch::Sender::new(Faults {
            set_failure: Some(failure),
            ..Default::default()
        });
        assert_eq!(take_set_failure(&faults).unwrap().message(), "boom");
        assert!(take_set_failure(&faults).is_some());
        assert!(take_set_failure(&faults).is_none());
        assert_eq!(*faults.borrow(), Faults::default());
    }
}
