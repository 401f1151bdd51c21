//! The SSE hub of one node: one in-memory topic per watched stream.
//!
//! A topic holds the stream's last sequence number (`head`), a ring of its recent events (the
//! last `live_replay_secs`, rebuilt from `live_events` when the topic is created — after a
//! restart, or on a node that had no viewer of the stream yet) and its subscribers, each with a
//! bounded channel.
//!
//! Invariants:
//! - events enter a topic strictly in sequence (`seq == head + 1`): a duplicate (the same event
//!   from the fan-out and from the database poll) is dropped, an event past a hole wakes the
//!   topic's poller, which reads the missing ones from the database first (writers of a stream
//!   commit in sequence order, so they are there);
//! - replay and registration happen under the topic's lock that also guards delivery, so a
//!   subscriber resuming with `Last-Event-ID` gets every later event exactly once: the replay
//!   ends at `head`, and the live channel starts at `head + 1`;
//! - the publisher never waits for a subscriber: delivery is `try_send`; a full channel removes
//!   the subscriber (its connection ends after what was buffered, and the client resumes with
//!   `Last-Event-ID`);
//! - each topic has a task that polls the database for events written by other nodes (and fills
//!   holes), sends `viewers` counts, and removes the topic once nobody watches it.

use crate::model::{EventKind, StreamEvent, StreamStatus};
use crate::store::LiveStore;
use mercato_kernel::clock::SharedClock;
use mercato_kernel::shutdown::Shutdown;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, OnceCell, mpsc};

/// Settings of the hub.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// How far back replay reaches.
    pub replay: Duration,
    /// Most events kept per stream for replay.
    pub replay_max: usize,
    /// Frames buffered per subscriber.
    pub buffer: usize,
    /// How often a topic reads the database for events of other nodes.
    pub poll: Duration,
    /// How often subscribers get a `viewers` frame.
    pub viewers_every: Duration,
}

/// What a subscriber receives.
#[derive(Clone, Debug)]
pub enum Frame {
    Event(Arc<StreamEvent>),
    /// Events after the client's `Last-Event-ID` that are out of the replay window:
    /// `missed` of them, the last being `last_seq`.
    Gap {
        missed: i64,
        last_seq: i64,
    },
    /// Viewers of the stream on this node.
    Viewers(usize),
}

/// One subscription: the frames to send first, then the live channel (`None` once the stream
/// ended: nothing more will come).
pub struct Subscription {
    pub replay: Vec<Frame>,
    pub rx: Option<mpsc::Receiver<Frame>>,
    /// The stream ended and the client has seen everything: nothing to send at all.
    pub finished: bool,
    _guard: SubGuard,
}

struct SubGuard {
    topic: Arc<Topic>,
    id: u64,
}

impl Drop for SubGuard {
    fn drop(&mut self) {
        if let Ok(mut st) = self.topic.state.lock() {
            let before = st.subs.len();
            st.subs.retain(|(id, _)| *id != self.id);
            if st.subs.len() != before {
                metrics::gauge!("live_subscribers").decrement(1.0);
            }
        }
        self.topic.users.fetch_sub(1, Ordering::SeqCst);
        self.topic.wake.notify_one();
    }
}

#[derive(Default)]
struct TopicState {
    loaded: bool,
    head: i64,
    ring: VecDeque<Arc<StreamEvent>>,
    subs: Vec<(u64, mpsc::Sender<Frame>)>,
    ended: Option<Arc<StreamEvent>>,
}

struct Topic {
    stream_id: String,
    /// Subscriptions holding the topic, counted (up) under the hub's map lock, so the topic is
    /// removed only when none can appear.
    users: AtomicUsize,
    ready: OnceCell<()>,
    state: Mutex<TopicState>,
    wake: Notify,
}

struct HubInner {
    cfg: HubConfig,
    store: LiveStore,
    clock: SharedClock,
    shutdown: Shutdown,
    topics: Mutex<HashMap<String, Arc<Topic>>>,
    next_id: AtomicU64,
}

/// The hub (cheap to clone).
#[derive(Clone)]
pub struct Hub(Arc<HubInner>);

impl Hub {
    pub fn new(cfg: HubConfig, store: LiveStore, clock: SharedClock, shutdown: Shutdown) -> Hub {
        Hub(Arc::new(HubInner {
            cfg,
            store,
            clock,
            shutdown,
            topics: Mutex::default(),
            next_id: AtomicU64::new(1),
        }))
    }

