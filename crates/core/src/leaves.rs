//! The compact sorted store behind running: leaves as `(canonical path, encoded
//! value)` pairs, in chunks of a few dozen, each chunk one byte buffer.
//!
//! Why not a map of `Arc<str>` to `TypedValue`: a 1M-leaf device then costs
//! about 300 bytes per leaf in running alone (a 100-byte path in its own
//! allocation, a 56-byte value, tree nodes half full), and the first commit
//! briefly holds two or three such copies. Here a leaf costs its path's suffix
//! after the part it shares with the leaf before it (paths of one device share
//! long prefixes), plus the value's protobuf encoding, plus two or three length
//! bytes: typically 20 to 50 bytes.
//!
//! Layout of a chunk: entries in key order, each
//! `varint(shared) varint(suffix_len) suffix varint(value_len) value`, where
//! `shared` is the number of leading bytes taken from the previous key of the
//! same chunk (0 for the first, so every chunk decodes on its own and the first
//! key is readable without decoding the rest). Shared prefixes end on a
//! character boundary, so every suffix is valid UTF-8 by itself.
//!
//! Chunks are immutable and shared (`Arc`): a snapshot is a clone of the chunk
//! list, and a commit rewrites only the chunks it touches.

use std::cmp::Ordering;
use std::sync::Arc;

/// Entries per chunk a builder aims for. Lookups scan a chunk linearly, and a
/// commit rewrites whole chunks, so small chunks keep both cheap; each chunk
/// costs about 50 bytes of bookkeeping plus its first key in full.
const CHUNK_ENTRIES: usize = 32;

/// A chunk this small is merged with its neighbour when a commit rewrites it,
/// so repeated small commits cannot fragment the store.
const MIN_ENTRIES: usize = CHUNK_ENTRIES / 2;

/// One immutable run of entries.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    entries: u32,
    bytes: Box<[u8]>,
}

impl Chunk {
    /// The first (smallest) key.
    fn first_key(&self) -> &str {
        suffix_str(self.first_key_bytes())
    }

    /// The first key's bytes, unchecked: for comparisons.
    fn first_key_bytes(&self) -> &[u8] {
        let mut pos = 0;
        let _shared = read_varint(&self.bytes, &mut pos);
        let len = read_varint(&self.bytes, &mut pos);
        &self.bytes[pos..pos + len]
    }

    fn cursor(&self) -> ChunkCursor<'_> {
        ChunkCursor {
            bytes: &self.bytes,
            pos: 0,
        }
    }
}

/// Reads the entries of one chunk in order, rebuilding each key in a buffer the
/// caller owns.
struct ChunkCursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> ChunkCursor<'a> {
    /// The next entry: its key is left in `key`, its value returned.
    fn next(&mut self, key: &mut String) -> Option<&'a [u8]> {
        if self.pos >= self.bytes.len() {
            return None;
        }
        let shared = read_varint(self.bytes, &mut self.pos);
        let len = read_varint(self.bytes, &mut self.pos);
        key.truncate(shared);
        key.push_str(suffix_str(&self.bytes[self.pos..self.pos + len]));
        self.pos += len;
        let value_len = read_varint(self.bytes, &mut self.pos);
        let value = &self.bytes[self.pos..self.pos + value_len];
        self.pos += value_len;
        Some(value)
    }
}

/// A chunk's suffix bytes as text. They are always valid UTF-8 (see the module
/// docs), so the fallback is never taken.
fn suffix_str(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

fn read_varint(bytes: &[u8], pos: &mut usize) -> usize {
    let mut value = 0usize;
    let mut shift = 0;
    loop {
        let b = bytes[*pos];
        *pos += 1;
        value |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return value;
        }
        shift += 7;
    }
}

fn write_varint(out: &mut Vec<u8>, mut value: usize) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Length of the common prefix of `a` and `b`, backed off to a character
/// boundary.
fn shared_prefix(a: &str, b: &str) -> usize {
    let (x, y) = (a.as_bytes(), b.as_bytes());
    let limit = x.len().min(y.len());
    let mut n = 0;
    // Eight bytes at a time: keys share prefixes of 50 to 100 bytes.
    while n + 8 <= limit && x[n..n + 8] == y[n..n + 8] {
        n += 8;
    }
    while n < limit && x[n] == y[n] {
        n += 1;
    }
    while !b.is_char_boundary(n) {
        n -= 1;
    }
    n
}

