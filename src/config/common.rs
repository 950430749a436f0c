//! What every section shares: the problem list, durations, secrets given by environment
//! variable or file, names.

use super::Problem;
use crate::secret::Secret;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every problem found so far, each with its key path; and warnings (deprecated names,
/// unsafe choices) that do not make the config invalid.
pub(crate) struct Problems {
    pub(crate) list: Vec<Problem>,
    pub(crate) warnings: Vec<Problem>,
}

impl Problems {
    pub(crate) fn new() -> Self {
        Problems {
            list: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub(crate) fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(crate) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// A mark to compare with after checking one part ([`Problems::since`]).
    pub(crate) fn mark(&self) -> usize {
        self.list.len()
    }

    /// Whether problems were added since `mark`.
    pub(crate) fn since(&self, mark: usize) -> bool {
        self.list.len() != mark
    }

    /// Decode one section of the tree, recording its problem (with the full key path) if any.
    pub(crate) fn decode<T: for<'de> Deserialize<'de>>(
        &mut self,
        prefix: &str,
        value: serde_json::Value,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let path = match (prefix.is_empty(), inner.as_str()) {
                    (_, ".") => prefix.to_string(),
                    (true, _) => inner,
                    (false, _) => format!("{prefix}.{inner}"),
                };
                self.add(path, e.into_inner().to_string());
                None
            }
        }
    }
}

/// A duration written like `30s`, `5m`, `60d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration with a unit, like 30s, 5m, 12h or 60d")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HumanDuration, E> {
                humantime::parse_duration(s.trim())
                    .map(HumanDuration)
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(s), &self))
            }
        }
        d.deserialize_str(V)
    }
}

/// Where a secret comes from: inline (only where the config allows it), an environment
/// variable or a file.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SecretRef<'a> {
    pub(crate) inline: Option<&'a str>,
    pub(crate) env: Option<&'a str>,
    pub(crate) file: Option<&'a Path>,
}

impl<'a> SecretRef<'a> {
    pub(crate) fn new(
        inline: Option<&'a str>,
        env: Option<&'a str>,
        file: Option<&'a PathBuf>,
    ) -> Self {
        SecretRef {
            inline,
            env,
            file: file.map(PathBuf::as_path),
        }
    }

    pub(crate) fn given(&self) -> bool {
        self.inline.is_some() || self.env.is_some() || self.file.is_some()
    }

    /// The secret named `key` (problems at `at.key_env`, `at.key_file`): exactly one way must
    /// be given.
    pub(crate) fn read(
        &self,
        at: &str,
        key: &str,
        env: &dyn Fn(&str) -> Option<String>,
        problems: &mut Problems,
    ) -> Option<Secret> {
        match (self.inline, self.env, self.file) {
            (Some(d), None, None) => Some(Secret::new(d)),
            (None, Some(var), None) => match env(var) {
                Some(v) if !v.trim().is_empty() => Some(Secret::new(v.trim())),
                _ => {
                    problems.add(
                        format!("{at}.{key}_env"),
                        format!("environment variable {var} is not set or empty"),
                    );
                    None
                }
            },
            (None, None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(v) if !v.trim().is_empty() => Some(Secret::new(v.trim())),
                Ok(_) => {
                    problems.add(
                        format!("{at}.{key}_file"),
                        format!("{} is empty", path.display()),
                    );
                    None
                }
                Err(e) => {
                    problems.add(
                        format!("{at}.{key}_file"),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            },
            (None, None, None) => {
                problems.add(
                    at,
                    format!("one of `{key}`, `{key}_env` or `{key}_file` is required"),
                );
                None
            }
            _ => {
                problems.add(
                    at,
                    format!("give only one of `{key}`, `{key}_env` and `{key}_file`"),
                );
                None
            }
        }
    }

    /// Like [`SecretRef::read`] when the secret is optional: `None` when none is given.
    pub(crate) fn read_optional(
        &self,
        at: &str,
        key: &str,
        env: &dyn Fn(&str) -> Option<String>,
        problems: &mut Problems,
    ) -> Option<Secret> {
        if self.given() {
            self.read(at, key, env, problems)
        } else {
            None
        }
    }
}

/// A source, event table or inlet name (the `source` label).
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

pub(crate) fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

/// `table` or `schema.table`, each part an SQL identifier (no quoting, no injection).
pub(crate) fn valid_table(t: &str) -> bool {
    let part = |p: &str| {
        let mut c = p.chars();
        matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
    };
    let parts: Vec<&str> = t.split('.').collect();
    parts.len() <= 2 && parts.iter().all(|p| part(p))
}

/// A column name: an SQL identifier without a schema.
pub(crate) fn valid_column(c: &str) -> bool {
    valid_table(c) && !c.contains('.')
}

/// A dotted path of keys (`token.expires_at`).
pub(crate) fn parse_path(p: &str) -> Option<Vec<String>> {
    let parts: Vec<String> = p.split('.').map(|s| s.trim().to_string()).collect();
    if parts.iter().any(|s| s.is_empty()) {
        None
    } else {
        Some(parts)
    }
}

/// A provider name as a `&'static str` (label values are static): each distinct name is
/// allocated once for the life of the process, however often configs are parsed.
pub(crate) fn intern(name: &str) -> &'static str {
    intern_within(name, usize::MAX).expect("no bound")
}

/// Like [`intern`] for names read from a store: `None` once `bound` distinct names exist and
/// this one is new, so a store cannot grow the process's memory without end.
pub(crate) fn intern_within(name: &str, bound: usize) -> Option<&'static str> {
    static NAMES: std::sync::Mutex<BTreeSet<&'static str>> = std::sync::Mutex::new(BTreeSet::new());
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = names.get(name) {
        return Some(n);
    }
    if names.len() >= bound {
        return None;
    }
    let n: &'static str = Box::leak(name.to_string().into_boxed_str());
    names.insert(n);
    Some(n)
}

pub(crate) fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// The poll schedule of a source or event table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub interval: Duration,
    /// Deadline for one poll.
    pub timeout: Duration,
    /// Longest wait between retries after failures.
    pub backoff_max: Duration,
}

impl Schedule {
    /// Wait before the next poll: the interval after a success; after consecutive failures the
    /// interval doubled per failure, up to `backoff_max`.
    pub fn next_delay(&self, ok: bool, failures: u32) -> Duration {
        if ok {
            return self.interval;
        }
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
        self.interval.saturating_mul(factor).min(self.backoff_max)
    }
}
