//! Discovery: where the instances of a service are, answered from a local view.
//!
//! Asking the registry on every outgoing call would put it on the path of every request of
//! the whole system: its latency added to each call, and its outage an outage of
//! everything. So a service is fetched once, then kept current by a background watch (a
//! loop of blocking queries, which the registry answers as soon as the service changes),
//! and [`Discovery::resolve`] answers from that view without I/O.
//!
//! When the registry cannot be reached, the view is kept and served as it is ("fail
//! static", as Eureka and Envoy do): the instances that worked a moment ago are a far
//! better guess than none, and the circuit breaker weeds out the ones that died meanwhile.
//! The answer says so ([`Resolved::registry_reachable`], [`Resolved::age`]) so that callers
//! and metrics can tell a fresh view from a stale one. The optional cache file extends the
//! same idea to a process that starts while the registry is down.
//!
//! A registry can also come back having lost its state: restarted on an empty database, a
//! restored old backup, or a failover to a replica that is behind. It then forgets
//! instances that are alive and will register again within one heartbeat; following it at
//! once would make every call in that moment fail or come back partial. So discovery
//! *relearns*: when the database's epoch changes (the `Registry-Epoch` header of its
//! answers, docs/api.md) or a service's index goes backwards, the view keeps the instances
//! it knew, merged with what the registry now says. The registry's answer wins for every
//! instance it reports; an instance it does not report is kept with its last known state
//! until it appears again (re-registered) or one lease interval of its own (its
//! `ttl_seconds`, or [`DiscoveryOptions::relearn_default_lease`] without a lease) plus
//! [`DiscoveryOptions::relearn_margin`] has passed; then the view follows the registry.
//! Every kept instance has such a deadline, so the view never waits without bound, and the
//! circuit breakers cover an instance that really died meanwhile. The epoch is needed
//! because indexes alone cannot tell: a fresh database's index can pass the old one within
//! seconds. The watch itself continues from the index of the latest answer, whichever way
//! it moved (waiting for the old index to come back would freeze the view).

mod cache_file;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use registry_api::{Backoff, Instance, Jitter, ServiceInstances};

use crate::api::Epoched;
use tokio::task::JoinHandle;

use crate::{ClientError, RegistryApi};
use cache_file::{CacheFile, CachedView};

/// The instances of one service as this process knows them.
///
/// ```no_run
/// # async fn demo(discovery: registry_client::discovery::Discovery) -> Result<(), registry_client::ClientError> {
/// let sum = discovery.resolve("sum").await?;
/// if !sum.registry_reachable {
///     eprintln!("registry unreachable, using a view {:?} old", sum.age);
/// }
/// for instance in &sum.instances {
///     println!("{} {} {:?}", instance.id, instance.url, instance.status);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The service name.
    pub service: String,
    /// Every instance, whatever its status: choosing among them is the balancer's job
    /// ([`RoundRobin`](crate::balancer::RoundRobin)).
    pub instances: Vec<Instance>,
    /// The service's index in the registry when this view was fetched.
    pub index: u64,
    /// When this content was received from the registry (for a view loaded from the cache
    /// file: when the process that wrote the file received it).
    pub fetched_at: SystemTime,
    /// Time since the registry last confirmed this view (answered it, changed or not). A
    /// view loaded from the cache file and not yet confirmed counts from `fetched_at`.
    pub age: Duration,
    /// Whether the view is confirmed by the registry in this process and the last contact
    /// with the registry worked; `false` means the view is served from memory or from the
    /// cache file while the registry is unreachable (fail static).
    pub registry_reachable: bool,
    /// How many of `instances` the registry does not report: kept, with their last known
    /// state, while discovery relearns after the registry lost its state (see the module
    /// doc). 0 when the view is exactly the registry's.
    pub relearning: usize,
}

/// Tuning of [`Discovery`]; [`Default`] gives the default named on each field.
///
/// ```
/// use std::time::Duration;
/// use registry_client::discovery::DiscoveryOptions;
///
/// let options = DiscoveryOptions {
///     cache_file: Some("/var/cache/sum/registry.json".into()),
///     ..DiscoveryOptions::default()
/// };
/// assert_eq!(options.wait, Duration::from_secs(30));
/// ```
#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    /// How long each blocking query may be held by the registry (default 30 s).
    pub wait: Duration,
    /// First backoff step after a failed query (default 100 ms): the step doubles with
    /// each failure in a row and each retry waits between half its step and the step.
    /// Also the least time between two queries that brought nothing new.
    pub backoff_min: Duration,
    /// Longest delay between retries (default 5 s); errors that repeating cannot fix (a
    /// refused token, an undecodable answer) wait this long at once.
    pub backoff_max: Duration,
    /// Longest time the first [`Discovery::resolve`] of a service waits for the registry
    /// (default 3 s) before answering from the cache file, or failing.
    pub first_fetch_timeout: Duration,
    /// A JSON file that keeps the views across restarts, so that a process started while
    /// the registry is down still resolves (default: none).
    pub cache_file: Option<PathBuf>,
    /// While relearning after the registry lost its state, an instance the registry no
    /// longer reports is kept for its lease (`ttl_seconds`) plus this margin (default 5 s),
    /// the time a live instance needs to notice and register again.
    pub relearn_margin: Duration,
    /// The lease assumed, while relearning, for an instance registered without one
    /// (`ttl_seconds` 0; default 30 s).
    pub relearn_default_lease: Duration,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        Self {
            wait: Duration::from_secs(30),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            first_fetch_timeout: Duration::from_secs(3),
            cache_file: None,
            relearn_margin: Duration::from_secs(5),
            relearn_default_lease: Duration::from_secs(30),
        }
    }
}

