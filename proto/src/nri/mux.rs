//! NRI's connection multiplexer: several logical byte streams over one socket.
//!
//! Each chunk is framed by an 8-byte header, the logical connection's ID and the payload length
//! (both u32, big-endian), and carries at most [`MAX_PAYLOAD`] bytes (one ttrpc frame's worth);
//! a longer write goes out as several chunks. Chunks for a connection nobody opened are dropped,
//! as the runtime does. ID 0 is reserved.
//!
//! [`MuxDecoder`] is the pure framing (tested for any split of the input); [`Mux`] runs it on a
//! socket: a reader task hands each connection's chunks to its [`MuxConn`], writes are
//! serialized through one lock so chunks of two connections never interleave mid-chunk.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Mutex};

use super::ttrpc;

/// The runtime calls the plugin on this connection (the plugin serves ttrpc there).
pub const PLUGIN_SERVICE_CONN: u32 = 1;
/// The plugin calls the runtime on this connection (`RegisterPlugin`).
pub const RUNTIME_SERVICE_CONN: u32 = 2;

/// Bytes before a chunk's payload.
pub const HEADER_LEN: usize = 8;
/// The largest payload of one chunk: a whole ttrpc frame.
pub const MAX_PAYLOAD: usize = ttrpc::HEADER_LEN + ttrpc::MAX_DATA;

/// Chunks queued per connection before the reader waits for its consumer.
const QUEUE: usize = 64;

/// The multiplexed stream is unusable.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("mux chunk of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("mux connection ID 0 is reserved")]
    ReservedId,
    #[error("the runtime's socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Frames `data` for connection `id` (several chunks when it is long).
pub fn encode(id: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + HEADER_LEN);
    // An empty write still sends one (empty) chunk, as the runtime does.
    let mut chunks = data.chunks(MAX_PAYLOAD).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
    }
    for chunk in chunks {
        out.extend_from_slice(&id.to_be_bytes());
        // MAX_PAYLOAD fits in u32.
        out.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// Reassembles chunks from the socket's byte stream.
#[derive(Debug, Default)]
pub struct MuxDecoder {
    buf: Vec<u8>,
}

impl MuxDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole chunk as (connection ID, payload); `Ok(None)` until one is complete.
    pub fn next_chunk(&mut self) -> Result<Option<(u32, Vec<u8>)>, MuxError> {
        let Some(h) = self.buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let id = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(MuxError::TooLarge(len));
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some((id, payload)))
    }
}

type Writer = Arc<Mutex<Pin<Box<dyn AsyncWrite + Send>>>>;

/// One logical connection.
pub struct MuxConn {
    id: u32,
    rx: mpsc::Receiver<Vec<u8>>,
    writer: Writer,
}

impl MuxConn {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The next bytes the peer sent on this connection; `None` once the socket is closed.
    pub async fn read(&mut self) -> Option<Vec<u8>> {
        self.rx.recv().await
    }

    /// A handle that writes on this connection (shared by concurrent responders).
    pub fn sender(&self) -> MuxSender {
        MuxSender {
            id: self.id,
            writer: self.writer.clone(),
        }
    }
}

/// Writes on one logical connection.
#[derive(Clone)]
pub struct MuxSender {
    id: u32,
    writer: Writer,
}

impl MuxSender {
    pub async fn write(&self, data: &[u8]) -> std::io::Result<()> {
        let bytes = encode(self.id, data);
        let mut w = self.writer.lock().await;
        w.write_all(&bytes).await?;
        w.flush().await
    }
}

/// A multiplexed socket.
pub struct Mux {
    /// Ends with the socket: `Ok` at end of file, the error otherwise.
    pub reader: tokio::task::JoinHandle<Result<(), MuxError>>,
}

impl Mux {
    /// Starts reading `stream` and opens the connections `ids` on it.
    pub fn start<S>(stream: S, ids: &[u32]) -> Result<(Mux, Vec<MuxConn>), MuxError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        if ids.contains(&0) {
            return Err(MuxError::ReservedId);
        }
        let (mut read, write) = tokio::io::split(stream);
        let writer: Writer = Arc::new(Mutex::new(Box::pin(write)));
        let mut routes = HashMap::new();
        let mut conns = vec![];
        for &id in ids {
            let (tx, rx) = mpsc::channel(QUEUE);
            routes.insert(id, tx);
            conns.push(MuxConn {
                id,
                rx,
                writer: writer.clone(),
            });
        }
        let reader = tokio::spawn(async move {
            let mut decoder = MuxDecoder::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = read.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                decoder.push(&buf[..n]);
                while let Some((id, payload)) = decoder.next_chunk()? {
                    if let Some(tx) = routes.get(&id) {
                        // A connection whose owner went away stops being served.
                        if tx.send(payload).await.is_err() {
                            routes.remove(&id);
                        }
                    }
                }
            }
        });
        Ok((Mux { reader }, conns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_id_then_length() {
        assert_eq!(encode(2, b"xy"), [0, 0, 0, 2, 0, 0, 0, 2, b'x', b'y']);
        assert_eq!(encode(1, b""), [0, 0, 0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn long_writes_are_split_and_any_read_split_reassembles() {
        let long = vec![5u8; MAX_PAYLOAD + 10];
        let bytes = [encode(1, b"hello"), encode(2, &long), encode(7, b"z")].concat();
        let want: Vec<(u32, Vec<u8>)> = vec![
            (1, b"hello".to_vec()),
            (2, vec![5; MAX_PAYLOAD]),
            (2, vec![5; 10]),
            (7, b"z".to_vec()),
        ];
        for cut in [0, 1, 7, 8, 9, 13, 100, bytes.len() - 1, bytes.len()] {
            let mut d = MuxDecoder::new();
            let mut got = vec![];
            for part in [&bytes[..cut], &bytes[cut..]] {
                d.push(part);
                while let Some(c) = d.next_chunk().unwrap() {
                    got.push(c);
                }
            }
            assert_eq!(got, want, "split at {cut}");
        }
    }

    #[test]
    fn oversized_chunk_is_an_error() {
        let mut d = MuxDecoder::new();
        d.push(&[0, 0, 0, 1]);
        d.push(&((MAX_PAYLOAD + 1) as u32).to_be_bytes());
        assert!(matches!(d.next_chunk(), Err(MuxError::TooLarge(_))));
    }

    #[tokio::test]
    async fn connections_are_routed_and_unknown_ids_dropped() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let (mux, mut conns) = Mux::start(ours, &[1, 2]).unwrap();
        let mut c2 = conns.pop().unwrap();
        let mut c1 = conns.pop().unwrap();
        // The peer writes to 2, to an unknown 9, then to 1, in one go and split oddly.
        let bytes = [encode(2, b"two"), encode(9, b"nobody"), encode(1, b"one")].concat();
        theirs.write_all(&bytes[..5]).await.unwrap();
        theirs.write_all(&bytes[5..]).await.unwrap();
        assert_eq!(c2.read().await.unwrap(), b"two");
        assert_eq!(c1.read().await.unwrap(), b"one");
        // Writes come out framed with the connection's ID.
        c1.sender().write(b"back").await.unwrap();
        let mut buf = [0u8; 12];
        theirs.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, [0, 0, 0, 1, 0, 0, 0, 4, b'b', b'a', b'c', b'k']);
        // The peer closes: reads end, the reader finishes cleanly.
        drop(theirs);
        assert!(c1.read().await.is_none());
        assert!(mux.reader.await.unwrap().is_ok());
        assert!(matches!(
            Mux::start(tokio::io::duplex(8).0, &[0]),
            Err(MuxError::ReservedId)
        ));
    }
}
