//! Storage chunks without a sync message around them (what an exported
//! file and the store hold), through the same admission: no panic, bounds
//! kept.
#![no_main]

use doorstep_protocol::admission::{AdmissionLimits, inspect_chunks};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|chunks: &[u8]| {
    let limits = AdmissionLimits::default();
    if let Ok(inspected) = inspect_chunks(chunks, &limits) {
        assert!(inspected.ops <= limits.max_ops);
        assert!(inspected.inflated_bytes <= limits.max_inflated_bytes);
    }
});