/// The discovery cache: one view and one background watch per service resolved.
///
/// Cheap to clone: clones share the views and the watches. The watches stop on
/// [`shutdown`](Self::shutdown) or when the last clone is dropped. Needs a Tokio runtime
/// for [`resolve`](Self::resolve) (the watches are Tokio tasks).
///
/// ```no_run
/// # async fn demo() -> Result<(), registry_client::ClientError> {
/// use registry_client::RegistryApi;
/// use registry_client::discovery::Discovery;
///
/// let discovery = Discovery::new(RegistryApi::new("http://registry:8000")?);
/// let concat = discovery.resolve("concat").await?; // fetched once, then watched
/// println!("{} instance(s) of concat", concat.instances.len());
/// let again = discovery.resolve("concat").await?; // from memory, no I/O
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Discovery {
    handle: Arc<Handle>,
}

impl fmt::Debug for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.handle.shared;
        let services = shared.lock_state().views.len();
        f.debug_struct("Discovery")
            .field("registry", &shared.api.base_url().as_str())
            .field("services", &services)
            .field("registry_reachable", &shared.reachable())
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// A discovery cache over `api` with the default options (no cache file).
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), registry_client::ClientError> {
    /// use registry_client::{RegistryApi, discovery::Discovery};
    ///
    /// let discovery = Discovery::new(RegistryApi::new("http://registry:8000")?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(api: RegistryApi) -> Self {
        Self::with_options(api, DiscoveryOptions::default())
    }

    /// A discovery cache over `api` with `options`. When `options.cache_file` names a file
    /// that exists, its views are loaded now (a missing or corrupt file is logged and
    /// ignored); they are served, marked unconfirmed, until the registry answers.
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), registry_client::ClientError> {
    /// use std::time::Duration;
    /// use registry_client::RegistryApi;
    /// use registry_client::discovery::{Discovery, DiscoveryOptions};
    ///
    /// let discovery = Discovery::with_options(
    ///     RegistryApi::new("http://registry:8000")?,
    ///     DiscoveryOptions {
    ///         wait: Duration::from_secs(60),
    ///         cache_file: Some("/var/cache/sum/registry.json".into()),
    ///         ..DiscoveryOptions::default()
    ///     },
    /// );
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_options(api: RegistryApi, options: DiscoveryOptions) -> Self {
        let views = options
            .cache_file
            .as_deref()
            .map(load_seed)
            .unwrap_or_default();
        let shared = Arc::new(Shared {
            api,
            options,
            state: Mutex::new(State {
                views,
                watches: HashMap::new(),
                stopped: false,
                generation: 0,
            }),
            health: AtomicU8::new(HEALTH_UNKNOWN),
            written: Mutex::new(0),
        });
        Self {
            handle: Arc::new(Handle { shared }),
        }
    }

    /// Answers from the local view; the first call for a service fetches it (bounded by
    /// `first_fetch_timeout`) and starts a background watch that keeps it fresh.
    ///
    /// If the registry is unreachable it answers the last known view (fail static) with
    /// `registry_reachable: false` and its age. With nothing known it fails with the error
    /// of the fetch: the transport error, an [`Api`](ClientError::Api) or
    /// [`Decode`](ClientError::Decode) error, or [`Stalled`](ClientError::Stalled) when the
    /// registry did not answer within `first_fetch_timeout`.
    ///
    /// ```no_run
    /// # async fn demo(discovery: registry_client::discovery::Discovery) -> Result<(), registry_client::ClientError> {
    /// use registry_client::Status;
    ///
    /// let sum = discovery.resolve("sum").await?;
    /// let passing = sum.instances.iter().filter(|i| i.status == Status::Passing).count();
    /// println!("{passing} passing instance(s), view {:?} old", sum.age);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn resolve(&self, service: &str) -> Result<Resolved, ClientError> {
        let resolved = self.resolve_uncounted(service).await;
        crate::metrics::discovery(
            service,
            resolved.as_ref().ok().map(|view| view.age),
            self.registry_reachable(),
        );
        resolved
    }

    async fn resolve_uncounted(&self, service: &str) -> Result<Resolved, ClientError> {
        let shared = &self.handle.shared;
        if let Some(resolved) = shared.answer_from_memory(service) {
            return Ok(resolved);
        }
        let timeout = shared.options.first_fetch_timeout;
        let fetched = tokio::time::timeout(timeout, shared.api.service_epoched(service, None))
            .await
            .unwrap_or(Err(ClientError::Stalled(timeout)));
        match fetched {
            Ok(answer) => {
                shared.mark_reachable();
                let resolved = shared.install_first(service, answer);
                shared.ensure_watch(service);
                Ok(resolved)
            }
            Err(error) => {
                shared.mark_unreachable(service, &error);
                let known = shared.view(service);
                // Keep trying in the background when there is a view to refresh or the
                // failure may pass; a refusal with nothing known (a bad name, a wrong
                // token) would only loop, and the next resolve reports it again.
                if known.is_some() || error.is_transient() {
                    shared.ensure_watch(service);
                }
                known.ok_or(error)
            }
        }
    }

    /// The current view of a service without any I/O: `None` if it was never resolved
    /// (nor loaded from the cache file).
    ///
    /// ```no_run
    /// # fn demo(discovery: registry_client::discovery::Discovery) {
    /// if let Some(sum) = discovery.cached("sum") {
    ///     println!("sum at index {}: {} instance(s)", sum.index, sum.instances.len());
    /// }
    /// # }
    /// ```
    pub fn cached(&self, service: &str) -> Option<Resolved> {
        self.handle.shared.view(service)
    }

    /// Whether the last contact with the registry worked (`false` before any contact).
    ///
    /// ```no_run
    /// # fn demo(discovery: registry_client::discovery::Discovery) {
    /// let gauge = if discovery.registry_reachable() { 1 } else { 0 };
    /// # }
    /// ```
    pub fn registry_reachable(&self) -> bool {
        self.handle.shared.reachable()
    }

    /// Age of the oldest view held (for a cache-age metric); `None` when nothing is held.
    ///
    /// ```no_run
    /// # fn demo(discovery: registry_client::discovery::Discovery) {
    /// let seconds = discovery.max_cache_age().map_or(0.0, |age| age.as_secs_f64());
    /// # }
    /// ```
    pub fn max_cache_age(&self) -> Option<Duration> {
        let state = self.handle.shared.lock_state();
        state.views.values().map(View::age).max()
    }

    /// Stops every watch task. The views stay readable (and are no longer refreshed);
    /// a later [`resolve`](Self::resolve) of an unknown service fetches it once without
    /// starting a watch.
    ///
    /// ```no_run
    /// # fn demo(discovery: registry_client::discovery::Discovery) {
    /// discovery.shutdown();
    /// # }
    /// ```
    pub fn shutdown(&self) {
        self.handle.shared.shutdown();
    }
}

