//! The notifications that arrive on Kafka, in the Pusher seed's JSON, turned
//! into provider-ready [`Push`]es.
//!
//! APNs: `{"DeviceToken", "Payload": {"aps": …}, "metadata", "push_expiry", "collapse_id"}`.
//! GCM: the legacy GCM JSON (`to`, `data`, `notification`, `time_to_live`, …),
//! translated to an FCM v1 `message`; a body that is already v1
//! (`{"message": {"token": …}}`) passes through.
//! Web Push: `{"subscription": {"endpoint", "keys": {"p256dh", "auth"}},
//! "payload", "ttl", "urgency", "topic", "metadata", "push_expiry"}`.

use serde::Deserialize;
use serde_json::{Map, Value, json};
use thiserror::Error;

use crate::provider::webpush::{self, DEFAULT_TTL, URGENCIES};
use crate::topic::Route;
use crate::{Platform, Push};

/// A notification read off Kafka.
#[derive(Debug, Clone)]
pub struct Notification {
    /// What the provider gets.
    pub push: Push,
    /// Which provider it goes to.
    pub platform: Platform,
    /// The producer's `metadata`, echoed in the feedback record.
    pub metadata: Map<String, Value>,
    /// The producer's `message_id` (GCM), echoed in the feedback record.
    pub message_id: Option<String>,
    /// `push_expiry`: epoch milliseconds after which it must not be sent.
    pub expiry_ms: Option<u64>,
}

/// Why a Kafka message is not a notification.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Invalid {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("no device token")]
    NoToken,
    #[error("`Payload` must be a JSON object")]
    Payload,
    #[error("no subscription endpoint")]
    NoEndpoint,
    #[error("{0}")]
    Endpoint(String),
    #[error("{0}")]
    Keys(&'static str),
    #[error("`urgency` must be one of very-low, low, normal, high")]
    Urgency,
    #[error("`topic` must be at most 32 URL-safe base64 characters")]
    Topic,
}

impl Invalid {
    /// A bounded stats key.
    pub fn key(&self) -> &'static str {
        match self {
            Invalid::Json(_) => "invalid-json",
            Invalid::NoToken => "missing-device-token",
            Invalid::Payload => "invalid-payload",
            Invalid::NoEndpoint => "missing-endpoint",
            Invalid::Endpoint(_) => "invalid-endpoint",
            Invalid::Keys(_) => "invalid-subscription-keys",
            Invalid::Urgency => "invalid-urgency",
            Invalid::Topic => "invalid-topic",
        }
    }
}

/// Reads one Kafka message value sent to `route`'s topic.
pub fn parse(route: &Route, value: &[u8]) -> Result<Notification, Invalid> {
    match route.platform {
        Platform::Apns => apns(route, value),
        Platform::Gcm => gcm(route, value),
        Platform::WebPush => web_push(route, value),
    }
}

#[derive(Deserialize)]
struct ApnsMessage {
    #[serde(rename = "DeviceToken", default)]
    device_token: String,
    #[serde(rename = "Payload", default)]
    payload: Value,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    push_expiry: Option<u64>,
    #[serde(default)]
    collapse_id: Option<String>,
}

fn apns(route: &Route, value: &[u8]) -> Result<Notification, Invalid> {
    let m: ApnsMessage = serde_json::from_slice(value).map_err(|e| Invalid::Json(e.to_string()))?;
    if m.device_token.is_empty() {
        return Err(Invalid::NoToken);
    }
    let Value::Object(mut payload) = m.payload else {
        return Err(Invalid::Payload);
    };
    let metadata = m.metadata.unwrap_or_default();
    // The seed hands the metadata to the app inside the payload, under "M".
    if !metadata.is_empty() {
        let merged = match payload.remove("M") {
            Some(Value::Object(mut own)) => {
                own.extend(metadata.clone());
                own
            }
            _ => metadata.clone(),
        };
        payload.insert("M".into(), Value::Object(merged));
    }
    let expiry_ms = m.push_expiry.filter(|&ms| ms > 0);
    Ok(Notification {
        push: Push {
            app: route.app.clone(),
            token: m.device_token,
            payload: Value::Object(payload),
            expires_at: expiry_ms.map(|ms| ms / 1000),
            collapse_id: m.collapse_id.filter(|c| !c.is_empty()),
            high_priority: None,
            dry_run: false,
        },
        platform: Platform::Apns,
        metadata,
        message_id: None,
        expiry_ms,
    })
}

