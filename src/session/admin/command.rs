//! The admin console's commands, parsed from one statement of a simple query.

use crate::session::control::Target;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(Show),
    Reload,
    Pause(Target),
    Resume(Target),
    Drain(String),
    Kill(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Pools,
    Clients,
    Servers,
    Stats,
    Tenants,
    Tiers,
    Config,
    Version,
}

impl Command {
    /// Only `SHOW` is open to stats users.
    pub fn writes(&self) -> bool {
        !matches!(self, Command::Show(_))
    }

    /// Parses one statement (no trailing `;`); `None` if it is not a command.
    pub fn parse(text: &str) -> Option<Command> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
        let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
        let name = |w: &str| w.trim_matches('"').to_owned();
        Some(match upper.as_slice() {
            ["SHOW", what] => Command::Show(match *what {
                "POOLS" => Show::Pools,
                "CLIENTS" => Show::Clients,
                "SERVERS" => Show::Servers,
                "STATS" => Show::Stats,
                "TENANTS" => Show::Tenants,
                "TIERS" => Show::Tiers,
                "CONFIG" => Show::Config,
                "VERSION" => Show::Version,
                _ => return None,
            }),
            ["RELOAD"] => Command::Reload,
            ["PAUSE", rest @ ..] => Command::Pause(target(rest, &words[1..], name)?),
            ["RESUME", rest @ ..] => Command::Resume(target(rest, &words[1..], name)?),
            ["DRAIN", "TENANT", _] | ["DRAIN", _] => Command::Drain(name(words[words.len() - 1])),
            ["KILL", "TENANT", _] | ["KILL", _] => Command::Kill(name(words[words.len() - 1])),
            _ => return None,
        })
    }
}

fn target(upper: &[&str], words: &[&str], name: impl Fn(&str) -> String) -> Option<Target> {
    match upper {
        [] => Some(Target::All),
        ["TIER", _] => Some(Target::Tier(name(words[1]))),
        ["TENANT", _] => Some(Target::Tenant(name(words[1]))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_in_any_case_with_optional_targets() {
        let cases = [
            ("show pools", Some(Command::Show(Show::Pools))),
            ("SHOW  Clients", Some(Command::Show(Show::Clients))),
            ("show version", Some(Command::Show(Show::Version))),
            ("reload", Some(Command::Reload)),
            ("PAUSE", Some(Command::Pause(Target::All))),
            (
                "pause tier free",
                Some(Command::Pause(Target::Tier("free".into()))),
            ),
            (
                "pause tenant \"Acme\"",
                Some(Command::Pause(Target::Tenant("Acme".into()))),
            ),
            ("resume", Some(Command::Resume(Target::All))),
            (
                "resume tenant acme",
                Some(Command::Resume(Target::Tenant("acme".into()))),
            ),
            ("drain acme", Some(Command::Drain("acme".into()))),
            ("DRAIN TENANT acme", Some(Command::Drain("acme".into()))),
            ("kill acme", Some(Command::Kill("acme".into()))),
            ("show", None),
            ("show passwords", None),
            ("pause free", None),
            ("select 1", None),
            ("kill", None),
        ];
        for (text, want) in cases {
            assert_eq!(Command::parse(text), want, "{text}");
        }
        assert!(!Command::Show(Show::Pools).writes());
        assert!(Command::Kill("a".into()).writes());
    }
}
