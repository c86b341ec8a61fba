//! The in-memory view every read is served from, and the change hub that wakes blocking
//! queries and event streams.
//!
//! The view is built from a store snapshot and then follows the event log by index, so
//! it holds exactly the state of some index and never skips a change. Writes made by this
//! process catch it up at once; a periodic catch-up (and, with replicas, notifications)
//! picks up everything else.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use bytes::Bytes;
use compact_str::CompactString;

use chrono::{DateTime, Utc};
use registry_api::{
    Event, EventKind, Instance, SelfPreservation, ServiceInstances, ServiceList, ServiceStatus,
    ServiceSummary, Status, StatusCounts, StatusSummary, SystemStatus,
};
use tokio::sync::{Notify, watch};

use crate::paging::{Page, Selection};
use crate::store::{Applied, Store, StoreResult};
use crate::tally::{Counted, Leases, Tally};

/// How many recent events the view keeps for event streams (older ones come from the store).
const RECENT_EVENTS: usize = 4_096;
/// How many events one catch-up round reads.
const CATCH_UP_BATCH: u32 = 1_000;
/// Most events applied in one hold of the state's write lock: a catch-up round or a sweep's
/// group brings a thousand at once, and lookups wait for the lock while they are applied.
const APPLY_AT_ONCE: usize = 64;

#[derive(Debug, Default)]
struct ServiceView {
    /// Index of the service's latest event.
    index: u64,
    instances: BTreeMap<Key, Instance>,
    /// How many of the instances have each status (kept by [`State::put_instance`] and
    /// [`State::remove_instance`]).
    counts: StatusCounts,
    /// The lookup answer as JSON, made by the first lookup after a change and shared by
    /// every later one until the next change: cloning and serializing the instances was
    /// most of a lookup's cost, and a service is read far more often than it changes.
    answers: Answers,
    /// The same for the other protocols' answers (Consul's), by a key naming the shape and
    /// its filters; at most [`MAX_KEYED_ANSWERS`] per service.
    keyed: Mutex<BTreeMap<String, Bytes>>,
    /// What an adapter answering per query derives from the instances (the DNS
    /// interface's parsed addresses), made once per state of the service like the answers.
    derived: OnceLock<Arc<dyn Any + Send + Sync>>,
}

/// Most answers kept per service in [`ServiceView::keyed`]: filters come from clients, so
/// their combinations are bounded; beyond it answers are made per lookup.
const MAX_KEYED_ANSWERS: usize = 32;

/// One serialized answer per status filter: none, then one per status.
#[derive(Debug, Default)]
struct Answers([OnceLock<Bytes>; 5]);

impl ServiceView {
    /// Forgets the serialized answers: call on every change of the service's instances.
    fn changed(&mut self) {
        self.answers = Answers::default();
        self.derived = OnceLock::new();
        self.keyed
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    fn instances_with(&self, only: Option<Status>) -> Vec<Instance> {
        self.instances
            .values()
            .filter(|i| only.is_none_or(|status| i.status == status))
            .cloned()
            .collect()
    }
}

fn answer_slot(only: Option<Status>) -> usize {
    match only {
        None => 0,
        Some(Status::Passing) => 1,
        Some(Status::Warning) => 2,
        Some(Status::Critical) => 3,
        Some(Status::Maintenance) => 4,
    }
}

/// A service name or instance id as the view's maps hold it: inline up to 24 bytes, as
/// names and ids nearly always are, so finding one compares keys where they lie, without
/// reading each key's text from a memory block of its own (on the heartbeat path those
/// reads were a third of the view's time).
pub type Key = CompactString;

/// The services the view knows (it never drops one), by name: a lookup finds its service
/// with one hash, where a search of an ordered map compared its name with a dozen others
/// scattered in memory; the reads that page through services walk the names in order.
#[derive(Debug, Default)]
struct Services {
    /// Keyed with foldhash, as the heartbeat queue is: several times cheaper than std's
    /// SipHash on a name, and its seed is random per process too.
    by_name: HashMap<Key, ServiceView, foldhash::fast::RandomState>,
    names: BTreeSet<String>,
}

impl Services {
    fn get(&self, name: &str) -> Option<&ServiceView> {
        self.by_name.get(name)
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut ServiceView> {
        self.by_name.get_mut(name)
    }

    /// The named service, made empty if it is new.
    fn entry(&mut self, name: &str) -> &mut ServiceView {
        if !self.by_name.contains_key(name) {
            self.names.insert(name.to_owned());
            self.by_name.insert(Key::from(name), ServiceView::default());
        }
        self.by_name.get_mut(name).expect("made above")
    }

    /// Every service, in name order.
    fn in_order(&self) -> impl Iterator<Item = &ServiceView> {
        self.names
            .iter()
            .filter_map(|name| self.by_name.get(name.as_str()))
    }

    /// The selected services that have instances ([`Selection::page`]).
    fn page_with_instances(&self, selection: &Selection) -> Page<'_, ServiceView> {
        selection.page(
            &self.names,
            |name| self.by_name.get(name),
            |service| !service.instances.is_empty(),
        )
    }
}

#[derive(Debug, Default)]
struct State {
    index: u64,
    services: Services,
    recent: VecDeque<Event>,
    tally: Tally,
}

impl State {
    /// The state of these instances at `index` (to answer for a past moment).
    fn of(index: u64, instances: impl IntoIterator<Item = Instance>) -> Self {
        let mut state = Self {
            index,
            ..Self::default()
        };
        for instance in instances {
            let (service, id) = (instance.service.clone(), instance.id.clone());
            state.put_instance(&service, &id, instance);
        }
        state
    }

