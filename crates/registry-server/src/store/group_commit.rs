//! Group commit: changes that arrive while a group is being written wait for it to
//! finish and are then written together, in one transaction of their own.
//!
//! A durable commit costs a disk flush and a turn at the index row, which every change
//! needs (commits happen in index order). Paying that once per change capped a Postgres
//! registry at about a thousand registrations a second; shared by all the changes that
//! queued meanwhile, it is paid once per group. Each change still gets the answer it
//! would have got alone: the group is worked out in memory in arrival order (a second
//! change to the same instance sees the first one's result), and a change the group
//! cannot write (its transaction failed) is retried alone, so one bad change fails no
//! other.
//!
//! Background work that has thousands of changes at once (a sweep after a zone was lost)
//! does not queue them: it hands them over as one group of its own making
//! ([`GroupCommit::apply_group`]), written in one transaction however large, because
//! the queue's groups stay small for the sake of the writers waiting on them.
//!
//! This module is the part both stores share: the queue, the task that drains it, and
//! [`plan`], which turns a group and the records it found into rows and events.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use registry_api::{Event, InstanceId, ServiceName};
use tokio::sync::{mpsc, oneshot};

use super::{
    Applied, Expect, InstanceChange, StoreError, StoreResult, Transition, ensure_key, make_event,
};
use crate::lifecycle::{Change, Mutation};
use crate::record::InstanceRecord;

/// At most this many changes share one transaction: enough to absorb a burst of many
/// concurrent writers, few enough that a transaction (and the locks it holds) stays short
/// and that the group's keys fit in one small statement.
pub(crate) const MAX_GROUP: usize = 64;

/// An instance's key: service and id.
pub(crate) type Key = super::InstanceKey;

/// One change waiting for its group.
pub(crate) struct Pending {
    pub service: ServiceName,
    pub id: InstanceId,
    pub now: DateTime<Utc>,
    pub expect: Expect,
    pub transition: Transition,
    reply: oneshot::Sender<StoreResult<Applied>>,
}

impl Pending {
    /// The change waiting for its group, and where its answer will come.
    fn new(
        change: InstanceChange,
        expect: Expect,
    ) -> (Self, oneshot::Receiver<StoreResult<Applied>>) {
        let (reply, answer) = oneshot::channel();
        let InstanceChange {
            service,
            id,
            now,
            transition,
        } = change;
        let pending = Self {
            service,
            id,
            now,
            expect,
            transition,
            reply,
        };
        (pending, answer)
    }

    pub fn key(&self) -> Key {
        (self.service.clone(), self.id.clone())
    }

    fn answer(self, result: StoreResult<Applied>) {
        // The caller may have gone (its request was cancelled); the change stands anyway.
        let _ = self.reply.send(result);
    }
}

/// Writes a group in one transaction: each store's SQL.
#[async_trait]
pub(crate) trait GroupWriter: Send + Sync + 'static {
    /// Writes `group` in one transaction and answers each change's result, in order; or
    /// fails as a whole (nothing written).
    async fn write(&self, group: &[Pending]) -> StoreResult<Vec<StoreResult<Applied>>>;
}

/// The queue in front of a store's writes. Dropping it ends the task that drains it.
pub(crate) struct GroupCommit {
    sender: mpsc::UnboundedSender<Pending>,
    writer: Arc<dyn GroupWriter>,
}

impl GroupCommit {
    /// Starts the task that writes queued changes with `writer`, one group at a time.
    pub fn start(writer: impl GroupWriter) -> Self {
        let writer: Arc<dyn GroupWriter> = Arc::new(writer);
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(drain(Arc::clone(&writer), receiver));
        Self { sender, writer }
    }

    /// Queues a change and waits until its group is committed (or failed).
    pub async fn apply(
        &self,
        service: &ServiceName,
        id: &InstanceId,
        now: DateTime<Utc>,
        expect: Expect,
        transition: Transition,
    ) -> StoreResult<Applied> {
        let (pending, answer) = Pending::new(
            InstanceChange {
                service: service.clone(),
                id: id.clone(),
                now,
                transition,
            },
            expect,
        );
        if self.sender.send(pending).is_err() {
            return Err(worker_gone());
        }
        answer.await.unwrap_or_else(|_| Err(worker_gone()))
    }

    /// Writes `changes` as one group, beside the queue's (see [`super::Store::apply_group`]).
    /// A group in flight from the queue may hold one of its instances: the stores' own
    /// locks order the two (Postgres finds the row changed since it was read and plans
    /// again under locks; SQLite has one writer), as they order groups of two replicas.
    pub async fn apply_group(&self, changes: Vec<InstanceChange>) -> Vec<StoreResult<Applied>> {
        let (group, answers): (Vec<Pending>, Vec<_>) = changes
            .into_iter()
            .map(|change| Pending::new(change, Expect::Anything))
            .unzip();
        write_and_answer(self.writer.as_ref(), group).await;
        let mut results = Vec::with_capacity(answers.len());
        for answer in answers {
            results.push(answer.await.unwrap_or_else(|_| Err(worker_gone())));
        }
        results
    }
}

