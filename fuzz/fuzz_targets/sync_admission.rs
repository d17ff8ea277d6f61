//! Sync-message admission with the production limits: no panic, and no
//! allocation past the bounds (run with `-rss_limit_mb=512`).
#![no_main]

use doorstep_protocol::admission::{AdmissionLimits, inspect_sync_message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|message: &[u8]| {
    let limits = AdmissionLimits::default();
    if let Ok(inspected) = inspect_sync_message(message, &limits) {
        assert!(inspected.ops <= limits.max_ops);
        assert!(inspected.inflated_bytes <= limits.max_inflated_bytes);
    }
});
