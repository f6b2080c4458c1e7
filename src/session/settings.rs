//! Session settings that follow a client from server to server.
//!
//! A client's settings are what it asked for at startup (`application_name`,
//! `DateStyle`, `options=-c …`) plus what it has SET since, as the server
//! reported them after the transaction that set them. Each server records what
//! its last client left; on checkout the proxy writes the difference (after the
//! tenant context, in the same write), so a client sees only its own values and
//! never another client's.

use std::sync::{Arc, Mutex, Weak};

use postgres_protocol::escape::escape_literal;

use crate::config::values::is_setting_name;
use crate::error::ClientError;
use crate::tenant::guard::{Policy, parse_timeout, protected};

/// Setting name (lower case) → value, as `current_setting` shows it: a
/// vector sorted by name. A client has a handful of settings, and every
/// checkout compares its settings with its server's: two short vectors compare
/// in a few dozen instructions, two B-trees in about 120.
///
/// Shared, copied on write: a client's settings, the startup settings it goes
/// back to on `DISCARD ALL` and what its server is known to carry are mostly
/// the same, so each idle client keeps one copy, and recording them on a
/// server is a reference count, not a copy of every string. Empty is `None`:
/// a client without settings allocates nothing.
#[derive(Debug, Clone, Default)]
pub struct Settings(Option<Arc<Pairs>>);

type Pairs = Vec<(String, String)>;

impl PartialEq for Settings {
    fn eq(&self, other: &Settings) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) => true,
            _ => self.pairs() == other.pairs(),
        }
    }
}

impl Eq for Settings {}

impl Settings {
    pub fn new() -> Settings {
        Settings::default()
    }

