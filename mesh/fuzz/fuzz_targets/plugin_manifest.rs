//! Plugin manifests (JSON) through parsing, `check` and signature verification; mutations of a
//! signed manifest must be refused.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../plugin_harness.rs"]
mod plugin_harness;

fuzz_target!(|data: &[u8]| {
    plugin_harness::plugin_manifest(data);
});
