//! A fault-injecting TCP proxy to put between a worker and the test's redis-server: it
//! passes bytes through, or delays them, cuts connections right after forwarding a reply,
//! or holds everything back (a network partition: TCP delivers the bytes once it heals).
//!
//! It runs on a thread and runtime of its own, so it keeps working whatever the test's
//! runtime is doing, and its fault can be changed at any time; the change applies to the
//! connections already open.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything at once.
    Pass,
    /// Wait this long before forwarding each chunk, in both directions.
    Delay(Duration),
    /// Forward a reply from Redis, then close that connection (both sides).
    CutAfterReply,
    /// Hold every byte back until the fault changes: commands do not reach Redis and
    /// nothing comes back meanwhile; then everything goes through in order.
    Stall,
    /// Let commands reach Redis, but hold its replies back until the fault changes.
    HoldReplies,
    /// Close new connections at once, as if nothing listened there.
    Refuse,
    /// Let commands reach Redis, but drop its replies and close the connection: the
    /// client sees a dropped connection for a command Redis carried out.
    DropReplies,
}

struct State {
    fault: Mutex<Fault>,
    cuts: AtomicUsize,
    accepted: AtomicUsize,
    /// Cancelled to close every open connection; replaced by a fresh token after.
    close_all: Mutex<CancellationToken>,
}

/// A running proxy. Dropping it stops it and closes its connections.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

impl Proxy {
    /// A proxy on a free loopback port in front of `127.0.0.1:upstream`, passing
    /// everything through until told otherwise.
    pub fn start(upstream: u16) -> Proxy {
        let state = Arc::new(State {
            fault: Mutex::new(Fault::Pass),
            cuts: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            close_all: Mutex::new(CancellationToken::new()),
        });
        let stop = CancellationToken::new();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("proxy address");
        let (shared, stopped) = (state.clone(), stop.clone());
        std::thread::Builder::new()
            .name("fault proxy".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("proxy listener");
                    loop {
                        let client = tokio::select! {
                            accepted = listener.accept() => match accepted {
                                Ok((client, _)) => client,
                                Err(_) => continue,
                            },
                            () = stopped.cancelled() => return,
                        };
                        shared.accepted.fetch_add(1, Ordering::SeqCst);
                        if *shared.fault.lock().unwrap() == Fault::Refuse {
                            drop(client);
                            continue;
                        }
                        let close = shared.close_all.lock().unwrap().clone();
                        let (state, stopped) = (shared.clone(), stopped.clone());
                        tokio::spawn(async move {
                            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await
                            else {
                                return;
                            };
                            tokio::select! {
                                () = relay(client, server, &state) => {}
                                () = close.cancelled() => {}
                                () = stopped.cancelled() => {}
                            }
                        });
                    }
                });
            })
            .expect("start the proxy thread");
        Proxy { addr, state, stop }
    }

    /// `redis://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Changes what happens to the traffic from now on, on every connection.
    pub fn set(&self, fault: Fault) {
        *self.state.fault.lock().unwrap() = fault;
    }

    /// Closes every open connection now (clients see them drop); new ones are accepted.
    pub fn drop_connections(&self) {
        let mut close = self.state.close_all.lock().unwrap();
        close.cancel();
        *close = CancellationToken::new();
    }

    /// How many connections [`Fault::CutAfterReply`] and [`Fault::DropReplies`] have cut
    /// so far.
    pub fn cuts(&self) -> usize {
        self.state.cuts.load(Ordering::SeqCst)
    }

    /// How many connections clients opened through the proxy so far.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn relay(client: TcpStream, server: TcpStream, state: &State) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = pump(&mut client_read, &mut server_write, state, false);
    let replies = pump(&mut server_read, &mut client_write, state, true);
    // Either direction ending (a close, an error or a cut) ends the connection.
    tokio::select! {
        () = requests => {}
        () = replies => {}
    }
}

async fn pump(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    state: &State,
    replies: bool,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut fault = *state.fault.lock().unwrap();
        while fault == Fault::Stall || (replies && fault == Fault::HoldReplies) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            fault = *state.fault.lock().unwrap();
        }
        if let Fault::Delay(delay) = fault {
            tokio::time::sleep(delay).await;
        }
        if replies && fault == Fault::DropReplies {
            state.cuts.fetch_add(1, Ordering::SeqCst);
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
        if replies && fault == Fault::CutAfterReply {
            let _ = to.flush().await;
            state.cuts.fetch_add(1, Ordering::SeqCst);
            return;
        }
    }
}
