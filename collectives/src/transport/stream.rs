//! Framing over byte streams: one reader and one writer per peer.
//!
//! TCP, QUIC and the in-memory transport differ only in how they open their streams; once open,
//! they all become a [`StreamTransport`]. A writer is marked dirty while a frame is part-written,
//! so that an operation dropped mid-send never leaves a peer parsing half a frame as a header.

use std::{
    any::Any,
    io::{self, IoSlice},
    sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::Mutex,
};

use super::{HostArena, Transport, shm::Arena};
use crate::{
    error::{CollectiveError, Result},
    frame::{
        ErrorCode, FrameKind, HEADER_LEN, Header, MAX_ERROR_PAYLOAD, error_payload,
        parse_error_payload,
    },
};

/// Payloads up to this size are copied behind the header and written with one call.
const COALESCE_BYTES: usize = 16 * 1024;
const NOT_WAITING: usize = usize::MAX;

/// A reader that can lend the bytes it holds instead of copying them out (shared memory).
/// The default lends nothing, and [`Transport::recv_with`] then copies through scratch.
pub trait Lend {
    /// Whether this reader lends; the other methods are only called where it does.
    const LENDS: bool = false;

    /// Waits until bytes are readable; `Ready(Ok(n))`: `n` lie contiguously at the read
    /// position (0 at the end of the stream).
    fn poll_lend(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<usize>> {
        unreachable!("a reader that does not lend was asked to")
    }

    /// The first `n` readable bytes, in place (`n` at most what `poll_lend` returned).
    fn lent(&self, _n: usize) -> &[u8] {
        unreachable!("a reader that does not lend was asked to")
    }

    /// Marks the first `n` lent bytes read.
    fn give_back(&mut self, _n: usize) {
        unreachable!("a reader that does not lend was asked to")
    }
}

impl Lend for tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf> {}
impl Lend for tokio::io::ReadHalf<tokio::io::DuplexStream> {}
impl Lend for quinn::RecvStream {}

/// The two directions of the link to one peer.
pub struct Link<R, W> {
    /// Bytes from the peer.
    pub reader: R,
    /// Bytes to the peer.
    pub writer: W,
}

struct Reader<R> {
    io: R,
    dirty: bool,
}

struct Writer<W> {
    io: W,
    dirty: bool,
    staging: Vec<u8>,
}

/// Whether byte-stream transports time their waits for each peer (on unless turned off).
static LINK_TIMING: AtomicBool = AtomicBool::new(true);

/// Turns the per-link wait timing of every byte-stream transport of this process on or off
/// (`ringrun bench --link-timing off` measures what it costs: two clock reads per frame).
pub fn set_link_timing(on: bool) {
    LINK_TIMING.store(on, Ordering::Relaxed);
}

/// A [`Transport`] over one pair of byte streams per peer.
pub struct StreamTransport<R, W> {
    rank: usize,
    readers: Vec<Option<Mutex<Reader<R>>>>,
    writers: Vec<Option<Mutex<Writer<W>>>>,
    waiting_on: AtomicUsize,
    /// Nanoseconds spent waiting for each peer's frame headers (see `link_waits`).
    waits: Vec<AtomicU64>,
    /// Shared memory's host arena (see `shm::Arena`), where the links are shared-memory rings.
    arena: Option<Arena>,
    // Keeps alive what the streams depend on (a QUIC endpoint, say); dropped last.
    _owner: Option<Box<dyn Any + Send + Sync>>,
}

impl<R, W> StreamTransport<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Builds a transport from `links[p]` for every peer `p` (`None` at `rank`).
    /// `owner` is kept alive as long as the transport.
    pub fn new(
        rank: usize,
        links: Vec<Option<Link<R, W>>>,
        owner: Option<Box<dyn Any + Send + Sync>>,
    ) -> Self {
        assert!(
            rank < links.len(),
            "rank {rank} outside a world of {}",
            links.len()
        );
        assert!(links[rank].is_none(), "a rank has no link to itself");
        let (mut readers, mut writers) = (Vec::new(), Vec::new());
        for link in links {
            let (r, w) = link.map(|l| (l.reader, l.writer)).unzip();
            readers.push(r.map(|io| Mutex::new(Reader { io, dirty: false })));
            writers.push(w.map(|io| {
                Mutex::new(Writer {
                    io,
                    dirty: false,
                    staging: Vec::new(),
                })
            }));
        }
        StreamTransport {
            rank,
            waits: readers.iter().map(|_| AtomicU64::new(0)).collect(),
            readers,
            writers,
            waiting_on: AtomicUsize::new(NOT_WAITING),
            arena: None,
            _owner: owner,
        }
    }

    /// The same transport with a host arena beside its links.
    pub fn with_arena(self, arena: Arena) -> Self {
        StreamTransport {
            arena: Some(arena),
            ..self
        }
    }

    fn writer(&self, peer: usize) -> Result<&Mutex<Writer<W>>> {
        self.writers
            .get(peer)
            .and_then(Option::as_ref)
            .ok_or_else(|| no_link(peer))
    }

