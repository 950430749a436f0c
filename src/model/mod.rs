//! The model: what flows from the stores and inlets to the pipeline. Plain data and closed
//! enums, importing nothing of the exporter but the provider profiles.
//!
//! - [`snapshot`]: token state as exported, per source ([`SourceSnapshot`]);
//! - [`handle`]: a source's identity and latest snapshot ([`SourceHandle`]);
//! - [`reasons`]: why a row was rejected, why a poll failed, the store kinds;
//! - [`outcome`]: what an API answer means (401 reasons, 429 limits);
//! - [`event`]: the one [`Event`] type every inlet produces;
//! - [`error`]: why a poll failed, typed ([`CollectError`]).

/// Most a stored or reported time may lie ahead of the exporter's clock (clock skew between
/// hosts); later ones are refused, in rows and in every event inlet.
pub const MAX_CLOCK_SKEW_SECONDS: i64 = 300;

pub mod error;
pub mod event;
pub mod handle;
pub mod outcome;
pub mod reasons;
pub mod snapshot;

pub use error::{CollectError, CursorError, DocumentError};
pub use event::{Event, EventKind};
pub use handle::{SourceHandle, SourceSet};
pub use outcome::{ApiOutcome, RateLimitProblem, UnauthorizedReason};
pub use reasons::{RejectReason, SourceErrorReason, StoreKind};
pub use snapshot::{
    Accumulator, Aggregates, Connection, MappedConnection, ProviderState, SourceSnapshot, Status,
    Windows, EXPIRING_WINDOWS,
};

/// Longest label value exported from the store (connection and tenant ids, extra labels), in
/// bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 256;

/// [`label_value`] of text the caller may have owned already, as an owned `String` made at
/// most once.
pub fn label_string(s: std::borrow::Cow<'_, str>) -> String {
    if s.len() <= MAX_LABEL_VALUE_BYTES {
        s.into_owned()
    } else {
        label_value(&s).into_owned()
    }
}

/// An id or name taken from the store or a request, as exported. Quotes, backslashes and line
/// feeds stay as they are (the encoder escapes them); a value longer than
/// [`MAX_LABEL_VALUE_BYTES`] is cut at a character boundary and ends with `~` and 8 hex digits
/// of the SHA-256 of the whole value, so two long ids stay two series.
pub fn label_value(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= MAX_LABEL_VALUE_BYTES {
        return std::borrow::Cow::Borrowed(s);
    }
    use sha2::Digest;
    let digest = hex::encode(&sha2::Sha256::digest(s.as_bytes())[..4]);
    let mut end = MAX_LABEL_VALUE_BYTES - 1 - digest.len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}~{digest}", &s[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_label_values_are_cut_with_a_digest_and_stay_distinct() {
        assert_eq!(label_value("c1\"\n\\"), "c1\"\n\\");
        let a = "é".repeat(200) + "a";
        let b = "é".repeat(200) + "b";
        let (ca, cb) = (label_value(&a), label_value(&b));
        assert!(ca.len() <= MAX_LABEL_VALUE_BYTES && cb.len() <= MAX_LABEL_VALUE_BYTES);
        assert_ne!(ca, cb);
        assert!(ca.starts_with("éé") && ca.contains('~'));
        assert_eq!(
            label_value(&"x".repeat(MAX_LABEL_VALUE_BYTES)).len(),
            MAX_LABEL_VALUE_BYTES
        );
    }
}
