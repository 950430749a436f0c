//! The state part of `/metrics` as independently deflated segments, kept between encodes.
//!
//! Each per-connection family lists a source's connections by id (not in query order: a
//! database returns an updated row elsewhere in a scan) and is cut into blocks of connections,
//! with boundaries chosen by the connections' identities (content-defined, as rsync and backup tools cut files: a connection
//! added or removed moves the boundaries of its own block only). A block is keyed by a hash
//! of what its lines say (identity and the family's value of each connection); a block whose
//! key the last encode had is not encoded again: its deflated bytes are reused as they are.
//! A refresh changes a connection's timestamps, not its status or labels, so the five status
//! lines and the info line of a refreshed connection are reused too.
//!
//! Every segment is deflated from an empty dictionary and ends with a sync flush (on a byte
//! boundary), so any sequence of segments is one valid raw deflate stream, and the CRC-32 of
//! the whole is combined from the segments' own.

use super::collectors::{ConnFamily, Part, SourceView};
use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress, Status};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};

/// Block and segment keys: foldhash's higher-quality variant with a fixed seed (keys only live
/// in this process; a colliding key would reuse the wrong block, so mixing matters more than
/// the last nanosecond).
fn hasher() -> foldhash::quality::FoldHasher {
    foldhash::quality::FixedState::default().build_hasher()
}
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// gzip member header: magic, deflate, no flags, no mtime, no extra flags, OS unknown (RFC 1952).
pub const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// Input gathered before it is handed to the compressor.
const CHUNK: usize = 64 * 1024;
/// Deflate level of the state part (see the README's performance section for the measured
/// trade-off of size against encode CPU).
const STATE_LEVEL: u32 = 1;
/// A block ends after a connection whose identity hash has these bits clear: 512 connections
/// a block on average (~60 KiB of text for the status family, ~12 KiB for one-line families).
const BOUNDARY_MASK: u64 = 0x1ff;
/// ... or at this many connections.
const MAX_BLOCK: usize = 2048;

/// Streams text into a raw deflate stream, never holding the whole text.
pub struct DeflateWriter {
    comp: Compress,
    out: Vec<u8>,
    pending: Vec<u8>,
    crc: crc32fast::Hasher,
    len: u64,
}

impl DeflateWriter {
    pub fn new(out: Vec<u8>) -> Self {
        Self::with(Compress::new(Compression::fast(), false), out)
    }

    /// A writer reusing a compressor (reset first: what it writes needs no earlier
    /// dictionary) and its allocations.
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

    pub fn finish(mut self, flush: FlushCompress) -> (Vec<u8>, crc32fast::Hasher, u64) {
        self.drain(flush);
        (self.out, self.crc, self.len)
    }

    /// Like [`Self::finish`], giving the compressor back for the next segment.
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

/// Some text of the state part, deflated on its own.
#[derive(Debug)]
struct Segment {
    deflated: Bytes,
    crc: u32,
    len: u64,
}

/// The state part of one encode: the gzip header, then the segments' deflated bytes.
#[derive(Debug, Default)]
pub struct Encoded {
    pub parts: Vec<Bytes>,
    /// CRC-32 and length of the state text.
    pub crc: u32,
    pub len: u64,
    /// Segments reused from the last encode, and segments deflated by this one.
    pub reused: usize,
    pub deflated: usize,
}

impl Encoded {
    fn push(&mut self, seg: &Segment, crc: &mut crc32fast::Hasher) {
        if seg.len == 0 {
            return;
        }
        crc.combine(&crc32fast::Hasher::new_with_initial_len(seg.crc, seg.len));
        self.len += seg.len;
        self.parts.push(seg.deflated.clone());
    }
}

/// The segments of the last encode by key, and what encoding reuses (compressor, text buffer).
pub struct SegmentCache {
    segments: HashMap<u64, Arc<Segment>>,
    comp: Option<Compress>,
    text: String,
    /// The last diagnosis encoded: its fingerprint and the key of its segment (a poll that
    /// changed no connection's causes neither renders nor deflates the diagnosis families).
    diagnosis: Option<(u64, u64)>,
}

/// What the diagnosis families say, as one number: per source its name and providers, and the
/// order-independent sum over its connections of (id, provider, tenant, causes).
fn diagnosis_fingerprint(diagnosed: &[crate::diagnosis::SourceDiagnosis]) -> u64 {
    let mut h = hasher();
    for s in diagnosed {
        s.source.name.hash(&mut h);
        for p in &s.snapshot.providers {
            p.provider.hash(&mut h);
        }
        // Lines exist for the connections with a cause; the healthy ones only count, per
        // provider: hashing their ids (most of a fleet) would cost more than the rest.
        let mut sum = 0u64;
        let mut per_provider: Vec<(&str, usize)> = Vec::new();
        for (c, d) in s.snapshot.connections.iter().zip(&s.diagnoses) {
            match per_provider.iter_mut().find(|(p, _)| *p == c.provider) {
                Some((_, n)) => *n += 1,
                None => per_provider.push((c.provider, 1)),
            }
            if !d.causes.is_empty() {
                let mut one = hasher();
                (&c.id, c.provider, &c.tenant, &d.causes).hash(&mut one);
                sum = sum.wrapping_add(one.finish());
            }
        }
        per_provider.sort_unstable();
        (sum, per_provider).hash(&mut h);
    }
    h.finish()
}

impl fmt::Debug for SegmentCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentCache")
            .field("segments", &self.segments.len())
            .finish()
    }
}

