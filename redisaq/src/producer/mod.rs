//! Enqueueing: JSON payloads into the right partition stream, one `XADD` per job; a batch
//! in one pipelined round trip, and single enqueues made at the same time share round
//! trips too ([`coalesce`]).

mod coalesce;

use crate::store::conn::Conn;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::error::Error;
use crate::handler::JobPayload;
use crate::job::{now_ms, JobId};
use crate::keys;
use crate::registry::TopicSpec;
use crate::store;
use crate::store::schedule::{Scheduled, When};
use crate::store::stream::{self, NewJob};
use crate::store::topic;
use crate::wire::JobFields;
use coalesce::{Answer, Coalescer, Single};

/// How long a producer trusts its cached partition count; a raised count reaches
/// producers within this time.
const PARTITIONS_REFRESH: Duration = Duration::from_secs(2);

/// Options of one enqueue.
///
/// ```
/// let options = redisaq::EnqueueOptions::new().key("user-42");
/// ```
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    key: Option<String>,
    timeout: Option<Duration>,
    wait_replicas: Option<u32>,
    id: Option<String>,
    when: Option<When>,
}

impl EnqueueOptions {
    /// No options: the job goes to the next partition round-robin.
    pub fn new() -> Self {
        Self::default()
    }

    /// Jobs with the same key go to the same partition and so are processed in the order
    /// they were enqueued (given per-partition ordering, see the README).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// How long this enqueue may take, connecting included, before it fails with
    /// [`Error::Enqueue`] (default `REDISAQ_ENQUEUE_TIMEOUT_MS` as it was at the first
    /// enqueue, else 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Enqueue returns only once `replicas` replicas of the partition's Redis have the
    /// job (`WAIT`), so a failover right after cannot lose it; if they do not confirm
    /// it within the enqueue deadline, enqueue fails with [`Error::Enqueue`] and the job
    /// among the `unknown` ones (the master has it; a failover now may lose it).
    ///
    /// `WAIT` holds the producer's connection until the replicas answer: other enqueues
    /// of this process wait behind it.
    pub fn wait_replicas(mut self, replicas: u32) -> Self {
        self.wait_replicas = Some(replicas).filter(|&n| n > 0);
        self
    }

    /// The job becomes runnable `delay` after Redis stored it (by Redis' clock), not
    /// before. Until then it waits beside its partition, shows in `redisaq topics` and
    /// can be cancelled ([`crate::admin::Admin::cancel`]); when it is due, the partition's
    /// owner moves it into the stream, for every group of the topic.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let options = redisaq::EnqueueOptions::new().delay(Duration::from_secs(60));
    /// ```
    pub fn delay(mut self, delay: Duration) -> Self {
        self.when = Some(When::In(delay));
        self
    }

    /// The job becomes runnable at `at` (a time in the past: at once); see
    /// [`delay`](Self::delay).
    ///
    /// ```
    /// # use std::time::{Duration, SystemTime};
    /// let options = redisaq::EnqueueOptions::new().at(SystemTime::now() + Duration::from_secs(3600));
    /// ```
    pub fn at(mut self, at: SystemTime) -> Self {
        let ms = at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        self.when = Some(When::At(ms));
        self
    }

    /// Idempotent enqueue: the job's [`JobId`] is `id`, and enqueueing an id the topic
    /// already holds stores nothing and returns the same id. The topic holds an id while
    /// its job is delayed and for the dedupe window after its first enqueue (default
    /// 24 h, `#[job(dedupe_window_s = N)]`). Without a [`key`](Self::key), the id routes
    /// the job to its partition as a key would; the check and the add are one step in
    /// Redis.
    ///
    /// ```
    /// let options = redisaq::EnqueueOptions::new().id("order-42");
    /// ```
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The job's id: the one given, else a new one.
    fn job_id(&self) -> Result<JobId, Error> {
        match self.id.as_deref() {
            None => Ok(JobId::generate()),
            Some("") => Err(Error::config(
                "EnqueueOptions::id(\"\") is empty: give the job a non-empty id (e.g. \"order-42\"), \
                 or leave it out for a generated one",
            )),
            Some(id) => Ok(JobId::from_stored(id)),
        }
    }

