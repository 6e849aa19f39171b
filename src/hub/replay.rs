//! A topic's replay window: the newest frames, in order, with an id index.
//!
//! Every frame a topic publishes gets the next sequence number and is pushed
//! here once. The window is more than a history for `Last-Event-ID`: it is
//! also the topic's broadcast ring. A subscriber is just a cursor (the
//! sequence number of the next frame it needs); resuming, catching up after a
//! slow write and receiving live frames are the same operation, copying
//! `Bytes` handles from its cursor onwards. So there is no seam between replay
//! and live delivery where a frame could be lost or doubled.
//!
//! The window is bounded by a frame count and by total bytes (the newest
//! frame is always kept, whatever its size). Ids are indexed in a map, so a
//! reconnect storm resolves each `Last-Event-ID` in O(1), not by a scan.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

/// One published frame.
#[derive(Debug, Clone)]
struct Entry {
    /// The encoded frame every subscriber is handed.
    frame: Bytes,
    /// The id this frame set (an event with `id:`, or an id-only frame).
    id: Option<Arc<str>>,
    /// Bytes published before this frame, from the topic's start; the
    /// difference of two offsets is how many bytes lie between two cursors.
    offset: u64,
    /// When it was published, on the process-wide count of published frames
    /// ([`ReplayBudget`](super::budget::ReplayBudget)): the budget evicts
    /// the oldest frames across topics first.
    stamp: u64,
}

/// The newest frames of a topic, bounded by count and bytes.
#[derive(Debug)]
pub struct ReplayWindow {
    /// The frames, oldest first.
    entries: VecDeque<Entry>,
    /// Sequence number of `entries[0]` (of the next frame when empty).
    first_seq: u64,
    /// Sum of the frames' lengths.
    bytes: usize,
    /// Bytes ever published: the offset the next frame will get.
    end_offset: u64,
    /// Id → sequence number of the newest frame in the window that set it.
    index: HashMap<Arc<str>, u64>,
    /// At most this many frames are kept.
    max_frames: usize,
    /// At most this many bytes are kept (the newest frame always is).
    max_bytes: usize,
}

/// How far a cursor is behind the newest frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    /// Frames between the cursor and the head.
    pub frames: u64,
    /// Bytes of those frames.
    pub bytes: u64,
}

impl ReplayWindow {
    /// An empty window keeping at most `max_frames` frames and `max_bytes` bytes.
    pub fn new(max_frames: usize, max_bytes: usize) -> ReplayWindow {
        ReplayWindow {
            entries: VecDeque::with_capacity(max_frames.min(64)),
            first_seq: 0,
            bytes: 0,
            end_offset: 0,
            index: HashMap::new(),
            max_frames: max_frames.max(1),
            max_bytes,
        }
    }

    /// Appends a frame published at `stamp` and returns its sequence number,
    /// evicting the oldest frames past the bounds.
    pub fn push(&mut self, frame: Bytes, id: Option<Arc<str>>, stamp: u64) -> u64 {
        let seq = self.head();
        if let Some(id) = &id {
            if !id.is_empty() {
                self.index.insert(id.clone(), seq);
            }
        }
        self.bytes += frame.len();
        self.entries.push_back(Entry {
            offset: self.end_offset,
            frame,
            id,
            stamp,
        });
        self.end_offset += self.entries.back().map_or(0, |e| e.frame.len() as u64);
        while self.entries.len() > self.max_frames
            || (self.bytes > self.max_bytes && self.entries.len() > 1)
        {
            self.evict_oldest();
        }
        seq
    }

    fn evict_oldest(&mut self) {
        let Some(entry) = self.entries.pop_front() else {
            return;
        };
        self.bytes -= entry.frame.len();
        if let Some(id) = entry.id {
            // Only forget the id if no newer frame set it again.
            if self.index.get(&id) == Some(&self.first_seq) {
                self.index.remove(&id);
            }
        }
        self.first_seq += 1;
    }

    /// When the oldest frame was published, if the window holds more than
    /// its newest frame (which is never evicted).
    pub fn oldest_evictable(&self) -> Option<u64> {
        self.entries
            .front()
            .filter(|_| self.entries.len() > 1)
            .map(|e| e.stamp)
    }

    /// Evicts the oldest frame, unless it is the newest; returns the bytes
    /// freed. For the process-wide replay budget.
    pub fn evict_one(&mut self) -> usize {
        if self.entries.len() <= 1 {
            return 0;
        }
        let before = self.bytes;
        self.evict_oldest();
        before - self.bytes
    }

    /// The sequence number of the frame that set `id`, if the window holds it.
    pub fn position_of(&self, id: &str) -> Option<u64> {
        self.index.get(id).copied()
    }

    /// The id the newest frame that set one set, if the window holds it.
    pub fn newest_id(&self) -> Option<&Arc<str>> {
        self.entries
            .iter()
            .rev()
            .find_map(|e| e.id.as_ref().filter(|id| !id.is_empty()))
    }

    /// The sequence number the next frame will get.
    pub fn head(&self) -> u64 {
        self.first_seq + self.entries.len() as u64
    }

    /// The oldest sequence number still held.
    pub fn first(&self) -> u64 {
        self.first_seq
    }