/// An immutable sorted set of leaves. Cloning is O(1).
#[derive(Clone, Default)]
pub(crate) struct Leaves {
    chunks: Arc<[Arc<Chunk>]>,
    len: usize,
}

impl Leaves {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The value bytes of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut cursor = self.cursor_from(key);
        let mut buf = String::new();
        let value = cursor.next(&mut buf)?;
        (buf == key).then(|| value.to_vec())
    }

    /// A cursor at the first entry whose key is `>= start`.
    pub(crate) fn cursor_from(&self, start: &str) -> Cursor<'_> {
        // The last chunk whose first key is <= start holds start's position
        // (or start lies before everything, in chunk 0).
        let index = self
            .chunks
            .partition_point(|c| c.first_key_bytes() <= start.as_bytes())
            .saturating_sub(1);
        let mut cursor = Cursor {
            chunks: &self.chunks[index.min(self.chunks.len())..],
            inner: None,
            skip_below: Some(start.to_string()),
        };
        cursor.open_next();
        cursor
    }

    /// A cursor at the first entry.
    pub(crate) fn cursor(&self) -> Cursor<'_> {
        let mut cursor = Cursor {
            chunks: &self.chunks,
            inner: None,
            skip_below: None,
        };
        cursor.open_next();
        cursor
    }

    /// Calls `f` with every entry in order.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&str, &[u8])) {
        let mut key = String::new();
        for chunk in self.chunks.iter() {
            let mut cursor = chunk.cursor();
            while let Some(value) = cursor.next(&mut key) {
                f(&key, value);
            }
        }
    }

    /// Merges sorted, distinct `updates` and the `deletes` into a new set,
    /// reporting each net change to `change` (if given). Deletes apply first:
    /// a leaf both deleted and updated ends with the update, and is a change
    /// only if its value differs from before. `self` is unchanged.
    pub(crate) fn merge(
        &self,
        mut updates: impl Source,
        deletes: &Ranges,
        mut change: Option<&mut ChangeSink>,
    ) -> Leaves {
        let mut out = Builder::new();
        let mut deleted = deletes.cursor();
        let mut key = String::new();
        let count = self.chunks.len();
        let mut i = 0;
        while i < count {
            if out.pending_entries() == 0 {
                // Chunks before the next update or delete are kept as they
                // are, found by binary search: a small commit to a large
                // running costs its changes, not the number of chunks.
                let lo = if i == 0 {
                    &[][..]
                } else {
                    self.chunks[i].first_key_bytes()
                };
                deleted.skip_to(lo);
                let next = match (updates.current(), deleted.next_start()) {
                    (Some((k, _)), Some(d)) => Some(k.as_bytes().min(d)),
                    (Some((k, _)), None) => Some(k.as_bytes()),
                    (None, d) => d,
                };
                let end = match next {
                    // The work is in this chunk (dense commits): no search.
                    Some(next) if i + 1 < count && next < self.chunks[i + 1].first_key_bytes() => i,
                    Some(next) => {
                        let after =
                            self.chunks[i..].partition_point(|c| c.first_key_bytes() <= next);
                        (i + after).saturating_sub(1).max(i)
                    }
                    None => count,
                };
                out.push_chunks(&self.chunks[i..end]);
                i = end;
                if i == count {
                    break;
                }
            }
            let (index, chunk) = (i, &self.chunks[i]);
            i += 1;
            let next_first = (i < count).then(|| self.chunks[i].first_key());
            let lo = if index == 0 { "" } else { chunk.first_key() };
            let touched = updates
                .current()
                .is_some_and(|(k, _)| next_first.is_none_or(|n| k < n))
                || deleted.overlaps(lo, next_first);
            if !touched && out.pending_entries() == 0 {
                out.push_chunk(chunk);
                continue;
            }
            if !touched && out.pending_entries() >= MIN_ENTRIES {
                out.flush();
                out.push_chunk(chunk);
                continue;
            }
            // Rewrite this chunk: old entries merged with the updates that
            // fall in its range.
            let mut cursor = chunk.cursor();
            while let Some(old) = cursor.next(&mut key) {
                take_below(&mut updates, &mut out, &mut change, Some(&key));
                match updates.current() {
                    Some((k, v)) if k == key => {
                        out.push(k, v);
                        if v != old
                            && let Some(c) = change.as_deref_mut()
                        {
                            c.updates.push(k, v);
                        }
                        updates.advance();
                    }
                    _ if deleted.contains(&key) => {
                        if let Some(c) = change.as_deref_mut() {
                            c.deletes.push(&key, &[]);
                        }
                    }
                    _ => out.push(&key, old),
                }
            }
            take_below(&mut updates, &mut out, &mut change, next_first);
        }
        take_below(&mut updates, &mut out, &mut change, None);
        out.finish()
    }

    /// The smallest key.
    fn first_key(&self) -> Option<&str> {
        self.chunks.first().map(|c| c.first_key())
    }

    /// The largest key.
    fn last_key(&self) -> Option<String> {
        let chunk = self.chunks.last()?;
        let mut key = String::new();
        let mut cursor = chunk.cursor();
        while cursor.next(&mut key).is_some() {}
        Some(key)
    }

    /// The sets one after the other, if each one's keys all sort before the
    /// next one's: then the chunks are shared, nothing is copied. A dump
    /// arrives nearly sorted, so its sorted batches usually are disjoint.
    pub(crate) fn concat_disjoint(parts: &[Leaves]) -> Option<Leaves> {
        let parts: Vec<&Leaves> = parts.iter().filter(|p| p.len > 0).collect();
        for pair in parts.windows(2) {
            let last = pair[0].last_key()?;
            if pair[1]
                .first_key()
                .is_none_or(|first| first <= last.as_str())
            {
                return None;
            }
        }
        let chunks: Vec<Arc<Chunk>> = parts
            .iter()
            .flat_map(|p| p.chunks.iter().cloned())
            .collect();
        Some(Leaves {
            chunks: chunks.into(),
            len: parts.iter().map(|p| p.len).sum(),
        })
    }

    /// A [`Source`] reading this set in order.
    pub(crate) fn source(&self) -> LeavesSource<'_> {
        let mut source = LeavesSource {
            cursor: self.cursor(),
            key: String::new(),
            value: None,
        };
        source.advance();
        source
    }

    /// Appends this set to `out` in a self-delimiting form that
    /// [`Leaves::read`] reads back: the chunks as they are, so writing a
    /// snapshot costs a copy.
    pub(crate) fn write(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let mut head = Vec::with_capacity(16);
        write_varint(&mut head, self.chunks.len());
        out.write_all(&head)?;
        for chunk in self.chunks.iter() {
            head.clear();
            write_varint(&mut head, chunk.entries as usize);
            write_varint(&mut head, chunk.bytes.len());
            out.write_all(&head)?;
            out.write_all(&chunk.bytes)?;
        }
        Ok(())
    }

    /// Reads what [`Leaves::write`] wrote from the front of `bytes`, advancing
    /// it. Everything is checked (bounds, UTF-8, key order), so a damaged
    /// buffer is an error, never a panic or a wrong set.
    pub(crate) fn read(bytes: &mut &[u8]) -> Result<Leaves, String> {
        let chunks = checked_varint(bytes)?;
        let mut out = Vec::with_capacity(chunks.min(bytes.len()));
        let mut len = 0usize;
        let mut previous = String::new();
        for _ in 0..chunks {
            let entries = checked_varint(bytes)?;
            let size = checked_varint(bytes)?;
            if size > bytes.len() || entries == 0 || entries > u32::MAX as usize {
                return Err("damaged chunk header".into());
            }
            let (body, rest) = bytes.split_at(size);
            *bytes = rest;
            check_chunk(body, entries, &mut previous)?;
            len += entries;
            out.push(Arc::new(Chunk {
                entries: entries as u32,
                bytes: body.into(),
            }));
        }
        Ok(Leaves {
            chunks: out.into(),
            len,
        })
    }
}

