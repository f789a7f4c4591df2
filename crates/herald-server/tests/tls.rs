//! Herald terminating TLS: https, wss and SSE over real TLS clients,
//! certificates from a test CA, reloads, and clients the listener drops.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use herald_server::tls::TlsError;
use herald_server::{Config, Server, TlsReloader};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::Connector;

/// A certificate authority of the test's own.
struct Ca {
    /// Its certificate, which clients trust.
    pem: String,
    /// Signs server certificates.
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// How a server key is written.
#[derive(Clone, Copy)]
enum KeyFormat {
    /// `BEGIN PRIVATE KEY`.
    Pkcs8,
    /// `BEGIN EC PRIVATE KEY`.
    Sec1,
    /// `BEGIN RSA PRIVATE KEY`, for an RSA key.
    Pkcs1,
}

/// A 2048-bit RSA key (rcgen with ring cannot generate one): the test kit's
/// throwaway FCM service-account key, PKCS#8.
const RSA_KEY: &str = include_str!("../../herald-testkit/src/fixtures/fcm-test-key.pem");

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for 127.0.0.1: the chain (it, then this CA) and
    /// its key.
    fn server_cert(&self) -> (String, rcgen::KeyPair) {
        self.server_cert_for(rcgen::KeyPair::generate().unwrap())
    }

    /// The same for a key of the caller's.
    fn server_cert_for(&self, key: rcgen::KeyPair) -> (String, rcgen::KeyPair) {
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (format!("{}{}", cert.pem(), self.pem), key)
    }

    /// A rustls client that trusts this CA only.
    fn rustls(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// An HTTPS client that trusts this CA only; a new one per call, so no
    /// connection is reused across certificates.
    fn https(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap())
            .build()
            .unwrap()
    }
}

/// `key` as PEM: PKCS#8 as rcgen writes it, or the SEC1 `ECPrivateKey` or
/// PKCS#1 `RSAPrivateKey` that PKCS#8 wraps (its last field, an OCTET STRING).
fn key_pem(key: &rcgen::KeyPair, format: KeyFormat) -> String {
    let label = match format {
        KeyFormat::Pkcs8 => return key.serialize_pem(),
        KeyFormat::Sec1 => "EC PRIVATE KEY",
        KeyFormat::Pkcs1 => "RSA PRIVATE KEY",
    };
    let der = key.serialize_der();
    let (_, info, _) = der_next(&der);
    let (_, _, rest) = der_next(info); // version
    let (_, _, rest) = der_next(rest); // algorithm
    let (tag, inner, _) = der_next(rest);
    assert_eq!(tag, 0x04, "PKCS#8 ends with an OCTET STRING");
    let b64 = base64::engine::general_purpose::STANDARD.encode(inner);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// One DER element: (tag, contents, what follows).
fn der_next(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let (len, header) = match input[1] {
        n if n < 0x80 => (usize::from(n), 2),
        0x81 => (usize::from(input[2]), 3),
        0x82 => (usize::from(u16::from_be_bytes([input[2], input[3]])), 4),
        n => panic!("unexpected DER length byte {n:#x}"),
    };
    (
        input[0],
        &input[header..header + len],
        &input[header + len..],
    )
}

/// The certificate and key files, in a directory of their own.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// Writes a fresh server certificate from `ca` and its key.
    fn install(&self, ca: &Ca, format: KeyFormat) {
        let (chain, key) = ca.server_cert();
        std::fs::write(self.cert(), chain).unwrap();
        std::fs::write(self.key(), key_pem(&key, format)).unwrap();
    }

    fn config(&self) -> Config {
        let mut config = TestServer::config();
        config.server.tls.cert_file = Some(self.cert());
        config.server.tls.key_file = Some(self.key());
        config
    }
}

/// A TLS server on `files`, and its reload handle.
async fn tls_server(files: &Files, tweak: impl FnOnce(&mut Config)) -> (TestServer, TlsReloader) {
    let mut config = files.config();
    tweak(&mut config);
    let server = Server::bind(config).await.expect("bind");
    let reloader = server.tls_reloader().expect("TLS is configured");
    (TestServer::run(server), reloader)
}

fn https_url(server: &TestServer, path: &str) -> String {
    format!("https://{}{path}", server.addr)
}

/// A wss:// connection that trusts `ca` only.
async fn try_wss(addr: SocketAddr, path: &str, ca: &Ca) -> Result<Ws, String> {
    let url = format!("wss://{addr}{path}");
    let connector = Connector::Rustls(ca.rustls());
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        url.as_str(),
        None,
        false,
        Some(connector),
    );
    let (ws, res) = tokio::time::timeout(WAIT, connect)
        .await
        .expect("wss connect timed out")
        .map_err(|e| format!("connect {url}: {e}"))?;
    assert_eq!(res.status(), 101);
    Ok(ws)
}