/// Owned by the [`Discovery`] clones only (the watch tasks hold [`Shared`]), so that
/// dropping the last clone stops the watches instead of leaking them.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.shutdown();
    }
}

const HEALTH_UNKNOWN: u8 = 0;
const HEALTH_UP: u8 = 1;
const HEALTH_DOWN: u8 = 2;

struct Shared {
    api: RegistryApi,
    options: DiscoveryOptions,
    state: Mutex<State>,
    /// One of the `HEALTH_*` values: whether the last contact worked.
    health: AtomicU8,
    /// Generation of the snapshot last written to the cache file (writes run on blocking
    /// threads and may finish out of order; an older snapshot must not win).
    written: Mutex<u64>,
}

struct State {
    views: HashMap<String, View>,
    watches: HashMap<String, JoinHandle<()>>,
    stopped: bool,
    /// Bumped on every change of a view; numbers cache file snapshots.
    generation: u64,
}

struct View {
    service: String,
    index: u64,
    instances: Vec<Instance>,
    fetched_at: SystemTime,
    /// When the registry last confirmed the view, or when it was loaded from the file.
    confirmed_at: Instant,
    /// Age the view already had at `confirmed_at` (non-zero only for a loaded view).
    age_at_confirmation: Duration,
    /// Whether the registry answered this view in this process (false for a loaded view
    /// until the first successful fetch).
    confirmed: bool,
    /// The epoch of the registry's database that gave `instances` (none from a registry
    /// older than the epoch, or a cache file written before it).
    epoch: Option<String>,
    /// Instances known before the registry lost its state that it does not report (yet),
    /// each served until its deadline while discovery relearns (see the module doc).
    forgotten: Vec<Forgotten>,
}

/// An instance the registry forgot, kept until `until` unless it appears again.
#[derive(Debug, Clone)]
struct Forgotten {
    instance: Instance,
    until: Instant,
}

/// How long relearning keeps instances (from [`DiscoveryOptions`]).
#[derive(Debug, Clone, Copy)]
struct RelearnWindow {
    margin: Duration,
    default_lease: Duration,
}

