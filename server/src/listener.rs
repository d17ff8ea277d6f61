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

/// How long shutdown waits for open HTTP exchanges to finish.
const DRAIN: Duration = Duration::from_secs(5);

/// A stream holding its connection's place in the budget.
#[derive(Debug)]
pub struct Budgeted<S> {
    stream: S,
    _permit: ConnectionPermit,
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
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
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
                tracing::debug!(%peer, %refusal, "connection refused");
                drop(stream);
                continue;
            }
        };
        let stream = Budgeted {
            stream,
            _permit: permit,
        };
        let (app, acceptor, closed) = (app.clone(), acceptor.clone(), closed.clone());
        let limits = budget.limits();
        connections.spawn(async move {
            match acceptor {
                None => serve_connection(stream, peer, app, limits.header_read, closed).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.handshake, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, app, limits.header_read, closed).await
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
    app: Router,
    header_read: Duration,
    mut closed: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        // The client address, for throttling and budgets (forwarding
        // headers are not trusted).
        request.extensions_mut().insert(ConnectInfo(peer));
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