    fn reader(&self, peer: usize) -> Result<&Mutex<Reader<R>>> {
        self.readers
            .get(peer)
            .and_then(Option::as_ref)
            .ok_or_else(|| no_link(peer))
    }

    /// Reads and checks the header of the next frame from `peer`, leaving the link marked
    /// mid-frame (`dirty`) for the payload; an error frame becomes the error it reports.
    async fn begin_frame(
        &self,
        peer: usize,
        io: &mut R,
        dirty: &mut bool,
        expect: &Header,
    ) -> Result<()> {
        if *dirty {
            return Err(CollectiveError::Poisoned(format!(
                "link from rank {peer} is mid-frame"
            )));
        }
        *dirty = true;
        self.waiting_on.store(peer, Ordering::Relaxed);
        let started = LINK_TIMING.load(Ordering::Relaxed).then(Instant::now);
        let got = read_header(peer, io).await;
        if let (Some(t), Some(w)) = (started, self.waits.get(peer)) {
            w.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        self.waiting_on.store(NOT_WAITING, Ordering::Relaxed);
        let got = got?;
        if got.kind == FrameKind::Error {
            let e = read_error_frame(peer, io, &got).await;
            *dirty = false;
            return Err(e);
        }
        Header::check(expect, &got)
            .map_err(|detail| CollectiveError::Mismatch { rank: peer, detail })
    }
}

impl<R, W> Transport for StreamTransport<R, W>
where
    R: AsyncRead + Lend + Unpin,
    W: AsyncWrite + Unpin,
{
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.readers.len()
    }

    async fn send(&self, peer: usize, header: &Header, payload: &[u8]) -> Result<()> {
        self.send_parts(peer, header, &[payload]).await
    }

    async fn send_parts(&self, peer: usize, header: &Header, parts: &[&[u8]]) -> Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        debug_assert_eq!(header.len as usize, len);
        let mut w = self.writer(peer)?.lock().await;
        if w.dirty {
            return Err(CollectiveError::Poisoned(format!(
                "link to rank {peer} is mid-frame"
            )));
        }
        w.dirty = true;
        let Writer { io, staging, .. } = &mut *w;
        let head = header.encode();
        let res = if len <= COALESCE_BYTES {
            staging.clear();
            staging.extend_from_slice(&head);
            parts.iter().for_each(|p| staging.extend_from_slice(p));
            io.write_all(staging).await
        } else if let [one] = parts {
            // The common case, one payload: no slice list to allocate.
            write_all_vectored(io, &mut [IoSlice::new(&head), IoSlice::new(one)]).await
        } else {
            let mut slices: Vec<IoSlice<'_>> = std::iter::once(&head[..])
                .chain(parts.iter().copied())
                .map(IoSlice::new)
                .collect();
            write_all_vectored(io, &mut slices).await
        };
        res.map_err(|e| lost(peer, e))?;
        w.dirty = false;
        Ok(())
    }

    async fn recv(&self, peer: usize, expect: &Header, dst: &mut [u8]) -> Result<()> {
        debug_assert_eq!(expect.len as usize, dst.len());
        let mut reader = self.reader(peer)?.lock().await;
        let Reader { io, dirty } = &mut *reader;
        self.begin_frame(peer, io, dirty, expect).await?;
        io.read_exact(dst).await.map_err(|e| lost(peer, e))?;
        *dirty = false;
        Ok(())
    }

    async fn recv_with(
        &self,
        peer: usize,
        expect: &Header,
        scratch: &mut [u8],
        consume: &mut dyn FnMut(usize, &[u8]),
    ) -> Result<()> {
        let len = expect.len as usize;
        debug_assert!(scratch.len() >= len);
        if !R::LENDS {
            self.recv(peer, expect, &mut scratch[..len]).await?;
            consume(0, &scratch[..len]);
            return Ok(());
        }
        let mut reader = self.reader(peer)?.lock().await;
        let Reader { io, dirty } = &mut *reader;
        self.begin_frame(peer, io, dirty, expect).await?;
        let elem = expect.sig.dtype.size();
        let mut off = 0;
        while off < len {
            let avail = std::future::poll_fn(|cx| io.poll_lend(cx))
                .await
                .map_err(|e| lost(peer, e))?;
            if avail == 0 {
                return Err(lost(peer, io::ErrorKind::UnexpectedEof.into()));
            }
            let bytes = io.lent(avail.min(len - off));
            let whole = bytes.len() / elem * elem;
            if whole == 0 || !(bytes.as_ptr() as usize).is_multiple_of(elem) {
                // An element split by the ring's wrap, or a stream off the element grid (an
                // earlier frame of a narrower type had an odd length): copy the rest.
                let rest = &mut scratch[off..len];
                io.read_exact(rest).await.map_err(|e| lost(peer, e))?;
                consume(off, rest);
                break;
            }
            consume(off, &bytes[..whole]);
            io.give_back(whole);
            off += whole;
        }
        *dirty = false;
        Ok(())
    }

    async fn last_word(&self, peer: usize, within: Duration) -> Option<CollectiveError> {
        let mut reader = self.reader(peer).ok()?.lock().await;
        let Reader { io, dirty } = &mut *reader;
        if *dirty {
            return None;
        }
        let frame = async {
            let got = read_header(peer, io).await.ok()?;
            match got.kind {
                FrameKind::Error => Some(read_error_frame(peer, io, &got).await),
                FrameKind::Data => None,
            }
        };
        let word = tokio::time::timeout(within, frame).await.ok().flatten();
        *dirty = true; // whatever was read, the link is no longer at a frame boundary we trust
        word
    }

    async fn abort_all(
        &self,
        header: &Header,
        code: ErrorCode,
        subject: Option<usize>,
        message: &str,
        within: Duration,
    ) {
        let payload = error_payload(code, subject, message);
        let mut frame = *header;
        frame.kind = FrameKind::Error;
        frame.len = payload.len() as u32;
        let tell = |peer: usize| {
            let (frame, payload) = (&frame, &payload);
            async move {
                let Ok(lock) = self.writer(peer) else { return };
                let mut w = lock.lock().await;
                let Writer { io, dirty, .. } = &mut *w;
                let head = frame.encode();
                let mut slices = [IoSlice::new(&head), IoSlice::new(payload)];
                if *dirty || write_all_vectored(io, &mut slices).await.is_err() {
                    let _ = io.shutdown().await;
                }
                let _ = io.flush().await;
            }
        };
        let peers = (0..self.size()).filter(|p| *p != self.rank).map(tell);
        let _ = tokio::time::timeout(within, futures_util::future::join_all(peers)).await;
        // After the frames, so that a peer woken in the arena finds the reason on its link.
        if let Some(a) = &self.arena {
            a.abort();
        }
    }

    fn arena(&self) -> Option<&dyn HostArena> {
        self.arena.as_ref().map(|a| a as &dyn HostArena)
    }

    fn link_waits(&self) -> Vec<Duration> {
        let nanos = |w: &AtomicU64| Duration::from_nanos(w.load(Ordering::Relaxed));
        self.waits.iter().map(nanos).collect()
    }

    fn waiting_on(&self) -> Option<usize> {
        Some(self.waiting_on.load(Ordering::Relaxed)).filter(|p| *p != NOT_WAITING)
    }

    async fn close(&self, within: Duration) {
        let end = |peer: usize| async move {
            if let Ok(w) = self.writer(peer) {
                let _ = w.lock().await.io.shutdown().await;
            }
            if let Ok(r) = self.reader(peer) {
                // Whatever still arrives belongs to no operation: read it away until the end.
                let mut sink = [0u8; 4096];
                let io = &mut r.lock().await.io;
                while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
            }
        };
        let peers = (0..self.size()).filter(|p| *p != self.rank).map(end);
        let _ = tokio::time::timeout(within, futures_util::future::join_all(peers)).await;
    }
}