    /// Adds or replaces an instance, keeping the counts. The only way an instance's
    /// status changes in the view, with [`Self::remove_instance`].
    fn put_instance(&mut self, service: &str, id: &str, instance: Instance) {
        let view = self.services.entry(service);
        let after = Some(Counted::of(&instance));
        let before = view.instances.insert(Key::from(id), instance);
        self.tally.instance_changed(
            (service, id),
            &mut view.counts,
            before.as_ref().map(Counted::of),
            after,
        );
    }

    fn remove_instance(&mut self, service: &str, id: &str) {
        let Some(view) = self.services.get_mut(service) else {
            return;
        };
        let before = view.instances.remove(id);
        self.tally.instance_changed(
            (service, id),
            &mut view.counts,
            before.as_ref().map(Counted::of),
            None,
        );
    }

    /// The selected services with their instances (those without instances left out).
    fn system_status(&self, selection: &Selection, at: DateTime<Utc>) -> SystemStatus {
        let page = self.services.page_with_instances(selection);
        let services = page
            .entries
            .iter()
            .map(|(name, service)| ServiceStatus {
                name: (*name).to_owned(),
                status: service.counts.roll_up(),
                instances: service.instances.values().cloned().collect(),
            })
            .collect();
        SystemStatus {
            index: self.index,
            at,
            history_starts_at: None,
            epoch: None,
            self_preservation: SelfPreservation::default(),
            services,
            next_cursor: page.next_cursor(),
        }
    }

    /// The counts of the whole system and its first critical instances: read from the
    /// running counts, without visiting the other instances.
    fn summary(&self, at: DateTime<Utc>) -> StatusSummary {
        let critical = self
            .tally
            .critical()
            .take(StatusSummary::MAX_CRITICAL)
            .filter_map(|(service, id)| self.services.get(service)?.instances.get(id).cloned())
            .collect();
        StatusSummary {
            index: self.index,
            at,
            history_starts_at: None,
            epoch: None,
            self_preservation: SelfPreservation::default(),
            instances: self.tally.instances(),
            services: self.tally.services(),
            critical,
            critical_total: self.tally.critical_total(),
        }
    }
}

/// The current state of the registry in memory.
#[derive(Debug)]
pub struct View {
    state: RwLock<State>,
    changes: watch::Sender<u64>,
    /// Serializes catch-ups so events are applied in order exactly once.
    catching_up: tokio::sync::Mutex<()>,
    /// Round-robin position per service for the seed lookup.
    round_robin: Mutex<BTreeMap<String, usize>>,
    /// The self-preservation mode as the lease sweep last read it from the database.
    self_preservation: Mutex<SelfPreservation>,
    /// The store's [`Store::history_changes`] when the state was loaded: once it moves,
    /// the events this view holds may not be the database's (a failover lost some), so
    /// it loads the state again instead of adding events to it.
    history: std::sync::atomic::AtomicU64,
    /// This process's writes under way, from the store's write to the view showing it
    /// ([`Self::writing`]), and a wake-up each time one ends.
    own_writes: AtomicUsize,
    own_write_ended: Notify,
}

/// A write of this process under way ([`View::writing`]); it ends when dropped.
pub struct OwnWrite<'a>(&'a View);