impl RelearnWindow {
    fn of(options: &DiscoveryOptions) -> Self {
        Self {
            margin: options.relearn_margin,
            default_lease: options.relearn_default_lease,
        }
    }

    /// One lease of `instance` plus the margin: by then a live instance has registered again.
    fn keep(&self, instance: &Instance) -> Duration {
        let lease = if instance.ttl_seconds > 0 {
            Duration::from_secs(u64::from(instance.ttl_seconds))
        } else {
            self.default_lease
        };
        lease.saturating_add(self.margin)
    }
}

impl View {
    fn fetched(service: &str, answer: Epoched<ServiceInstances>) -> Self {
        Self {
            service: service.to_owned(),
            index: answer.value.index,
            instances: answer.value.instances,
            fetched_at: SystemTime::now(),
            confirmed_at: Instant::now(),
            age_at_confirmation: Duration::ZERO,
            confirmed: true,
            epoch: answer.epoch,
            forgotten: Vec::new(),
        }
    }

    /// Whether `answer` comes from a registry that lost the state this view was made from:
    /// another database (the epoch changed) or an index that went backwards.
    fn lost_state(&self, answer: &Epoched<ServiceInstances>) -> Option<&'static str> {
        let other_epoch = matches!(
            (&self.epoch, &answer.epoch),
            (Some(held), Some(answered)) if held != answered
        );
        if other_epoch {
            Some("the registry's epoch changed")
        } else if answer.value.index < self.index {
            Some("the service's index went backwards")
        } else {
            None
        }
    }

    /// Takes an answer of the registry. If the registry lost its state, every instance
    /// served now that it does not report is kept (an instance already kept keeps its
    /// deadline, so that a registry changing its mind again cannot extend the window).
    /// Instances it reports leave the kept ones: the registry's word wins. Answers
    /// whether the content changed (the cache file is then rewritten).
    fn take(
        &mut self,
        answer: Epoched<ServiceInstances>,
        window: RelearnWindow,
        now: Instant,
    ) -> bool {
        let lost = self.lost_state(&answer);
        let reported = |id: &str| answer.value.instances.iter().any(|i| i.id == id);
        // Deadlines are enforced on every read; the entries go (and the end is logged)
        // with the next answer.
        let was_relearning = !self.forgotten.is_empty();
        self.forgotten
            .retain(|f| f.until > now && !reported(&f.instance.id));
        if let Some(why) = lost {
            let mut kept = 0;
            for instance in &self.instances {
                let known = self.forgotten.iter().any(|f| f.instance.id == instance.id);
                if !reported(&instance.id) && !known {
                    self.forgotten.push(Forgotten {
                        instance: instance.clone(),
                        until: now + window.keep(instance),
                    });
                    kept += 1;
                }
            }
            tracing::info!(
                service = %self.service,
                why,
                held_index = self.index,
                answered_index = answer.value.index,
                kept = self.forgotten.len(),
                newly_forgotten = kept,
                "the registry lost its state: relearning, keeping the instances it forgot until they register again or their lease passes"
            );
        }
        if was_relearning && self.forgotten.is_empty() {
            tracing::info!(
                service = %self.service,
                "relearning done: every forgotten instance registered again or its lease passed; following the registry"
            );
        }
        let changed = lost.is_some()
            || self.index != answer.value.index
            || self.instances != answer.value.instances
            || self.epoch != answer.epoch;
        if changed {
            self.index = answer.value.index;
            self.instances = answer.value.instances;
            self.fetched_at = SystemTime::now();
            self.epoch = answer.epoch;
        }
        self.confirmed_at = Instant::now();
        self.age_at_confirmation = Duration::ZERO;
        self.confirmed = true;
        changed
    }

    fn age(&self) -> Duration {
        self.age_at_confirmation
            .saturating_add(self.confirmed_at.elapsed())
    }

    /// The view as served: the registry's instances, and while relearning the forgotten
    /// ones whose deadline has not passed (checked here, so that the view follows the
    /// registry at the deadline even if the registry says nothing then).
    fn resolved(&self, registry_up: bool) -> Resolved {
        self.resolved_at(registry_up, Instant::now())
    }

    fn resolved_at(&self, registry_up: bool, now: Instant) -> Resolved {
        let mut instances = self.instances.clone();
        let before = instances.len();
        instances.extend(
            self.forgotten
                .iter()
                .filter(|f| f.until > now)
                .map(|f| f.instance.clone()),
        );
        Resolved {
            service: self.service.clone(),
            relearning: instances.len() - before,
            instances,
            index: self.index,
            fetched_at: self.fetched_at,
            age: self.age(),
            registry_reachable: self.confirmed && registry_up,
        }
    }
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves views that are still valid data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reachable(&self) -> bool {
        self.health.load(Ordering::Relaxed) == HEALTH_UP
    }

    fn mark_reachable(&self) {
        if self.health.swap(HEALTH_UP, Ordering::Relaxed) == HEALTH_DOWN {
            tracing::info!(
                registry = %self.api.base_url(),
                "registry reachable again; discovery views are live"
            );
        }
    }

    /// Logs only the transition, not every failed retry: an outage is one warning.
    ///
    /// A refusal of this one request (a name the registry rejects, or a URL that could not
    /// be built, so nothing was sent) says nothing about the registry and changes nothing.
    /// A refused token, a 5xx and an undecodable answer do count: the views cannot be
    /// confirmed while they last.
    fn mark_unreachable(&self, service: &str, error: &ClientError) {
        let refusal_of_this_request = match error {
            ClientError::InvalidUrl(_) => true,
            ClientError::Api { status, .. } => {
                (400..500).contains(status) && !matches!(status, 401 | 403 | 408 | 429)
            }
            _ => false,
        };
        if refusal_of_this_request {
            tracing::debug!(service, %error, "the registry refused the query");
            return;
        }
        if self.health.swap(HEALTH_DOWN, Ordering::Relaxed) != HEALTH_DOWN {
            tracing::warn!(
                registry = %self.api.base_url(),
                service,
                %error,
                "registry unreachable; serving the last known instances"
            );
        } else {
            tracing::debug!(service, %error, "registry still unreachable");
        }
    }

    fn view(&self, service: &str) -> Option<Resolved> {
        let up = self.reachable();
        self.lock_state()
            .views
            .get(service)
            .map(|view| view.resolved(up))
    }

    /// The view, if a watch keeps it (or no watch ever will, after shutdown).
    fn answer_from_memory(&self, service: &str) -> Option<Resolved> {
        let up = self.reachable();
        let state = self.lock_state();
        let view = state.views.get(service)?;
        (state.stopped || state.watches.contains_key(service)).then(|| view.resolved(up))
    }

    /// Installs the answer of a first fetch, unless the view was confirmed meanwhile (by a
    /// concurrent resolve or the watch, which are at least as recent). A view loaded from
    /// the cache file takes it as the watch's answers are taken: a registry that lost the
    /// state the file was made from is relearned too.
    fn install_first(
        self: &Arc<Self>,
        service: &str,
        answer: Epoched<ServiceInstances>,
    ) -> Resolved {
        let mut state = self.lock_state();
        if let Some(view) = state.views.get(service).filter(|v| v.confirmed) {
            return view.resolved(true);
        }
        let resolved = match state.views.get_mut(service) {
            Some(view) => {
                view.take(answer, RelearnWindow::of(&self.options), Instant::now());
                view.resolved(true)
            }
            None => {
                let view = View::fetched(service, answer);
                let resolved = view.resolved(true);
                state.views.insert(service.to_owned(), view);
                resolved
            }
        };
        self.persist(state);
        resolved
    }

    /// Takes an answer of the watch (see [`View::take`]); it counts as a confirmation in
    /// any case.
    fn apply(self: &Arc<Self>, service: &str, answer: Epoched<ServiceInstances>) {
        let mut state = self.lock_state();
        let changed = match state.views.get_mut(service) {
            Some(view) => view.take(answer, RelearnWindow::of(&self.options), Instant::now()),
            None => {
                state
                    .views
                    .insert(service.to_owned(), View::fetched(service, answer));
                true
            }
        };
        if changed {
            self.persist(state);
        }
    }

    fn ensure_watch(self: &Arc<Self>, service: &str) {
        let mut state = self.lock_state();
        if state.stopped || state.watches.contains_key(service) {
            return;
        }
        let from = state
            .views
            .get(service)
            .filter(|v| v.confirmed)
            .map(|v| v.index);
        let task = tokio::spawn(watch(Arc::clone(self), service.to_owned(), from));
        state.watches.insert(service.to_owned(), task);
    }

    fn shutdown(&self) {
        let mut state = self.lock_state();
        state.stopped = true;
        for (_, task) in state.watches.drain() {
            task.abort();
        }
    }

    /// Writes every view to the cache file (if any) on a blocking thread. Takes the lock
    /// guard so that the snapshot and its generation number are taken together.
    fn persist(self: &Arc<Self>, mut state: MutexGuard<'_, State>) {
        let Some(path) = self.options.cache_file.clone() else {
            return;
        };
        state.generation += 1;
        let generation = state.generation;
        let snapshot: CacheFile = state
            .views
            .iter()
            .map(|(name, view)| {
                let cached = CachedView {
                    index: view.index,
                    instances: view.instances.clone(),
                    fetched_at: Some(DateTime::<Utc>::from(view.fetched_at)),
                    epoch: view.epoch.clone(),
                };
                (name.clone(), cached)
            })
            .collect();
        drop(state);
        let shared = Arc::clone(self);
        // Detached on purpose: the write finishes even if the watch that caused it stops.
        drop(tokio::task::spawn_blocking(move || {
            let mut written = shared
                .written
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if generation <= *written {
                return;
            }
            match cache_file::write(&path, &snapshot) {
                Ok(()) => *written = generation,
                Err(error) => tracing::warn!(
                    path = %path.display(),
                    %error,
                    "cannot write the discovery cache file"
                ),
            }
        }));
    }
}