    /// What routes the job: its key, else its own id.
    fn routing_key(&self) -> Option<&str> {
        self.key.as_deref().or(self.id.as_deref())
    }

    /// What makes the job more than an append, if anything.
    fn scheduled(&self, spec: &TopicSpec) -> Option<(Option<When>, Option<Duration>)> {
        let window = self.id.as_ref().map(|_| spec.dedupe_window());
        (self.when.is_some() || window.is_some()).then_some((self.when, window))
    }
}

/// A deadline too far to add to a clock (`Duration::MAX`) is this far: never, in effect.
const FAR_FUTURE: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 30);

/// Default enqueue deadline.
const DEFAULT_ENQUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// The deadline of an enqueue: the option, else `REDISAQ_ENQUEUE_TIMEOUT_MS` (read at
/// the first enqueue), else 5 s.
fn deadline(options: Option<Duration>) -> Result<Duration, Error> {
    static CONFIGURED: std::sync::OnceLock<Result<Duration, String>> = std::sync::OnceLock::new();
    if let Some(timeout) = options {
        return Ok(timeout);
    }
    CONFIGURED
        .get_or_init(|| match Config::enqueue_timeout() {
            Ok(timeout) => Ok(timeout.unwrap_or(DEFAULT_ENQUEUE_TIMEOUT)),
            Err(Error::Config(message)) => Err(message),
            Err(other) => Err(other.to_string()),
        })
        .clone()
        .map_err(Error::Config)
}

/// Runs one enqueue within its deadline. `jobs` are the ids it adds: if it fails, the
/// error says which of them Redis stored, which it surely did not, and which are unknown
/// because the reply was lost (they may be stored).
async fn within_deadline(
    timeout: Duration,
    ids: &[JobId],
    sending: &AtomicBool,
    work: impl Future<Output = Result<(), Failure>>,
) -> Result<(), Error> {
    let failure = match tokio::time::timeout(timeout, work).await {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(failure)) => failure,
        // The work set `sending` just before it sent, in this task.
        Err(_) if sending.load(Ordering::Relaxed) => Failure::TimedOut,
        Err(_) => Failure::NotSent(no_connection()),
    };
    Err(failure.into_error(ids, timeout))
}

/// Why a job that never left was not stored within its deadline.
fn no_connection() -> Error {
    Error::Redis(redis::RedisError::from((
        redis::ErrorKind::Io,
        "no connection to Redis within the enqueue deadline",
    )))
}

/// How an enqueue failed.
enum Failure {
    /// Before anything was sent: nothing was stored.
    NotSent(Error),
    /// While the jobs were on their way or being answered: any may be stored.
    Sent(Error),
    /// Each job's own answer: `None` stored, `Some(reason)` refused.
    PerJob(Vec<Option<redis::RedisError>>),
    /// The deadline passed while the jobs were on their way: any may be stored.
    TimedOut,
    /// The deadline passed while the job waited behind earlier jobs still unanswered:
    /// it was not sent.
    Queued,
    /// Stored on the master, but fewer replicas than asked confirmed them in time.
    Unconfirmed { wanted: u32, confirmed: u64 },
}

impl Failure {
    fn into_error(self, ids: &[JobId], timeout: Duration) -> Error {
        let all = || ids.to_vec();
        match self {
            Failure::NotSent(e) => Error::enqueue(Vec::new(), all(), Vec::new(), explain(&e)),
            Failure::Sent(e) => Error::enqueue(Vec::new(), Vec::new(), all(), explain(&e)),
            Failure::TimedOut => Error::enqueue(
                Vec::new(),
                Vec::new(),
                all(),
                format!(
                    "no answer within {} ms (REDISAQ_ENQUEUE_TIMEOUT_MS or \
                     EnqueueOptions::timeout): Redis is unreachable or too slow",
                    timeout.as_millis()
                ),
            ),
            Failure::Queued => Error::enqueue(
                Vec::new(),
                all(),
                Vec::new(),
                format!(
                    "not sent within {} ms (REDISAQ_ENQUEUE_TIMEOUT_MS or \
                     EnqueueOptions::timeout): Redis had not answered the jobs sent before \
                     it; Redis is unreachable or too slow",
                    timeout.as_millis()
                ),
            ),
            Failure::Unconfirmed { wanted, confirmed } => Error::enqueue(
                Vec::new(),
                Vec::new(),
                all(),
                format!(
                    "the job reached the master, but only {confirmed} of the {wanted} \
                     replica(s) asked for (EnqueueOptions::wait_replicas) confirmed it within \
                     the enqueue deadline; a failover now may lose it. Check the replicas \
                     (INFO replication) or ask for fewer"
                ),
            ),
            Failure::PerJob(results) => {
                let (mut stored, mut refused, mut reason) = (Vec::new(), Vec::new(), None);
                for (id, result) in ids.iter().zip(results) {
                    match result {
                        None => stored.push(id.clone()),
                        Some(e) => {
                            reason.get_or_insert_with(|| explain(&Error::Redis(e)));
                            refused.push(id.clone());
                        }
                    }
                }
                Error::enqueue(stored, refused, Vec::new(), reason.unwrap_or_default())
            }
        }
    }
}

