//! WebSocket compression: permessage-deflate (RFC 7692), which every
//! browser offers.
//!
//! Herald always asks for no context takeover, both ways. Each message is
//! then compressed on its own, so a fan-out compresses a message once and
//! hands every subscriber the same bytes ([`Deflate::compress`] remembers
//! the last few), and a connection keeps no compression window between
//! messages: an idle connection costs what it did.
//!
//! tungstenite reads no compressed frames, so [`Inflate`] sits under it and
//! turns each compressed message into the plain frame tungstenite expects.
//!
//! SSE streams are compressed from the same per-message segments
//! ([`GzipStream`]).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The extension's name in `Sec-WebSocket-Extensions`.
const NAME: &str = "permessage-deflate";

/// What a sync flush ends every compressed message with; the wire leaves
/// it out (RFC 7692 §7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// permessage-deflate as agreed with one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deflate {
    /// Messages shorter than this go out plain: too small to gain.
    min_size: usize,
    /// The client's `server_max_window_bits`, if it asked for one: our
    /// answer must repeat it.
    window_bits: Option<u8>,
}

impl Deflate {
    /// The first offer in `offers` (the request's `Sec-WebSocket-Extensions`
    /// values) that Herald can accept, or `None` to send plain frames.
    pub(crate) fn negotiate<'a>(
        offers: impl IntoIterator<Item = &'a [u8]>,
        min_size: usize,
    ) -> Option<Self> {
        offers
            .into_iter()
            .filter_map(|value| std::str::from_utf8(value).ok())
            .flat_map(|value| value.split(','))
            .find_map(|offer| {
                let window_bits = accept_offer(offer)?;
                Some(Self {
                    min_size,
                    window_bits,
                })
            })
    }

    /// The `Sec-WebSocket-Extensions` value of the `101`.
    pub(crate) fn response(&self) -> String {
        let mut value = format!("{NAME}; server_no_context_takeover; client_no_context_takeover");
        if let Some(bits) = self.window_bits {
            value.push_str(&format!("; server_max_window_bits={bits}"));
        }
        value
    }

    /// `payload` compressed, when it is worth it: `None` sends it plain.
    pub(crate) fn compress(&self, payload: &Bytes) -> Option<Bytes> {
        // Back references reach at most the message's own length back: a
        // message no longer than a window the client narrowed fits it.
        let narrowed =
            (self.window_bits).is_some_and(|bits| bits < 15 && payload.len() > 1 << bits);
        if payload.len() < self.min_size || narrowed {
            return None;
        }
        RECENT.with_borrow_mut(|recent| recent.compressed(payload))
    }
}

/// The window size a valid offer asks of the server (`Some(None)` for the
/// largest), or `None` when Herald cannot accept `offer`.
fn accept_offer(offer: &str) -> Option<Option<u8>> {
    let mut params = offer.split(';').map(str::trim);
    if !params.next()?.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let (mut server_bits, mut seen) = (None, [false; 4]);
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        let bits = || value?.parse::<u8>().ok().filter(|b| (8..=15).contains(b));
        let slot = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => 1,
            "server_max_window_bits" => {
                server_bits = Some(bits()?);
                2
            }
            // Our inflater reads any window: a limit on the client's is
            // nothing to answer.
            "client_max_window_bits" => {
                if value.is_some() {
                    bits()?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
    }
    Some(server_bits)
}

/// gzip (RFC 1952) for an SSE stream, for clients whose `Accept-Encoding`
/// takes it (every browser's does).
///
/// After the header every frame is a deflate segment of its own that ends
/// on a byte boundary, so segments made apart join into one valid stream:
/// a message's segment is the one its WebSocket frames carry (the sync
/// flush's tail kept), compressed once for all its subscribers; what would
/// not shrink, and the connection's own lines, go in stored blocks. The
/// stream gets no trailer (its checksum would mean reading every byte of
/// every connection): it ends with the connection, which a client reopens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GzipStream {
    /// Frames shorter than this are stored: too small to gain.
    min_size: usize,
}

