//! Any `:authority` on the servers' side of a Unix-socket connection.
//!
//! gRPC over a Unix socket has no host, so clients fill HTTP/2's `:authority` as they like:
//! grpc-go before 1.48 (kubelets before 1.26, which dialed plugins with the socket path as
//! target; fixed by kubernetes PR 112597) and Python's grpcio send the socket path. The `h2`
//! crate under tonic parses `:authority` as a URI authority and answers anything else (a path:
//! `/var/lib/kubelet/device-plugins/x.sock`) with `RST_STREAM(PROTOCOL_ERROR)`, and has no
//! option to relax that. The Go device plugin accepts such clients, so we must too.
//!
//! [`AnyAuthority`] wraps the server's end of the connection and rewrites, in the bytes the
//! client sends, every request header block whose `:authority` is no valid authority: the
//! value becomes `localhost` (what newer grpc-go sends). HPACK compression is stateful, so
//! every header block of the connection is decoded (with the client's table) and encoded
//! again (with a table of our own, which `h2` mirrors); every other frame passes unchanged.
//! The server's direction is not touched. A connection that does not start with the HTTP/2
//! preface, or whose header blocks do not decode, is passed through or closed: `h2` then says
//! what is wrong with it, as it would have.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http::uri::Authority;

/// The client's connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
/// Frame types and flags (RFC 9113 §6) used here and by test clients.
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// One HTTP/2 frame: the 9-byte header, then `parts` as its payload.
pub fn frame(kind: u8, flags: u8, stream: u32, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut f = Vec::with_capacity(FRAME_HEADER + len);
    f.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    for p in parts {
        f.extend_from_slice(p);
    }
    f
}
/// `SETTINGS_MAX_FRAME_SIZE`'s initial value: every peer accepts frames this large.
const MAX_FRAME: usize = 16_384;
/// `SETTINGS_HEADER_TABLE_SIZE`'s initial value, which `h2` keeps.
const HEADER_TABLE: usize = 4096;
/// Larger header blocks (encoded or decoded) close the connection: kubelet's are a few hundred
/// bytes, and a decoder must bound what a small block can expand to.
const MAX_BLOCK: usize = 64 * 1024;
/// What replaces an `:authority` that is no authority.
const REPLACEMENT: &[u8] = b"localhost";

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// Whether `h2` would accept this `:authority`.
fn acceptable(value: &[u8]) -> bool {
    Authority::try_from(value).is_ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Reading the preface.
    Preface,
    /// Rewriting header blocks.
    Frames,
    /// Not HTTP/2 as we know it: bytes pass unchanged.
    Through,
}

/// A header block being collected (HEADERS, then CONTINUATION until END_HEADERS).
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// The rewriting of the client's bytes, apart from the IO.
struct Rewriter {
    mode: Mode,
    input: Vec<u8>,
    output: Vec<u8>,
    block: Option<Block>,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
    /// `:authority` values replaced so far.
    rewritten: u64,
}

