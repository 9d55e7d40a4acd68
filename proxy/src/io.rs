//! Byte plumbing shared by negotiation and relaying: a boxed duplex stream, and reading
//! whole frames from one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::framer::{Frame, FrameError, Framer};

/// Any duplex byte stream a leg can run on: TCP, or TLS over TCP on either side.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static> Io for T {}

pub type BoxIo = Box<dyn Io>;

/// The most room a read makes in the framer's buffer. A read fills whatever spare room
/// the buffer has, which can be more when the buffer grew for a long stanza; the
/// framer's limits bound it either way. A TLS record (up to 16 KiB of plaintext) that
/// does not fit is handed out over several reads from the TLS layer's buffer, without
/// more syscalls.
pub const READ_CHUNK: usize = 4 * 1024;

/// What a read asks for after a short one: a quiet session waits with this much room
/// in its framer, and a read that fills it asks for twice as much next time.
const READ_IDLE: usize = 512;

#[derive(Debug)]
pub enum ReadError {
    Frame(FrameError),
    Io(std::io::Error),
    Timeout,
}

/// Reads until the framer yields a frame. `Ok(None)`: the peer closed the connection.
///
/// `restart` is checked after every read and before the new bytes are framed: the other
/// direction sets it when a stream restart is due (SASL success), and the first bytes the
/// peer can send after it are the new stream header. Plain `read` is cancellation-safe, so
/// callers may race this future against shutdown.
///
/// Bytes are read straight into the framer's buffer, with at least `room` bytes of
/// room made first (kept between calls: [`READ_IDLE`] after a short read, doubling up
/// to [`READ_CHUNK`] while reads come back full), so an idle session holds no read
/// buffer of its own.
pub async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
    framer: &mut Framer,
    room: &mut usize,
    restart: Option<&AtomicBool>,
    timeout: Option<Duration>,
) -> Result<Option<Frame>, ReadError> {
    // One deadline for the whole frame, not per read: a peer trickling a byte at a time
    // would otherwise hold a handshake open indefinitely.
    let deadline = timeout.map(|limit| tokio::time::Instant::now() + limit);
    loop {
        if let Some(flag) = restart {
            if flag.swap(false, Ordering::AcqRel) {
                framer.restart();
            }
        }
        if let Some(frame) = framer.next_frame().map_err(ReadError::Frame)? {
            return Ok(Some(frame));
        }
        let want = (*room).clamp(READ_IDLE, READ_CHUNK);
        let read = reader.read_buf(framer.read_buf(want));
        let n = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, read)
                .await
                .map_err(|_| ReadError::Timeout)?,
            None => read.await,
        }
        .map_err(ReadError::Io)?;
        if n == 0 {
            return Ok(None);
        }
        *room = if n >= want { want * 2 } else { READ_IDLE };
    }
}

/// Writes and flushes: TLS streams hold bytes until flushed.
pub async fn send<W: AsyncWrite + Unpin + ?Sized>(
    writer: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framer::FrameLimits;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_trickled_header_times_out_as_a_whole() {
        let (mut peer, mut ours) = tokio::io::duplex(64);
        let trickle = tokio::spawn(async move {
            // A well-formed header, one byte every 20 ms: each read succeeds in time.
            let header = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>";
            for b in header {
                if peer.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let mut framer = Framer::new(FrameLimits::default());
        let mut room = 64;
        let started = std::time::Instant::now();
        let got = read_frame(
            &mut ours,
            &mut framer,
            &mut room,
            None,
            Some(Duration::from_millis(300)),
        )
        .await;
        assert!(matches!(got, Err(ReadError::Timeout)), "{got:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        trickle.abort();
    }
}
