//! [`Registration`]: keeps one instance registered for as long as its service runs.
//!
//! Registering once at boot is not enough: the lease lapses unless heartbeats renew it, the
//! registry may restart on an empty database or reap an instance it thought dead (it then
//! answers 404 to heartbeats and the instance must register again), and the registry may be
//! unreachable when the service boots or at any time later. The service itself should not
//! have to care about any of this, nor fail to start because the registry is down: so the
//! handle runs one background task that registers, heartbeats every `ttl / 3`, registers
//! again at once on a 404, and retries every other failure forever with jittered
//! exponential backoff, publishing its state on a watch channel and logging only changes
//! of state (one warning when the registry stops answering, one info line when it answers
//! again), never one line per failed attempt.
//!
//! Leaving is the other half: [`Registration::shutdown`] first sets `maintenance` so that
//! clients stop sending new calls, waits a drain delay for calls in flight and for
//! discovery caches to notice, then deregisters. Every step is bounded: a service being
//! stopped must stop even when the registry is gone.

use std::time::Duration;

use chrono::{DateTime, Utc};
use registry_api::{Backoff, InstanceSpec, Jitter, Status};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{ClientError, RegistryApi};

/// How often an instance without a lease (`ttl_seconds: 0`) still calls heartbeat: it
/// renews nothing, but a 404 reveals a registry that forgot the instance.
const NO_LEASE_HEARTBEAT: Duration = Duration::from_secs(10);

/// Longest time each step of [`Registration::shutdown`] (maintenance, deregistration) may
/// take before it is given up.
const LEAVE_STEP_TIMEOUT: Duration = Duration::from_secs(3);

/// Settings of a [`Registration`].
///
/// ```
/// use std::time::Duration;
/// use registry_client::registration::RegistrationOptions;
///
/// let options = RegistrationOptions {
///     drain: Duration::from_secs(5),
///     ..RegistrationOptions::default()
/// };
/// assert_eq!(options.backoff_min, Duration::from_millis(100));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationOptions {
    /// How long [`Registration::shutdown`] keeps the instance in `maintenance` before it
    /// deregisters: time for calls in flight to finish and for clients' discovery caches to
    /// stop choosing it (default 2 s).
    pub drain: Duration,
    /// First delay before retrying a failed call to the registry (default 100 ms).
    pub backoff_min: Duration,
    /// Longest delay between two retries (default 5 s); the delay doubles from
    /// `backoff_min` up to this, with jitter.
    pub backoff_max: Duration,
}