/// What went wrong, in words that say what to do.
fn explain(error: &Error) -> String {
    match error {
        Error::Redis(e) if e.code() == Some("OOM") => format!(
            "Redis is out of memory ({e}): the workers trim processed jobs and enqueue works \
             again once they have; if it lasts, raise Redis' maxmemory, lower the topics' \
             maxlen, or add workers"
        ),
        Error::Redis(e) if store::conn::is_transient(e) => {
            format!("Redis cannot be reached ({e}); check REDIS_URL and that Redis is up")
        }
        other => other.to_string(),
    }
}

struct TopicState {
    topic: &'static str,
    partitions: u32,
    /// The partition streams' keys, by partition.
    streams: Vec<String>,
    /// Every partition's id records (see `Scheduled::all_ids`); empty on a cluster.
    ids: Vec<String>,
    checked_at: Instant,
    next: AtomicU64,
}

/// A runtime's connection and the coalescer of its single enqueues.
struct Link {
    conn: Conn,
    singles: Coalescer,
}

/// The process-wide producer: where enqueue connects to and what it knows of topics.
struct Producer {
    url: RwLock<Option<String>>,
    /// Connections belong to the runtime that made them (their driver task runs there),
    /// so each runtime gets its own.
    links: RwLock<HashMap<tokio::runtime::Id, Arc<Link>>>,
    /// Held while a connection is made, so a runtime makes one.
    connecting: tokio::sync::Mutex<()>,
    /// Read by every enqueue, written when a topic's state is refreshed.
    topics: RwLock<HashMap<&'static str, Arc<TopicState>>>,
}

fn producer() -> &'static Producer {
    static PRODUCER: std::sync::OnceLock<Producer> = std::sync::OnceLock::new();
    PRODUCER.get_or_init(|| Producer {
        url: RwLock::new(None),
        links: RwLock::new(HashMap::new()),
        connecting: tokio::sync::Mutex::new(()),
        topics: RwLock::new(HashMap::new()),
    })
}

/// Sets the Redis URL that the generated `enqueue` functions use, instead of `REDIS_URL`
/// (default `redis://127.0.0.1:6379`). Checked at once; takes effect for the next
/// enqueue.
///
/// ```
/// redisaq::set_redis_url("redis://127.0.0.1:6380/0").unwrap();
/// assert!(redisaq::set_redis_url("not a url").is_err());
/// # redisaq::set_redis_url("redis://127.0.0.1:6379").unwrap();
/// ```
pub fn set_redis_url(url: &str) -> Result<(), Error> {
    store::conn::client(url)?;
    let state = producer();
    *state.url.write().expect("producer url lock") = Some(url.to_string());
    // Before the links are dropped: a connection to the old URL made meanwhile is then
    // either not kept (its maker sees the new generation) or dropped here.
    GENERATION.fetch_add(1, Ordering::Release);
    state.links.write().expect("producer links lock").clear();
    state.topics.write().expect("producer topics lock").clear();
    Ok(())
}

/// The producer's connection for the current runtime.
pub(crate) async fn connection() -> Result<Conn, Error> {
    Ok(link().await?.conn.clone())
}

/// The producer's connection and coalescer for the current runtime.
async fn link() -> Result<Arc<Link>, Error> {
    link_at(GENERATION.load(Ordering::Acquire)).await
}

