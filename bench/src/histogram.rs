//! A latency histogram with about 1 % precision and a fixed size.
//!
//! Load generators record one sample per delivered event (hundreds of
//! thousands per second at scale), then print their histogram as JSON; the
//! comparison merges the histograms of several load processes by adding
//! bucket counts, which keeps percentiles exact to the bucket width.

use serde_json::{json, Value};

/// Bucket upper bounds grow by this factor: 1 % relative precision.
const GROWTH: f64 = 1.01;
/// Microseconds below this land in one bucket each.
const LINEAR_LIMIT_US: u64 = 100;
/// Samples above this (100 s) land in the last bucket.
const MAX_US: u64 = 100_000_000;

/// Counts of latencies, in microseconds.
#[derive(Debug, Clone)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max_us: u64,
}

fn bucket_count() -> usize {
    index_of(MAX_US) + 1
}

fn index_of(us: u64) -> usize {
    if us < LINEAR_LIMIT_US {
        return us as usize;
    }
    let steps = ((us as f64) / (LINEAR_LIMIT_US as f64)).ln() / GROWTH.ln();
    LINEAR_LIMIT_US as usize + steps as usize
}

/// The largest latency a bucket holds (its upper bound).
fn upper_bound(index: usize) -> u64 {
    if index < LINEAR_LIMIT_US as usize {
        return index as u64;
    }
    let steps = (index - LINEAR_LIMIT_US as usize + 1) as i32;
    ((LINEAR_LIMIT_US as f64) * GROWTH.powi(steps)) as u64
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; bucket_count()],
            count: 0,
            max_us: 0,
        }
    }
}

impl Histogram {
    pub fn record(&mut self, us: u64) {
        let us = us.min(MAX_US);
        self.buckets[index_of(us)] += 1;
        self.count += 1;
        self.max_us = self.max_us.max(us);
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max_us(&self) -> u64 {
        self.max_us
    }

    /// The latency below which `fraction` of the samples fall (upper bucket bound).
    pub fn percentile(&self, fraction: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let wanted = ((self.count as f64) * fraction).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= wanted {
                return upper_bound(index).min(self.max_us);
            }
        }
        self.max_us
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.count += other.count;
        self.max_us = self.max_us.max(other.max_us);
    }

    /// Sparse JSON: `{"max": us, "b": [[index, count], ...]}`.
    pub fn to_json(&self) -> Value {
        let sparse: Vec<Value> = self
            .buckets
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| json!([i, c]))
            .collect();
        json!({ "max": self.max_us, "b": sparse })
    }

    pub fn from_json(value: &Value) -> Histogram {
        let mut histogram = Histogram::default();
        if let Some(pairs) = value["b"].as_array() {
            for pair in pairs {
                let index = pair[0].as_u64().unwrap_or(0) as usize;
                let count = pair[1].as_u64().unwrap_or(0);
                if let Some(bucket) = histogram.buckets.get_mut(index) {
                    *bucket += count;
                    histogram.count += count;
                }
            }
        }
        histogram.max_us = value["max"].as_u64().unwrap_or(0);
        histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_one_percent() {
        let mut h = Histogram::default();
        for us in 1..=100_000u64 {
            h.record(us);
        }
        let p50 = h.percentile(0.50) as f64;
        let p99 = h.percentile(0.99) as f64;
        assert!((p50 - 50_000.0).abs() / 50_000.0 < 0.011, "{p50}");
        assert!((p99 - 99_000.0).abs() / 99_000.0 < 0.011, "{p99}");
        assert_eq!(h.max_us(), 100_000);
    }

    #[test]
    fn merge_and_json_round_trip_keep_counts() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(10);
        b.record(5_000);
        a.merge(&Histogram::from_json(&b.to_json()));
        assert_eq!(a.count(), 2);
        assert_eq!(a.max_us(), 5_000);
    }
}
