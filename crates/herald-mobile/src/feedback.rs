//! Feedback records: every provider answer, in the seed's JSON, for the app's
//! backend to read from `push-<app>-<platform>-feedbacks`.

use serde_json::{Map, Value, json};

use crate::message::{Notification, now_ms};
use crate::{Platform, Rejection, Sent};

/// The seed's stats and feedback key for a provider reason:
/// `BadDeviceToken` → `bad-device-token`, `QUOTA_EXCEEDED` → `quota-exceeded`.
/// Anything that does not look like a reason code becomes `unexpected`, so
/// the keys stay a small set.
pub fn reason_key(reason: &str) -> String {
    if reason.is_empty()
        || reason.len() > 48
        || !reason
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return "unexpected".into();
    }
    let mut key = String::with_capacity(reason.len() + 4);
    let upper = reason.bytes().all(|b| !b.is_ascii_lowercase());
    for (i, c) in reason.chars().enumerate() {
        if c == '_' {
            key.push('-');
        } else if c.is_ascii_uppercase() && !upper && i > 0 {
            key.push('-');
            key.push(c.to_ascii_lowercase());
        } else {
            key.push(c.to_ascii_lowercase());
        }
    }
    key
}

/// The feedback record for one answer.
pub fn record(notification: &Notification, result: &Result<Sent, Rejection>) -> Value {
    let mut metadata = notification.metadata.clone();
    if let Err(r) = result
        && r.invalid_token
    {
        metadata.insert("deleteToken".into(), Value::Bool(true));
    }
    match notification.platform {
        Platform::Apns => apns(notification, result, metadata),
        Platform::Gcm => gcm(notification, result, metadata),
        Platform::WebPush => web_push(notification, result, metadata),
    }
}

/// APNs: the reference's `token`/`status`, and the seed's own field names
/// (`structs.ResponseWithMetadata`: `DeviceToken`, `StatusCode`, `Sent`),
/// which its feedback listener reads; Go matches `apnsID`, `reason` and
/// `err` to `ApnsID`, `Reason` and `Err` regardless of case.
fn apns(n: &Notification, result: &Result<Sent, Rejection>, metadata: Map<String, Value>) -> Value {
    let mut out = json!({
        "token": n.push.token,
        "DeviceToken": n.push.token,
        "Sent": result.is_ok(),
        "timestamp": now_ms(),
        "metadata": metadata,
    });
    match result {
        Ok(sent) => {
            out["status"] = 200.into();
            out["StatusCode"] = 200.into();
            out["apnsID"] = sent.id.clone().into();
        }
        Err(r) => {
            out["status"] = r.status.unwrap_or(0).into();
            out["StatusCode"] = r.status.unwrap_or(0).into();
            out["reason"] = r.reason.clone().into();
            out["err"] = json!({"key": reason_key(&r.reason), "description": r.description});
        }
    }
    out
}

/// The seed's GCM feedback `error` for an FCM error code (its
/// `translateError`): its listener deletes a token on `DEVICE_UNREGISTERED`.
/// Anything that is not one of FCM's codes (a connection error, an expired
/// push) is `UNKNOWN`, as in the seed.
fn seed_gcm_error(reason: &str) -> &'static str {
    match reason {
        "INVALID_ARGUMENT" => "INVALID_JSON",
        "UNREGISTERED" => "DEVICE_UNREGISTERED",
        "SENDER_ID_MISMATCH" => "SENDER_ID_MISMATCH",
        "QUOTA_EXCEEDED" => "DEVICE_MESSAGE_RATE_EXCEEDED",
        "UNAVAILABLE" => "UNAVAILABLE",
        "INTERNAL" => "INTERNAL_SERVER_ERROR",
        "THIRD_PARTY_AUTH_ERROR" | "APNS_AUTH_ERROR" => "THIRD_PARTY_AUTH_ERROR",
        _ => "UNKNOWN",
    }
}

/// GCM: the seed's `{"from", "message_id", "message_type", "error",
/// "error_description", "metadata"}`, with `error` in the seed's codes and
/// FCM's own code in `fcm_error`.
fn gcm(n: &Notification, result: &Result<Sent, Rejection>, metadata: Map<String, Value>) -> Value {
    let mut out = json!({
        "from": n.push.token,
        "message_id": n.message_id,
        "metadata": metadata,
    });
    match result {
        Ok(sent) => {
            out["message_type"] = "ack".into();
            out["name"] = sent.id.clone().into();
        }
        Err(r) => {
            out["message_type"] = "nack".into();
            out["error"] = seed_gcm_error(&r.reason).into();
            out["fcm_error"] = r.reason.clone().into();
            out["error_description"] = r.description.clone().into();
        }
    }
    out
}

