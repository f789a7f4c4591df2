//! The TLS scaffold under the mock push services: a self-signed certificate
//! for 127.0.0.1, ALPN, hyper connections, and a synchronous handler per
//! request (the mocks keep their state behind a mutex and never await).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::http::request::Parts;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// What the mocks answer with.
pub(crate) type Reply = Response<Full<Bytes>>;

/// Marks a [`Reply`] (in its extensions) whose body is replaced by one that
/// never ends: filler every few milliseconds for as long as the client
/// reads.
#[derive(Clone, Copy)]
pub(crate) struct EndlessBody;

/// The body of an [`EndlessBody`] reply, counting what it gave out.
struct Endless(tokio::time::Interval, Arc<AtomicUsize>);

impl hyper::body::Body for Endless {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        static FILLER: [u8; 4096] = [b' '; 4096];
        std::task::ready!(self.0.poll_tick(cx));
        self.1.fetch_add(FILLER.len(), Ordering::SeqCst);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
            &FILLER,
        )))))
    }
}

/// Which HTTP versions a server speaks: APNs is HTTP/2 only, Google's
/// endpoints take both.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Versions {
    H2Only,
    H2AndHttp1,
}

/// A running server; stops (and deletes its files) when dropped.
pub(crate) struct TlsServer {
    /// `https://127.0.0.1:PORT`, which the certificate covers.
    pub(crate) url: String,
    /// The certificate, for clients to add as a root.
    pub(crate) ca_path: PathBuf,
    /// Requests whose client gave up (reset the stream or closed the
    /// connection) before the answer was sent.
    pub(crate) abandoned: Arc<Recorded<()>>,
    /// Requests being handled (answer not yet sent), now and at most.
    pub(crate) in_flight: Arc<InFlight>,
    /// Bytes of [`EndlessBody`] bodies handed to connections so far.
    pub(crate) endless_sent: Arc<AtomicUsize>,
    /// Holds the certificate and the tests' key files; deleted with the server.
    dir: tempfile::TempDir,
    /// The accept loop, aborted on drop, which ends the connections too.
    task: JoinHandle<()>,
}

impl TlsServer {
    /// A directory that lives as long as the server, for keys and
    /// credentials the tests hand to clients.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        // The connection tasks live in the accept task's JoinSet: they go too.
        self.task.abort();
    }
}

/// A loopback listener on a free port, bound before the handler is built so
/// the handler can know its own URL.
pub(crate) async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    (listener, addr)
}

/// Serves `handle` over TLS on `listener` until the returned server drops.
pub(crate) fn serve<H>(listener: TcpListener, versions: Versions, handle: H) -> TlsServer
where
    H: Fn(Parts, Bytes) -> (Reply, Duration) + Send + Sync + 'static,
{
    let addr = listener.local_addr().expect("local address");
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("make a self-signed certificate");
    let dir = tempfile::tempdir().expect("make a temp dir");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, certified.cert.pem()).expect("write the certificate");

    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("TLS server config");
    config.alpn_protocols = match versions {
        Versions::H2Only => vec![b"h2".to_vec()],
        Versions::H2AndHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let handle = Arc::new(handle);
    let abandoned = Arc::new(Recorded::new());
    let abandons = abandoned.clone();
    let in_flight = Arc::new(InFlight::default());
    let flights = in_flight.clone();
    let endless_sent = Arc::new(AtomicUsize::new(0));
    let endless_counter = endless_sent.clone();

    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            while connections.try_join_next().is_some() {}
            let acceptor = acceptor.clone();
            let handle = handle.clone();
            let abandons = abandons.clone();
            let flights = flights.clone();
            let endless_counter = endless_counter.clone();
            connections.spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let handle = handle.clone();
                        let flight = flights.enter();
                        let counter = endless_counter.clone();
                        // Hyper drops this future when the client gives up.
                        let unanswered = Unanswered(Some(abandons.clone()));
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let (reply, delay) = handle(parts, body);
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            unanswered.answered();
                            drop(flight);
                            let endless = reply.extensions().get::<EndlessBody>().is_some();
                            let reply = reply.map(|body| {
                                if endless {
                                    let tick = tokio::time::interval(Duration::from_millis(5));
                                    Either::Right(Endless(tick, counter))
                                } else {
                                    Either::Left(body)
                                }
                            });
                            Ok::<_, hyper::Error>(reply)
                        }
                    });
                let io = TokioIo::new(tls);
                match versions {
                    Versions::H2Only => {
                        let builder =
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                        let _ = builder.serve_connection(io, service).await;
                    }
                    Versions::H2AndHttp1 => {
                        let builder =
                            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        let _ = builder.serve_connection(io, service).await;
                    }
                }
            });
        }
    });
    TlsServer {
        url: format!("https://{addr}"),
        ca_path,
        abandoned,
        in_flight,
        endless_sent,
        dir,
        task,
    }
}

/// Counts requests between arrival and answer, keeping the peak: how many
/// a client had in flight at once.
#[derive(Default)]
pub(crate) struct InFlight {
    /// Requests received and not yet answered.
    now: AtomicUsize,
    /// The most `now` has been.
    peak: AtomicUsize,
}

impl InFlight {
    /// One more request in flight until the guard drops.
    fn enter(self: &Arc<Self>) -> Flight {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        Flight(self.clone())
    }

    /// The most requests in flight at once so far.
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

/// A request in flight; leaves the count when dropped (answered or abandoned).
struct Flight(Arc<InFlight>);

impl Drop for Flight {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Records a request as abandoned if dropped before `answered`.
struct Unanswered(Option<Arc<Recorded<()>>>);

impl Unanswered {
    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(abandoned) = self.0.take() {
            abandoned.push(());
        }
    }
}

/// A response with a JSON body.
pub(crate) fn json(status: u16, body: &serde_json::Value) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body.to_string())));
    *reply.status_mut() = hyper::StatusCode::from_u16(status).expect("a valid status");
    reply.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "application/json".parse().expect("header"),
    );
    reply
}

/// The token of an `authorization: bearer …` header (the scheme's case
/// varies: Apple writes `bearer`, Google `Bearer`).
pub(crate) fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// Seconds since the Unix epoch, for tokens' `iat` and `exp`.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The requests a mock received, in arrival order, and a signal for tests
/// that wait for some.
pub(crate) struct Recorded<T> {
    /// Everything recorded, in arrival order.
    items: std::sync::Mutex<Vec<T>>,
    /// How many so far, watched by tests waiting for a number of them.
    count: tokio::sync::watch::Sender<usize>,
}

impl<T: Clone> Recorded<T> {
    pub(crate) fn new() -> Self {
        Self {
            items: std::sync::Mutex::default(),
            count: tokio::sync::watch::Sender::new(0),
        }
    }

    pub(crate) fn push(&self, item: T) {
        self.items.lock().expect("recorded requests").push(item);
        self.count.send_modify(|c| *c += 1);
    }

    pub(crate) fn all(&self) -> Vec<T> {
        self.items.lock().expect("recorded requests").clone()
    }

    /// Every request once there are at least `n`; panics, naming `what`,
    /// after `timeout`.
    pub(crate) async fn wait_for(&self, n: usize, timeout: Duration, what: &str) -> Vec<T> {
        let mut count = self.count.subscribe();
        tokio::time::timeout(timeout, count.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("{what}: fewer than {n} requests within {timeout:?}"))
            .expect("the mock outlives its receivers");
        self.all()
    }
}
