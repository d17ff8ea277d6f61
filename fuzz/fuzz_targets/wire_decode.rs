//! The CBOR message decoder: no panic, and whatever decodes re-encodes to
//! a frame that decodes to the same message.
#![no_main]

use doorstep_protocol::wire::{Limits, decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    if let Ok(message) = decode(frame, &Limits::default()) {
        let again = decode(&encode(&message), &Limits::default());
        assert_eq!(again.ok(), Some(message), "a decoded message does not round-trip");
    }
});
