//! Which Kafka offsets are safe to commit while pushes finish out of order:
//! the last offset below which every message of the partition is done. A
//! crash then resends unfinished pushes instead of losing them.

use std::collections::{BTreeSet, HashMap};

/// In-flight and finished offsets per topic partition.
#[derive(Default)]
pub(crate) struct Offsets {
    /// By topic and partition: each partition's offsets are committed on their own.
    partitions: HashMap<(String, i32), Partition>,
}

#[derive(Default)]
struct Partition {
    /// Offsets taken and not finished.
    in_flight: BTreeSet<i64>,
    /// The lowest offset taken: nothing below it is ours to store.
    first: Option<i64>,
    /// The highest finished offset.
    finished: Option<i64>,
    /// The highest offset already handed out for storing.
    stored: Option<i64>,
}

impl Offsets {
    /// A message at `offset` is being handled.
    pub(crate) fn begin(&mut self, topic: &str, partition: i32, offset: i64) {
        let p = self
            .partitions
            .entry((topic.to_owned(), partition))
            .or_default();
        p.first = Some(p.first.map_or(offset, |f| f.min(offset)));
        p.in_flight.insert(offset);
    }

    /// The message at `offset` is done. Returns the offset to store, when the
    /// partition's safe point moved: every message up to it is done.
    pub(crate) fn finish(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&(topic.to_owned(), partition))?;
        if !p.in_flight.remove(&offset) {
            return None;
        }
        p.finished = p.finished.max(Some(offset));
        let safe = match p.in_flight.first() {
            Some(&oldest) => oldest - 1,
            None => p.finished?,
        };
        if Some(safe) < p.first {
            return None;
        }
        (Some(safe) > p.stored).then(|| {
            p.stored = Some(safe);
            safe
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_safe_point_waits_for_the_oldest_unfinished_message() {
        let mut o = Offsets::default();
        for off in 10..14 {
            o.begin("t", 0, off);
        }
        assert_eq!(o.finish("t", 0, 12), None, "10 and 11 still run");
        assert_eq!(o.finish("t", 0, 10), Some(10));
        assert_eq!(o.finish("t", 0, 13), None, "11 still runs");
        assert_eq!(o.finish("t", 0, 11), Some(13));
        assert_eq!(o.finish("t", 0, 11), None, "finishing twice moves nothing");
    }

    #[test]
    fn partitions_are_independent() {
        let mut o = Offsets::default();
        o.begin("t", 0, 5);
        o.begin("t", 1, 7);
        o.begin("u", 0, 1);
        assert_eq!(o.finish("t", 1, 7), Some(7));
        assert_eq!(o.finish("u", 0, 1), Some(1));
        assert_eq!(o.finish("t", 0, 5), Some(5));
        assert_eq!(o.finish("v", 0, 5), None);
    }
}
