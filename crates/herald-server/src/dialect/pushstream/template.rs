//! push-stream message templates: `~id~ ~channel~ ~text~ ~size~ ~time~
//! ~tag~ ~event-id~ ~event-type~` in any case, replaced as the module does
//! (text raw, time as an HTTP-date).

use super::marker::Marker;

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Id,
    Channel,
    Text,
    Size,
    Time,
    Tag,
    EventId,
    EventType,
}

const TOKENS: [(&str, Part); 8] = [
    ("~id~", Part::Id),
    ("~channel~", Part::Channel),
    ("~text~", Part::Text),
    ("~size~", Part::Size),
    ("~time~", Part::Time),
    ("~tag~", Part::Tag),
    ("~event-id~", Part::EventId),
    ("~event-type~", Part::EventType),
];

/// A parsed template.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    /// Literals and tokens in order.
    parts: Vec<Part>,
}

/// What a template is filled with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields<'a> {
    /// The message id: the channel offset, or -1 ping, -2 deleted, -3 timeout.
    pub(crate) id: i64,
    /// The channel id, for `~channel~`; empty in control messages.
    pub(crate) channel: &'a str,
    /// The message, raw, for `~text~` (and its length for `~size~`).
    pub(crate) text: &'a str,
    /// The message's time and tag, for `~time~` and `~tag~`.
    pub(crate) marker: Marker,
    /// The publisher's `Event-Id`, or empty.
    pub(crate) event_id: &'a str,
    /// The publisher's `Event-Type`, or empty.
    pub(crate) event_type: &'a str,
}

impl Fields<'static> {
    /// A control message (ping, deleted, timeout): no channel, time 0.
    pub(crate) fn control(id: i64, text: &'static str) -> Self {
        Self {
            id,
            channel: "",
            text,
            marker: Marker::ZERO,
            event_id: "",
            event_type: "",
        }
    }
}

impl Template {
    pub(crate) fn parse(text: &str) -> Self {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        'scan: while !rest.is_empty() {
            if rest.starts_with('~') {
                // In any case, as the module matches tokens (`ngx_strncasecmp`).
                for (token, part) in &TOKENS {
                    if rest
                        .get(..token.len())
                        .is_some_and(|head| head.eq_ignore_ascii_case(token))
                    {
                        if !literal.is_empty() {
                            parts.push(Part::Literal(std::mem::take(&mut literal)));
                        }
                        parts.push(part.clone());
                        rest = &rest[token.len()..];
                        continue 'scan;
                    }
                }
            }
            let mut chars = rest.chars();
            if let Some(c) = chars.next() {
                literal.push(c);
            }
            rest = chars.as_str();
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Self { parts }
    }

    /// Appends the template filled with `f` to `out`.
    pub(crate) fn render(&self, out: &mut Vec<u8>, f: &Fields<'_>) {
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.extend_from_slice(s.as_bytes()),
                Part::Id => out.extend_from_slice(f.id.to_string().as_bytes()),
                Part::Channel => out.extend_from_slice(f.channel.as_bytes()),
                Part::Text => out.extend_from_slice(f.text.as_bytes()),
                Part::Size => out.extend_from_slice(f.text.len().to_string().as_bytes()),
                Part::Time => out.extend_from_slice(f.marker.http_date().as_bytes()),
                Part::Tag => out.extend_from_slice(f.marker.tag.to_string().as_bytes()),
                Part::EventId => out.extend_from_slice(f.event_id.as_bytes()),
                Part::EventType => out.extend_from_slice(f.event_type.as_bytes()),
            }
        }
    }

    pub(crate) fn to_bytes(&self, f: &Fields<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        self.render(&mut out, f);
        out
    }
}

/// Splits `text` into its non-empty lines at CRLF, CR or LF, as the module
/// does for EventSource `data:` lines.
pub(crate) fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split(['\r', '\n']).filter(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_every_token_and_keeps_text_raw() {
        let t = Template::parse(
            "~id~|~channel~|~text~|~size~|~time~|~tag~|~event-id~|~event-type~|~x~",
        );
        let f = Fields {
            id: 7,
            channel: "ch",
            text: "a\"b",
            marker: Marker {
                time: 784111777,
                tag: 3,
            },
            event_id: "e1",
            event_type: "t1",
        };
        assert_eq!(
            String::from_utf8(t.to_bytes(&f)).unwrap(),
            "7|ch|a\"b|3|Sun, 06 Nov 1994 08:49:37 GMT|3|e1|t1|~x~"
        );
    }

    #[test]
    fn splits_lines_like_the_module() {
        assert_eq!(
            lines("a\r\nb\rc\n\nd").collect::<Vec<_>>(),
            ["a", "b", "c", "d"]
        );
    }
}
