//! A value that must never be printed: tokens, client secrets, DSN passwords, ingest keys.

use std::fmt;

/// Wraps a secret string. `Debug` and `Display` print `**REDACTED**`; the value is reachable
/// only through [`Secret::expose`], so every place that uses it is easy to find.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value. Call only where it is handed to a driver or compared.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

const REDACTED: &str = "**REDACTED**";

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact_the_value() {
        let s = Secret::new("postgres://app:hunter2@db/app");
        assert_eq!(format!("{s:?}"), "**REDACTED**");
        assert_eq!(format!("{s}"), "**REDACTED**");
        assert_eq!(format!("{:?}", Some(&s)), "Some(**REDACTED**)");
        assert_eq!(s.expose(), "postgres://app:hunter2@db/app");
    }
}