    /// Changes the bounds (a reload); returns the bytes the frames evicted
    /// to fit them held.
    pub fn set_bounds(&mut self, max_frames: usize, max_bytes: usize) -> usize {
        self.max_frames = max_frames.max(1);
        self.max_bytes = max_bytes;
        let before = self.bytes;
        while self.entries.len() > self.max_frames
            || (self.bytes > self.max_bytes && self.entries.len() > 1)
        {
            self.evict_oldest();
        }
        before - self.bytes
    }

    /// At most this many frames are kept.
    pub fn max_frames(&self) -> usize {
        self.max_frames
    }

    /// At most this many bytes are kept (but for the newest frame).
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether a frame with this id is in the window.
    pub fn contains_id(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// The cursor that resumes right after the frame that set `id`, or `None`
    /// when no frame in the window did.
    pub fn position_after(&self, id: &str) -> Option<u64> {
        self.index.get(id).map(|seq| seq + 1)
    }

    /// How far `cursor` is behind the head; `None` when the frames it needs
    /// were already evicted.
    pub fn lag(&self, cursor: u64) -> Option<Lag> {
        if cursor < self.first_seq {
            return None;
        }
        let head = self.head();
        let cursor = cursor.min(head);
        let start_offset = self
            .entries
            .get((cursor - self.first_seq) as usize)
            .map_or(self.end_offset, |e| e.offset);
        Some(Lag {
            frames: head - cursor,
            bytes: self.end_offset - start_offset,
        })
    }

    /// Appends to `out` (as shared handles, no copying of bytes) up to `max`
    /// frames from `cursor` on, and returns the cursor after them. A cursor
    /// behind the window starts at its first frame.
    pub fn read_from(&self, cursor: u64, max: usize, out: &mut Vec<Bytes>) -> u64 {
        let start = cursor.max(self.first_seq);
        let skip = (start - self.first_seq) as usize;
        let before = out.len();
        out.extend(
            self.entries
                .iter()
                .skip(skip)
                .take(max)
                .map(|e| e.frame.clone()),
        );
        start + (out.len() - before) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    fn id(text: &str) -> Option<Arc<str>> {
        Some(Arc::from(text))
    }

    #[test]
    fn frames_come_back_in_order_from_any_cursor() {
        let mut window = ReplayWindow::new(10, 1000);
        for n in 0..5 {
            window.push(frame(&format!("f{n}")), None, 0);
        }
        let mut out = Vec::new();
        let next = window.read_from(2, 10, &mut out);
        assert_eq!(out, vec![frame("f2"), frame("f3"), frame("f4")]);
        assert_eq!(next, 5);
    }

    #[test]
    fn count_bound_evicts_oldest_and_forgets_their_ids() {
        let mut window = ReplayWindow::new(2, 1000);
        window.push(frame("a"), id("1"), 0);
        window.push(frame("b"), id("2"), 0);
        window.push(frame("c"), id("3"), 0);
        assert_eq!(window.len(), 2);
        assert_eq!(window.first(), 1);
        assert_eq!(window.position_after("1"), None);
        assert_eq!(window.position_after("2"), Some(2));
    }

    #[test]
    fn byte_bound_evicts_but_keeps_the_newest_frame() {
        let mut window = ReplayWindow::new(100, 5);
        window.push(frame("abc"), None, 0);
        window.push(frame("defgh"), None, 0);
        assert_eq!(window.len(), 1);
        window.push(frame("much longer than five"), None, 0);
        assert_eq!(window.len(), 1);
        assert_eq!(window.bytes(), "much longer than five".len());
    }

    #[test]
    fn resume_position_is_right_after_the_frame_with_the_id() {
        let mut window = ReplayWindow::new(10, 1000);
        window.push(frame("a"), id("x"), 0);
        window.push(frame("b"), None, 0);
        window.push(frame("c"), id("y"), 0);
        assert_eq!(window.position_after("x"), Some(1));
        assert_eq!(window.position_after("y"), Some(3));
        assert_eq!(window.position_after("nope"), None);
    }

    #[test]
    fn repeated_id_resumes_after_its_newest_frame() {
        let mut window = ReplayWindow::new(2, 1000);
        window.push(frame("a"), id("same"), 0);
        window.push(frame("b"), id("same"), 0);
        window.push(frame("c"), None, 0);
        // the first "same" was evicted; the newer one must still be found
        assert_eq!(window.position_after("same"), Some(2));
    }

    #[test]
    fn lag_counts_frames_and_bytes_behind_the_head() {
        let mut window = ReplayWindow::new(10, 1000);
        window.push(frame("aa"), None, 0);
        window.push(frame("bbb"), None, 0);
        window.push(frame("c"), None, 0);
        assert_eq!(
            window.lag(1),
            Some(Lag {
                frames: 2,
                bytes: 4
            })
        );
        assert_eq!(
            window.lag(3),
            Some(Lag {
                frames: 0,
                bytes: 0
            })
        );
    }

    #[test]
    fn evicted_cursor_has_no_lag_figure() {
        let mut window = ReplayWindow::new(1, 1000);
        window.push(frame("a"), None, 0);
        window.push(frame("b"), None, 0);
        assert_eq!(window.lag(0), None);
    }
}
