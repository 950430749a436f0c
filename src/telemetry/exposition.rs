//! The exposition served on `/metrics`, built so that a scrape costs almost nothing:
//!
//! - the *state* part (per-connection gauges and aggregates, by far the largest) is encoded
//!   once per snapshot generation, streamed straight into a raw deflate stream that is
//!   sync-flushed and kept; the plain text is never held whole. The encode runs aside, on a
//!   blocking thread, and the finished one is swapped in: a scrape that arrives meanwhile is
//!   served the previous one and never waits for it;
//! - the *live* part (self-health, counters) is encoded on every scrape.
//!
//! A gzip scrape (what Prometheus asks for) sends the cached deflate bytes as they are, then
//! the live part deflated on its own with the final block, then the gzip trailer whose CRC-32
//! continues from the cached part: one valid gzip member, compressed mostly ahead of time. A
//! sync flush ends on a byte boundary with no dictionary needed by what follows, so the two
//! deflate streams concatenate into one (as pigz does). A plain scrape inflates the cached
//! part as it streams it out.
//!
//! The state families are all gauges, which read the same in OpenMetrics and the classic text
//! format; only the live part differs between the two.

use super::catalogue::openmetrics_to_text;
use super::collectors;
use super::live::Live;
use crate::detect::Detector;
use crate::model::SourceSet;
use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

/// gzip member header: magic, deflate, no flags, no mtime, no extra flags, OS unknown (RFC 1952).
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// Input gathered before it is handed to the compressor.
const CHUNK: usize = 64 * 1024;
/// Deflate level of the state part (see the README's performance section for the measured
/// trade-off of size against encode CPU).
const STATE_LEVEL: u32 = 1;

/// The state part of one generation, deflated.
#[derive(Debug, Clone)]
pub struct StateCache {
    generation: u64,
    /// Gzip header followed by the sync-flushed raw deflate stream of the state text.
    pub gzip_prefix: Bytes,
    /// CRC-32 and length of the state text.
    crc: u32,
    len: u64,
}

/// Streams text into a raw deflate stream, never holding the whole text.
struct DeflateWriter {
    comp: Compress,
    out: Vec<u8>,
    pending: Vec<u8>,
    crc: crc32fast::Hasher,
    len: u64,
}

impl DeflateWriter {
    fn new(out: Vec<u8>) -> Self {
        Self::with(Compress::new(Compression::fast(), false), out)
    }

    /// A writer reusing a compressor (reset first) and its allocations.
    fn with(mut comp: Compress, out: Vec<u8>) -> Self {
        comp.reset();
        DeflateWriter {
            comp,
            out,
            pending: Vec::with_capacity(CHUNK),
            crc: crc32fast::Hasher::new(),
            len: 0,
        }
    }

    fn drain(&mut self, flush: FlushCompress) {
        self.crc.update(&self.pending);
        self.len += self.pending.len() as u64;
        let mut input: &[u8] = &self.pending;
        loop {
            if self.out.capacity() - self.out.len() < CHUNK / 4 {
                self.out.reserve(CHUNK);
            }
            let before = self.comp.total_in();
            let status = self
                .comp
                .compress_vec(input, &mut self.out, flush)
                .expect("deflate of in-memory text cannot fail");
            input = &input[(self.comp.total_in() - before) as usize..];
            let room_left = self.out.capacity() > self.out.len();
            let done = match flush {
                FlushCompress::Finish => status == Status::StreamEnd,
                _ => input.is_empty() && room_left,
            };
            if done {
                break;
            }
        }
        self.pending.clear();
    }

    fn finish(mut self, flush: FlushCompress) -> (Vec<u8>, crc32fast::Hasher, u64) {
        self.drain(flush);
        (self.out, self.crc, self.len)
    }

    /// Like [`Self::finish`], giving the compressor back for the next encode.
    fn finish_keep(mut self, flush: FlushCompress) -> (Vec<u8>, crc32fast::Hasher, u64, Compress) {
        self.drain(flush);
        (self.out, self.crc, self.len, self.comp)
    }
}

impl fmt::Write for DeflateWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // The CRC and length are taken per chunk in `drain` (the encoder writes in pieces of
        // a few bytes; one CRC call per piece cost more than the deflate).
        self.pending.extend_from_slice(s.as_bytes());
        if self.pending.len() >= CHUNK {
            self.drain(FlushCompress::None);
        }
        Ok(())
    }
}

/// Both registries and the cache of the state part.
#[derive(Debug)]
pub struct Exposition {
    state: Registry,
    live_registry: Registry,
    pub live: Arc<Live>,
    /// Moves when a snapshot or the set of sources changed; the state part is re-encoded.
    generation: AtomicU64,
    /// Encodes scheduled by [`Exposition::advance_in_background`] and not yet done.
    pending: AtomicUsize,
    /// The latest encoded state part; locked only to read or swap it.
    cache: Mutex<Option<Arc<StateCache>>>,
    /// Held by the one encode at a time; keeps the compressor between encodes.
    encoder: Mutex<Encoder>,
}