#[derive(Deserialize)]
struct GcmMessage {
    #[serde(default)]
    to: String,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    collapse_key: Option<String>,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    time_to_live: Option<u64>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    data: Option<Map<String, Value>>,
    #[serde(default)]
    notification: Option<Map<String, Value>>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    push_expiry: Option<u64>,
    /// An FCM v1 message, sent as is.
    #[serde(default)]
    message: Option<Map<String, Value>>,
}

/// Legacy notification keys that FCM v1 keeps under `android.notification`.
const ANDROID_NOTIFICATION_KEYS: [&str; 9] = [
    "sound",
    "click_action",
    "body_loc_key",
    "body_loc_args",
    "title_loc_key",
    "title_loc_args",
    "icon",
    "tag",
    "color",
];

fn gcm(route: &Route, value: &[u8]) -> Result<Notification, Invalid> {
    let m: GcmMessage = serde_json::from_slice(value).map_err(|e| Invalid::Json(e.to_string()))?;
    let metadata = m.metadata.unwrap_or_default();
    let expiry_ms = m.push_expiry.filter(|&ms| ms > 0);
    let (token, payload, high_priority, expires_in) = match m.message {
        Some(mut v1) => {
            let token = match v1.remove("token") {
                Some(Value::String(t)) => t,
                _ => m.to,
            };
            (token, v1, None, None)
        }
        None => {
            let mut v1 = Map::new();
            if let Some(n) = m.notification {
                let mut top = Map::new();
                let mut android = Map::new();
                for (k, v) in n {
                    match k.as_str() {
                        "title" | "body" | "image" => {
                            top.insert(k, v);
                        }
                        "body_loc_args" | "title_loc_args" => {
                            android.insert(k, loc_args(v));
                        }
                        k2 if ANDROID_NOTIFICATION_KEYS.contains(&k2) => {
                            android.insert(k, v);
                        }
                        // `badge` and the rest have no Android field in v1.
                        _ => {}
                    }
                }
                if !top.is_empty() {
                    v1.insert("notification".into(), Value::Object(top));
                }
                if !android.is_empty() {
                    v1.insert("android".into(), json!({ "notification": android }));
                }
            }
            // As the seed does: each metadata key joins `data` at the top
            // level, unless `data` has it already (and not null).
            let mut data = m.data.unwrap_or_default();
            for (key, value) in &metadata {
                if data.get(key).is_none_or(Value::is_null) {
                    data.insert(key.clone(), value.clone());
                }
            }
            if !data.is_empty() {
                v1.insert("data".into(), Value::Object(stringified(data)));
            }
            let high = m.priority.map(|p| p.eq_ignore_ascii_case("high"));
            // `time_to_live: 0` is "now or never" for FCM to apply, as GCM
            // did: sent as `ttl: "0s"` on every try, not turned into an
            // expiry that has passed by the time a retry goes.
            let ttl = match m.time_to_live {
                Some(0) => {
                    if let Value::Object(android) = v1
                        .entry("android")
                        .or_insert_with(|| Value::Object(Map::new()))
                    {
                        android.insert("ttl".into(), "0s".into());
                    }
                    None
                }
                ttl => ttl,
            };
            (m.to, v1, high, ttl)
        }
    };
    if token.is_empty() {
        return Err(Invalid::NoToken);
    }
    let expires_at = expiry(expires_in, expiry_ms);
    Ok(Notification {
        push: Push {
            app: route.app.clone(),
            token,
            payload: Value::Object(payload),
            expires_at,
            collapse_id: m.collapse_key.filter(|c| !c.is_empty()),
            high_priority,
            dry_run: m.dry_run,
        },
        platform: Platform::Gcm,
        metadata,
        message_id: m.message_id,
        expiry_ms,
    })
}

#[derive(Deserialize)]
struct WebPushMessage {
    /// The browser's `PushSubscription.toJSON()`; other keys in it
    /// (`expirationTime`) are ignored.
    #[serde(default)]
    subscription: Subscription,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    ttl: Option<u64>,
    #[serde(default)]
    urgency: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    push_expiry: Option<u64>,
}

#[derive(Deserialize, Default)]
struct Subscription {
    #[serde(default)]
    endpoint: String,
    #[serde(default)]
    keys: SubscriptionKeys,
}

#[derive(Deserialize, Default)]
struct SubscriptionKeys {
    #[serde(default)]
    p256dh: String,
    #[serde(default)]
    auth: String,
}

