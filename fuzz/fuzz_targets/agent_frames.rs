//! libFuzzer target: `berth_agent_proto::fuzzing::guest_stream` (see that module for the
//! input layout): what a hostile guest's agent sends the host.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = berth_agent_proto::fuzzing::guest_stream(data);
});
