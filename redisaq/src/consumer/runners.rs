//! The tasks that run calls: started as calls need them, up to the concurrency limit, and
//! kept for the next call. A task per call would cost a spawn and an allocation per job,
//! which for a quick handler is a large share of all a job costs the worker.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedSemaphorePermit};

use super::execute::{self, Calls};
use super::{Delivery, Shared};

/// A call waiting for a runner, with its place under the concurrency limit.
type Waiting = (Vec<Delivery>, OwnedSemaphorePermit);

#[derive(Default)]
struct Queue {
    waiting: Mutex<VecDeque<Waiting>>,
    ready: Notify,
    /// Runners waiting for a call.
    idle: AtomicUsize,
    /// No more calls come: runners finish what waits, then stop.
    closed: AtomicBool,
}

impl Queue {
    fn pop(&self) -> Option<Waiting> {
        self.waiting.lock().expect("call queue lock").pop_front()
    }
}

/// The executor's handle on its runners. Dropping it lets them finish what waits and
/// stop.
pub(crate) struct Runners {
    queue: Arc<Queue>,
    started: usize,
    limit: usize,
    shared: Arc<Shared>,
    calls: Arc<Calls>,
}

impl Runners {
    /// Runners for at most `limit` calls at once.
    pub(crate) fn new(shared: Arc<Shared>, calls: Arc<Calls>, limit: usize) -> Self {
        Runners {
            queue: Arc::default(),
            started: 0,
            limit,
            shared,
            calls,
        }
    }

    /// Starts a call on an idle runner, or on a new one while fewer than `limit` run.
    /// (If every runner is busy, as when one is still settling the jobs of a call whose
    /// permit it gave back, the call waits for the first one free.)
    pub(crate) fn start(&mut self, batch: Vec<Delivery>, permit: OwnedSemaphorePermit) {
        if self.queue.idle.load(Ordering::Acquire) == 0 && self.started < self.limit {
            self.started += 1;
            self.calls.running.spawn(run(
                self.queue.clone(),
                self.shared.clone(),
                self.calls.clone(),
                (batch, permit),
            ));
        } else {
            self.queue
                .waiting
                .lock()
                .expect("call queue lock")
                .push_back((batch, permit));
            self.queue.ready.notify_one();
        }
    }
}

impl Drop for Runners {
    fn drop(&mut self) {
        self.queue.closed.store(true, Ordering::Release);
        self.queue.ready.notify_waiters();
    }
}

async fn run(queue: Arc<Queue>, shared: Arc<Shared>, calls: Arc<Calls>, first: Waiting) {
    let mut next = first;
    loop {
        let (batch, permit) = next;
        execute::call(shared.clone(), calls.clone(), batch, permit).await;
        queue.idle.fetch_add(1, Ordering::AcqRel);
        next = loop {
            // Made before the queue is looked at: a call queued after the look still
            // wakes it (`notify_one` keeps a permit for the next wait).
            let ready = queue.ready.notified();
            if let Some(waiting) = queue.pop() {
                break waiting;
            }
            if queue.closed.load(Ordering::Acquire) {
                queue.idle.fetch_sub(1, Ordering::AcqRel);
                return;
            }
            ready.await;
        };
        queue.idle.fetch_sub(1, Ordering::AcqRel);
    }
}