/// What one encode leaves for the next.
struct Encoder {
    comp: Compress,
    /// Compressed size of the last encode (the next one starts with room for it).
    last_len: usize,
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("last_len", &self.last_len)
            .finish()
    }
}

impl Exposition {
    /// The exposition of `sources` and `live`; `persistence` exports the persistence file's
    /// write errors, `relative` the gauges derivable from a timestamp.
    pub fn new(
        sources: SourceSet,
        live: Arc<Live>,
        detector: Arc<Detector>,
        persistence: bool,
        relative: bool,
    ) -> Self {
        let live_registry = collectors::live_registry(&live, &sources, detector, persistence);
        Exposition {
            state: collectors::state_registry(sources, relative),
            live_registry,
            live,
            generation: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            cache: Mutex::new(None),
            encoder: Mutex::new(Encoder {
                comp: Compress::new(Compression::new(STATE_LEVEL), false),
                last_len: 0,
            }),
        }
    }

    fn cached(&self) -> Option<Arc<StateCache>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The state part for a scrape: the current generation's, or, while it is being encoded,
    /// the previous one (a scrape never waits for an encode when there is one to serve).
    pub fn state(&self) -> Arc<StateCache> {
        let cached = self.cached();
        if let Some(c) = &cached {
            if c.generation == self.generation.load(Ordering::Acquire) {
                return c.clone();
            }
        }
        if let Some(c) = &cached {
            if self.pending.load(Ordering::Acquire) > 0 {
                return c.clone();
            }
        }
        let encoder = match (self.encoder.try_lock(), cached) {
            (Ok(e), _) => e,
            (Err(TryLockError::Poisoned(e)), _) => e.into_inner(),
            (Err(TryLockError::WouldBlock), Some(c)) => return c,
            (Err(TryLockError::WouldBlock), None) => self.lock_encoder(),
        };
        self.encode(encoder)
    }

    /// The state part of the current generation, waiting for an encode in progress (tests,
    /// benchmarks, the plain-text render).
    pub fn fresh_state(&self) -> Arc<StateCache> {
        let encoder = self.lock_encoder();
        self.encode(encoder)
    }

    /// A snapshot or the set of sources changed: move the generation and encode it, holding
    /// the encoder from before the move so that scrapes meanwhile are served the previous
    /// state instead of encoding it themselves. Blocking: call it off the async threads.
    pub fn advance(&self) {
        let encoder = self.lock_encoder();
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.encode(encoder);
    }