/// [`link`], kept for later enqueues only if the producer dropped nothing since
/// `generation`.
async fn link_at(generation: u64) -> Result<Arc<Link>, Error> {
    let state = producer();
    let runtime = tokio::runtime::Handle::current().id();
    // A coalescer that stopped (it panicked) is replaced with the connection.
    let known = |runtime| {
        let links = state.links.read().expect("producer links lock");
        links
            .get(&runtime)
            .filter(|link| !link.singles.is_closed())
            .cloned()
    };
    if let Some(link) = known(runtime) {
        return Ok(link);
    }
    let _connecting = state.connecting.lock().await;
    if let Some(link) = known(runtime) {
        return Ok(link);
    }
    let url = state
        .url
        .read()
        .expect("producer url lock")
        .clone()
        .unwrap_or_else(Config::producer_url);
    let target = store::conn::client(&url)?;
    // One reconnect attempt per command: an unreachable Redis fails the enqueue at once
    // instead of holding it for a series of retries.
    let conn = target.connect(Duration::from_secs(5), 1).await?;
    let link = Arc::new(Link {
        singles: Coalescer::start(conn.clone()),
        conn,
    });
    let mut links = state.links.write().expect("producer links lock");
    // Kept only if the URL did not change while connecting (nor a topic's partitions:
    // then the next enqueue connects once more).
    if GENERATION.load(Ordering::Acquire) == generation {
        links.insert(runtime, link.clone());
    }
    Ok(link)
}

/// Drops what the producer cached about a topic (its partition count changed).
pub(crate) fn forget_topic(topic: &str) {
    // Before the state is dropped, as in `set_redis_url`.
    GENERATION.fetch_add(1, Ordering::Release);
    producer()
        .topics
        .write()
        .expect("producer topics lock")
        .remove(topic);
}

/// What is known of `spec`'s topic, cached for later enqueues only if the producer
/// dropped nothing since `generation`.
async fn topic_state(
    conn: &mut Conn,
    spec: &'static TopicSpec,
    generation: u64,
) -> Result<Arc<TopicState>, Error> {
    let cached = producer()
        .topics
        .read()
        .expect("producer topics lock")
        .get(spec.topic)
        .cloned();
    if let Some(state) = cached
        .as_ref()
        .filter(|s| s.checked_at.elapsed() < PARTITIONS_REFRESH)
    {
        return Ok(state.clone());
    }
    let info = topic::ensure(conn, spec).await?;
    let next = cached.map_or_else(rand::random::<u16>, |s| {
        s.next.load(Ordering::Relaxed) as u16
    });
    let state = Arc::new(TopicState {
        topic: spec.topic,
        partitions: info.partitions,
        streams: (0..info.partitions)
            .map(|p| keys::partition(spec.topic, p))
            .collect(),
        ids: if conn.is_cluster() {
            Vec::new()
        } else {
            (0..info.partitions)
                .map(|p| keys::ids(spec.topic, p))
                .collect()
        },
        checked_at: Instant::now(),
        next: AtomicU64::new(next as u64),
    });
    let mut topics = producer().topics.write().expect("producer topics lock");
    // Not kept if what the producer knew was dropped meanwhile: it may describe the
    // Redis of the old URL, or the partitions before a raise.
    if GENERATION.load(Ordering::Acquire) == generation {
        topics.insert(spec.topic, state.clone());
    }
    Ok(state)
}

/// FNV-1a: stable across processes, platforms and releases, which `std`'s hasher is not.
pub(crate) fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn route(state: &TopicState, key: Option<&str>) -> u32 {
    let slot = match key {
        Some(key) => key_hash(key),
        None => state.next.fetch_add(1, Ordering::Relaxed),
    };
    (slot % state.partitions as u64) as u32
}

