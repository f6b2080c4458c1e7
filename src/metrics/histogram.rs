//! A fixed-bucket latency histogram of atomics: observing is a bucket search
//! over a dozen bounds and three relaxed adds, no lock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::text::{Kind, Writer};

/// Upper bounds in seconds, from half a millisecond (a checkout that found an
/// idle server) to ten seconds (past any sane queue timeout).
pub const BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BOUNDS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_micros.load(Relaxed))
    }

    /// Writes `name_bucket`, `name_sum` and `name_count` with `labels`.
    pub fn write(&self, w: &mut Writer, name: &str, labels: &[(&str, &str)]) {
        let mut cumulative = 0;
        let bucket = format!("{name}_bucket");
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        with_le.push(("le", ""));
        let les: Vec<String> = BOUNDS.iter().map(|b| b.to_string()).collect();
        for (i, count) in self.buckets.iter().enumerate() {
            cumulative += count.load(Relaxed);
            let le = les.get(i).map_or("+Inf", String::as_str);
            *with_le.last_mut().expect("le was pushed") = ("le", le);
            w.sample(&bucket, &with_le, cumulative as f64);
        }
        w.sample(&format!("{name}_sum"), labels, self.sum().as_secs_f64());
        // The count is read after the buckets: a scrape racing an observation
        // never shows `+Inf` above `_count`.
        w.sample(&format!("{name}_count"), labels, cumulative as f64);
    }
}

/// Writes the `# HELP`/`# TYPE` header of a histogram family.
pub fn family(w: &mut Writer, name: &str, help: &str) {
    w.family(name, Kind::Histogram, help);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_at_the_count() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(7));
        h.observe(Duration::from_secs(60));
        let mut w = Writer::default();
        h.write(&mut w, "wait_seconds", &[("tier", "free")]);
        let text = w.finish();
        assert!(text.contains("wait_seconds_bucket{tier=\"free\",le=\"0.0005\"} 1\n"));
        assert!(text.contains("wait_seconds_bucket{tier=\"free\",le=\"0.005\"} 1\n"));
        assert!(text.contains("wait_seconds_bucket{tier=\"free\",le=\"0.01\"} 2\n"));
        assert!(text.contains("wait_seconds_bucket{tier=\"free\",le=\"10\"} 2\n"));
        assert!(text.contains("wait_seconds_bucket{tier=\"free\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("wait_seconds_count{tier=\"free\"} 3\n"));
        assert_eq!(h.count(), 3);
    }
}
