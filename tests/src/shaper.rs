//! A poor link on loopback: a TCP proxy that delays and rate-limits each
//! direction, counts what crosses it, and can be cut.
//!
//! Each direction is one link shared by every connection through the proxy
//! (a phone has one radio): a chunk leaves when the link has finished
//! sending what came before it (`len / rate`), and arrives `one_way_delay`
//! later. The proxy accepts at once on loopback, so the TCP handshake's
//! round trip is charged to each connection's first bytes: nothing it
//! sends leaves before a round trip after it connected. What a cut catches in flight is lost, as on a real link; the
//! endpoints see their connections reset, and connections made while the
//! link is down are dropped at once. A stalled direction carries nothing
//! and closes nothing (a phone in a lift): what is sent waits, and the
//! connections stay open until the stall ends or the link is cut. A
//! stranded connection is stalled for good while new ones go through (a
//! NAT that forgot a flow): only a cut ends it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::time::Instant;

/// The shape of one link.
#[derive(Debug, Clone, Copy)]
pub struct LinkShape {
    /// Bytes per second, each way.
    pub bytes_per_sec: f64,
    /// Half the round trip.
    pub one_way_delay: Duration,
}

impl LinkShape {
    /// 250 kbit/s each way, 300 ms round trip: a 2G/EDGE link in a village.
    pub fn poor() -> LinkShape {
        LinkShape {
            bytes_per_sec: 250_000.0 / 8.0,
            one_way_delay: Duration::from_millis(150),
        }
    }

    pub fn round_trip(&self) -> Duration {
        self.one_way_delay * 2
    }

    /// The least time `bytes` take on this link.
    pub fn transfer(&self, bytes: usize) -> Duration {
        Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec)
    }
}

/// What crossed the proxy.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Client to server.
    pub up: AtomicU64,
    /// Server to client.
    pub down: AtomicU64,
    /// TCP connections accepted while the link was up.
    pub connections: AtomicU64,
}

impl LinkCounters {
    pub fn up(&self) -> u64 {
        self.up.load(Ordering::SeqCst)
    }
    pub fn down(&self) -> u64 {
        self.down.load(Ordering::SeqCst)
    }
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

/// One direction of the link: when it is next free to send.
#[derive(Debug)]
struct Direction {
    free_at: Mutex<Instant>,
}

#[derive(Debug)]
struct Shared {
    shape: LinkShape,
    /// Shaping off (for setting a test up quickly) forwards at once.
    shaped: AtomicBool,
    counters: LinkCounters,
    up: Direction,
    down: Direction,
    /// Bumped on every cut; a connection ends when it changes.
    generation: watch::Sender<u64>,
    down_now: AtomicBool,
    /// Connections still to drop as soon as they are accepted.
    drop_next: AtomicU64,
    /// Whether each direction, up and down, is stalled.
    stalled: watch::Sender<Stall>,
    /// Each open connection's own stall, for stranding it.
    open: std::sync::Mutex<Vec<std::sync::Weak<watch::Sender<Stall>>>>,
    /// Where new connections go (a server started again elsewhere).
    target: std::sync::Mutex<SocketAddr>,
}

/// Which directions of the link carry nothing for now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stall {
    pub up: bool,
    pub down: bool,
}

