//! Serving the API over TLS with certificates that can change while netsyncd
//! runs: connections are accepted and their handshakes done here (tonic's own
//! TLS takes one fixed configuration), each with the rustls configuration
//! current at that moment. A task re-reads the files on an interval and swaps
//! in a new configuration when they change, so a rotated Kubernetes Secret
//! is picked up by new connections without a restart; connections already
//! open keep the session they have.
//!
//! A file that changes into something unusable (half-written, a key that is
//! not the certificate's) is logged and the configuration in use is kept:
//! the next change that makes a valid set is taken.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::tls::{ApiTls, HANDSHAKE_TIMEOUT, TlsPaths, server_config};

/// The peer of a TLS connection, as handlers and layers see it in the
/// request's extensions.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The client's address.
    pub remote_addr: Option<SocketAddr>,
    /// The client's certificate chain (leaf first), when it presented one.
    pub certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// The rustls configuration new connections get; swapped on reload.
#[derive(Debug)]
pub struct LiveTls {
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl LiveTls {
    /// The configuration of `tls`, or why it cannot be used.
    pub fn new(tls: &ApiTls) -> Result<Arc<Self>, String> {
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(server_config(tls)?)),
        }))
    }

    fn acceptor(&self) -> TlsAcceptor {
        let current = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        TlsAcceptor::from(current.clone())
    }

    fn replace(&self, config: rustls::ServerConfig) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(config);
    }
}

/// Accepts connections on `listener` and completes their handshakes with
/// the configuration current at accept time; each handshake runs in its own
/// task, bounded by [`HANDSHAKE_TIMEOUT`], so a slow client holds no one
/// else up. The stream ends when the returned receiver is dropped and the
/// next connection arrives, or when the accept task is aborted.
pub fn incoming(
    listener: TcpListener,
    live: Arc<LiveTls>,
) -> (
    ReceiverStream<std::io::Result<PeerStream>>,
    tokio::task::JoinHandle<()>,
) {
    let (accepted, stream) = tokio::sync::mpsc::channel(64);
    let task = tokio::spawn(async move {
        let mut handshakes = tokio::task::JoinSet::new();
        loop {
            let (socket, remote_addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: the
                        // listener itself is fine; wait a moment.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            };
            let acceptor = live.acceptor();
            let accepted = accepted.clone();
            handshakes.spawn(async move {
                let handshake =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await;
                match handshake {
                    Ok(Ok(tls)) => {
                        let _ = accepted
                            .send(Ok(PeerStream {
                                inner: tls,
                                remote_addr,
                            }))
                            .await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %remote_addr, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        tracing::debug!(peer = %remote_addr, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    (ReceiverStream::new(stream), task)
}

/// Re-reads `paths` every `interval` and, when their contents changed and
/// make a valid configuration, swaps it into `live`. Runs until aborted.
pub async fn reload(paths: TlsPaths, mut loaded: ApiTls, live: Arc<LiveTls>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let read = read_all(&paths);
        let files = match read {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the API's TLS files; the ones loaded stay in use");
                continue;
            }
        };
        if files == loaded {
            continue;
        }
        match server_config(&files) {
            Ok(config) => {
                live.replace(config);
                loaded = files;
                tracing::info!(cert = %paths.cert.display(), "reloaded the API's TLS files: new connections use them");
            }
            Err(e) => {
                tracing::error!(error = %e, "the API's TLS files changed into a set that cannot be used; the ones loaded stay in use");
                // Not remembered as loaded: the next change is tried again.
            }
        }
    }
}

fn read_all(paths: &TlsPaths) -> std::io::Result<ApiTls> {
    Ok(ApiTls {
        cert_pem: std::fs::read_to_string(&paths.cert)?,
        key_pem: netsync_core::datastore::Secret::new(std::fs::read_to_string(&paths.key)?),
        client_ca_pem: paths
            .client_ca
            .as_ref()
            .map(std::fs::read_to_string)
            .transpose()?,
        reload_from: None,
    })
}

/// A TLS connection of the API, telling tonic who its peer is.
#[derive(Debug)]
pub struct PeerStream {
    inner: TlsStream<TcpStream>,
    remote_addr: SocketAddr,
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        let (_, session) = self.inner.get_ref();
        PeerInfo {
            remote_addr: Some(self.remote_addr),
            certificates: session
                .peer_certificates()
                .map(|chain| Arc::new(chain.iter().map(|c| c.clone().into_owned()).collect())),
        }
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
