//! Acknowledgements, coalesced: whatever arrived while the previous pipeline was in
//! flight goes out together, one `XACK` per stream with all its ids.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::mpsc;

/// Most ids sent in one round trip.
const MAX_PER_FLUSH: usize = 2048;

/// A request to the acknowledger.
#[derive(Debug)]
pub(crate) enum Ack {
    /// Acknowledge this entry of this stream.
    Entry { stream: String, id: String },
    /// Flush what came before and stop.
    Close,
}

pub(crate) async fn run(
    mut conn: ConnectionManager,
    group: &'static str,
    mut requests: mpsc::UnboundedReceiver<Ack>,
) {
    let mut closing = false;
    while !closing {
        let Some(first) = requests.recv().await else {
            break;
        };
        let mut by_stream: HashMap<String, Vec<String>> = HashMap::new();
        let mut count = 0;
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Ack::Entry { stream, id } => {
                    by_stream.entry(stream).or_default().push(id);
                    count += 1;
                }
                Ack::Close => closing = true,
            }
            if count < MAX_PER_FLUSH && !closing {
                next = requests.try_recv().ok();
            }
        }
        if count > 0 {
            flush(&mut conn, group, &by_stream).await;
        }
    }
}

/// Sends the acks, retrying through reconnects for a while. If Redis stays away the jobs
/// stay pending and are delivered again: at-least-once, never lost.
async fn flush(
    conn: &mut ConnectionManager,
    group: &str,
    by_stream: &HashMap<String, Vec<String>>,
) {
    let mut pipe = redis::pipe();
    for (stream, ids) in by_stream {
        pipe.cmd("XACK").arg(stream).arg(group).arg(ids).ignore();
    }
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=8 {
        match pipe.exec_async(conn).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(attempt, error = %e, "acknowledging jobs failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
    let count: usize = by_stream.values().map(Vec::len).sum();
    tracing::error!(
        count,
        "could not acknowledge jobs; they stay pending and will be delivered again"
    );
}