async fn wss(addr: SocketAddr, path: &str, ca: &Ca) -> Ws {
    try_wss(addr, path, ca).await.unwrap()
}

/// `GET /health/live` over https with a client trusting `ca` only.
async fn health(server: &TestServer, ca: &Ca) -> Result<u16, reqwest::Error> {
    let req = ca.https().get(https_url(server, "/health/live")).send();
    let res = tokio::time::timeout(WAIT, req)
        .await
        .expect("https request timed out")?;
    Ok(res.status().as_u16())
}

/// Asserts a client trusting `ca` is served.
async fn assert_served(server: &TestServer, ca: &Ca, what: &str) {
    match health(server, ca).await {
        Ok(status) => assert_eq!(status, 200, "{what}"),
        Err(e) => panic!("{what}: {e:?}"),
    }
}

/// Asserts a client trusting `ca` refuses the server's certificate.
async fn assert_untrusted(server: &TestServer, ca: &Ca, what: &str) {
    match health(server, ca).await {
        Ok(status) => panic!("{what}: served ({status})"),
        Err(e) => assert!(format!("{e:?}").contains("UnknownIssuer"), "{what}: {e:?}"),
    }
}

/// A POST over https; the status and JSON answer.
async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let res = tokio::time::timeout(WAIT, client.post(url).json(&body).send())
        .await
        .expect("https request timed out")
        .unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn https_publish_reaches_wss_and_sse_subscribers_of_every_dialect() {
    let ca = Ca::new("Herald test CA");
    let files = Files::new();
    files.install(&ca, KeyFormat::Pkcs8);
    let (server, _) = tls_server(&files, |_| {}).await;
    let client = ca.https();

    let mut native = wss(server.addr, "/ws?channels=news", &ca).await;
    let sse = tokio::time::timeout(
        WAIT,
        client.get(https_url(&server, "/sse?channels=news")).send(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(sse.status(), 200);
    let mut sse = Sse::from_response(sse);
    let (status, reply) = post(
        &client,
        https_url(&server, "/api/v1/publish"),
        json!({"channel": "news", "data": {"title": "over tls"}}),
    )
    .await;
    assert_eq!((status, &reply["subscribers"]), (200, &json!(2)), "{reply}");
    assert_eq!(next_json(&mut native).await["data"]["title"], "over tls");
    let event = sse.next_data().await;
    let data: Value = serde_json::from_str(event.data.as_deref().unwrap()).unwrap();
    assert_eq!(data["data"]["title"], "over tls", "{event:?}");

    // The Push seed's dialect.
    let mut seed = wss(server.addr, "/ws/messages?channels=seed", &ca).await;
    assert_eq!(next_json(&mut seed).await["event"], "ping");
    let (status, reply) = post(
        &client,
        https_url(&server, "/messages"),
        json!({"channel": "seed", "message": "over tls"}),
    )
    .await;
    assert_eq!((status, reply), (202, json!({"subscribers": 1})));
    assert_eq!(
        next_json(&mut seed).await,
        json!({"event": "message", "data": {"channel": "seed", "message": "over tls"}})
    );

    // push-stream's.
    let mut ps = wss(server.addr, "/ps/ws/psch", &ca).await;
    let res = client
        .post(https_url(&server, "/ps/pub?id=psch"))
        .body("over tls")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let frame: Value = serde_json::from_str(&next_text(&mut ps).await).unwrap();
    assert_eq!(frame["text"], "over tls", "{frame}");

    // Pushca's: the URL it hands out is wss://, and takes the connection.
    let who = json!({"workSpaceId": "w", "accountId": "a", "deviceId": "d", "applicationId": "x"});
    let (status, opened) = post(
        &client,
        https_url(&server, "/open-connection"),
        json!({"client": who}),
    )
    .await;
    assert_eq!(status, 200, "{opened}");
    let url = opened["externalAdvertisedUrl"].as_str().unwrap();
    let prefix = format!("wss://{}/", server.addr);
    let path = url
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{url} is not under {prefix}"));
    wss(server.addr, &format!("/{path}"), &ca).await;
}

#[tokio::test]
async fn a_fan_out_to_many_wss_subscribers_arrives_whole_and_in_order() {
    // More than the hub writes to directly: the big fan-out path.
    const SUBSCRIBERS: usize = 40;
    const BATCHES: usize = 4;
    const PER_BATCH: usize = 50;
    let ca = Ca::new("Herald test CA");
    let files = Files::new();
    files.install(&ca, KeyFormat::Pkcs8);
    let (server, _) = tls_server(&files, |_| {}).await;
    let client = ca.https();
    let mut subscribers = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        subscribers.push(wss(server.addr, "/ws?channels=fan", &ca).await);
    }
    // Batches fan out many messages before any subscriber's task runs, so
    // each task writes several frames at once.
    for batch in 0..BATCHES {
        let messages: Vec<Value> = (batch * PER_BATCH..(batch + 1) * PER_BATCH)
            .map(|i| json!({"channel": "fan", "data": i}))
            .collect();
        let (status, reply) = post(
            &client,
            https_url(&server, "/api/v1/publish/batch"),
            json!({"messages": messages}),
        )
        .await;
        assert_eq!(status, 200, "{reply}");
        for result in reply["results"].as_array().unwrap() {
            assert_eq!(result["subscribers"], json!(SUBSCRIBERS), "{result}");
        }
    }
    for (n, ws) in subscribers.iter_mut().enumerate() {
        for i in 0..BATCHES * PER_BATCH {
            let got = next_json(ws).await;
            assert_eq!(got["data"], json!(i), "subscriber {n}: {got}");
        }
    }
}

/// Under TLS the connection's task writes every frame: a `wss://` client that
/// stops reading leaves it waiting, and `server.write_timeout` ends it.
#[tokio::test]
async fn a_wss_client_that_stops_reading_is_closed_after_the_write_timeout() {
    let ca = Ca::new("Herald test CA");
    let files = Files::new();
    files.install(&ca, KeyFormat::Pkcs8);
    let (server, _) = tls_server(&files, |c| {
        c.limits.outbox_bytes = 64 * 1024;
        c.server.write_timeout = Duration::from_millis(300);
    })
    .await;
    let client = ca.https();
    let open = async || {
        let text = client
            .get(https_url(&server, "/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let line = "herald_connections{transport=\"ws\"} ";
        let value = text.lines().find_map(|l| l.strip_prefix(line));
        value.expect("connections metric").parse::<f64>().unwrap()
    };
    let url = format!("wss://{}/ws?channels=stuck", server.addr);
    let tcp = connect_with_small_buffer(server.addr).await;
    let connector = Some(Connector::Rustls(ca.rustls()));
    let (stuck, _) = tokio_tungstenite::client_async_tls_with_config(url, tcp, None, connector)
        .await
        .unwrap();
    assert_eq!(open().await, 1.0);
    let payload = "x".repeat(8 * 1024);
    let deadline = Instant::now() + WAIT;
    while open().await > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the stuck wss client was never closed"
        );
        for _ in 0..20 {
            let body = json!({"channel": "stuck", "data": payload});
            let (status, reply) = post(&client, https_url(&server, "/api/v1/publish"), body).await;
            assert_eq!(status, 200, "{reply}");
        }
    }
    drop(stuck);
}

/// Reads until the server drops the connection; what it sent.
async fn read_until_dropped(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut got))
        .await
        .expect("the server drops the connection");
    // A reset (after an alert) ends the connection as well as a FIN does.
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    got
}

