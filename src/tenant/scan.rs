//! A cheap, conservative scan of client SQL for statements that may leave session
//! state behind (settings, roles, temp tables, LISTEN, cursors WITH HOLD, advisory
//! locks, DO blocks). A hit marks the server for `DISCARD ALL` before its next use.
//!
//! It errs towards hits: a false positive costs one extra reset, a false negative
//! could carry state to another tenant. Comments are skipped so they cannot hide a
//! statement's first word; string contents are scanned like code, which only adds
//! false positives. It is the escape guard's pre-filter too: whatever could change
//! the tenant context must be flagged, so that the parser sees it.

/// Words that change session state when they start a statement.
const LEADING: &[&[u8]] = &[
    b"set",
    b"reset",
    b"discard",
    b"deallocate",
    b"listen",
    b"prepare",
    b"declare",
    b"do",
    b"load",
    b"call",
    // ALTER ROLE/DATABASE/FUNCTION ... SET, CREATE FUNCTION ... SET or a body.
    b"alter",
    b"create",
];
/// Words that may change session state wherever they appear.
const ANYWHERE: &[&[u8]] = &[
    b"set_config",
    b"temp",
    b"temporary",
    b"authorization",
    b"hold",
    b"pg_settings",
];

/// Whether `sql` may change state that outlives its transaction.
pub fn may_change_session(sql: &[u8]) -> bool {
    let mut i = 0;
    let mut statement_start = true;
    while let Some(&c) = sql.get(i) {
        match CLASS[c as usize] {
            Class::Word => {
                let start = i;
                i += 1;
                while sql
                    .get(i)
                    .is_some_and(|&b| CLASS[b as usize] == Class::Word)
                {
                    i += 1;
                }
                let word = &sql[start..i];
                if listed(word, statement_start) || mentions_advisory(word) {
                    return true;
                }
                statement_start = false;
            }
            Class::Blank => i += 1,
            Class::Other => {
                statement_start = false;
                i += 1;
            }
            Class::Special => match c {
                b'-' if sql.get(i + 1) == Some(&b'-') => {
                    i = sql[i..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(sql.len(), |p| i + p);
                }
                b'/' if sql.get(i + 1) == Some(&b'*') => i = skip_block_comment(sql, i),
                // U&"..." and U&'...' spell names with escapes the scan cannot read.
                b'&' if i > 0 && sql[i - 1].eq_ignore_ascii_case(&b'u') => return true,
                b';' => {
                    statement_start = true;
                    i += 1;
                }
                _ => {
                    statement_start = false;
                    i += 1;
                }
            },
        }
    }
    false
}

/// Whether `word` is one of [`LEADING`] (counted only at a statement's start)
/// or [`ANYWHERE`].
fn listed(word: &[u8], statement_start: bool) -> bool {
    let any = |words: &[&[u8]]| words.iter().any(|w| word.eq_ignore_ascii_case(w));
    (statement_start && any(LEADING)) || any(ANYWHERE)
}

/// What a byte means to the scan: one table load per byte on the hot path
/// (the scan runs on every Query and Parse).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Letters, digits, `_` and non-ASCII.
    Word,
    /// Whitespace and `(`, which a statement's first word may follow.
    Blank,
    /// `-`, `/`, `&` and `;`, which may start a comment, a `U&` name or a statement.
    Special,
    Other,
}

const CLASS: [Class; 256] = {
    let mut table = [Class::Other; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = if c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 {
            Class::Word
        } else if c.is_ascii_whitespace() || c == b'(' {
            Class::Blank
        } else if matches!(c, b'-' | b'/' | b'&' | b';') {
            Class::Special
        } else {
            Class::Other
        };
        b += 1;
    }
    table
};

