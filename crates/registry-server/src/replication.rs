//! Cross-replica propagation: keeps this process's [`View`] following the writes that
//! other replicas sharing the database make.
//!
//! A replica's own writes catch its view up at once (whoever wrote does it). Other
//! replicas' writes arrive through the store's change feed (Postgres: `LISTEN
//! registry_events`, notified by a trigger on every committed event): each notification
//! triggers an index catch-up, so a write is visible everywhere one round trip after its
//! commit (a few milliseconds). A notification only says "look"; events are
//! always read by index, so a duplicated or late notification costs a query, never a
//! wrong view, and one arriving while a catch-up runs leads to another catch-up after it.
//!
//! The feed announces this replica's own writes too, about when their writers hear of
//! them. While this process has writes under way, a notification first waits for them
//! (at most [`Timing::own_writes_grace`]), so that each write's events are applied from
//! the write's answer instead of being read back from the store.
//!
//! Lease renewals (coalesced heartbeats) append no event; the store announces them on the
//! same feed with the renewed instances and heartbeat times (Postgres: `registry_leases`),
//! and the view records them as newer observations only, so a late or repeated one is
//! harmless. Events announced before a renewal are read first, so that an instance
//! registered just before its first heartbeat is known when the renewal is applied.
//! Renewals sent while the feed is down are lost: the next heartbeat shows again.
//!
//! Notifications are not durable: those sent while the feed is down are gone. So every
//! subscription is followed by a catch-up (what was committed before `LISTEN` took effect
//! is read by index), and a broken feed is replaced, with backoff, while a periodic
//! catch-up keeps the view moving. A slower periodic catch-up also runs while the feed is
//! healthy: a feed can fail without saying so (a half-open TCP connection never reports
//! an error), and the safety net bounds how stale the view can get then. A store without
//! a feed (embedded SQLite, one process) gets the periodic catch-up only.

use std::sync::Arc;
use std::time::Duration;

use registry_api::Backoff;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::store::{ChangeFeed, Heartbeat, Notification, Store, StoreError, StoreResult};
use crate::view::View;

/// How often the view catches up and how a broken feed is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Periodic catch-up while no feed delivers (the store has none, or it is broken):
    /// the only path for other replicas' writes then.
    pub poll_every: Duration,
    /// Periodic catch-up while the feed is healthy: only a safety net for a feed that
    /// fails silently, so it can be slow.
    pub safety_net_every: Duration,
    /// First wait before subscribing again after a failure; doubles on each failure.
    pub backoff_min: Duration,
    /// Longest wait between attempts; a feed that stayed up this long resets the backoff.
    pub backoff_max: Duration,
    /// How long a notification waits for this process's writes under way to show their
    /// events before the events are read from the store. Other replicas' writes announced
    /// meanwhile wait as long at most, well within the 200 ms in which every replica
    /// shows a write.
    pub own_writes_grace: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            poll_every: Duration::from_secs(1),
            safety_net_every: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            own_writes_grace: Duration::from_millis(20),
        }
    }
}

/// The loop that keeps the view following the store; see the module documentation.
pub struct Replication {
    store: Arc<dyn Store>,
    view: Arc<View>,
    shutdown: CancellationToken,
    timing: Timing,
    /// Whether the last catch-up failed (logged once per failure streak).
    catch_up_failing: bool,
}

impl Replication {
    pub fn new(store: Arc<dyn Store>, view: Arc<View>, shutdown: CancellationToken) -> Self {
        Self {
            store,
            view,
            shutdown,
            timing: Timing::default(),
            catch_up_failing: false,
        }
    }

