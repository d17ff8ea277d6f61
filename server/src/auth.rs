//! Secrets: device tokens, enrollment codes, login sessions and passwords.
//!
//! Tokens are 256 random bits shown once and stored only as SHA-256 (a
//! token is high-entropy, so a fast hash is enough and lets every request
//! look it up by index). Passwords, low-entropy, get argon2.

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A secret as handed to its holder, once.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// A fresh 256-bit token, hex-encoded.
    pub fn generate_token() -> Self {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        Secret(hex::encode(bytes))
    }

    /// A one-time enrollment code a person can type: 12 characters from an
    /// alphabet without look-alikes (about 60 bits, and codes expire).
    pub fn generate_code() -> Self {
        const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
        let mut bytes = [0u8; 12];
        OsRng.fill_bytes(&mut bytes);
        let code: String = bytes
            .iter()
            .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
            .collect();
        Secret(format!("{}-{}-{}", &code[0..4], &code[4..8], &code[8..12]))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> Vec<u8> {
        hash_secret(&self.0)
    }
}

/// The stored form of a token or code. Codes are compared without their
/// dashes and case, as a person may type them either way.
pub fn hash_secret(secret: &str) -> Vec<u8> {
    let normalised: String = secret
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    Sha256::digest(normalised.as_bytes()).to_vec()
}

/// Errors from password handling.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password must be at least 8 characters")]
    TooShort,
    #[error("password hashing failed: {0}")]
    Hash(String),
}

pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    if password.chars().count() < 8 {
        return Err(PasswordError::TooShort);
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

pub fn verify_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_bit_and_distinct() {
        let (a, b) = (Secret::generate_token(), Secret::generate_token());
        assert_eq!(a.expose().len(), 64);
        assert_ne!(a, b);
        assert_eq!(format!("{a:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn codes_hash_the_same_however_typed() {
        let code = Secret::generate_code();
        let typed = code.expose().replace('-', " ").to_lowercase();
        assert_eq!(hash_secret(&typed), code.hash());
    }

    #[test]
    fn passwords_verify() {
        let stored = hash_password("correct horse").expect("hash");
        assert!(verify_password("correct horse", &stored));
        assert!(!verify_password("wrong horse!", &stored));
        assert!(matches!(
            hash_password("short"),
            Err(PasswordError::TooShort)
        ));
    }
}