/// Copies every update below `bound` (all, if `None`) to the output and the
/// change.
fn take_below<S: Source>(
    updates: &mut S,
    out: &mut Builder,
    change: &mut Option<&mut ChangeSink>,
    bound: Option<&str>,
) {
    while let Some((k, v)) = updates.current() {
        if bound.is_some_and(|b| k >= b) {
            break;
        }
        out.push(k, v);
        if let Some(c) = change.as_deref_mut() {
            c.updates.push(k, v);
        }
        updates.advance();
    }
}

fn checked_varint(bytes: &mut &[u8]) -> Result<usize, String> {
    let mut value = 0usize;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first().ok_or("truncated")?;
        *bytes = rest;
        value |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long".into())
}

/// Checks that `body` holds exactly `entries` well-formed entries whose keys
/// continue strictly after `previous` (updated to the last key).
fn check_chunk(mut body: &[u8], entries: usize, previous: &mut String) -> Result<(), String> {
    let mut key = String::new();
    for i in 0..entries {
        let shared = checked_varint(&mut body)?;
        let len = checked_varint(&mut body)?;
        if (i == 0 && shared != 0) || shared > key.len() || !key.is_char_boundary(shared) {
            return Err("damaged key prefix".into());
        }
        if len > body.len() {
            return Err("truncated key".into());
        }
        let (suffix, rest) = body.split_at(len);
        body = rest;
        key.truncate(shared);
        key.push_str(std::str::from_utf8(suffix).map_err(|e| e.to_string())?);
        if !previous.is_empty() && key.as_str() <= previous.as_str() {
            return Err(format!("key {key:?} out of order"));
        }
        let value = checked_varint(&mut body)?;
        if value > body.len() {
            return Err("truncated value".into());
        }
        body = &body[value..];
        previous.clear();
        previous.push_str(&key);
    }
    if body.is_empty() {
        Ok(())
    } else {
        Err("trailing bytes in a chunk".into())
    }
}