/// A Web Push notification becomes a push to the subscription's endpoint,
/// with the keys, the data as text, and the urgency in the payload (the
/// provider encrypts it; `Push` has no field for four urgency levels).
fn web_push(route: &Route, value: &[u8]) -> Result<Notification, Invalid> {
    let m: WebPushMessage =
        serde_json::from_slice(value).map_err(|e| Invalid::Json(e.to_string()))?;
    let Subscription { endpoint, keys } = m.subscription;
    if endpoint.is_empty() {
        return Err(Invalid::NoEndpoint);
    }
    webpush::endpoint(&endpoint).map_err(Invalid::Endpoint)?;
    webpush::subscription_keys(&keys.p256dh, &keys.auth).map_err(Invalid::Keys)?;
    let urgency = match m.urgency.as_deref() {
        None => None,
        Some(u) => Some(
            URGENCIES
                .into_iter()
                .find(|k| *k == u)
                .ok_or(Invalid::Urgency)?,
        ),
    };
    let topic = m.topic.filter(|t| !t.is_empty());
    if topic.as_deref().is_some_and(|t| !webpush::valid_topic(t)) {
        return Err(Invalid::Topic);
    }
    let data = match m.payload {
        Value::Null => None,
        Value::String(text) => Some(text),
        other => Some(other.to_string()),
    };
    let mut payload = json!({"keys": {"p256dh": keys.p256dh, "auth": keys.auth}});
    if let Some(data) = data {
        payload["data"] = data.into();
    }
    if let Some(urgency) = urgency {
        payload["urgency"] = urgency.into();
    }
    let expiry_ms = m.push_expiry.filter(|&ms| ms > 0);
    let ttl = m.ttl.unwrap_or(DEFAULT_TTL);
    let expires_at = expiry(Some(ttl), expiry_ms);
    Ok(Notification {
        push: Push {
            app: route.app.clone(),
            token: endpoint,
            payload,
            expires_at,
            collapse_id: topic,
            high_priority: match urgency {
                Some("high") => Some(true),
                Some("low" | "very-low") => Some(false),
                _ => None,
            },
            dry_run: false,
        },
        platform: Platform::WebPush,
        metadata: m.metadata.unwrap_or_default(),
        message_id: None,
        expiry_ms,
    })
}

/// `*_loc_args` as FCM v1 takes them, a list of strings. The seed's
/// messages carry a string (its type is `string`, sent as a one-item list);
/// legacy GCM's was a JSON array written as a string, so a string that is
/// one becomes that list. A list passes through.
fn loc_args(value: Value) -> Value {
    match value {
        Value::String(text) => match serde_json::from_str::<Vec<String>>(&text) {
            Ok(args) => args.into(),
            Err(_) => Value::Array(vec![Value::String(text)]),
        },
        other => other,
    }
}

/// FCM v1 `data` holds strings only: other values go as their JSON text.
fn stringified(data: Map<String, Value>) -> Map<String, Value> {
    data.into_iter()
        .map(|(k, v)| match v {
            Value::String(_) => (k, v),
            other => (k, Value::String(other.to_string())),
        })
        .collect()
}