impl Drop for OwnWrite<'_> {
    fn drop(&mut self) {
        self.0.own_writes.fetch_sub(1, Ordering::AcqRel);
        self.0.own_write_ended.notify_waiters();
    }
}

impl View {
    /// Builds the view from the store's current snapshot.
    pub async fn load(store: &dyn Store) -> StoreResult<Self> {
        let history = store.history_changes();
        let snapshot = store.snapshot().await?;
        let mut state = State {
            index: snapshot.index,
            ..State::default()
        };
        for (name, index) in snapshot.service_indexes {
            state.services.entry(&name).index = index;
        }
        for record in snapshot.records {
            state.put_instance(&record.service, &record.id, record.to_instance());
        }
        let (changes, _) = watch::channel(snapshot.index);
        Ok(Self {
            state: RwLock::new(state),
            changes,
            catching_up: tokio::sync::Mutex::new(()),
            history: history.into(),
            round_robin: Mutex::new(BTreeMap::new()),
            self_preservation: Mutex::new(SelfPreservation::default()),
            own_writes: AtomicUsize::new(0),
            own_write_ended: Notify::new(),
        })
    }

    /// Marks a write of this process as under way until the guard is dropped, which the
    /// writer does once the view shows it (or the write is abandoned).
    pub fn writing(&self) -> OwnWrite<'_> {
        self.own_writes.fetch_add(1, Ordering::AcqRel);
        OwnWrite(self)
    }

    /// Waits, at most `grace`, until the view holds `index` or no write of this process
    /// is under way. The change feed announces this process's own commits about when
    /// their writers hear of them; waiting lets the writers show their events, which they
    /// hold, instead of the feed reading them back from the store first.
    pub async fn await_own_writes(&self, index: u64, grace: std::time::Duration) {
        let _ = tokio::time::timeout(grace, async {
            loop {
                let ended = self.own_write_ended.notified();
                tokio::pin!(ended);
                ended.as_mut().enable();
                if self.index() >= index || self.own_writes.load(Ordering::Acquire) == 0 {
                    return;
                }
                ended.await;
            }
        })
        .await;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Shows a change this process has just written, so that its writer reads it at once:
    /// the event it appended, or else (a heartbeat or check result that changed no status)
    /// the record as written.
    pub async fn show_write(&self, applied: &Applied, store: &dyn Store) -> StoreResult<()> {
        match (&applied.event, &applied.record) {
            (Some(event), _) => self.reach(event.index, &applied.committed, store).await,
            (None, Some(record)) => {
                self.touch(record.to_instance());
                Ok(())
            }
            (None, None) => Ok(()),
        }
    }

    /// Makes sure the view holds `index`, reading what it lacks from the store.
    pub async fn catch_up_to(&self, index: u64, store: &dyn Store) -> StoreResult<()> {
        self.reach(index, &[], store).await
    }

    /// Makes sure the view holds `index`: nothing to do when it already does (the common
    /// case when writes commit in groups: the first writer of a group to get here applies
    /// the events of all of them). `committed`, the events of one transaction of this
    /// process, are applied as they are when they follow on from the view; otherwise (other
    /// processes' events came in between) the view reads from the store.
    async fn reach(&self, index: u64, committed: &[Event], store: &dyn Store) -> StoreResult<()> {
        if self.index() >= index {
            return Ok(());
        }
        let _guard = self.catching_up.lock().await;
        let held = self.index();
        if held >= index {
            return Ok(());
        }
        if self.on_another_history(store) {
            return self.catch_up_locked(store).await;
        }
        let follows_on = committed
            .first()
            .zip(committed.last())
            .is_some_and(|(first, last)| first.index <= held + 1 && last.index >= index);
        if follows_on {
            self.apply_all(committed.iter().cloned());
            return Ok(());
        }
        self.catch_up_locked(store).await
    }

    /// Reads every event after the view's index from the store and applies it.
    pub async fn catch_up(&self, store: &dyn Store) -> StoreResult<()> {
        let _guard = self.catching_up.lock().await;
        self.catch_up_locked(store).await
    }

    /// [`Self::catch_up`] for a caller holding `catching_up`.
    async fn catch_up_locked(&self, store: &dyn Store) -> StoreResult<()> {
        loop {
            let from = self.index();
            let events = store.events_after(from, None, CATCH_UP_BATCH).await?;
            if self.on_another_history(store) {
                tracing::warn!(
                    view_index = from,
                    "reloading the state from the database's new history"
                );
                return self.reload(store).await;
            }
            let Some(first) = events.first() else {
                // Nothing new, unless the database went back in time (restored from a
                // backup, or wiped): then this view is from another history.
                if store.current_index().await? < from {
                    tracing::warn!(
                        view_index = from,
                        "the database's index is behind this view: reloading the state"
                    );
                    self.reload(store).await?;
                }
                return Ok(());
            };
            if first.index != from + 1 {
                // The events we missed were pruned: start again from a snapshot.
                self.reload(store).await?;
                continue;
            }
            let full_batch = events.len() == CATCH_UP_BATCH as usize;
            self.apply_all(events);
            if !full_batch {
                return Ok(());
            }
        }
    }

    fn on_another_history(&self, store: &dyn Store) -> bool {
        store.history_changes() != self.history.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn reload(&self, store: &dyn Store) -> StoreResult<()> {
        let fresh = Self::load(store).await?;
        self.history.store(
            fresh.history.load(std::sync::atomic::Ordering::Relaxed),
            std::sync::atomic::Ordering::Relaxed,
        );
        let fresh_state = fresh
            .state
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let index = fresh_state.index;
        *self.write() = fresh_state;
        self.changes.send_replace(index);
        Ok(())
    }

    /// Applies events in index order; those the view already holds are skipped. The lock
    /// is let go every [`APPLY_AT_ONCE`] events; reads in between see the state of an
    /// index among them.
    fn apply_all(&self, events: impl IntoIterator<Item = Event>) {
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            self.apply_some(events.by_ref().take(APPLY_AT_ONCE));
        }
    }

    fn apply_some(&self, events: impl Iterator<Item = Event>) {
        let index = {
            let mut state = self.write();
            for event in events {
                if event.index <= state.index {
                    continue;
                }
                state.index = event.index;
                let service = state.services.entry(&event.service);
                service.index = event.index;
                service.changed();
                if event.kind == EventKind::Removed {
                    state.remove_instance(&event.service, &event.instance);
                } else {
                    let mut fresh = event.snapshot.clone();
                    if let Some(known) = service.instances.get(event.instance.as_str()) {
                        keep_newest_observations(&mut fresh, known);
                    }
                    state.put_instance(&event.service, &event.instance, fresh);
                }
                crate::metrics::event_applied(&event);
                if state.recent.len() == RECENT_EVENTS {
                    state.recent.pop_front();
                }
                state.recent.push_back(event);
            }
            state.index
        };
        self.changes.send_replace(index);
    }

    /// Records a change that appended no event (a heartbeat, a check result that kept the
    /// status), so reads show it.
    pub fn touch(&self, instance: Instance) {
        let mut state = self.write();
        if let Some(known) = state
            .services
            .get_mut(&instance.service)
            .and_then(|s| s.instances.get_mut(instance.id.as_str()))
        {
            keep_newest_observations(known, &instance);
        }
        if let Some(service) = state.services.get_mut(&instance.service) {
            service.changed();
        }
    }

    /// Records lease renewals announced by the change feed (another replica's, or this
    /// one's own coming back): each instance's heartbeat at `at` and its lease to
    /// `at + ttl` (none with `ttl_seconds` 0). As [`Self::touch`], only a newer observation
    /// counts, so renewals announced late or twice (an echo of a heartbeat this replica
    /// already shows) change nothing; unknown instances are ignored. One lock for the
    /// whole batch: a flush announces thousands.
    pub fn renew<'a>(&self, renewals: impl IntoIterator<Item = (&'a str, &'a str, DateTime<Utc>)>) {
        let mut state = self.write();
        for (service, id, at) in renewals {
            let Some(view) = state.services.get_mut(service) else {
                continue;
            };
            let Some(known) = view.instances.get_mut(id) else {
                continue;
            };
            if at <= known.last_heartbeat_at {
                continue;
            }
            known.last_heartbeat_at = at;
            known.lease_expires_at = (known.ttl_seconds > 0)
                .then(|| at + chrono::Duration::seconds(i64::from(known.ttl_seconds)));
            view.changed();
        }
    }

    /// What `read` makes of one instance as reads show it now, if the view knows it,
    /// without copying the instance.
    pub fn read_instance<T>(
        &self,
        service: &str,
        id: &str,
        read: impl FnOnce(&Instance) -> T,
    ) -> Option<T> {
        self.read()
            .services
            .get(service)
            .and_then(|s| s.instances.get(id))
            .map(read)
    }

    /// Changes one instance in place, if the view knows it, under one hold of the view's
    /// lock: `change` answers what to return and whether it changed the instance (then
    /// the service's serialized answers are dropped). For a heartbeat, which would
    /// otherwise read the instance under the lock and then take it again to write.
    pub fn change_instance<T>(
        &self,
        service: &str,
        id: &str,
        change: impl FnOnce(&mut Instance) -> (T, bool),
    ) -> Option<T> {
        let mut state = self.write();
        let view = state.services.get_mut(service)?;
        let (answer, changed) = change(view.instances.get_mut(id)?);
        if changed {
            view.changed();
        }
        Some(answer)
    }

    /// One instance as reads show it now, if the view knows it.
    #[cfg(test)]
    pub fn instance(&self, service: &str, id: &str) -> Option<Instance> {
        self.read()
            .services
            .get(service)
            .and_then(|s| s.instances.get(id))
            .cloned()
    }

    /// What `derive` makes of one service's instances, made once per state of the service
    /// and shared until it changes, with the global index (`None`: no such service).
    pub fn service_derived<T: Any + Send + Sync>(
        &self,
        name: &str,
        derive: impl FnOnce(&mut dyn Iterator<Item = &Instance>) -> T,
    ) -> (u64, Option<Arc<T>>) {
        let state = self.read();
        let Some(service) = state.services.get(name) else {
            return (state.index, None);
        };
        let mut derive = Some(derive);
        let mut make = || {
            let derive = derive.take().expect("derived at most once here");
            Arc::new(derive(&mut service.instances.values()))
        };
        let shared = service
            .derived
            .get_or_init(|| make() as Arc<dyn Any + Send + Sync>)
            .clone();
        // Made here for another type (two adapters deriving): made again, not shared.
        let derived = shared.downcast::<T>().unwrap_or_else(|_| make());
        (state.index, Some(derived))
    }

    /// Every instance, with the global index they are the state of (read together).
    pub fn all_instances(&self) -> (u64, Vec<Instance>) {
        let state = self.read();
        let instances = state
            .services
            .in_order()
            .flat_map(|s| s.instances.values().cloned())
            .collect();
        (state.index, instances)
    }

    /// The instances with this id, in any service (ids are unique per service only).
    pub fn instances_with_id(&self, id: &str) -> Vec<Instance> {
        self.read()
            .services
            .in_order()
            .filter_map(|s| s.instances.get(id).cloned())
            .collect()
    }

    /// The global index the view is at.
    pub fn index(&self) -> u64 {
        self.read().index
    }

    /// The index of one service's latest change (0 if unknown).
    pub fn service_index(&self, service: &str) -> u64 {
        self.read().services.get(service).map_or(0, |s| s.index)
    }

    /// A receiver that wakes on every change of the global index.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// How many blocking queries and streams are waiting for changes.
    pub fn watchers(&self) -> usize {
        self.changes.receiver_count()
    }

    /// `GET /v1/services`: every service that has instances.
    pub fn services(&self) -> ServiceList {
        self.services_selected(&Selection::default())
    }

    /// `GET /v1/services`: the selected services that have instances.
    pub fn services_selected(&self, selection: &Selection) -> ServiceList {
        let state = self.read();
        let page = state.services.page_with_instances(selection);
        let services = page
            .entries
            .iter()
            .map(|(name, s)| summarize(name, &s.counts))
            .collect();
        ServiceList {
            index: state.index,
            services,
            next_cursor: page.next_cursor(),
        }
    }

    /// `GET /v1/services/{service}`, optionally only instances with one status. A service
    /// with no event yet answers the global index: a blocking query with it then waits for
    /// the service's first change instead of polling with index 0.
    pub fn service(&self, name: &str, only: Option<Status>) -> ServiceInstances {
        let state = self.read();
        let (index, instances) = state
            .services
            .get(name)
            .map_or((state.index, Vec::new()), |s| {
                (s.index, s.instances_with(only))
            });
        ServiceInstances {
            index,
            name: name.to_owned(),
            instances,
        }
    }

    /// [`Self::service`] as JSON, and the service's index. The JSON is made once per state
    /// of the service and filter and shared by the lookups that follow, until the service
    /// changes (an event, or a heartbeat or check result that appended none).
    pub fn service_json(
        &self,
        name: &str,
        only: Option<Status>,
    ) -> serde_json::Result<(u64, Bytes)> {
        let state = self.read();
        let Some(service) = state.services.get(name) else {
            let empty = ServiceInstances {
                index: state.index,
                name: name.to_owned(),
                instances: Vec::new(),
            };
            return Ok((state.index, Bytes::from(serde_json::to_vec(&empty)?)));
        };
        let slot = &service.answers.0[answer_slot(only)];
        if let Some(body) = slot.get() {
            return Ok((service.index, body.clone()));
        }
        let answer = ServiceInstances {
            index: service.index,
            name: name.to_owned(),
            instances: service.instances_with(only),
        };
        let body = Bytes::from(serde_json::to_vec(&answer)?);
        // Another lookup may have filled the slot meanwhile, with the same state (changes
        // wait for the read lock held here): either answer is right.
        Ok((service.index, slot.get_or_init(|| body).clone()))
    }

    /// One service's answer in another protocol's shape, and the service's index: made by
    /// `make` (from the index and the instances) once per state of the service and `key`,
    /// then shared by the lookups that follow until the service changes, as
    /// [`Self::service_json`] is. A service with no event yet answers the global index.
    pub fn service_answer(
        &self,
        name: &str,
        key: &str,
        make: impl FnOnce(u64, &[&Instance]) -> Bytes,
    ) -> (u64, Bytes) {
        let state = self.read();
        let Some(service) = state.services.get(name) else {
            return (state.index, make(state.index, &[]));
        };
        let mut keyed = service
            .keyed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(body) = keyed.get(key) {
            return (service.index, body.clone());
        }
        let instances: Vec<&Instance> = service.instances.values().collect();
        let body = make(service.index, &instances);
        if keyed.len() < MAX_KEYED_ANSWERS {
            keyed.insert(key.to_owned(), body.clone());
        }
        (service.index, body)
    }

    /// `GET /v1/status`: the whole system now, optionally one service only.
    pub fn system_status(&self, only_service: Option<&str>, at: DateTime<Utc>) -> SystemStatus {
        self.system_status_selected(&Selection::only(only_service), at)
    }

    /// `GET /v1/status`: the selected services now.
    pub fn system_status_selected(&self, selection: &Selection, at: DateTime<Utc>) -> SystemStatus {
        let mut status = self.read().system_status(selection, at);
        status.self_preservation = self.self_preservation();
        status
    }

    /// `GET /v1/status?summary=true` now.
    pub fn status_summary(&self, at: DateTime<Utc>) -> StatusSummary {
        let mut summary = self.read().summary(at);
        summary.self_preservation = self.self_preservation();
        summary
    }

    /// The leases the self-preservation survey weighs, as the view holds them.
    pub fn leases(&self) -> Leases {
        self.read().tally.leases()
    }

    /// The self-preservation mode, as last read from the database.
    pub fn self_preservation(&self) -> SelfPreservation {
        self.self_preservation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Takes the mode the lease sweep read; answers the mode shown before.
    pub fn set_self_preservation(&self, mode: SelfPreservation) -> SelfPreservation {
        std::mem::replace(
            &mut *self
                .self_preservation
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            mode,
        )
    }

    /// Recent events after `after` (at most `limit`), when the view still holds all of
    /// them; `None` when the caller must read older events from the store.
    pub fn recent_events_after(
        &self,
        after: u64,
        service: Option<&str>,
        limit: usize,
    ) -> Option<Vec<Event>> {
        let state = self.read();
        let oldest = state.recent.front().map_or(state.index + 1, |e| e.index);
        if after + 1 < oldest {
            return None;
        }
        Some(
            state
                .recent
                .iter()
                .filter(|e| e.index > after)
                .filter(|e| service.is_none_or(|s| s == e.service))
                .take(limit)
                .cloned()
                .collect(),
        )
    }

    /// Picks the next instance of `service` in round-robin order among `candidates`.
    pub fn next_round_robin<'a>(
        &self,
        service: &str,
        candidates: &'a [Instance],
    ) -> Option<&'a Instance> {
        if candidates.is_empty() {
            return None;
        }
        let mut positions = self
            .round_robin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let position = positions.entry(service.to_owned()).or_default();
        let chosen = &candidates[*position % candidates.len()];
        *position = position.wrapping_add(1);
        Some(chosen)
    }
}