/// Sorted, distinct entries read one at a time; the current entry borrows
/// from the source, so sources can rebuild keys in a buffer of their own.
pub(crate) trait Source {
    /// The current entry, or `None` when done.
    fn current(&self) -> Option<(&str, &[u8])>;
    /// Moves to the next entry.
    fn advance(&mut self);
}

/// A [`Source`] over an iterator of borrowed entries.
pub(crate) struct IterSource<'a, I: Iterator<Item = (&'a str, &'a [u8])>> {
    iter: I,
    current: Option<(&'a str, &'a [u8])>,
}

impl<'a, I: Iterator<Item = (&'a str, &'a [u8])>> IterSource<'a, I> {
    pub(crate) fn new(mut iter: I) -> Self {
        let current = iter.next();
        Self { iter, current }
    }
}

impl<'a, I: Iterator<Item = (&'a str, &'a [u8])>> Source for IterSource<'a, I> {
    fn current(&self) -> Option<(&str, &[u8])> {
        self.current
    }

    fn advance(&mut self) {
        self.current = self.iter.next();
    }
}

/// A [`Source`] over a [`Leaves`].
pub(crate) struct LeavesSource<'a> {
    cursor: Cursor<'a>,
    key: String,
    value: Option<&'a [u8]>,
}

impl Source for LeavesSource<'_> {
    fn current(&self) -> Option<(&str, &[u8])> {
        self.value.map(|v| (self.key.as_str(), v))
    }

    fn advance(&mut self) {
        self.value = self.cursor.next(&mut self.key);
    }
}

impl<S: Source + ?Sized> Source for &mut S {
    fn current(&self) -> Option<(&str, &[u8])> {
        (**self).current()
    }

    fn advance(&mut self) {
        (**self).advance();
    }
}

/// The union of several sources; where a key is in more than one, the entry
/// of the last source wins (sources are given oldest first).
///
/// The sources with entries left are kept ordered by current key (newest
/// first among equals). A dump arrives nearly sorted, so its runs barely
/// overlap, and a source that moves on usually stays in front: one comparison
/// per entry instead of one per source.
pub(crate) struct Union<S: Source> {
    sources: Vec<S>,
    /// Indexes of sources with a current entry, in order.
    order: Vec<usize>,
    /// The key being passed, copied out of its source.
    passing: String,
}

impl<S: Source> Union<S> {
    pub(crate) fn new(sources: Vec<S>) -> Self {
        let mut union = Self {
            order: Vec::with_capacity(sources.len()),
            sources,
            passing: String::new(),
        };
        for i in 0..union.sources.len() {
            union.place(i);
        }
        union
    }

    /// Whether source `a` goes before source `b`.
    fn before(&self, a: usize, b: usize) -> bool {
        match (self.sources[a].current(), self.sources[b].current()) {
            (Some((ka, _)), Some((kb, _))) => ka < kb || (ka == kb && a > b),
            _ => false,
        }
    }