impl GzipStream {
    /// The gzip header: deflate, no name or time, unknown OS.
    pub(crate) const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

    /// gzip when one of `accepts` (the request's `Accept-Encoding` values)
    /// takes it, by name or `*`, with a quality above zero.
    pub(crate) fn negotiate<'a>(
        accepts: impl IntoIterator<Item = &'a [u8]>,
        min_size: usize,
    ) -> Option<Self> {
        let (mut gzip, mut any) = (None, None);
        for coding in accepts
            .into_iter()
            .filter_map(|value| std::str::from_utf8(value).ok())
            .flat_map(|value| value.split(','))
        {
            let mut params = coding.split(';').map(str::trim);
            let name = params.next().unwrap_or("");
            let q = params
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, v)| v.trim().parse::<f32>().ok());
            let Some(q) = q else { continue };
            if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(q);
            } else if name == "*" {
                any = Some(q);
            }
        }
        gzip.or(any)
            .is_some_and(|q| q > 0.0)
            .then_some(Self { min_size })
    }

    /// Appends the segment of `frame`, a frame many connections may send:
    /// compressed once, by address, while it is recent.
    pub(crate) fn push_shared(&self, frame: &Bytes, out: &mut Vec<u8>) {
        let compressed = (frame.len() >= self.min_size)
            .then(|| RECENT.with_borrow_mut(|recent| recent.compressed(frame)))
            .flatten();
        push_segment(frame, compressed.as_deref(), out);
    }

    /// The segment of `frame`, this connection's alone.
    pub(crate) fn encode(&self, frame: &[u8]) -> Bytes {
        let compressed = (frame.len() >= self.min_size)
            .then(|| RECENT.with_borrow_mut(|recent| recent.deflate(frame)))
            .flatten();
        let mut out = Vec::with_capacity(frame.len() + 8);
        push_segment(frame, compressed.as_deref(), &mut out);
        out.into()
    }
}

/// Appends `frame` as its `compressed` segment (without the sync flush's
/// tail) or, without one, stored.
fn push_segment(frame: &[u8], compressed: Option<&[u8]>, out: &mut Vec<u8>) {
    match compressed {
        Some(compressed) => {
            out.extend_from_slice(compressed);
            out.extend_from_slice(&TAIL);
        }
        None => {
            for block in frame.chunks(usize::from(u16::MAX)) {
                let at = begin_stored(out);
                out.extend_from_slice(block);
                end_stored(out, at);
            }
        }
    }
}

/// Opens a stored deflate block at a byte boundary: its header, with the
/// length left for [`end_stored`]. Returns where it starts.
pub(crate) fn begin_stored(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    // Not final, stored, padded to the byte; then LEN and NLEN.
    out.extend_from_slice(&[0; 5]);
    at
}

/// Closes the stored block opened at `at` over what was appended since,
/// in more than one block if it exceeds a block's 65,535 bytes.
pub(crate) fn end_stored(out: &mut Vec<u8>, at: usize) {
    let data = out.len() - at - 5;
    if let Ok(len) = u16::try_from(data) {
        out[at + 1..at + 3].copy_from_slice(&len.to_le_bytes());
        out[at + 3..at + 5].copy_from_slice(&(!len).to_le_bytes());
        return;
    }
    let data = out.split_off(at + 5);
    out.truncate(at);
    push_segment(&data, None, out);
}

/// Payloads larger than this are compressed every time, not kept.
const RECENT_MAX: usize = 64 * 1024;

/// Remembered compressions per thread.
const RECENT_SLOTS: usize = 32;

thread_local! {
    /// This thread's compressor and its last compressions.
    static RECENT: RefCell<Recent> = RefCell::new(Recent::new());
}