fn worker_gone() -> StoreError {
    StoreError::Unavailable(sqlx::Error::WorkerCrashed)
}

/// Takes whatever is queued (up to [`MAX_GROUP`]) as one group, writes it, and starts
/// again with what queued meanwhile, until every sender is gone. One group at a time: a
/// second group in flight would only wait for the first one's commit (the index row on
/// Postgres, the one writer connection on SQLite), and halve the groups
/// (docs/performance.md, "Changes made for speed").
async fn drain(writer: Arc<dyn GroupWriter>, mut receiver: mpsc::UnboundedReceiver<Pending>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while receiver.recv_many(&mut group, MAX_GROUP).await > 0 {
        write_and_answer(writer.as_ref(), std::mem::take(&mut group)).await;
    }
}

/// Writes one group and answers each of its changes.
async fn write_and_answer(writer: &dyn GroupWriter, mut group: Vec<Pending>) {
    match writer.write(&group).await {
        Ok(results) => {
            for (pending, result) in group.drain(..).zip(results) {
                pending.answer(result);
            }
        }
        // The database is away: each change alone would fail the same way.
        Err(StoreError::Unavailable(error)) => {
            let message = error.to_string();
            for pending in group.drain(..) {
                pending.answer(Err(StoreError::Unavailable(sqlx::Error::Io(
                    std::io::Error::other(message.clone()),
                ))));
            }
        }
        Err(error) if group.len() == 1 => {
            if let Some(pending) = group.pop() {
                pending.answer(Err(error));
            }
        }
        // Something in the group failed the transaction: find out which change by
        // writing each alone, so that the others succeed.
        Err(error) => {
            tracing::warn!(%error, changes = group.len(), "a group of changes failed; writing each alone");
            for pending in group.drain(..) {
                let result =
                    writer
                        .write(std::slice::from_ref(&pending))
                        .await
                        .and_then(|mut results| {
                            results.pop().unwrap_or_else(|| {
                                Err(StoreError::Corrupt("a change got no answer".into()))
                            })
                        });
                pending.answer(result);
            }
        }
    }
}

/// What a group does to the database, worked out from the records it found.
pub(crate) struct Plan {
    /// Each changed instance's final row, in key order.
    pub rows: Vec<Row>,
    /// The events to append, in order: the group takes as many indexes.
    events: Vec<PlannedEvent>,
    /// Each change's answer; `event` is a position in `events`.
    outcomes: Vec<StoreResult<Outcome>>,
}

/// The final state of one changed instance.
pub(crate) struct Row {
    pub key: Key,
    pub write: RowWrite,
}

/// How a row changes. The group holds every one of its instances' locks, so whether a
/// row is stored is known: no upsert has to guess.
pub(crate) enum RowWrite {
    /// A new row (its check, if any, runs as soon as possible, from `now`).
    Insert {
        record: InstanceRecord,
        now: DateTime<Utc>,
    },
    /// A stored row. `reschedule_check`: run its check as soon as possible (new or changed
    /// check, or an instance removed and registered again within the group).
    Update {
        record: InstanceRecord,
        reschedule_check: bool,
        now: DateTime<Utc>,
    },
    /// Delete the stored row.
    Delete,
}

struct PlannedEvent {
    now: DateTime<Utc>,
    change: Change,
    snapshot: InstanceRecord,
}

struct Outcome {
    existed: bool,
    record: Option<InstanceRecord>,
    event: Option<usize>,
}

/// An instance's state while the group is worked out.
struct Working {
    stored: bool,
    current: Option<InstanceRecord>,
    changed: bool,
    reschedule_check: bool,
    now: DateTime<Utc>,
}

