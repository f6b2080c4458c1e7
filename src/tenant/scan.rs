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

/// The last statement a session sent that the scan found clean, to pass
/// without a scan the next one that differs from it only in the digits of its
/// numbers: applications send the same statements over and over with other
/// literals in them (pgbench's `SELECT`: about 770 instructions scanned, 260
/// compared in the proxy).
///
/// Sound because no listed word, nor `advisory`, holds a digit, and digits
/// are word bytes: a run of digits swapped for another keeps every word
/// without digits as it was, every word with digits unlisted, and every
/// comment, `;` and `&` where it was. Only clean verdicts are kept; a
/// flagged statement goes to the parser each time.
#[derive(Debug, Default)]
pub struct Memo {
    clean: Vec<u8>,
}

/// Statements longer than this are not kept (an idle session holds at most
/// this much).
const MEMO_LIMIT: usize = 512;

impl Memo {
    /// [`may_change_session`], answered from the memo when it can be.
    pub fn may_change_session(&mut self, sql: &[u8]) -> bool {
        if !self.clean.is_empty() && same_but_digits(&self.clean, sql) {
            return false;
        }
        let changes = may_change_session(sql);
        if !changes && sql.len() <= MEMO_LIMIT {
            self.clean.clear();
            self.clean.extend_from_slice(sql);
        }
        changes
    }
}

/// Whether `a` and `b` are the same once every run of ASCII digits in each
/// is taken as one digit.
fn same_but_digits(a: &[u8], b: &[u8]) -> bool {
    let digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    let (mut i, mut j) = (0, 0);
    loop {
        let n = common_prefix(&a[i..], &b[j..]);
        (i, j) = (i + n, j + n);
        if i == a.len() && j == b.len() {
            return true;
        }
        // They differ here: only inside a run of digits in both, one that
        // began before (in the shared bytes) or begins here in both.
        if !((n > 0 && digit(a, i - 1)) || (digit(a, i) && digit(b, j))) {
            return false;
        }
        while digit(a, i) {
            i += 1;
        }
        while digit(b, j) {
            j += 1;
        }
    }
}