/// A compressor and the last payloads it compressed, by address: a fan-out
/// lays the same `Bytes` out for every subscriber. Each slot holds its
/// payload, so the address cannot be freed and reused while it is there.
struct Recent {
    /// Reset before each message, so that every message is compressed on its own.
    deflater: Compress,
    /// By payload address: a payload with its compression (`None`: it would not shrink).
    slots: Vec<Option<(Bytes, Option<Bytes>)>>,
}

impl Recent {
    fn new() -> Self {
        Self {
            // Fast: the level that keeps a fan-out's latency; JSON still
            // shrinks to a third or so.
            deflater: Compress::new(Compression::fast(), false),
            slots: vec![None; RECENT_SLOTS],
        }
    }

    fn compressed(&mut self, payload: &Bytes) -> Option<Bytes> {
        if payload.len() > RECENT_MAX {
            return self.deflate(payload);
        }
        let slot = (payload.as_ptr() as usize >> 4) % RECENT_SLOTS;
        if let Some((seen, compressed)) = &self.slots[slot]
            && seen.as_ptr() == payload.as_ptr()
            && seen.len() == payload.len()
        {
            return compressed.clone();
        }
        let compressed = self.deflate(payload);
        self.slots[slot] = Some((payload.clone(), compressed.clone()));
        compressed
    }

    /// One message's compressed bytes, if shorter than the message.
    fn deflate(&mut self, payload: &[u8]) -> Option<Bytes> {
        let d = &mut self.deflater;
        d.reset();
        let mut out = Vec::with_capacity(payload.len() + 64);
        loop {
            let read = d.total_in() as usize;
            d.compress_vec(&payload[read..], &mut out, FlushCompress::Sync)
                .ok()?;
            if d.total_in() as usize == payload.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(payload.len() / 4 + 64);
        }
        out.truncate(out.strip_suffix(&TAIL)?.len());
        (out.len() < payload.len()).then(|| out.into())
    }
}

/// Why a client's compressed message was refused, carried to the
/// connection's task in the `io::Error` that ends its reads.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub(crate) struct InflateError {
    /// The WebSocket close code to answer with.
    pub(crate) code: u16,
    /// The close frame's reason, and the error's message.
    pub(crate) reason: &'static str,
}

impl InflateError {
    /// The refusal inside `e`, if it is one.
    pub(crate) fn find(e: &io::Error) -> Option<&Self> {
        e.get_ref()?.downcast_ref()
    }
}

/// Reads a client's frames, inflating compressed messages into the plain
/// frames tungstenite reads; writes pass through. Without deflate agreed it
/// only forwards.
pub(crate) struct Inflate<S> {
    /// The client's socket, read from and written to.
    inner: S,
    /// The frame parser, when deflate was agreed; without it reads only pass through.
    reader: Option<Box<Reader>>,
}

impl<S> Inflate<S> {
    /// Inflates what `inner` reads when `deflate` was agreed, keeping every
    /// message within `limit` bytes once inflated.
    pub(crate) fn new(inner: S, deflate: Option<Deflate>, limit: usize) -> Self {
        let reader = deflate.map(|_| {
            Box::new(Reader {
                limit,
                raw: BytesMut::new(),
                out: BytesMut::new(),
                passing: 0,
                gathered: None,
                failed: None,
            })
        });
        Self { inner, reader }
    }
}

