//! Per-tenant series with bounded cardinality.
//!
//! Every tenant's activity is counted in its own [`TenantStats`], but at most
//! `max` tenants get series of their own: the busiest by transactions. The rest
//! are summed into one `tenant="other"` series. At each scrape the counts since
//! the last scrape (deltas) are added to whichever series the tenant has at that
//! moment, so every exposed counter only ever grows, even when a tenant gains or
//! loses its own series. While there are free series, an active tenant gets one
//! at once; when they are all taken, the set is re-ranked once a minute by the
//! transactions of that minute (holders win ties, so series do not flap).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::TenantStats;
use super::text::{Kind, Writer};

/// How often a full set of series is re-ranked.
const RANK_EVERY: Duration = Duration::from_secs(60);
/// The folded series' label value; a tenant of that id is always folded into it.
pub const OTHER: &str = "other";

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Totals {
    transactions: u64,
    queries: u64,
    wait_micros: u64,
    errors: u64,
}

impl Totals {
    fn of(s: &TenantStats) -> Totals {
        Totals {
            transactions: s.transactions.get(),
            queries: s.queries.get(),
            wait_micros: s.queue_wait_micros.get(),
            errors: s.errors.get(),
        }
    }

    fn since(self, before: Totals) -> Totals {
        Totals {
            transactions: self.transactions.saturating_sub(before.transactions),
            queries: self.queries.saturating_sub(before.queries),
            wait_micros: self.wait_micros.saturating_sub(before.wait_micros),
            errors: self.errors.saturating_sub(before.errors),
        }
    }

    fn add(&mut self, d: Totals) {
        self.transactions += d.transactions;
        self.queries += d.queries;
        self.wait_micros += d.wait_micros;
        self.errors += d.errors;
    }
}

/// Reads one value of a tenant's totals.
type Field = fn(&Totals) -> f64;

struct Tracked {
    stats: Arc<TenantStats>,
    /// Its counts at the last fold.
    seen: Totals,
    /// Transactions since the last ranking.
    recent: u64,
    /// Its own series, if it has one.
    series: Option<Totals>,
}

pub struct TenantSeries {
    inner: Mutex<Inner>,
}

struct Inner {
    max: usize,
    tenants: HashMap<Arc<str>, Tracked>,
    other: Totals,
    ranked_at: Instant,
}