    /// Inserts source `i` at its place in `order`, if it has an entry.
    fn place(&mut self, i: usize) {
        if self.sources[i].current().is_none() {
            return;
        }
        let at = (0..self.order.len())
            .find(|&p| self.before(i, self.order[p]))
            .unwrap_or(self.order.len());
        self.order.insert(at, i);
    }
}

impl<S: Source> Source for Union<S> {
    fn current(&self) -> Option<(&str, &[u8])> {
        self.sources[*self.order.first()?].current()
    }

    fn advance(&mut self) {
        let Some(&first) = self.order.first() else {
            return;
        };
        self.passing.clear();
        if let Some((k, _)) = self.sources[first].current() {
            self.passing.push_str(k);
        }
        // Every source at this key moves on; they are all at the front.
        let mut at_key = 0;
        while at_key < self.order.len()
            && self.sources[self.order[at_key]]
                .current()
                .is_some_and(|(k, _)| k == self.passing)
        {
            at_key += 1;
        }
        // A moved source's next key is past `passing`, so it is placed
        // behind the others still at it.
        for _ in 0..at_key {
            let i = self.order.remove(0);
            self.sources[i].advance();
            self.place(i);
        }
    }
}

impl std::fmt::Debug for Leaves {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The first entries are enough to tell two sets apart in a failing test.
        let mut map = f.debug_map();
        let (mut cursor, mut key, mut shown) = (self.cursor(), String::new(), 0);
        while let Some(value) = cursor.next(&mut key) {
            if shown == 64 {
                map.entry(&"..", &format!("{} more", self.len - shown));
                break;
            }
            map.entry(&key, &value);
            shown += 1;
        }
        map.finish()
    }
}

impl PartialEq for Leaves {
    fn eq(&self, other: &Self) -> bool {
        if self.len != other.len {
            return false;
        }
        let (mut a, mut b) = (self.cursor(), other.cursor());
        let (mut ka, mut kb) = (String::new(), String::new());
        loop {
            match (a.next(&mut ka), b.next(&mut kb)) {
                (None, None) => return true,
                (Some(va), Some(vb)) if va == vb && ka == kb => {}
                _ => return false,
            }
        }
    }
}

/// Reads entries across chunks.
pub(crate) struct Cursor<'a> {
    chunks: &'a [Arc<Chunk>],
    inner: Option<ChunkCursor<'a>>,
    /// Entries below this key are skipped (the start of a range lookup).
    skip_below: Option<String>,
}

impl<'a> Cursor<'a> {
    /// A cursor with nothing to read.
    pub(crate) fn empty() -> Self {
        Self {
            chunks: &[],
            inner: None,
            skip_below: None,
        }
    }

    fn open_next(&mut self) {
        self.inner = self.chunks.split_first().map(|(first, rest)| {
            self.chunks = rest;
            first.cursor()
        });
    }

    /// The next entry: its key is left in `key`, its value returned.
    pub(crate) fn next(&mut self, key: &mut String) -> Option<&'a [u8]> {
        loop {
            let inner = self.inner.as_mut()?;
            match inner.next(key) {
                Some(value) => {
                    if let Some(start) = &self.skip_below {
                        if key.as_str() < start.as_str() {
                            continue;
                        }
                        self.skip_below = None;
                    }
                    return Some(value);
                }
                None => self.open_next(),
            }
        }
    }
}

/// Builds a [`Leaves`] from entries pushed in strictly increasing key order.
#[derive(Debug, Default)]
pub(crate) struct Builder {
    chunks: Vec<Arc<Chunk>>,
    current: Vec<u8>,
    entries: usize,
    previous: String,
    len: usize,
}