/// The frame parser's state.
struct Reader {
    /// Inflated size a message may reach.
    limit: usize,
    /// Bytes read, not parsed yet.
    raw: BytesMut,
    /// Bytes for tungstenite.
    out: BytesMut,
    /// Bytes left of a frame that passes as it is.
    passing: usize,
    /// A compressed message's opcode and payload so far, unmasked.
    gathered: Option<(u8, Vec<u8>)>,
    /// Set once a message was refused: reads fail from then on.
    failed: Option<(u16, &'static str)>,
}

/// What [`Reader::next_frame`] found at the front of `raw`.
struct Head {
    /// The first byte: FIN, RSV1 and the opcode.
    first: u8,
    /// Length of the payload, as the header says.
    len: u64,
    /// The masking key, when the frame is masked (a client's must be).
    mask: Option<[u8; 4]>,
    /// Bytes of header before the payload, masking key included.
    head_len: usize,
}

impl Reader {
    /// Moves complete things in `raw` to `out`, up to the first compressed
    /// message: inflating all a read holds at once could take many times
    /// the message limit (small messages inflate a thousandfold).
    fn process(&mut self) {
        while self.failed.is_none() {
            if self.passing > 0 {
                let n = self.passing.min(self.raw.len());
                if n == 0 {
                    return;
                }
                self.out.extend_from_slice(&self.raw.split_to(n));
                self.passing -= n;
                continue;
            }
            let Some(head) = self.next_frame() else {
                return;
            };
            // Its most significant bit must be 0 (RFC 6455 §5.2); the rest
            // fits memory's size, and no sum with it wraps.
            let Some(len) = usize::try_from(head.len)
                .ok()
                .filter(|_| head.len >> 63 == 0)
            else {
                self.failed = Some((1002, "invalid frame length"));
                return;
            };
            let (fin, rsv1, opcode) = (
                head.first & 0x80 != 0,
                head.first & 0x40 != 0,
                head.first & 0x0f,
            );
            let starts = rsv1 && matches!(opcode, 1 | 2) && self.gathered.is_none();
            let continues = opcode == 0 && !rsv1 && self.gathered.is_some();
            if self.gathered.is_some() && matches!(opcode, 1 | 2) {
                self.failed = Some((1002, "expected a continuation frame"));
                return;
            }
            // Control frames, plain messages, and anything malformed pass as
            // they are: tungstenite reads or refuses them.
            let Some(mask) = head.mask.filter(|_| starts || continues) else {
                self.passing = head.head_len.saturating_add(len);
                continue;
            };
            let so_far = self.gathered.as_ref().map_or(0, |(_, g)| g.len());
            if so_far.saturating_add(len) > self.limit {
                self.failed = Some((1009, "message too big"));
                return;
            }
            if self.raw.len() < head.head_len + len {
                return;
            }
            self.raw.advance(head.head_len);
            let payload = self.raw.split_to(len);
            let (_, gathered) = self.gathered.get_or_insert_with(|| (opcode, Vec::new()));
            gathered.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
            if fin {
                let (opcode, mut compressed) = self.gathered.take().expect("gathered above");
                compressed.extend_from_slice(&TAIL);
                match inflate(&compressed, self.limit) {
                    Ok(plain) => {
                        self.emit(opcode, &plain);
                        return;
                    }
                    Err(refusal) => self.failed = Some(refusal),
                }
            }
        }
    }

    /// The header at the front of `raw`, once all of it has arrived.
    fn next_frame(&self) -> Option<Head> {
        let raw = &self.raw[..];
        let (&first, &second) = (raw.first()?, raw.get(1)?);
        let (len, mut head_len) = match second & 0x7f {
            126 => (
                u64::from(u16::from_be_bytes(raw.get(2..4)?.try_into().ok()?)),
                4,
            ),
            127 => (u64::from_be_bytes(raw.get(2..10)?.try_into().ok()?), 10),
            n => (u64::from(n), 2),
        };
        let mask = if second & 0x80 != 0 {
            let key = raw.get(head_len..head_len + 4)?.try_into().ok()?;
            head_len += 4;
            Some(key)
        } else {
            None
        };
        Some(Head {
            first,
            len,
            mask,
            head_len,
        })
    }

