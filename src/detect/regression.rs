//! Stored refresh-token regressions: a connection's stored refresh token goes back to a value
//! seen before (a worker wrote a stale token over the new one). Only keyed hashes of the token
//! are seen here (HMAC under a key made at random per process; see
//! [`crate::sources::mapping::token_hash`]), never the token.
//!
//! Memory bound: per connection that maps a `refresh_token` field, at most [`TOKEN_HISTORY`]
//! 64-bit hashes (about 140 bytes with the map entry); connections gone from the store are
//! dropped at the next poll, so it never exceeds the source's connections.

use std::collections::{HashMap, VecDeque};

/// Stored refresh-token values remembered per connection.
pub const TOKEN_HISTORY: usize = 8;

/// The recent stored refresh-token hashes of one source's connections.
#[derive(Debug, Default)]
pub struct TokenHistory {
    /// Connection id hash → token hashes, oldest first.
    history: HashMap<u64, VecDeque<u64>>,
}

impl TokenHistory {
    /// Observe one poll: `(id hash, token hash, connection)` per connection with a token (the
    /// connection as the caller wants it back); `present` says whether an id hash was seen by
    /// the poll. Returns the connections whose token went back to an earlier value.
    pub fn observe<C>(
        &mut self,
        tokens: Vec<(u64, u64, C)>,
        present: impl Fn(&u64) -> bool,
    ) -> Vec<C> {
        let mut reverted = Vec::new();
        if tokens.is_empty() {
            return reverted;
        }
        for (id, h, connection) in tokens {
            let history = self.history.entry(id).or_default();
            if history.back() == Some(&h) {
                continue;
            }
            if history.contains(&h) {
                reverted.push(connection);
            }
            history.push_back(h);
            if history.len() > TOKEN_HISTORY {
                history.pop_front();
            }
        }
        self.history.retain(|id, _| present(id));
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
        assert_eq!(h.history[&1].len(), TOKEN_HISTORY);
        // A connection gone from the store is forgotten.
        h.observe(vec![(2, 5, "c2")], |id| *id == 2);
        assert_eq!(h.len(), 1);
    }
}