impl Builder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn pending_entries(&self) -> usize {
        self.entries
    }

    /// Appends one entry; its key must sort after the last one pushed.
    pub(crate) fn push(&mut self, key: &str, value: &[u8]) {
        debug_assert!(
            self.entries == 0 || self.previous.as_str() < key,
            "keys pushed out of order: {key:?} after {:?}",
            self.previous
        );
        let shared = if self.entries == 0 {
            0
        } else {
            shared_prefix(&self.previous, key)
        };
        write_varint(&mut self.current, shared);
        write_varint(&mut self.current, key.len() - shared);
        self.current.extend_from_slice(&key.as_bytes()[shared..]);
        write_varint(&mut self.current, value.len());
        self.current.extend_from_slice(value);
        self.previous.truncate(shared);
        self.previous.push_str(&key[shared..]);
        self.entries += 1;
        self.len += 1;
        if self.entries >= CHUNK_ENTRIES {
            self.flush();
        }
    }

    /// Appends whole existing chunks (after any pending entries).
    fn push_chunks(&mut self, chunks: &[Arc<Chunk>]) {
        self.flush();
        for chunk in chunks {
            self.len += chunk.entries as usize;
            self.chunks.push(Arc::clone(chunk));
        }
    }

    /// Appends a whole existing chunk (after any pending entries).
    fn push_chunk(&mut self, chunk: &Arc<Chunk>) {
        self.flush();
        self.len += chunk.entries as usize;
        self.chunks.push(Arc::clone(chunk));
    }

    fn flush(&mut self) {
        if self.entries == 0 {
            return;
        }
        let bytes = std::mem::take(&mut self.current).into_boxed_slice();
        self.chunks.push(Arc::new(Chunk {
            entries: self.entries as u32,
            bytes,
        }));
        self.entries = 0;
        self.previous.clear();
    }

    pub(crate) fn finish(mut self) -> Leaves {
        self.flush();
        Leaves {
            chunks: self.chunks.into(),
            len: self.len,
        }
    }
}

/// Where a merge reports the net change: updated leaves with their new values,
/// deleted leaves with empty values.
#[derive(Debug, Default)]
pub(crate) struct ChangeSink {
    pub(crate) updates: Builder,
    pub(crate) deletes: Builder,
}

/// Key ranges to delete: sorted, disjoint `[lo, hi)` byte ranges (`hi` `None`
/// is unbounded).
#[derive(Debug, Default, Clone)]
pub(crate) struct Ranges {
    ranges: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Ranges {
    /// Adds the single key `key`.
    pub(crate) fn add_exact(&mut self, key: &str) {
        self.add(key_range(key, true));
    }

    /// Adds a range made by [`key_range`].
    pub(crate) fn add(&mut self, range: (Vec<u8>, Option<Vec<u8>>)) {
        self.ranges.push(range);
    }

    /// Sorts and joins overlapping ranges. Must be called after adding.
    pub(crate) fn normalise(&mut self) {
        self.ranges.sort();
        let mut joined: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(self.ranges.len());
        for (lo, hi) in self.ranges.drain(..) {
            if let Some((_, last_hi)) = joined.last_mut() {
                let overlaps = match last_hi {
                    None => true,
                    Some(h) => lo <= *h,
                };
                if overlaps {
                    *last_hi = match (last_hi.take(), hi) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        _ => None,
                    };
                    continue;
                }
            }
            joined.push((lo, hi));
        }
        self.ranges = joined;
    }

    fn cursor(&self) -> RangeCursor<'_> {
        RangeCursor {
            ranges: &self.ranges,
        }
    }
}

/// The `[lo, hi)` byte range (`hi` `None`: unbounded) of the single key
/// `text` (`exact`) or of every key that starts with it.
pub(crate) fn key_range(text: &str, exact: bool) -> (Vec<u8>, Option<Vec<u8>>) {
    let lo = text.as_bytes().to_vec();
    let hi = if exact {
        // The smallest string after `text`.
        let mut hi = lo.clone();
        hi.push(0);
        Some(hi)
    } else {
        prefix_end(&lo)
    };
    (lo, hi)
}

/// The first byte string after every string that starts with `prefix`, or
/// `None` when there is none (the prefix is empty or all 0xff).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Walks [`Ranges`] alongside keys visited in increasing order.
struct RangeCursor<'a> {
    ranges: &'a [(Vec<u8>, Option<Vec<u8>>)],
}