/// Enqueues one job (what `my_job::enqueue` and `my_job::enqueue_with` call).
pub fn enqueue<T: JobPayload>(
    spec: &'static TopicSpec,
    payload: T,
    options: EnqueueOptions,
) -> impl Future<Output = Result<JobId, Error>> + Send + 'static {
    let json = serde_json::to_string(&payload);
    async move {
        // Read while polled: a future that was `.instrument()`ed runs in its span then.
        let trace = crate::trace::current();
        let json = json?;
        let timeout = deadline(options.timeout)?;
        let id = options.job_id()?;
        #[cfg(feature = "testing")]
        let Some(json) = crate::testing::store(spec, &id, json) else {
            return Ok(id);
        };
        if options.wait_replicas.is_some() {
            // Boxed: this rare path would make every enqueue's future larger.
            return Box::pin(enqueue_confirmed(spec, id, json, trace, options, timeout)).await;
        }
        // Tokio's clock, as the timers': a test with paused time sees deadlines pass.
        let now = tokio::time::Instant::now();
        let due = now.checked_add(timeout).unwrap_or_else(|| now + FAR_FUTURE);
        // Known connection and topic: at once, with no timer. Else within the deadline.
        let prepare = prepare(spec);
        tokio::pin!(prepare);
        let prepared = match futures_util::poll!(prepare.as_mut()) {
            std::task::Poll::Ready(prepared) => Ok(prepared),
            std::task::Poll::Pending => tokio::time::timeout_at(due, prepare).await,
        };
        let (link, state) = match prepared {
            Ok(Ok(prepared)) => prepared,
            Ok(Err(e)) => return Err(Failure::NotSent(e).into_error(&[id], timeout)),
            Err(_) => return Err(Failure::NotSent(no_connection()).into_error(&[id], timeout)),
        };
        let partition = route(&state, options.routing_key());
        let scheduled = options.scheduled(spec);
        let (answer, answered) = tokio::sync::oneshot::channel();
        link.singles.send(Single {
            job: coalesce::Job {
                topic: state,
                partition,
                id: id.clone(),
                payload: json,
                enqueued_at_ms: now_ms(),
                key: options.key,
                trace,
                scheduled,
            },
            reply: coalesce::Reply::new(due, answer),
        });
        let gone = |sent| {
            let gone = Error::Redis(redis::RedisError::from((
                redis::ErrorKind::Io,
                "the producer's connection closed before Redis answered",
            )));
            if sent {
                Failure::Sent(gone)
            } else {
                Failure::NotSent(gone)
            }
        };
        // Every job is answered: by the coalescer, by its deadline, or `Gone` by its reply.
        let failure = match answered.await {
            Ok(Answer::Done(None)) => return Ok(id),
            Ok(Answer::Done(Some(refusal))) => Failure::PerJob(vec![Some(refusal)]),
            Ok(Answer::Failed(e)) => trip_failure(e),
            Ok(Answer::Late { sent: true }) => Failure::TimedOut,
            Ok(Answer::Late { sent: false }) => Failure::Queued,
            Ok(Answer::Gone { sent }) => gone(sent),
            // A reply answers when dropped; never dropped unanswered, then.
            Err(_) => gone(true),
        };
        Err(failure.into_error(&[id], timeout))
    }
}

/// One job sent on its own and followed by a `WAIT` for replicas. (Not coalesced: a
/// WAIT holds the connection, and the jobs sharing it would wait too.)
async fn enqueue_confirmed(
    spec: &'static TopicSpec,
    id: JobId,
    json: String,
    trace: Option<String>,
    options: EnqueueOptions,
    timeout: Duration,
) -> Result<JobId, Error> {
    let ids = [id];
    let sending = AtomicBool::new(false);
    within_deadline(timeout, &ids, &sending, async {
        let (link, state) = prepare(spec).await.map_err(Failure::NotSent)?;
        let job = new_job(
            spec,
            &state,
            &ids[0],
            &json,
            &options,
            trace.as_deref(),
            now_ms(),
        );
        // Leave the WAIT a little of the deadline to answer in.
        let wait = options.wait_replicas.map(|n| (n, timeout.mul_f64(0.8)));
        send(&mut link.conn.clone(), &[job], wait, &sending).await
    })
    .await?;
    let [id] = ids;
    Ok(id)
}

