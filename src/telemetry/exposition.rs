//! The exposition served on `/metrics`, built so that a scrape costs almost nothing:
//!
//! - the *state* part (per-connection gauges and aggregates, by far the largest) is encoded
//!   once per snapshot generation into raw deflate segments that are kept; a block of
//!   connections whose lines did not change is not encoded again (see [`super::segments`]);
//!   the plain text is never held whole. The encode runs aside, on a blocking thread, and the
//!   finished one is swapped in: a scrape that arrives meanwhile is served the previous one
//!   and never waits for it;
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
use super::collectors::{self, Part};
use super::live::Live;
use super::segments::{DeflateWriter, SegmentCache};
use crate::detect::Detector;
use crate::model::SourceSet;
use bytes::Bytes;
use flate2::{Decompress, FlushCompress, FlushDecompress};
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

/// Room for the inflated text a plain scrape streams out per chunk.
const PLAIN_CHUNK: usize = 256 * 1024;

/// The state part of one generation, deflated.
#[derive(Debug, Clone)]
pub struct StateCache {
    generation: u64,
    /// Gzip header followed by the sync-flushed raw deflate segments of the state text.
    pub gzip_prefix: Vec<Bytes>,
    /// CRC-32 and length of the state text.
    crc: u32,
    len: u64,
}