/// How many bytes `a` and `b` share at their start, compared eight at a time.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let mut n = 0;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let word = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("eight bytes"));
        let differ = word(x) ^ word(y);
        if differ != 0 {
            return n + (differ.trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    n + a[n..]
        .iter()
        .zip(&b[n..])
        .take_while(|(x, y)| x == y)
        .count()
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

    #[test]
    fn the_memo_passes_only_what_differs_in_digits() {
        let mut memo = Memo::default();
        let select = |aid: &str| format!("SELECT abalance FROM t WHERE aid = {aid};");
        assert!(!memo.may_change_session(select("1").as_bytes()));
        assert!(!memo.may_change_session(select("987654").as_bytes()));
        // Another word: scanned, and flagged.
        assert!(memo.may_change_session(b"SELECT pg_advisory_lock(1);"));
        // A flagged statement is not kept: the clean one still is.
        assert!(!memo.may_change_session(select("42").as_bytes()));
        // A run of digits that vanishes changes the words around it.
        assert!(!memo.may_change_session(b"SELECT temp1 FROM t"));
        assert!(memo.may_change_session(b"SELECT temp FROM t"));
        assert!(!memo.may_change_session(b"SELECT hold2 FROM t"));
        assert!(memo.may_change_session(b"SELECT hold FROM t"));
        // Too long to keep: scanned each time, and the memo keeps the last.
        let long = format!("SELECT {} FROM t WHERE aid = 1", "x, ".repeat(200));
        assert!(!memo.may_change_session(long.as_bytes()));
        assert!(memo.clean.len() <= MEMO_LIMIT);
        assert_eq!(memo.clean, b"SELECT hold2 FROM t");
    }

    #[test]
    fn no_listed_word_holds_a_digit() {
        // The memo's soundness rests on it.
        for word in LEADING.iter().chain(ANYWHERE).chain([&&b"advisory"[..]]) {
            assert!(!word.iter().any(u8::is_ascii_digit), "{word:?}");
        }
    }

    #[test]
    fn digit_runs_are_told_apart_from_other_differences() {
        for (a, b, same) in [
            ("a = 1", "a = 1", true),
            ("a = 1", "a = 23456789012", true),
            ("12345678901234567890", "9", true),
            ("t1 + 2", "t10 + 3", true),
            ("", "", true),
            ("a = 1", "a = x", false),
            ("a = 1", "a = ", false),
            ("a = ", "a = 1", false),
            ("a = 1", "a = 1 ", false),
            ("temp1", "temp", false),
            ("1a", "a", false),
            ("a 1 b", "a 1b", false),
            ("0123456789abcdefx", "0123456789abcdefy", false),
        ] {
            assert_eq!(
                same_but_digits(a.as_bytes(), b.as_bytes()),
                same,
                "{a:?} {b:?}"
            );
            assert_eq!(
                same_but_digits(b.as_bytes(), a.as_bytes()),
                same,
                "{b:?} {a:?}"
            );
        }
    }

    /// `sql` with every run of ASCII digits as one `0`.
    fn skeleton(sql: &[u8]) -> Vec<u8> {
        let mut out: Vec<u8> = Vec::new();
        for &b in sql {
            if !(b.is_ascii_digit() && out.last().is_some_and(u8::is_ascii_digit)) {
                out.push(if b.is_ascii_digit() { b'0' } else { b });
            }
        }
        out
    }

    /// Statement pieces the scan cares about, with `#` for a run of digits.
    fn pieces() -> impl proptest::strategy::Strategy<Value = Vec<&'static str>> {
        proptest::collection::vec(
            proptest::sample::select(vec![
                "SET",
                "set",
                "do",
                "temp",
                "TEMPORARY",
                "hold",
                "Set_Config",
                "pg_settings",
                "authorization",
                "PG_ADVISORY_LOCK",
                "xadvisoryx",
                "advisor",
                "select",
                "aid",
                "\u{e9}",
                "1",
                "#",
                "#",
                " ",
                "\n",
                "(",
                ";",
                "--",
                "/*",
                "*/",
                "&",
                "u",
                "'",
                "=",
                "$1",
            ]),
            0..24,
        )
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

        /// Statements alike but for their numbers get the scan's verdict of the
        /// first, so they must have the same verdict.
        #[test]
        fn numbers_never_change_the_verdict(
            parts in pieces(),
            fills in proptest::collection::vec((1u64.., 1u64..), 24),
        ) {
            let (mut a, mut b) = (String::new(), String::new());
            for (part, (x, y)) in parts.iter().zip(&fills) {
                if *part == "#" {
                    a += &x.to_string();
                    b += &y.to_string();
                } else {
                    a += part;
                    b += part;
                }
            }
            proptest::prop_assert!(same_but_digits(a.as_bytes(), b.as_bytes()), "{:?} {:?}", a, b);
            proptest::prop_assert_eq!(may_change_session(a.as_bytes()), may_change_session(b.as_bytes()), "{:?} {:?}", a, b);
            let mut memo = Memo::default();
            memo.may_change_session(a.as_bytes());
            proptest::prop_assert_eq!(memo.may_change_session(b.as_bytes()), may_change_session(b.as_bytes()));
        }

        #[test]
        fn digit_runs_compare_as_one_digit(a in pieces(), b in pieces()) {
            let (a, b) = (a.concat().replace('#', "7"), b.concat().replace('#', "42"));
            proptest::prop_assert_eq!(
                same_but_digits(a.as_bytes(), b.as_bytes()),
                skeleton(a.as_bytes()) == skeleton(b.as_bytes()),
                "{:?} {:?}", a, b
            );
        }
    }
}