/// A job to add, routed to its partition.
fn new_job<'a>(
    spec: &'static TopicSpec,
    state: &'a TopicState,
    id: &'a JobId,
    json: &'a str,
    options: &'a EnqueueOptions,
    trace: Option<&'a str>,
    enqueued_at_ms: u64,
) -> NewJob<'a> {
    let partition = route(state, options.routing_key());
    NewJob {
        stream: &state.streams[partition as usize],
        fields: JobFields {
            id: id.as_str(),
            payload: json,
            enqueued_at_ms,
            key: options.key.as_deref(),
            for_group: None,
            trace: trace.map(|t| (t, options.when.is_some())),
        },
        scheduled: options.scheduled(spec).map(|(when, window)| Scheduled {
            topic: spec.topic,
            partition,
            when,
            window,
            all_ids: &state.ids,
        }),
    }
}

/// The connection and what is known of the topic: this thread's copy if it has one,
/// else the producer's (which may ask Redis).
async fn prepare(spec: &'static TopicSpec) -> Result<(Arc<Link>, Arc<TopicState>), Error> {
    let runtime = tokio::runtime::Handle::current().id();
    let generation = GENERATION.load(Ordering::Acquire);
    if let Some(near) = near(runtime, generation, spec) {
        return Ok(near);
    }
    // Both kept only if nothing was dropped since `generation`: a link made for an old
    // URL, or what it learnt of the topic there, must not serve later enqueues.
    let link = link_at(generation).await?;
    let state = topic_state(&mut link.conn.clone(), spec, generation).await?;
    remember(runtime, generation, &link, &state);
    Ok((link, state))
}

/// Bumped after the producer dropped what it knew (a new URL, a topic's partitions
/// raised): the threads' copies in [`NEAR`] made before are stale then.
static GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's copy of its runtime's link and the topics it enqueued to, so that
    /// an enqueue takes no lock and looks up no map that all threads share.
    static NEAR: std::cell::RefCell<Option<Near>> = const { std::cell::RefCell::new(None) };
}

struct Near {
    generation: u64,
    runtime: tokio::runtime::Id,
    /// Weak: once the producer drops the link (a new URL), it closes, whatever threads
    /// keep a copy and never enqueue again.
    link: Weak<Link>,
    topics: Vec<Arc<TopicState>>,
}

fn near(
    runtime: tokio::runtime::Id,
    generation: u64,
    spec: &TopicSpec,
) -> Option<(Arc<Link>, Arc<TopicState>)> {
    NEAR.with_borrow(|near| {
        let near = near
            .as_ref()
            .filter(|near| near.runtime == runtime && near.generation == generation)?;
        let link = near
            .link
            .upgrade()
            .filter(|link| !link.singles.is_closed())?;
        let state = near
            .topics
            .iter()
            .find(|state| state.topic == spec.topic)
            .filter(|state| state.checked_at.elapsed() < PARTITIONS_REFRESH)?;
        Some((link, state.clone()))
    })
}

/// Keeps `link` and `state`, read from the producer at `generation`, in [`NEAR`].
fn remember(
    runtime: tokio::runtime::Id,
    generation: u64,
    link: &Arc<Link>,
    state: &Arc<TopicState>,
) {
    NEAR.with_borrow_mut(|near| {
        let near = match near {
            Some(near)
                if near.runtime == runtime
                    && near.generation == generation
                    && std::ptr::eq(near.link.as_ptr(), Arc::as_ptr(link)) =>
            {
                near
            }
            _ => near.insert(Near {
                generation,
                runtime,
                link: Arc::downgrade(link),
                topics: Vec::new(),
            }),
        };
        near.topics.retain(|known| known.topic != state.topic);
        near.topics.push(state.clone());
    });
}

/// How a failed round trip failed: before anything reached Redis, or after.
fn trip_failure(e: redis::RedisError) -> Failure {
    if e.is_connection_refusal() {
        Failure::NotSent(e.into())
    } else {
        Failure::Sent(e.into())
    }
}