/// The blocking-query loop of one service; runs until aborted by [`Shared::shutdown`].
///
/// `from` is the index of a confirmed view. Without one, and after every failure, the next
/// query is a plain read: a view loaded from the file, or one held through an outage, must
/// be confirmed as soon as the registry answers, not after a whole `wait` (a blocking
/// query on an unchanged service is held that long, and the view would stay marked
/// unreachable meanwhile).
async fn watch(shared: Arc<Shared>, service: String, from: Option<u64>) {
    let options = &shared.options;
    // A zero minimum would retry in a busy loop. Jittered so that clients cut off together
    // do not retry together.
    let least = options.backoff_min.max(Duration::from_millis(1));
    let backoff = Backoff::new(least, options.backoff_max.max(least)).with_jitter(Jitter::Equal);
    let mut failures = 0_u32;
    let mut held = from;
    let mut confirm_now = from.is_none();
    loop {
        let asked = Instant::now();
        let result = match held {
            Some(index) if !confirm_now => {
                shared
                    .api
                    .watch_service_epoched(&service, None, index, options.wait)
                    .await
            }
            _ => shared.api.service_epoched(&service, None).await,
        };
        match result {
            Ok(answer) => {
                failures = 0;
                shared.mark_reachable();
                // Whichever way the index moved: an older one (the registry lost its
                // state) is where the registry's changes now count from. The view decides
                // what to keep meanwhile (`View::take`).
                let index = answer.value.index;
                let progressed = confirm_now || held.is_none_or(|held| index > held);
                held = Some(index);
                confirm_now = false;
                shared.apply(&service, answer);
                if !progressed && asked.elapsed() < least {
                    // An immediate answer without news (a registry that just lost its
                    // state, or a proxy that drops `index`) must not become a busy loop.
                    tokio::time::sleep(least).await;
                }
            }
            Err(error) => {
                shared.mark_unreachable(&service, &error);
                confirm_now = true;
                failures = failures.saturating_add(1);
                let delay = if error.is_transient() {
                    backoff.delay(failures)
                } else {
                    options.backoff_max
                };
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The views of the cache file, served unconfirmed until the registry answers.
fn load_seed(path: &Path) -> HashMap<String, View> {
    let now = SystemTime::now();
    cache_file::load(path)
        .into_iter()
        .map(|(name, cached)| {
            let fetched_at = cached.fetched_at.map_or(now, SystemTime::from);
            let view = View {
                service: name.clone(),
                index: cached.index,
                instances: cached.instances,
                fetched_at,
                confirmed_at: Instant::now(),
                age_at_confirmation: now.duration_since(fetched_at).unwrap_or_default(),
                confirmed: false,
                epoch: cached.epoch,
                forgotten: Vec::new(),
            };
            (name, view)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicU32;

    use registry_api::Status;

    use super::*;

    pub(super) fn instance(id: &str, status: Status) -> Instance {
        let now = Utc::now();
        Instance {
            id: id.to_owned(),
            service: "sum".to_owned(),
            url: format!("http://{id}:4040"),
            status,
            tags: vec!["v1".to_owned()],
            metadata: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
            ttl_seconds: 10,
            check: None,
            registered_at: now,
            last_heartbeat_at: now,
            lease_expires_at: Some(now),
            status_changed_at: now,
            last_check: None,
            lease_held: false,
            deregister_critical_after: None,
            lease_status: None,
            lease_output: None,
            maintenance_reason: None,
        }
    }

    /// A fresh directory under the system temp dir, removed on drop.
    pub(super) struct TempDir(pub(super) PathBuf);

    impl TempDir {
        pub(super) fn new() -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "registry-client-discovery-{}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed),
                rand::random::<u64>()
            ));
            std::fs::create_dir_all(&dir).expect("create temp dir");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A registry URL nothing answers on: the port of a listener that was closed.
    fn dead_api() -> RegistryApi {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        RegistryApi::new(&format!("http://{addr}")).expect("api")
    }

    fn options(cache_file: PathBuf) -> DiscoveryOptions {
        DiscoveryOptions {
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            first_fetch_timeout: Duration::from_secs(2),
            cache_file: Some(cache_file),
            ..DiscoveryOptions::default()
        }
    }

    #[test]
    fn a_cache_file_seeds_unconfirmed_views() {
        let dir = TempDir::new();
        let path = dir.0.join("registry.json");
        let fetched_at = Utc::now() - chrono::Duration::seconds(90);
        let written = CacheFile::from([
            (
                "sum".to_owned(),
                CachedView {
                    index: 42,
                    instances: vec![
                        instance("sum-1", Status::Passing),
                        instance("sum-2", Status::Warning),
                    ],
                    fetched_at: Some(fetched_at),
                    epoch: None,
                },
            ),
            (
                "concat".to_owned(),
                CachedView {
                    index: 7,
                    instances: Vec::new(),
                    fetched_at: None,
                    epoch: None,
                },
            ),
        ]);
        cache_file::write(&path, &written).expect("write");

        let discovery = Discovery::with_options(dead_api(), options(path));
        let sum = discovery.cached("sum").expect("seeded from the file");
        assert_eq!(sum.service, "sum");
        assert_eq!(sum.index, 42);
        assert_eq!(sum.instances, written["sum"].instances);
        assert!(!sum.registry_reachable, "not confirmed by the registry yet");
        assert!(sum.age >= Duration::from_secs(89), "{:?}", sum.age);
        assert_eq!(DateTime::<Utc>::from(sum.fetched_at), fetched_at);
        assert!(discovery.cached("concat").is_some());
        assert!(discovery.cached("mult").is_none());
        assert!(discovery.max_cache_age() >= Some(Duration::from_secs(89)));
        assert!(!discovery.registry_reachable());
    }

    #[test]
    fn a_file_without_fetched_at_loads() {
        let dir = TempDir::new();
        let path = dir.0.join("registry.json");
        let body = serde_json::json!({
            "sum": {"index": 3, "instances": [instance("sum-1", Status::Passing)]}
        });
        std::fs::write(&path, body.to_string()).expect("write");
        let discovery = Discovery::with_options(dead_api(), options(path));
        let sum = discovery.cached("sum").expect("seeded");
        assert_eq!(sum.index, 3);
        assert!(sum.age < Duration::from_secs(5));
    }

    #[test]
    fn corrupt_or_missing_cache_files_are_ignored() {
        let dir = TempDir::new();
        let missing = dir.0.join("absent.json");
        let discovery = Discovery::with_options(dead_api(), options(missing));
        assert!(discovery.cached("sum").is_none());
        assert!(discovery.max_cache_age().is_none());

        for garbage in [
            &b"{\"sum\": {\"index\": 1, \"instances\": [tru"[..],
            b"\xff\xfe not json",
            b"[1, 2, 3]",
            b"{\"sum\": {\"index\": -1, \"instances\": []}}",
        ] {
            let path = dir.0.join("corrupt.json");
            std::fs::write(&path, garbage).expect("write");
            let discovery = Discovery::with_options(dead_api(), options(path));
            assert!(discovery.cached("sum").is_none());
        }
    }

    #[tokio::test]
    async fn a_seeded_view_resolves_while_the_registry_is_down() {
        let dir = TempDir::new();
        let path = dir.0.join("registry.json");
        let file = CacheFile::from([(
            "sum".to_owned(),
            CachedView {
                index: 5,
                instances: vec![instance("sum-1", Status::Passing)],
                fetched_at: None,
                epoch: None,
            },
        )]);
        cache_file::write(&path, &file).expect("write");
        let discovery = Discovery::with_options(dead_api(), options(path));
        let sum = discovery
            .resolve("sum")
            .await
            .expect("served from the file");
        assert_eq!(sum.index, 5);
        assert_eq!(sum.instances.len(), 1);
        assert!(!sum.registry_reachable);
        assert!(!discovery.registry_reachable());
        // Nothing known about mult: the transport error comes back.
        let error = discovery.resolve("mult").await.expect_err("nothing known");
        assert!(matches!(error, ClientError::Transport(_)), "{error:?}");
        discovery.shutdown();
    }

    fn answer(
        index: u64,
        epoch: Option<&str>,
        instances: Vec<Instance>,
    ) -> Epoched<ServiceInstances> {
        Epoched {
            value: ServiceInstances {
                index,
                name: "sum".to_owned(),
                instances,
            },
            epoch: epoch.map(str::to_owned),
        }
    }

    const WINDOW: RelearnWindow = RelearnWindow {
        margin: Duration::from_secs(5),
        default_lease: Duration::from_secs(30),
    };

    fn served(view: &View, at: Instant) -> Vec<(String, Status)> {
        let mut served: Vec<(String, Status)> = view
            .resolved_at(true, at)
            .instances
            .into_iter()
            .map(|i| (i.id, i.status))
            .collect();
        served.sort();
        served
    }

    fn ids_and(list: &[(&str, Status)]) -> Vec<(String, Status)> {
        list.iter().map(|(id, s)| ((*id).to_owned(), *s)).collect()
    }

    fn known_view() -> View {
        View::fetched(
            "sum",
            answer(
                40,
                Some("epoch-a"),
                vec![
                    instance("sum-1", Status::Passing),
                    instance("sum-2", Status::Passing),
                    instance("sum-3", Status::Warning),
                ],
            ),
        )
    }

    #[test]
    fn a_new_epoch_keeps_the_forgotten_instances_merged_with_the_registry_s_word() {
        let now = Instant::now();
        let mut view = known_view();
        // A fresh database: its index already passed the old one, only the epoch tells.
        let changed = view.take(
            answer(
                55,
                Some("epoch-b"),
                vec![
                    instance("sum-2", Status::Critical),
                    instance("sum-9", Status::Passing),
                ],
            ),
            WINDOW,
            now,
        );
        assert!(changed);
        assert_eq!(
            served(&view, now),
            ids_and(&[
                ("sum-1", Status::Passing),
                ("sum-2", Status::Critical),
                ("sum-3", Status::Warning),
                ("sum-9", Status::Passing),
            ]),
            "the registry's answer wins for sum-2; sum-1 and sum-3 are kept as known"
        );
        let resolved = view.resolved_at(true, now);
        assert_eq!((resolved.index, resolved.relearning), (55, 2));
    }

    #[test]
    fn an_index_that_goes_backwards_relearns_too() {
        let now = Instant::now();
        let mut view = known_view();
        view.take(answer(3, Some("epoch-a"), Vec::new()), WINDOW, now);
        assert_eq!(served(&view, now).len(), 3, "a restored backup: all kept");
        // Without epochs (an older registry) the index alone still counts.
        let mut old = known_view();
        old.epoch = None;
        old.take(answer(3, None, Vec::new()), WINDOW, now);
        assert_eq!(served(&old, now).len(), 3);
    }

    #[test]
    fn without_a_loss_the_registry_is_followed_at_once() {
        let now = Instant::now();
        let mut view = known_view();
        view.take(
            answer(
                41,
                Some("epoch-a"),
                vec![instance("sum-1", Status::Passing)],
            ),
            WINDOW,
            now,
        );
        assert_eq!(served(&view, now), ids_and(&[("sum-1", Status::Passing)]));
        assert_eq!(view.resolved_at(true, now).relearning, 0);
        // A registry that starts sending epochs is not a loss either.
        let mut view = known_view();
        view.epoch = None;
        view.take(answer(41, Some("epoch-b"), Vec::new()), WINDOW, now);
        assert!(served(&view, now).is_empty());
    }

    #[test]
    fn a_forgotten_instance_is_kept_for_its_lease_and_the_margin_then_dropped() {
        let now = Instant::now();
        let mut view = known_view();
        view.instances[0].ttl_seconds = 10; // sum-1: 10 s + 5 s
        view.instances[1].ttl_seconds = 0; // sum-2: no lease, 30 s + 5 s
        view.instances[2].ttl_seconds = 2; // sum-3: 2 s + 5 s
        view.take(answer(1, Some("epoch-b"), Vec::new()), WINDOW, now);
        let at = |secs: u64| now + Duration::from_secs(secs);
        assert_eq!(served(&view, at(6)).len(), 3);
        let ids = |at: Instant| -> Vec<String> {
            served(&view, at).into_iter().map(|(id, _)| id).collect()
        };
        assert_eq!(ids(at(8)), ["sum-1", "sum-2"]);
        assert_eq!(ids(at(16)), ["sum-2"]);
        assert!(ids(at(36)).is_empty(), "never kept without bound");
        // The next answer after the deadlines clears them for good.
        view.take(answer(2, Some("epoch-b"), Vec::new()), WINDOW, at(36));
        assert!(view.forgotten.is_empty());
    }

    #[test]
    fn a_re_registered_instance_follows_the_registry_from_then_on() {
        let now = Instant::now();
        let mut view = known_view();
        view.take(answer(1, Some("epoch-b"), Vec::new()), WINDOW, now);
        view.take(
            answer(2, Some("epoch-b"), vec![instance("sum-1", Status::Passing)]),
            WINDOW,
            now,
        );
        assert_eq!(view.forgotten.len(), 2, "sum-1 registered again");
        // The registry then drops sum-1 (deregistered): followed at once, not kept.
        view.take(answer(3, Some("epoch-b"), Vec::new()), WINDOW, now);
        let ids: Vec<String> = served(&view, now).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["sum-2", "sum-3"]);
    }

    #[test]
    fn another_loss_while_relearning_does_not_extend_the_window() {
        let now = Instant::now();
        let mut view = known_view();
        view.take(answer(1, Some("epoch-b"), Vec::new()), WINDOW, now);
        let first: Vec<Instant> = view.forgotten.iter().map(|f| f.until).collect();
        view.take(
            answer(0, Some("epoch-c"), Vec::new()),
            WINDOW,
            now + Duration::from_secs(3),
        );
        let second: Vec<Instant> = view.forgotten.iter().map(|f| f.until).collect();
        assert_eq!(first, second);
    }
}
