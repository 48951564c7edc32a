//! Raw form bodies and mutated client assertions through client authentication.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    harness::client_assertion(data);
});
