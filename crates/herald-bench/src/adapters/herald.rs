//! Herald native protocol: `/ws?channels=`, `/sse?channels=`, `POST /api/v1/publish`, and the
//! `publish` command over a WebSocket.

use std::fmt::{Display, Write as _};

use crate::token::{Quoting, Token};

pub(crate) fn ws_path(channels: &[String]) -> String {
    format!("/ws?channels={}", channels.join(","))
}

pub(crate) fn sse_path(channels: &[String]) -> String {
    format!("/sse?channels={}", channels.join(","))
}

/// `(path, body)` of the publish request. `payload` is already JSON and channel names are
/// generated from `[A-Za-z0-9_-]`, so the body is assembled without re-serialising the payload.
pub(crate) fn publish(channel: &str, payload: &str) -> (String, String) {
    (
        "/api/v1/publish".to_owned(),
        format!(r#"{{"channel":"{channel}","data":{payload}}}"#),
    )
}

/// The `publish` command sending `token`'s payload (`size` bytes) to `channel`, built in one
/// allocation; `no_reply` asks for an answer only if it fails.
pub(crate) fn ws_publish_frame(
    id: u64,
    channel: impl Display,
    token: &Token,
    size: usize,
    no_reply: bool,
) -> String {
    let mut out = String::with_capacity(size + 80);
    let quiet = if no_reply { r#","reply":false"# } else { "" };
    let _ = write!(
        out,
        r#"{{"id":{id}{quiet},"cmd":"publish","channel":"{channel}","data":"#
    );
    token.write_payload(&mut out, size, Quoting::Plain);
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_json() {
        let f = ws_publish_frame(7, "c1", &Token::Probe { run: 1, channel: 2 }, 0, false);
        let v: serde_json::Value = serde_json::from_str(&f).expect("json");
        assert_eq!(v["id"], 7);
        assert_eq!(v.get("reply"), None);
        let f = ws_publish_frame(7, "c1", &Token::Probe { run: 1, channel: 2 }, 0, true);
        let quiet: serde_json::Value = serde_json::from_str(&f).expect("json");
        assert_eq!(quiet["reply"], false);
        assert_eq!(quiet["data"], v["data"]);
        assert_eq!(v["cmd"], "publish");
        assert_eq!(v["channel"], "c1");
        assert_eq!(v["data"]["x"], "hbp:1:2;");
        assert_eq!(ws_path(&["a".into(), "b".into()]), "/ws?channels=a,b");
    }
}