    /// Other timings than the defaults (the tests' own).
    #[cfg(test)]
    #[must_use]
    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// Runs the loop in a task that ends when `shutdown` is cancelled.
    pub fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(self.run())
    }

    async fn run(mut self) {
        let backoff = Backoff::new(self.timing.backoff_min, self.timing.backoff_max);
        // Subscriptions in a row that failed or broke: the next wait grows with them.
        let mut attempts = 0_u32;
        // The feed broke or could not be had: that is logged once, and so is its return.
        let mut down = false;
        loop {
            let subscribed = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                subscribed = self.store.change_feed() => subscribed,
            };
            match subscribed {
                Ok(None) => {
                    self.poll_until_stopped().await;
                    return;
                }
                Ok(Some(feed)) => {
                    // Whatever was committed before the subscription was announced to
                    // nobody: read it by index.
                    self.catch_up().await;
                    if down {
                        tracing::info!("change feed subscribed again; following other replicas");
                    }
                    let started = Instant::now();
                    let Some(error) = self.follow(feed).await else {
                        return;
                    };
                    tracing::warn!(
                        %error,
                        "change feed broke; catching up by index and subscribing again"
                    );
                    down = true;
                    // Notifications sent from now until the next subscription are lost.
                    self.catch_up().await;
                    if started.elapsed() >= self.timing.backoff_max {
                        attempts = 0;
                    }
                }
                Err(error) if !down => {
                    tracing::warn!(
                        %error,
                        "cannot subscribe to the change feed; catching up periodically and retrying"
                    );
                    down = true;
                }
                Err(error) => {
                    tracing::debug!(%error, "change feed still unavailable");
                }
            }
            attempts = attempts.saturating_add(1);
            if !self.pause(backoff.delay(attempts)).await {
                return;
            }
        }
    }

    /// Follows `feed` until it breaks (answers why) or shutdown (answers `None`).
    async fn follow(&mut self, feed: Box<dyn ChangeFeed>) -> Option<String> {
        // The feed is read in a task of its own, so that waiting for a notification is
        // never cancelled halfway (by the safety net or a catch-up) and notifications
        // arriving while a catch-up runs wait in the channel. The channel keeps only the
        // latest index: notifications come in commit order, so it covers the earlier ones.
        let (announce, mut announced) = watch::channel(0_u64);
        // Renewals are not covered by later ones (each names other instances): a queue.
        let (renew, mut renewals) = mpsc::channel(64);
        let mut reader = tokio::spawn(read_feed(feed, announce, renew));
        let period = self.timing.safety_net_every;
        let mut safety_net = tokio::time::interval_at(Instant::now() + period, period);
        safety_net.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let outcome = loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break None,
                changed = announced.changed() => {
                    if changed.is_err() {
                        // The reader ended: the feed broke.
                        break Some(match (&mut reader).await {
                            Ok(error) => error.to_string(),
                            Err(error) => format!("the change feed task failed: {error}"),
                        });
                    }
                    let index = *announced.borrow_and_update();
                    self.view
                        .await_own_writes(index, self.timing.own_writes_grace)
                        .await;
                    self.catch_up_to(index).await;
                }
                Some(renewed) = renewals.recv() => {
                    self.renew(&mut announced, renewed).await;
                }
                _ = safety_net.tick() => self.catch_up().await,
            }
        };
        reader.abort();
        outcome
    }

    /// Applies renewals announced by the feed, after reading the events it announced
    /// before them (the reader publishes in the order the feed delivers).
    async fn renew(&mut self, announced: &mut watch::Receiver<u64>, renewed: Vec<Heartbeat>) {
        if announced.has_changed().unwrap_or(false) {
            let index = *announced.borrow_and_update();
            self.catch_up_to(index).await;
        }
        self.view.renew(
            renewed
                .iter()
                .map(|h| (h.service.as_str(), h.id.as_str(), h.at)),
        );
    }

    /// Waits `how_long` (false if shutdown came first), catching up periodically meanwhile.
    async fn pause(&mut self, how_long: Duration) -> bool {
        let until = tokio::time::sleep(how_long);
        tokio::pin!(until);
        let period = self.timing.poll_every;
        let mut poll = tokio::time::interval_at(Instant::now() + period, period);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return false,
                () = &mut until => return true,
                _ = poll.tick() => self.catch_up().await,
            }
        }
    }

    /// Without a feed: periodic catch-up until shutdown.
    async fn poll_until_stopped(&mut self) {
        let period = self.timing.poll_every;
        let mut poll = tokio::time::interval_at(Instant::now() + period, period);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                _ = poll.tick() => self.catch_up().await,
            }
        }
    }

    async fn catch_up(&mut self) {
        let result = self.view.catch_up(self.store.as_ref()).await;
        self.note_catch_up(result);
    }

    /// Catches up to an announced index, which the view often holds already (this
    /// replica's own writes are announced to it too); 0: the announcement did not say
    /// which index, so look anyway.
    async fn catch_up_to(&mut self, index: u64) {
        if index == 0 {
            return self.catch_up().await;
        }
        let result = self.view.catch_up_to(index, self.store.as_ref()).await;
        self.note_catch_up(result);
    }

    /// Logs when catching up starts failing and when it recovers, not every failure.
    fn note_catch_up(&mut self, result: StoreResult<()>) {
        match result {
            Ok(()) if self.catch_up_failing => {
                tracing::info!("view catch-up recovered");
                self.catch_up_failing = false;
            }
            Ok(()) => {}
            Err(error) if !self.catch_up_failing => {
                tracing::warn!(%error, "view catch-up failed; retrying");
                self.catch_up_failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Publishes each notification until the feed breaks; answers why it broke.
async fn read_feed(
    mut feed: Box<dyn ChangeFeed>,
    announce: watch::Sender<u64>,
    renew: mpsc::Sender<Vec<Heartbeat>>,
) -> StoreError {
    loop {
        match feed.next().await {
            Ok(Notification::Events(index)) => {
                announce.send_replace(index);
            }
            Ok(Notification::Leases(renewed)) => {
                // Fails only when `follow` is over, which aborts this task anyway.
                let _ = renew.send(renewed).await;
            }
            Err(error) => return error,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The loop against a store whose feed the test scripts: the events are real (an
    //! SQLite store underneath), the notifications are sent by hand, and the periodic
    //! catch-ups are too rare to explain anything within a test's deadline.

    #![allow(clippy::expect_used, clippy::unwrap_used)]

    use tokio::sync::Semaphore;

    use super::*;
    use crate::store::test_store::TestStore;

    const DEADLINE: Duration = Duration::from_secs(5);

    fn rare_polling() -> Timing {
        Timing {
            poll_every: Duration::from_secs(3_600),
            safety_net_every: Duration::from_secs(3_600),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            own_writes_grace: Duration::from_millis(20),
        }
    }

    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let until = Instant::now() + DEADLINE;
        while !done() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    struct Running {
        store: Arc<TestStore>,
        view: Arc<View>,
        shutdown: CancellationToken,
        task: JoinHandle<()>,
    }

    impl Running {
        /// Loads the view, then starts the loop with `timing`.
        async fn start(store: TestStore, timing: Timing) -> Self {
            let store = Arc::new(store);
            let view = Arc::new(View::load(store.as_ref()).await.expect("view"));
            Self::spawn(store, view, timing)
        }

        fn spawn(store: Arc<TestStore>, view: Arc<View>, timing: Timing) -> Self {
            let shutdown = CancellationToken::new();
            let task = Replication::new(store.clone(), view.clone(), shutdown.clone())
                .with_timing(timing)
                .spawn();
            Self {
                store,
                view,
                shutdown,
                task,
            }
        }

        async fn reaches(&self, index: u64, what: &str) {
            wait_until(what, || self.view.index() == index).await;
        }

        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(DEADLINE, self.task)
                .await
                .expect("the loop stops at shutdown")
                .expect("the loop does not panic");
        }
    }

    #[tokio::test]
    async fn a_notification_catches_the_view_up() {
        let store = TestStore::new().await;
        let notify = store.offer_feed();
        let running = Running::start(store, rare_polling()).await;
        wait_until("the catch-up after subscribing", || {
            running.store.reads() == 1
        })
        .await;
        let index = running.store.write("a").await;
        notify.send(index).expect("feed open");
        running.reaches(index, "the announced write").await;
        running.stop().await;
    }

    #[tokio::test]
    async fn what_was_committed_before_subscribing_is_read_by_index() {
        let store = Arc::new(TestStore::new().await);
        let _notify = store.offer_feed();
        let view = Arc::new(View::load(store.as_ref()).await.expect("view"));
        // After the view was loaded, before the loop subscribes: announced to nobody.
        let index = store.write("a").await;
        let running = Running::spawn(store, view, rare_polling());
        running.reaches(index, "the unannounced write").await;
        running.stop().await;
    }

    #[tokio::test]
    async fn an_index_the_view_already_has_is_not_read_again() {
        let store = TestStore::new().await;
        let notify = store.offer_feed();
        let running = Running::start(store, rare_polling()).await;
        wait_until("the catch-up after subscribing", || {
            running.store.reads() == 1
        })
        .await;
        // As on the replica that wrote: its own catch-up first, its notification later.
        let own = running.store.write("a").await;
        running
            .view
            .catch_up(running.store.as_ref())
            .await
            .expect("catch up");
        let reads = running.store.reads();
        notify.send(own).expect("feed open");
        let other = running.store.write("b").await;
        notify.send(other).expect("feed open");
        running.reaches(other, "the other replica's write").await;
        assert_eq!(running.store.reads(), reads + 1, "one read, for `other`");
        running.stop().await;
    }

    #[tokio::test]
    async fn an_own_write_announced_before_its_writer_shows_it_is_not_read_back() {
        let store = TestStore::new().await;
        let notify = store.offer_feed();
        let timing = Timing {
            own_writes_grace: DEADLINE,
            ..rare_polling()
        };
        let running = Running::start(store, timing).await;
        wait_until("the catch-up after subscribing", || {
            running.store.reads() == 1
        })
        .await;
        // As on the replica that wrote, when the notification comes first.
        let writing = running.view.writing();
        let applied = crate::testing::register_in(running.store.as_ref(), "a").await;
        let own = applied.event.as_ref().expect("an event").index;
        notify.send(own).expect("feed open");
        // Time for the feed to take the notification before the writer shows its write:
        // the window in which the feed used to read the write back. (With the wait for own
        // writes, no length of it changes the outcome.)
        tokio::time::sleep(Duration::from_millis(100)).await;
        running
            .view
            .show_write(&applied, running.store.as_ref())
            .await
            .expect("shown");
        drop(writing);
        let other = running.store.write("b").await;
        notify.send(other).expect("feed open");
        running.reaches(other, "the other replica's write").await;
        assert_eq!(running.store.reads(), 2, "one read, for `other`");
        running.stop().await;
    }

    #[tokio::test]
    async fn an_own_write_under_way_delays_another_replicas_write_by_the_grace_at_most() {
        let store = TestStore::new().await;
        let notify = store.offer_feed();
        let running = Running::start(store, rare_polling()).await;
        // A write of this process that never gets shown (its writer is stuck).
        let writing = running.view.writing();
        let other = running.store.write("b").await;
        notify.send(other).expect("feed open");
        running.reaches(other, "the other replica's write").await;
        drop(writing);
        running.stop().await;
    }

    #[tokio::test]
    async fn a_notification_during_a_catch_up_leads_to_another_catch_up() {
        let gate = Arc::new(Semaphore::new(0));
        let mut store = TestStore::new().await;
        store.gate = Some(gate.clone());
        let notify = store.offer_feed();
        let running = Running::start(store, rare_polling()).await;
        wait_until("the catch-up after subscribing", || {
            running.store.reads() == 1
        })
        .await;
        gate.add_permits(1);

        let first = running.store.write("a").await;
        notify.send(first).expect("feed open");
        // That catch-up has read `first` only and is held before applying it...
        wait_until("the catch-up for the first write", || {
            running.store.reads() == 2
        })
        .await;
        // ...when the next write is announced.
        let second = running.store.write("b").await;
        notify.send(second).expect("feed open");
        gate.add_permits(1_000);
        running
            .reaches(second, "the write announced during a catch-up")
            .await;
        running.stop().await;
    }

    #[tokio::test]
    async fn a_broken_feed_is_replaced_and_the_gap_read_by_index() {
        let store = TestStore::new().await;
        let first = store.offer_feed();
        // The first attempt to subscribe again fails: the loop keeps trying.
        store.refuse_feed();
        let second = store.offer_feed();
        let running = Running::start(store, rare_polling()).await;
        wait_until("the catch-up after subscribing", || {
            running.store.reads() == 1
        })
        .await;

        // Committed as the feed dies: its notification is lost with it.
        let lost = running.store.write("a").await;
        drop(first);
        running.reaches(lost, "the unannounced write").await;
        wait_until("a subscription after a failed one", || {
            running.store.subscriptions() == 3
        })
        .await;
        let index = running.store.write("b").await;
        second.send(index).expect("feed open");
        running
            .reaches(index, "a write announced by the new feed")
            .await;
        running.stop().await;
    }

    #[tokio::test]
    async fn without_a_feed_the_view_is_caught_up_periodically() {
        let mut store = TestStore::new().await;
        store.feedless = true;
        let timing = Timing {
            poll_every: Duration::from_millis(20),
            ..rare_polling()
        };
        let running = Running::start(store, timing).await;
        let index = running.store.write("a").await;
        running.reaches(index, "a periodic catch-up").await;
        assert_eq!(running.store.subscriptions(), 1, "asked for a feed once");
        running.stop().await;
    }
}