#[tokio::test]
async fn plain_http_and_silent_clients_are_dropped_while_https_is_served() {
    let timeout = Duration::from_secs(1);
    let ca = Ca::new("Herald test CA");
    let files = Files::new();
    files.install(&ca, KeyFormat::Pkcs8);
    let (server, _) = tls_server(&files, |c| c.server.read_timeout = timeout).await;

    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();

    // Served while both are still open, without waiting on their handshakes.
    let served = tokio::time::timeout(timeout / 2, health(&server, &ca))
        .await
        .expect("an https client waited on the stalled ones");
    assert_eq!(served.unwrap(), 200);

    // Plain HTTP gets no HTTP answer (at most a TLS alert) and is dropped at once.
    let answer = read_until_dropped(&mut plain).await;
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "plain HTTP got {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        started.elapsed() < timeout,
        "plain HTTP dropped only after {:?}",
        started.elapsed()
    );

    // A client that never starts the handshake is dropped after the read timeout.
    assert!(read_until_dropped(&mut silent).await.is_empty());
    assert!(
        started.elapsed() >= timeout,
        "a silent client dropped before the read timeout: {:?}",
        started.elapsed()
    );
    assert_served(&server, &ca, "after the drops").await;
}

#[tokio::test]
async fn a_reload_serves_new_connections_the_new_certificate() {
    let old = Ca::new("Herald old CA");
    let new = Ca::new("Herald new CA");
    let files = Files::new();
    files.install(&old, KeyFormat::Pkcs8);
    let (server, reloader) = tls_server(&files, |_| {}).await;
    assert_served(&server, &old, "before the reload").await;
    assert_untrusted(&server, &new, "before the reload").await;
    let mut open = wss(server.addr, "/ws?channels=reload", &old).await;

    files.install(&new, KeyFormat::Sec1);
    reloader.reload().expect("the new certificate loads");
    assert_served(&server, &new, "after the reload").await;
    assert_untrusted(&server, &old, "after the reload").await;
    assert!(
        try_wss(server.addr, "/ws?channels=reload", &old)
            .await
            .is_err(),
        "wss with the old CA after the reload"
    );
    let mut fresh = wss(server.addr, "/ws?channels=reload", &new).await;

    // An RSA certificate whose key is PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    let rsa = Ca::new("Herald RSA CA");
    let (chain, key) = rsa.server_cert_for(rcgen::KeyPair::from_pem(RSA_KEY).unwrap());
    std::fs::write(files.cert(), chain).unwrap();
    std::fs::write(files.key(), key_pem(&key, KeyFormat::Pkcs1)).unwrap();
    reloader.reload().expect("the RSA certificate loads");
    assert_served(&server, &rsa, "with a PKCS#1 RSA key").await;
    files.install(&new, KeyFormat::Sec1);
    reloader.reload().expect("back to the EC certificate");
    assert_served(&server, &new, "after the RSA certificate").await;
    // The connection made before the reload keeps its certificate and is served.
    let (status, reply) = post(
        &new.https(),
        https_url(&server, "/api/v1/publish"),
        json!({"channel": "reload", "data": 1}),
    )
    .await;
    assert_eq!((status, &reply["subscribers"]), (200, &json!(2)), "{reply}");
    assert_eq!(next_json(&mut open).await["data"], 1);
    assert_eq!(next_json(&mut fresh).await["data"], 1);

    // Files that do not load leave the certificate in use serving.
    std::fs::write(files.cert(), "not a certificate\n").unwrap();
    let e = reloader.reload().expect_err("a file without a certificate");
    assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
    assert_served(&server, &new, "after a failed reload").await;

    let (chain, _) = new.server_cert();
    let (_, other_key) = new.server_cert();
    std::fs::write(files.cert(), chain).unwrap();
    std::fs::write(files.key(), key_pem(&other_key, KeyFormat::Pkcs8)).unwrap();
    let e = reloader.reload().expect_err("a key of another certificate");
    assert!(matches!(e, TlsError::Mismatch { .. }), "{e}");
    assert_served(&server, &new, "after a mismatched reload").await;
}