/// Runs the group's transitions in arrival order on the records found (`loaded`: every
/// key of the group that has a row, or the reason its row could not be read).
pub(crate) fn plan(
    group: &[Pending],
    mut loaded: HashMap<Key, Result<InstanceRecord, String>>,
) -> Plan {
    let mut working: BTreeMap<Key, Result<Working, String>> = BTreeMap::new();
    let mut events = Vec::new();
    let mut outcomes = Vec::with_capacity(group.len());
    for pending in group {
        let key = pending.key();
        let state = working.entry(key).or_insert_with_key(|key| {
            loaded.remove(key).transpose().map(|current| Working {
                stored: current.is_some(),
                current,
                changed: false,
                reschedule_check: false,
                now: pending.now,
            })
        });
        let state = match state {
            Ok(state) => state,
            Err(reason) => {
                outcomes.push(Err(StoreError::Corrupt(reason.clone())));
                continue;
            }
        };
        let existed = state.current.is_some();
        let outcome = match (pending.transition)(state.current.as_ref()) {
            Mutation::Unchanged => Ok(Outcome {
                existed,
                record: state.current.clone(),
                event: None,
            }),
            Mutation::Save {
                record,
                change,
                reschedule_check,
            } => ensure_key(&record, &pending.service, &pending.id).map(|()| {
                let event = change.map(|change| {
                    events.push(PlannedEvent {
                        now: pending.now,
                        change,
                        snapshot: record.clone(),
                    });
                    events.len() - 1
                });
                state.changed = true;
                state.reschedule_check |= reschedule_check;
                state.now = pending.now;
                state.current = Some(record.clone());
                Outcome {
                    existed,
                    record: Some(record),
                    event,
                }
            }),
            Mutation::Delete { change } => match state.current.take() {
                // Nothing to remove: a removal of an unknown instance is no change.
                None => Ok(Outcome {
                    existed,
                    record: None,
                    event: None,
                }),
                Some(old) => {
                    events.push(PlannedEvent {
                        now: pending.now,
                        change,
                        snapshot: old,
                    });
                    state.changed = true;
                    // Registered again later in the group: a new row, checked at once.
                    state.reschedule_check = true;
                    Ok(Outcome {
                        existed,
                        record: None,
                        event: Some(events.len() - 1),
                    })
                }
            },
        };
        outcomes.push(outcome);
    }
    let rows = working
        .into_iter()
        .filter_map(|(key, state)| {
            let state = state.ok().filter(|state| state.changed)?;
            let write = match state.current {
                Some(record) if state.stored => RowWrite::Update {
                    record,
                    reschedule_check: state.reschedule_check,
                    now: state.now,
                },
                Some(record) => RowWrite::Insert {
                    record,
                    now: state.now,
                },
                None if state.stored => RowWrite::Delete,
                // Created and removed within the group: nothing was ever stored.
                None => return None,
            };
            Some(Row { key, write })
        })
        .collect();
    Plan {
        rows,
        events,
        outcomes,
    }
}

impl Plan {
    /// How many indexes the group takes.
    pub fn event_count(&self) -> i64 {
        i64::try_from(self.events.len()).unwrap_or(i64::MAX)
    }

    /// The events to append, numbered from `first_index`.
    pub fn events(&self, first_index: u64) -> Vec<Event> {
        self.events
            .iter()
            .zip(first_index..)
            .map(|(planned, index)| {
                make_event(index, planned.now, &planned.change, &planned.snapshot)
            })
            .collect()
    }