    /// Subscribers of `stream_id` on this node.
    pub fn viewers(&self, stream_id: &str) -> usize {
        let topic = self
            .0
            .topics
            .lock()
            .ok()
            .and_then(|m| m.get(stream_id).cloned());
        topic
            .and_then(|t| t.state.lock().ok().map(|s| s.subs.len()))
            .unwrap_or(0)
    }

    /// Streams this node holds a topic for.
    pub fn topics(&self) -> usize {
        self.0.topics.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Takes a committed event into this node's topic of its stream (if any).
    pub fn ingest(&self, ev: StreamEvent) {
        let topic = self
            .0
            .topics
            .lock()
            .ok()
            .and_then(|m| m.get(&ev.stream_id).cloned());
        if let Some(t) = topic {
            self.apply(&t, Arc::new(ev));
        }
    }

    fn apply(&self, t: &Topic, ev: Arc<StreamEvent>) {
        let Ok(mut st) = t.state.lock() else {
            return;
        };
        if !st.loaded || ev.seq <= st.head {
            // Not loaded yet: the load reads it from the database. At or below head: a duplicate.
            return;
        }
        if ev.seq > st.head + 1 {
            // A hole: the poller reads the missing events (and this one) in order.
            drop(st);
            t.wake.notify_one();
            return;
        }
        st.head = ev.seq;
        st.ring.push_back(ev.clone());
        self.trim(&mut st);
        let frame = Frame::Event(ev.clone());
        let before = st.subs.len();
        st.subs.retain(|(_, tx)| match tx.try_send(frame.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("live_subscribers_dropped_total").increment(1);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if ev.kind == EventKind::Ended {
            st.ended = Some(ev);
            // Every channel closes after what it holds: the streams end with `ended`.
            st.subs.clear();
        }
        let gone = before - st.subs.len();
        if gone > 0 {
            metrics::gauge!("live_subscribers").decrement(gone as f64);
        }
        metrics::counter!("live_events_delivered_total").increment(st.subs.len() as u64);
    }

    fn trim(&self, st: &mut TopicState) {
        let cutoff = self.0.clock.now().minus(self.0.cfg.replay).as_micros();
        while st
            .ring
            .front()
            .is_some_and(|e| e.at < cutoff || st.ring.len() > self.0.cfg.replay_max)
        {
            st.ring.pop_front();
        }
    }

    /// The topic of `stream_id`, created (with its task) when missing; counted as used.
    fn topic_for(&self, stream_id: &str) -> Result<Arc<Topic>, anyhow::Error> {
        let mut map = self
            .0
            .topics
            .lock()
            .map_err(|_| anyhow::anyhow!("live topics poisoned"))?;
        if let Some(t) = map.get(stream_id) {
            t.users.fetch_add(1, Ordering::SeqCst);
            return Ok(t.clone());
        }
        let t = Arc::new(Topic {
            stream_id: stream_id.to_owned(),
            users: AtomicUsize::new(1),
            ready: OnceCell::new(),
            state: Mutex::default(),
            wake: Notify::new(),
        });
        map.insert(stream_id.to_owned(), t.clone());
        metrics::gauge!("live_topics").set(map.len() as f64);
        tokio::spawn(self.clone().run_topic(t.clone()));
        Ok(t)
    }

    /// Loads a topic's ring and head from the database (once).
    async fn load(&self, t: &Topic) -> anyhow::Result<()> {
        let since = self.0.clock.now().minus(self.0.cfg.replay).as_micros();
        let max = u32::try_from(self.0.cfg.replay_max).unwrap_or(u32::MAX);
        let (head, status, evs) = self
            .0
            .store
            .recent_events(&t.stream_id, since, max)
            .await?
            .ok_or_else(|| anyhow::anyhow!("stream {} vanished", t.stream_id))?;
        // The contiguous run of events ending at head.
        let mut ring: VecDeque<Arc<StreamEvent>> = VecDeque::new();
        let mut want = head;
        for ev in evs.into_iter().rev() {
            if ev.seq != want {
                break;
            }
            want -= 1;
            ring.push_front(Arc::new(ev));
        }
        let mut ended = ring.back().filter(|e| e.kind == EventKind::Ended).cloned();
        if status == StreamStatus::Ended && ended.is_none() {
            // Its `ended` is its last event, older than the ring.
            ended = self
                .0
                .store
                .events_after(&t.stream_id, head - 1, 1)
                .await?
                .into_iter()
                .next()
                .filter(|e| e.kind == EventKind::Ended)
                .map(Arc::new);
        }
        let mut st = t
            .state
            .lock()
            .map_err(|_| anyhow::anyhow!("live topic poisoned"))?;
        st.head = head;
        st.ring = ring;
        st.ended = ended;
        st.loaded = true;
        self.trim(&mut st);
        Ok(())
    }

    /// Subscribes to a stream, resuming after `last` (a `Last-Event-ID`) when given.
    pub async fn subscribe(
        &self,
        stream_id: &str,
        last: Option<i64>,
    ) -> anyhow::Result<Subscription> {
        let topic = self.topic_for(stream_id)?;
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        // From here on, dropping the guard gives the topic back.
        let guard = SubGuard {
            topic: topic.clone(),
            id,
        };
        topic.ready.get_or_try_init(|| self.load(&topic)).await?;
        // Anything committed while the ring was read is fetched by the topic's task now.
        topic.wake.notify_one();
        let mut st = topic
            .state
            .lock()
            .map_err(|_| anyhow::anyhow!("live topic poisoned"))?;
        self.trim(&mut st);
        let mut replay = Vec::new();
        if let Some(l) = last.filter(|l| *l < st.head) {
            let first = st.ring.front().map_or(st.head + 1, |e| e.seq);
            if l + 1 < first {
                replay.push(Frame::Gap {
                    missed: first - 1 - l,
                    last_seq: first - 1,
                });
            }
            replay.extend(
                st.ring
                    .iter()
                    .filter(|e| e.seq > l)
                    .map(|e| Frame::Event(e.clone())),
            );
        }
        if let Some(ended) = st.ended.clone() {
            let seen = last.is_some_and(|l| l >= ended.seq);
            let replayed = replay
                .iter()
                .any(|f| matches!(f, Frame::Event(e) if e.seq == ended.seq));
            if !seen && !replayed {
                replay.push(Frame::Event(ended));
            }
            let finished = replay.is_empty();
            return Ok(Subscription {
                replay,
                rx: None,
                finished,
                _guard: guard,
            });
        }
        let (tx, rx) = mpsc::channel(self.0.cfg.buffer.max(1));
        st.subs.push((id, tx));
        metrics::gauge!("live_subscribers").increment(1.0);
        replay.push(Frame::Viewers(st.subs.len()));
        Ok(Subscription {
            replay,
            rx: Some(rx),
            finished: false,
            _guard: guard,
        })
    }

    /// The topic's task: database catch-up, viewer counts, and removal once unwatched.
    async fn run_topic(self, t: Arc<Topic>) {
        let mut shutdown = self.0.shutdown.clone();
        let mut next_viewers = tokio::time::Instant::now() + self.0.cfg.viewers_every;
        loop {
            tokio::select! {
                _ = t.wake.notified() => {}
                _ = tokio::time::sleep(self.0.cfg.poll) => {}
                _ = tokio::time::sleep_until(next_viewers) => {}
                _ = shutdown.wait() => break,
            }
            if t.users.load(Ordering::SeqCst) == 0 {
                if let Ok(mut map) = self.0.topics.lock()
                    && t.users.load(Ordering::SeqCst) == 0
                {
                    if map.get(&t.stream_id).is_some_and(|m| Arc::ptr_eq(m, &t)) {
                        map.remove(&t.stream_id);
                    }
                    metrics::gauge!("live_topics").set(map.len() as f64);
                    return;
                }
                continue;
            }
            if t.ready.initialized() {
                self.catch_up(&t).await;
            }
            if tokio::time::Instant::now() >= next_viewers {
                next_viewers = tokio::time::Instant::now() + self.0.cfg.viewers_every;
                self.send_viewers(&t);
            }
        }
        if let Ok(mut map) = self.0.topics.lock() {
            map.remove(&t.stream_id);
        }
    }

    /// Reads the events after head from the database (other nodes' events, holes).
    async fn catch_up(&self, t: &Topic) {
        loop {
            let (head, ended) = match t.state.lock() {
                Ok(st) => (st.head, st.ended.is_some()),
                Err(_) => return,
            };
            if ended {
                return;
            }
            match self.0.store.events_after(&t.stream_id, head, 500).await {
                Ok(evs) => {
                    let n = evs.len();
                    for ev in evs {
                        self.apply(t, Arc::new(ev));
                    }
                    if n < 500 {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, stream = %t.stream_id, "live catch-up read failed");
                    return;
                }
            }
        }
    }

    fn send_viewers(&self, t: &Topic) {
        let Ok(mut st) = t.state.lock() else {
            return;
        };
        let frame = Frame::Viewers(st.subs.len());
        let before = st.subs.len();
        st.subs.retain(|(_, tx)| match tx.try_send(frame.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("live_subscribers_dropped_total").increment(1);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        let gone = before - st.subs.len();
        if gone > 0 {
            metrics::gauge!("live_subscribers").decrement(gone as f64);
        }
    }
}