    fn pairs(&self) -> &[(String, String)] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    /// The pairs to change, copied first if another holder shares them.
    fn pairs_mut(&mut self) -> &mut Vec<(String, String)> {
        Arc::make_mut(self.0.get_or_insert_default())
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.pairs().binary_search_by(|(n, _)| n.as_str().cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&String> {
        self.find(name).ok().map(|i| &self.pairs()[i].1)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Sets `name` to `value`, replacing what it had.
    pub fn insert(&mut self, name: String, value: String) {
        match self.find(&name) {
            Ok(i) if self.pairs()[i].1 == value => {}
            Ok(i) => self.pairs_mut()[i].1 = value,
            Err(i) => self.pairs_mut().insert(i, (name, value)),
        }
    }

    pub fn remove(&mut self, name: &str) {
        if let Ok(i) = self.find(name) {
            let pairs = self.pairs_mut();
            pairs.remove(i);
            if pairs.is_empty() {
                self.0 = None;
            }
        }
    }

    pub fn clear(&mut self) {
        self.0 = None;
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.pairs().iter().map(|(n, _)| n)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.pairs().iter().map(|(n, v)| (n, v))
    }
}

/// Later pairs win, as with repeated inserts.
impl FromIterator<(String, String)> for Settings {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Settings {
        let mut settings = Settings::new();
        for (name, value) in pairs {
            settings.insert(name, value);
        }
        settings
    }
}

/// Most custom settings (`app.*`) one client can have followed.
pub const MAX_CUSTOM: usize = 64;

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// The settings a client asks for in its startup packet, minus those equal to
/// what the server reports anyway (`baseline`).
pub fn from_startup(
    params: &[(String, String)],
    baseline: &[(String, String)],
    policy: &Policy,
) -> Result<Settings, ClientError> {
    let mut wanted: Vec<(String, String)> = Vec::new();
    for (name, value) in params {
        if NOT_SETTINGS.contains(&name.as_str()) {
            continue;
        }
        wanted.push((name.clone(), value.clone()));
    }
    if let Some((_, options)) = params.iter().find(|(n, _)| n == "options") {
        wanted.extend(parse_options(options)?);
    }
    let mut settings = Settings::new();
    for (name, value) in wanted {
        let name = name.to_ascii_lowercase();
        if !is_setting_name(&name) {
            return Err(ClientError::bad_startup_setting(
                &name,
                "is not a setting name",
            ));
        }
        if protected(&name, policy.tenant_setting) {
            return Err(ClientError::bad_startup_setting(
                &name,
                "is set by the proxy for your tenant",
            ));
        }
        if name == "statement_timeout"
            && let Some(cap) = policy.statement_timeout
            && !parse_timeout(&value).is_some_and(|ms| ms != 0 && ms <= cap.as_millis())
        {
            return Err(ClientError::timeout_above_cap(cap).fatal());
        }
        let same_as_server = baseline
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(&name) && v.eq_ignore_ascii_case(&value));
        if !same_as_server {
            settings.insert(name, value);
        }
    }
    Ok(interned(settings))
}

/// Most distinct startup settings kept for sharing (an application's
/// clients mostly log in alike; past this, clients keep their own copy).
const MAX_INTERNED: usize = 64;

/// The same settings as an earlier client's, if one that logged in alike is
/// still there: shared, a server's settings and the next client's are then
/// mostly one vector, and the comparison every checkout makes stops at the
/// pointers.
fn interned(settings: Settings) -> Settings {
    static SEEN: Mutex<Vec<Weak<Pairs>>> = Mutex::new(Vec::new());
    let Some(pairs) = &settings.0 else {
        return settings;
    };
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    seen.retain(|w| w.strong_count() > 0);
    if let Some(same) = seen.iter().filter_map(Weak::upgrade).find(|s| s == pairs) {
        return Settings(Some(same));
    }
    if seen.len() < MAX_INTERNED {
        seen.push(Arc::downgrade(pairs));
    }
    settings
}

/// `-c name=value` and `--name=value` words of the `options` parameter
/// (a backslash escapes the next character, as in libpq).
fn parse_options(options: &str) -> Result<Vec<(String, String)>, ClientError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut out = Vec::new();
    let mut words = words.into_iter();
    while let Some(w) = words.next() {
        let pair = if w == "-c" {
            words.next()
        } else if let Some(rest) = w.strip_prefix("--") {
            Some(rest.to_owned())
        } else {
            w.strip_prefix("-c").map(str::to_owned)
        };
        let Some((name, value)) = pair.as_deref().and_then(|p| p.split_once('=')) else {
            return Err(ClientError::bad_startup_setting(
                &w,
                "is not understood in options (use -c name=value)",
            ));
        };
        out.push((name.replace('-', "_"), value.to_owned()));
    }
    Ok(out)
}

/// SQL that takes a server from the settings its last client left (`server`)
/// to this client's, or `None` when they already match. `owned` are the
/// settings the tenant context sets, with their SQL values: a setting the
/// client does not have goes back to the context's value, not the default.
pub fn apply_sql(
    server: &Settings,
    client: &Settings,
    owned: &[(String, String)],
) -> Option<String> {
    // The common case on every checkout: one walk instead of a lookup per setting.
    if server == client {
        return None;
    }
    let mut set = Vec::new();
    let mut statements = Vec::new();
    for (name, value) in client.iter() {
        if server.get(name) != Some(value) {
            set.push(format!(
                "pg_catalog.set_config({}, {}, false)",
                escape_literal(name),
                escape_literal(value)
            ));
        }
    }
    for name in server.keys().filter(|n| !client.contains_key(n)) {
        match owned.iter().find(|(n, _)| n == name) {
            Some((_, value)) => statements.push(format!("SET {name} TO {value}")),
            None => statements.push(format!("RESET {name}")),
        }
    }
    if !set.is_empty() {
        statements.push(format!("SELECT {}", set.join(", ")));
    }
    (!statements.is_empty()).then(|| statements.join("; "))
}

/// The query that reads a server's session-level settings after a client's
/// transaction changed some. Custom settings are not in `pg_settings`, so they
/// are asked for by name.
pub fn learn_sql(custom: &[String]) -> String {
    let mut sql =
        "SELECT lower(name), setting FROM pg_catalog.pg_settings WHERE source = 'session'"
            .to_owned();
    if !custom.is_empty() {
        let names: Vec<String> = custom.iter().map(|n| escape_literal(n)).collect();
        sql.push_str(&format!(
            " UNION ALL SELECT n, pg_catalog.current_setting(n, true) FROM unnest(ARRAY[{}]::text[]) AS n",
            names.join(", ")
        ));
    }
    sql
}

/// The settings read by [`learn_sql`], minus what the proxy owns.
pub fn learned(rows: Vec<Vec<Option<String>>>, tenant_setting: &str) -> Settings {
    rows.into_iter()
        .filter_map(|row| {
            let mut row = row.into_iter();
            let name = row.next()??;
            let value = row.next()??;
            let keep = !protected(&name, tenant_setting)
                && is_setting_name(&name)
                && !(name.contains('.') && value.is_empty());
            keep.then_some((name, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn copies_share_until_one_changes() {
        let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
        let startup: Settings = [pair("application_name", "a"), pair("datestyle", "ISO")]
            .into_iter()
            .collect();
        let mut client = startup.clone();
        let server = client.clone();
        assert!(Arc::ptr_eq(
            client.0.as_ref().unwrap(),
            startup.0.as_ref().unwrap()
        ));
        // Setting a value a setting already has copies nothing.
        client.insert("datestyle".into(), "ISO".into());
        assert!(Arc::ptr_eq(
            client.0.as_ref().unwrap(),
            server.0.as_ref().unwrap()
        ));
        client.insert("datestyle".into(), "German".into());
        assert_eq!(client.get("datestyle").unwrap(), "German");
        assert_eq!(
            startup.get("datestyle").unwrap(),
            "ISO",
            "the others keep theirs"
        );
        assert_eq!(server, startup);
        assert_ne!(client, startup);
        // Emptied by removal or cleared: equal to a client that never had any.
        client.remove("datestyle");
        client.remove("application_name");
        assert_eq!(client, Settings::new());
        assert!(client.0.is_none(), "an empty set holds no allocation");
        let mut cleared = startup.clone();
        cleared.clear();
        assert_eq!(cleared, client);
        assert_eq!(startup.keys().count(), 2);
    }

    fn policy() -> Policy<'static> {
        Policy {
            tenant_setting: "app.current_tenant",
            statement_timeout: Some(Duration::from_secs(5)),
            session: false,
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn settings_are_a_map_whatever_the_order_they_came_in() {
        let mut a = Settings::new();
        a.insert("timezone".into(), "UTC".into());
        a.insert("application_name".into(), "one".into());
        a.insert("application_name".into(), "two".into());
        let b: Settings = pairs(&[("application_name", "two"), ("timezone", "UTC")])
            .into_iter()
            .collect();
        assert_eq!(a, b);
        assert_eq!(a.get("application_name").map(String::as_str), Some("two"));
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            ["application_name", "timezone"]
        );
        a.remove("timezone");
        a.remove("absent");
        assert!(!a.contains_key("timezone"));
        assert_ne!(a, b);
    }

    #[test]
    fn clients_that_log_in_alike_share_their_settings_until_one_changes() {
        let params = pairs(&[("application_name", "shared-by-two"), ("timezone", "UTC")]);
        let a = from_startup(&params, &[], &policy()).unwrap();
        let mut b = from_startup(&params, &[], &policy()).unwrap();
        let shared = |x: &Settings, y: &Settings| match (&x.0, &y.0) {
            (Some(x), Some(y)) => Arc::ptr_eq(x, y),
            _ => false,
        };
        assert!(shared(&a, &b), "one copy for both");
        let other = pairs(&[("application_name", "another")]);
        let c = from_startup(&other, &[], &policy()).unwrap();
        assert!(!shared(&a, &c));
        // A SET by one client is its own: copied on write.
        b.insert("timezone".into(), "Europe/Paris".into());
        assert!(!shared(&a, &b));
        assert_eq!(a.get("timezone").map(String::as_str), Some("UTC"));
        assert_ne!(a, b);
        // Once both are gone, the next client starts a copy of its own.
        let weak = a.0.as_ref().map(Arc::downgrade).unwrap();
        drop((a, b));
        assert_eq!(weak.strong_count(), 0);
        let d = from_startup(&params, &[], &policy()).unwrap();
        assert_eq!(d.get("timezone").map(String::as_str), Some("UTC"));
    }

    #[test]
    fn startup_settings_skip_what_the_server_has_and_refuse_what_the_proxy_owns() {
        let baseline = pairs(&[("client_encoding", "UTF8"), ("DateStyle", "ISO, MDY")]);
        let params = pairs(&[
            ("user", "app.acme"),
            ("database", "saas"),
            ("client_encoding", "utf8"),
            ("application_name", "billing"),
            ("DateStyle", "ISO, DMY"),
            (
                "options",
                "-c statement_timeout=2s --work-mem=64MB -capp.flag=on",
            ),
        ]);
        let s = from_startup(&params, &baseline, &policy()).unwrap();
        let expected: Settings = pairs(&[
            ("application_name", "billing"),
            ("datestyle", "ISO, DMY"),
            ("statement_timeout", "2s"),
            ("work_mem", "64MB"),
            ("app.flag", "on"),
        ])
        .into_iter()
        .collect();
        assert_eq!(s, expected);
        for options in [
            "-c search_path=other",
            "-c app.current_tenant=globex",
            "-c role=postgres",
            "-c statement_timeout=0",
            "-c x'; DROP TABLE t; --=1",
            "garbage",
        ] {
            let params = pairs(&[("options", options)]);
            assert!(
                from_startup(&params, &baseline, &policy()).is_err(),
                "{options}"
            );
        }
    }

    #[test]
    fn apply_sql_sets_what_differs_and_resets_what_the_client_lacks() {
        let server: Settings = pairs(&[
            ("timezone", "UTC"),
            ("statement_timeout", "100"),
            ("app.x", "1"),
        ])
        .into_iter()
        .collect();
        let client: Settings = pairs(&[("timezone", "Europe/Paris"), ("app.x", "1")])
            .into_iter()
            .collect();
        let owned = pairs(&[("statement_timeout", "5000")]);
        assert_eq!(
            apply_sql(&server, &client, &owned).unwrap(),
            "SET statement_timeout TO 5000; SELECT pg_catalog.set_config('timezone', 'Europe/Paris', false)"
        );
        assert_eq!(apply_sql(&client, &client, &owned), None);
        let quoted: Settings = pairs(&[("application_name", "it's")]).into_iter().collect();
        assert!(
            apply_sql(&Settings::new(), &quoted, &[])
                .unwrap()
                .contains("'it''s'")
        );
    }

    #[test]
    fn learned_settings_leave_out_the_proxys_own() {
        let rows = vec![
            vec![Some("search_path".into()), Some("x".into())],
            vec![Some("timezone".into()), Some("UTC".into())],
            vec![Some("app.current_tenant".into()), Some("acme".into())],
            vec![Some("app.flag".into()), Some("".into())],
            vec![Some("app.other".into()), None],
        ];
        let s = learned(rows, "app.current_tenant");
        assert_eq!(s, pairs(&[("timezone", "UTC")]).into_iter().collect());
        assert!(learn_sql(&["app.flag".into()]).contains("ARRAY['app.flag']"));
    }
}