    /// Each change's answer, given the events as appended.
    pub fn answers(self, events: Vec<Event>) -> Vec<StoreResult<Applied>> {
        let committed: Arc<[Event]> = events.into();
        self.outcomes
            .into_iter()
            .map(|outcome| {
                outcome.map(|outcome| Applied {
                    existed: outcome.existed,
                    record: outcome.record,
                    event: outcome
                        .event
                        .and_then(|position| committed.get(position).cloned()),
                    committed: Arc::clone(&committed),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle;
    use registry_api::{EventKind, InstanceId, InstanceSpec, ServiceName, Validated};

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("valid time")
    }

    fn spec(id: &str) -> Validated {
        InstanceSpec::new("http://10.0.0.1:4040")
            .validate(
                ServiceName::parse("sum").expect("name"),
                InstanceId::parse(id).expect("id"),
                10,
            )
            .expect("valid")
    }

    fn record(id: &str) -> InstanceRecord {
        match lifecycle::register(None, &spec(id), t(0)) {
            Mutation::Save { record, .. } => record,
            other => panic!("expected a save, got {other:?}"),
        }
    }

    fn change(
        id: &str,
        now: DateTime<Utc>,
        transition: impl Fn(Option<&InstanceRecord>) -> Mutation + Send + Sync + 'static,
    ) -> Pending {
        let (reply, _) = oneshot::channel();
        Pending {
            service: ServiceName::parse("sum").expect("name"),
            id: InstanceId::parse(id).expect("id"),
            now,
            expect: Expect::Anything,
            transition: Box::new(transition),
            reply,
        }
    }

    fn register(id: &str, now: DateTime<Utc>) -> Pending {
        let spec = spec(id);
        change(id, now, move |old| lifecycle::register(old, &spec, now))
    }

    fn deregister(id: &str, now: DateTime<Utc>) -> Pending {
        change(id, now, |old| {
            old.map_or(Mutation::Unchanged, lifecycle::deregister)
        })
    }

    fn key(id: &str) -> Key {
        (
            ServiceName::parse("sum").expect("name"),
            InstanceId::parse(id).expect("id"),
        )
    }

    fn applied(result: &StoreResult<Applied>) -> &Applied {
        result.as_ref().expect("applied")
    }

    #[test]
    fn changes_to_one_instance_see_each_other_in_arrival_order() {
        let group = [
            register("a", t(1)),
            change("a", t(2), move |old| {
                old.map_or(Mutation::Unchanged, |o| {
                    lifecycle::set_maintenance(o, true, t(2))
                })
            }),
        ];
        let plan = plan(&group, HashMap::new());
        assert_eq!(plan.event_count(), 2);
        let Some(Row {
            key: row_key,
            write: RowWrite::Insert { record, now },
        }) = plan.rows.first()
        else {
            panic!("one new row expected");
        };
        assert_eq!((row_key, *now, record.maintenance), (&key("a"), t(2), true));
        assert_eq!(plan.rows.len(), 1);

        let events = plan.events(7);
        let kinds: Vec<_> = events.iter().map(|e| (e.index, e.kind, e.at)).collect();
        assert_eq!(
            kinds,
            [
                (7, EventKind::Registered, t(1)),
                (8, EventKind::Status, t(2))
            ]
        );
        let answers = plan.answers(events.clone());
        let first = applied(&answers[0]);
        let second = applied(&answers[1]);
        assert!(
            !first.existed && second.existed,
            "the second sees the first"
        );
        assert_eq!(first.event.as_ref().map(|e| e.index), Some(7));
        assert_eq!(second.event.as_ref().map(|e| e.index), Some(8));
        assert!(second.record.as_ref().is_some_and(|r| r.maintenance));
        assert!(
            first.committed[..] == events[..] && second.committed[..] == events[..],
            "each change carries every event of its transaction"
        );
    }

    #[test]
    fn removed_and_registered_again_is_an_update_that_runs_the_check_at_once() {
        let group = [deregister("a", t(1)), register("a", t(2))];
        let loaded = HashMap::from([(key("a"), Ok(record("a")))]);
        let plan = plan(&group, loaded);
        assert!(matches!(
            plan.rows.as_slice(),
            [Row {
                write: RowWrite::Update {
                    reschedule_check: true,
                    ..
                },
                ..
            }]
        ));
        let events = plan.events(1);
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::Removed, EventKind::Registered]);
        let answers = plan.answers(events.clone());
        assert!(applied(&answers[0]).existed && applied(&answers[0]).record.is_none());
        assert!(!applied(&answers[1]).existed);
    }

    #[test]
    fn registered_and_removed_within_a_group_writes_no_row_but_both_events() {
        let group = [
            register("a", t(1)),
            deregister("a", t(2)),
            deregister("a", t(3)),
        ];
        let plan = plan(&group, HashMap::new());
        assert!(plan.rows.is_empty());
        let events = plan.events(1);
        let answers = plan.answers(events.clone());
        assert_eq!(events.len(), 2, "the third removal finds nothing to remove");
        assert!(applied(&answers[2]).event.is_none());
    }

    #[test]
    fn a_stored_instance_removed_is_deleted() {
        let group = [deregister("a", t(1))];
        let plan = plan(&group, HashMap::from([(key("a"), Ok(record("a")))]));
        assert!(matches!(
            plan.rows.as_slice(),
            [Row {
                write: RowWrite::Delete,
                ..
            }]
        ));
    }

    #[test]
    fn a_refused_change_fails_alone() {
        let group = [
            // A transition returning another instance's record is refused.
            change("a", t(1), |_| {
                let spec = spec("b");
                lifecycle::register(None, &spec, t(1))
            }),
            register("c", t(1)),
            // A stored record that cannot be read fails every change of its instance.
            register("d", t(1)),
            register("a", t(2)),
        ];
        let loaded = HashMap::from([(key("d"), Err("not JSON".to_string()))]);
        let plan = plan(&group, loaded);
        let rows: Vec<&Key> = plan.rows.iter().map(|row| &row.key).collect();
        assert_eq!(rows, [&key("a"), &key("c")]);
        let events = plan.events(1);
        let answers = plan.answers(events.clone());
        assert!(matches!(answers[0], Err(StoreError::Corrupt(_))));
        assert!(matches!(answers[2], Err(StoreError::Corrupt(_))));
        assert!(
            !applied(&answers[3]).existed,
            "the refused change left no trace"
        );
        let ids: Vec<&str> = events.iter().map(|e| e.instance.as_str()).collect();
        assert_eq!(ids, ["c", "a"]);
    }
}
