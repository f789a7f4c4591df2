//! The listener: accepts TCP connections, serves HTTP/1.1 on each (with
//! upgrades), over TLS when configured, and shuts down gracefully.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_broker::{MemoryBroker, RedisBroker};
use herald_core::{Engine, Hub};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::config::{BrokerKind, Config};
use crate::http;
use crate::shutdown::Shutdown;
use crate::state::AppState;
use crate::tls::TlsReloader;
use crate::transport::h2_idle::OpenStreams;
use crate::transport::rewind::Rewind;
use crate::transport::write_timeout::WriteTimeout;
use crate::transport::{self, handshake, head_errors};

/// A bound, not yet running server.
pub struct Server {
    /// Accepts every connection.
    listener: TcpListener,
    /// What every handler and connection shares.
    state: AppState,
    /// Routes of parts running beside the server (the mobile push API).
    extra: http::Extra,
    /// The certificate, when the listener speaks TLS; `None` serves plain HTTP.
    tls: Option<TlsReloader>,
}

impl Server {
    /// Binds the listener and builds the engine with the configured broker.
    pub async fn bind(config: Config) -> io::Result<Self> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let hub = Arc::new(Hub::with_policy(config.history_policy()));
        let engine = match config.broker.kind {
            BrokerKind::Memory => Engine::new(hub.clone(), Arc::new(MemoryBroker::new(hub))),
            BrokerKind::Redis => {
                let mut redis = config.broker.redis.clone();
                redis.history = config.history_policy().into();
                let broker = RedisBroker::connect(redis, hub.clone())
                    .await
                    .map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e))?;
                let engine = Engine::new(hub, broker.clone());
                broker.enable_targeting(engine.directory().clone());
                engine
            }
        };
        let tls = TlsReloader::load(&config.server.tls)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listener = listen(config.server.listen, config.server.backlog)?;
        let state = AppState::new(engine, config, Shutdown::default())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Self {
            listener,
            state,
            extra: http::Extra::default(),
            tls,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Rereads the certificate files for new connections (the binary calls
    /// it on SIGHUP); `None` when the listener does not speak TLS.
    pub fn tls_reloader(&self) -> Option<TlsReloader> {
        self.tls.clone()
    }

    /// Adds metrics of a part running beside the server to `/metrics`.
    pub fn add_metrics(&self, render: impl Fn(&mut String) + Send + Sync + 'static) {
        self.state.metrics.add(Box::new(render));
    }

    /// Serves `path` with `routes` (which see the whole path) beside
    /// Herald's own routes, and lists `doc`'s paths in `/openapi.json`;
    /// with `publishes`, behind the publisher keys (and marked so).
    pub fn add_route(
        &mut self,
        path: &'static str,
        routes: axum::Router,
        doc: utoipa::openapi::OpenApi,
        publishes: bool,
    ) {
        self.extra.add(path, routes, doc, publishes);
    }

    /// Serves until `signal` resolves (or the state's shutdown is triggered),
    /// then tells every client to reconnect and waits for them to go, up to
    /// `server.shutdown_timeout`.
    pub async fn run(self, signal: impl Future<Output = ()>) {
        let Self {
            listener,
            state,
            extra,
            tls,
        } = self;
        let shutdown = state.shutdown.clone();
        let read_timeout = Some(state.config.server.read_timeout).filter(|t| !t.is_zero());
        let write_timeout = state.config.server.write_timeout;
        let max_header_bytes = state.config.limits.max_header_bytes;
        let router = http::router(state.clone(), extra);
        let metrics = state.metrics.clone();
        let service = TowerToHyperService::new(
            tower::ServiceBuilder::new()
                .map_response(move |res: axum::response::Response| {
                    head_errors::note_route_answer(&res);
                    metrics.answered(res.status());
                    res
                })
                .map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    host_from_authority(&mut req);
                    req.map(|body| http::BodyTimeout::new(body, read_timeout))
                })
                .map_future(http::AnswerStalled::new)
                .service(router),
        );
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(
            %addr,
            tls = tls.is_some(),
            broker = state.engine.broker().name(),
            "Herald listening."
        );
        let pa = &state.config.pushapi;
        if pa.enabled && (!pa.enable_auth || pa.basic_auth_password == crate::config::SEED_PASSWORD)
        {
            tracing::warn!(
                prefix = %pa.prefix,
                "push-api publishes with the seed's default credentials; set \
                 pushapi.basic_auth_password, or pushapi.enabled = false."
            );
        }
        let pushaas = &state.config.pushaas;
        if pushaas.enabled && pushaas.password == crate::config::SEED_PASSWORD {
            tracing::warn!(
                "PushaaS's Tsuru API has the seed's default password: anyone who knows it \
                 can list, bind and remove instances; set pushaas.password."
            );
        }
        if pushaas.enabled && state.engine.broker().name() == "memory" {
            tracing::warn!(
                "PushaaS keeps its instances in the memory broker: a restart forgets them \
                 while Tsuru still has them bound; use broker.kind = \"redis\"."
            );
        }
        tokio::pin!(signal);
        let sweeper = tokio::spawn(sweep(state.engine.hub().clone()));
        let revocations = tokio::spawn(crate::revocations::sync(state.clone()));
        loop {
            let accepted = tokio::select! {
                () = &mut signal => break,
                () = shutdown.signalled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "Accept failed.");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Linux hands the listener's TCP_NODELAY to every accepted
            // socket: one `setsockopt` fewer per connection.
            #[cfg(not(target_os = "linux"))]
            let _ = stream.set_nodelay(true);
            let conn = Conn {
                peer,
                service: service.clone(),
                shutdown: shutdown.clone(),
                read_timeout,
                write_timeout,
                max_header_bytes,
            };
            match &tls {
                // Boxed: a task copies its future whole as it is spawned,
                // finishes and is dropped, and this one is kilobytes (the
                // handshake beside hyper's connection); it lives only until
                // a stream's own task takes over, so the box costs no memory
                // held.
                None => state
                    .shutdown
                    .spawn(Box::pin(serve_plain(state.clone(), stream, conn))),
                // The handshake runs in the connection's task: a slow client
                // never holds up the accept loop.
                Some(tls) => state.shutdown.spawn(serve_tls(tls.clone(), stream, conn)),
            }
        }
        drop(listener);
        sweeper.abort();
        revocations.abort();
        shutdown.trigger();
        let timeout = state.config.server.shutdown_timeout;
        tracing::info!(connections = shutdown.active(), ?timeout, "Shutting down.");
        if !shutdown.drain(timeout).await {
            tracing::warn!(
                remaining = shutdown.active(),
                "Shutdown timed out; closing the rest."
            );
        }
        state.engine.broker().leave().await;
        tracing::info!("Herald stopped.");
    }
}

