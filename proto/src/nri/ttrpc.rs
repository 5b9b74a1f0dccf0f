//! ttrpc framing: a 10-byte header (data length u32, stream ID u32, both big-endian; message
//! type u8; flags u8), then the data, at most [`MAX_DATA`] bytes. Requests (type 1) and
//! responses (type 2) carry a protobuf [`Request`] / [`Response`]; clients number their streams
//! with odd IDs.
//!
//! [`FrameDecoder`] takes bytes as they arrive (any split) and gives back whole frames; a header
//! announcing more than [`MAX_DATA`] is an error (the stream cannot be resynchronized after it).

include!(concat!(env!("OUT_DIR"), "/ttrpc.rs"));

/// Bytes before a frame's data.
pub const HEADER_LEN: usize = 10;
/// The largest data a frame may carry (ttrpc's limit).
pub const MAX_DATA: usize = 4 << 20;

/// Frame type of a call.
pub const TYPE_REQUEST: u8 = 1;
/// Frame type of a call's outcome.
pub const TYPE_RESPONSE: u8 = 2;
/// Frame type of stream data (streaming calls, which NRI does not use).
pub const TYPE_DATA: u8 = 3;

/// gRPC status codes ttrpc carries in [`Status::code`].
pub mod code {
    pub const OK: i32 = 0;
    pub const UNKNOWN: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const UNAVAILABLE: i32 = 14;
}

/// A whole frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub stream_id: u32,
    pub kind: u8,
    pub flags: u8,
    pub data: Vec<u8>,
}

/// A frame that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("ttrpc frame of {0} bytes exceeds the 4 MiB limit")]
    TooLarge(usize),
}

impl Frame {
    /// Header and data, ready to be written. Fails for data above [`MAX_DATA`].
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        if self.data.len() > MAX_DATA {
            return Err(FrameError::TooLarge(self.data.len()));
        }
        let mut out = Vec::with_capacity(HEADER_LEN + self.data.len());
        // MAX_DATA fits in u32.
        out.extend_from_slice(&(self.data.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.stream_id.to_be_bytes());
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&self.data);
        Ok(out)
    }
}

/// Reassembles frames from a byte stream.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, `Ok(None)` until one is complete.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some(header) = self.buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let len = be32(&header[0..4]) as usize;
        if len > MAX_DATA {
            return Err(FrameError::TooLarge(len));
        }
        let stream_id = be32(&header[4..8]);
        let (kind, flags) = (header[8], header[9]);
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let data = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(Frame {
            stream_id,
            kind,
            flags,
            data,
        }))
    }

    /// Bytes held that do not make a whole frame yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

impl Status {
    pub fn ok() -> Status {
        Status::default()
    }

    pub fn error(code: i32, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
            details: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn frame(id: u32, data: &[u8]) -> Frame {
        Frame {
            stream_id: id,
            kind: TYPE_REQUEST,
            flags: 0,
            data: data.to_vec(),
        }
    }

    #[test]
    fn header_layout_is_big_endian_length_stream_type_flags() {
        let f = Frame {
            stream_id: 0x0102_0304,
            kind: TYPE_RESPONSE,
            flags: 0x05,
            data: b"abc".to_vec(),
        };
        assert_eq!(
            f.encode().unwrap(),
            [0, 0, 0, 3, 1, 2, 3, 4, 2, 5, b'a', b'b', b'c']
        );
    }

    #[test]
    fn round_trip_with_every_split() {
        let frames = [frame(1, b"first"), frame(3, b""), frame(5, &[7; 300])];
        let bytes: Vec<u8> = frames.iter().flat_map(|f| f.encode().unwrap()).collect();
        // Every split point, and byte by byte: the same frames come out.
        for cut in 0..=bytes.len() {
            let mut d = FrameDecoder::new();
            let mut got = vec![];
            for part in [&bytes[..cut], &bytes[cut..]] {
                d.push(part);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames, "split at {cut}");
            assert_eq!(d.pending(), 0);
        }
        let mut d = FrameDecoder::new();
        let mut got = vec![];
        for b in &bytes {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn oversized_frames_are_errors_not_allocations() {
        let mut d = FrameDecoder::new();
        d.push(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0]);
        assert_eq!(d.next_frame(), Err(FrameError::TooLarge(u32::MAX as usize)));
        let mut d = FrameDecoder::new();
        let over = (MAX_DATA + 1) as u32;
        d.push(&over.to_be_bytes());
        d.push(&[0, 0, 0, 1, 1, 0]);
        assert!(d.next_frame().is_err());
        assert!(frame(1, &vec![0; MAX_DATA + 1]).encode().is_err());
        assert!(frame(1, &vec![0; MAX_DATA]).encode().is_ok());
    }

    #[test]
    fn garbage_never_panics() {
        // Deterministic pseudo-random bytes, fed in odd-sized chunks.
        let mut x: u32 = 0x1234_5678;
        let mut bytes = vec![];
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            bytes.push((x >> 24) as u8);
        }
        for chunk in [1, 7, 10, 11, 4096] {
            let mut d = FrameDecoder::new();
            for part in bytes.chunks(chunk) {
                d.push(part);
                match d.next_frame() {
                    Ok(Some(f)) => {
                        // Whatever the data is, decoding it as a request fails or succeeds.
                        let _ = Request::decode(f.data.as_slice());
                    }
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn envelope_field_numbers() {
        let r = Request {
            service: "s".into(),
            method: "m".into(),
            payload: vec![1],
            timeout_nano: 2,
            metadata: vec![KeyValue {
                key: "k".into(),
                value: "v".into(),
            }],
        };
        assert_eq!(
            r.encode_to_vec(),
            [
                0x0a, 1, b's', 0x12, 1, b'm', 0x1a, 1, 1, 0x20, 2, 0x2a, 6, 0x0a, 1, b'k', 0x12, 1,
                b'v'
            ]
        );
        let resp = Response {
            status: Some(Status::error(code::UNIMPLEMENTED, "x")),
            payload: vec![9],
        };
        assert_eq!(
            resp.encode_to_vec(),
            [0x0a, 5, 0x08, 12, 0x12, 1, b'x', 0x12, 1, 9]
        );
        assert_eq!(Response::decode(&resp.encode_to_vec()[..]).unwrap(), resp);
    }
}
