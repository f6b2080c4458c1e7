//! What a statement flagged by [`super::scan`] does to session state, decided
//! with PostgreSQL's own parser (`pg_query`). Only flagged statements get here,
//! so ordinary queries never pay for a parse.
//!
//! First, the escape guard: nothing may change or wipe the tenant context
//! (the tenant setting, `search_path`, `role`, `session_authorization`),
//! wherever it sits in the statement: `SET`/`RESET` in any form, `RESET ALL`,
//! `set_config(...)` anywhere in the tree (a subquery, a CTE, a view, a rule),
//! `ALTER ROLE/DATABASE/FUNCTION ... SET`, `UPDATE pg_settings`, and code whose
//! effect the proxy cannot see (`DO` blocks and function bodies that mention
//! such a setting or run dynamic SQL). Those get `42501`.
//!
//! Under transaction pooling, session-level state either follows the client
//! (settings: learned after the transaction and re-applied on its next server)
//! or cannot (LISTEN, session advisory locks, `WITH HOLD` cursors, temporary
//! objects, SQL-level `PREPARE`): those are refused before they run, with a hint.

use std::time::Duration;

use pg_query::NodeEnum;
use pg_query::protobuf::a_const::Val;
use pg_query::protobuf::{DiscardMode, RangeVar, VariableSetKind, VariableSetStmt};

use crate::error::ClientError;

/// `DECLARE ... WITH HOLD` (`CURSOR_OPT_HOLD` in PostgreSQL's parsenodes.h).
const CURSOR_OPT_HOLD: i32 = 0x0020;

/// Session advisory locks outlive the transaction; the `_xact_` ones do not.
const SESSION_LOCKS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing outlives the transaction.
    Clean,
    /// Session settings may change: learn them after the transaction.
    Settings,
    /// Something the proxy cannot follow may change: reset the server after.
    Reset,
    Refuse(ClientError),
    /// `DEALLOCATE name` (`None`: `ALL`), alone: the proxy answers it.
    Deallocate(Option<String>),
    /// `DISCARD ALL`, alone: the proxy answers it.
    DiscardAll,
}

impl Verdict {
    /// The stronger of two verdicts.
    fn and(self, other: Verdict) -> Verdict {
        use Verdict::*;
        match (self, other) {
            (Refuse(e), _) | (_, Refuse(e)) => Refuse(e),
            (Reset, _) | (_, Reset) => Reset,
            (Settings, _) | (_, Settings) => Settings,
            (Clean, Clean) => Clean,
            // Only reached with other statements: see `classify`.
            _ => Refuse(ClientError::must_be_alone()),
        }
    }
}

/// Limits that apply to what a client may set (borrowed from the session for
/// each batch of messages, so it is never a second copy to keep in step).
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// The setting that carries the tenant id (`app.current_tenant`).
    pub tenant_setting: &'a str,
    /// The tier's `statement_timeout`; a client may lower it, not raise it.
    pub statement_timeout: Option<Duration>,
    /// The client holds its server for its whole connection (`pool_mode:
    /// session`): session-only features are allowed, and reset at release.
    pub session: bool,
}

impl Policy<'_> {
    /// A feature that needs the same server across transactions.
    fn session_only(&self, what: &str, hint: &str) -> Verdict {
        if self.session {
            Verdict::Reset
        } else {
            Verdict::Refuse(ClientError::session_only(what, hint))
        }
    }
}

/// Settings the proxy owns: a client can neither change nor wipe them.
pub fn protected(name: &str, tenant_setting: &str) -> bool {
    [
        "search_path",
        "role",
        "session_authorization",
        tenant_setting,
    ]
    .iter()
    .any(|p| name.eq_ignore_ascii_case(p))
}

/// Words that make a `DO` block or function body opaque to the guard: they
/// may change the context or build statements at run time.
const OPAQUE_WORDS: &[&str] = &[
    "set_config",
    "search_path",
    "role",
    "authorization",
    "session_authorization",
    "reset",
    "discard",
    "execute",
    "pg_settings",
];

/// Languages whose code the guard can read; others (`plperl`, `plpython`…)
/// can run statements it cannot see.
const READABLE_LANGUAGES: &[&str] = &["plpgsql", "sql"];

