//! Small validated value types used by the config: durations and names.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_saphyr::{Location, Spanned};

/// A duration written with a unit: `250ms`, `5s`, `2m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("invalid duration \"{s}\": expected a number with a unit (ms, s, m, h)")
        })?;
        let ms = match unit.trim() {
            "ms" => n,
            "s" => n * 1000,
            "m" | "min" => n * 60_000,
            "h" => n * 3_600_000,
            _ => {
                return Err(format!(
                    "invalid duration \"{s}\": the unit must be ms, s, m or h"
                ));
            }
        };
        Ok(Dur(Duration::from_millis(ms)))
    }

    pub fn millis(self) -> u128 {
        self.0.as_millis()
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A map key or string remembered with where it was written, so validation errors
/// can point at it. Compared and ordered by value only.
#[derive(Clone)]
pub struct Name {
    pub value: String,
    pub at: Location,
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        let s = Spanned::<String>::deserialize(d)?;
        Ok(Name {
            value: s.value,
            at: s.referenced,
        })
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.value == other.value
    }
}
impl Eq for Name {}
impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Name) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Name {
    fn cmp(&self, other: &Name) -> std::cmp::Ordering {
        self.value.cmp(&other.value)
    }
}
impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}
impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

/// Tenant ids: they appear in user names, metrics labels and SQL literals.
pub fn is_tenant_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// PostgreSQL identifiers we accept for schemas and roles: lower-case, unquoted-safe.
pub fn is_identifier(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        && !s.starts_with("pg_")
}

/// A run-time parameter name: `work_mem` or a custom `app.current_tenant`.
pub fn is_setting_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.split('.').count() <= 2
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && (b[0].is_ascii_alphabetic() || b[0] == b'_')
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(Dur::parse("200ms").unwrap().millis(), 200);
        assert_eq!(Dur::parse("5s").unwrap().millis(), 5000);
        assert_eq!(Dur::parse("2m").unwrap().millis(), 120_000);
        for bad in ["5", "s", "5 days", "-1s", ""] {
            assert!(Dur::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn identifiers() {
        assert!(is_tenant_id("acme") && is_tenant_id("acme-2") && is_tenant_id("9lives"));
        assert!(
            !is_tenant_id("Acme")
                && !is_tenant_id("a.b")
                && !is_tenant_id("a'b")
                && !is_tenant_id("")
        );
        assert!(
            is_identifier("tenant_acme") && !is_identifier("pg_catalog") && !is_identifier("a-b")
        );
        assert!(!is_identifier("Acme") && !is_identifier("a\"b"));
        assert!(is_setting_name("app.current_tenant") && is_setting_name("work_mem"));
        assert!(!is_setting_name("a.b.c") && !is_setting_name("x;y") && !is_setting_name(""));
    }
}
