//! What the escape guard costs. Every client statement goes through the keyword
//! scan; only the statements it flags are parsed with PostgreSQL's parser. The
//! `parse_*` rows show what parsing every statement would cost instead.
//!
//! Run: `cargo bench --bench guard`

use pgtenant::tenant::guard::{self, Policy};
use pgtenant::tenant::scan::{Memo, may_change_session};

fn main() {
    divan::main();
}

/// Statements applications send all day, none of which may change the session.
const ORDINARY: &[(&str, &str)] = &[
    (
        "pgbench_select",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
    ),
    (
        "orm_insert",
        "INSERT INTO \"orders\" (\"customer_id\", \"total\", \"created_at\") VALUES ($1, $2, $3) RETURNING \"id\"",
    ),
    (
        "update",
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    ),
    (
        "report_join",
        "SELECT c.name, sum(o.total) AS revenue, count(*) FILTER (WHERE o.status = 'paid') \
         FROM customers c JOIN orders o ON o.customer_id = c.id \
         WHERE o.created_at >= now() - interval '30 days' GROUP BY c.name ORDER BY revenue DESC LIMIT 50",
    ),
];

fn policy() -> Policy<'static> {
    Policy {
        tenant_setting: "app.current_tenant",
        statement_timeout: None,
        session: false,
    }
}

const NAMES: &[&str] = &["pgbench_select", "orm_insert", "update", "report_join"];

fn sql(name: &str) -> &'static str {
    ORDINARY
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a named statement")
        .1
}

#[divan::bench(args = NAMES)]
fn scan_ordinary(bencher: divan::Bencher, name: &str) {
    let sql = sql(name);
    assert!(!may_change_session(sql.as_bytes()), "{name} is ordinary");
    bencher.bench(|| may_change_session(divan::black_box(sql.as_bytes())));
}

/// A session's memo against the same statement with other numbers in it, as
/// applications send it (pgbench's `SELECT` with its `aid`).
#[divan::bench]
fn memo_pgbench_select_other_numbers(bencher: divan::Bencher) {
    let mut memo = Memo::default();
    let texts: Vec<String> = (0..64)
        .map(|i| {
            format!(
                "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
                i * 7919
            )
        })
        .collect();
    let mut next = texts.iter().cycle();
    bencher.bench_local(|| {
        let sql = next.next().expect("cycles");
        memo.may_change_session(divan::black_box(sql.as_bytes()))
    });
}

/// pgbench's TPC-B-like transaction, statement after statement: each differs
/// from the one before in more than its numbers, so the memo misses every
/// time and costs its compare and copy on top of the scan.
const TPCB: &[&str] = &[
    "BEGIN;",
    "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 56789;",
    "SELECT abalance FROM pgbench_accounts WHERE aid = 56789;",
    "UPDATE pgbench_tellers SET tbalance = tbalance + -1234 WHERE tid = 7;",
    "UPDATE pgbench_branches SET bbalance = bbalance + -1234 WHERE bid = 1;",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 56789, -1234, CURRENT_TIMESTAMP);",
    "END;",
];

#[divan::bench]
fn memo_tpcb_statements(bencher: divan::Bencher) {
    let mut memo = Memo::default();
    let mut next = TPCB.iter().cycle();
    bencher.bench_local(|| {
        let sql = next.next().expect("cycles");
        memo.may_change_session(divan::black_box(sql.as_bytes()))
    });
}

#[divan::bench]
fn scan_tpcb_statements(bencher: divan::Bencher) {
    let mut next = TPCB.iter().cycle();
    bencher.bench_local(|| {
        let sql = next.next().expect("cycles");
        may_change_session(divan::black_box(sql.as_bytes()))
    });
}

#[divan::bench(args = NAMES)]
fn parse_ordinary(bencher: divan::Bencher, name: &str) {
    let sql = sql(name);
    let policy = policy();
    bencher.bench(|| {
        let mut custom = Vec::new();
        guard::classify(divan::black_box(sql), &policy, &mut custom)
    });
}

/// A flagged statement pays scan and parse; here, one the guard refuses.
#[divan::bench]
fn flagged_escape_attempt(bencher: divan::Bencher) {
    let policy = policy();
    let sql = "SELECT 1; SET LOCAL app.current_tenant = 'other'";
    bencher.bench(|| {
        let mut custom = Vec::new();
        may_change_session(sql.as_bytes()) && {
            guard::classify(divan::black_box(sql), &policy, &mut custom);
            true
        }
    });
}