impl Default for RegistrationOptions {
    fn default() -> Self {
        Self {
            drain: Duration::from_secs(2),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

impl RegistrationOptions {
    /// The delays between retries: `backoff_min` doubling up to `backoff_max`, with equal
    /// jitter (half of each step fixed, half random). The fixed half keeps a crowd of
    /// instances from hammering a registry that comes back; the random half spreads them
    /// out.
    fn backoff(&self) -> Backoff {
        Backoff::new(self.backoff_min, self.backoff_max).with_jitter(Jitter::Equal)
    }
}

/// Where a [`Registration`] stands, as published by [`Registration::state`] and
/// [`Registration::subscribe`].
///
/// ```
/// use registry_client::registration::RegistrationState;
///
/// fn describe(state: &RegistrationState) -> String {
///     match state {
///         RegistrationState::Starting => "registering".into(),
///         RegistrationState::Registered { lease_expires_at: Some(at) } => format!("leased until {at}"),
///         RegistrationState::Registered { lease_expires_at: None } => "registered (no lease)".into(),
///         RegistrationState::Retrying { attempt, error } => format!("attempt {attempt} failed: {error}"),
///         RegistrationState::Stopped => "stopped".into(),
///     }
/// }
/// assert_eq!(describe(&RegistrationState::Starting), "registering");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum RegistrationState {
    /// The first registration has not been answered yet.
    Starting,
    /// The registry accepted the last registration or heartbeat.
    Registered {
        /// The lease deadline the registry answered (`None`: the instance has no lease).
        lease_expires_at: Option<DateTime<Utc>>,
    },
    /// The last call to the registry failed; the handle retries after a backoff delay. The
    /// instance may still be registered (a heartbeat failed while its lease runs).
    Retrying {
        /// Consecutive failed calls, 1 for the first.
        attempt: u32,
        /// The last failure, for display.
        error: String,
    },
    /// [`Registration::shutdown`] has finished: no more calls are made.
    Stopped,
}

/// What the handle tells its task.
#[derive(Debug, Clone, Copy, Default)]
struct Control {
    paused: bool,
    stopping: bool,
}

/// Keeps one instance registered in the background; see the [module](self) documentation.
///
/// Dropping the handle without [`shutdown`](Self::shutdown) stops the task at once and
/// leaves the instance to its lease (it turns critical, then is reaped), as a crash would.
///
/// ```no_run
/// # async fn demo() -> Result<(), registry_client::ClientError> {
/// use std::time::Duration;
/// use registry_client::registration::{Registration, RegistrationOptions};
/// use registry_client::{InstanceSpec, RegistryApi};
///
/// let api = RegistryApi::from_env()?;
/// let registration = Registration::start(
///     api,
///     "sum",
///     "sum-7d9f",
///     InstanceSpec::new("http://10.0.0.7:4040"),
///     RegistrationOptions::default(),
/// );
/// // Serve traffic whether or not the registry is up; it is retried in the background.
/// if !registration.wait_registered(Duration::from_secs(5)).await {
///     eprintln!("not registered yet: {:?}", registration.state());
/// }
/// // ... on SIGTERM:
/// registration.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Registration {
    state: watch::Receiver<RegistrationState>,
    control: watch::Sender<Control>,
    task: Option<JoinHandle<()>>,
}

impl Registration {
    /// Spawns the background task and returns at once (never fails: an unreachable registry
    /// is retried forever). Must be called within a Tokio runtime.
    ///
    /// The instance is registered with `spec` (a `PUT`, so an instance of the same id left
    /// over from a previous run is replaced, not duplicated); heartbeats follow every third
    /// of the `ttl_seconds` the registry answered (every 10 s without a lease).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), registry_client::ClientError> {
    /// use registry_client::registration::{Registration, RegistrationOptions};
    /// use registry_client::{InstanceSpec, RegistryApi};
    ///
    /// let mut spec = InstanceSpec::new("http://10.0.0.7:4040");
    /// spec.ttl_seconds = Some(15);
    /// spec.tags = vec!["v2".into()];
    /// let registration = Registration::start(
    ///     RegistryApi::new("http://registry-0:8000,http://registry-1:8000")?,
    ///     "sum",
    ///     "sum-7d9f",
    ///     spec,
    ///     RegistrationOptions::default(),
    /// );
    /// # Ok(())
    /// # }
    /// ```
    pub fn start(
        api: RegistryApi,
        service: impl Into<String>,
        id: impl Into<String>,
        spec: InstanceSpec,
        options: RegistrationOptions,
    ) -> Self {
        let (state_tx, state) = watch::channel(RegistrationState::Starting);
        let (control, control_rx) = watch::channel(Control::default());
        let worker = Worker {
            api,
            service: service.into(),
            id: id.into(),
            spec,
            options,
            state: state_tx,
            control: control_rx,
            failures: 0,
            registered_once: false,
        };
        Self {
            state,
            control,
            task: Some(tokio::spawn(worker.run())),
        }
    }

    /// The state now.
    ///
    /// ```no_run
    /// # fn demo(registration: &registry_client::registration::Registration) {
    /// use registry_client::registration::RegistrationState;
    ///
    /// let ready = matches!(registration.state(), RegistrationState::Registered { .. });
    /// # }
    /// ```
    pub fn state(&self) -> RegistrationState {
        self.state.borrow().clone()
    }

    /// A receiver of every change of state (each heartbeat answer renews
    /// `lease_expires_at`, so a registered instance changes state every `ttl / 3`).
    ///
    /// ```no_run
    /// # async fn demo(registration: &registry_client::registration::Registration) {
    /// let mut states = registration.subscribe();
    /// while states.changed().await.is_ok() {
    ///     println!("registration: {:?}", *states.borrow_and_update());
    /// }
    /// # }
    /// ```
    pub fn subscribe(&self) -> watch::Receiver<RegistrationState> {
        self.state.clone()
    }