impl Rewriter {
    fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE);
        Rewriter {
            mode: Mode::Preface,
            input: Vec::new(),
            output: Vec::new(),
            block: None,
            decoder,
            encoder: Encoder::new(),
            rewritten: 0,
        }
    }

    /// Takes bytes from the client; what may go to the server lands in `output`.
    fn feed(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.mode == Mode::Through {
            self.output.extend_from_slice(bytes);
            return Ok(());
        }
        self.input.extend_from_slice(bytes);
        if self.mode == Mode::Preface {
            let n = self.input.len().min(PREFACE.len());
            if self.input[..n] != PREFACE[..n] {
                self.mode = Mode::Through;
                self.output.append(&mut self.input);
                return Ok(());
            }
            if n < PREFACE.len() {
                return Ok(());
            }
            self.output.extend(self.input.drain(..PREFACE.len()));
            self.mode = Mode::Frames;
        }
        let mut start = 0;
        while self.input.len() - start >= FRAME_HEADER {
            let h = &self.input[start..start + FRAME_HEADER];
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            if len > MAX_BLOCK {
                return Err(invalid(format!("a {len}-byte HTTP/2 frame")));
            }
            let end = start + FRAME_HEADER + len;
            if self.input.len() < end {
                break;
            }
            let frame = std::mem::take(&mut self.input);
            let result = self.on_frame(&frame[start..end]);
            self.input = frame;
            result?;
            start = end;
        }
        self.input.drain(..start);
        Ok(())
    }

    /// The client closed its side: whatever is left goes as it is.
    fn finish(&mut self) {
        self.output.append(&mut self.input);
    }

    fn on_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER..];
        if let Some(block) = &mut self.block {
            if kind != CONTINUATION || stream != block.stream {
                return Err(invalid("a header block interrupted by another frame"));
            }
            block.fragment.extend_from_slice(payload);
            if block.fragment.len() > MAX_BLOCK {
                return Err(invalid("a header block over 64 KiB"));
            }
            if flags & END_HEADERS != 0 {
                let block = self.block.take();
                if let Some(b) = block {
                    self.emit(b)?;
                }
            }
            return Ok(());
        }
        if kind != HEADERS {
            // CONTINUATION without HEADERS and every other frame: h2 judges them.
            self.output.extend_from_slice(frame);
            return Ok(());
        }
        let mut body = payload;
        let mut pad = 0;
        if flags & PADDED != 0 {
            let (&n, rest) = body
                .split_first()
                .ok_or_else(|| invalid("a padded HEADERS frame without its pad length"))?;
            pad = usize::from(n);
            body = rest;
        }
        let mut priority = None;
        if flags & PRIORITY != 0 {
            let p: [u8; 5] = body
                .get(..5)
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| invalid("a HEADERS frame too short for its priority"))?;
            priority = Some(p);
            body = &body[5..];
        }
        let fragment = body
            .get(
                ..body
                    .len()
                    .checked_sub(pad)
                    .ok_or_else(|| invalid("padding longer than the frame"))?,
            )
            .unwrap_or_default();
        let block = Block {
            stream,
            end_stream: flags & END_STREAM != 0,
            priority,
            fragment: fragment.to_vec(),
        };
        if flags & END_HEADERS != 0 {
            self.emit(block)
        } else {
            self.block = Some(block);
            Ok(())
        }
    }

    /// Decodes a whole block, fixes `:authority`, encodes it again and writes its frames.
    fn emit(&mut self, block: Block) -> io::Result<()> {
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut size = 0usize;
        let mut rewritten = 0;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                size = size.saturating_add(name.len() + value.len() + 32);
                if size > MAX_BLOCK {
                    return;
                }
                let value = if &name[..] == b":authority" && !acceptable(&value) {
                    rewritten += 1;
                    REPLACEMENT.to_vec()
                } else {
                    value.into_owned()
                };
                headers.push((name.into_owned(), value));
            })
            .map_err(|e| invalid(format!("a header block that does not decode: {e:?}")))?;
        if size > MAX_BLOCK {
            return Err(invalid("a header block that decodes to over 64 KiB"));
        }
        self.rewritten += rewritten;
        let encoded = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
        let first_room = MAX_FRAME - if block.priority.is_some() { 5 } else { 0 };
        let (first, mut rest) = encoded.split_at(encoded.len().min(first_room));
        let mut flags = if block.end_stream { END_STREAM } else { 0 };
        if block.priority.is_some() {
            flags |= PRIORITY;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        let priority = block.priority.unwrap_or_default();
        let priority = &priority[..if block.priority.is_some() { 5 } else { 0 }];
        self.write_frame(HEADERS, flags, block.stream, &[priority, first]);
        while !rest.is_empty() {
            let (chunk, left) = rest.split_at(rest.len().min(MAX_FRAME));
            rest = left;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            self.write_frame(CONTINUATION, flags, block.stream, &[chunk]);
        }
        Ok(())
    }

    fn write_frame(&mut self, kind: u8, flags: u8, stream: u32, parts: &[&[u8]]) {
        self.output.extend(frame(kind, flags, stream, parts));
    }
}

/// The server's end of a connection, with the client's `:authority` made acceptable.
pub struct AnyAuthority<S> {
    inner: S,
    rewriter: Rewriter,
    /// How much of `rewriter.output` was handed out already.
    sent: usize,
    eof: bool,
}

impl<S> AnyAuthority<S> {
    pub fn new(inner: S) -> Self {
        AnyAuthority {
            inner,
            rewriter: Rewriter::new(),
            sent: 0,
            eof: false,
        }
    }

    /// How many `:authority` values were replaced on this connection.
    pub fn rewritten(&self) -> u64 {
        self.rewriter.rewritten
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AnyAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let pending = &this.rewriter.output[this.sent..];
            if !pending.is_empty() {
                let n = pending.len().min(buf.remaining());
                buf.put_slice(&pending[..n]);
                this.sent += n;
                if this.sent == this.rewriter.output.len() {
                    this.rewriter.output.clear();
                    this.sent = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut bytes = [0u8; 8192];
            let mut read = ReadBuf::new(&mut bytes);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    this.eof = true;
                    this.rewriter.finish();
                }
                Poll::Ready(Ok(())) => this.rewriter.feed(read.filled())?,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AnyAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AnyAuthority<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        frame(kind, flags, stream, &[payload])
    }

    /// Splits `output` into frames and decodes the header blocks (as h2 would, with one
    /// decoder for the connection).
    /// A header block's fields, as h2 decodes them.
    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    fn server_view(output: &[u8]) -> Vec<(u8, u8, Fields)> {
        assert!(output.starts_with(PREFACE));
        let mut rest = &output[PREFACE.len()..];
        let mut decoder = Decoder::new();
        let mut out = Vec::new();
        let mut block = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let payload = &rest[9..9 + len];
            assert!(len <= MAX_FRAME);
            match kind {
                HEADERS => {
                    let skip = if flags & PRIORITY != 0 { 5 } else { 0 };
                    block = payload[skip..].to_vec();
                }
                CONTINUATION => block.extend_from_slice(payload),
                _ => out.push((kind, flags, vec![])),
            }
            if matches!(kind, HEADERS | CONTINUATION) && flags & END_HEADERS != 0 {
                out.push((HEADERS, flags, decoder.decode(&block).unwrap()));
            }
            rest = &rest[9 + len..];
        }
        out
    }

