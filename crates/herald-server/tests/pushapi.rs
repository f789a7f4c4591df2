//! PushaaS's push-api over real HTTP, with its messages reaching real
//! push-stream subscribers.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

const AUTH: (&str, &str) = ("app", "abc123");

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn api(s: &TestServer, path: &str) -> String {
    s.http(&format!("/push-api/api{path}"))
}

async fn get(s: &TestServer, path: &str) -> reqwest::Response {
    client()
        .get(api(s, path))
        .basic_auth(AUTH.0, Some(AUTH.1))
        .send()
        .await
        .unwrap()
}

async fn post(s: &TestServer, path: &str, body: &str) -> reqwest::Response {
    client()
        .post(api(s, path))
        .basic_auth(AUTH.0, Some(AUTH.1))
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

async fn body_json(res: reqwest::Response) -> Value {
    assert_eq!(
        res.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    res.json().await.unwrap()
}

/// Reads a push-stream `/sub` stream message by message (the JSON template).
struct Sub {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Sub {
    async fn open(s: &TestServer, channels: &str) -> Self {
        let res = client()
            .get(s.http(&format!("/ps/sub/{channels}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        Self {
            body: Box::pin(res.bytes_stream()),
            buf: String::new(),
        }
    }

    async fn next(&mut self) -> Value {
        loop {
            if let Some(i) = self.buf.find('}') {
                let msg: String = self.buf.drain(..=i).collect();
                return serde_json::from_str(&msg).unwrap();
            }
            let chunk = tokio::time::timeout(WAIT, self.body.next())
                .await
                .expect("no message in time")
                .expect("stream ended")
                .unwrap();
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

#[tokio::test]
async fn basic_auth_guards_every_api_route() {
    let s = TestServer::start().await;
    let res = client().get(api(&s, "/v1/auth")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.headers()["www-authenticate"],
        "Basic realm=\"Authorization Required\""
    );
    let res = client()
        .get(api(&s, "/v1/channels"))
        .basic_auth("app", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(get(&s, "/v1/auth").await.status(), 200);
    assert_eq!(
        body_json(get(&s, "/").await).await,
        json!({"data": {"app": "push-api"}})
    );
    assert_eq!(
        body_json(get(&s, "/healthcheck").await).await,
        json!({"data": {"services": [{"service": "app", "status": "working"}]}})
    );
    let res = get(&s, "/v1/nothing").await;
    assert_eq!(res.status(), 404);
    assert_eq!(res.text().await.unwrap(), "404 page not found");

    let s = TestServer::with(|c| {
        c.pushapi.basic_auth_user = "u".into();
        c.pushapi.basic_auth_password = "p".into();
    })
    .await;
    assert_eq!(get(&s, "/v1/auth").await.status(), 401);
    let res = client()
        .get(api(&s, "/v1/auth"))
        .basic_auth("u", Some("p"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let s = TestServer::with(|c| c.pushapi.enable_auth = false).await;
    let res = client().get(api(&s, "/v1/auth")).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn channels_crud_with_ttl_and_error_codes() {
    let s = TestServer::start().await;
    let res = post(&s, "/v1/channels", r#"{"id":"c1","ttl":1}"#).await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.text().await.unwrap(), "");
    let res = post(&s, "/v1/channels", r#"{"id":"c2","ttl":0}"#).await;
    assert_eq!(res.status(), 201);
    let res = post(&s, "/v1/channels", r#"{"id":"c2","ttl":5}"#).await;
    assert_eq!(res.status(), 400);
    assert_eq!(
        body_json(res).await,
        json!({"code": 11, "message": "a channel with this id already exists"})
    );
    for bad in ["nope", r#"{"id":5}"#, r#"{"id":"x","ttl":1.5}"#, ""] {
        let res = post(&s, "/v1/channels", bad).await;
        assert_eq!(res.status(), 400, "{bad}");
        assert_eq!(
            body_json(res).await,
            json!({"code": 10, "message": "invalid request body"})
        );
    }
    let all = body_json(get(&s, "/v1/channels").await).await;
    let ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["c1", "c2"], "oldest first");
    let c2 = body_json(get(&s, "/v1/channels/c2").await).await;
    assert_eq!(
        (c2["id"].clone(), c2["ttl"].clone()),
        (json!("c2"), json!(0))
    );
    let created = c2["created"].as_str().unwrap();
    assert!(
        created.ends_with('Z') && created.len() >= 20 && &created[10..11] == "T",
        "{created}"
    );

    // c1 expires after its TTL.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let res = get(&s, "/v1/channels/c1").await;
        if res.status() == 404 {
            assert_eq!(
                body_json(res).await,
                json!({"code": 20, "message": "channel not found"})
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "c1 never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let res = client()
        .delete(api(&s, "/v1/channels/c2"))
        .basic_auth(AUTH.0, Some(AUTH.1))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = client()
        .delete(api(&s, "/v1/channels/c2"))
        .basic_auth(AUTH.0, Some(AUTH.1))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(
        body_json(res).await,
        json!({"code": 30, "message": "channel not found"})
    );
    assert_eq!(body_json(get(&s, "/v1/channels").await).await, json!([]));
}

#[tokio::test]
async fn messages_reach_push_stream_subscribers_path_escaped() {
    let s = TestServer::start().await;
    let mut news = Sub::open(&s, "news").await;
    let mut multi = Sub::open(&s, "a/b").await;
    let res = post(
        &s,
        "/v1/messages",
        r#"{"channels":["news"],"content":"hello world/é?"}"#,
    )
    .await;
    assert_eq!(res.status(), 204);
    let m = news.next().await;
    assert_eq!(m["text"], "hello%20world%2F%C3%A9%3F");
    assert_eq!(
        (m["channel"].clone(), m["id"].clone()),
        (json!("news"), json!(1))
    );

    // An empty content publishes nothing; "a/b" is two channels to push-stream.
    assert_eq!(
        post(&s, "/v1/messages", r#"{"channels":["news"],"content":""}"#)
            .await
            .status(),
        204
    );
    assert_eq!(
        post(
            &s,
            "/v1/messages",
            r#"{"channels":["news","a/b"],"content":"x"}"#
        )
        .await
        .status(),
        204
    );
    assert_eq!(news.next().await["text"], "x");
    let mut got = vec![
        multi.next().await["channel"].clone(),
        multi.next().await["channel"].clone(),
    ];
    got.sort_by_key(|v| v.to_string());
    assert_eq!(got, [json!("a"), json!("b")]);

    for bad in [
        "{",
        r#"{"channels":"news","content":"x"}"#,
        r#"{"channels":["n"],"content":1}"#,
    ] {
        let res = post(&s, "/v1/messages", bad).await;
        assert_eq!(res.status(), 400, "{bad}");
        assert_eq!(
            body_json(res).await,
            json!({"code": 100, "message": "invalid request body"})
        );
    }
}

#[tokio::test]
async fn config_and_stats() {
    let s = TestServer::start().await;
    let port = s.addr.port().to_string();
    assert_eq!(
        body_json(get(&s, "/v1/config").await).await,
        json!({"pushStream": {
            "url": format!("http://127.0.0.1:{port}/ps"),
            "hostname": "127.0.0.1",
            "port": port,
        }})
    );
    let _sub = Sub::open(&s, "st").await;
    post(&s, "/v1/messages", r#"{"channels":["st"],"content":"m"}"#).await;
    let g = body_json(get(&s, "/v1/stats/global").await).await;
    assert_eq!(g["aggregated"]["subscribers"], 1);
    assert_eq!(g["all"][0]["agent"], "herald");
    assert_eq!(g["all"][0]["channels"], 1);
    assert!(g["aggregated"]["time"].as_str().unwrap().len() == 19);
    let c = body_json(get(&s, "/v1/stats/channels/st").await).await;
    assert_eq!(
        c["all"][0],
        json!({"channel": "st", "published_messages": 1, "stored_messages": 1, "subscribers": 1,
               "hostname": c["all"][0]["hostname"], "agent": "herald"})
    );
    assert_eq!(c["aggregated"], json!({"subscribers": 1}));
    let res = get(&s, "/v1/stats/channels/unknown").await;
    assert_eq!(res.status(), 404);
    assert_eq!(
        body_json(res).await,
        json!({"code": 200, "message": "stats data not found"})
    );

    // Without a configured URL, the `Host` only when it is host[:port].
    for (host, status) in [("push.example:8080", 200), ("evil.example/x?", 400)] {
        let res = client()
            .get(api(&s, "/v1/config"))
            .basic_auth(AUTH.0, Some(AUTH.1))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{host}");
        let body = body_json(res).await;
        if status == 200 {
            assert_eq!(body["pushStream"]["url"], "http://push.example:8080/ps");
        } else {
            assert_eq!(body["code"], 300, "{body}");
        }
    }

    let s =
        TestServer::with(|c| c.pushapi.push_stream_url = "http://push.example:9080".into()).await;
    assert_eq!(
        body_json(get(&s, "/v1/config").await).await["pushStream"],
        json!({"url": "http://push.example:9080", "hostname": "push.example", "port": "9080"})
    );
}

#[tokio::test]
async fn persistent_channels_get_the_keepalive_ping() {
    let s =
        TestServer::with(|c| c.pushapi.persistent_ping_interval = Duration::from_millis(100)).await;
    let mut sub = Sub::open(&s, "kept").await;
    assert_eq!(
        post(&s, "/v1/channels", r#"{"id":"kept","ttl":60}"#)
            .await
            .status(),
        201
    );
    assert_eq!(sub.next().await["text"], "ping");
}

#[tokio::test]
async fn admin_page_redirect_content_types_and_csp() {
    let s = TestServer::start().await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // `/` under the prefix: a relative redirect to `<prefix>/admin`.
    let res = no_redirects.get(s.http("/push-api")).send().await.unwrap();
    assert_eq!(res.status(), 301);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(location, "./push-api/admin");
    let target = res.url().join(&location).unwrap();
    assert_eq!(target.path(), "/push-api/admin");
    // With the trailing slash too, as push-api's `/` is usually typed.
    let res = no_redirects.get(s.http("/push-api/")).send().await.unwrap();
    assert_eq!(res.status(), 301);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(res.url().join(&location).unwrap().path(), "/push-api/admin");

    // The page, its script and styles: no auth, strict CSP, no inline code.
    let res = client().get(s.http("/push-api")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.url().path(), "/push-api/admin");
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
    let html = res.text().await.unwrap();
    assert!(html.contains(r#"<script src="admin/app.js" defer></script>"#));
    assert!(html.contains(r#"<link rel="stylesheet" href="admin/app.css">"#));
    assert!(!html.contains("<script>") && !html.contains("<style") && !html.contains("<base"));

    // `/admin/` sends to `/admin`, whose relative URLs the page uses.
    let res = no_redirects
        .get(s.http("/push-api/admin/"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 301);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(res.url().join(&location).unwrap().path(), "/push-api/admin");

    for (path, content_type, needle) in [
        (
            "/push-api/admin/app.js",
            "application/javascript; charset=utf-8",
            "\"api/v1/\"",
        ),
        (
            "/push-api/admin/app.css",
            "text/css; charset=utf-8",
            "[hidden]",
        ),
    ] {
        let res = client().get(s.http(path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(res.headers()["content-type"], content_type, "{path}");
        assert_eq!(res.headers()["content-security-policy"], csp.as_str());
        assert!(res.text().await.unwrap().contains(needle), "{path}");
    }
    // Other methods are gin's 404 (paths below /admin: see
    // `unrouted_paths_answer_as_gin_does`).
    let res = client()
        .post(s.http("/push-api/admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.text().await.unwrap(), "404 page not found");

    // Any prefix: `/a/b` redirects to `/a/b/admin`.
    let s = TestServer::with(|c| c.pushapi.prefix = "/tenant/push".into()).await;
    let res = no_redirects
        .get(s.http("/tenant/push"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 301);
    assert_eq!(res.headers()["location"], "./push/admin");
    let res = client().get(s.http("/tenant/push")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.url().path(), "/tenant/push/admin");
    assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
}

/// Bodies decode as gin's `BindJSON` (Go's `encoding/json`) reads them:
/// field names in any case, a repeated field's last value, `null` as an
/// empty body; anything but an object or `null` is still refused.
#[tokio::test]
async fn bodies_decode_as_go_does() {
    let s = TestServer::start().await;
    assert_eq!(
        post(&s, "/v1/channels", r#"{"ID":"caps","TTL":0}"#)
            .await
            .status(),
        201
    );
    assert_eq!(
        body_json(get(&s, "/v1/channels/caps").await).await["id"],
        "caps"
    );
    let res = post(&s, "/v1/channels", r#"{"id":"dup","Id":"dup2"}"#).await;
    assert_eq!(res.status(), 201);
    assert_eq!(get(&s, "/v1/channels/dup2").await.status(), 200);
    assert_eq!(
        get(&s, "/v1/channels/dup").await.status(),
        404,
        "the last value wins"
    );
    let res = post(&s, "/v1/channels", "[]").await;
    assert_eq!(body_json(res).await["code"], 10);

    let mut sub = Sub::open(&s, "loose").await;
    assert_eq!(post(&s, "/v1/messages", "null").await.status(), 204);
    let res = post(
        &s,
        "/v1/messages",
        r#"{"CHANNELS":["loose"],"Content":"a","content":"b"}"#,
    )
    .await;
    assert_eq!(res.status(), 204);
    assert_eq!(sub.next().await["text"], "b");
    let res = post(&s, "/v1/messages", r#""text""#).await;
    assert_eq!(body_json(res).await["code"], 100);
}

/// Paths no route takes, as gin answers them: the path with its trailing
/// slash toggled when that one is routed (301 for GET, 307 otherwise, no
/// auth asked, the query kept), the admin page for paths below `/admin/`,
/// else 404; every `Location` relative, so an instance's prefix works too.
#[tokio::test]
async fn unrouted_paths_answer_as_gin_does() {
    let s = TestServer::with(|c| c.pushaas.enabled = true).await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (method, path, status, location) in [
        (reqwest::Method::GET, "/push-api/api", 301, "./api/"),
        (
            reqwest::Method::GET,
            "/push-api/api/v1/channels/?x=1",
            301,
            "../channels?x=1",
        ),
        (
            reqwest::Method::POST,
            "/push-api/api/v1/messages/",
            307,
            "../messages",
        ),
        (
            reqwest::Method::GET,
            "/push-api/api/v1/channels/c1/",
            301,
            "../c1",
        ),
        (
            reqwest::Method::GET,
            "/push-api/admin/nothing",
            301,
            "../admin",
        ),
        (
            reqwest::Method::GET,
            "/push-api/admin/a/b/",
            301,
            "../../../admin",
        ),
    ] {
        let res = no_redirects
            .request(method.clone(), s.http(path))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{method} {path}");
        assert_eq!(res.headers()["location"], location, "{method} {path}");
    }
    for path in [
        "/push-api/api/v1/nothing",
        "/push-api/api/v1/nothing/",
        "/push-api/x",
    ] {
        let res = client().get(s.http(path)).send().await.unwrap();
        assert_eq!(res.status(), 404, "{path}");
        assert_eq!(res.text().await.unwrap(), "404 page not found");
    }
    // Followed: the routes themselves, under an instance's prefix too.
    let res = client()
        .get(s.http("/push-api/admin/x/y"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.url().path(), "/push-api/admin");
    assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
    let res = client()
        .get(s.http("/push-api/api"))
        .basic_auth(AUTH.0, Some(AUTH.1))
        .send()
        .await
        .unwrap();
    assert_eq!(res.url().path(), "/push-api/api/");
    assert_eq!(body_json(res).await, json!({"data": {"app": "push-api"}}));
    let res = client()
        .post(s.http("/pushaas/api/v1/resources"))
        .basic_auth("tsuru", Some("abc123"))
        .form(&[
            ("name", "gin"),
            ("plan", "small"),
            ("team", "t"),
            ("user", "u"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = client()
        .get(s.http("/pushaas/instances/gin/push-api/admin/deep/link"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.url().path(), "/pushaas/instances/gin/push-api/admin");
}