/// Copies what `newer` observed later than `target` (lease renewals, check results) into
/// `target`: heartbeats and checks that change no status are written without an event,
/// so an event applied afterwards may carry older observations.
fn keep_newest_observations(target: &mut Instance, newer: &Instance) {
    if newer.last_heartbeat_at > target.last_heartbeat_at && newer.status == target.status {
        target.last_heartbeat_at = newer.last_heartbeat_at;
        target.lease_expires_at = newer.lease_expires_at;
        // What a report said with that heartbeat: a note alone appends no event.
        target.lease_status = newer.lease_status;
        target.lease_output.clone_from(&newer.lease_output);
    }
    let checked_at = |i: &Instance| i.last_check.as_ref().map(|c| c.at);
    if checked_at(newer) > checked_at(target) && newer.check == target.check {
        target.last_check = newer.last_check.clone();
    }
}

fn summarize(name: &str, counts: &StatusCounts) -> ServiceSummary {
    ServiceSummary {
        name: name.to_owned(),
        instances: counts.total,
        passing: counts.passing,
        warning: counts.warning,
        critical: counts.critical,
        maintenance: counts.maintenance,
    }
}

/// The selected services of a past state, made of its instances at `index`.
pub fn system_status(
    index: u64,
    at: DateTime<Utc>,
    instances: impl IntoIterator<Item = Instance>,
    selection: &Selection,
) -> SystemStatus {
    State::of(index, instances).system_status(selection, at)
}

