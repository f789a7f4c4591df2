//! Dialects: each translates one wire protocol to engine calls. They hold no
//! state beyond a connection's own.
//!
//! Every wire format gets a fixed cache slot (see [`herald_core::Format`]);
//! the constants below keep them unique.

pub(crate) mod native;
pub(crate) mod push;
pub(crate) mod pushaas;
pub(crate) mod pushapi;
pub(crate) mod pushca;
pub(crate) mod pushstream;
pub(crate) mod send;
pub(crate) mod utc;

pub(crate) mod slot {
    pub(crate) const NATIVE_WS: usize = 0;
    pub(crate) const NATIVE_SSE: usize = 1;
    pub(crate) const PUSH_WS: usize = 2;
    pub(crate) const PUSH_SSE: usize = 3;
    pub(crate) const PUSHCA_WS: usize = 4;
    pub(crate) const PUSHSTREAM_TEXT: usize = 5;
    pub(crate) const PUSHSTREAM_EVENTSOURCE: usize = 6;
    const _: () = assert!(PUSHSTREAM_EVENTSOURCE < herald_core::message::MAX_FORMATS);
}

/// Appends `s` as a JSON string literal.
pub(crate) fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Ids, epochs and channel names need no escapes: copied between quotes,
    // as serde_json would write them, without its byte-by-byte escaping.
    // No early exit: the whole-string fold vectorizes, and these are short.
    let plain = !s.bytes().fold(false, |esc, b| {
        esc | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // Writing into a Vec cannot fail, and a &str always serializes.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The payload bytes of a JSON value, on one line. Raw JSON is kept as sent
/// unless it spans lines, which would break SSE `data:` framing; then the
/// whitespace between tokens goes, and nothing else: keys keep their order
/// and numbers their digits, as a parse into a `Value` would not.
pub(crate) fn one_line_json(raw: &serde_json::value::RawValue) -> bytes::Bytes {
    let text = raw.get().as_bytes();
    // A byte search: every message's data passes here.
    if memchr::memchr2(b'\n', b'\r', text).is_none() {
        return bytes::Bytes::copy_from_slice(text);
    }
    compact_json(raw)
}

/// The payload bytes of a JSON value without any whitespace between tokens,
/// as Jackson writes a value back (the Push seed's `writeValueAsString`).
/// Like [`one_line_json`], it keeps everything else as sent.
pub(crate) fn compact_json(raw: &serde_json::value::RawValue) -> bytes::Bytes {
    let text = raw.get().as_bytes();
    // Valid JSON (a `RawValue` is) has no raw control characters inside
    // strings, so every line break is whitespace between tokens.
    let mut out = Vec::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            continue;
        } else if b == b'"' {
            in_string = true;
        }
        out.push(b);
    }
    bytes::Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn push_json_str_writes_what_serde_json_writes() {
        for s in [
            "",
            "plain-id_1.2:3",
            "ünï©ødé",
            "q\"uote",
            "back\\slash",
            "nl\n",
            "\u{1}",
            "\u{7f}",
        ] {
            let mut out = b"x".to_vec();
            push_json_str(&mut out, s);
            assert_eq!(out[1..], serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn one_line_json_keeps_one_line_data_as_sent() {
        assert_eq!(
            one_line_json(&raw(r#"{"a": 1,  "b":[2]}"#)),
            r#"{"a": 1,  "b":[2]}"#
        );
    }

    #[test]
    fn one_line_json_folds_data_spanning_lines() {
        assert_eq!(one_line_json(&raw("{\"a\":\n 1}")), r#"{"a":1}"#);
        assert_eq!(one_line_json(&raw("[1,\r\n2]")), "[1,2]");
        assert_eq!(one_line_json(&raw("{\"s\":\r \"x\"}")), r#"{"s":"x"}"#);
    }

    #[test]
    fn compact_json_drops_whitespace_outside_strings_even_on_one_line() {
        assert_eq!(
            compact_json(&raw(r#"{"a": 1,  "b": [2, "x y"]}"#)),
            r#"{"a":1,"b":[2,"x y"]}"#
        );
        assert_eq!(compact_json(&raw(r#""s p""#)), r#""s p""#);
    }

    #[test]
    fn one_line_json_folds_only_whitespace_between_tokens() {
        // Key order, duplicate keys, digits and escapes stay as sent, even
        // where serde_json's `Value` could not hold them.
        let sent = "{\"z\": 1e400,\n \"a\": \"x \\\" y\\\\\",\n \"a\": 12345678901234567890123,\n \"s\": \"\\ud800\"}";
        assert_eq!(
            one_line_json(&raw(sent)),
            r#"{"z":1e400,"a":"x \" y\\","a":12345678901234567890123,"s":"\ud800"}"#
        );
    }
}