    /// Appends one final, plain frame carrying `payload`. It is masked, as
    /// a client's must be, with the key that changes nothing.
    fn emit(&mut self, opcode: u8, payload: &[u8]) {
        self.out.put_u8(0x80 | opcode);
        let len = payload.len();
        if len < 126 {
            self.out.put_u8(0x80 | len as u8);
        } else if let Ok(short) = u16::try_from(len) {
            self.out.put_u8(0x80 | 126);
            self.out.put_u16(short);
        } else {
            self.out.put_u8(0x80 | 127);
            self.out.put_u64(len as u64);
        }
        self.out.put_u32(0);
        self.out.extend_from_slice(payload);
    }
}

thread_local! {
    /// This thread's inflater, reset for every message.
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// A message's inflated payload, at most `limit` bytes.
fn inflate(compressed: &[u8], limit: usize) -> Result<Vec<u8>, (u16, &'static str)> {
    const BAD: (u16, &str) = (1007, "invalid compressed data");
    INFLATER.with_borrow_mut(|d| {
        d.reset(false);
        let mut out = Vec::with_capacity((compressed.len() * 4).min(limit + 1));
        loop {
            let (read, written) = (d.total_in(), d.total_out());
            let status = d
                .decompress_vec(
                    &compressed[read as usize..],
                    &mut out,
                    FlushDecompress::Sync,
                )
                .map_err(|_| BAD)?;
            if out.len() > limit {
                return Err((1009, "message too big"));
            }
            let all_read = d.total_in() as usize == compressed.len();
            if status == Status::StreamEnd || (all_read && out.len() < out.capacity()) {
                return Ok(out);
            }
            if (d.total_in(), d.total_out()) == (read, written) && out.len() < out.capacity() {
                return Err(BAD);
            }
            out.reserve(out.capacity().min(limit + 1 - out.len()).max(1024));
        }
    })
}

impl<S: AsyncRead + Unpin> AsyncRead for Inflate<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(reader) = this.reader.as_deref_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        loop {
            if !reader.out.is_empty() {
                let n = reader.out.len().min(buf.remaining());
                buf.put_slice(&reader.out.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if let Some((code, reason)) = reader.failed {
                return Poll::Ready(Err(io::Error::other(InflateError { code, reason })));
            }
            // What is buffered goes first, a message at a time.
            if !reader.raw.is_empty() {
                let before = reader.raw.len();
                reader.process();
                // An idle connection holds no buffers.
                if reader.raw.is_empty() {
                    reader.raw = BytesMut::new();
                }
                if !reader.out.is_empty() || reader.failed.is_some() || reader.raw.len() != before {
                    continue;
                }
            }
            let mut chunk = [0u8; 4096];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            reader.raw.extend_from_slice(read.filled());
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inflate<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(value: &str) -> Option<Deflate> {
        Deflate::negotiate([value.as_bytes()], 16)
    }

    /// A client's frame: `first` byte, masked `payload`.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        out
    }

    fn gzip(accept: &str) -> Option<GzipStream> {
        GzipStream::negotiate([accept.as_bytes()], 16)
    }

    #[test]
    fn gzip_is_taken_when_accepted_by_name_or_star() {
        assert!(gzip("gzip, deflate, br, zstd").is_some(), "a browser's");
        assert!(gzip("br;q=1.0, GZIP;q=0.5").is_some());
        assert!(gzip("x-gzip").is_some());
        assert!(gzip("*").is_some());
        assert!(gzip("gzip;q=0").is_none(), "refused by quality");
        assert!(gzip("gzip;q=0.0, *").is_none(), "named beats the star");
        assert!(gzip("*;q=0").is_none());
        assert!(gzip("deflate, br").is_none());
        assert!(gzip("identity").is_none());
        assert!(
            gzip("gzip;q=nope").is_none(),
            "a quality that does not parse"
        );
        assert!(GzipStream::negotiate([], 16).is_none(), "no header");
        assert!(
            GzipStream::negotiate([&b"br"[..], b"gzip"], 16).is_some(),
            "over two lines"
        );
    }

    /// The body a client decodes: what follows the header, inflated.
    fn inflated(stream: &[u8]) -> Vec<u8> {
        let body = stream.strip_prefix(&GzipStream::HEADER).expect("header");
        let mut d = Decompress::new(false);
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(body, &mut out, FlushDecompress::Sync)
            .expect("a valid deflate stream");
        assert_eq!(d.total_in() as usize, body.len(), "all of it read");
        out
    }

    #[test]
    fn segments_made_apart_read_as_one_stream() {
        let g = GzipStream { min_size: 16 };
        let json = Bytes::from(format!(
            "data: {}\n\n",
            r#"{"price":101.5,"symbol":"ACME"}"#.repeat(40)
        ));
        let noise: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut stream = GzipStream::HEADER.to_vec();
        stream.extend_from_slice(&g.encode(b": tiny\n\n"));
        let before = stream.len();
        g.push_shared(&json, &mut stream);
        assert!(stream.len() - before < json.len() / 4, "compressed");
        let at = begin_stored(&mut stream);
        stream.extend_from_slice(b"id: a:e:7\n");
        end_stored(&mut stream, at);
        g.push_shared(&json, &mut stream);
        stream.extend_from_slice(&g.encode(&noise));
        let at = begin_stored(&mut stream);
        stream.extend_from_slice(&noise);
        end_stored(&mut stream, at);

        let mut want = b": tiny\n\n".to_vec();
        want.extend_from_slice(&json);
        want.extend_from_slice(b"id: a:e:7\n");
        want.extend_from_slice(&json);
        want.extend_from_slice(&noise);
        want.extend_from_slice(&noise);
        assert_eq!(inflated(&stream), want);
    }

    /// Processes until nothing more can be done without another read.
    fn drain(r: &mut Reader) {
        loop {
            let before = (r.raw.len(), r.out.len());
            r.process();
            if r.failed.is_some() || (r.raw.len(), r.out.len()) == before {
                return;
            }
        }
    }

    fn reader() -> Reader {
        Reader {
            limit: 1 << 16,
            raw: BytesMut::new(),
            out: BytesMut::new(),
            passing: 0,
            gathered: None,
            failed: None,
        }
    }

    #[test]
    fn the_stream_reads_the_same_however_it_is_cut() {
        let text = b"{\"cmd\":\"publish\",\"data\":\"".repeat(20);
        let mut compressed = offer("permessage-deflate")
            .unwrap()
            .compress(&Bytes::from(text.clone()))
            .unwrap()
            .to_vec();
        let tail = compressed.split_off(compressed.len() / 2);
        // A plain message, a compressed one in two fragments with a ping
        // between, a pong, and a compressed one whole.
        let mut wire = client_frame(0x81, b"plain");
        wire.extend(client_frame(0x41, &compressed));
        wire.extend(client_frame(0x89, b"ping"));
        wire.extend(client_frame(0x80, &tail));
        wire.extend(client_frame(0x8a, b""));
        compressed.extend_from_slice(&tail);
        wire.extend(client_frame(0xc1, &compressed));
        // What tungstenite must see: the plain frames as sent, and each
        // compressed message as one plain frame masked with zeros.
        let mut want = client_frame(0x81, b"plain");
        want.extend(client_frame(0x89, b"ping"));
        let mut whole = reader();
        whole.emit(1, &text);
        want.extend_from_slice(&whole.out);
        want.extend(client_frame(0x8a, b""));
        want.extend_from_slice(&whole.out);
        for cut in [1, 2, 3, 7, 64, wire.len()] {
            let mut r = reader();
            for chunk in wire.chunks(cut) {
                r.raw.extend_from_slice(chunk);
                drain(&mut r);
            }
            assert_eq!(r.failed, None, "cut {cut}");
            assert_eq!(r.out[..], want[..], "cut {cut}");
        }
    }

    #[test]
    fn one_read_of_small_compressed_messages_inflates_one_at_a_time() {
        let text = vec![b' '; 60_000];
        let compressed = offer("permessage-deflate")
            .unwrap()
            .compress(&Bytes::from(text.clone()))
            .unwrap();
        assert!(compressed.len() < 1_000, "{}", compressed.len());
        let mut r = Reader {
            limit: 1 << 20,
            ..reader()
        };
        for _ in 0..10 {
            r.raw.extend(client_frame(0xc1, &compressed));
        }
        let mut one = reader();
        one.emit(1, &text);
        for left in (0..10).rev() {
            r.process();
            assert_eq!(r.out.len(), one.out.len(), "one message inflated");
            assert_eq!(r.raw.len(), left * (compressed.len() + 8), "the rest kept");
            r.out.clear();
        }
        assert_eq!(r.failed, None);
    }

    #[test]
    fn a_length_with_its_top_bit_set_is_refused_not_wrapped() {
        // A compressed fragment, then a continuation claiming 2^64 - 1 bytes.
        let mut wire = client_frame(0x41, b"x");
        wire.extend([0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        wire.extend([1, 2, 3, 4]);
        let mut r = reader();
        r.raw.extend_from_slice(&wire);
        r.process();
        assert_eq!(r.failed, Some((1002, "invalid frame length")));
        // The largest valid length is only too big.
        let mut wire = client_frame(0x41, b"x");
        wire.extend([0x80, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        wire.extend([1, 2, 3, 4]);
        let mut r = reader();
        r.raw.extend_from_slice(&wire);
        r.process();
        assert_eq!(r.failed, Some((1009, "message too big")));
    }

    #[test]
    fn browsers_offers_are_accepted() {
        // Chromium's and Firefox's.
        for value in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate",
        ] {
            let d = offer(value).expect(value);
            assert_eq!(
                d.response(),
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
            );
        }
        let d = offer("x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=\"10\"")
            .expect("the second offer");
        assert!(d.response().ends_with("; server_max_window_bits=10"));
    }

    #[test]
    fn offers_herald_cannot_honour_are_declined() {
        for value in [
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; mystery",
        ] {
            assert_eq!(offer(value), None, "{value}");
        }
    }

    #[test]
    fn compression_round_trips_and_skips_small_messages() {
        let d = offer("permessage-deflate").unwrap();
        let json = Bytes::from("{\"price\":101.25,\"symbol\":\"HRLD\"}".repeat(20));
        let compressed = d.compress(&json).expect("JSON shrinks");
        assert!(compressed.len() < json.len() / 4, "{}", compressed.len());
        let mut wire = compressed.to_vec();
        wire.extend_from_slice(&TAIL);
        assert_eq!(inflate(&wire, 1 << 20).unwrap(), json);
        // Remembered: the same bytes come back for the same payload.
        assert_eq!(d.compress(&json).unwrap().as_ptr(), compressed.as_ptr());
        assert_eq!(d.compress(&Bytes::from_static(b"tiny")), None);
    }

    #[test]
    fn a_small_window_bounds_the_messages_compressed() {
        let d = offer("permessage-deflate; server_max_window_bits=8").unwrap();
        assert!(d.compress(&Bytes::from("a".repeat(256))).is_some());
        assert_eq!(d.compress(&Bytes::from("a".repeat(257))), None);
    }

    #[test]
    fn inflating_stops_at_the_limit() {
        let d = offer("permessage-deflate").unwrap();
        let big = Bytes::from(vec![b'a'; 50_000]);
        let mut wire = d.compress(&big).unwrap().to_vec();
        wire.extend_from_slice(&TAIL);
        assert_eq!(inflate(&wire, 49_999), Err((1009, "message too big")));
        assert_eq!(inflate(&wire, 50_000).unwrap().len(), 50_000);
        assert_eq!(
            inflate(b"\xff\xff\xff\x00\x00\xff\xff", 100),
            Err((1007, "invalid compressed data"))
        );
    }
}
