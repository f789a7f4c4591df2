//! The push-stream URL API (nginx-push-stream-module) over real HTTP,
//! EventSource-style streams, long-polls and WebSockets.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use herald_server::Config;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const EXPLAIN: &str = "x-nginx-pushstream-explain";

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn server() -> TestServer {
    TestServer::start().await
}

async fn server_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::with(tweak).await
}

/// `POST /ps/pub?id=` with optional `Event-Id` / `Event-Type`.
async fn publish(
    s: &TestServer,
    id: &str,
    body: &str,
    event: Option<(&str, &str)>,
) -> reqwest::Response {
    let mut req = client()
        .post(s.http(&format!("/ps/pub?id={id}")))
        .body(body.to_owned());
    if let Some((eid, etype)) = event {
        req = req.header("Event-Id", eid).header("Event-Type", etype);
    }
    tokio::time::timeout(WAIT, req.send())
        .await
        .unwrap()
        .unwrap()
}

fn explain(res: &reqwest::Response) -> Option<&str> {
    res.headers().get(EXPLAIN).and_then(|v| v.to_str().ok())
}

/// A streaming response body read incrementally.
struct Body {
    headers: HeaderMap,
    status: u16,
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Body {
    async fn open(url: String, headers: &[(&str, &str)]) -> Self {
        let mut req = client().get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = tokio::time::timeout(WAIT, req.send())
            .await
            .unwrap()
            .unwrap();
        Self {
            headers: res.headers().clone(),
            status: res.status().as_u16(),
            body: Box::pin(res.bytes_stream()),
            buf: String::new(),
        }
    }

    /// Reads until the buffer holds `pat`; returns everything up to and
    /// including it.
    async fn until(&mut self, pat: &str) -> String {
        loop {
            if let Some(i) = self.buf.find(pat) {
                return self.buf.drain(..i + pat.len()).collect();
            }
            let chunk = tokio::time::timeout(WAIT, self.body.next())
                .await
                .unwrap_or_else(|_| panic!("no {pat:?} in time; have {:?}", self.buf))
                .unwrap_or_else(|| panic!("stream ended before {pat:?}; have {:?}", self.buf))
                .unwrap();
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Reads to the end of the body; returns what was left.
    async fn end(&mut self) -> String {
        while let Some(chunk) = tokio::time::timeout(WAIT, self.body.next())
            .await
            .expect("body did not end in time")
        {
            match chunk {
                Ok(c) => self.buf.push_str(std::str::from_utf8(&c).unwrap()),
                Err(_) => break,
            }
        }
        std::mem::take(&mut self.buf)
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

#[tokio::test]
async fn publisher_errors_are_header_only_with_explain() {
    let s = server().await;
    let res = publish(&s, "ch", "", None).await;
    assert_eq!(res.status(), 400);
    assert_eq!(explain(&res), Some("Empty post requests are not allowed."));
    let res = client()
        .post(s.http("/ps/pub"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (res.status().as_u16(), explain(&res)),
        (400, Some("No channel id provided."))
    );
    for id in ["ALL", "a*", "*"] {
        let res = publish(&s, id, "x", None).await;
        assert_eq!(
            (res.status().as_u16(), explain(&res)),
            (403, Some("Channel id not authorized for this method.")),
            "{id}"
        );
    }
    let res = publish(&s, &"a".repeat(201), "x", None).await;
    assert_eq!(
        (res.status().as_u16(), explain(&res)),
        (400, Some("Channel id is too large."))
    );
    let res = client()
        .patch(s.http("/ps/pub?id=ch"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET, POST, PUT, DELETE");
    let res = client()
        .get(s.http("/ps/pub?id=nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = client()
        .request(reqwest::Method::OPTIONS, s.http("/ps/pub?id=ch"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    assert_eq!(
        res.headers()["access-control-allow-methods"],
        "GET, POST, PUT, DELETE"
    );
    assert_eq!(
        res.headers()["access-control-allow-headers"],
        "If-Modified-Since,If-None-Match,Etag,Event-Id,Event-Type,Last-Event-Id"
    );
    let res = client()
        .delete(s.http("/ps/pub?id=nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    let s = server_with(|c| c.pushstream.admin = false).await;
    let res = client()
        .delete(s.http("/ps/pub?id=ch"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET, POST, PUT");
}

/// A request naming more channels than a connection may hold is refused
/// before any of them is touched: each channel would publish and store a
/// copy of the body.
#[tokio::test]
async fn too_many_channels_are_refused_before_any_is_made() {
    let s = server_with(|c| c.limits.max_channels_per_connection = 3).await;
    let res = publish(&s, "a/b/c/d", "x", None).await;
    assert_eq!(res.status(), 403);
    assert_eq!(explain(&res), Some("at most 3 channels per request"));
    let res = client()
        .get(s.http("/ps/sub/a/b/c/d"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(explain(&res), Some("at most 3 channels per connection"));
    let res = client().get(s.http("/ps/pub?id=a")).send().await.unwrap();
    assert_eq!(res.status(), 404, "nothing was created");
    // At the limit, each channel gets the message.
    assert_eq!(publish(&s, "a/b/c", "x", None).await.status(), 200);
    for id in ["a", "b", "c"] {
        let res = client()
            .get(s.http(&format!("/ps/pub?id={id}")))
            .send()
            .await
            .unwrap();
        let info: Value = res.json().await.unwrap();
        assert_eq!(info["published_messages"], 1, "{id}: {info}");
    }
}

#[tokio::test]
async fn publish_answers_channel_info_and_fans_out_to_each_id() {
    let s = server().await;
    let res = publish(&s, "ch", "hello", None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(
        res.text().await.unwrap(),
        "{\"channel\": \"ch\", \"published_messages\": 1, \"stored_messages\": 1, \"subscribers\": 0}\r\n"
    );
    let res = client()
        .put(s.http("/ps/pub?id=ch"))
        .body("again")
        .send()
        .await
        .unwrap();
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("\"published_messages\": 2")
    );
    let res = publish(&s, "a/b", "both", None).await;
    let text = res.text().await.unwrap();
    let v = json(&text);
    assert_eq!(v["infos"].as_array().unwrap().len(), 2, "{text}");
    assert_eq!(v["infos"][0]["channel"], "a");
    assert!(text.starts_with("{\"hostname\": \""), "{text}");
    let res = client().get(s.http("/ps/pub?id=b")).send().await.unwrap();
    assert_eq!(json(&res.text().await.unwrap())["stored_messages"], 1);
    let res = client()
        .get(s.http("/ps/pub?id=b"))
        .header("Accept", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/plain");
    assert_eq!(
        res.text().await.unwrap(),
        "channel: b\r\npublished_messages: 1\r\nstored_messages: 1\r\nactive_subscribers: 0\r\n"
    );
}

#[tokio::test]
async fn streaming_renders_every_template_token() {
    let s = server_with(|c| {
        c.pushstream.message_template =
            "~id~|~channel~|~text~|~size~|~time~|~tag~|~event-id~|~event-type~\n".into();
        c.pushstream.header_template = "HEAD\n".into();
    })
    .await;
    let mut sub = Body::open(s.http("/ps/sub/tok"), &[]).await;
    assert_eq!(sub.status, 200);
    assert_eq!(sub.headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(sub.until("HEAD\n").await, "HEAD\n");
    publish(&s, "tok", "raw \"text\" é", Some(("ev-1", "kind"))).await;
    let line = sub.until("\n").await;
    let f: Vec<&str> = line.trim_end().split('|').collect();
    assert_eq!(&f[..4], ["1", "tok", "raw \"text\" é", "13"]);
    assert!(f[4].ends_with(" GMT"), "HTTP-date: {}", f[4]);
    let tag: u64 = f[5].parse().unwrap();
    assert!((1..=1000).contains(&tag));
    assert_eq!(&f[6..], ["ev-1", "kind"]);
    publish(&s, "tok", "two", None).await;
    let line = sub.until("\n").await;
    let f: Vec<&str> = line.trim_end().split('|').collect();
    assert_eq!((f[0], f[2], f[6], f[7]), ("2", "two", "", ""));
}

#[tokio::test]
async fn backtrack_replays_the_last_stored_messages() {
    let s = server().await;
    for i in 1..=3 {
        publish(&s, "bt", &format!("m{i}"), None).await;
    }
    let mut sub = Body::open(s.http("/ps/sub/bt.b2/other"), &[]).await;
    let first = json(&sub.until("}").await);
    let second = json(&sub.until("}").await);
    assert_eq!(
        (first["id"].clone(), first["text"].clone()),
        (2.into(), "m2".into())
    );
    assert_eq!(
        (second["id"].clone(), second["text"].clone()),
        (3.into(), "m3".into())
    );
    assert_eq!(first["channel"], "bt");
    assert_eq!(first["eventid"], "");
    // The PushaaS template: tag and time are strings.
    assert!(first["tag"].is_string() && first["time"].as_str().unwrap().ends_with("GMT"));
    publish(&s, "other", "live", None).await;
    assert_eq!(json(&sub.until("}").await)["text"], "live");
}

#[tokio::test]
async fn eventsource_frames_pings_and_last_event_id() {
    let s = server_with(|c| c.pushstream.ping_interval = Duration::from_millis(300)).await;
    let mut ev = Body::open(s.http("/ps/ev/evc"), &[]).await;
    assert_eq!(
        ev.headers["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(ev.until("\n").await, ": \n");
    publish(&s, "evc", "one", Some(("e1", "greeting"))).await;
    let block = ev.until("\n\n").await;
    let mut lines = block.lines();
    assert_eq!(lines.next(), Some("id: e1"));
    assert_eq!(lines.next(), Some("event: greeting"));
    let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
    assert_eq!(json(data)["text"], "one");
    publish(&s, "evc", "line1\nline2", Some(("e2", "t"))).await;
    let block = ev.until("\n\n").await;
    let data: Vec<Value> = block
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(json)
        .collect();
    assert_eq!(data.len(), 2, "one data line per text line: {block:?}");
    assert_eq!(
        (data[0]["text"].clone(), data[1]["text"].clone()),
        ("line1".into(), "line2".into())
    );
    assert_eq!(ev.until(": -1\n").await, ": -1\n");
    publish(&s, "evc", "three", Some(("e3", "t"))).await;
    drop(ev);

    let mut resumed = Body::open(s.http("/ps/ev/evc"), &[("Last-Event-ID", "e2")]).await;
    resumed.until(": \n").await;
    let block = resumed.until("\n\n").await;
    assert!(block.starts_with("id: e3\n"), "{block:?}");
    let mut by_arg = Body::open(s.http("/ps/ev/evc?eventid=e1"), &[]).await;
    by_arg.until(": \n").await;
    assert!(by_arg.until("\n\n").await.starts_with("id: e2\n"));
}

fn marker_headers(res: &reqwest::Response) -> (String, String) {
    (
        res.headers()["last-modified"].to_str().unwrap().to_owned(),
        res.headers()["etag"].to_str().unwrap().to_owned(),
    )
}

/// Milliseconds since the Unix epoch as push-stream markers: (seconds, ms + 1).
fn marker_of_ms(ms: u128) -> (u64, u64) {
    ((ms / 1000) as u64, (ms % 1000 + 1) as u64)
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// A long-poll without markers that times out sends the client to the
/// moment it subscribed, not to the clock at the timeout: whatever was
/// published meanwhile and did not reach it (stamped before a second
/// boundary, delivered after the last look; in a cluster, still on its way
/// from Redis) is read from history by the next request.
#[tokio::test]
async fn a_long_poll_timeout_resumes_from_the_subscription() {
    // Over a second, so the clock at the timeout is in a later second than
    // the subscription.
    let ttl = Duration::from_millis(1100);
    let s = server_with(|c| c.pushstream.longpolling_ttl = ttl).await;
    let sent = now_ms();
    let res = client().get(s.http("/ps/lp/lpt")).send().await.unwrap();
    let answered = now_ms();
    assert_eq!(res.status(), 304);
    let (lm, etag) = marker_headers(&res);
    let time = httpdate::parse_http_date(&lm)
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let tag: u64 = etag.trim_start_matches("W/").parse().unwrap();
    let marker = (time, tag);
    assert!(
        marker >= marker_of_ms(sent - 1),
        "{marker:?} before the request"
    );
    let subscribed_by = answered - ttl.as_millis();
    assert!(
        marker < marker_of_ms(subscribed_by),
        "{marker:?} is past the subscription ({:?})",
        marker_of_ms(subscribed_by)
    );
}

#[tokio::test]
async fn long_polling_markers_resume_and_time_out() {
    let s = server_with(|c| c.pushstream.longpolling_ttl = Duration::from_millis(500)).await;
    // Nothing stored, no markers: waits, then 304 with markers to resume from.
    let res = client().get(s.http("/ps/lp/lpc")).send().await.unwrap();
    assert_eq!(res.status(), 304);
    let (lm, etag) = marker_headers(&res);
    assert!(etag.starts_with("W/"));
    assert!(lm.ends_with("GMT"));

    // A waiting poll is answered by the next message.
    let waiting = tokio::spawn({
        let url = s.http("/ps/lp/lpc");
        let (lm, etag) = (lm.clone(), etag.clone());
        async move {
            client()
                .get(url)
                .header("If-Modified-Since", lm)
                .header("If-None-Match", etag)
                .send()
                .await
                .unwrap()
        }
    });
    // Publish until the poll has subscribed and answered.
    let mut res = None;
    for i in 0.. {
        publish(&s, "lpc", &format!("p{i}"), None).await;
        if waiting.is_finished() {
            res = Some(tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        if i > 200 {
            break;
        }
    }
    let res = res.expect("the long-poll answered");
    assert_eq!(res.status(), 200);
    let (mut lm, mut etag) = marker_headers(&res);
    let body = res.text().await.unwrap();
    let last = body.replace("}{", "}\r\n{");
    let msgs: Vec<Value> = last.split("\r\n").map(json).collect();
    let newest = msgs.last().unwrap();
    assert_eq!(format!("W/{}", newest["tag"].as_str().unwrap()), etag);
    assert_eq!(newest["time"].as_str().unwrap(), lm);

    // Everything published since is replayed exactly once, in order.
    let before = newest["id"].as_i64().unwrap();
    for i in 0..5 {
        publish(&s, "lpc", &format!("r{i}"), None).await;
    }
    let mut got = Vec::new();
    while got.len() < 5 {
        let res = client()
            .get(s.http("/ps/lp/lpc"))
            .header("If-Modified-Since", &lm)
            .header("If-None-Match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        (lm, etag) = marker_headers(&res);
        let body = res.text().await.unwrap().replace("}{", "}\r\n{");
        got.extend(body.split("\r\n").map(|m| json(m)["id"].as_i64().unwrap()));
    }
    let total = before + 5;
    let all_ids: Vec<i64> = (before + 1..=total).collect();
    // Messages published during the earlier loop (before `newest` was
    // answered) may come first; the last five are the r-messages.
    assert_eq!(&got[got.len() - 5..], &all_ids[all_ids.len() - 5..]);
    assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "{got:?}");

    // Query arguments work like the headers (pushstream.js's messagesControlByArgument).
    let tag = etag.trim_start_matches("W/");
    let res = client()
        .get(s.http(&format!(
            "/ps/lp/lpc?tag={tag}&time={}",
            lm.replace(' ', "%20").replace(',', "%2C")
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304, "nothing after the newest message");

    // Polling mode answers at once; JSONP wraps the messages.
    let res = client()
        .get(s.http("/ps/sub/lpc"))
        .header("X-Nginx-PushStream-Mode", "polling")
        .header("If-Modified-Since", &lm)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);
    assert_eq!(marker_headers(&res), (lm.clone(), etag.clone()));
    let res = client()
        .get(s.http("/ps/lp/lpc.b2?callback=cb"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "application/javascript");
    let body = res.text().await.unwrap();
    assert!(
        body.starts_with("cb([{") && body.ends_with("}]);") && body.contains("},{"),
        "{body}"
    );
}

#[tokio::test]
async fn long_poll_timeout_with_body_sends_the_minus_three_message() {
    let s = server_with(|c| {
        c.pushstream.longpolling_ttl = Duration::from_millis(200);
        c.pushstream.timeout_with_body = true;
    })
    .await;
    let res = client().get(s.http("/ps/lp/tw")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let v = json(&res.text().await.unwrap());
    assert_eq!(
        (v["id"].clone(), v["text"].clone()),
        ((-3).into(), "Timed out".into())
    );
}

#[tokio::test]
async fn websocket_frames_publish_and_pings() {
    let s = server_with(|c| c.pushstream.ping_interval = Duration::from_millis(300)).await;
    let mut a = s.ws("/ps/ws/wsc").await;
    let mut b = s.ws("/ps/ws/wsc/other").await;
    publish(&s, "wsc", "from http", Some(("id1", "t"))).await;
    for ws in [&mut a, &mut b] {
        let v = json(&next_text(ws).await);
        assert_eq!(
            (v["text"].clone(), v["eventid"].clone()),
            ("from http".into(), "id1".into())
        );
    }
    // allow_publish: a client text frame goes to every channel of its connection.
    b.send(Message::text("from ws")).await.unwrap();
    let v = json(&next_text(&mut a).await);
    assert_eq!(
        (v["text"].clone(), v["channel"].clone()),
        ("from ws".into(), "wsc".into())
    );
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(
            json(&next_text(&mut b).await)["channel"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    seen.sort();
    assert_eq!(seen, ["other", "wsc"]);
    // Pings are WebSocket ping frames.
    let mut raw = RawWs::connect(s.addr, "/ps/ws/wsc").await;
    let (opcode, _) = raw.frame().await.unwrap();
    assert_eq!(opcode, 9);
}

#[tokio::test]
async fn websocket_refusals_close_with_1008_and_the_explain_json() {
    let s = server().await;
    let mut raw = RawWs::connect(s.addr, "/ps/ws/ALL").await;
    let (code, reason) = raw.close_frame().await;
    assert_eq!(code, 1008);
    assert_eq!(
        json(&reason),
        serde_json::json!({"http_status": 403, "explain": "Channel id not authorized for this method."})
    );
    // A quote in the explanation stays JSON.
    let mut raw = RawWs::connect(s.addr, "/ps/ws/a%22b").await;
    let (code, reason) = raw.close_frame().await;
    assert_eq!(code, 1008);
    let why = json(&reason)["explain"].as_str().unwrap().to_owned();
    assert!(why.contains("'\"'"), "{why}");
    let res = client().get(s.http("/ps/ws/ch")).send().await.unwrap();
    assert_eq!(res.status(), 400);
    assert!(
        explain(&res)
            .unwrap()
            .starts_with("Don't have at least one of the mandatory headers")
    );
}

/// A close frame carries at most 123 bytes of reason: a longer explanation
/// is cut, and the reason stays JSON.
#[tokio::test]
async fn a_long_websocket_refusal_fits_its_close_frame() {
    let s = server_with(|c| {
        c.auth.secret = Some("pushstream-test-secret".into());
        c.auth.protected_channels = vec!["secret-*".into()];
    })
    .await;
    let long = format!("/ps/ws/secret-{}", "x".repeat(100));
    let mut raw = RawWs::connect(s.addr, &long).await;
    let (code, reason) = raw.close_frame().await;
    assert_eq!(code, 1008);
    assert!(reason.len() <= 123, "{} bytes: {reason}", reason.len());
    let refusal = json(&reason);
    assert_eq!(refusal["http_status"], 403);
    let explain = refusal["explain"].as_str().unwrap();
    assert!(explain.starts_with("channel secret-xxx"), "{explain}");
}

#[tokio::test]
async fn deleting_a_channel_sends_minus_two_then_the_footer() {
    let s = server_with(|c| c.pushstream.footer_template = "FOOT".into()).await;
    let mut sub = Body::open(s.http("/ps/sub/del"), &[]).await;
    let mut both = Body::open(s.http("/ps/sub/del/keep"), &[]).await;
    let mut ev = Body::open(s.http("/ps/ev/del"), &[]).await;
    ev.until(": \n").await;
    let mut ws = s.ws("/ps/ws/del").await;
    let lp = tokio::spawn({
        let url = s.http("/ps/lp/del");
        async move {
            client()
                .get(url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    });
    // Wait until every subscriber is registered.
    for _ in 0..500 {
        let info = client().get(s.http("/ps/pub?id=del")).send().await.unwrap();
        if info.status() == 200 && json(&info.text().await.unwrap())["subscribers"] == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let res = client()
        .delete(s.http("/ps/pub?id=del"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (res.status().as_u16(), explain(&res)),
        (200, Some("Channel deleted."))
    );

    let rest = sub.end().await;
    let (msg, footer) = rest.split_at(rest.len() - 4);
    assert_eq!(footer, "FOOT");
    let v = json(msg);
    assert_eq!(
        (v["id"].clone(), v["text"].clone(), v["channel"].clone()),
        ((-2).into(), "Channel deleted".into(), "del".into())
    );
    let rest = ev.end().await;
    assert!(rest.starts_with("data: {\"id\":-2,"), "{rest:?}");
    assert_eq!(json(&next_text(&mut ws).await)["id"], -2);
    assert_eq!(next_text(&mut ws).await, "FOOT", "the footer as a frame");
    assert_eq!(expect_close(&mut ws).await.0, 1000);
    let lp = tokio::time::timeout(WAIT, lp).await.unwrap().unwrap();
    let lp = lp
        .strip_suffix("FOOT")
        .expect("long-poll replies end with the footer");
    assert_eq!(json(lp)["id"], -2);
    // A subscriber with another channel stays connected.
    assert_eq!(json(&both.until("}").await)["id"], -2);
    publish(&s, "keep", "still here", None).await;
    assert_eq!(json(&both.until("}").await)["text"], "still here");

    // A DELETE body replaces the text.
    let mut sub = Body::open(s.http("/ps/sub/del2"), &[]).await;
    publish(&s, "del2", "x", None).await;
    sub.until("}").await;
    client()
        .delete(s.http("/ps/pub?id=del2"))
        .body("bye")
        .send()
        .await
        .unwrap();
    assert_eq!(json(&sub.until("}").await)["text"], "bye");
}

/// Streams and WebSockets (as the module's `setup.c` wraps both templates
/// in frames) start with the header template and end with the footer.
#[tokio::test]
async fn subscriber_ttl_ends_streams_with_the_footer() {
    let s = server_with(|c| {
        c.pushstream.subscriber_ttl = Duration::from_millis(300);
        c.pushstream.header_template = "<html>".into();
        c.pushstream.footer_template = "</body>".into();
    })
    .await;
    let mut sub = Body::open(s.http("/ps/sub/ttl"), &[]).await;
    assert_eq!(sub.end().await, "<html></body>");
    let mut ws = s.ws("/ps/ws/ttl").await;
    assert_eq!(next_text(&mut ws).await, "<html>");
    assert_eq!(next_text(&mut ws).await, "</body>");
    assert_eq!(expect_close(&mut ws).await.0, 1000);
    // A refused WebSocket gets neither, only its 1008 close.
    let mut raw = RawWs::connect(s.addr, "/ps/ws/ALL").await;
    let (opcode, payload) = raw.frame().await.unwrap();
    assert_eq!((opcode, &payload[..2]), (8, &1008u16.to_be_bytes()[..]));
}

#[tokio::test]
async fn channels_stats_formats() {
    let s = server().await;
    publish(&s, "s1", "x", None).await;
    publish(&s, "s2", "y", None).await;
    publish(&s, "broad_w", "z", None).await;
    let _sub = Body::open(s.http("/ps/sub/s1"), &[]).await;
    let res = client()
        .get(s.http("/ps/channels-stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-nginx-pushstream-tag"));
    let v = json(&res.text().await.unwrap());
    for key in [
        "hostname",
        "time",
        "channels",
        "wildcard_channels",
        "published_messages",
        "stored_messages",
        "messages_in_trash",
        "channels_in_delete",
        "channels_in_trash",
        "subscribers",
        "uptime",
        "by_worker",
    ] {
        assert!(v.get(key).is_some(), "{key} in {v}");
    }
    assert_eq!(
        (v["channels"].clone(), v["wildcard_channels"].clone()),
        (2.into(), 1.into())
    );
    assert_eq!(v["stored_messages"], 3);
    let v = json(
        &client()
            .get(s.http("/ps/channels-stats?id=ALL"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(v["infos"].as_array().unwrap().len(), 3);
    let v = json(
        &client()
            .get(s.http("/ps/channels-stats?id=s*"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    let names: Vec<&str> = v["infos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["channel"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["s1", "s2"]);
    let text = client()
        .get(s.http("/ps/channels-stats?id=s1"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        text,
        "{\"channel\": \"s1\", \"published_messages\": 1, \"stored_messages\": 1, \"subscribers\": 1}\r\n"
    );
    let res = client()
        .get(s.http("/ps/channels-stats?id=none"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = client()
        .get(s.http("/ps/channels-stats?id=ALL"))
        .header("Accept", "application/yaml")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "application/yaml");
    assert!(
        res.text()
            .await
            .unwrap()
            .contains(" -\r\n  channel: broad_w\r\n")
    );
    let res = client()
        .get(s.http("/ps/channels-stats"))
        .header("Accept", "application/xml")
        .send()
        .await
        .unwrap();
    assert!(
        res.text()
            .await
            .unwrap()
            .starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\r\n<infos>")
    );
    let res = client()
        .post(s.http("/ps/channels-stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            res.status().as_u16(),
            res.headers()["allow"].to_str().unwrap()
        ),
        (405, "GET")
    );
}

#[tokio::test]
async fn wildcard_channels_need_a_normal_channel() {
    let s = server().await;
    let res = client()
        .get(s.http("/ps/sub/broad_all"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (res.status().as_u16(), explain(&res)),
        (403, Some("Subscribed too much wildcard channels."))
    );
    let res = client()
        .get(s.http("/ps/sub/x/broad_1/broad_2/broad_3/broad_4"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let mut sub = Body::open(s.http("/ps/sub/mine/broad_all"), &[]).await;
    assert_eq!(sub.status, 200);
    publish(&s, "broad_all", "to everyone", None).await;
    assert_eq!(json(&sub.until("}").await)["text"], "to everyone");
}

#[tokio::test]
async fn subscriber_errors() {
    let s = server().await;
    let res = client().get(s.http("/ps/sub/")).send().await.unwrap();
    assert_eq!(
        (res.status().as_u16(), explain(&res)),
        (400, Some("No channel id provided."))
    );
    let res = client().get(s.http("/ps/ev/ALL")).send().await.unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    let res = client().post(s.http("/ps/lp/ch")).send().await.unwrap();
    assert_eq!(
        (
            res.status().as_u16(),
            res.headers()["allow"].to_str().unwrap()
        ),
        (405, "GET")
    );
    let s = server_with(|c| c.pushstream.authorized_channels_only = true).await;
    let res = client().get(s.http("/ps/sub/fresh")).send().await.unwrap();
    assert_eq!(
        (res.status().as_u16(), explain(&res)),
        (403, Some("Subscriber could not create channels."))
    );
    publish(&s, "fresh", "now it exists", None).await;
    let sub = Body::open(s.http("/ps/sub/fresh"), &[]).await;
    assert_eq!(sub.status, 200);
}

#[tokio::test]
async fn events_channel_reports_subscriptions() {
    let s = server_with(|c| {
        c.pushstream.events_channel_id = "events".into();
        c.pushstream.allow_connections_to_events_channel = true;
        c.pushstream.message_template = "~text~\n".into();
    })
    .await;
    let res = publish(&s, "events", "x", None).await;
    assert_eq!(
        (res.status().as_u16(), explain(&res)),
        (
            403,
            Some("Only internal routines can change events channel.")
        )
    );
    let mut events = Body::open(s.http("/ps/sub/events"), &[]).await;
    let sub = Body::open(s.http("/ps/sub/watched"), &[]).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(json(&events.until("\n").await));
    }
    assert_eq!(
        seen,
        [
            serde_json::json!({"type": "channel_created", "channel": "watched"}),
            serde_json::json!({"type": "client_subscribed", "channel": "watched"}),
        ]
    );
    drop(sub);
    assert_eq!(
        json(&events.until("\n").await),
        serde_json::json!({"type": "client_unsubscribed", "channel": "watched"})
    );
    let s = server_with(|c| c.pushstream.allow_connections_to_events_channel = false).await;
    let res = client().get(s.http("/ps/sub/events")).send().await.unwrap();
    assert_eq!(
        res.status(),
        200,
        "without an events channel, 'events' is a plain name"
    );
}

/// The events channel shares the default app with the native and Push-seed
/// APIs: neither may write it, or anyone could forge what its subscribers
/// are told. Other channels stay writable.
#[tokio::test]
async fn events_channel_is_not_writable_through_other_apis() {
    let s = server_with(|c| {
        c.pushstream.events_channel_id = "events".into();
        c.server.allow_client_publish = true;
    })
    .await;
    let refused = |code: u16, body: &Value| (code, body["error"]["code"].clone());
    let native = client()
        .post(s.http("/api/v1/publish"))
        .json(&json!({"channels": ["other", "events"], "data": 1}))
        .send()
        .await
        .unwrap();
    let status = native.status().as_u16();
    assert_eq!(
        refused(status, &native.json().await.unwrap()),
        (403, json!("forbidden"))
    );
    let seed = client()
        .post(s.http("/messages"))
        .json(&json!({"channel": "events", "message": {"type": "client_subscribed"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(seed.status(), 403);
    let deleted = s.delete_channel("events").await;
    let status = deleted.status().as_u16();
    assert_eq!(
        refused(status, &deleted.json().await.unwrap()),
        (403, json!("forbidden"))
    );
    let mut ws = s.ws("/ws").await;
    let r = command(
        &mut ws,
        json!({"id": 1, "cmd": "publish", "channel": "events", "data": 1}),
    )
    .await;
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
    let r = command(
        &mut ws,
        json!({"id": 2, "cmd": "publish", "channel": "other", "data": 1}),
    )
    .await;
    assert_eq!(r["result"]["subscribers"], 0, "{r}");
    // Asserts a 200.
    s.publish(json!({"channel": "other", "data": 2})).await;
}

/// However first subscribers (streams, WebSockets) and a publisher race on
/// new channels, the events channel announces each one once. Each
/// subscriber asks for many new channels, half of them in reverse order, so
/// that subscribers meet on channels that are new to both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_first_subscribers_announce_a_new_channel_once() {
    const ROUNDS: usize = 4;
    const CHANNELS: usize = 256;
    const STREAMS: usize = 4;
    const SOCKETS: usize = 4;
    let s = server_with(|c| {
        c.limits.max_channels_per_connection = CHANNELS;
        c.pushstream.events_channel_id = "events".into();
        c.pushstream.allow_connections_to_events_channel = true;
        c.pushstream.message_template = "~text~\n".into();
    })
    .await;
    let mut events = Body::open(s.http("/ps/sub/events"), &[]).await;
    let mut held = Vec::new();
    let mut sockets = Vec::new();
    for round in 0..ROUNDS {
        let mut names: Vec<String> = (0..CHANNELS).map(|i| format!("r{round}c{i}")).collect();
        let forward = names.join("/");
        names.reverse();
        let backward = names.join("/");
        let paths = |mode: &str| {
            [
                format!("/ps/{mode}/{forward}"),
                format!("/ps/{mode}/{backward}"),
            ]
        };
        let (subs, ws) = (paths("sub"), paths("ws"));
        let streams = (0..STREAMS).map(|i| Body::open(s.http(&subs[i % 2]), &[]));
        let opened = (0..SOCKETS).map(|i| s.ws(&ws[i % 2]));
        let middle = format!("r{round}c{}", CHANNELS / 2);
        let (streams, opened, res) = tokio::join!(
            futures_util::future::join_all(streams),
            futures_util::future::join_all(opened),
            publish(&s, &middle, "first", None),
        );
        assert_eq!(res.status(), 200);
        assert!(streams.iter().all(|b| b.status == 200));
        held.extend(streams);
        sockets.extend(opened);
    }
    // Every event above was queued before this subscription's.
    let sentinel = Body::open(s.http("/ps/sub/sentinel"), &[]).await;
    let mut created = vec![[0; CHANNELS]; ROUNDS];
    let mut subscribed = vec![[0; CHANNELS]; ROUNDS];
    loop {
        let v = json(&events.until("\n").await);
        let channel = v["channel"].as_str().unwrap();
        if channel == "sentinel" {
            if v["type"] == "client_subscribed" {
                break;
            }
            continue;
        }
        let (round, i) = channel[1..].split_once('c').unwrap();
        let (round, i): (usize, usize) = (round.parse().unwrap(), i.parse().unwrap());
        match v["type"].as_str().unwrap() {
            "channel_created" => created[round][i] += 1,
            "client_subscribed" => subscribed[round][i] += 1,
            other => panic!("unexpected {other:?} for {channel}"),
        }
    }
    assert_eq!(subscribed, vec![[STREAMS + SOCKETS; CHANNELS]; ROUNDS]);
    assert_eq!(
        created,
        vec![[1; CHANNELS]; ROUNDS],
        "channel_created per channel"
    );
    drop((held, sockets, sentinel));
}

/// One message of a `~id~|~time~|~tag~|~text~` body: id, (seconds, tag), text.
fn parse_marked(body: &str) -> Vec<(i64, (u64, u64), String)> {
    body.lines()
        .map(|line| {
            let mut f = line.splitn(4, '|');
            let mut next = || f.next().unwrap_or_else(|| panic!("{line:?}"));
            let id = next().parse().unwrap();
            let time = httpdate::parse_http_date(next()).unwrap();
            let secs = time
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let tag = next().parse().unwrap();
            (id, (secs, tag), next().to_owned())
        })
        .collect()
}

/// Polls `channel` with the markers of `m`, as a client that has it does.
async fn poll_after(s: &TestServer, channel: &str, m: (u64, u64)) -> reqwest::Response {
    let since = httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(m.0));
    client()
        .get(s.http(&format!("/ps/sub/{channel}")))
        .header("X-Nginx-PushStream-Mode", "polling")
        .header("If-Modified-Since", since)
        .header("If-None-Match", format!("W/{}", m.1))
        .send()
        .await
        .unwrap()
}

/// Resuming relies on the history's offsets and markers agreeing: with
/// concurrent publishers (on a multi-threaded server, as in production) and
/// with the events channel's paired announcements, every stored message's
/// (time, tag) is after the previous one's, and polling with a message's
/// markers answers exactly the messages after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_markers_follow_offsets_so_resuming_never_repeats() {
    let marked = |c: &mut Config| {
        c.pushstream.message_template = "~id~|~time~|~tag~|~text~\n".into();
        c.pushstream.max_messages_stored_per_channel = 100;
    };
    let s = server_with(marked).await;
    let check = |channel: &str, history: &[(i64, (u64, u64), String)]| {
        let ids: Vec<i64> = history.iter().map(|m| m.0).collect();
        assert_eq!(
            ids,
            (1..=history.len() as i64).collect::<Vec<_>>(),
            "{channel}"
        );
        for w in history.windows(2) {
            assert!(w[0].1 < w[1].1, "{channel}: markers go back: {history:?}");
        }
    };
    // Concurrent publishes to one channel.
    for round in 0..10 {
        let channel = format!("race{round}");
        let bodies: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        let publishes = bodies.iter().map(|b| publish(&s, &channel, b, None));
        for res in futures_util::future::join_all(publishes).await {
            assert_eq!(res.status(), 200);
        }
        let res = client()
            .get(s.http(&format!("/ps/lp/{channel}.b20")))
            .send()
            .await
            .unwrap();
        let history = parse_marked(&res.text().await.unwrap());
        assert_eq!(history.len(), 20);
        check(&channel, &history);
    }

    // Each new subscription announces `channel_created`, then `client_subscribed`.
    let s = server_with(|c| {
        marked(c);
        c.pushstream.events_channel_id = "events".into();
        c.pushstream.allow_connections_to_events_channel = true;
    })
    .await;
    let mut events = Body::open(s.http("/ps/sub/events"), &[]).await;
    let mut subs = Vec::new();
    for i in 0..20 {
        subs.push(Body::open(s.http(&format!("/ps/sub/watched{i}")), &[]).await);
    }
    for _ in 0..40 {
        events.until("\n").await;
    }
    let res = client()
        .get(s.http("/ps/lp/events.b100"))
        .send()
        .await
        .unwrap();
    let history = parse_marked(&res.text().await.unwrap());
    assert_eq!(history.len(), 40);
    check("events", &history);
    for i in 0..20 {
        let channel = format!("\"watched{i}\"");
        let of = |kind: &str| {
            history
                .iter()
                .position(|m| m.2.contains(kind) && m.2.contains(&channel))
                .unwrap_or_else(|| panic!("no {kind} for {channel}"))
        };
        assert!(
            of("channel_created") < of("client_subscribed"),
            "{history:?}"
        );
    }
    // Polling with a message's markers answers what follows it, once.
    for (i, m) in history.iter().enumerate() {
        let res = poll_after(&s, "events", m.1).await;
        if i + 1 == history.len() {
            assert_eq!(res.status(), 304);
            continue;
        }
        let got = parse_marked(&res.text().await.unwrap());
        let ids: Vec<i64> = got.iter().map(|m| m.0).collect();
        assert_eq!(ids, (m.0 + 1..=40).collect::<Vec<_>>(), "after {m:?}");
    }
    drop(subs);
}

/// Query arguments read as nginx's `$arg_…`: a repeated name is its first
/// value, never a Herald-native JSON error; values the module would refuse
/// get its header-only answer.
#[tokio::test]
async fn repeated_query_arguments_take_the_first_value() {
    let s = server().await;
    let res = client()
        .post(s.http("/ps/pub?id=first&id=second"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(json(&res.text().await.unwrap())["channel"], "first");
    let res = client()
        .get(s.http("/ps/pub?id=second"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404, "the second id was not published to");
    let res = client()
        .get(s.http("/ps/channels-stats?id=first&id=second"))
        .send()
        .await
        .unwrap();
    assert_eq!(json(&res.text().await.unwrap())["channel"], "first");
    let res = client()
        .get(s.http("/ps/lp/first.b1?callback=one&callback=two&tag=1&tag=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().starts_with("one(["));
    let mut sub = Body::open(s.http("/ps/sub/first.b1?tag=1&tag=2"), &[]).await;
    assert_eq!(sub.status, 200);
    assert_eq!(json(&sub.until("}").await)["text"], "x");
    let mut ws = s.ws("/ps/ws/first.b1?eventid=a&eventid=b").await;
    assert_eq!(json(&next_text(&mut ws).await)["text"], "x");
    // Not UTF-8 once decoded: not a channel id, refused the module's way.
    let res = client()
        .post(s.http("/ps/pub?id=%FF"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.headers().contains_key(EXPLAIN), "{:?}", res.headers());
    assert_eq!(res.text().await.unwrap(), "", "header-only");
}

/// Polling with only a tag (no time) selects nothing, and the 304 echoes
/// that tag as `Etag` without inventing a `Last-Modified`, as the module's
/// `add_polling_headers` does.
#[tokio::test]
async fn polling_304_echoes_a_tag_given_without_a_time() {
    let s = server().await;
    assert_eq!(publish(&s, "tagonly", "x", None).await.status(), 200);
    for (path, header) in [
        ("/ps/sub/tagonly", Some("W/5")),
        ("/ps/sub/tagonly?tag=7", None),
    ] {
        let mut req = client()
            .get(s.http(path))
            .header("X-Nginx-PushStream-Mode", "polling");
        if let Some(tag) = header {
            req = req.header("If-None-Match", tag);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 304, "{path}");
        let etag = res.headers().get("etag").map(|v| v.to_str().unwrap());
        assert_eq!(etag, Some(if header.is_some() { "W/5" } else { "W/7" }));
        assert!(!res.headers().contains_key("last-modified"), "{path}");
    }
}

/// The JSONP callback is percent-decoded once, as nginx's `$arg_callback`
/// through the module's `unescape_uri`: `%252E` stays `%2E` (and so is not
/// a plain name), where decoding twice made it a `.`.
#[tokio::test]
async fn jsonp_callback_is_decoded_once() {
    let s = server().await;
    assert_eq!(publish(&s, "cbonce", "x", None).await.status(), 200);
    let res = client()
        .get(s.http("/ps/lp/cbonce.b1?callback=cb%2Ex"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().starts_with("cb.x([{"));
    let res = client()
        .get(s.http("/ps/lp/cbonce.b1?callback=cb%252Ex"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400, "`cb%2Ex` is not a plain name");
    assert_eq!(explain(&res), Some("Invalid callback name."));
}

/// The OpenAPI tag names exactly the routes that answer `OPTIONS` (with
/// the CORS headers); the others answer 405 as the module's do.
#[tokio::test]
async fn openapi_names_the_routes_that_answer_options() {
    let s = server().await;
    let doc: Value = fetch_json(client().get(s.http("/openapi.json"))).await;
    let tag = doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "pushstream")
        .expect("the pushstream tag");
    let text = tag["description"].as_str().unwrap();
    let (claim, _) = text.split_once("`OPTIONS`").expect("OPTIONS is described");
    for (route, path) in [
        ("pub", "/ps/pub?id=o"),
        ("sub", "/ps/sub/o"),
        ("ev", "/ps/ev/o"),
        ("lp", "/ps/lp/o"),
        ("jsonp", "/ps/jsonp/o"),
        ("ws", "/ps/ws/o"),
        ("channels-stats", "/ps/channels-stats"),
    ] {
        let res = client()
            .request(reqwest::Method::OPTIONS, s.http(path))
            .send()
            .await
            .unwrap();
        let answers = res.status() == 200;
        assert_eq!(
            claim.contains(&format!("`/{route}`")),
            answers,
            "{route}: {text}"
        );
        if answers {
            assert!(
                res.headers().contains_key("access-control-allow-origin"),
                "{route}"
            );
        } else {
            assert_eq!(res.status(), 405, "{route}");
        }
    }
}

/// Template tokens match in any case, as the module's `ngx_strncasecmp`.
#[tokio::test]
async fn template_tokens_match_in_any_case() {
    let s = server_with(|c| {
        c.pushstream.message_template = "~ID~|~Text~|~EVENT-id~|~Size~|~nope~".into();
    })
    .await;
    assert_eq!(
        publish(&s, "caps", "hi", Some(("e1", "t"))).await.status(),
        200
    );
    let res = client().get(s.http("/ps/lp/caps.b1")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "1|hi|e1|2|~nope~");
}

/// With `store_messages` off a publish nobody hears creates no channel
/// (documented among the differences from the module); a subscribed
/// channel exists and is counted.
#[tokio::test]
async fn without_stored_messages_only_a_subscribed_channel_exists() {
    let s = server_with(|c| c.pushstream.store_messages = false).await;
    let res = publish(&s, "unheard", "x", None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "", "no channel to report");
    let res = client()
        .get(s.http("/ps/pub?id=unheard"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    let mut sub = Body::open(s.http("/ps/sub/heard"), &[]).await;
    let res = publish(&s, "heard", "y", None).await;
    let info = json(&res.text().await.unwrap());
    assert_eq!(
        (
            &info["published_messages"],
            &info["stored_messages"],
            &info["subscribers"]
        ),
        (&json!(1), &json!(0), &json!(1))
    );
    assert_eq!(json(&sub.until("}").await)["text"], "y");
}

/// A long-poll that ends with nothing for the client (its time ran out, or
/// its queue overflowed and was dropped) sends it back to where it was:
/// its own markers, not the clock's, so nothing published meanwhile, in
/// any channel or by any clock, is stepped over.
#[tokio::test]
async fn a_long_poll_that_delivers_nothing_keeps_the_clients_markers() {
    let s = server_with(|c| {
        c.pushstream.longpolling_ttl = Duration::from_millis(1000);
        c.limits.outbox_bytes = 4 * 1024;
    })
    .await;
    publish(&s, "ov", "first", None).await;
    let res = client().get(s.http("/ps/lp/ov.b1")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let given = marker_headers(&res);
    let poll = |(lm, etag): (String, String)| {
        let url = s.http("/ps/lp/ov");
        async move {
            client()
                .get(url)
                .header("If-Modified-Since", lm)
                .header("If-None-Match", etag)
                .send()
                .await
                .unwrap()
        }
    };
    let res = poll(given.clone()).await;
    assert_eq!(res.status(), 304, "timed out");
    assert_eq!(marker_headers(&res), given);

    // Messages more than the queue holds, fanned out in one go, overflow a
    // waiting poll.
    let waiting = tokio::spawn(poll(given.clone()));
    let subscribed = async {
        loop {
            let stats = client()
                .get(s.http("/ps/channels-stats?id=ov"))
                .send()
                .await
                .unwrap();
            if json(&stats.text().await.unwrap())["subscribers"] == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(WAIT, subscribed).await.unwrap();
    let batch: Vec<Value> = (0..3)
        .map(|i| serde_json::json!({"channel": "ov", "data": format!("{i}{}", "b".repeat(3000))}))
        .collect();
    let res = client()
        .post(s.http("/api/v1/publish/batch"))
        .json(&serde_json::json!({"messages": batch}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    assert_eq!(res.status(), 304, "overflowed");
    assert_eq!(marker_headers(&res), given);
    // From there the next poll reads them from history.
    let res = poll(given).await;
    assert_eq!(res.status(), 200);
    let body = res.text().await.unwrap();
    for i in 0..3 {
        assert!(body.contains(&format!("{i}bbb")), "message {i}");
    }
}
