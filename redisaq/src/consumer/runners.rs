//! The tasks that run calls: started as calls need them, up to the concurrency limit, and
//! kept for the next call. A task per call would cost a spawn and an allocation per job,
//! which for a quick handler is a large share of all a job costs the worker.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use tokio::sync::{Notify, OwnedSemaphorePermit};

use super::execute::{self, Calls};
use super::{Delivery, Shared};

/// A call waiting for a runner, with its place under the concurrency limit.
type Waiting = (Vec<Delivery>, OwnedSemaphorePermit);

#[derive(Default)]
struct Queue {
    state: Mutex<State>,
    ready: Notify,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<Waiting>,
    /// Runners waiting for a call.
    idle: usize,
    /// No more calls come: runners finish what waits, then stop.
    closed: bool,
}

impl Queue {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("call queue lock")
    }
}

/// The executor's handle on its runners. Dropping it lets them finish what waits and
/// stop.
pub(crate) struct Runners {
    queue: Arc<Queue>,
    started: usize,
    shared: Arc<Shared>,
    calls: Arc<Calls>,
}

impl Runners {
    /// Runners for at most `calls.limit` calls at once.
    pub(crate) fn new(shared: Arc<Shared>, calls: Arc<Calls>) -> Self {
        Runners {
            queue: Arc::default(),
            started: 0,
            shared,
            calls,
        }
    }

    /// Starts a call on an idle runner, or on a new one while fewer than `calls.limit` run.
    /// (If every runner is busy, as when one is still settling the jobs of a call whose
    /// permit it gave back, the call waits for the first one free.)
    pub(crate) fn start(&mut self, batch: Vec<Delivery>, permit: OwnedSemaphorePermit) {
        let mut state = self.queue.state();
        // Every idle runner already has a call waiting for it: this one needs another.
        if state.waiting.len() >= state.idle && self.started < self.calls.limit {
            drop(state);
            self.started += 1;
            self.calls.running.spawn(run(
                self.queue.clone(),
                self.shared.clone(),
                self.calls.clone(),
                (batch, permit),
            ));
        } else {
            state.waiting.push_back((batch, permit));
            drop(state);
            self.queue.ready.notify_one();
        }
    }
}

impl Drop for Runners {
    fn drop(&mut self) {
        self.queue.state().closed = true;
        self.queue.ready.notify_waiters();
    }
}

async fn run(queue: Arc<Queue>, shared: Arc<Shared>, calls: Arc<Calls>, first: Waiting) {
    let mut next = first;
    loop {
        let (batch, permit) = next;
        // A panic outside the handler (which `call` catches itself) is a bug; the runner
        // stays, so the concurrency limit keeps its place.
        let call = execute::call(shared.clone(), calls.clone(), batch, permit);
        if let Err(panic) = AssertUnwindSafe(call).catch_unwind().await {
            tracing::error!(
                topic = %shared.topic,
                "a call ended in a panic outside its handler: {}",
                execute::panic_message(&panic)
            );
        }
        next = loop {
            // Made before the queue is looked at: a call queued after the look still
            // wakes it (`notify_one` keeps a permit for the next wait), and so does the
            // close (`notify_waiters` wakes the waits made before it).
            let ready = queue.ready.notified();
            {
                let mut state = queue.state();
                if let Some(waiting) = state.waiting.pop_front() {
                    break waiting;
                }
                if state.closed {
                    return;
                }
                state.idle += 1;
            }
            ready.await;
            queue.state().idle -= 1;
        };
    }
}