impl TenantSeries {
    pub fn new(max: usize) -> TenantSeries {
        TenantSeries {
            inner: Mutex::new(Inner {
                max,
                tenants: HashMap::new(),
                other: Totals::default(),
                ranked_at: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stats a session of `tenant` counts into (held for the session's life).
    pub fn stats(&self, tenant: &str) -> Arc<TenantStats> {
        let mut inner = self.lock();
        if let Some(t) = inner.tenants.get(tenant) {
            return Arc::clone(&t.stats);
        }
        let stats = Arc::new(TenantStats::default());
        inner.tenants.insert(
            Arc::from(tenant),
            Tracked {
                stats: Arc::clone(&stats),
                seen: Totals::default(),
                recent: 0,
                series: None,
            },
        );
        stats
    }

    /// A reload may change `metrics.max_tenant_series`; the next scrape re-ranks.
    pub fn set_max(&self, max: usize) {
        let mut inner = self.lock();
        if inner.max != max {
            inner.max = max;
            inner.ranked_at = Instant::now() - RANK_EVERY;
        }
    }

    /// Folds the counts since the last scrape and writes the series;
    /// `clients` gives a tenant's open client connections.
    pub fn write(&self, w: &mut Writer, clients: &dyn Fn(&str) -> u32) {
        let mut inner = self.lock();
        inner.fold(Instant::now());
        let mut rows: Vec<(&str, Totals, u32)> = Vec::new();
        let mut other_clients = 0;
        for (id, t) in &inner.tenants {
            match t.series {
                Some(totals) => rows.push((id, totals, clients(id))),
                None => other_clients += clients(id),
            }
        }
        rows.sort_by(|a, b| a.0.cmp(b.0));
        rows.push((OTHER, inner.other, other_clients));
        let families: [(&str, Kind, &str, Field); 4] = [
            (
                "pgtenant_tenant_transactions_total",
                Kind::Counter,
                "Transactions per tenant (the busiest tenants; the rest are summed into the series named other).",
                |t| t.transactions as f64,
            ),
            (
                "pgtenant_tenant_queries_total",
                Kind::Counter,
                "Client requests answered per tenant.",
                |t| t.queries as f64,
            ),
            (
                "pgtenant_tenant_queue_wait_seconds_total",
                Kind::Counter,
                "Time per tenant spent waiting for a server.",
                |t| t.wait_micros as f64 / 1e6,
            ),
            (
                "pgtenant_tenant_errors_total",
                Kind::Counter,
                "Errors sent to a tenant's clients.",
                |t| t.errors as f64,
            ),
        ];
        for (name, kind, help, get) in families {
            w.family(name, kind, help);
            for (tenant, totals, _) in &rows {
                w.sample(name, &[("tenant", tenant)], get(totals));
            }
        }
        let name = "pgtenant_tenant_clients";
        w.family(name, Kind::Gauge, "Open client connections per tenant.");
        for (tenant, _, clients) in &rows {
            w.sample(name, &[("tenant", tenant)], *clients as f64);
        }
    }
}

impl Inner {
    fn fold(&mut self, now: Instant) {
        let mut deltas: Vec<(Arc<str>, Totals)> = Vec::with_capacity(self.tenants.len());
        for (id, t) in &mut self.tenants {
            let current = Totals::of(&t.stats);
            let delta = current.since(t.seen);
            t.seen = current;
            t.recent += delta.transactions;
            deltas.push((Arc::clone(id), delta));
        }
        self.rank(now);
        for (id, delta) in deltas {
            let t = self.tenants.get_mut(&id).expect("tracked above");
            match &mut t.series {
                Some(series) => series.add(delta),
                None => self.other.add(delta),
            }
        }
        // Tenants no session uses, with nothing left to fold and no series.
        self.tenants
            .retain(|_, t| t.series.is_some() || t.recent > 0 || Arc::strong_count(&t.stats) > 1);
    }

    /// Gives free series to active tenants, and re-ranks a full set each minute.
    fn rank(&mut self, now: Instant) {
        let held = self.tenants.values().filter(|t| t.series.is_some()).count();
        let full_rank = now.duration_since(self.ranked_at) >= RANK_EVERY || held > self.max;
        let mut candidates: Vec<(&Arc<str>, u64, bool)> = self
            .tenants
            .iter()
            .filter(|(id, t)| &***id != OTHER && (t.recent > 0 || t.series.is_some()))
            .map(|(id, t)| (id, t.recent, t.series.is_some()))
            .collect();
        // Busiest first; a holder wins a tie; then by name, for a stable order.
        candidates.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(b.0)));
        let chosen: Vec<Arc<str>> = if full_rank {
            candidates
                .iter()
                .filter(|c| c.1 > 0 || c.2)
                .take(self.max)
                .map(|c| Arc::clone(c.0))
                .collect()
        } else {
            let free = self.max.saturating_sub(held);
            candidates
                .iter()
                .filter(|c| c.2)
                .chain(candidates.iter().filter(|c| !c.2 && c.1 > 0).take(free))
                .map(|c| Arc::clone(c.0))
                .collect()
        };
        for (id, t) in &mut self.tenants {
            let keep = chosen.contains(id);
            match (&t.series, keep) {
                (None, true) => t.series = Some(Totals::default()),
                (Some(_), false) => t.series = None,
                _ => {}
            }
        }
        if full_rank {
            self.ranked_at = now;
            for t in self.tenants.values_mut() {
                t.recent = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(s: &TenantSeries) -> String {
        let mut w = Writer::default();
        s.write(&mut w, &|_| 1);
        w.finish()
    }

    fn value(text: &str, tenant: &str) -> Option<u64> {
        let prefix = format!("pgtenant_tenant_transactions_total{{tenant=\"{tenant}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.parse().unwrap())
    }

    #[test]
    fn at_most_max_series_and_the_rest_fold_into_other() {
        let s = TenantSeries::new(2);
        let stats: Vec<_> = (0..5).map(|i| s.stats(&format!("t{i}"))).collect();
        for (i, st) in stats.iter().enumerate() {
            st.transactions.add(10 * (i as u64 + 1));
        }
        let text = scrape(&s);
        let own: Vec<_> = (0..5)
            .filter_map(|i| value(&text, &format!("t{i}")))
            .collect();
        assert_eq!(own.len(), 2, "{text}");
        let total: u64 = own.iter().sum::<u64>() + value(&text, OTHER).unwrap();
        assert_eq!(total, 150);
        // The busiest two got the series.
        assert_eq!(value(&text, "t4"), Some(50));
        assert_eq!(value(&text, "t3"), Some(40));
    }

    #[test]
    fn counters_never_decrease_when_series_move() {
        let s = TenantSeries::new(1);
        let a = s.stats("a");
        let b = s.stats("b");
        a.transactions.add(5);
        let first = scrape(&s);
        assert_eq!(value(&first, "a"), Some(5));
        // b becomes much busier; a full re-rank hands it the series.
        b.transactions.add(100);
        a.transactions.add(1);
        s.lock().ranked_at = Instant::now() - RANK_EVERY;
        let second = scrape(&s);
        assert_eq!(value(&second, "a"), None);
        assert_eq!(value(&second, "b"), Some(100));
        assert_eq!(value(&second, OTHER), Some(1));
        a.transactions.add(3);
        let third = scrape(&s);
        assert_eq!(value(&third, OTHER), Some(4));
    }

    #[test]
    fn a_tenant_named_other_is_always_folded() {
        let s = TenantSeries::new(5);
        s.stats(OTHER).transactions.add(7);
        let text = scrape(&s);
        assert_eq!(text.matches("tenant=\"other\"").count(), 5, "{text}");
        assert_eq!(value(&text, OTHER), Some(7));
    }
}
