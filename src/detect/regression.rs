//! Stored refresh-token regressions: a connection's stored refresh token goes back to a value
//! seen before (a worker wrote a stale token over the new one). Only keyed hashes of the token
//! are seen here (HMAC under a key made at random per process; see
//! [`crate::sources::mapping::token_hash`]), never the token.
//!
//! Memory bound: per connection that maps a `refresh_token` field, at most [`TOKEN_HISTORY`]
//! 64-bit hashes in place (about 90 bytes with the map entry); connections gone from the store
//! are dropped at the next poll, so it never exceeds the source's connections.

use std::collections::HashMap;

/// Stored refresh-token values remembered per connection.
pub const TOKEN_HISTORY: usize = 8;

/// The last [`TOKEN_HISTORY`] token hashes of one connection, oldest first, in place.
#[derive(Debug, Default, Clone, Copy)]
struct Recent {
    hashes: [u64; TOKEN_HISTORY],
    len: u8,
}

impl Recent {
    fn as_slice(&self) -> &[u64] {
        &self.hashes[..self.len as usize]
    }

    fn push(&mut self, h: u64) {
        if self.len as usize == TOKEN_HISTORY {
            self.hashes.copy_within(1.., 0);
            self.hashes[TOKEN_HISTORY - 1] = h;
        } else {
            self.hashes[self.len as usize] = h;
            self.len += 1;
        }
    }
}

/// What a poll's stored token means for its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSeen {
    /// The same as at the last poll.
    Same,
    /// A value not seen before (a refresh).
    New,
    /// A value seen before but not the last: a stale token written back.
    Reverted,
}

/// The recent stored refresh-token hashes of one source's connections.
#[derive(Debug, Default)]
pub struct TokenHistory {
    /// Connection key → token hashes, oldest first.
    history: HashMap<u64, Recent>,
}

impl TokenHistory {
    /// What token hash `h` stored for connection `key` means, without recording it.
    pub fn classify(&self, key: u64, h: u64) -> TokenSeen {
        match self.history.get(&key) {
            Some(r) if r.as_slice().last() == Some(&h) => TokenSeen::Same,
            Some(r) if r.as_slice().contains(&h) => TokenSeen::Reverted,
            _ => TokenSeen::New,
        }
    }

    /// Record one poll that succeeded: the changed tokens (`(key, hash)`, in row order), and
    /// `present` saying whether a connection key was seen by the poll (the others are
    /// forgotten).
    pub fn record(&mut self, changed: Vec<(u64, u64)>, present: impl Fn(&u64) -> bool) {
        for (key, h) in changed {
            self.history.entry(key).or_default().push(h);
        }
        self.history.retain(|key, _| present(key));
    }

    /// Observe one poll at once (`(key, hash, connection)` per connection with a token):
    /// returns the connections whose token went back to an earlier value.
    pub fn observe<C>(
        &mut self,
        tokens: Vec<(u64, u64, C)>,
        present: impl Fn(&u64) -> bool,
    ) -> Vec<C> {
        let mut reverted = Vec::new();
        let mut changed = Vec::new();
        for (key, h, connection) in tokens {
            match self.classify(key, h) {
                TokenSeen::Same => {}
                TokenSeen::New => changed.push((key, h)),
                TokenSeen::Reverted => {
                    changed.push((key, h));
                    reverted.push(connection);
                }
            }
        }
        self.record(changed, present);
        reverted
    }

    /// Connections remembered (for tests of the bound).
    pub fn len(&self) -> usize {
        self.history.len()
    }

    pub fn is_empty(&self) -> bool {
        self.history.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_that_comes_back_is_a_regression_and_history_is_bounded() {
        let mut h = TokenHistory::default();
        let poll =
            |h: &mut TokenHistory, token: u64| h.observe(vec![(1, token, "c1")], |id| *id == 1);
        assert!(poll(&mut h, 10).is_empty());
        assert!(poll(&mut h, 10).is_empty(), "unchanged is not a regression");
        assert!(poll(&mut h, 11).is_empty());
        assert_eq!(poll(&mut h, 10), ["c1"], "went back to an older token");
        for t in 100..200 {
            poll(&mut h, t);
        }
        assert_eq!(h.history[&1].as_slice().len(), TOKEN_HISTORY);
        assert_eq!(h.history[&1].as_slice(), (192..200).collect::<Vec<u64>>());
        // A connection gone from the store is forgotten.
        h.observe(vec![(2, 5, "c2")], |id| *id == 2);
        assert_eq!(h.len(), 1);
    }
}
