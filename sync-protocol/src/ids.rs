//! Identifiers, each parsed once at the edge into a newtype.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::values::Month;

/// The prefix automerge-repo puts in front of a document id to make a URL.
pub const AUTOMERGE_URL_PREFIX: &str = "automerge:";

/// Errors from parsing an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("document id is not valid base58check")]
    NotBase58Check,
    #[error("document id must be 16 bytes, got {0}")]
    WrongLength(usize),
    #[error("not a UUID: {0}")]
    NotUuid(String),
    #[error("peer id must be 1 to {max} characters")]
    BadPeerId { max: usize },
}

/// An automerge-repo document id: 16 bytes, written as base58check.
///
/// The text form is exactly automerge-repo's (`bs58check` over the raw bytes,
/// double-SHA-256 checksum), so ids move between stock JS clients and Rust.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocumentId([u8; 16]);

impl DocumentId {
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The roster document of a branch. Derived, so that any replica of the
    /// branch names it the same way without asking the server.
    pub fn roster(branch: TenantId) -> Self {
        Self::derive(&["roster", &branch.to_string()])
    }

    /// The log document of a branch for one month. Derived from (branch,
    /// month), so a device can open a month it has never seen while offline.
    pub fn monthly_log(branch: TenantId, month: Month) -> Self {
        Self::derive(&["log", &branch.to_string(), &month.to_string()])
    }

    fn derive(parts: &[&str]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"doorstep/document-id/v1");
        for part in parts {
            // Length-prefix every part so ("ab","c") and ("a","bc") differ.
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        let digest = hasher.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Self(bytes)
    }

    /// `automerge:<base58check>`, the form automerge-repo's `repo.find` takes.
    pub fn to_url(&self) -> String {
        format!("{AUTOMERGE_URL_PREFIX}{self}")
    }

    /// Parses either the bare base58check form or an `automerge:` URL.
    pub fn parse_url_or_id(s: &str) -> Result<Self, IdError> {
        s.strip_prefix(AUTOMERGE_URL_PREFIX).unwrap_or(s).parse()
    }
}

impl fmt::Display for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.0).with_check().into_string())
    }
}

impl fmt::Debug for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocumentId({self})")
    }
}

impl FromStr for DocumentId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // 16 bytes + 4 checksum bytes never need more than 28 base58 digits;
        // refuse longer input before decoding it.
        if s.is_empty() || s.len() > 40 {
            return Err(IdError::NotBase58Check);
        }
        let bytes = bs58::decode(s)
            .with_check(None)
            .into_vec()
            .map_err(|_| IdError::NotBase58Check)?;
        let len = bytes.len();
        let bytes: [u8; 16] = bytes.try_into().map_err(|_| IdError::WrongLength(len))?;
        Ok(Self(bytes))
    }
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
        pub struct $name(Uuid);

        impl $name {
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            /// A new time-ordered (v7) id.
            pub fn new_v7() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::try_parse(s)
                    .map(Self)
                    .map_err(|_| IdError::NotUuid(s.chars().take(64).collect()))
            }
        }
    };
}

uuid_id!(
    /// A district, sub-district or branch.
    TenantId
);
uuid_id!(
    /// An enrolled device (a volunteer's phone).
    DeviceId
);

macro_rules! wire_string_id {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
        pub struct $name(String);

        impl $name {
            /// The longest id accepted from the wire.
            pub const MAX_LEN: usize = $max;

            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                if s.is_empty() || s.len() > Self::MAX_LEN {
                    return Err(IdError::BadPeerId { max: Self::MAX_LEN });
                }
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

wire_string_id!(
    /// An automerge-repo peer id: ephemeral, one per running repo.
    PeerId,
    256
);
wire_string_id!(
    /// An automerge-repo storage id: stable per persistent store, so sync
    /// state saved under it is valid when the same store reconnects.
    StorageId,
    256
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_id_round_trips_through_base58check() {
        let id = DocumentId::from_bytes([7; 16]);
        let text = id.to_string();
        assert_eq!(text.parse::<DocumentId>(), Ok(id));
        assert_eq!(DocumentId::parse_url_or_id(&id.to_url()), Ok(id));
    }

    #[test]
    fn document_id_matches_automerge_repo_encoding() {
        // bs58check (double-SHA-256 checksum) as automerge-repo computes it,
        // for 16 zero bytes.
        let id = DocumentId::from_bytes([0; 16]);
        assert_eq!(id.to_string(), "11111111111111114Ki9Gx");
    }

    #[test]
    fn document_id_rejects_bad_checksum_and_length() {
        let mut text = DocumentId::from_bytes([9; 16]).to_string();
        text.replace_range(0..1, if text.starts_with('2') { "3" } else { "2" });
        assert_eq!(text.parse::<DocumentId>(), Err(IdError::NotBase58Check));
        let short = bs58::encode([1u8; 8]).with_check().into_string();
        assert_eq!(short.parse::<DocumentId>(), Err(IdError::WrongLength(8)));
        assert!("".parse::<DocumentId>().is_err());
        assert!("x".repeat(500).parse::<DocumentId>().is_err());
    }

    #[test]
    fn derived_ids_depend_on_branch_and_month() {
        let a = TenantId::from_uuid(Uuid::from_u128(1));
        let b = TenantId::from_uuid(Uuid::from_u128(2));
        let nov: Month = "2026-11".parse().expect("month");
        let dec: Month = "2026-12".parse().expect("month");
        assert_eq!(
            DocumentId::monthly_log(a, nov),
            DocumentId::monthly_log(a, nov)
        );
        assert_ne!(
            DocumentId::monthly_log(a, nov),
            DocumentId::monthly_log(a, dec)
        );
        assert_ne!(
            DocumentId::monthly_log(a, nov),
            DocumentId::monthly_log(b, nov)
        );
        assert_ne!(DocumentId::roster(a), DocumentId::roster(b));
    }

    #[test]
    fn peer_ids_are_bounded() {
        assert!(PeerId::new("").is_err());
        assert!(PeerId::new("p".repeat(257)).is_err());
        assert!(PeerId::new("peer-1").is_ok());
    }
}
