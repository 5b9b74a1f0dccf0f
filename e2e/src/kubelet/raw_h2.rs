//! A raw HTTP/2 gRPC client for one unary call, sending whatever `:authority` it is given: the
//! socket path, as kubelets before 1.26 (grpc-go before 1.48) and Python's grpcio do. tonic's
//! client cannot send that (its URI type refuses a path as authority), hence frames by hand.

use loona_hpack::{Decoder, Encoder};
use sriov_proto::authority::{
    frame, ACK, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PREFACE, RST_STREAM, SETTINGS,
};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How a call ended when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawCallError {
    /// The server reset the stream (`RST_STREAM`) with this error code (1 = PROTOCOL_ERROR).
    Reset(u32),
    /// The server closed the connection (`GOAWAY`) with this error code.
    GoAway(u32),
    /// The call ended with a non-zero `grpc-status`.
    Status(String, String),
    Io(String),
}

/// Calls the unary gRPC method `method` (`/package.Service/Method`) on the server at `socket`
/// with `:authority: authority` and the encoded request `message`; returns the encoded reply.
pub fn unary_call(
    socket: &Path,
    authority: &str,
    method: &str,
    message: &[u8],
) -> Result<Vec<u8>, RawCallError> {
    let io = |e: std::io::Error| RawCallError::Io(e.to_string());
    let mut s = UnixStream::connect(socket).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    let headers: [(&[u8], &[u8]); 6] = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", method.as_bytes()),
        (b":authority", authority.as_bytes()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ];
    let block = Encoder::new().encode(headers.iter().copied());
    let mut grpc = vec![0u8];
    grpc.extend_from_slice(&(message.len() as u32).to_be_bytes());
    grpc.extend_from_slice(message);
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(HEADERS, END_HEADERS, 1, &[&block]));
    out.extend(frame(DATA, END_STREAM, 1, &[&grpc]));
    s.write_all(&out).map_err(io)?;

    let mut decoder = Decoder::new();
    let mut body = Vec::new();
    let mut status: Option<(String, String)> = None;
    loop {
        let mut h = [0u8; 9];
        s.read_exact(&mut h).map_err(io)?;
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        let mut payload = vec![0; len];
        s.read_exact(&mut payload).map_err(io)?;
        let code = || {
            payload
                .get(..4)
                .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        };
        match kind {
            SETTINGS if flags & ACK == 0 => {
                s.write_all(&frame(SETTINGS, ACK, 0, &[])).map_err(io)?
            }
            RST_STREAM => return Err(RawCallError::Reset(code())),
            GOAWAY => {
                let c = payload
                    .get(4..8)
                    .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                return Err(RawCallError::GoAway(c));
            }
            DATA => body.extend_from_slice(&payload),
            HEADERS => {
                let fields = decoder
                    .decode(&payload)
                    .map_err(|e| RawCallError::Io(format!("response headers: {e:?}")))?;
                for (n, v) in fields {
                    let text = String::from_utf8_lossy(&v).into_owned();
                    match &n[..] {
                        b"grpc-status" => status.get_or_insert_with(Default::default).0 = text,
                        b"grpc-message" => status.get_or_insert_with(Default::default).1 = text,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        if matches!(kind, DATA | HEADERS) && flags & END_STREAM != 0 {
            break;
        }
    }
    match status {
        Some((code, _)) if code == "0" => {}
        Some((code, msg)) => return Err(RawCallError::Status(code, msg)),
        None => return Err(RawCallError::Io("no grpc-status".into())),
    }
    // One length-prefixed message.
    Ok(body.get(5..).unwrap_or_default().to_vec())
}
