//! libFuzzer target: `berth_vmm::fuzzing::qcow2_image` (see that module for the input layout).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = berth_vmm::fuzzing::qcow2_image(data);
});