/// When a push expires (Unix seconds): a time-to-live counts from now,
/// `push_expiry` (ms) is absolute, and the earlier wins.
fn expiry(ttl_secs: Option<u64>, expiry_ms: Option<u64>) -> Option<u64> {
    let now = now_secs();
    [
        ttl_secs.map(|s| now.saturating_add(s)),
        expiry_ms.map(|ms| ms / 1000),
    ]
    .into_iter()
    .flatten()
    .min()
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(platform: Platform) -> Route {
        Route {
            app: "game".into(),
            platform,
        }
    }

    #[test]
    fn apns_metadata_joins_the_payload_under_m() {
        let n = parse(
            &route(Platform::Apns),
            br#"{"DeviceToken":"abc","Payload":{"aps":{"alert":"hi"},"M":{"own":1}},
                "metadata":{"userId":"u1"},"push_expiry":4102444800000,"collapse_id":"c"}"#,
        )
        .unwrap();
        assert_eq!(n.push.token, "abc");
        assert_eq!(
            n.push.payload,
            json!({"aps":{"alert":"hi"},"M":{"own":1,"userId":"u1"}})
        );
        assert_eq!(n.push.expires_at, Some(4_102_444_800));
        assert_eq!(n.push.collapse_id.as_deref(), Some("c"));
        assert_eq!(n.metadata["userId"], "u1");
    }

    #[test]
    fn apns_without_a_token_or_object_payload_is_refused() {
        let r = route(Platform::Apns);
        assert_eq!(
            parse(&r, br#"{"Payload":{"aps":{}}}"#).unwrap_err(),
            Invalid::NoToken
        );
        assert_eq!(
            parse(&r, br#"{"DeviceToken":"a","Payload":"x"}"#).unwrap_err(),
            Invalid::Payload
        );
        assert!(matches!(parse(&r, b"{not json"), Err(Invalid::Json(_))));
    }

    #[test]
    fn legacy_gcm_becomes_an_fcm_v1_message() {
        let n = parse(
            &route(Platform::Gcm),
            br#"{"to":"tok","message_id":"m1","collapse_key":"ck","priority":"high",
                "time_to_live":60,"dry_run":true,
                "data":{"x":"1","n":2,"o":{"a":true},"own":"data","gap":null},
                "notification":{"title":"T","body":"B","sound":"ping","icon":"i","badge":"3"},
                "metadata":{"k":"v","userId":7,"own":"metadata","gap":"filled"}}"#,
        )
        .unwrap();
        assert_eq!(n.push.token, "tok");
        assert_eq!(
            n.push.payload,
            json!({
                "notification": {"title":"T","body":"B"},
                "android": {"notification": {"sound":"ping","icon":"i"}},
                "data": {"x":"1","n":"2","o":"{\"a\":true}","k":"v","userId":"7",
                         "own":"data","gap":"filled"}
            })
        );
        assert_eq!(n.push.high_priority, Some(true));
        assert!(n.push.dry_run);
        assert_eq!(n.push.collapse_id.as_deref(), Some("ck"));
        assert_eq!(n.message_id.as_deref(), Some("m1"));
        let ttl = n.push.expires_at.unwrap() - now_secs();
        assert!((59..=60).contains(&ttl), "{ttl}");
    }

    #[test]
    fn loc_args_become_lists_of_strings() {
        let body = json!({"to": "t", "notification": {"body_loc_key": "k",
            "body_loc_args": "Helena", "title_loc_args": "[\"a\",\"b\"]"}});
        let n = parse(&route(Platform::Gcm), body.to_string().as_bytes()).unwrap();
        let android = &n.push.payload["android"]["notification"];
        assert_eq!(
            android["body_loc_args"],
            json!(["Helena"]),
            "the seed's string"
        );
        assert_eq!(
            android["title_loc_args"],
            json!(["a", "b"]),
            "legacy GCM's JSON text"
        );
        assert_eq!(android["body_loc_key"], "k");

        let n = parse(
            &route(Platform::Gcm),
            br#"{"to":"t","notification":{"body_loc_args":["x","y"]}}"#,
        )
        .unwrap();
        assert_eq!(
            n.push.payload["android"]["notification"]["body_loc_args"],
            json!(["x", "y"])
        );
    }

    #[test]
    fn an_fcm_v1_body_passes_through() {
        let n = parse(
            &route(Platform::Gcm),
            br#"{"message":{"token":"t1","data":{"a":"b"},"android":{"priority":"high"}}}"#,
        )
        .unwrap();
        assert_eq!(n.push.token, "t1");
        assert_eq!(
            n.push.payload,
            json!({"data":{"a":"b"},"android":{"priority":"high"}})
        );
        assert_eq!(
            parse(&route(Platform::Gcm), br#"{"data":{}}"#).unwrap_err(),
            Invalid::NoToken
        );
    }

    /// The user agent's keys from RFC 8291's example (Appendix A).
    const P256DH: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    const ENDPOINT: &str = "https://updates.push.services.mozilla.com/wpush/v2/gAAAAA";

    fn web_push_message(subscription: Value, rest: Value) -> Result<Notification, Invalid> {
        let mut body = json!({ "subscription": subscription });
        if let Value::Object(rest) = rest {
            body.as_object_mut().unwrap().extend(rest);
        }
        parse(&route(Platform::WebPush), body.to_string().as_bytes())
    }

    fn subscription() -> Value {
        json!({"endpoint": ENDPOINT, "expirationTime": null, "keys": {"p256dh": P256DH, "auth": AUTH}})
    }

    #[test]
    fn web_push_carries_keys_data_and_urgency_in_the_payload() {
        let n = web_push_message(
            subscription(),
            json!({"payload": {"title": "Your turn", "match": 7}, "ttl": 600,
                   "urgency": "high", "topic": "match-7", "metadata": {"userId": "u1"}}),
        )
        .unwrap();
        assert_eq!(n.platform, Platform::WebPush);
        assert_eq!(n.push.token, ENDPOINT);
        assert_eq!(
            n.push.payload["keys"],
            json!({"p256dh": P256DH, "auth": AUTH})
        );
        assert_eq!(n.push.payload["urgency"], "high");
        let data = n.push.payload["data"].as_str().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(data).unwrap(),
            json!({"title": "Your turn", "match": 7}),
            "JSON goes as its text"
        );
        assert_eq!(n.push.collapse_id.as_deref(), Some("match-7"));
        assert_eq!(n.push.high_priority, Some(true));
        assert_eq!(n.metadata["userId"], "u1");
        assert_eq!(n.message_id, None);
        let ttl = n.push.expires_at.unwrap() - now_secs();
        assert!((599..=600).contains(&ttl), "{ttl}");
    }

    #[test]
    fn web_push_strings_go_as_is_and_defaults_apply() {
        let n = web_push_message(subscription(), json!({"payload": "plain \"text\""})).unwrap();
        assert_eq!(n.push.payload["data"], "plain \"text\"");
        assert_eq!(n.push.payload.get("urgency"), None);
        assert_eq!((n.push.collapse_id, n.push.high_priority), (None, None));
        let ttl = n.push.expires_at.unwrap() - now_secs();
        assert!((DEFAULT_TTL - 1..=DEFAULT_TTL).contains(&ttl), "{ttl}");

        // No payload: a push without data (the service worker still wakes).
        let n =
            web_push_message(subscription(), json!({"urgency": "very-low", "topic": ""})).unwrap();
        assert_eq!(n.push.payload.get("data"), None);
        assert_eq!(n.push.payload["urgency"], "very-low");
        assert_eq!(
            (n.push.collapse_id, n.push.high_priority),
            (None, Some(false))
        );

        // `push_expiry` is absolute; the earlier of it and `ttl` wins.
        let soon = (now_secs() + 10) * 1000;
        let n =
            web_push_message(subscription(), json!({"ttl": 3600, "push_expiry": soon})).unwrap();
        assert_eq!(n.push.expires_at, Some(soon / 1000));
        assert_eq!(n.expiry_ms, Some(soon));
        let n = web_push_message(subscription(), json!({"ttl": 0})).unwrap();
        assert!(n.push.expires_at.unwrap() <= now_secs());
    }

    #[test]
    fn web_push_refuses_bad_subscriptions_and_options_with_bounded_keys() {
        let with = |f: &dyn Fn(&mut Value)| {
            let mut s = subscription();
            f(&mut s);
            web_push_message(s, json!({"payload": "x"})).unwrap_err()
        };
        let cases: [(Invalid, &str); 9] = [
            (with(&|s| s["endpoint"] = "".into()), "missing-endpoint"),
            (
                with(&|s| {
                    s.as_object_mut().unwrap().remove("endpoint");
                }),
                "missing-endpoint",
            ),
            (
                with(&|s| s["endpoint"] = "http://push.example/1".into()),
                "invalid-endpoint",
            ),
            (
                with(&|s| s["endpoint"] = "not a url".into()),
                "invalid-endpoint",
            ),
            (
                with(&|s| {
                    s.as_object_mut().unwrap().remove("keys");
                }),
                "invalid-subscription-keys",
            ),
            (
                with(&|s| s["keys"]["auth"] = "AAAA".into()),
                "invalid-subscription-keys",
            ),
            (
                with(&|s| s["keys"]["p256dh"] = "BAAA".into()),
                "invalid-subscription-keys",
            ),
            (
                web_push_message(subscription(), json!({"urgency": "asap"})).unwrap_err(),
                "invalid-urgency",
            ),
            (
                web_push_message(subscription(), json!({"topic": "not/url safe"})).unwrap_err(),
                "invalid-topic",
            ),
        ];
        for (invalid, key) in cases {
            assert_eq!(invalid.key(), key, "{invalid}");
        }
        assert_eq!(
            parse(&route(Platform::WebPush), br#"{"payload": "x"}"#)
                .unwrap_err()
                .key(),
            "missing-endpoint"
        );
        assert_eq!(
            parse(&route(Platform::WebPush), b"{not json")
                .unwrap_err()
                .key(),
            "invalid-json"
        );
    }

    #[test]
    fn the_earlier_of_ttl_and_push_expiry_wins() {
        let soon = (now_secs() + 10) * 1000;
        let body = format!(r#"{{"to":"t","time_to_live":3600,"push_expiry":{soon}}}"#);
        let n = parse(&route(Platform::Gcm), body.as_bytes()).unwrap();
        assert_eq!(n.push.expires_at, Some(soon / 1000));
        assert_eq!(n.expiry_ms, Some(soon));
    }
}
