//! The notifications that arrive on Kafka, in the Pusher seed's JSON, turned
//! into provider-ready [`Push`]es.
//!
//! APNs: `{"DeviceToken", "Payload": {"aps": …}, "metadata", "push_expiry", "collapse_id"}`.
//! GCM: the legacy GCM JSON (`to`, `data`, `notification`, `time_to_live`, …),
//! translated to an FCM v1 `message`; a body that is already v1
//! (`{"message": {"token": …}}`) passes through.

use serde::Deserialize;
use serde_json::{Map, Value, json};
use thiserror::Error;

use crate::topic::Route;
use crate::{Platform, Push};

/// A notification read off Kafka.
#[derive(Debug, Clone)]
pub struct Notification {
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
}

impl Invalid {
    /// A bounded stats key.
    pub fn key(&self) -> &'static str {
        match self {
            Invalid::Json(_) => "invalid-json",
            Invalid::NoToken => "missing-device-token",
            Invalid::Payload => "invalid-payload",
        }
    }
}

/// Reads one Kafka message value sent to `route`'s topic.
pub fn parse(route: &Route, value: &[u8]) -> Result<Notification, Invalid> {
    match route.platform {
        Platform::Apns => apns(route, value),
        Platform::Gcm => gcm(route, value),
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
            let mut data = m.data.unwrap_or_default();
            if !metadata.is_empty() {
                data.insert("M".into(), Value::Object(metadata.clone()));
            }
            if !data.is_empty() {
                v1.insert("data".into(), Value::Object(stringified(data)));
            }
            let high = m.priority.map(|p| p.eq_ignore_ascii_case("high"));
            (m.to, v1, high, m.time_to_live)
        }
    };
    if token.is_empty() {
        return Err(Invalid::NoToken);
    }
    // `time_to_live` counts from now; `push_expiry` is absolute. The earlier wins.
    let now = now_secs();
    let expires_at = [expires_in.map(|s| now + s), expiry_ms.map(|ms| ms / 1000)]
        .into_iter()
        .flatten()
        .min();
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

/// FCM v1 `data` holds strings only: other values go as their JSON text.
fn stringified(data: Map<String, Value>) -> Map<String, Value> {
    data.into_iter()
        .map(|(k, v)| match v {
            Value::String(_) => (k, v),
            other => (k, Value::String(other.to_string())),
        })
        .collect()
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
                "data":{"x":"1","n":2,"o":{"a":true}},
                "notification":{"title":"T","body":"B","sound":"ping","icon":"i","badge":"3"},
                "metadata":{"k":"v"}}"#,
        )
        .unwrap();
        assert_eq!(n.push.token, "tok");
        assert_eq!(
            n.push.payload,
            json!({
                "notification": {"title":"T","body":"B"},
                "android": {"notification": {"sound":"ping","icon":"i"}},
                "data": {"x":"1","n":"2","o":"{\"a\":true}","M":"{\"k\":\"v\"}"}
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

    #[test]
    fn the_earlier_of_ttl_and_push_expiry_wins() {
        let soon = (now_secs() + 10) * 1000;
        let body = format!(r#"{{"to":"t","time_to_live":3600,"push_expiry":{soon}}}"#);
        let n = parse(&route(Platform::Gcm), body.as_bytes()).unwrap();
        assert_eq!(n.push.expires_at, Some(soon / 1000));
        assert_eq!(n.expiry_ms, Some(soon));
    }
}