#[tokio::test]
async fn unusable_tls_files_stop_the_start_with_a_clear_error() {
    let ca = Ca::new("Herald test CA");
    let files = Files::new();
    files.install(&ca, KeyFormat::Pkcs8);
    let refused = |tweak: Box<dyn FnOnce(&mut Config)>| {
        let mut config = files.config();
        tweak(&mut config);
        async move {
            let validated = config.validate().map(drop).map_err(|e| e.to_string());
            let bound = Server::bind(config)
                .await
                .map(drop)
                .map_err(|e| e.to_string());
            assert_eq!(
                validated.as_ref().err(),
                bound.as_ref().err(),
                "herald config check and the start agree"
            );
            bound.expect_err("the start is refused")
        }
    };

    let missing = files.dir.path().join("missing.pem");
    let path = missing.clone();
    let e = refused(Box::new(move |c| c.server.tls.cert_file = Some(path))).await;
    assert!(
        e.contains("cannot read server.tls.cert_file")
            && e.contains(&missing.display().to_string()),
        "{e}"
    );

    let (_, other_key) = ca.server_cert();
    let wrong = files.dir.path().join("other-key.pem");
    std::fs::write(&wrong, key_pem(&other_key, KeyFormat::Pkcs8)).unwrap();
    let path = wrong.clone();
    let e = refused(Box::new(move |c| c.server.tls.key_file = Some(path))).await;
    assert!(
        e.contains("server.tls.key_file") && e.contains("does not match the certificate"),
        "{e}"
    );

    let cert = files.cert();
    let e = refused(Box::new(move |c| c.server.tls.key_file = Some(cert))).await;
    assert!(e.contains("holds no private key"), "{e}");

    let e = refused(Box::new(|c| c.server.tls.key_file = None)).await;
    assert!(e.contains("must be set together"), "{e}");

    // The files as installed start.
    files.config().validate().expect("valid files");
}