impl Default for SegmentCache {
    fn default() -> Self {
        SegmentCache {
            segments: HashMap::new(),
            comp: Some(Compress::new(Compression::new(STATE_LEVEL), false)),
            text: String::new(),
            diagnosis: None,
        }
    }
}

/// One source's connections for an encode: their indexes in id order, the hash of each one's
/// identity in that order, and the blocks they are cut into.
type Listing = (Arc<Vec<u32>>, Vec<u64>, Vec<Range<usize>>);

/// The first 8 bytes of `s`, zero-padded, big-endian: comparing two of them orders the strings
/// as their bytes do, up to ties.
fn prefix_key(s: &str) -> u64 {
    let b = s.as_bytes();
    let mut k = [0u8; 8];
    let n = b.len().min(8);
    k[..n].copy_from_slice(&b[..n]);
    u64::from_be_bytes(k)
}

/// Blocks of one source's connections, by the hash of each one's identity.
fn blocks(ids: &[u64]) -> Vec<Range<usize>> {
    let mut out = Vec::with_capacity(ids.len() / (BOUNDARY_MASK as usize + 1) + 1);
    let mut start = 0;
    for (i, id) in ids.iter().enumerate() {
        if id & BOUNDARY_MASK == 0 || i + 1 - start == MAX_BLOCK {
            out.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < ids.len() {
        out.push(start..ids.len());
    }
    out
}

impl SegmentCache {
    /// Encode the state part of `views` through `registry`, whose collector encodes what
    /// `part` holds, reusing every segment the last encode made that is still current.
    pub fn encode(
        &mut self,
        registry: &Registry,
        part: &Mutex<Part>,
        views: Vec<SourceView>,
        diagnosed: Vec<crate::diagnosis::SourceDiagnosis>,
        relative: bool,
    ) -> Encoded {
        let mut out = Encoded {
            parts: vec![Bytes::from_static(&GZIP_HEADER)],
            ..Encoded::default()
        };
        let mut crc = crc32fast::Hasher::new();
        let mut kept: HashMap<u64, Arc<Segment>> = HashMap::with_capacity(self.segments.len());
        // Order by id, identities and blocks, once for every family.
        let identities: Vec<Listing> = views
            .iter()
            .map(|(_, snap)| {
                let conns = &snap.connections;
                // Sorted on a compact array of (first 8 bytes of the id, index): most
                // comparisons never reach the connections; ties compare them in full, so the
                // order is exactly the ids' (then provider's, tenant's).
                let mut keyed: Vec<(u64, u32)> = conns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (prefix_key(&c.id), i as u32))
                    .collect();
                keyed.sort_unstable_by(|a, b| {
                    a.0.cmp(&b.0).then_with(|| {
                        let (a, b) = (&conns[a.1 as usize], &conns[b.1 as usize]);
                        (&a.id, a.provider, &a.tenant).cmp(&(&b.id, b.provider, &b.tenant))
                    })
                });
                let order: Vec<u32> = keyed.into_iter().map(|(_, i)| i).collect();
                let ids: Vec<u64> = order
                    .iter()
                    .map(|i| {
                        let c = &conns[*i as usize];
                        let mut h = hasher();
                        (c.provider, &c.id, &c.tenant).hash(&mut h);
                        h.finish()
                    })
                    .collect();
                let b = blocks(&ids);
                (Arc::new(order), ids, b)
            })
            .collect();
        for family in ConnFamily::exported(relative) {
            let desc_len = self.render(registry, part, Part::Descriptor(family));
            self.text_segment(&mut out, &mut crc, &mut kept);
            for (view, (order, ids, ranges)) in views.iter().zip(&identities) {
                let (src, snap) = view;
                for range in ranges {
                    let mut h = hasher();
                    (family, &src.name).hash(&mut h);
                    if family == ConnFamily::Info {
                        src.label_names.hash(&mut h);
                    }
                    for i in range.clone() {
                        h.write_u64(ids[i]);
                        family.hash_value(&snap.connections[order[i] as usize], &mut h);
                    }
                    let key = h.finish();
                    if let Some(seg) = self.segments.get(&key).or_else(|| kept.get(&key)) {
                        out.push(seg, &mut crc);
                        out.reused += 1;
                        kept.insert(key, seg.clone());
                        continue;
                    }
                    let block = Part::Block {
                        family,
                        source: view.clone(),
                        order: order.clone(),
                        range: range.clone(),
                    };
                    self.render(registry, part, block);
                    let seg = self.deflate(desc_len);
                    out.push(&seg, &mut crc);
                    out.deflated += 1;
                    kept.insert(key, seg);
                }
            }
        }
        self.render(registry, part, Part::Aggregates(Arc::new(views)));
        self.text_segment(&mut out, &mut crc, &mut kept);
        let fingerprint = diagnosis_fingerprint(&diagnosed);
        let unchanged = self
            .diagnosis
            .filter(|(f, _)| *f == fingerprint)
            .and_then(|(_, key)| Some((key, self.segments.get(&key)?.clone())));
        match unchanged {
            Some((key, seg)) => {
                out.reused += 1;
                out.push(&seg, &mut crc);
                kept.insert(key, seg);
            }
            None => {
                self.render(registry, part, Part::Diagnosis(Arc::new(diagnosed)));
                let key = self.text_segment(&mut out, &mut crc, &mut kept);
                self.diagnosis = Some((fingerprint, key));
            }
        }
        self.segments = kept;
        self.text = String::new();
        out.crc = crc.finalize();
        out
    }

    /// Encode `what` into the text buffer; returns its length.
    fn render(&mut self, registry: &Registry, part: &Mutex<Part>, what: Part) -> usize {
        *part.lock().unwrap_or_else(|e| e.into_inner()) = what;
        self.text.clear();
        prometheus_client::encoding::text::encode_registry(&mut self.text, registry)
            .expect("writing to a String cannot fail");
        // Drop the part's references to the snapshots.
        *part.lock().unwrap_or_else(|e| e.into_inner()) = Part::Nothing;
        self.text.len()
    }

    /// The text buffer as a segment keyed by its own hash (descriptors, aggregates: small,
    /// rendered every time, deflated only when they changed).
    fn text_segment(
        &mut self,
        out: &mut Encoded,
        crc: &mut crc32fast::Hasher,
        kept: &mut HashMap<u64, Arc<Segment>>,
    ) -> u64 {
        let mut h = hasher();
        self.text.hash(&mut h);
        let key = h.finish();
        let seg = match self.segments.get(&key).or_else(|| kept.get(&key)) {
            Some(seg) => {
                out.reused += 1;
                seg.clone()
            }
            None => {
                out.deflated += 1;
                self.deflate(0)
            }
        };
        out.push(&seg, crc);
        kept.insert(key, seg);
        key
    }

    /// Deflate the text buffer from byte `from` as a segment of its own.
    fn deflate(&mut self, from: usize) -> Arc<Segment> {
        let text = &self.text[from..];
        let comp = self.comp.take().expect("the compressor is put back");
        let mut w = DeflateWriter::with(comp, Vec::with_capacity(text.len() / 4 + 64));
        fmt::Write::write_str(&mut w, text).expect("the deflate writer cannot fail");
        let (mut out, crc, len, comp) = w.finish_keep(FlushCompress::Sync);
        self.comp = Some(comp);
        out.shrink_to_fit();
        Arc::new(Segment {
            deflated: Bytes::from(out),
            crc: crc.finalize(),
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_keys_order_strings_as_their_bytes_do_up_to_ties() {
        let words = [
            "",
            "a",
            "ab",
            "ab\0",
            "ab\0c",
            "abcdefgh",
            "abcdefghi",
            "abcdefgz",
            "b",
            "conn-10",
            "conn-9",
            "\u{e9}t\u{e9}",
            "z\u{ff}",
        ];
        for a in words {
            for b in words {
                let (ka, kb) = (prefix_key(a), prefix_key(b));
                if ka != kb {
                    assert_eq!(ka.cmp(&kb), a.cmp(b), "{a:?} {b:?}");
                }
            }
        }
    }

    #[test]
    fn blocks_cover_every_connection_once_and_move_only_locally() {
        let ids: Vec<u64> = (0..20_000u64)
            .map(|i| {
                let mut h = hasher();
                i.hash(&mut h);
                h.finish()
            })
            .collect();
        let b = blocks(&ids);
        assert_eq!(b.first().unwrap().start, 0);
        assert_eq!(b.last().unwrap().end, ids.len());
        assert!(b.windows(2).all(|w| w[0].end == w[1].start));
        assert!(b.iter().all(|r| !r.is_empty() && r.len() <= MAX_BLOCK));
        assert!((20..80).contains(&b.len()), "{} blocks", b.len());
        // One connection removed: every block but the one that held it keeps its members.
        let mut fewer = ids.clone();
        fewer.remove(10_000);
        let after = blocks(&fewer);
        let members = |ids: &[u64], r: &Range<usize>| ids[r.clone()].to_vec();
        let before: Vec<Vec<u64>> = b.iter().map(|r| members(&ids, r)).collect();
        let same = after
            .iter()
            .filter(|r| before.contains(&members(&fewer, r)))
            .count();
        assert!(
            same + 1 >= after.len(),
            "{same} of {} blocks kept",
            after.len()
        );
    }
}