    fn request(authority: &[u8]) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (b":method", b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (
                b":path",
                b"/v1beta1.DevicePlugin/GetDevicePluginOptions".to_vec(),
            ),
            (b":authority", authority.to_vec()),
            (b"content-type", b"application/grpc".to_vec()),
            (b"te", b"trailers".to_vec()),
        ]
    }

    #[test]
    fn a_socket_path_authority_becomes_localhost_and_the_rest_stays() {
        let path = b"/var/lib/kubelet/device-plugins/intel.com_net.sock";
        let mut client = Encoder::new();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(one(0x4, 0, 0, &[])); // SETTINGS
        for stream in [1u32, 3] {
            // The second block refers to the first one's dynamic table entries.
            let block = client.encode(request(path).iter().map(|(n, v)| (*n, &v[..])));
            let mut payload = vec![0, 0, 0, 0, 7]; // priority
            payload.extend_from_slice(&block);
            bytes.extend(one(HEADERS, END_HEADERS | PRIORITY, stream, &payload));
            bytes.extend(one(0x0, END_STREAM, stream, &[0, 0, 0, 0, 0])); // DATA
        }
        // A good authority, split over HEADERS + CONTINUATION, padded.
        let block = client.encode(request(b"localhost:1234").iter().map(|(n, v)| (*n, &v[..])));
        let (a, b) = block.split_at(5);
        let mut payload = vec![3];
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]);
        bytes.extend(one(HEADERS, PADDED | END_STREAM, 5, &payload));
        bytes.extend(one(CONTINUATION, END_HEADERS, 5, b));

        let mut r = Rewriter::new();
        // One byte at a time: frames are reassembled whatever the reads.
        for chunk in bytes.chunks(1) {
            r.feed(chunk).unwrap();
        }
        r.finish();
        assert_eq!(r.rewritten, 2);
        let view = server_view(&r.output);
        let blocks: Vec<_> = view
            .iter()
            .filter(|(k, _, h)| *k == HEADERS && !h.is_empty())
            .collect();
        assert_eq!(blocks.len(), 3);
        for (i, (_, flags, headers)) in blocks.iter().enumerate() {
            let want: &[u8] = if i < 2 {
                b"localhost"
            } else {
                b"localhost:1234"
            };
            let expected: Fields = request(want)
                .into_iter()
                .map(|(n, v)| (n.to_vec(), v))
                .collect();
            assert_eq!(headers, &expected, "block {i}");
            assert_eq!(flags & END_STREAM != 0, i == 2);
        }
        // SETTINGS and both DATA frames passed through.
        assert_eq!(view.iter().filter(|(k, _, _)| *k == 0x0).count(), 2);
        assert_eq!(view.iter().filter(|(k, _, _)| *k == 0x4).count(), 1);
    }

    #[test]
    fn large_blocks_are_split_into_continuations() {
        let mut client = Encoder::new();
        let big = vec![b'x'; 40_000];
        let mut headers = request(b"/run/x.sock");
        headers.push((b"x-big", big.clone()));
        let block = client.encode(headers.iter().map(|(n, v)| (*n, &v[..])));
        let mut bytes = PREFACE.to_vec();
        for (i, chunk) in block.chunks(MAX_FRAME).enumerate() {
            let last = (i + 1) * MAX_FRAME >= block.len();
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            bytes.extend(one(kind, if last { END_HEADERS } else { 0 }, 1, chunk));
        }
        let mut r = Rewriter::new();
        r.feed(&bytes).unwrap();
        let view = server_view(&r.output);
        assert_eq!(view.len(), 1);
        assert!(view[0].2.contains(&(b"x-big".to_vec(), big)));
        assert!(view[0]
            .2
            .contains(&(b":authority".to_vec(), b"localhost".to_vec())));
    }

    #[test]
    fn not_http2_passes_and_garbage_closes() {
        let mut r = Rewriter::new();
        r.feed(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(r.output, b"GET / HTTP/1.1\r\n\r\n");
        let mut r = Rewriter::new();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(one(
            HEADERS,
            END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ));
        assert!(r.feed(&bytes).is_err());
        let mut r = Rewriter::new();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(one(HEADERS, 0, 1, &[0x82]));
        bytes.extend(one(0x0, 0, 1, &[]));
        assert!(r.feed(&bytes).is_err(), "a block interrupted");
        let mut r = Rewriter::new();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(one(HEADERS, PADDED | END_HEADERS, 1, &[9, 0x82]));
        assert!(r.feed(&bytes).is_err(), "padding past the end");
        assert!(!acceptable(b"/var/lib/kubelet/device-plugins/kubelet.sock"));
        assert!(!acceptable(b""));
        assert!(acceptable(b"localhost"));
    }
}