/// Sends the jobs, one answer per job; with `wait = (n, timeout)`, waits for `n`
/// replicas to have them.
async fn send(
    conn: &mut Conn,
    jobs: &[NewJob<'_>],
    wait: Option<(u32, Duration)>,
    sending: &AtomicBool,
) -> Result<(), Failure> {
    sending.store(true, Ordering::SeqCst);
    let added = stream::add(conn, jobs, wait).await.map_err(trip_failure)?;
    if added.refusals.iter().any(Option::is_some) {
        return Err(Failure::PerJob(added.refusals));
    }
    match (wait, added.replicas) {
        (Some((wanted, _)), Some(confirmed)) if confirmed < wanted as u64 => {
            Err(Failure::Unconfirmed { wanted, confirmed })
        }
        _ => Ok(()),
    }
}

/// Enqueues many jobs in one pipelined round trip (what `my_job::enqueue_batch` calls).
pub fn enqueue_batch<T: JobPayload, I: IntoIterator<Item = T>>(
    spec: &'static TopicSpec,
    payloads: I,
) -> impl Future<Output = Result<Vec<JobId>, Error>> + Send + 'static {
    enqueue_batch_with(
        spec,
        payloads
            .into_iter()
            .map(|payload| (payload, EnqueueOptions::new())),
    )
}

/// Enqueues many jobs, each with its options, in one pipelined round trip (what
/// `my_job::enqueue_batch_with` calls). The batch's deadline is the longest of the
/// items' timeouts; with `wait_replicas`, it waits for the most any item asks.
pub fn enqueue_batch_with<T: JobPayload, I: IntoIterator<Item = (T, EnqueueOptions)>>(
    spec: &'static TopicSpec,
    items: I,
) -> impl Future<Output = Result<Vec<JobId>, Error>> + Send + 'static {
    let items: Result<Vec<(String, EnqueueOptions)>, serde_json::Error> = items
        .into_iter()
        .map(|(payload, options)| Ok((serde_json::to_string(&payload)?, options)))
        .collect();
    async move {
        let trace = crate::trace::current();
        let items = items?;
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let timeout = deadline(items.iter().filter_map(|(_, o)| o.timeout).max())?;
        let replicas = items.iter().filter_map(|(_, o)| o.wait_replicas).max();
        let ids: Vec<JobId> = items
            .iter()
            .map(|(_, options)| options.job_id())
            .collect::<Result<_, _>>()?;
        #[cfg(feature = "testing")]
        let items = {
            let mut kept = Vec::with_capacity(items.len());
            for ((json, options), id) in items.into_iter().zip(&ids) {
                if let Some(json) = crate::testing::store(spec, id, json) {
                    kept.push((json, options));
                }
            }
            if kept.is_empty() {
                return Ok(ids);
            }
            kept
        };
        let sending = AtomicBool::new(false);
        within_deadline(timeout, &ids, &sending, async {
            let (link, state) = prepare(spec).await.map_err(Failure::NotSent)?;
            let enqueued_at_ms = now_ms();
            let jobs: Vec<NewJob> = ids
                .iter()
                .zip(&items)
                .map(|(id, (json, options))| {
                    new_job(
                        spec,
                        &state,
                        id,
                        json,
                        options,
                        trace.as_deref(),
                        enqueued_at_ms,
                    )
                })
                .collect();
            // Leave the WAIT a little of the deadline to answer in.
            let wait = replicas.map(|n| (n, timeout.mul_f64(0.8)));
            send(&mut link.conn.clone(), &jobs, wait, &sending).await
        })
        .await?;
        Ok(ids)
    }
}

/// Raises a topic's partition count to `partitions` and returns the previous count (0
/// for a topic that did not exist). Producers pick up the new partitions within a few
/// seconds; workers rebalance onto them. Lowering is refused: jobs in the removed
/// partitions would be stranded.
///
/// Uses the same Redis as `enqueue` (see [`set_redis_url`]).
pub async fn set_partitions(topic: &str, partitions: u32) -> Result<u32, Error> {
    let mut conn = connection().await?;
    let previous = crate::store::topic::raise(&mut conn, topic, partitions).await?;
    forget_topic(topic);
    Ok(previous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_route_stably_and_round_robin_spreads() {
        let state = TopicState {
            topic: "t",
            partitions: 4,
            streams: Vec::new(),
            ids: Vec::new(),
            checked_at: Instant::now(),
            next: AtomicU64::new(0),
        };
        assert_eq!(
            route(&state, Some("user-42")),
            route(&state, Some("user-42"))
        );
        assert_eq!(key_hash("a"), 0xaf63dc4c8601ec8c);
        let spread: std::collections::HashSet<u32> = (0..4).map(|_| route(&state, None)).collect();
        assert_eq!(spread.len(), 4);
    }
}
