//! Pieces the in-process tests share: a record of what their handlers saw, a worker
//! running beside the test, and job ids as the handlers record them.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What a test's handlers saw, one entry per call, kept in a `static`:
///
/// ```
/// use redisaq_tests::Calls;
///
/// /// (job id, attempt) of every call of the handler.
/// static SEEN: Calls<(String, u32)> = Calls::new();
///
/// // In the handler: `SEEN.push((job.id().to_string(), job.attempt()));`
/// SEEN.push(("a".to_string(), 1));
/// assert_eq!(SEEN.all(), [("a".to_string(), 1)]);
/// ```
pub struct Calls<T>(Mutex<Vec<T>>);

impl<T> Calls<T> {
    /// No calls yet.
    pub const fn new() -> Self {
        Calls(Mutex::new(Vec::new()))
    }

    /// The calls, whether or not a handler panicked while it held them.
    fn lock(&self) -> MutexGuard<'_, Vec<T>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a call.
    pub fn push(&self, call: T) {
        self.lock().push(call);
    }

    /// How many calls there were.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there was no call.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// How many calls match `check`.
    pub fn count(&self, mut check: impl FnMut(&T) -> bool) -> usize {
        self.lock().iter().filter(|call| check(call)).count()
    }
}

impl<T: PartialEq> Calls<T> {
    /// Whether `call` was recorded.
    pub fn contains(&self, call: &T) -> bool {
        self.lock().contains(call)
    }
}

impl<T: Clone> Calls<T> {
    /// Every call so far, in order.
    pub fn all(&self) -> Vec<T> {
        self.lock().clone()
    }
}

impl<T: Clone + Ord> Calls<T> {
    /// Every call so far, sorted.
    pub fn sorted(&self) -> Vec<T> {
        let mut calls = self.all();
        calls.sort();
        calls
    }
}

impl<T: Clone + Eq + Hash> Calls<T> {
    /// Every call so far, each once.
    pub fn distinct(&self) -> HashSet<T> {
        self.lock().iter().cloned().collect()
    }

    /// How many times each call was recorded.
    pub fn counts(&self) -> HashMap<T, usize> {
        let mut counts = HashMap::new();
        for call in self.lock().iter() {
            *counts.entry(call.clone()).or_default() += 1;
        }
        counts
    }
}

impl<V: Clone> Calls<(&'static str, V)> {
    /// The calls recorded under `tag` (a test's or a group's name), in order.
    pub fn tagged(&self, tag: &str) -> Vec<V> {
        self.lock()
            .iter()
            .filter(|(t, _)| *t == tag)
            .map(|(_, call)| call.clone())
            .collect()
    }
}

impl<T> Default for Calls<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: fmt::Debug> fmt::Debug for Calls<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.lock().fmt(f)
    }
}

/// Holds a handler call until the test releases it, kept in a `static`: the handler awaits
/// [`Hold::hold`] (or [`Hold::hold_first`]), the test waits for [`Hold::started`], does
/// what it must while the call runs, then calls [`Hold::release`].
pub struct Hold {
    started: AtomicBool,
    released: AtomicBool,
}

impl Hold {
    /// Nothing held or released yet.
    pub const fn new() -> Self {
        Hold {
            started: AtomicBool::new(false),
            released: AtomicBool::new(false),
        }
    }

    /// Waits until released.
    pub async fn hold(&self) {
        self.started.store(true, Ordering::SeqCst);
        self.wait().await;
    }

    /// Waits until released if no call got here before; later calls go on at once.
    pub async fn hold_first(&self) {
        if !self.started.swap(true, Ordering::SeqCst) {
            self.wait().await;
        }
    }

    async fn wait(&self) {
        while !self.released.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether a call got to the hold within 30 s.
    pub async fn started(&self) -> bool {
        crate::eventually(Duration::from_secs(30), || {
            self.started.load(Ordering::SeqCst)
        })
        .await
    }

    /// Lets the held call (and every later one) go on.
    pub fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
    }
}

impl Default for Hold {
    fn default() -> Self {
        Self::new()
    }
}

/// An in-process worker running beside the test until [`Background::stop`].
pub struct Background {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), redisaq::Error>>,
}

impl Background {
    /// Runs `worker` in a task of its own.
    pub fn start(worker: redisaq::Worker) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(worker.run_until(async move {
            let _ = stopped.await;
        }));
        Background { stop, task }
    }

    /// Whether the worker stopped already (it runs until stopped, unless it fails).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the worker and returns what `run_until` returned. Panics if that took more
    /// than a minute or the worker's task panicked.
    pub async fn stop(self) -> Result<(), redisaq::Error> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("run_until returned after the stop")
            .expect("the worker task did not panic")
    }
}

/// Calls `enqueue` until it succeeds, `pause` apart (200 times at most), as a producer
/// would while its connections are cut; returns what it returned.
pub async fn enqueue_retrying<T, F, Fut>(pause: Duration, mut enqueue: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, redisaq::Error>>,
{
    let mut last = None;
    for _ in 0..200 {
        match enqueue().await {
            Ok(done) => return done,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(pause).await;
    }
    panic!("enqueue kept failing: {last:?}");
}

/// Job ids (e.g. what `enqueue_batch` returned) as the strings the handlers record.
pub fn id_set<I>(ids: I) -> HashSet<String>
where
    I: IntoIterator,
    I::Item: ToString,
{
    ids.into_iter().map(|id| id.to_string()).collect()
}