/// Over TLS too, a request that does not parse gets a JSON error, and the
/// connection closes after it.
#[tokio::test]
async fn a_malformed_request_over_tls_gets_a_json_400() {
    let ca = Ca::new("Herald test CA");
    let files = Files::new();
    files.install(&ca, KeyFormat::Pkcs8);
    let (server, _) = tls_server(&files, |_| {}).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(ca.rustls())
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    // The server may close without a close_notify.
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut got))
        .await
        .expect("the server closes the connection");
    let text = String::from_utf8_lossy(&got);
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole answer");
    assert!(head.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(head.contains("content-type: application/json"), "{text}");
    assert!(head.contains("connection: close"), "{text}");
    assert!(
        head.contains(&format!("content-length: {}", body.len())),
        "{text}"
    );
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
}

#[tokio::test]
async fn http2_carries_many_sse_streams_and_publishes_on_one_connection() {
    let ca = Ca::new("Herald test CA");
    let files = Files::new();
    files.install(&ca, KeyFormat::Pkcs8);
    let (mut server, _) = tls_server(&files, |_| {}).await;
    let client = ca.https();

    // More streams than the six HTTP/1.1 connections a browser opens per host.
    let mut streams = Vec::new();
    for i in 0..20 {
        let res = tokio::time::timeout(
            WAIT,
            client
                .get(https_url(&server, &format!("/sse?channels=h2-{i},h2-all")))
                .send(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(res.version(), reqwest::Version::HTTP_2);
        assert_eq!(res.status(), 200);
        streams.push(Sse::from_response(res));
    }
    let res = client
        .post(https_url(&server, "/api/v1/publish"))
        .json(&json!({"channel": "h2-all", "data": "to all"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.json::<Value>().await.unwrap()["subscribers"], 20);
    for sse in &mut streams {
        let data: Value = serde_json::from_str(&sse.next_data().await.data.unwrap()).unwrap();
        assert_eq!(data["data"], "to all");
    }
    let metrics = client
        .get(https_url(&server, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("herald_connections{transport=\"sse\"} 20\n"),
        "{metrics}"
    );

    // Shutdown ends every stream with its reconnect hint.
    server.stop().await;
    for sse in &mut streams {
        loop {
            let ev = sse.next().await.expect("the reconnect hint before the end");
            if ev.event.as_deref() == Some("reconnect") {
                break;
            }
        }
    }
}

/// An HTTP/2 connection to `server` that trusts `ca`: its request sender,
/// and the task driving it, which ends when the server closes it.
async fn h2_connection(
    server: &TestServer,
    ca: &Ca,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let mut config = (*ca.rustls()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    (send, tokio::spawn(async move { conn.await.unwrap() }))
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_once_its_last_stream_ends() {
    let ca = Ca::new("Herald test CA");
    let files = Files::new();
    files.install(&ca, KeyFormat::Pkcs8);
    let idle = Duration::from_secs(1);
    let (server, _) = tls_server(&files, |c| {
        c.server.read_timeout = idle;
        c.connection.heartbeat = Duration::from_millis(200);
    })
    .await;
    let (mut send, conn) = h2_connection(&server, &ca).await;
    let req = hyper::Request::get(format!("https://{}/sse?channels=h2-idle", server.addr))
        .body(http_body_util::Empty::new())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);

    // An open stream keeps the connection past the timeout: eight
    // heartbeats, 1.6 s, arrive on it.
    let mut body = res.into_body();
    for _ in 0..8 {
        let frame = tokio::time::timeout(WAIT, http_body_util::BodyExt::frame(&mut body))
            .await
            .expect("a heartbeat")
            .expect("the stream still open")
            .unwrap();
        assert!(frame.is_data());
    }
    assert!(!conn.is_finished());

    // Once the stream ends, the connection goes after the timeout.
    drop(body);
    let ended = Instant::now();
    tokio::time::timeout(WAIT, conn)
        .await
        .expect("the idle connection closed")
        .unwrap();
    assert!(ended.elapsed() >= idle - Duration::from_millis(100));
}

#[tokio::test]
async fn http2_can_be_turned_off() {
    let ca = Ca::new("Herald test CA");
    let files = Files::new();
    files.install(&ca, KeyFormat::Pkcs8);
    let (server, _) = tls_server(&files, |c| c.server.tls.http2 = false).await;
    let res = ca
        .https()
        .get(https_url(&server, "/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_11);
}
