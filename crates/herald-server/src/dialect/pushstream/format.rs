//! How push-stream messages look on the wire: the message template as is
//! (streaming, long-polling, WebSocket), or as EventSource `data:` lines.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use herald_core::{ChannelKey, Format, Message};
use parking_lot::Mutex;

use super::marker::Marker;
use super::template::{Fields, Template, lines};
use crate::config::PushStreamConfig;
use crate::dialect::slot;

/// Special message ids.
pub(crate) const PING_ID: i64 = -1;
pub(crate) const DELETED_ID: i64 = -2;
pub(crate) const TIMEOUT_ID: i64 = -3;
pub(crate) const TIMEOUT_TEXT: &str = "Timed out";

/// The rendering settings every push-stream connection shares.
pub(crate) struct Render {
    /// `message_template`.
    pub(crate) message: Template,
    /// `channel_deleted_message_text`, unless a `DELETE` body overrides it.
    pub(crate) deleted_text: String,
    /// Per-request deleted texts (a `DELETE /pub` body), by channel, while
    /// the deletion runs.
    pub(crate) deleting: Mutex<HashMap<ChannelKey, String>>,
}

impl Render {
    pub(crate) fn new(cfg: &PushStreamConfig) -> Self {
        Self {
            message: Template::parse(&cfg.message_template),
            deleted_text: cfg.channel_deleted_message_text.clone(),
            deleting: Mutex::default(),
        }
    }

    /// The template fields of a stored or live message.
    fn fields<'a>(msg: &'a Message, text: &'a str) -> Fields<'a> {
        let p = &msg.publication;
        Fields {
            id: msg.offset as i64,
            channel: msg.channel.name(),
            text,
            marker: Marker::of(msg),
            event_id: &p.id,
            event_type: p.event.as_deref().unwrap_or(""),
        }
    }

    /// The message template filled for `msg` (streaming, polling, WebSocket).
    pub(crate) fn text(&self, msg: &Message) -> Vec<u8> {
        let text = msg.text();
        self.message.to_bytes(&Self::fields(msg, &text))
    }

    /// An EventSource event: `id:`/`event:` lines when the publisher gave
    /// them, one `data:` line per line of text, a blank line.
    pub(crate) fn event(&self, msg: &Message) -> Vec<u8> {
        let text = msg.text();
        let fields = Self::fields(msg, &text);
        let mut out = Vec::with_capacity(text.len() + 64);
        if !fields.event_id.is_empty() {
            out.extend_from_slice(format!("id: {}\n", fields.event_id).as_bytes());
        }
        if !fields.event_type.is_empty() {
            out.extend_from_slice(format!("event: {}\n", fields.event_type).as_bytes());
        }
        self.data_lines(&mut out, &fields);
        out
    }

    /// `data: <template>` per line of `f.text`, then the closing newline.
    pub(crate) fn data_lines(&self, out: &mut Vec<u8>, f: &Fields<'_>) {
        for line in lines(f.text) {
            out.extend_from_slice(b"data: ");
            self.message.render(out, &Fields { text: line, ..*f });
            out.push(b'\n');
        }
        out.push(b'\n');
    }

    /// The -2 message for `channel`.
    fn deleted(&self, channel: &ChannelKey, event_source: bool) -> Bytes {
        let text = self
            .deleting
            .lock()
            .get(channel)
            .cloned()
            .unwrap_or_else(|| self.deleted_text.clone());
        let f = Fields {
            channel: channel.name(),
            text: &text,
            ..Fields::control(DELETED_ID, "")
        };
        let mut out = Vec::new();
        if event_source {
            self.data_lines(&mut out, &f);
        } else {
            self.message.render(&mut out, &f);
        }
        Bytes::from(out)
    }
}

/// Which bytes a connection gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The template as is: `/sub`, `/ws`.
    Text,
    /// The template as is, with the message kept for markers: `/lp`.
    Poll,
    /// EventSource framing: `/ev`.
    EventSource,
}

/// One connection's format. Encodings are shared per kind (the cache slot);
/// the list of channels deleted under the connection is its own.
pub(crate) struct PsFormat {
    /// What the connection speaks.
    kind: Kind,
    /// The shared templates.
    render: Arc<Render>,
    /// Channels deleted while subscribed, for the connection to act on.
    deleted: Arc<Mutex<Vec<ChannelKey>>>,
}

impl PsFormat {
    pub(crate) fn new(kind: Kind, render: Arc<Render>) -> (Arc<Self>, Arc<Mutex<Vec<ChannelKey>>>) {
        let deleted = Arc::new(Mutex::new(Vec::new()));
        let format = Arc::new(Self {
            kind,
            render,
            deleted: deleted.clone(),
        });
        (format, deleted)
    }
}

impl Format for PsFormat {
    fn slot(&self) -> usize {
        match self.kind {
            Kind::Text | Kind::Poll => slot::PUSHSTREAM_TEXT,
            Kind::EventSource => slot::PUSHSTREAM_EVENTSOURCE,
        }
    }

    fn encode(&self, msg: &Message) -> Bytes {
        Bytes::from(match self.kind {
            Kind::Text | Kind::Poll => self.render.text(msg),
            Kind::EventSource => self.render.event(msg),
        })
    }

    fn wants_message(&self) -> bool {
        self.kind == Kind::Poll
    }

    fn deleted(&self, channel: &ChannelKey) -> Option<Bytes> {
        self.deleted.lock().push(channel.clone());
        Some(self.render.deleted(channel, self.kind == Kind::EventSource))
    }
}