    /// Waits until the registry has accepted the registration (or the last heartbeat), at
    /// most `timeout`; `false` if it has not by then, or if the handle has stopped.
    ///
    /// ```no_run
    /// # async fn demo(registration: &registry_client::registration::Registration) {
    /// use std::time::Duration;
    ///
    /// if !registration.wait_registered(Duration::from_secs(10)).await {
    ///     eprintln!("still not registered: {:?}", registration.state());
    /// }
    /// # }
    /// ```
    pub async fn wait_registered(&self, timeout: Duration) -> bool {
        let mut state = self.state.clone();
        let registered = state.wait_for(|s| matches!(s, RegistrationState::Registered { .. }));
        matches!(tokio::time::timeout(timeout, registered).await, Ok(Ok(_)))
    }

    /// Stops sending heartbeats (the lease then lapses and the registry marks the instance
    /// critical: used by fault injection to play dead) or resumes them; resuming sends one
    /// at once, which revives a lapsed lease. A registration in progress is not paused: it
    /// is not a heartbeat, and an instance that plays dead must first exist.
    ///
    /// ```no_run
    /// # fn demo(registration: &registry_client::registration::Registration) {
    /// registration.pause_heartbeats(true); // play dead
    /// // ...
    /// registration.pause_heartbeats(false); // come back
    /// # }
    /// ```
    pub fn pause_heartbeats(&self, paused: bool) {
        self.control.send_modify(|c| c.paused = paused);
    }