/// The HTTP service every connection runs: the router behind its layers.
trait Service:
    hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = hyper::Response<axum::body::Body>,
        Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
        // HTTP/2 runs each request in a task of its own.
        Future: Send + 'static,
    >
{
}

impl<S> Service for S where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<axum::body::Body>,
            Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
            Future: Send + 'static,
        >
{
}

/// What every connection's task is handed, besides its socket.
struct Conn<S> {
    /// The client, for logs.
    peer: SocketAddr,
    /// The app's routes, answering every request on the connection.
    service: S,
    /// Tells the connection to finish its requests in flight and close.
    shutdown: Shutdown,
    /// How long a request's head (or the TLS handshake) may take.
    read_timeout: Option<Duration>,
    /// How long a write may wait for the client to take any of it.
    write_timeout: Duration,
    /// How long a request's head may be, in bytes.
    max_header_bytes: usize,
}

/// Serves a plain TCP connection: a first request opening a native stream
/// directly, anything else with hyper.
async fn serve_plain<S: Service>(state: AppState, stream: TcpStream, conn: Conn<S>) {
    let served = handshake::serve(&state, stream, &conn.shutdown, conn.read_timeout).await;
    let Some((stream, read)) = served else {
        return;
    };
    drop(state);
    let io = WriteTimeout::new(Rewind::new(read, stream), conn.write_timeout);
    serve_http(TokioIo::new(io), conn).await;
}

/// Serves HTTP/1.1 (with upgrades) on one connection until it ends or,
/// on shutdown, until its requests in flight are answered.
async fn serve_http<I, S>(io: I, conn: Conn<S>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: Service,
{
    let Conn {
        peer,
        service,
        shutdown,
        read_timeout,
        max_header_bytes,
        ..
    } = conn;
    // Flattened writes go out with one `send`; vectored ones take
    // `writev`'s slower path through the VFS, and the few bytes copied cost
    // less. They also keep hyper's own answers to bad request heads whole,
    // one write each, for `Rewind` to replace with JSON errors.
    let http = hyper::server::conn::http1::Builder::new()
        .writev(false)
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        .max_header_size(max_header_bytes)
        .serve_connection(io, service)
        .with_upgrades();
    let served = until_stopped(http, shutdown.signalled(), |http| http.graceful_shutdown());
    let result = head_errors::scope(max_header_bytes, served).await;
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error.");
    }
}

