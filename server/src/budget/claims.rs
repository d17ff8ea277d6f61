//! One use at a time of each one-time code.
//!
//! Activating an invitation hashes a password, which the password budget
//! bounds; but 400 concurrent calls with one valid code would each queue a
//! hash that only one of them can use. A use of a code claims it first;
//! a second use while the first is in progress is refused at once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The codes being used now. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct CodeClaims {
    in_use: Arc<Mutex<HashSet<Vec<u8>>>>,
}

/// A code in use; dropping it releases the code.
#[derive(Debug)]
pub struct CodeClaim {
    in_use: Arc<Mutex<HashSet<Vec<u8>>>>,
    code_hash: Vec<u8>,
}

impl Drop for CodeClaim {
    fn drop(&mut self) {
        if let Ok(mut in_use) = self.in_use.lock() {
            in_use.remove(&self.code_hash);
        }
    }
}

impl CodeClaims {
    /// Claims the code with this hash, or `None` if it is in use.
    pub fn claim(&self, code_hash: &[u8]) -> Option<CodeClaim> {
        let mut in_use = self.in_use.lock().ok()?;
        if !in_use.insert(code_hash.to_vec()) {
            return None;
        }
        Some(CodeClaim {
            in_use: self.in_use.clone(),
            code_hash: code_hash.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_claimed_once_at_a_time() {
        let claims = CodeClaims::default();
        let first = claims.claim(b"code").expect("free");
        assert!(claims.claim(b"code").is_none());
        assert!(claims.claim(b"other").is_some());
        drop(first);
        assert!(claims.claim(b"code").is_some());
    }
}
