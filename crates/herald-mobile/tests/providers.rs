//! APNs, FCM and Web Push providers against local servers that speak the
//! real protocols (herald-testkit's MockApns, MockFcm and MockPushService).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_mobile::provider::apns::{Apns, ApnsConfig};
use herald_mobile::provider::fcm::{Fcm, FcmConfig};
use herald_mobile::provider::webpush::{WebPush, WebPushConfig};
use herald_mobile::{Provider, Push, Rejection, Sent};
use herald_testkit::apns::{ApnsKey, MockApns};
use herald_testkit::fcm::{FcmError, MockFcm};
use herald_testkit::webpush::{MockPushService, Subscription};
use serde_json::{Value, json};
use tokio::task::JoinSet;

/// Bound on every wait.
const STEP: Duration = Duration::from_secs(10);
const APP: &str = "game";

fn push(token: &str, payload: Value) -> Push {
    Push {
        app: APP.into(),
        token: token.into(),
        payload,
        expires_at: None,
        collapse_id: None,
        high_priority: None,
        dry_run: false,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits for the wall clock to pass `second`: provider tokens carry `iat` in
/// whole seconds and ES256 signing is deterministic, so only a token minted
/// in a later second differs from the cached one.
async fn clock_past(second: u64) {
    while now() <= second {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `n` pushes at once, to tokens `t0`…, and returns every result.
async fn send_concurrently(provider: Arc<dyn Provider>, n: usize) -> Vec<Result<Sent, Rejection>> {
    let mut sends = JoinSet::new();
    for i in 0..n {
        let provider = provider.clone();
        sends.spawn(async move {
            provider
                .send(&push(&format!("t{i}"), json!({"aps": {"alert": "hi"}})))
                .await
        });
    }
    sends.join_all().await
}

// --- APNs ---

fn apns_config(mock: &MockApns, key_id: &str, key_file: std::path::PathBuf) -> ApnsConfig {
    ApnsConfig {
        key_file,
        key_id: key_id.into(),
        team_id: "TEAM1".into(),
        topic: "com.example.game".into(),
        push_type: "alert".into(),
        endpoint: Some(mock.url()),
        ca_file: Some(mock.ca_pem_path()),
        timeout: STEP,
    }
}

async fn apns() -> (MockApns, Arc<Apns>) {
    let mock = MockApns::start().await;
    let config = apns_config(&mock, "KEY1", mock.issue_key("KEY1", "TEAM1"));
    let apns = Apns::new(&BTreeMap::from([(APP.to_owned(), config)]), false).unwrap();
    (mock, Arc::new(apns))
}

#[tokio::test]
async fn apns_sends_headers_body_and_a_verified_provider_token() {
    let (mock, apns) = apns().await;
    let payload = json!({"aps": {"alert": "Your turn"}, "M": {"match": 7}});
    let mut full = push("a1b2c3", payload.clone());
    full.expires_at = Some(1_900_000_000);
    full.collapse_id = Some("match-7".into());
    full.high_priority = Some(true);
    let sent = apns.send(&full).await.unwrap();

    let mut low = push("d4e5f6", payload.clone());
    low.high_priority = Some(false);
    apns.send(&low).await.unwrap();
    apns.send(&push("0789ab", payload.clone())).await.unwrap();

    let requests = mock.wait_for(3, STEP).await;
    let first = &requests[0];
    assert_eq!((first.token.as_str(), first.status), ("a1b2c3", 200));
    assert_eq!(first.body, payload);
    assert_eq!(first.header("apns-topic"), Some("com.example.game"));
    assert_eq!(first.header("apns-push-type"), Some("alert"));
    assert_eq!(first.header("apns-priority"), Some("10"));
    assert_eq!(first.header("apns-expiration"), Some("1900000000"));
    assert_eq!(first.header("apns-collapse-id"), Some("match-7"));
    assert!(
        first
            .header("authorization")
            .unwrap()
            .to_lowercase()
            .starts_with("bearer ")
    );
    // The mock checked the ES256 signature, kid and iss of every token.
    assert_eq!(mock.distinct_jwts(), 1);
    assert_eq!(
        sent.id.as_ref().map(String::len),
        Some(36),
        "apns-id is a UUID: {sent:?}"
    );

    assert_eq!(requests[1].header("apns-priority"), Some("5"));
    let bare = &requests[2];
    for absent in ["apns-priority", "apns-expiration", "apns-collapse-id"] {
        assert_eq!(bare.header(absent), None, "{absent}");
    }
}

#[tokio::test]
async fn apns_reuses_one_provider_token_across_sends() {
    let (mock, apns) = apns().await;
    let minted_by = now();
    let results = send_concurrently(apns.clone(), 6).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    clock_past(minted_by).await;
    let results = send_concurrently(apns, 6).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(mock.wait_for(12, STEP).await.len(), 12);
    assert_eq!(
        mock.distinct_jwts(),
        1,
        "a new token would carry a later iat"
    );
}

#[tokio::test]
async fn apns_unregistered_and_bad_device_token_are_invalid_tokens() {
    let (mock, apns) = apns().await;
    mock.respond("gone", 410, "Unregistered");
    mock.respond("bad", 400, "BadDeviceToken");
    for (token, status, reason) in [
        ("gone", 410, "Unregistered"),
        ("bad", 400, "BadDeviceToken"),
    ] {
        let r = apns
            .send(&push(token, json!({"aps": {}})))
            .await
            .unwrap_err();
        assert_eq!((r.status, r.reason.as_str()), (Some(status), reason));
        assert!(r.invalid_token, "{r:?}");
        assert_eq!(r.retry_after, None, "never retried: {r:?}");
    }
}

#[tokio::test]
async fn apns_too_many_requests_is_retryable() {
    let (mock, apns) = apns().await;
    mock.respond("busy", 429, "TooManyRequests");
    let r = apns
        .send(&push("busy", json!({"aps": {}})))
        .await
        .unwrap_err();
    assert_eq!(
        (r.status, r.reason.as_str(), r.invalid_token),
        (Some(429), "TooManyRequests", false)
    );
    assert_eq!(r.retry_after, Some(Duration::ZERO));
}

#[tokio::test]
async fn apns_refuses_an_oversized_payload_without_sending() {
    let (mock, apns) = apns().await;
    let big = push("a1", json!({"aps": {"alert": "x".repeat(4100)}}));
    let r = apns.send(&big).await.unwrap_err();
    assert_eq!(
        (r.status, r.reason.as_str(), r.retry_after),
        (None, "PayloadTooLarge", None)
    );
    apns.send(&push("a2", json!({"aps": {}}))).await.unwrap();
    let requests = mock.wait_for(1, STEP).await;
    assert_eq!(requests.len(), 1, "only the small push went out");
    assert_eq!(requests[0].token, "a2");
}

#[tokio::test]
async fn apns_refuses_an_unknown_app() {
    let (mock, apns) = apns().await;
    assert!(apns.serves(APP) && !apns.serves("other"));
    let mut other = push("a1", json!({"aps": {}}));
    other.app = "other".into();
    let r = apns.send(&other).await.unwrap_err();
    assert_eq!(
        (r.reason.as_str(), r.retry_after, r.invalid_token),
        ("UnknownApp", None, false)
    );
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn apns_expired_provider_token_is_retryable_and_sending_goes_on() {
    let (mock, apns) = apns().await;
    let minted_by = now();
    mock.respond("stale", 403, "ExpiredProviderToken");
    let r = apns
        .send(&push("stale", json!({"aps": {}})))
        .await
        .unwrap_err();
    assert_eq!(
        (r.status, r.reason.as_str(), r.invalid_token),
        (Some(403), "ExpiredProviderToken", false)
    );
    assert_eq!(r.retry_after, Some(Duration::ZERO));
    clock_past(minted_by).await;
    apns.send(&push("fresh", json!({"aps": {}}))).await.unwrap();
    let requests = mock.wait_for(2, STEP).await;
    assert_eq!(requests[1].status, 200);
    assert_ne!(
        requests[0].header("authorization"),
        requests[1].header("authorization")
    );
    assert_eq!(mock.distinct_jwts(), 2, "the next send minted a new token");
}

#[tokio::test]
async fn apns_untrusted_key_is_refused_as_invalid_provider_token() {
    let mock = MockApns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("AuthKey_ROGUE.p8");
    std::fs::write(&key_file, ApnsKey::generate().private_pem).unwrap();
    let config = apns_config(&mock, "ROGUE", key_file);
    let apns = Apns::new(&BTreeMap::from([(APP.to_owned(), config)]), false).unwrap();
    let r = apns
        .send(&push("a1", json!({"aps": {}})))
        .await
        .unwrap_err();
    assert_eq!(
        (r.status, r.reason.as_str(), r.retry_after),
        (Some(403), "InvalidProviderToken", None)
    );
    assert!(!r.invalid_token);
}

#[tokio::test]
async fn apns_unreachable_is_a_retryable_connection_error() {
    let mock = MockApns::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = apns_config(&mock, "KEY1", mock.issue_key("KEY1", "TEAM1"));
    config.endpoint = Some(format!("https://{closed}"));
    let apns = Apns::new(&BTreeMap::from([(APP.to_owned(), config)]), false).unwrap();
    let r = apns
        .send(&push("a1", json!({"aps": {}})))
        .await
        .unwrap_err();
    assert_eq!(
        (r.status, r.reason.as_str(), r.retry_after),
        (None, "ConnectionError", Some(Duration::ZERO))
    );
}

// --- FCM ---

async fn fcm() -> (MockFcm, Arc<Fcm>) {
    let mock = MockFcm::start().await;
    let config = FcmConfig {
        service_account_file: mock.write_service_account("proj-1"),
        credentials_json: None,
        project_id: None,
        endpoint: Some(mock.url()),
        ca_file: Some(mock.ca_pem_path()),
        timeout: STEP,
    };
    let fcm = Fcm::new(&BTreeMap::from([(APP.to_owned(), config)])).unwrap();
    (mock, Arc::new(fcm))
}

#[tokio::test]
async fn fcm_exchanges_one_access_token_for_many_concurrent_sends() {
    let (mock, fcm) = fcm().await;
    let results = send_concurrently(fcm, 16).await;
    for result in &results {
        let id = result.as_ref().unwrap().id.as_deref().unwrap();
        assert!(id.starts_with("projects/proj-1/messages/"), "{id}");
    }
    let requests = mock.wait_for(16, STEP).await;
    assert!(
        requests
            .iter()
            .all(|r| r.status == 200 && r.project == "proj-1")
    );
    assert_eq!(mock.token_requests(), 1);
}

#[tokio::test]
async fn fcm_a_failed_token_exchange_is_shared_by_the_sends_waiting_for_it() {
    let (mock, fcm) = fcm().await;
    mock.fail_token_requests(Some(503));
    // One send starts the exchange; the other fifteen wait for it.
    let results = send_concurrently(fcm.clone(), 16).await;
    for result in &results {
        let r = result.as_ref().unwrap_err();
        assert_eq!(
            (r.status, r.reason.as_str(), r.retry_after),
            (Some(503), "AuthError", Some(Duration::ZERO))
        );
    }
    assert_eq!(mock.token_requests(), 1, "one exchange, its failure shared");
    assert!(mock.requests().is_empty());

    // A send that did not wait for that exchange tries again.
    mock.fail_token_requests(None);
    fcm.send(&push("t-after", json!({}))).await.unwrap();
    assert_eq!(mock.token_requests(), 2);
}

#[tokio::test]
async fn fcm_unregistered_and_invalid_registration_are_invalid_tokens() {
    let (mock, fcm) = fcm().await;
    mock.respond(
        "gone",
        FcmError::new(404, "UNREGISTERED", "Requested entity was not found."),
    );
    let not_valid = "The registration token is not a valid FCM registration token";
    mock.respond("mangled", FcmError::new(400, "INVALID_ARGUMENT", not_valid));
    mock.respond(
        "bad-data",
        FcmError::new(
            400,
            "INVALID_ARGUMENT",
            "Invalid value at 'message.data[0].value'",
        ),
    );

    let r = fcm.send(&push("gone", json!({}))).await.unwrap_err();
    assert_eq!(
        (r.status, r.reason.as_str(), r.invalid_token),
        (Some(404), "UNREGISTERED", true)
    );
    assert_eq!(r.retry_after, None);
    let r = fcm.send(&push("mangled", json!({}))).await.unwrap_err();
    assert_eq!(
        (r.reason.as_str(), r.invalid_token),
        ("INVALID_ARGUMENT", true)
    );
    let r = fcm.send(&push("bad-data", json!({}))).await.unwrap_err();
    assert_eq!(
        (r.reason.as_str(), r.invalid_token),
        ("INVALID_ARGUMENT", false)
    );
}

#[tokio::test]
async fn fcm_quota_exceeded_honours_retry_after() {
    let (mock, fcm) = fcm().await;
    mock.respond(
        "busy",
        FcmError::new(429, "QUOTA_EXCEEDED", "Quota exceeded.").retry_after(17),
    );
    let r = fcm.send(&push("busy", json!({}))).await.unwrap_err();
    assert_eq!(
        (r.status, r.reason.as_str(), r.invalid_token),
        (Some(429), "QUOTA_EXCEEDED", false)
    );
    assert_eq!(r.retry_after, Some(Duration::from_secs(17)));
}

#[tokio::test]
async fn fcm_unauthorized_gets_a_new_access_token_on_the_next_send() {
    let (mock, fcm) = fcm().await;
    fcm.send(&push("t1", json!({}))).await.unwrap();
    mock.revoke_access_tokens();
    let r = fcm.send(&push("t2", json!({}))).await.unwrap_err();
    assert_eq!(
        (r.status, r.reason.as_str()),
        (Some(401), "UNAUTHENTICATED")
    );
    assert_eq!(r.retry_after, Some(Duration::ZERO));
    assert_eq!(mock.token_requests(), 1);
    fcm.send(&push("t2", json!({}))).await.unwrap();
    assert_eq!(mock.token_requests(), 2);
}

#[tokio::test]
async fn fcm_takes_the_service_account_inline() {
    let mock = MockFcm::start().await;
    let json = std::fs::read_to_string(mock.write_service_account("proj-inline")).unwrap();
    let config = FcmConfig {
        service_account_file: Default::default(),
        credentials_json: Some(json),
        project_id: None,
        endpoint: Some(mock.url()),
        ca_file: Some(mock.ca_pem_path()),
        timeout: STEP,
    };
    let fcm = Fcm::new(&BTreeMap::from([(APP.to_owned(), config.clone())])).unwrap();
    let sent = fcm.send(&push("t1", json!({}))).await.unwrap();
    assert!(
        sent.id
            .unwrap()
            .starts_with("projects/proj-inline/messages/")
    );
    let broken = FcmConfig {
        credentials_json: Some("{not json".into()),
        ..config
    };
    let err = Fcm::new(&BTreeMap::from([(APP.to_owned(), broken)]))
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("credentials_json"), "{err}");
}

#[tokio::test]
async fn fcm_dry_run_sets_validate_only() {
    let (mock, fcm) = fcm().await;
    let mut dry = push("t1", json!({}));
    dry.dry_run = true;
    fcm.send(&dry).await.unwrap();
    fcm.send(&push("t2", json!({}))).await.unwrap();
    let requests = mock.wait_for(2, STEP).await;
    assert_eq!(requests[0].body["validate_only"], true);
    assert_eq!(requests[1].body.get("validate_only"), None);
}

#[tokio::test]
async fn fcm_maps_ttl_collapse_and_priority_keeping_the_payloads_android_keys() {
    let (mock, fcm) = fcm().await;
    let payload = json!({
        "notification": {"title": "Your turn"},
        "data": {"match": "7"},
        "android": {"priority": "high", "notification": {"channel_id": "turns"}},
    });
    let mut p = push("t1", payload);
    p.expires_at = Some(now() + 300);
    p.collapse_id = Some("match-7".into());
    p.high_priority = Some(false);
    fcm.send(&p).await.unwrap();

    let message = &mock.wait_for(1, STEP).await[0].body["message"];
    assert_eq!(message["token"], "t1");
    assert_eq!(message["data"], json!({"match": "7"}));
    let android = &message["android"];
    assert_eq!(
        android["priority"], "high",
        "the payload's own priority wins"
    );
    assert_eq!(android["notification"], json!({"channel_id": "turns"}));
    assert_eq!(android["collapse_key"], "match-7");
    let ttl: u64 = android["ttl"]
        .as_str()
        .unwrap()
        .strip_suffix('s')
        .unwrap()
        .parse()
        .unwrap();
    assert!((290..=300).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn fcm_refuses_expired_pushes_and_unknown_apps_without_any_request() {
    let (mock, fcm) = fcm().await;
    let mut expired = push("t1", json!({}));
    expired.expires_at = Some(now() - 10);
    let r = fcm.send(&expired).await.unwrap_err();
    assert_eq!(
        (r.status, r.reason.as_str(), r.retry_after),
        (None, "Expired", None)
    );

    let mut other = push("t1", json!({}));
    other.app = "other".into();
    assert_eq!(fcm.send(&other).await.unwrap_err().reason, "UnknownApp");
    assert!(!fcm.serves("other") && fcm.serves(APP));

    assert_eq!(mock.token_requests(), 0);
    assert!(mock.requests().is_empty());
}

// --- Web Push ---

const SUBJECT: &str = "mailto:ops@example.com";
/// What aes128gcm adds to the data of a one-record push (RFC 8291 §4).
const OVERHEAD: usize = 103;

fn web_push_config(mock: &MockPushService, vapid_key_file: std::path::PathBuf) -> WebPushConfig {
    WebPushConfig {
        vapid_key_file,
        subject: SUBJECT.into(),
        ca_file: Some(mock.ca_pem_path()),
        timeout: STEP,
        // The mock listens on 127.0.0.1.
        allow_private_endpoints: true,
    }
}

async fn web_push() -> (MockPushService, Arc<WebPush>) {
    let mock = MockPushService::start().await;
    let config = web_push_config(&mock, mock.issue_vapid_key());
    let web_push = WebPush::new(&BTreeMap::from([(APP.to_owned(), config)])).unwrap();
    (mock, Arc::new(web_push))
}

/// A push of `data` to `subscription`, as `message::parse` makes one.
fn web(subscription: &Subscription, data: &str) -> Push {
    push(
        &subscription.endpoint,
        json!({"keys": {"p256dh": subscription.p256dh, "auth": subscription.auth}, "data": data}),
    )
}

#[tokio::test]
async fn webpush_encrypts_for_the_subscription_with_rfc_8030_headers() {
    let (mock, web_push) = web_push().await;
    let (first, second, third) = (mock.subscribe(), mock.subscribe(), mock.subscribe());
    let data = r#"{"title":"Your turn","match":7}"#;
    let mut full = web(&first, data);
    full.payload["urgency"] = "very-low".into();
    full.high_priority = Some(true);
    full.expires_at = Some(now() + 300);
    full.collapse_id = Some("match-7".into());
    let sent = web_push.send(&full).await.unwrap();

    let mut low = web(&second, "plain text, é");
    low.high_priority = Some(false);
    web_push.send(&low).await.unwrap();
    let mut empty = web(&third, "");
    empty.payload.as_object_mut().unwrap().remove("data");
    web_push.send(&empty).await.unwrap();

    let requests = mock.wait_for(3, STEP).await;
    let r = &requests[0];
    assert_eq!(r.status, 201);
    assert_eq!(r.text(), Some(data), "decrypted with the browser's keys");
    assert_eq!(r.body_len, data.len() + OVERHEAD);
    assert_eq!(r.header("content-encoding"), Some("aes128gcm"));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(
        r.header("urgency"),
        Some("very-low"),
        "the payload's urgency wins over the priority"
    );
    assert_eq!(r.header("topic"), Some("match-7"));
    let ttl: u64 = r.header("ttl").unwrap().parse().unwrap();
    assert!((290..=300).contains(&ttl), "{ttl}");
    let location = sent.id.unwrap();
    assert!(
        location.starts_with(&format!("{}/message/", mock.url())),
        "{location}"
    );

    let r = &requests[1];
    assert_eq!(r.text(), Some("plain text, é"));
    assert_eq!(r.header("urgency"), Some("low"));
    assert_eq!(r.header("ttl"), Some("2419200"), "four weeks by default");
    assert_eq!(r.header("topic"), None);
    let r = &requests[2];
    assert_eq!((r.status, r.text()), (201, Some("")));
    assert_eq!(r.header("urgency"), None);
}

#[tokio::test]
async fn webpush_vapid_is_verified_and_reused_per_origin() {
    let (here, there) = (
        MockPushService::start().await,
        MockPushService::start().await,
    );
    let key = here.issue_vapid_key();
    // A second app only so that the shared client trusts the second
    // service's certificate; every push below is the first app's.
    let apps = BTreeMap::from([
        (APP.to_owned(), web_push_config(&here, key.clone())),
        ("trust-there".to_owned(), web_push_config(&there, key)),
    ]);
    let web_push = Arc::new(WebPush::new(&apps).unwrap());
    let send_all = |subscriptions: Vec<Subscription>| {
        let web_push = web_push.clone();
        async move {
            let mut sends = JoinSet::new();
            for s in subscriptions {
                let web_push = web_push.clone();
                sends.spawn(async move { web_push.send(&web(&s, "hi")).await });
            }
            sends.join_all().await
        }
    };

    let minted_by = now();
    let batch = vec![
        here.subscribe(),
        here.subscribe(),
        here.subscribe(),
        there.subscribe(),
        there.subscribe(),
    ];
    let results = send_all(batch).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // ES256 signing is deterministic and `exp` counts whole seconds: only a
    // token signed in a later second would differ from the cached one.
    clock_past(minted_by).await;
    let results = send_all(vec![here.subscribe(), there.subscribe()]).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let (at_here, at_there) = (here.wait_for(4, STEP).await, there.wait_for(3, STEP).await);
    assert_eq!(here.distinct_jwts(), 1, "one token for one origin");
    assert_eq!(there.distinct_jwts(), 1);
    let public_key = web_push.application_server_key(APP).unwrap();
    for (mock, requests) in [(&here, &at_here), (&there, &at_there)] {
        for r in requests {
            assert_eq!(r.status, 201, "{r:?}");
            let vapid = r.vapid.as_ref().unwrap();
            assert_eq!(
                vapid.aud,
                mock.url(),
                "the audience is the service's origin"
            );
            assert_eq!(vapid.sub, SUBJECT);
            assert_eq!(vapid.key, public_key);
            let ahead = vapid.exp - now();
            assert!((11 * 3600..=12 * 3600).contains(&ahead), "{ahead}");
        }
    }
    assert_ne!(
        at_here[0].vapid.as_ref().unwrap().token,
        at_there[0].vapid.as_ref().unwrap().token
    );
}

#[tokio::test]
async fn webpush_a_key_the_service_does_not_know_is_forbidden() {
    let mock = MockPushService::start().await;
    mock.issue_vapid_key();
    let dir = tempfile::tempdir().unwrap();
    let rogue = dir.path().join("rogue.pem");
    std::fs::write(&rogue, ApnsKey::generate().private_pem).unwrap();
    let config = web_push_config(&mock, rogue);
    let web_push = WebPush::new(&BTreeMap::from([(APP.to_owned(), config)])).unwrap();
    let r = web_push
        .send(&web(&mock.subscribe(), "hi"))
        .await
        .unwrap_err();
    assert_eq!(
        (r.status, r.reason.as_str(), r.invalid_token, r.retry_after),
        (Some(403), "Forbidden", false, None)
    );
    assert!(
        r.description.contains("not the subscription's key"),
        "the push service's text: {}",
        r.description
    );
}

#[tokio::test]
async fn webpush_gone_subscriptions_are_invalid_tokens() {
    let (mock, web_push) = web_push().await;
    let gone = mock.subscribe();
    mock.respond(&gone.endpoint, 410);
    let r = web_push.send(&web(&gone, "hi")).await.unwrap_err();
    assert_eq!(
        (r.status, r.reason.as_str(), r.invalid_token, r.retry_after),
        (Some(410), "Gone", true, None)
    );

    let mut unknown = web(&mock.subscribe(), "hi");
    unknown.token = format!("{}/push/never-subscribed", mock.url());
    let r = web_push.send(&unknown).await.unwrap_err();
    assert_eq!(
        (r.status, r.reason.as_str(), r.invalid_token),
        (Some(404), "NotFound", true)
    );
    assert_eq!(mock.wait_for(2, STEP).await.len(), 2);
}

#[tokio::test]
async fn webpush_reads_little_of_an_endless_answer_and_follows_no_redirect() {
    let (mock, web_push) = web_push().await;
    // An endpoint whose error page never ends: the answer is its status,
    // after a few KiB of it, not whatever arrives until the timeout.
    let endless = mock.subscribe();
    mock.respond_endlessly(&endless.endpoint, 404);
    let r = web_push.send(&web(&endless, "hi")).await.unwrap_err();
    assert_eq!(
        (r.status, r.reason.as_str(), r.invalid_token),
        (Some(404), "NotFound", true),
        "{}",
        r.description
    );
    let read = mock.endless_bytes_sent();
    assert!(read < 256 * 1024, "{read} bytes of the endless body read");

    // A redirect is the answer, not a second POST of the push elsewhere.
    let (moved, elsewhere) = (mock.subscribe(), mock.subscribe());
    mock.redirect(&moved.endpoint, 307, &elsewhere.endpoint);
    let r = web_push.send(&web(&moved, "hi")).await.unwrap_err();
    assert_eq!(
        (r.status, r.reason.as_str(), r.invalid_token, r.retry_after),
        (Some(307), "TemporaryRedirect", false, None)
    );
    let ids: Vec<String> = mock.requests().into_iter().map(|q| q.id).collect();
    let id = |s: &Subscription| s.endpoint.rsplit_once("/push/").unwrap().1.to_owned();
    assert_eq!(
        ids,
        [id(&endless), id(&moved)],
        "nothing reached {elsewhere:?}"
    );
}

#[tokio::test]
async fn webpush_throttling_and_outages_are_retryable_the_rest_final() {
    let (mock, web_push) = web_push().await;
    let cases = [
        (
            429,
            Some(17),
            "TooManyRequests",
            Some(Duration::from_secs(17)),
        ),
        (503, None, "ServiceUnavailable", Some(Duration::ZERO)),
        (500, None, "InternalServerError", Some(Duration::ZERO)),
        (413, None, "PayloadTooLarge", None),
        (400, None, "BadRequest", None),
        (401, None, "Unauthorized", None),
    ];
    for (status, retry_after, reason, retry) in cases {
        let s = mock.subscribe();
        match retry_after {
            Some(secs) => mock.respond_retry_after(&s.endpoint, status, secs),
            None => mock.respond(&s.endpoint, status),
        }
        let r = web_push.send(&web(&s, "hi")).await.unwrap_err();
        assert_eq!(
            (r.status, r.reason.as_str(), r.retry_after, r.invalid_token),
            (Some(status), reason, retry, false)
        );
        assert!(r.description.contains("Canned answer"), "{}", r.description);
    }
}

#[tokio::test]
async fn webpush_refuses_oversized_data_locally_without_a_request() {
    let (mock, web_push) = web_push().await;
    let s = mock.subscribe();
    let most = 4096 - OVERHEAD;
    let r = web_push
        .send(&web(&s, &"x".repeat(most + 1)))
        .await
        .unwrap_err();
    assert_eq!(
        (r.status, r.reason.as_str(), r.retry_after, r.invalid_token),
        (None, "PayloadTooLarge", None, false)
    );
    web_push.send(&web(&s, &"x".repeat(most))).await.unwrap();
    let requests = mock.wait_for(1, STEP).await;
    assert_eq!(requests.len(), 1, "only the push that fits went out");
    assert_eq!(requests[0].body_len, 4096);
    assert_eq!(requests[0].plaintext.as_ref().map(Vec::len), Some(most));
}

#[tokio::test]
async fn webpush_refuses_unknown_apps_bad_endpoints_and_expired_pushes_without_a_request() {
    let (mock, web_push) = web_push().await;
    let s = mock.subscribe();
    assert!(web_push.serves(APP) && !web_push.serves("other"));

    let mut other = web(&s, "hi");
    other.app = "other".into();
    assert_eq!(
        web_push.send(&other).await.unwrap_err().reason,
        "UnknownApp"
    );

    let mut plain = web(&s, "hi");
    plain.token = s.endpoint.replace("https://", "http://");
    assert_eq!(
        web_push.send(&plain).await.unwrap_err().reason,
        "InvalidEndpoint"
    );

    let mut expired = web(&s, "hi");
    expired.expires_at = Some(now() - 10);
    let r = web_push.send(&expired).await.unwrap_err();
    assert_eq!(
        (r.status, r.reason.as_str(), r.retry_after),
        (None, "Expired", None)
    );

    let mut no_keys = web(&s, "hi");
    no_keys.payload["keys"]["auth"] = "AAAA".into();
    assert_eq!(
        web_push.send(&no_keys).await.unwrap_err().reason,
        "InvalidKeys"
    );

    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn webpush_refuses_private_endpoints_unless_the_app_allows_them() {
    let mock = MockPushService::start().await;
    let key = mock.issue_vapid_key();
    let guarded = WebPushConfig {
        allow_private_endpoints: false,
        ..web_push_config(&mock, key.clone())
    };
    let open = web_push_config(&mock, key);
    let web_push = WebPush::new(&BTreeMap::from([
        (APP.to_owned(), guarded),
        ("open".to_owned(), open),
    ]))
    .unwrap();
    let s = mock.subscribe();
    let port = s
        .endpoint
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let path = s.endpoint.split_once("/push/").unwrap().1;

    // An IP literal, its IPv4-mapped IPv6 form, and names that resolve to
    // loopback (refused by the resolver, when connecting).
    for endpoint in [
        s.endpoint.clone(),
        format!("https://[::ffff:127.0.0.1]:{port}/push/{path}"),
        format!("https://localhost:{port}/push/{path}"),
    ] {
        let mut p = web(&s, "hi");
        p.token = endpoint.clone();
        let r = web_push.send(&p).await.unwrap_err();
        assert_eq!(
            (r.status, r.reason.as_str(), r.retry_after, r.invalid_token),
            (None, "PrivateEndpoint", None, false),
            "{endpoint}: {}",
            r.description
        );
        assert!(
            r.description.contains("not a public address"),
            "{}",
            r.description
        );
    }

    // The app that allows them reaches the same service: nothing else did.
    let mut allowed = web(&s, "hi");
    allowed.app = "open".into();
    web_push.send(&allowed).await.unwrap();
    let requests = mock.wait_for(1, STEP).await;
    assert_eq!(requests.len(), 1, "only the allowed app's push went out");
    assert_eq!(requests[0].text(), Some("hi"));
}