/// Web Push: `{"endpoint", "status", "location"?, "timestamp", "metadata"}`,
/// with `reason` and `description` (the push service's text) on failure.
/// The status of a success is 201, RFC 8030's answer.
fn web_push(
    n: &Notification,
    result: &Result<Sent, Rejection>,
    metadata: Map<String, Value>,
) -> Value {
    let mut out = json!({
        "endpoint": n.push.token,
        "timestamp": now_ms(),
        "metadata": metadata,
    });
    match result {
        Ok(sent) => {
            out["status"] = 201.into();
            if let Some(location) = &sent.id {
                out["location"] = location.clone().into();
            }
        }
        Err(r) => {
            out["status"] = r.status.unwrap_or(0).into();
            out["reason"] = r.reason.clone().into();
            out["description"] = r.description.clone().into();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Push;

    fn notification(platform: Platform) -> Notification {
        let mut metadata = Map::new();
        metadata.insert("userId".into(), "u1".into());
        Notification {
            push: Push {
                app: "game".into(),
                token: "tok".into(),
                payload: json!({}),
                expires_at: None,
                collapse_id: None,
                high_priority: None,
                dry_run: false,
            },
            platform,
            metadata,
            message_id: Some("m1".into()),
            expiry_ms: None,
        }
    }

    fn unregistered() -> Rejection {
        Rejection {
            status: Some(410),
            reason: "Unregistered".into(),
            description: "the device token is inactive".into(),
            invalid_token: true,
            unless_misconfigured: false,
            retry_after: None,
        }
    }

    #[test]
    fn reason_keys_are_kebab_case_and_bounded() {
        assert_eq!(reason_key("BadDeviceToken"), "bad-device-token");
        assert_eq!(reason_key("UNREGISTERED"), "unregistered");
        assert_eq!(reason_key("QUOTA_EXCEEDED"), "quota-exceeded");
        assert_eq!(reason_key("ConnectionError"), "connection-error");
        assert_eq!(reason_key("no such thing!"), "unexpected");
        assert_eq!(reason_key(""), "unexpected");
    }

    #[test]
    fn apns_feedback_marks_dead_tokens_for_deletion() {
        let f = record(&notification(Platform::Apns), &Err(unregistered()));
        assert_eq!(f["status"], 410);
        assert_eq!(f["reason"], "Unregistered");
        assert_eq!(f["token"], "tok");
        // The seed's names, which its feedback listener reads.
        assert_eq!(
            (&f["DeviceToken"], &f["StatusCode"], &f["Sent"]),
            (&json!("tok"), &json!(410), &json!(false))
        );
        assert_eq!(f["err"]["key"], "unregistered");
        assert_eq!(f["metadata"], json!({"userId":"u1","deleteToken":true}));
        let ok = record(
            &notification(Platform::Apns),
            &Ok(Sent {
                id: Some("id-1".into()),
            }),
        );
        assert_eq!(ok["status"], 200);
        assert_eq!(
            (&ok["DeviceToken"], &ok["StatusCode"], &ok["Sent"]),
            (&json!("tok"), &json!(200), &json!(true))
        );
        assert_eq!(ok["apnsID"], "id-1");
        assert!(ok.get("err").is_none());
        assert_eq!(ok["metadata"], json!({"userId":"u1"}));
    }

    #[test]
    fn web_push_feedback_names_the_endpoint_and_marks_gone_subscriptions() {
        let mut gone = unregistered();
        gone.reason = "Gone".into();
        let f = record(&notification(Platform::WebPush), &Err(gone));
        assert_eq!(f["endpoint"], "tok");
        assert_eq!(f["status"], 410);
        assert_eq!(f["reason"], "Gone");
        assert_eq!(f["description"], "the device token is inactive");
        assert!(f["timestamp"].as_u64().is_some_and(|t| t > 0));
        assert_eq!(f["metadata"], json!({"userId":"u1","deleteToken":true}));
        assert!(f.get("location").is_none() && f.get("token").is_none());

        let ok = record(
            &notification(Platform::WebPush),
            &Ok(Sent {
                id: Some("https://push.example/m/1".into()),
            }),
        );
        assert_eq!(ok["status"], 201);
        assert_eq!(ok["location"], "https://push.example/m/1");
        assert!(ok.get("reason").is_none());
        assert_eq!(ok["metadata"], json!({"userId":"u1"}));

        let busy = Rejection {
            status: Some(429),
            reason: "TooManyRequests".into(),
            description: "slow down".into(),
            invalid_token: false,
            unless_misconfigured: false,
            retry_after: Some(std::time::Duration::ZERO),
        };
        let f = record(&notification(Platform::WebPush), &Err(busy));
        assert_eq!(f["metadata"].get("deleteToken"), None);
        let unanswered = record(&notification(Platform::WebPush), &Ok(Sent { id: None }));
        assert!(unanswered.get("location").is_none());
    }

    #[test]
    fn gcm_feedback_has_the_seeds_fields() {
        let mut r = unregistered();
        r.reason = "UNREGISTERED".into();
        let f = record(&notification(Platform::Gcm), &Err(r));
        assert_eq!(f["from"], "tok");
        assert_eq!(f["message_id"], "m1");
        assert_eq!(f["message_type"], "nack");
        assert_eq!(f["error"], "DEVICE_UNREGISTERED", "the seed's key");
        assert_eq!(f["fcm_error"], "UNREGISTERED");
        assert_eq!(f["metadata"]["deleteToken"], true);
    }

    #[test]
    fn gcm_errors_are_the_seeds_codes() {
        for (fcm, seed) in [
            ("INVALID_ARGUMENT", "INVALID_JSON"),
            ("UNREGISTERED", "DEVICE_UNREGISTERED"),
            ("SENDER_ID_MISMATCH", "SENDER_ID_MISMATCH"),
            ("QUOTA_EXCEEDED", "DEVICE_MESSAGE_RATE_EXCEEDED"),
            ("UNAVAILABLE", "UNAVAILABLE"),
            ("INTERNAL", "INTERNAL_SERVER_ERROR"),
            ("THIRD_PARTY_AUTH_ERROR", "THIRD_PARTY_AUTH_ERROR"),
            ("ConnectionError", "UNKNOWN"),
            ("HTTP502", "UNKNOWN"),
        ] {
            assert_eq!(seed_gcm_error(fcm), seed, "{fcm}");
        }
    }
}