/// The first way `parsed` could change or wipe the tenant context, as an
/// error; else the names (literal, lowercased) its `set_config` calls set.
///
/// `pg_query`'s node walk does not reach every corner of the tree (function
/// and rule bodies, `DefElem` arguments), so what it misses is caught by a
/// backstop: every `set_config` name and every `SET` in the whole tree (its
/// debug rendering, which is complete) must have been checked here, or the
/// statement is refused.
fn inspect(parsed: &pg_query::ParseResult, policy: &Policy) -> Result<Vec<String>, ClientError> {
    use pg_query::NodeRef;
    let (mut set_config_names, mut sets) = (Vec::new(), 0);
    let mut check_set = |set: &VariableSetStmt| {
        sets += 1;
        if set.kind == VariableSetKind::VarResetAll as i32 {
            Err(ClientError::context_wipe("RESET ALL"))
        } else if protected(&set.name, policy.tenant_setting) {
            Err(ClientError::protected_setting(&set.name))
        } else {
            Ok(())
        }
    };
    for (node, ..) in parsed.protobuf.nodes() {
        let nested: Vec<&VariableSetStmt> = match node {
            NodeRef::VariableSetStmt(set) => vec![set],
            NodeRef::AlterRoleSetStmt(s) => s.setstmt.iter().collect(),
            NodeRef::AlterDatabaseSetStmt(s) => s.setstmt.iter().collect(),
            NodeRef::AlterSystemStmt(s) => s.setstmt.iter().collect(),
            NodeRef::AlterFunctionStmt(f) => set_options(&f.actions),
            NodeRef::CreateFunctionStmt(f) => set_options(&f.options),
            _ => Vec::new(),
        };
        nested.into_iter().try_for_each(&mut check_set)?;
        match node {
            NodeRef::FuncCall(call) if is_set_config(call) => {
                let name = match call.args.first().and_then(|a| a.node.as_ref()) {
                    Some(NodeEnum::AConst(c)) => match &c.val {
                        Some(Val::Sval(s)) => &s.sval,
                        _ => return Err(ClientError::context_wipe(COMPUTED)),
                    },
                    _ => return Err(ClientError::context_wipe(COMPUTED)),
                };
                if protected(name, policy.tenant_setting) {
                    return Err(ClientError::protected_setting(name));
                }
                set_config_names.push(name.to_ascii_lowercase());
            }
            NodeRef::UpdateStmt(u)
                if u.relation
                    .as_ref()
                    .is_some_and(|r| r.relname.eq_ignore_ascii_case("pg_settings")) =>
            {
                return Err(ClientError::context_wipe("UPDATE pg_settings"));
            }
            NodeRef::DoStmt(d) => opaque_code(&d.args, "plpgsql", policy)?,
            NodeRef::CreateFunctionStmt(f) => opaque_code(&f.options, "sql", policy)?,
            _ => {}
        }
    }
    let tree = format!("{:?}", parsed.protobuf).to_ascii_lowercase();
    if tree.matches("sval: \"set_config\"").count() > set_config_names.len()
        || tree.matches("variablesetstmt {").count() > sets
    {
        return Err(ClientError::context_wipe(
            "a setting change inside this statement",
        ));
    }
    Ok(set_config_names)
}

const COMPUTED: &str = "set_config without a literal setting name";