impl RangeCursor<'_> {
    /// Drops ranges that end at or before `key`.
    fn skip_to(&mut self, key: &[u8]) {
        while let Some(((_, Some(hi)), rest)) = self.ranges.split_first() {
            if hi.as_slice() > key {
                break;
            }
            self.ranges = rest;
        }
    }

    /// Where the next range starts, if any is left.
    fn next_start(&self) -> Option<&[u8]> {
        self.ranges.first().map(|(lo, _)| lo.as_slice())
    }

    /// Whether `key` (not below any key asked before) is in a range.
    fn contains(&mut self, key: &str) -> bool {
        self.skip_to(key.as_bytes());
        self.ranges
            .first()
            .is_some_and(|(lo, _)| lo.as_slice() <= key.as_bytes())
    }

    /// Whether a range meets `[lo, hi)` (`hi` `None` is unbounded).
    fn overlaps(&mut self, lo: &str, hi: Option<&str>) -> bool {
        self.skip_to(lo.as_bytes());
        self.ranges.first().is_some_and(|(range_lo, _)| {
            hi.is_none_or(|h| range_lo.as_slice().cmp(h.as_bytes()) == Ordering::Less)
        })
    }
}

/// Builds a [`Leaves`] from entries in any order; a later entry for the same key
/// replaces an earlier one.
pub(crate) fn from_unsorted(mut entries: Vec<(String, Vec<u8>)>) -> Leaves {
    // Stable, so equal keys keep their order and the last one wins.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Builder::new();
    let mut iter = entries.into_iter().peekable();
    while let Some((key, value)) = iter.next() {
        if iter.peek().is_some_and(|(next, _)| *next == key) {
            continue;
        }
        out.push(&key, &value);
    }
    out.finish()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn build(map: &BTreeMap<String, Vec<u8>>) -> Leaves {
        let mut b = Builder::new();
        for (k, v) in map {
            b.push(k, v);
        }
        b.finish()
    }

    fn entries(leaves: &Leaves) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        leaves.for_each(|k, v| {
            out.insert(k.to_string(), v.to_vec());
        });
        out
    }

    fn arb_key() -> impl Strategy<Value = String> {
        // Few distinct characters, so keys share prefixes and collide often;
        // 'é' checks that shared prefixes end on character boundaries.
        prop::collection::vec(
            prop_oneof![Just('a'), Just('b'), Just('/'), Just('é')],
            0..8,
        )
        .prop_map(|c| c.into_iter().collect())
    }

    #[test]
    fn prefix_end_skips_trailing_ff() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xff]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn lookups_across_many_chunks() {
        let map: BTreeMap<String, Vec<u8>> = (0..1000)
            .map(|i| (format!("/k/{i:05}"), vec![i as u8; i % 5]))
            .collect();
        let leaves = build(&map);
        assert_eq!(leaves.len(), 1000);
        assert!(leaves.chunks.len() > 10);
        for (k, v) in &map {
            assert_eq!(leaves.get(k).as_ref(), Some(v), "{k}");
        }
        assert_eq!(leaves.get("/k/00010x"), None);
        assert_eq!(leaves.get(""), None);
        assert_eq!(leaves.get("/z"), None);
        let mut cursor = leaves.cursor_from("/k/00500");
        let mut key = String::new();
        cursor.next(&mut key);
        assert_eq!(key, "/k/00500");
    }

    proptest! {
        /// Merging equals the same operations on a plain map, the reported
        /// change turns the old map into the new one, and untouched chunks are
        /// shared with the old set.
        #[test]
        fn merge_equals_map(
            start in prop::collection::btree_map(arb_key(), prop::collection::vec(0u8..3, 0..3), 0..200),
            updates in prop::collection::btree_map(arb_key(), prop::collection::vec(0u8..3, 0..3), 0..40),
            exact in prop::collection::vec(arb_key(), 0..5),
            prefixes in prop::collection::vec(arb_key(), 0..3),
        ) {
            let old = build(&start);
            let mut ranges = Ranges::default();
            for k in &exact { ranges.add_exact(k); }
            for p in &prefixes { ranges.add(key_range(p, false)); }
            ranges.normalise();
            let deleted = |k: &str| exact.iter().any(|e| e == k) || prefixes.iter().any(|p| k.starts_with(p.as_str()));

            let mut sink = ChangeSink::default();
            let new = old.merge(
                IterSource::new(updates.iter().map(|(k, v)| (k.as_str(), v.as_slice()))),
                &ranges,
                Some(&mut sink),
            );
            let mut expected = start.clone();
            expected.retain(|k, _| !deleted(k));
            expected.extend(updates.clone());
            prop_assert_eq!(entries(&new), expected.clone());
            prop_assert_eq!(new.len(), expected.len());

            let changed = entries(&sink.updates.finish());
            let removed = entries(&sink.deletes.finish());
            let mut rebuilt = start.clone();
            for k in removed.keys() {
                prop_assert!(rebuilt.remove(k).is_some());
            }
            for (k, v) in &changed {
                prop_assert!(start.get(k) != Some(v), "unchanged {} reported", k);
                rebuilt.insert(k.clone(), v.clone());
            }
            prop_assert_eq!(rebuilt, expected);
            for (k, v) in &start {
                prop_assert_eq!(new.get(k).as_ref() == Some(v), entries(&new).get(k) == Some(v));
            }
        }
    }

    #[test]
    fn untouched_chunks_are_shared() {
        let map: BTreeMap<String, Vec<u8>> =
            (0..1000).map(|i| (format!("/k/{i:05}"), vec![1])).collect();
        let old = build(&map);
        let new = old.merge(
            IterSource::new(std::iter::once(("/k/00500", &[2u8][..]))),
            &Ranges::default(),
            None,
        );
        let shared = new
            .chunks
            .iter()
            .filter(|c| old.chunks.iter().any(|o| Arc::ptr_eq(o, c)))
            .count();
        assert!(
            shared + 2 >= old.chunks.len(),
            "{shared} of {}",
            old.chunks.len()
        );
        assert_eq!(new.get("/k/00500"), Some(vec![2]));
    }

    proptest! {
        /// What is written reads back equal; any damage is an error, not a
        /// panic.
        #[test]
        fn write_read_round_trip(
            start in prop::collection::btree_map(arb_key(), prop::collection::vec(0u8..3, 0..3), 0..200),
            flip in 0usize..4000,
            cut in 0usize..4000,
        ) {
            let leaves = build(&start);
            let mut bytes = Vec::new();
            leaves.write(&mut bytes).unwrap();
            let mut reader = &bytes[..];
            prop_assert_eq!(Leaves::read(&mut reader), Ok(leaves));
            prop_assert!(reader.is_empty());
            if !bytes.is_empty() {
                let mut damaged = bytes.clone();
                damaged[flip % bytes.len()] ^= 0x5a;
                let _ = Leaves::read(&mut &damaged[..]);
                let _ = Leaves::read(&mut &bytes[..cut % bytes.len()]);
            }
        }

        /// A union of sources is the map union, later sources winning.
        #[test]
        fn union_prefers_later_sources(
            maps in prop::collection::vec(
                prop::collection::btree_map(arb_key(), prop::collection::vec(0u8..3, 0..3), 0..30),
                0..5,
            ),
        ) {
            let sets: Vec<Leaves> = maps.iter().map(build).collect();
            let mut union = Union::new(sets.iter().map(Leaves::source).collect());
            let mut got = BTreeMap::new();
            let mut last: Option<String> = None;
            while let Some((k, v)) = union.current() {
                prop_assert!(last.as_deref().is_none_or(|l| l < k));
                last = Some(k.to_string());
                got.insert(k.to_string(), v.to_vec());
                union.advance();
            }
            let mut expected = BTreeMap::new();
            for m in &maps {
                expected.extend(m.clone());
            }
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn disjoint_sets_concatenate() {
        let part = |range: std::ops::Range<u32>| {
            build(&range.map(|i| (format!("/k/{i:05}"), vec![1])).collect())
        };
        let (a, b, c) = (part(0..100), part(100..150), part(150..400));
        let joined =
            Leaves::concat_disjoint(&[a.clone(), Leaves::default(), b.clone(), c]).unwrap();
        assert_eq!(joined, part(0..400));
        assert!(Leaves::concat_disjoint(&[b.clone(), a.clone()]).is_none());
        assert!(
            Leaves::concat_disjoint(&[a.clone(), a]).is_none(),
            "a shared key"
        );
        assert_eq!(Leaves::concat_disjoint(&[]), Some(Leaves::default()));
    }

    #[test]
    fn from_unsorted_keeps_the_last() {
        let leaves = from_unsorted(vec![
            ("/b".into(), vec![1]),
            ("/a".into(), vec![1]),
            ("/b".into(), vec![2]),
        ]);
        assert_eq!(leaves.len(), 2);
        assert_eq!(leaves.get("/b"), Some(vec![2]));
    }
}
