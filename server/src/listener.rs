//! Accepting connections: the one loop every HTTP, HTTPS, WS and WSS
//! connection comes through.
//!
//! Each accepted connection first takes a place in the connection budget
//! ([`crate::budget::connections`]); past its address's bound or the
//! process's it is closed before anything is read. The place travels inside
//! the stream ([`Budgeted`]), so a WebSocket keeps it after the upgrade and
//! frees it when its socket closes. A TLS handshake and every request's
//! headers have deadlines (hyper's header timer also runs on an idle
//! keep-alive connection), so a silent or trickling client cannot hold a
//! place for long. `axum::serve` has neither bound, which is how 1,100
//! idle connections from one client locked everyone out.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::budget::{ConnectionBudget, ConnectionPermit};
use crate::metrics::{Metrics, Refusal};

/// How long shutdown waits for open HTTP exchanges to finish (an
/// enrollment that committed must get its token to the device).
const DRAIN: Duration = Duration::from_secs(30);

/// A stream holding its connection's place in the budget, and closing
/// itself when its peer stops taking bytes: a write that makes no progress
/// for `write_stall` fails. Without it a client that pipelines requests and
/// never reads their answers held its place forever (hyper has no write
/// deadline; the header deadline only runs while reading).
#[derive(Debug)]
pub struct Budgeted<S> {
    stream: S,
    _permit: Arc<ConnectionPermit>,
    write_stall: Duration,
    /// Running while a write waits for the peer to take bytes.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Budgeted<S> {
    /// Fails a write that has waited too long, or starts its clock.
    fn check_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let write_stall = self.write_stall;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(write_stall)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no bytes for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(&mut self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.stalled = None;
        }
        result
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Budgeted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Budgeted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Pending => this.check_stall(cx),
            ready => this.progress(ready),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_flush(cx) {
            Poll::Pending => this.check_stall(cx).map_ok(|_| ()),
            ready => this.progress(ready),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_shutdown(cx) {
            Poll::Pending => this.check_stall(cx).map_ok(|_| ()),
            ready => this.progress(ready),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.check_stall(cx),
            ready => this.progress(ready),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until
/// `shutdown` resolves, then lets open exchanges finish for a few seconds.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    budget: ConnectionBudget,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let (closing, closed) = watch::channel(false);
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors (or another transient error):
                    // wait for connections to close instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let permit = match budget.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(refusal) => {
                metrics.refused(Refusal::ConnectionBudget);
                tracing::debug!(%peer, %refusal, "connection refused");
                drop(stream);
                continue;
            }
        };
        let limits = budget.limits();
        let permit = Arc::new(permit);
        let stream = Budgeted {
            stream,
            _permit: permit.clone(),
            write_stall: limits.write_stall,
            stalled: None,
        };
        let (app, acceptor, closed) = (app.clone(), acceptor.clone(), closed.clone());
        connections.spawn(async move {
            match acceptor {
                None => {
                    serve_connection(stream, peer, permit, app, limits.header_read, closed).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(limits.handshake, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let header_read = limits.header_read;
                            serve_connection(stream, peer, permit, app, header_read, closed).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    let _ = closing.send(true);
    connections.close();
    let _ = tokio::time::timeout(DRAIN, connections.wait()).await;
    Ok(())
}

/// One HTTP/1.1 connection, with upgrades (the WebSocket keeps the stream,
/// and with it the connection's place in the budget).
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    permit: Arc<ConnectionPermit>,
    app: Router,
    header_read: Duration,
    mut closed: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The stream holds the place; requests get a weak handle, through which
    // an authenticated device's socket moves out of its address's share.
    let place = Arc::downgrade(&permit);
    drop(permit);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        // The client address, for throttling and budgets (forwarding
        // headers are not trusted).
        request.extensions_mut().insert(ConnectInfo(peer));
        request
            .extensions_mut()
            .insert(ConnectionPlace(place.clone()));
        let mut app = app.clone();
        async move { app.call(request).await }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = closing(&mut closed) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// A request's handle on its connection's place in the budget (weak: the
/// stream owns the place).
#[derive(Clone, Debug)]
pub struct ConnectionPlace(std::sync::Weak<ConnectionPermit>);

impl ConnectionPlace {
    /// The connection now belongs to an authenticated device: it leaves its
    /// address's share (a carrier NAT may hold many phones) and stays in
    /// the process's. The device's own bound is its socket budget.
    pub fn authenticated(&self) {
        if let Some(permit) = self.0.upgrade() {
            permit.leave_address();
        }
    }
}

/// Resolves once the server is closing (or the sender is gone).
async fn closing(closed: &mut watch::Receiver<bool>) {
    // `wait_for` would hold a non-`Send` guard across the select.
    while !*closed.borrow_and_update() {
        if closed.changed().await.is_err() {
            return;
        }
    }
}

/// Raises the soft limit on open files to the hard limit and returns it:
/// the connection budget is fitted below it, so the process never runs out
/// of descriptors for its database.
pub fn raise_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the open-file limit; assuming 1024");
            1024
        }
    }
}