/// Block comments nest in PostgreSQL.
fn skip_block_comment(sql: &[u8], mut i: usize) -> usize {
    let mut depth = 0;
    while i < sql.len() {
        if sql[i] == b'/' && sql.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if sql[i] == b'*' && sql.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    i
}

/// Whether `word` contains "advisory", in any case. A window is tested at
/// its third letter first: `v` is rare in SQL words, where the first letter,
/// `a`, is common (pgbench's SELECT: about 65 instructions less a query).
fn mentions_advisory(word: &[u8]) -> bool {
    const NEEDLE: &[u8; 8] = b"advisory";
    word.windows(NEEDLE.len())
        .any(|w| w[2] | 0x20 == b'v' && w.eq_ignore_ascii_case(NEEDLE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_statements_are_clean() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 2",
            "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET x = 1",
            "BEGIN; SELECT 1; COMMIT",
            "select * from settings",
            "COPY t FROM STDIN",
        ] {
            assert!(!may_change_session(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn each_word_counts_where_it_should() {
        let leading =
            "set reset discard deallocate listen prepare declare do load call alter create";
        for word in leading.split_whitespace() {
            for spelled in [word.to_owned(), word.to_ascii_uppercase()] {
                assert!(
                    may_change_session(format!("{spelled} x").as_bytes()),
                    "{spelled}"
                );
                assert!(may_change_session(
                    format!("select 1; {spelled} x").as_bytes()
                ));
                assert!(!may_change_session(
                    format!("select {spelled} from t").as_bytes()
                ));
            }
        }
        let anywhere = "set_config temp temporary authorization hold pg_settings advisory \
                        pg_advisory_unlock_all xadvisoryx";
        for word in anywhere.split_whitespace() {
            for spelled in [word.to_owned(), word.to_ascii_uppercase()] {
                assert!(may_change_session(
                    format!("select {spelled}(1)").as_bytes()
                ));
            }
        }
        for near_miss in ["sets", "holds", "temps", "advisor", "pg_setting", "calls"] {
            assert!(!may_change_session(
                format!("select {near_miss}").as_bytes()
            ));
        }
    }

    #[test]
    fn session_changes_are_found_however_written() {
        for sql in [
            "SET work_mem = '1GB'",
            "  set SESSION app.current_tenant = 'b'",
            "SELECT 1; SET search_path = public",
            "/* hello */ SET ROLE admin",
            "/* a /* nested */ comment */ RESET ALL",
            "-- comment\nDISCARD ALL",
            "select pg_catalog.set_config('app.current_tenant', 'b', false)",
            "SELECT \"set_config\"('x', 'y', false)",
            "CREATE TEMP TABLE x (a int)",
            "create temporary table x (a int)",
            "LISTEN chan",
            "PREPARE p AS SELECT 1",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "SELECT pg_advisory_lock(1)",
            "DO $$ BEGIN PERFORM 1; END $$",
            "(SET x = 1)",
            "SET SESSION AUTHORIZATION bob",
            "SELECT PG_TRY_ADVISORY_XACT_LOCK(1)",
            "sElEcT 1; Listen x",
            "SELECT 1; \u{e9}t\u{e9}; SET x = 1",
            "UPDATE pg_settings SET setting = 'b' WHERE name = 'app.current_tenant'",
            "SELECT U&\"\\0073et_config\"('x', 'y', false)",
            "select u&'x'",
            "ALTER ROLE CURRENT_USER SET search_path = x",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET app.current_tenant = 'b' AS 'SELECT 1'",
        ] {
            assert!(may_change_session(sql.as_bytes()), "{sql}");
        }
    }

    /// The scan against the plainest reading of its rules, on statements
    /// built from the words and characters it cares about.
    fn reference(sql: &[u8]) -> bool {
        let word_byte = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80;
        let (mut i, mut start) = (0, true);
        while i < sql.len() {
            let c = sql[i];
            if word_byte(c) {
                let end = (i..sql.len())
                    .find(|&j| !word_byte(sql[j]))
                    .unwrap_or(sql.len());
                let word = String::from_utf8_lossy(&sql[i..end]).to_ascii_lowercase();
                let hit = |words: &[&[u8]]| words.contains(&word.as_bytes());
                if (start && hit(LEADING)) || hit(ANYWHERE) || word.contains("advisory") {
                    return true;
                }
                (i, start) = (end, false);
            } else if sql[i..].starts_with(b"--") {
                i = (i..sql.len())
                    .find(|&j| sql[j] == b'\n')
                    .unwrap_or(sql.len());
            } else if sql[i..].starts_with(b"/*") {
                // Nested, as PostgreSQL's are; unterminated runs to the end.
                let mut depth = 0;
                i = loop {
                    match &sql[i..] {
                        [b'/', b'*', ..] => (depth, i) = (depth + 1, i + 2),
                        [b'*', b'/', ..] if depth == 1 => break i + 2,
                        [b'*', b'/', ..] => (depth, i) = (depth - 1, i + 2),
                        [] => break i,
                        _ => i += 1,
                    }
                };
            } else if c == b'&' && i > 0 && sql[i - 1].eq_ignore_ascii_case(&b'u') {
                return true;
            } else {
                start = c == b';' || (start && (c.is_ascii_whitespace() || c == b'('));
                i += 1;
            }
        }
        false
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_the_plain_reading(parts in proptest::collection::vec(
            proptest::sample::select(vec![
                "SET", "set", "Reset", "do", "DO", "temp", "TEMPORARY", "hold", "Set_Config",
                "pg_settings", "authorization", "PG_ADVISORY_LOCK", "xadvisoryx", "advisor",
                "sets", "select", "abalance", "aid", "\u{e9}", "1", " ", "\t", "\n", "(", ")",
                ";", "-", "--", "/", "/*", "*/", "*", "&", "u", "U", "'", "\"", "=", ",", "$1",
            ]),
            0..24,
        )) {
            let sql = parts.concat();
            proptest::prop_assert_eq!(may_change_session(sql.as_bytes()), reference(sql.as_bytes()), "{:?}", sql);
        }
    }
}