    /// Graceful leave: `PUT .../status` maintenance, wait the drain delay, `DELETE`; each
    /// call bounded (3 s) and best-effort (a failure is logged and the next step follows;
    /// the drain is skipped when maintenance could not be set); then the task ends and the
    /// state is [`Stopped`](RegistrationState::Stopped). An instance that was never
    /// registered just stops. A call to the registry in flight when this is called is
    /// abandoned.
    ///
    /// ```no_run
    /// # async fn demo(registration: registry_client::registration::Registration) {
    /// // e.g. after tokio::signal::ctrl_c().await
    /// registration.shutdown().await;
    /// # }
    /// ```
    pub async fn shutdown(mut self) {
        self.control.send_modify(|c| c.stopping = true);
        if let Some(task) = self.task.take()
            && let Err(error) = task.await
        {
            tracing::error!(%error, "the registration task failed");
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The background task's state.
struct Worker {
    api: RegistryApi,
    service: String,
    id: String,
    spec: InstanceSpec,
    options: RegistrationOptions,
    state: watch::Sender<RegistrationState>,
    control: watch::Receiver<Control>,
    /// Consecutive failed calls; 0 while the registry answers.
    failures: u32,
    registered_once: bool,
}

impl Worker {
    async fn run(mut self) {
        self.keep_registered().await;
        if self.registered_once {
            self.leave().await;
        } else {
            tracing::info!(
                service = %self.service,
                id = %self.id,
                "stopped before the registry accepted the registration; nothing to deregister"
            );
        }
        self.state.send_replace(RegistrationState::Stopped);
    }

    /// Registers, then heartbeats, for as long as the handle does not stop it.
    async fn keep_registered(&mut self) {
        loop {
            let Some(ttl_seconds) = self.register().await else {
                return;
            };
            let interval = heartbeat_interval(ttl_seconds);
            let mut wait = interval;
            loop {
                if !before_heartbeat(&mut self.control, wait).await {
                    return;
                }
                let answer = stoppable(
                    &mut self.control,
                    self.api.heartbeat(&self.service, &self.id),
                )
                .await;
                match answer {
                    None => return,
                    Some(Ok(beat)) => {
                        self.succeeded(beat.lease_expires_at);
                        wait = interval;
                    }
                    Some(Err(error)) if error.is_not_found() => {
                        tracing::info!(
                            service = %self.service,
                            id = %self.id,
                            registry = %self.api.base_url(),
                            "the registry does not know this instance (restarted on an empty \
                             database, or reaped it); registering again"
                        );
                        break;
                    }
                    Some(Err(error)) => {
                        self.failed("heartbeat", &error);
                        // Never wait longer than a heartbeat interval: a lease that
                        // still runs must be renewed as soon as the registry answers.
                        wait = self.backoff().min(interval);
                    }
                }
            }
        }
    }

    /// Registers until the registry accepts; `Some(ttl_seconds)` it answered, `None` when
    /// stopped first.
    async fn register(&mut self) -> Option<u32> {
        loop {
            let answer = stoppable(
                &mut self.control,
                self.api.register(&self.service, &self.id, &self.spec),
            )
            .await?;
            match answer {
                Ok(registered) => {
                    if !self.registered_once || self.failures > 0 || registered.created {
                        tracing::info!(
                            service = %self.service,
                            id = %self.id,
                            registry = %self.api.base_url(),
                            ttl_seconds = registered.instance.ttl_seconds,
                            failed_attempts = self.failures,
                            "registered"
                        );
                    }
                    // Logged above already: `succeeded` must not say it again.
                    self.failures = 0;
                    self.registered_once = true;
                    self.succeeded(registered.instance.lease_expires_at);
                    return Some(registered.instance.ttl_seconds);
                }
                Err(error) => {
                    self.failed("registration", &error);
                    let delay = self.backoff();
                    if !rest(&mut self.control, delay).await {
                        return None;
                    }
                }
            }
        }
    }

    fn succeeded(&mut self, lease_expires_at: Option<DateTime<Utc>>) {
        if self.failures > 0 && self.registered_once {
            tracing::info!(
                service = %self.service,
                id = %self.id,
                registry = %self.api.base_url(),
                failed_attempts = self.failures,
                "the registry answers again"
            );
        }
        self.failures = 0;
        self.state
            .send_replace(RegistrationState::Registered { lease_expires_at });
    }

    /// Records a failed call: one log line at the start of a run of failures, then only
    /// debug lines, so that an outage of an hour is not thousands of warnings.
    fn failed(&mut self, what: &str, error: &ClientError) {
        self.failures = self.failures.saturating_add(1);
        if self.failures == 1 {
            if error.is_transient() {
                tracing::warn!(
                    service = %self.service,
                    id = %self.id,
                    %error,
                    "{what} failed: the registry is unreachable or unavailable; \
                     retrying with backoff until it answers"
                );
            } else {
                tracing::error!(
                    service = %self.service,
                    id = %self.id,
                    %error,
                    "{what} refused by the registry; retrying with backoff"
                );
            }
        } else {
            tracing::debug!(
                service = %self.service,
                id = %self.id,
                attempt = self.failures,
                %error,
                "{what} failed again"
            );
        }
        self.state.send_replace(RegistrationState::Retrying {
            attempt: self.failures,
            error: error.to_string(),
        });
    }

    /// The wait before the next retry of the current run of failures.
    fn backoff(&self) -> Duration {
        self.options.backoff().delay(self.failures)
    }

    /// Maintenance, drain, deregistration; each step bounded and best-effort.
    async fn leave(&mut self) {
        let (service, id) = (self.service.as_str(), self.id.as_str());
        let maintenance = tokio::time::timeout(
            LEAVE_STEP_TIMEOUT,
            self.api.set_status(service, id, Status::Maintenance),
        )
        .await;
        match maintenance {
            Ok(Ok(_)) => {
                tracing::info!(%service, %id, drain = ?self.options.drain, "in maintenance; draining");
                tokio::time::sleep(self.options.drain).await;
            }
            Ok(Err(error)) if error.is_not_found() => {
                tracing::info!(%service, %id, "the registry no longer knows this instance; no drain");
            }
            Ok(Err(error)) => {
                tracing::warn!(%service, %id, %error, "could not set maintenance; deregistering without drain");
            }
            Err(_) => {
                tracing::warn!(%service, %id, timeout = ?LEAVE_STEP_TIMEOUT, "setting maintenance timed out; deregistering without drain");
            }
        }
        let deregistered =
            tokio::time::timeout(LEAVE_STEP_TIMEOUT, self.api.deregister(service, id)).await;
        match deregistered {
            Ok(Ok(())) => tracing::info!(%service, %id, "deregistered"),
            Ok(Err(error)) if error.is_not_found() => {
                tracing::info!(%service, %id, "already gone from the registry");
            }
            Ok(Err(error)) => {
                tracing::warn!(%service, %id, %error, "could not deregister; the lease will lapse");
            }
            Err(_) => {
                tracing::warn!(%service, %id, timeout = ?LEAVE_STEP_TIMEOUT, "deregistration timed out; the lease will lapse");
            }
        }
    }
}

/// A third of the lease, so that two heartbeats may be lost before it lapses.
fn heartbeat_interval(ttl_seconds: u32) -> Duration {
    if ttl_seconds == 0 {
        NO_LEASE_HEARTBEAT
    } else {
        Duration::from_secs(u64::from(ttl_seconds)) / 3
    }
}

/// Runs `call` unless the handle stops first (`None`): a call in flight when shutdown
/// starts is abandoned rather than allowed to hold the shutdown for its whole timeout.
async fn stoppable<T>(
    control: &mut watch::Receiver<Control>,
    call: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        _ = control.wait_for(|c| c.stopping) => None,
        answer = call => Some(answer),
    }
}

/// Sleeps `delay`; `false` when the handle stops (or is dropped) first.
async fn rest(control: &mut watch::Receiver<Control>, delay: Duration) -> bool {
    tokio::select! {
        _ = control.wait_for(|c| c.stopping) => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// Waits `wait`, then for as long as heartbeats are paused; a resume ends the wait at once.
/// `false` when the handle stops (or is dropped) first.
async fn before_heartbeat(control: &mut watch::Receiver<Control>, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut was_paused = false;
    loop {
        let now = *control.borrow_and_update();
        if now.stopping {
            return false;
        }
        if now.paused {
            was_paused = true;
            if control.changed().await.is_err() {
                return false;
            }
            continue;
        }
        if was_paused {
            return true;
        }
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return true,
            changed = control.changed() => {
                if changed.is_err() {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(min_ms: u64, max_ms: u64) -> RegistrationOptions {
        RegistrationOptions {
            backoff_min: Duration::from_millis(min_ms),
            backoff_max: Duration::from_millis(max_ms),
            ..RegistrationOptions::default()
        }
    }

    #[test]
    fn defaults_follow_the_design() {
        let options = RegistrationOptions::default();
        assert_eq!(options.drain, Duration::from_secs(2));
        assert_eq!(options.backoff_min, Duration::from_millis(100));
        assert_eq!(options.backoff_max, Duration::from_secs(5));
    }

    #[test]
    fn heartbeats_come_every_third_of_the_lease() {
        assert_eq!(heartbeat_interval(3), Duration::from_secs(1));
        assert_eq!(
            heartbeat_interval(10),
            Duration::from_millis(3333) + Duration::from_nanos(333_333)
        );
        assert_eq!(heartbeat_interval(1), Duration::from_nanos(333_333_333));
        assert_eq!(heartbeat_interval(0), NO_LEASE_HEARTBEAT);
    }

    #[test]
    fn retries_back_off_from_min_to_max_with_equal_jitter() {
        let backoff = options(100, 5000).backoff();
        assert_eq!(
            backoff,
            Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
                .with_jitter(Jitter::Equal)
        );
        let first = backoff.delay(1);
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        assert_eq!(options(0, 0).backoff().delay(5), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_wait_honours_pause_resume_and_stop() {
        let (control, mut rx) = watch::channel(Control::default());
        let started = Instant::now();
        assert!(before_heartbeat(&mut rx, Duration::from_secs(3)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(3));

        control.send_modify(|c| c.paused = true);
        let waiting = tokio::spawn(async move {
            let started = Instant::now();
            let go = before_heartbeat(&mut rx, Duration::from_secs(1)).await;
            (go, started.elapsed(), rx)
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiting.is_finished(), "paused: no heartbeat");
        control.send_modify(|c| c.paused = false);
        let (go, waited, mut rx) = waiting.await.expect("task");
        assert!(go);
        assert_eq!(
            waited,
            Duration::from_secs(60),
            "a resume heartbeats at once"
        );

        control.send_modify(|c| c.stopping = true);
        assert!(!before_heartbeat(&mut rx, Duration::from_secs(3)).await);
        assert!(!rest(&mut rx, Duration::from_secs(3)).await);
        assert_eq!(stoppable(&mut rx, async { 1 }).await, None);
        drop(control);
        let (_control, mut fresh) = watch::channel(Control::default());
        assert_eq!(stoppable(&mut fresh, async { 1 }).await, Some(1));
    }
}
