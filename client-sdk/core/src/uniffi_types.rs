//! How the SDK's own types cross UniFFI (feature `uniffi`, for
//! `doorstep-ffi`); the domain values are `doorstep_protocol::uniffi_types`.

use doorstep_protocol::uniffi_types::MemberKindSet;

// The set alias is implemented for the protocol crate's tag; the SDK's
// records that hold one lower it through this crate's tag.
uniffi::use_remote_type!(doorstep_protocol::MemberKindSet);

/// A count (documents, changes, bytes, an index); UniFFI has no `usize`.
pub type Count = usize;
uniffi::custom_type!(Count, u64, {
    remote,
    lower: |n| n as u64,
    try_lift: |n| Ok(usize::try_from(n)?),
});