/// Both registries and the cache of the state part.
#[derive(Debug)]
pub struct Exposition {
    state: Registry,
    /// What the state registry's collector encodes next (set by each step of an encode).
    part: Arc<Mutex<Part>>,
    sources: SourceSet,
    /// Export the gauges derivable from a timestamp (`--collector.relative-metrics`).
    relative: bool,
    live_registry: Registry,
    pub live: Arc<Live>,
    /// Moves when a snapshot or the set of sources changed; the state part is re-encoded.
    generation: AtomicU64,
    /// Encodes scheduled by [`Exposition::advance_in_background`] and not yet done.
    pending: AtomicUsize,
    /// The latest encoded state part; locked only to read or swap it.
    cache: Mutex<Option<Arc<StateCache>>>,
    /// Held by the one encode at a time; keeps the segments between encodes.
    encoder: Mutex<SegmentCache>,
    /// The per-connection facts the diagnosis families are encoded from.
    detector: Arc<Detector>,
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
        let live_registry =
            collectors::live_registry(&live, &sources, detector.clone(), persistence);
        let part = Arc::new(Mutex::new(Part::Nothing));
        Exposition {
            state: collectors::state_registry(part.clone()),
            part,
            sources,
            relative,
            live_registry,
            live,
            generation: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            cache: Mutex::new(None),
            encoder: Mutex::new(SegmentCache::default()),
            detector,
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

    fn lock_encoder(&self) -> MutexGuard<'_, SegmentCache> {
        self.encoder.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Encode the current generation unless the cache has it already.
    fn encode(&self, mut encoder: MutexGuard<'_, SegmentCache>) -> Arc<StateCache> {
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(c) = self.cached() {
            if c.generation == generation {
                return c;
            }
        }
        let started = std::time::Instant::now();
        let views: Vec<collectors::SourceView> = self
            .sources
            .get()
            .iter()
            .map(|h| (h.clone(), h.snapshot()))
            .collect();
        // Causes only (no words): the API and the page write the evidence out on request.
        let diagnosing = std::time::Instant::now();
        let diagnosed = crate::diagnosis::diagnose_all(
            &self.sources,
            &self.detector,
            self.detector.now(),
            false,
        );
        let diagnosis_seconds = diagnosing.elapsed().as_secs_f64();
        let encoded = encoder.encode(&self.state, &self.part, views, diagnosed, self.relative);
        let fresh = Arc::new(StateCache {
            generation,
            gzip_prefix: encoded.parts,
            crc: encoded.crc,
            len: encoded.len,
        });
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh.clone());
        tracing::debug!(
            generation,
            bytes = encoded.len,
            compressed_bytes = fresh.gzip_prefix.iter().map(Bytes::len).sum::<usize>(),
            segments_reused = encoded.reused,
            segments_deflated = encoded.deflated,
            diagnosis_seconds,
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
        let mut body = state.gzip_prefix.clone();
        body.push(Bytes::from(tail));
        body.push(Bytes::from(trailer));
        body
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
        let mut out = Vec::with_capacity(PLAIN_CHUNK);
        // The segments after the gzip header are one raw deflate stream.
        for part in &state.gzip_prefix[1..] {
            let mut input: &[u8] = part;
            while !input.is_empty() {
                let before = d.total_in();
                d.decompress_vec(input, &mut out, FlushDecompress::Sync)
                    .expect("the cached deflate stream is valid");
                input = &input[(d.total_in() - before) as usize..];
                if out.len() == out.capacity()
                    && !sink(Bytes::from(std::mem::replace(
                        &mut out,
                        Vec::with_capacity(PLAIN_CHUNK),
                    )))
                {
                    return;
                }
            }
        }
        if !out.is_empty() && !sink(Bytes::from(out)) {
            return;
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
    use crate::model::{Connection, SourceHandle, SourceSnapshot, Status, StoreKind};
    use crate::telemetry::segments::GZIP_HEADER;
    use std::io::Read;

    fn with_sources(sources: SourceSet, relative: bool) -> Exposition {
        let clock: crate::clock::SharedClock = Arc::new(crate::clock::SystemClock);
        let detector = Arc::new(Detector::new(std::time::Duration::from_secs(60), 3, clock));
        Exposition::new(sources, Arc::new(Live::new()), detector, false, relative)
    }

    fn connection(i: usize, version: u64) -> Connection {
        let t = 1.7e9 + i as f64 * 60.0 + version as f64;
        Connection {
            id: format!("c{i}"),
            provider: "xero",
            tenant: format!("t\"{i}"),
            user: None,
            labels: vec![format!("org {}", i % 7)],
            last_refresh: t,
            age: 10.0 + version as f64,
            refresh_expiry: t + 5_184_000.0,
            expired: version % 5 == 4,
            access_expiry: (!i.is_multiple_of(3)).then_some(t + 1800.0),
            status: if version % 4 == 3 {
                Status::Failing
            } else {
                Status::Active
            },
        }
    }

    fn gunzip(body: &[Bytes]) -> String {
        let all: Vec<u8> = body.iter().flat_map(|b| b.iter().copied()).collect();
        let mut out = String::new();
        flate2::read::GzDecoder::new(&all[..])
            .read_to_string(&mut out)
            .expect("one valid gzip member, CRC and length checked");
        out
    }

    fn state_text(state: &StateCache) -> String {
        let mut deflated: Vec<u8> = state.gzip_prefix[1..]
            .iter()
            .flat_map(|b| b.iter().copied())
            .collect();
        // An empty final block ends the sync-flushed stream.
        deflated.extend_from_slice(&[0x03, 0x00]);
        let mut out = String::new();
        flate2::read::DeflateDecoder::new(&deflated[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out.len() as u64, state.len);
        out
    }

    /// Polls that change a few connections, add and remove some: every incremental encode
    /// equals an encode from nothing, and a poll that changed nothing deflates nothing.
    #[test]
    fn incremental_encodes_equal_encodes_from_nothing() {
        for relative in [false, true] {
            let provider = crate::provider::ProviderKind::Xero.profile();
            let a = Arc::new(SourceHandle::new(
                "a",
                StoreKind::Sqlite,
                &provider,
                vec!["org".into()],
            ));
            let b = Arc::new(SourceHandle::new(
                "b",
                StoreKind::Postgres,
                &provider,
                vec![],
            ));
            let sources = SourceSet::new(vec![a.clone(), b.clone()]);
            let e = with_sources(sources.clone(), relative);
            let mut versions: Vec<u64> = vec![0; 6_000];
            let mut present: Vec<bool> = vec![true; 6_000];
            let mut seed = 7u64;
            let mut rand = move |n: usize| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as usize % n
            };
            for round in 0..8 {
                if round > 0 {
                    for _ in 0..(round * 13) {
                        versions[rand(6_000)] += 1;
                    }
                    for _ in 0..3 {
                        let k = rand(6_000);
                        present[k] = !present[k];
                    }
                }
                let conns = |range: std::ops::Range<usize>| -> Vec<Connection> {
                    range
                        .filter(|i| present[*i])
                        .map(|i| connection(i, versions[i]))
                        .collect()
                };
                a.publish(SourceSnapshot {
                    connections: conns(0..4_000),
                    ..SourceSnapshot::empty("xero", crate::model::Windows::of(&provider))
                });
                b.publish(SourceSnapshot {
                    connections: conns(4_000..6_000),
                    ..SourceSnapshot::empty("xero", crate::model::Windows::of(&provider))
                });
                e.advance();
                let incremental = state_text(&e.fresh_state());
                let scratch = with_sources(sources.clone(), relative);
                assert_eq!(
                    incremental,
                    state_text(&scratch.fresh_state()),
                    "round {round}, relative {relative}"
                );
                // The gzip body is one member whose CRC covers the reused segments too.
                assert!(gunzip(&e.gzip_body(true)).starts_with(&incremental));
                assert!(e.render().starts_with(&incremental));
            }
            // Nothing changed but the order the store returned the rows in (an updated row
            // moves in a scan): every segment is reused.
            let mut reversed = (*a.snapshot()).clone();
            reversed.connections.reverse();
            a.publish(reversed);
            let mut cache = e.lock_encoder();
            let views: Vec<collectors::SourceView> = sources
                .get()
                .iter()
                .map(|h| (h.clone(), h.snapshot()))
                .collect();
            let diagnosed =
                crate::diagnosis::diagnose_all(&sources, &e.detector, e.detector.now(), false);
            let again = cache.encode(&e.state, &e.part, views, diagnosed, relative);
            assert!(again.reused > 20, "{} reused", again.reused);
            assert_eq!(again.deflated, 0);
        }
    }

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