    /// [`Self::advance`] with the encode on a blocking thread of the runtime: the generation
    /// moves at once (a fresh render sees it), scrapes are served the previous state until the
    /// encode is done.
    pub fn advance_in_background(self: &Arc<Self>) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.generation.fetch_add(1, Ordering::AcqRel);
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let encoder = me.lock_encoder();
            me.encode(encoder);
            me.pending.fetch_sub(1, Ordering::AcqRel);
        });
    }

    fn lock_encoder(&self) -> MutexGuard<'_, Encoder> {
        self.encoder.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Encode the current generation unless the cache has it already.
    fn encode(&self, mut encoder: MutexGuard<'_, Encoder>) -> Arc<StateCache> {
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(c) = self.cached() {
            if c.generation == generation {
                return c;
            }
        }
        let started = std::time::Instant::now();
        let comp = std::mem::replace(
            &mut encoder.comp,
            Compress::new(Compression::new(STATE_LEVEL), false),
        );
        let mut out = Vec::with_capacity(encoder.last_len + encoder.last_len / 8 + 4096);
        out.extend_from_slice(&GZIP_HEADER);
        let mut w = DeflateWriter::with(comp, out);
        prometheus_client::encoding::text::encode_registry(&mut w, &self.state)
            .expect("the deflate writer cannot fail");
        let (mut out, crc, len, comp) = w.finish_keep(FlushCompress::Sync);
        encoder.comp = comp;
        encoder.last_len = out.len();
        out.shrink_to_fit();
        let fresh = Arc::new(StateCache {
            generation,
            gzip_prefix: Bytes::from(out),
            crc: crc.finalize(),
            len,
        });
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh.clone());
        tracing::debug!(
            generation,
            bytes = len,
            compressed_bytes = fresh.gzip_prefix.len(),
            seconds = started.elapsed().as_secs_f64(),
            "State encoded."
        );
        fresh
    }

    /// The live part, in OpenMetrics (with `# EOF`) or the classic text format.
    pub fn live_text(&self, openmetrics: bool) -> String {
        let mut om = String::with_capacity(8192);
        prometheus_client::encoding::text::encode_registry(&mut om, &self.live_registry)
            .expect("writing to a String cannot fail");
        if openmetrics {
            prometheus_client::encoding::text::encode_eof(&mut om)
                .expect("writing to a String cannot fail");
            om
        } else {
            openmetrics_to_text(&om)
        }
    }

    /// A complete gzip body as chunks: the cached state part, then the live part.
    pub fn gzip_body(&self, openmetrics: bool) -> Vec<Bytes> {
        let state = self.state();
        let live = self.live_text(openmetrics);
        let mut w = DeflateWriter::new(Vec::with_capacity(live.len() / 3 + 64));
        fmt::Write::write_str(&mut w, &live).expect("the deflate writer cannot fail");
        let (tail, _, _) = w.finish(FlushCompress::Finish);
        let mut crc = crc32fast::Hasher::new_with_initial_len(state.crc, state.len);
        crc.update(live.as_bytes());
        let total = state.len + live.len() as u64;
        let mut trailer = Vec::with_capacity(8);
        trailer.extend_from_slice(&crc.finalize().to_le_bytes());
        trailer.extend_from_slice(&(total as u32).to_le_bytes());
        vec![
            state.gzip_prefix.clone(),
            Bytes::from(tail),
            Bytes::from(trailer),
        ]
    }

    /// A complete plain body, calling `sink` with each chunk: the state part inflated piece by
    /// piece, then the live part.
    pub fn plain_body(&self, openmetrics: bool, sink: impl FnMut(Bytes) -> bool) {
        self.plain_body_of(self.state(), openmetrics, sink)
    }

    fn plain_body_of(
        &self,
        state: Arc<StateCache>,
        openmetrics: bool,
        mut sink: impl FnMut(Bytes) -> bool,
    ) {
        let mut d = Decompress::new(false);
        let mut input = &state.gzip_prefix[GZIP_HEADER.len()..];
        while !input.is_empty() {
            let mut out = Vec::with_capacity(4 * CHUNK);
            let before = d.total_in();
            d.decompress_vec(input, &mut out, FlushDecompress::Sync)
                .expect("the cached deflate stream is valid");
            input = &input[(d.total_in() - before) as usize..];
            if !out.is_empty() && !sink(Bytes::from(out)) {
                return;
            }
        }
        sink(Bytes::from(self.live_text(openmetrics)));
    }

    /// The whole exposition of the current generation as one OpenMetrics string (tests,
    /// benchmarks).
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        self.plain_body_of(self.fresh_state(), true, |b| {
            out.extend_from_slice(&b);
            true
        });
        String::from_utf8(out).expect("the exposition is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn exposition() -> Exposition {
        let clock: crate::clock::SharedClock = Arc::new(crate::clock::SystemClock);
        let detector = Arc::new(Detector::new(std::time::Duration::from_secs(60), 3, clock));
        Exposition::new(
            SourceSet::default(),
            Arc::new(Live::new()),
            detector,
            false,
            false,
        )
    }

    #[test]
    fn a_scrape_during_an_encode_gets_the_previous_state_at_once() {
        let e = Arc::new(exposition());
        let first = e.state();
        assert_eq!(first.generation, 0);
        // An encode in progress: it holds the encoder, and the generation has moved.
        let encoding = e.lock_encoder();
        e.generation.fetch_add(1, Ordering::AcqRel);
        let (tx, rx) = std::sync::mpsc::channel();
        let e2 = e.clone();
        std::thread::spawn(move || tx.send(e2.state().generation).unwrap());
        let served = rx.recv_timeout(std::time::Duration::from_secs(5));
        assert_eq!(served, Ok(0), "served the previous state without waiting");
        drop(encoding);
        // With no encode running, a stale state is encoded for the scrape.
        assert_eq!(e.state().generation, 1);
        e.advance();
        assert_eq!(e.state().generation, 2);
        assert_eq!(e.fresh_state().generation, 2);
    }

    #[test]
    fn sync_flushed_prefix_and_final_tail_make_one_valid_gzip_member() {
        let mut a = DeflateWriter::new(GZIP_HEADER.to_vec());
        let big: String = (0..20_000)
            .map(|i| format!("metric{{connection=\"c{i}\"}} {i}\n"))
            .collect();
        fmt::Write::write_str(&mut a, &big).unwrap();
        let (prefix, crc, len) = a.finish(FlushCompress::Sync);
        let live = "live_metric 1\n# EOF\n";
        let mut b = DeflateWriter::new(Vec::new());
        fmt::Write::write_str(&mut b, live).unwrap();
        let (tail, _, _) = b.finish(FlushCompress::Finish);
        let mut crc = crc32fast::Hasher::new_with_initial_len(crc.finalize(), len);
        crc.update(live.as_bytes());
        let mut body = prefix;
        body.extend_from_slice(&tail);
        body.extend_from_slice(&crc.finalize().to_le_bytes());
        body.extend_from_slice(&((len as u32) + live.len() as u32).to_le_bytes());
        let mut out = String::new();
        // GzDecoder checks the CRC and length of the trailer.
        flate2::read::GzDecoder::new(&body[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, format!("{big}{live}"));
        assert!(
            body.len() < big.len() / 4,
            "compressed {} of {}",
            body.len(),
            big.len()
        );
    }
}
