//! Arbitrary bytes into `FrameDecoder`, whole and in chunks.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    harness::frame_decoder(data);
});