/// The `SET` clauses among a function's options (`SET x = y` / `RESET x`).
fn set_options(options: &[pg_query::protobuf::Node]) -> Vec<&VariableSetStmt> {
    options
        .iter()
        .filter_map(|o| match &o.node {
            Some(NodeEnum::DefElem(d)) => match d.arg.as_ref().and_then(|a| a.node.as_ref()) {
                Some(NodeEnum::VariableSetStmt(set)) => Some(set),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn is_set_config(call: &pg_query::protobuf::FuncCall) -> bool {
    call.funcname.last().is_some_and(|n| {
        matches!(&n.node, Some(NodeEnum::String(s)) if s.sval.eq_ignore_ascii_case("set_config"))
    })
}

/// A `DO` block's or function's code (`as` and `language` options) that the
/// guard cannot vouch for.
fn opaque_code(
    options: &[pg_query::protobuf::Node],
    default_language: &str,
    policy: &Policy,
) -> Result<(), ClientError> {
    let mut language = default_language.to_owned();
    let mut code = String::new();
    for option in options {
        let Some(NodeEnum::DefElem(d)) = &option.node else {
            continue;
        };
        let strings = d.arg.iter().flat_map(|a| match a.node.as_ref() {
            Some(NodeEnum::String(s)) => vec![s.sval.clone()],
            Some(NodeEnum::List(l)) => l
                .items
                .iter()
                .filter_map(|i| match &i.node {
                    Some(NodeEnum::String(s)) => Some(s.sval.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        });
        match d.defname.as_str() {
            "language" => language = strings.collect::<String>().to_ascii_lowercase(),
            "as" => code.extend(strings),
            _ => {}
        }
    }
    if !READABLE_LANGUAGES.contains(&language.as_str()) {
        return Err(ClientError::opaque_code(&format!("language {language}")));
    }
    let code = code.to_ascii_lowercase();
    let tenant_word = policy.tenant_setting.rsplit('.').next().unwrap_or_default();
    code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .find(|w| OPAQUE_WORDS.contains(w) || w.eq_ignore_ascii_case(tenant_word))
        .map_or(Ok(()), |w| Err(ClientError::opaque_code(w)))
}

/// Classifies `sql` (one `Query` or `Parse` text). Names of custom settings
/// (`app.feature_flag`) it may set are added to `custom`: PostgreSQL does not
/// list those in `pg_settings`, so the proxy asks for them by name.
pub fn classify(sql: &str, policy: &Policy, custom: &mut Vec<String>) -> Verdict {
    let Ok(parsed) = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) else {
        // PostgreSQL will reject it too; if it somehow runs, reset after.
        return Verdict::Reset;
    };
    let set_config_names = match inspect(&parsed, policy) {
        Ok(names) => names,
        Err(e) => return Verdict::Refuse(e),
    };
    let statements: Vec<&NodeEnum> = parsed
        .protobuf
        .stmts
        .iter()
        .filter_map(|raw| raw.stmt.as_ref().and_then(|s| s.node.as_ref()))
        .collect();
    if let [only] = statements[..] {
        match only {
            NodeEnum::DeallocateStmt(d) if d.isall => return Verdict::Deallocate(None),
            NodeEnum::DeallocateStmt(d) => return Verdict::Deallocate(Some(d.name.clone())),
            NodeEnum::DiscardStmt(d) if d.target == DiscardMode::DiscardAll as i32 => {
                return Verdict::DiscardAll;
            }
            _ => {}
        }
    }
    let mut verdict = Verdict::Clean;
    for node in statements {
        if let NodeEnum::VariableSetStmt(set) = node
            && set.name.contains('.')
        {
            custom.push(set.name.to_ascii_lowercase());
        }
        verdict = verdict.and(statement(node, policy));
    }
    for function in parsed.functions() {
        let name = function.rsplit('.').next().unwrap_or(&function);
        if SESSION_LOCKS.contains(&name) {
            verdict = verdict.and(policy.session_only(
                "session-level advisory locks",
                "Use pg_advisory_xact_lock(), released at the end of the transaction, or pool_mode: session.",
            ));
        }
    }
    if !set_config_names.is_empty() {
        custom.extend(set_config_names.into_iter().filter(|n| n.contains('.')));
        verdict = verdict.and(Verdict::Settings);
    }
    verdict
}

fn statement(node: &NodeEnum, policy: &Policy) -> Verdict {
    match node {
        NodeEnum::VariableSetStmt(set) => setting(set, policy),
        NodeEnum::DeallocateStmt(_) => Verdict::Refuse(ClientError::must_be_alone()),
        NodeEnum::DiscardStmt(d) if d.target == DiscardMode::DiscardAll as i32 => {
            Verdict::Refuse(ClientError::must_be_alone())
        }
        NodeEnum::ListenStmt(_) => policy.session_only(
            "LISTEN",
            "Notifications need a session of their own: use a tier or tenant with pool_mode: session.",
        ),
        NodeEnum::PrepareStmt(_) => policy.session_only(
            "SQL-level PREPARE",
            "Use your driver's prepared statements (protocol-level), which the proxy keeps per client.",
        ),
        NodeEnum::DeclareCursorStmt(c) if c.options & CURSOR_OPT_HOLD != 0 => policy.session_only(
            "cursors WITH HOLD",
            "Declare the cursor WITHOUT HOLD inside a transaction block, or use pool_mode: session.",
        ),
        NodeEnum::CreateStmt(c) if is_temp(c.relation.as_ref()) => temp_refused(policy),
        NodeEnum::CreateTableAsStmt(c) if is_temp(c.into.as_ref().and_then(|i| i.rel.as_ref())) => {
            temp_refused(policy)
        }
        NodeEnum::ViewStmt(v) if is_temp(v.view.as_ref()) => temp_refused(policy),
        NodeEnum::CreateSeqStmt(s) if is_temp(s.sequence.as_ref()) => temp_refused(policy),
        NodeEnum::SelectStmt(s) if is_temp(s.into_clause.as_ref().and_then(|i| i.rel.as_ref())) => {
            temp_refused(policy)
        }
        // Anything else the scan flagged (DO, CALL, DISCARD, LOAD, UNLISTEN…).
        NodeEnum::SelectStmt(_)
        | NodeEnum::InsertStmt(_)
        | NodeEnum::UpdateStmt(_)
        | NodeEnum::DeleteStmt(_)
        | NodeEnum::CreateStmt(_)
        | NodeEnum::CreateTableAsStmt(_)
        | NodeEnum::ViewStmt(_)
        | NodeEnum::CreateSeqStmt(_)
        | NodeEnum::DeclareCursorStmt(_)
        | NodeEnum::TransactionStmt(_)
        | NodeEnum::VariableShowStmt(_) => Verdict::Clean,
        _ => Verdict::Reset,
    }
}

fn setting(set: &pg_query::protobuf::VariableSetStmt, policy: &Policy) -> Verdict {
    if set.is_local {
        return Verdict::Clean;
    }
    let name = set.name.to_ascii_lowercase();
    match name.as_str() {
        "statement_timeout" if set.kind == VariableSetKind::VarSetValue as i32 => {
            if let Some(cap) = policy.statement_timeout {
                let wanted = set.args.first().and_then(|a| match &a.node {
                    Some(NodeEnum::AConst(c)) => match &c.val {
                        Some(Val::Ival(i)) => Some(i.ival.to_string()),
                        Some(Val::Sval(s)) => Some(s.sval.clone()),
                        Some(Val::Fval(f)) => Some(f.fval.clone()),
                        _ => None,
                    },
                    _ => None,
                });
                match wanted.as_deref().map(parse_timeout) {
                    Some(Some(ms)) if ms != 0 && ms <= cap.as_millis() => {}
                    _ => return Verdict::Refuse(ClientError::timeout_above_cap(cap)),
                }
            }
        }
        "statement_timeout" if policy.statement_timeout.is_some() => {
            // RESET or DEFAULT would lift the cap: the tier's value comes back
            // at the next checkout anyway, so refuse rather than run without it.
            return Verdict::Refuse(ClientError::timeout_above_cap(
                policy.statement_timeout.expect("checked"),
            ));
        }
        _ => {}
    }
    Verdict::Settings
}

/// `statement_timeout` text in milliseconds: a number (ms) or one with a unit.
pub fn parse_timeout(text: &str) -> Option<u128> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "ms" => 1.0,
        "us" => 0.001,
        "s" => 1000.0,
        "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return None,
    };
    Some((number * factor).ceil() as u128)
}

fn is_temp(rel: Option<&RangeVar>) -> bool {
    rel.is_some_and(|r| r.relpersistence == "t")
}

fn temp_refused(policy: &Policy) -> Verdict {
    policy.session_only(
        "temporary tables, views and sequences",
        "Use a regular table, or a tier or tenant with pool_mode: session.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy<'static> {
        Policy {
            tenant_setting: "app.current_tenant",
            statement_timeout: Some(Duration::from_secs(5)),
            session: false,
        }
    }

    fn code(sql: &str) -> &'static str {
        match classify(sql, &policy(), &mut Vec::new()) {
            Verdict::Refuse(e) => e.code,
            Verdict::Clean => "clean",
            Verdict::Settings => "settings",
            Verdict::Reset => "reset",
            Verdict::Deallocate(_) => "deallocate",
            Verdict::DiscardAll => "discard all",
        }
    }

    #[test]
    fn session_only_features_are_refused() {
        for sql in [
            "LISTEN jobs",
            "listen \"Jobs\"",
            "SELECT pg_advisory_lock(1)",
            "select pg_catalog.pg_try_advisory_lock(1, 2)",
            "SELECT 1; SELECT pg_advisory_lock_shared(7)",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "CREATE TEMP TABLE t (x int)",
            "create temporary table t as select 1",
            "SELECT 1 INTO TEMP t",
            "CREATE TEMP VIEW v AS SELECT 1",
            "CREATE TEMP SEQUENCE s",
            "PREPARE p AS SELECT 1",
        ] {
            assert_eq!(code(sql), "0A000", "{sql}");
            let session = Policy {
                session: true,
                ..policy()
            };
            assert_eq!(
                classify(sql, &session, &mut Vec::new()),
                Verdict::Reset,
                "{sql}"
            );
        }
    }

    #[test]
    fn what_ends_with_the_transaction_is_clean() {
        for sql in [
            "SELECT pg_advisory_xact_lock(1)",
            "DECLARE c CURSOR FOR SELECT 1",
            "SET LOCAL work_mem = '64MB'",
            "CREATE TABLE temp_results (x int)",
            "SELECT 'LISTEN x; SET a = 1'",
            "SHOW TimeZone",
        ] {
            assert_eq!(code(sql), "clean", "{sql}");
        }
    }

    #[test]
    fn settings_are_learned_and_the_rest_resets() {
        assert_eq!(code("SET TimeZone = 'UTC'"), "settings");
        assert_eq!(code("SET SESSION app.feature_flag TO 'on'"), "settings");
        assert_eq!(code("RESET DateStyle"), "settings");
        assert_eq!(code("SELECT set_config('a.b', 'c', false)"), "settings");
        assert_eq!(code("SET statement_timeout = 1000"), "settings");
        assert_eq!(code("SET statement_timeout = '2s'"), "settings");
        assert_eq!(code("DO $$ BEGIN PERFORM 1; END $$"), "reset");
        assert_eq!(code("DISCARD ALL"), "discard all");
        assert_eq!(code("discard temp"), "reset");
        assert_eq!(code("DEALLOCATE ALL"), "deallocate");
        assert_eq!(
            classify("DEALLOCATE PREPARE s1", &policy(), &mut Vec::new()),
            Verdict::Deallocate(Some("s1".into()))
        );
        assert_eq!(code("SELECT 1; DISCARD ALL"), "0A000");
        assert_eq!(code("DEALLOCATE s1; SELECT 1"), "0A000");
        assert_eq!(code("SELEC oops"), "reset");
    }

    #[test]
    fn custom_setting_names_are_collected() {
        let mut custom = Vec::new();
        classify(
            "SET app.Feature_Flag = 'on'; SELECT pg_catalog.set_config('app.other', 'x', false); SET TimeZone = 'UTC'",
            &policy(),
            &mut custom,
        );
        assert_eq!(custom, ["app.feature_flag", "app.other"]);
    }

    #[test]
    fn statement_timeout_cannot_go_above_the_cap() {
        for sql in [
            "SET statement_timeout = 6000",
            "SET statement_timeout = '1min'",
            "SET statement_timeout = 0",
            "SET statement_timeout TO DEFAULT",
            "RESET statement_timeout",
        ] {
            assert_eq!(code(sql), "42501", "{sql}");
        }
        let no_cap = Policy {
            statement_timeout: None,
            ..policy()
        };
        assert_eq!(
            classify("SET statement_timeout = 0", &no_cap, &mut Vec::new()),
            Verdict::Settings
        );
    }

    #[test]
    fn the_tenant_context_cannot_be_changed_or_wiped() {
        let missed = [
            "SET app.current_tenant = 'b'",
            "set APP.CURRENT_TENANT to 'b'",
            "SET \"app.current_tenant\" = 'b'",
            "SET app . current_tenant = 'b'",
            "SET LOCAL app.current_tenant = 'b'",
            "SET SESSION app.current_tenant = 'b'",
            "RESET app.current_tenant",
            "RESET ALL",
            "SET search_path = other, public",
            "SET SCHEMA 'other'",
            "SET ROLE postgres",
            "RESET ROLE",
            "SET ROLE NONE",
            "SET SESSION AUTHORIZATION postgres",
            "RESET SESSION AUTHORIZATION",
            "SELECT set_config('app.current_tenant', 'b', false)",
            "SELECT pg_catalog.set_config('App.Current_Tenant', 'b', true)",
            "SELECT \"set_config\"('role', 'postgres', false)",
            "SELECT U&\"\\0073et_config\"('search_path', 'x', false)",
            "SELECT set_config(current_setting('x.y'), 'b', false)",
            "SELECT set_config($1, $2, false)",
            "SELECT * FROM (SELECT set_config('app.current_tenant', 'b', false)) s",
            "WITH x AS (SELECT set_config('app.current_tenant', 'b', false)) SELECT * FROM x",
            "SELECT 1 WHERE set_config('app.current_tenant', 'b', false) IS NOT NULL",
            "EXPLAIN ANALYZE SELECT set_config('app.current_tenant', 'b', false)",
            "CREATE VIEW v AS SELECT set_config('app.current_tenant', 'b', false)",
            "UPDATE pg_settings SET setting = 'b' WHERE name = 'app.current_tenant'",
            "WITH u AS (UPDATE pg_catalog.pg_settings SET setting = 'b' RETURNING 1) SELECT 1",
            "ALTER ROLE CURRENT_USER SET app.current_tenant = 'b'",
            "ALTER DATABASE saas SET search_path = other",
            "ALTER ROLE CURRENT_USER RESET ALL",
            "ALTER FUNCTION f() SET app.current_tenant = 'b'",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET app.current_tenant = 'b' AS 'SELECT 1'",
            "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$ SELECT set_config('app.current_tenant', 'b', false) $$",
            "CREATE FUNCTION f() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT set_config('app.current_tenant', 'b', false); END",
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'SET ROLE postgres'; END $$",
            "CREATE FUNCTION f() RETURNS int LANGUAGE plperl AS 'return 1'",
            "DO $$ BEGIN PERFORM set_config('app.current_tenant', 'b', false); END $$",
            "DO $$ BEGIN SET app.current_tenant = 'b'; END $$",
            "DO $$ BEGIN EXECUTE 'SET app.' || 'current_tenant = ''b'''; END $$",
            "DO $$ BEGIN EXECUTE format('SE%s', 'T ROLE postgres'); END $$",
            "DO LANGUAGE plperl $$ spi_exec_query('x') $$",
            "SELECT 1; SET app.current_tenant = 'b'; SELECT 2",
            "CREATE RULE r AS ON INSERT TO t DO ALSO SELECT set_config('app.current_tenant', 'b', false)",
        ]
        .into_iter()
        .filter(|sql| code(sql) != "42501")
        .collect::<Vec<_>>();
        assert!(missed.is_empty(), "not refused: {missed:#?}");
        // Code that touches none of it runs.
        for sql in [
            "SELECT current_setting('app.current_tenant')",
            "SELECT set_config('app.feature_flag', 'on', false)",
            "SET TimeZone = 'UTC'",
            "DO $$ BEGIN PERFORM 1; END $$",
            "CREATE FUNCTION add1(int) RETURNS int LANGUAGE sql AS 'SELECT $1 + 1'",
            "SHOW search_path",
        ] {
            assert_ne!(code(sql), "42501", "{sql}");
        }
    }

    #[test]
    fn timeouts_parse_with_units() {
        assert_eq!(parse_timeout("1500"), Some(1500));
        assert_eq!(parse_timeout("2s"), Some(2000));
        assert_eq!(parse_timeout(" 1.5 min"), Some(90_000));
        assert_eq!(parse_timeout("3 parsecs"), None);
    }
}
