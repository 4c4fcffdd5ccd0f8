//! libFuzzer target: `berth_vmm::fuzzing::balloon_queues` (see that module for the input
//! layout).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = berth_vmm::fuzzing::balloon_queues(data);
});
