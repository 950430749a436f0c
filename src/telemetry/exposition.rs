//! The exposition served on `/metrics`, built so that a scrape costs almost nothing:
//!
//! - the *state* part (per-connection gauges and aggregates, by far the largest) is encoded
//!   once per snapshot generation, streamed straight into a raw deflate stream that is
//!   sync-flushed and kept; the plain text is never held whole;
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Shared counter of snapshot replacements; the exposition re-encodes when it moves.
pub type Generation = Arc<AtomicU64>;

/// gzip member header: magic, deflate, no flags, no mtime, no extra flags, OS unknown (RFC 1952).
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// Input gathered before it is handed to the compressor.
const CHUNK: usize = 64 * 1024;

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
        DeflateWriter {
            comp: Compress::new(Compression::fast(), false),
            out,
            pending: Vec::with_capacity(CHUNK),
            crc: crc32fast::Hasher::new(),
            len: 0,
        }
    }

    fn drain(&mut self, flush: FlushCompress) {
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
}

impl fmt::Write for DeflateWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.crc.update(s.as_bytes());
        self.len += s.len() as u64;
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
    generation: Generation,
    cache: Mutex<Option<Arc<StateCache>>>,
}

impl Exposition {
    /// The exposition of `sources` and `live`; `persistence` exports the persistence file's
    /// write errors.
    pub fn new(
        sources: SourceSet,
        live: Arc<Live>,
        detector: Arc<Detector>,
        persistence: bool,
        generation: Generation,
    ) -> Self {
        let live_registry = collectors::live_registry(&live, &sources, detector, persistence);
        Exposition {
            state: collectors::state_registry(sources),
            live_registry,
            live,
            generation,
            cache: Mutex::new(None),
        }
    }

    /// The state part of the current generation, encoded and deflated at most once per
    /// generation (callers that arrive meanwhile wait for it rather than repeat it).
    pub fn state(&self) -> Arc<StateCache> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(c) = cache.as_ref() {
            if c.generation == generation {
                return c.clone();
            }
        }
        let mut w = DeflateWriter::new(GZIP_HEADER.to_vec());
        prometheus_client::encoding::text::encode_registry(&mut w, &self.state)
            .expect("the deflate writer cannot fail");
        let (mut out, crc, len) = w.finish(FlushCompress::Sync);
        out.shrink_to_fit();
        let fresh = Arc::new(StateCache {
            generation,
            gzip_prefix: Bytes::from(out),
            crc: crc.finalize(),
            len,
        });
        *cache = Some(fresh.clone());
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
    pub fn plain_body(&self, openmetrics: bool, mut sink: impl FnMut(Bytes) -> bool) {
        let state = self.state();
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

    /// The whole exposition as one OpenMetrics string (tests, benchmarks).
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        self.plain_body(true, |b| {
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