/// A shaping proxy in front of `target`.
#[derive(Debug)]
pub struct ShapingProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl ShapingProxy {
    pub async fn start(target: SocketAddr, shape: LinkShape) -> anyhow::Result<ShapingProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let now = Instant::now();
        let shared = Arc::new(Shared {
            shape,
            shaped: AtomicBool::new(true),
            counters: LinkCounters::default(),
            up: Direction {
                free_at: Mutex::new(now),
            },
            down: Direction {
                free_at: Mutex::new(now),
            },
            generation: watch::channel(0).0,
            down_now: AtomicBool::new(false),
            drop_next: AtomicU64::new(0),
            stalled: watch::channel(Stall::default()).0,
            open: std::sync::Mutex::new(Vec::new()),
            target: std::sync::Mutex::new(target),
        });
        let accepting = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let dropped = accepting
                    .drop_next
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if dropped || accepting.down_now.load(Ordering::SeqCst) {
                    // No link: the connection goes nowhere.
                    drop(client);
                    continue;
                }
                accepting
                    .counters
                    .connections
                    .fetch_add(1, Ordering::SeqCst);
                let shared = accepting.clone();
                let target = *accepting.target.lock().unwrap_or_else(|e| e.into_inner());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        relay(shared, client, server).await;
                    }
                });
            }
        });
        Ok(ShapingProxy { addr, shared, task })
    }

    pub fn counters(&self) -> &LinkCounters {
        &self.shared.counters
    }

    pub fn shape(&self) -> LinkShape {
        self.shared.shape
    }

    /// Shaping on or off (off: a plain relay, for quick setup).
    pub fn set_shaped(&self, shaped: bool) {
        self.shared.shaped.store(shaped, Ordering::SeqCst);
    }

    /// Cuts the link: every connection through it is dropped with what it
    /// had in flight, and new ones are dropped until [`ShapingProxy::restore`].
    pub fn cut(&self) {
        self.shared.down_now.store(true, Ordering::SeqCst);
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// The next `n` connections are reset as soon as they are made (a
    /// flaky link), the link staying up for the rest.
    pub fn drop_next(&self, n: u64) {
        self.shared.drop_next.store(n, Ordering::SeqCst);
    }

    /// New connections go to `target` from now on (the server was started
    /// again on another port); the phones keep the proxy's address.
    pub fn retarget(&self, target: SocketAddr) {
        *self.shared.target.lock().unwrap_or_else(|e| e.into_inner()) = target;
    }

    /// Ends a cut (new connections go through again) and any stall.
    pub fn restore(&self) {
        self.shared.down_now.store(false, Ordering::SeqCst);
        self.stall(Stall::default());
    }

    /// Holds the directions `stall` names: bytes wait in the proxy, and
    /// every connection stays open, until a later call lets them go.
    pub fn stall(&self, stall: Stall) {
        self.shared.stalled.send_replace(stall);
    }

    /// Stalls every connection open now in the directions `stall` names,
    /// for good (until a cut); connections made later go through.
    pub fn strand(&self, stall: Stall) {
        let mut open = self.shared.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|connection| match connection.upgrade() {
            Some(connection) => {
                connection.send_replace(stall);
                true
            }
            None => false,
        });
    }

    pub fn http_url(&self, tls: bool) -> String {
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

impl Drop for ShapingProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.generation.send_modify(|g| *g += 1);
    }
}

/// Largest chunk read at once: about one TCP segment, so bytes trickle
/// through the link rather than arrive in bursts.
const CHUNK: usize = 1460;

async fn relay(shared: Arc<Shared>, client: TcpStream, server: TcpStream) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut cut = shared.generation.subscribe();
    cut.borrow_and_update();
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let handshake = Instant::now() + shared.shape.round_trip();
    let own = Arc::new(watch::channel(Stall::default()).0);
    shared
        .open
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Arc::downgrade(&own));
    let up = pump(
        shared.clone(),
        own.clone(),
        client_read,
        server_write,
        true,
        handshake,
    );
    let down = pump(
        shared.clone(),
        own.clone(),
        server_read,
        client_write,
        false,
        handshake,
    );
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = cut.changed() => {}
    }
}

/// Carries one direction: reads chunks, schedules each on the link, and
/// writes it when it arrives. The queue between is bounded by about the
/// link's bandwidth-delay product, so a sender feels back-pressure as on a
/// real link instead of the proxy buffering without end.
async fn pump(
    shared: Arc<Shared>,
    own: Arc<watch::Sender<Stall>>,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    upward: bool,
    connected: Instant,
) {
    let shape = shared.shape;
    let in_flight =
        ((shape.bytes_per_sec * shape.round_trip().as_secs_f64()) as usize / CHUNK).max(4);
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(in_flight);
    let reader_shared = shared.clone();
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let shared = &reader_shared;
            let arrives = if shared.shaped.load(Ordering::SeqCst) {
                let direction = if upward { &shared.up } else { &shared.down };
                let mut free_at = direction.free_at.lock().await;
                let start = (*free_at).max(Instant::now()).max(connected);
                *free_at = start + shape.transfer(n);
                *free_at + shape.one_way_delay
            } else {
                Instant::now()
            };
            if tx.send((arrives, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let writer_shared = shared.clone();
    let (mut stalled, mut stranded) = (shared.stalled.subscribe(), own.subscribe());
    let writer = async move {
        while let Some((arrives, bytes)) = rx.recv().await {
            tokio::time::sleep_until(arrives).await;
            let held = |s: &Stall| if upward { s.up } else { s.down };
            // Both checked again after either wait: a stall lifted while
            // the connection was stranded meanwhile must not let a chunk by.
            let mut open = true;
            loop {
                if held(&stranded.borrow()) {
                    open = stranded.wait_for(|s| !held(s)).await.is_ok();
                } else if held(&stalled.borrow()) {
                    open = stalled.wait_for(|s| !held(s)).await.is_ok();
                } else {
                    break;
                }
                if !open {
                    break;
                }
            }
            if !open {
                break;
            }
            if to.write_all(&bytes).await.is_err() {
                break;
            }
            let counter = if upward {
                &writer_shared.counters.up
            } else {
                &writer_shared.counters.down
            };
            counter.fetch_add(bytes.len() as u64, Ordering::SeqCst);
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