async fn read_header<R: AsyncRead + Unpin>(peer: usize, io: &mut R) -> Result<Header> {
    let mut raw = [0u8; HEADER_LEN];
    io.read_exact(&mut raw).await.map_err(|e| lost(peer, e))?;
    Header::decode(&raw).map_err(|e| protocol(peer, e))
}

/// Reads an error frame's payload and turns it into the error the peer reported.
async fn read_error_frame<R: AsyncRead + Unpin>(
    peer: usize,
    io: &mut R,
    got: &Header,
) -> CollectiveError {
    if got.len > MAX_ERROR_PAYLOAD {
        return protocol(peer, format!("error frame of {} bytes", got.len));
    }
    let mut payload = vec![0; got.len as usize];
    if let Err(e) = io.read_exact(&mut payload).await {
        return lost(peer, e);
    }
    let (code, subject, message) = parse_error_payload(&payload);
    match code {
        ErrorCode::Mismatch => CollectiveError::Mismatch {
            rank: peer,
            detail: message,
        },
        ErrorCode::PeerLost => CollectiveError::PeerLost {
            rank: subject.unwrap_or(peer),
            reason: format!("reported by rank {peer}: {message}"),
        },
        ErrorCode::Aborted => CollectiveError::Aborted {
            reason: format!("rank {peer}: {message}"),
        },
    }
}

/// At most this many slices per vectored write (Linux's `IOV_MAX`).
const MAX_SLICES: usize = 1024;

/// Writes every slice, in order, with as few calls as the stream allows.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let take = bufs.len().min(MAX_SLICES);
        let n = w.write_vectored(&bufs[..take]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

fn lost(peer: usize, e: io::Error) -> CollectiveError {
    let reason = match e.kind() {
        io::ErrorKind::UnexpectedEof => "connection closed by peer".to_string(),
        _ => e.to_string(),
    };
    CollectiveError::PeerLost { rank: peer, reason }
}

fn protocol(peer: usize, detail: String) -> CollectiveError {
    CollectiveError::Protocol { rank: peer, detail }
}

fn no_link(peer: usize) -> CollectiveError {
    CollectiveError::InvalidArgument(format!("no link to rank {peer}"))
}