/// The summary of a past state, made of its instances at `index`.
pub fn status_summary(
    index: u64,
    at: DateTime<Utc>,
    instances: impl IntoIterator<Item = Instance>,
) -> StatusSummary {
    State::of(index, instances).summary(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{memory_store as store, register_in};

    /// The events of the transaction, with each snapshot's URL marked: what the view
    /// shows then tells whether it took them or read the store.
    fn marked(applied: &Applied) -> Applied {
        let committed: Vec<Event> = applied
            .committed
            .iter()
            .cloned()
            .map(|mut event| {
                event.snapshot.url = "http://marked:1".into();
                event
            })
            .collect();
        Applied {
            event: committed.last().cloned(),
            committed: committed.into(),
            ..applied.clone()
        }
    }

    #[tokio::test]
    async fn a_write_that_follows_on_from_the_view_is_shown_without_reading_the_store() {
        let store = store().await;
        let view = View::load(&store).await.expect("view");
        let applied = marked(&register_in(&store, "a").await);

        view.show_write(&applied, &store).await.expect("shown");

        assert_eq!(view.index(), 1);
        let shown = view.instance("sum", "a").expect("shown at once");
        assert_eq!(
            shown.url, "http://marked:1",
            "taken from the write's answer"
        );
    }

    #[tokio::test]
    async fn keyed_answers_are_made_once_per_change_of_the_service() {
        let store = store().await;
        let view = View::load(&store).await.expect("view");
        let made = std::sync::atomic::AtomicUsize::new(0);
        let make = |_: u64, instances: &[&Instance]| {
            made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Bytes::from(instances.len().to_string())
        };
        view.show_write(&register_in(&store, "a").await, &store)
            .await
            .expect("shown");
        let first = view.service_answer("sum", "k", make);
        assert_eq!(first, (1, Bytes::from("1")));
        assert_eq!(view.service_answer("sum", "k", make), first, "shared");
        assert_eq!(made.load(std::sync::atomic::Ordering::Relaxed), 1);
        view.show_write(&register_in(&store, "b").await, &store)
            .await
            .expect("shown");
        assert_eq!(view.service_answer("sum", "k", make), (2, Bytes::from("2")));
        assert_eq!(made.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    /// An event putting instance `id` of `service` at `status`, or removing it (`None`).
    fn change(
        index: u64,
        template: &Instance,
        (service, id): (&str, &str),
        status: Option<Status>,
    ) -> Event {
        let mut snapshot = template.clone();
        snapshot.service = service.to_owned();
        snapshot.id = id.to_owned();
        snapshot.status = status.unwrap_or(snapshot.status);
        Event {
            index,
            at: template.registered_at,
            service: service.to_owned(),
            instance: id.to_owned(),
            kind: if status.is_some() {
                EventKind::Updated
            } else {
                EventKind::Removed
            },
            from: None,
            to: status,
            reason: registry_api::Reason::Updated,
            snapshot,
        }
    }

    /// A view holding one instance of `sum` (made through a store), and that instance.
    async fn view_and_template() -> (View, Instance) {
        let store = store().await;
        let view = View::load(&store).await.expect("view");
        view.show_write(&register_in(&store, "a").await, &store)
            .await
            .expect("shown");
        let template = view.instance("sum", "a").expect("registered");
        (view, template)
    }

    /// The summary as a scan of every instance makes it.
    fn recounted(
        view: &View,
        at: DateTime<Utc>,
    ) -> (StatusCounts, StatusCounts, Vec<Instance>, u64) {
        let all = view.system_status(None, at);
        let instances = all.services.iter().flat_map(|s| &s.instances);
        let critical: Vec<Instance> = instances
            .clone()
            .filter(|i| i.status == Status::Critical)
            .cloned()
            .collect();
        (
            StatusCounts::of(instances.map(|i| i.status)),
            StatusCounts::of(
                all.services
                    .iter()
                    .map(|s| ServiceStatus::roll_up(&s.instances)),
            ),
            critical
                .iter()
                .take(StatusSummary::MAX_CRITICAL)
                .cloned()
                .collect(),
            critical.len() as u64,
        )
    }

    #[tokio::test]
    async fn the_running_counts_agree_with_a_recount_after_any_changes() {
        let (view, template) = view_and_template().await;
        let statuses = [
            None,
            Some(Status::Passing),
            Some(Status::Warning),
            Some(Status::Critical),
            Some(Status::Maintenance),
        ];
        // A fixed pseudo-random walk over 12 services of 15 instances each.
        let mut seed: u64 = 7;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        for index in 2..3_000 {
            let service = format!("svc-{}", next(12));
            let id = format!("i-{}", next(15));
            let status = statuses[next(5) as usize];
            let mut event = change(index, &template, (&service, &id), status);
            event.snapshot.ttl_seconds = [0, 10][next(2) as usize];
            event.snapshot.lease_held = next(4) == 0;
            view.apply_all([event]);
            if index % 500 == 0 {
                let summary = view.status_summary(template.registered_at);
                assert_eq!(
                    (
                        summary.instances,
                        summary.services,
                        summary.critical,
                        summary.critical_total
                    ),
                    recounted(&view, template.registered_at),
                    "after index {index}"
                );
                let all = view.system_status(None, template.registered_at);
                let leases = all
                    .services
                    .iter()
                    .flat_map(|s| &s.instances)
                    .map(Leases::of)
                    .fold(Leases::default(), Leases::plus);
                assert_eq!(view.leases(), leases, "after index {index}");
            }
        }
    }

    #[tokio::test]
    async fn a_summary_at_100_000_instances_does_not_read_them_all() {
        let (view, template) = view_and_template().await;
        let mut index = 1;
        let events = (0..10_000).flat_map(|service| {
            let template = &template;
            (0..10).map(move |id| {
                let status = if (service + id) % 7 == 0 {
                    Status::Critical
                } else {
                    Status::Passing
                };
                (
                    format!("svc-{service:05}"),
                    format!("i-{id}"),
                    status,
                    template,
                )
            })
        });
        let events: Vec<Event> = events
            .map(|(service, id, status, template)| {
                index += 1;
                change(index, template, (&service, &id), Some(status))
            })
            .collect();
        view.apply_all(events);
        let at = template.registered_at;

        let started = std::time::Instant::now();
        let summary = view.status_summary(at);
        let summary_took = started.elapsed();
        let started = std::time::Instant::now();
        let whole = view.system_status(None, at);
        let whole_took = started.elapsed();

        assert_eq!(summary.instances.total, 100_001);
        assert_eq!(summary.critical.len(), StatusSummary::MAX_CRITICAL);
        let template_critical = u64::from(template.status == Status::Critical);
        assert_eq!(summary.critical_total, 14_285 + template_critical);
        assert_eq!(whole.services.len(), 10_001);
        println!("at 100,000 instances: summary {summary_took:?}, whole system {whole_took:?}");
        // The summary copies 100 instances, the whole answer every one of them.
        assert!(
            summary_took * 20 < whole_took,
            "the summary ({summary_took:?}) is not far cheaper than reading everything ({whole_took:?})"
        );
    }

    #[tokio::test]
    async fn a_write_after_changes_the_view_lacks_reads_them_from_the_store() {
        let store = store().await;
        let view = View::load(&store).await.expect("view");
        // Another process's change, which this view has not seen.
        register_in(&store, "a").await;
        let applied = marked(&register_in(&store, "b").await);

        view.show_write(&applied, &store).await.expect("shown");

        assert_eq!(view.index(), 2);
        assert!(view.instance("sum", "a").is_some(), "the other change too");
        let shown = view.instance("sum", "b").expect("shown at once");
        assert_eq!(shown.url, "http://10.0.0.1:4040", "read from the store");
    }
}
