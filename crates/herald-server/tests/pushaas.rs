//! PushaaS's Tsuru service API over real HTTP: Tsuru creates and binds an
//! instance, the bound app publishes through the instance's own push-api
//! with the credentials it was given, the instance's push-stream
//! subscribers get the message and nobody else's do, and removing the
//! instance ends its routes and its subscribers.

mod common;

use base64::Engine;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const TSURU: (&str, &str) = ("tsuru", "abc123");

async fn server() -> TestServer {
    TestServer::with(|c| c.pushaas.enabled = true).await
}

fn resources(s: &TestServer, path: &str) -> String {
    s.http(&format!("/pushaas/api/v1/resources{path}"))
}

/// A Tsuru request: basic auth, form body.
async fn tsuru(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    form: &[(&str, &str)],
) -> reqwest::Response {
    reqwest::Client::new()
        .request(method, resources(s, path))
        .basic_auth(TSURU.0, Some(TSURU.1))
        .form(form)
        .send()
        .await
        .unwrap()
}

/// A push-stream `/sub` stream, message by message (the JSON template).
struct Sub {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Sub {
    async fn open(url: String) -> Self {
        let res = reqwest::get(url).await.unwrap();
        assert_eq!(res.status(), 200);
        Self {
            body: Box::pin(res.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next message, or `None` when the stream ends.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.buf.find('}') {
                let msg: String = self.buf.drain(..=i).collect();
                return Some(serde_json::from_str(&msg).unwrap());
            }
            let chunk = tokio::time::timeout(WAIT, self.body.next())
                .await
                .expect("no message in time")?
                .unwrap();
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

/// Creates instance `name` as Tsuru does, with the one plan.
async fn create(s: &TestServer, name: &str) {
    let form = [
        ("name", name),
        ("plan", "small"),
        ("team", "t"),
        ("user", "u"),
    ];
    let res = tsuru(s, reqwest::Method::POST, "", &form).await;
    assert_eq!(res.status(), 201, "creating {name}");
}

#[tokio::test]
async fn tsuru_creates_binds_and_removes_an_instance() {
    let s = server().await;
    let none = reqwest::Client::new()
        .get(resources(&s, "/plans"))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401, "Tsuru's credentials are required");

    let plans = json_of(tsuru(&s, reqwest::Method::GET, "/plans", &[]).await).await;
    assert_eq!(plans[0]["name"], "small");

    let create = [
        ("name", "chat"),
        ("plan", "small"),
        ("team", "core"),
        ("user", "ana@example.com"),
    ];
    let res = tsuru(&s, reqwest::Method::POST, "", &create).await;
    assert_eq!(res.status(), 201);
    let res = tsuru(&s, reqwest::Method::POST, "", &create).await;
    assert_eq!(res.status(), 409);
    assert_eq!(json_of(res).await["code"], 22);
    for bad in [[("name", "a/b")], [("name", "")], [("name", "plans")]] {
        let res = tsuru(&s, reqwest::Method::POST, "", &bad).await;
        assert_eq!(res.status(), 400, "{bad:?}");
        assert_eq!(json_of(res).await["code"], 23);
    }
    let huge = reqwest::Client::new()
        .post(resources(&s, ""))
        .basic_auth(TSURU.0, Some(TSURU.1))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("name=big&team={}", "t".repeat(3 << 20)))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413, "over the body limit");
    assert_eq!(json_of(huge).await["code"], 23);
    let res = tsuru(
        &s,
        reqwest::Method::POST,
        "",
        &[("name", "x"), ("plan", "huge")],
    )
    .await;
    assert_eq!(res.status(), 400, "unknown plan");

    let shown = json!([{"name": "chat", "plan": "small", "team": "core",
                        "user": "ana@example.com", "status": "running"}]);
    assert_eq!(
        json_of(tsuru(&s, reqwest::Method::GET, "/chat", &[]).await).await,
        shown
    );
    assert_eq!(
        json_of(tsuru(&s, reqwest::Method::GET, "/instances", &[]).await).await,
        shown
    );
    assert_eq!(
        tsuru(&s, reqwest::Method::GET, "/chat/status", &[])
            .await
            .status(),
        204
    );
    assert_eq!(
        tsuru(&s, reqwest::Method::PUT, "/chat", &[]).await.status(),
        404,
        "update is not implemented, as Tsuru reads 404"
    );
    let res = tsuru(&s, reqwest::Method::GET, "/nope", &[]).await;
    assert_eq!(res.status(), 404);
    assert_eq!(json_of(res).await["code"], 11);

    // Bind: the app gets where its push-api is and how to log in.
    let bind = [("app-host", "web.example.com"), ("app-name", "web")];
    let res = tsuru(&s, reqwest::Method::POST, "/chat/bind-app", &bind).await;
    assert_eq!(res.status(), 201);
    let env = json_of(res).await;
    let endpoint = env["PUSHAAS_ENDPOINT"].as_str().unwrap().to_owned();
    assert_eq!(endpoint, s.http("/pushaas/instances/chat/push-api"));
    assert_eq!(env["PUSHAAS_USERNAME"], "chat");
    let password = env["PUSHAAS_PASSWORD"].as_str().unwrap().to_owned();
    assert!(password.len() >= 20, "{password}");
    let again = tsuru(&s, reqwest::Method::POST, "/chat/bind-app", &bind).await;
    assert_eq!(again.status(), 500);
    assert_eq!(json_of(again).await["code"], 101);
    let unit = tsuru(
        &s,
        reqwest::Method::POST,
        "/chat/bind",
        &[("app-name", "web"), ("unit-host", "10.0.0.7")],
    )
    .await;
    assert_eq!(unit.status(), 201);
    assert_eq!(json_of(unit).await["PUSHAAS_PASSWORD"], password.as_str());

    // The app publishes with its credentials; only the instance's
    // subscribers hear it.
    let mut mine = Sub::open(s.http("/pushaas/instances/chat/ps/sub/room")).await;
    let mut default_app = Sub::open(s.http("/ps/sub/room")).await;
    let publish = |user: &'static str, password: String| {
        let url = format!("{endpoint}/api/v1/messages");
        async move {
            reqwest::Client::new()
                .post(url)
                .basic_auth(user, Some(password))
                .body(r#"{"channels":["room"],"content":"hi there"}"#)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(publish("chat", "wrong".into()).await, 401);
    assert_eq!(
        publish("app", "abc123".into()).await,
        401,
        "the default push-api credentials open no instance"
    );
    // A WebSocket subscriber of the instance: the upgrade passes through the
    // instance's routes too.
    let mut ws = s.ws("/pushaas/instances/chat/ps/ws/room").await;
    assert_eq!(publish("chat", password.clone()).await, 204);
    let w: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(w["text"], "hi%20there");
    let m = mine.next().await.unwrap();
    assert_eq!(
        (m["channel"].clone(), m["text"].clone()),
        (json!("room"), json!("hi%20there"))
    );
    // The default namespace's "room" is another channel: a message there
    // arrives, the instance's does not.
    s.publish(json!({"channel": "room", "data": "default only"}))
        .await;
    let d = default_app.next().await.unwrap();
    assert_eq!(d["channel"], "room");
    assert_ne!(d["text"], "hi%20there");

    // Its push-stream publisher wants the instance's credentials.
    let ps_pub = s.http("/pushaas/instances/chat/ps/pub?id=room");
    let res = reqwest::Client::new()
        .post(&ps_pub)
        .body("anyone")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = reqwest::Client::new()
        .post(&ps_pub)
        .basic_auth("chat", Some(&password))
        .body("agent")
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let m = mine.next().await.unwrap();
    assert_eq!(m["text"], "agent");
    // Its WebSocket publishes a client's frames only with them too.
    ws.send(Message::text("ws anyone")).await.unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("chat:{password}"));
    let request = format!(
        "GET /pushaas/instances/chat/ps/ws/room HTTP/1.1\r\nHost: {}\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Basic {auth}\r\n\r\n",
        s.addr
    );
    let (mut agent, head) = RawWs::open(s.addr, request.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    agent.send(1, b"ws agent").await;
    assert_eq!(mine.next().await.unwrap()["text"], "ws agent");

    // Its push-api answers for its own channels and points at its push-stream.
    let config: Value = fetch_json(
        reqwest::Client::new()
            .get(format!("{endpoint}/api/v1/config"))
            .basic_auth("chat", Some(&password)),
    )
    .await;
    assert_eq!(
        config["pushStream"]["url"],
        s.http("/pushaas/instances/chat/ps")
    );

    // Unbind, then remove: the routes go, the subscriber is let go.
    let res = tsuru(&s, reqwest::Method::DELETE, "/chat/bind-app", &bind).await;
    assert_eq!(res.status(), 200);
    let res = tsuru(&s, reqwest::Method::DELETE, "/chat/bind-app", &bind).await;
    assert_eq!(res.status(), 404);
    assert_eq!(json_of(res).await["code"], 111);
    assert_eq!(
        tsuru(&s, reqwest::Method::DELETE, "/chat", &[])
            .await
            .status(),
        200
    );
    // push-stream tells subscribers of a deleted channel (id -2), then ends.
    let last = mine.next().await.unwrap();
    assert_eq!(last["id"], -2, "{last}");
    assert_eq!(
        publish("chat", password.clone()).await,
        404,
        "a removed instance's routes are gone"
    );
    let res = tsuru(&s, reqwest::Method::DELETE, "/chat", &[]).await;
    assert_eq!(json_of(res).await["code"], 32);
    assert_eq!(
        tsuru(&s, reqwest::Method::GET, "/chat/status", &[])
            .await
            .status(),
        404
    );
    let res = tsuru(&s, reqwest::Method::GET, "/instances", &[]).await;
    assert_eq!(res.status(), 404, "no instances left");
    assert_eq!(json_of(res).await["code"], 11);
}

#[tokio::test]
async fn a_recreated_instance_gets_new_credentials() {
    let s = server().await;
    let bind = [("app-host", "h"), ("app-name", "web")];
    let mut passwords = Vec::new();
    for _ in 0..2 {
        create(&s, "again").await;
        let env = json_of(tsuru(&s, reqwest::Method::POST, "/again/bind-app", &bind).await).await;
        passwords.push(env["PUSHAAS_PASSWORD"].as_str().unwrap().to_owned());
        let auth = reqwest::Client::new()
            .get(s.http("/pushaas/instances/again/push-api/api/v1/auth"))
            .basic_auth("again", Some(passwords.last().unwrap()))
            .send()
            .await
            .unwrap();
        assert_eq!(auth.status(), 200);
        assert_eq!(
            tsuru(&s, reqwest::Method::DELETE, "/again", &[])
                .await
                .status(),
            200
        );
    }
    assert_ne!(passwords[0], passwords[1]);
    let old = reqwest::Client::new()
        .get(s.http("/pushaas/instances/again/push-api/api/v1/auth"))
        .basic_auth("again", Some(&passwords[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 404);
}

/// An instance's `published_messages` (its `/channels-stats` summary and its
/// push-api's global stats) counts its own messages, not the server's: the
/// default app's traffic is another tenant's.
#[tokio::test]
async fn an_instance_counts_only_its_own_published_messages() {
    let s = server().await;
    let post = |url: String, auth: Option<(&'static str, String)>| async move {
        let mut req = reqwest::Client::new().post(url).body("x");
        if let Some((user, password)) = auth {
            req = req.basic_auth(user, Some(password));
        }
        assert_eq!(req.send().await.unwrap().status(), 200);
    };
    for _ in 0..3 {
        post(s.http("/ps/pub?id=busy"), None).await;
    }
    create(&s, "own").await;
    let bind = [("app-host", "h"), ("app-name", "web")];
    let env = json_of(tsuru(&s, reqwest::Method::POST, "/own/bind-app", &bind).await).await;
    let password = env["PUSHAAS_PASSWORD"].as_str().unwrap().to_owned();
    let published = |path: &'static str| {
        let url = s.http(path);
        async move {
            let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            v["published_messages"].as_u64().unwrap()
        }
    };
    let own_stats = "/pushaas/instances/own/ps/channels-stats";
    assert_eq!(published(own_stats).await, 0);
    for _ in 0..2 {
        let url = s.http("/pushaas/instances/own/ps/pub?id=room");
        post(url, Some(("own", password.clone()))).await;
    }
    assert_eq!(published(own_stats).await, 2);
    assert_eq!(published("/ps/channels-stats").await, 3);
    let global: Value = fetch_json(
        reqwest::Client::new()
            .get(s.http("/pushaas/instances/own/push-api/api/v1/stats/global"))
            .basic_auth("own", Some(&password)),
    )
    .await;
    assert_eq!(global["all"][0]["published_messages"], 2, "{global}");
}

/// An instance's push-api answers `<endpoint>` and `<endpoint>/` with the
/// redirect to its admin page, as the default push-api does.
#[tokio::test]
async fn an_instance_push_api_redirects_to_its_admin_page() {
    let s = server().await;
    create(&s, "adm").await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (path, location) in [("", "./push-api/admin"), ("/", "admin")] {
        let url = s.http(&format!("/pushaas/instances/adm/push-api{path}"));
        let res = no_redirects.get(&url).send().await.unwrap();
        assert_eq!(res.status(), 301, "{url}");
        assert_eq!(res.headers()["location"], location, "{url}");
        let page = reqwest::get(&url).await.unwrap();
        assert_eq!(page.url().path(), "/pushaas/instances/adm/push-api/admin");
        assert_eq!(page.status(), 200);
        assert!(page.text().await.unwrap().contains("<html"));
    }
}

/// pushaas's `InstanceForm.Validate`: the plan must be `small` and name,
/// team and user given, else 400 code 23; listing no instances is its
/// `InstanceRetrievalNotFound`, 404 code 11.
#[tokio::test]
async fn creating_wants_every_field_and_an_empty_list_is_not_found() {
    let s = server().await;
    let res = tsuru(&s, reqwest::Method::GET, "/instances", &[]).await;
    assert_eq!(res.status(), 404);
    assert_eq!(
        json_of(res).await,
        json!({"code": 11, "message": "Instance not found", "fields": ""})
    );
    let full = [
        ("name", "f"),
        ("plan", "small"),
        ("team", "t"),
        ("user", "u"),
    ];
    for missing in ["plan", "team", "user"] {
        let form: Vec<(&str, &str)> = full
            .iter()
            .filter(|(k, _)| *k != missing)
            .copied()
            .collect();
        let res = tsuru(&s, reqwest::Method::POST, "", &form).await;
        assert_eq!(res.status(), 400, "without {missing}");
        assert_eq!(
            json_of(res).await,
            json!({"code": 23, "message": "Invalid instance data", "fields": ""})
        );
        let mut empty = full;
        empty.iter_mut().find(|(k, _)| *k == missing).unwrap().1 = "";
        let res = tsuru(&s, reqwest::Method::POST, "", &empty).await;
        assert_eq!(res.status(), 400, "with an empty {missing}");
    }
    assert_eq!(
        tsuru(&s, reqwest::Method::POST, "", &full).await.status(),
        201
    );
    let res = tsuru(&s, reqwest::Method::GET, "/instances", &[]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(json_of(res).await[0]["name"], "f");
}

/// Units bind as pushaas's `BindUnit`/`UnbindUnit` answer: only for an app
/// bound to the instance (404 code 120 / 130), a missing instance being its
/// bind failure (500 code 122), and an unknown unit 404 code 131.
#[tokio::test]
async fn units_bind_only_for_a_bound_app() {
    let s = server().await;
    let unit = |app: &'static str, host: &'static str| {
        [("app-name", app), ("app-host", "h"), ("unit-host", host)]
    };
    let res = tsuru(&s, reqwest::Method::POST, "/ghost/bind", &unit("web", "u1")).await;
    assert_eq!(res.status(), 500);
    assert_eq!(
        json_of(res).await,
        json!({"code": 122, "message": "Failed to bind unit to service", "fields": ""})
    );
    create(&s, "units").await;
    let res = tsuru(&s, reqwest::Method::POST, "/units/bind", &unit("web", "u1")).await;
    assert_eq!(res.status(), 404);
    assert_eq!(
        json_of(res).await,
        json!({"code": 120, "message": "App is not bound to service, could not bind unit",
               "fields": ""})
    );
    let res = tsuru(
        &s,
        reqwest::Method::DELETE,
        "/units/bind",
        &unit("web", "u1"),
    )
    .await;
    assert_eq!(res.status(), 404);
    assert_eq!(
        json_of(res).await,
        json!({"code": 130, "message": "App is not bound to service, could not unbind unit",
               "fields": ""})
    );

    let bind = [("app-host", "web.example.com"), ("app-name", "web")];
    let res = tsuru(&s, reqwest::Method::POST, "/units/bind-app", &bind).await;
    assert_eq!(res.status(), 201);
    for _ in 0..2 {
        let res = tsuru(&s, reqwest::Method::POST, "/units/bind", &unit("web", "u1")).await;
        assert_eq!(
            res.status(),
            201,
            "binding a unit again is fine, as in pushaas"
        );
        assert_eq!(json_of(res).await["PUSHAAS_USERNAME"], "units");
    }
    let res = tsuru(
        &s,
        reqwest::Method::DELETE,
        "/units/bind",
        &unit("web", "u2"),
    )
    .await;
    assert_eq!(res.status(), 404);
    assert_eq!(
        json_of(res).await,
        json!({"code": 131, "message": "Unit is not bound to service", "fields": ""})
    );
    let res = tsuru(
        &s,
        reqwest::Method::DELETE,
        "/units/bind",
        &unit("web", "u1"),
    )
    .await;
    assert_eq!(res.status(), 200);
    let res = tsuru(
        &s,
        reqwest::Method::DELETE,
        "/units/bind",
        &unit("web", "u1"),
    )
    .await;
    assert_eq!(json_of(res).await["code"], 131, "unbound already");
    // Without `app-name`, the app is the first label of `app-host`.
    let res = tsuru(&s, reqwest::Method::POST, "/units/bind", &unit("web", "u3")).await;
    assert_eq!(res.status(), 201);
    let by_host = [("app-host", "web.example.com"), ("unit-host", "u3")];
    let res = tsuru(&s, reqwest::Method::DELETE, "/units/bind", &by_host).await;
    assert_eq!(res.status(), 200);
}

/// Every JSON reply is gin's `c.JSON`: `application/json; charset=utf-8`,
/// fields in the Go structs' order; the plan is pushaas's own.
#[tokio::test]
async fn json_replies_are_gins() {
    let s = server().await;
    let res = tsuru(&s, reqwest::Method::GET, "/plans", &[]).await;
    assert_eq!(
        res.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    assert_eq!(
        res.text().await.unwrap(),
        r#"[{"name":"small","description":"The only plan"}]"#
    );
    create(&s, "gin").await;
    let bind = [("app-host", "h"), ("app-name", "web")];
    for (method, path, form) in [
        (reqwest::Method::GET, "/gin", &[][..]),
        (reqwest::Method::GET, "/instances", &[][..]),
        (reqwest::Method::POST, "/gin/bind-app", &bind[..]),
        (reqwest::Method::POST, "/gin/bind", &bind[..]),
    ] {
        let res = tsuru(&s, method, path, form).await;
        assert!(res.status().is_success(), "{path}: {}", res.status());
        assert_eq!(
            res.headers()["content-type"],
            "application/json; charset=utf-8",
            "{path}"
        );
    }
}

/// A name that is not UTF-8 once percent-decoded names no instance: each
/// route answers its own not-found as pushaas (gin hands it the name), never
/// Herald's native JSON error.
#[tokio::test]
async fn a_name_that_is_not_utf8_is_no_instance() {
    let s = server().await;
    let form = [("app-name", "app"), ("app-host", "app.example")];
    for (method, path, status, code) in [
        (reqwest::Method::GET, "/%FF", 404, 11),
        (reqwest::Method::DELETE, "/%FF", 404, 32),
        (reqwest::Method::GET, "/%FF/status", 404, 41),
        (reqwest::Method::POST, "/%FF/bind-app", 404, 100),
        (reqwest::Method::DELETE, "/%FF/bind-app", 404, 110),
    ] {
        let res = tsuru(&s, method.clone(), path, &form).await;
        assert_eq!(res.status(), status, "{method} {path}");
        let body = json_of(res).await;
        assert_eq!(body["code"], code, "{method} {path}: {body}");
        assert_eq!(body["fields"], "", "pushaas's error shape");
    }
    let res = reqwest::get(s.http("/pushaas/instances/%FF/ps/sub/x"))
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(json_of(res).await["code"], 11);
}

/// Without `pushaas.public_url` the endpoint handed to a bound app is built
/// from the request's `Host`, but only a plain `host[:port]`; a bind refused
/// for it binds nothing.
#[tokio::test]
async fn a_bind_with_a_forged_host_is_refused_and_binds_nothing() {
    let s = server().await;
    create(&s, "hosted").await;
    let bind = [("app-host", "web.example.com"), ("app-name", "web")];
    let bind_with_host = |path: &'static str, host: &'static str| {
        reqwest::Client::new()
            .post(resources(&s, path))
            .basic_auth(TSURU.0, Some(TSURU.1))
            .header("host", host)
            .form(&bind)
            .send()
    };
    for host in ["evil.example/x?", "u@evil.example"] {
        let res = bind_with_host("/hosted/bind-app", host).await.unwrap();
        assert_eq!(res.status(), 400, "{host}");
        assert_eq!(json_of(res).await["code"], 102);
    }
    let res = bind_with_host("/hosted/bind-app", "push.example:9000")
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "not bound by the refused attempts");
    let env = json_of(res).await;
    assert_eq!(
        env["PUSHAAS_ENDPOINT"],
        "http://push.example:9000/pushaas/instances/hosted/push-api"
    );
    let res = bind_with_host("/hosted/bind", "evil.example/x?")
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(json_of(res).await["code"], 122);
}