/// Completes the TLS handshake within the read timeout, then serves HTTP
/// over it. A client that fails or stalls the handshake (plain HTTP on this
/// port, a silent socket) is dropped.
async fn serve_tls<S: Service>(tls: TlsReloader, stream: TcpStream, conn: Conn<S>) {
    let (peer, timeout) = (conn.peer, conn.read_timeout);
    // Under TLS, so that every byte it writes, handshake included, is watched.
    let stream = WriteTimeout::new(stream, conn.write_timeout);
    let stream = tokio::select! {
        accepted = tls.acceptor().accept(stream) => match accepted {
            Ok(stream) => stream,
            Err(e) => return tracing::debug!(%peer, error = %e, "TLS handshake failed."),
        },
        () = transport::deadline(timeout) => return tracing::debug!(%peer, ?timeout, "TLS handshake timed out."),
        () = conn.shutdown.signalled() => return,
    };
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        serve_h2(TokioIo::new(stream), conn).await;
    } else {
        serve_http(TokioIo::new(Rewind::new(Bytes::new(), stream)), conn).await;
    }
}

/// Serves HTTP/2 on one TLS connection: every request a stream of its own
/// task, until the client goes or, on shutdown, until its requests in flight
/// (SSE streams included, which end with their reconnect hint) are answered.
async fn serve_h2<I, S>(io: I, conn: Conn<S>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: Service,
{
    let Conn {
        peer,
        service,
        shutdown,
        read_timeout,
        max_header_bytes,
        ..
    } = conn;
    let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // A peer that stops answering pings is gone: its streams end with it.
    http.timer(TokioTimer::new())
        .keep_alive_interval(read_timeout)
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
    if let Some(timeout) = read_timeout {
        http.keep_alive_timeout(timeout);
    }
    let streams = OpenStreams::default();
    let http = http.serve_connection(io, streams.track(service));
    // Idle as long as an HTTP/1.1 connection may wait for its next request.
    let idle = async {
        match read_timeout {
            Some(timeout) => streams.idle_for(timeout).await,
            None => std::future::pending().await,
        }
    };
    let stop = async {
        tokio::select! {
            () = shutdown.signalled() => {}
            () = idle => tracing::debug!(%peer, "Idle HTTP/2 connection closed."),
        }
    };
    let result = until_stopped(http, stop, |http| http.graceful_shutdown()).await;
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP/2 connection ended with an error.");
    }
}

/// Drives an HTTP connection to its end; once `stop` resolves (shutdown, or
/// an HTTP/2 connection gone idle), first tells it (`graceful`) to take no
/// new requests and finish those in flight.
async fn until_stopped<C, E>(
    conn: C,
    stop: impl Future<Output = ()>,
    graceful: fn(std::pin::Pin<&mut C>),
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        () = stop => {
            graceful(conn.as_mut());
            conn.await
        }
    }
}

/// Gives an HTTP/2 request the `Host` header its `:authority` stands for,
/// so that handlers building URLs from the host (Pushca's, push-api's) and
/// the same-origin check read it whatever the protocol.
fn host_from_authority<B>(req: &mut hyper::Request<B>) {
    if req.version() != hyper::Version::HTTP_2 || req.headers().contains_key(hyper::header::HOST) {
        return;
    }
    let host = req
        .uri()
        .authority()
        .and_then(|a| hyper::header::HeaderValue::from_str(a.as_str()).ok());
    if let Some(host) = host {
        req.headers_mut().insert(hyper::header::HOST, host);
    }
}

/// Expires history and forgets idle channels, once a second.
async fn sweep(hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        hub.sweep();
    }
}

fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    // Pushed frames are small and latency matters more than packet count.
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let listener = listen("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let _client = client.unwrap();
        let (stream, _) = accepted.unwrap();
        assert!(
            stream.nodelay().unwrap(),
            "accepted socket should not delay small writes"
        );
    }
}
