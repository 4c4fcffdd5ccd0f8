//! `berth-hold`: a build step's first process. It does nothing until SIGTERM, SIGINT,
//! SIGHUP or SIGQUIT ends it (exit status 0); the step's command runs beside it as an
//! exec, so the VM lives on after that command exits and its changes can be read.
//!
//! The agent starts it with every signal blocked; it takes them with `sigwait`, so none
//! has a default action (a PID 1 would ignore them anyway) and none is lost.

use nix::sys::signal::{SigSet, Signal};

/// The name the agent's binary answers to as a build step's first process.
pub const HELPER_NAME: &str = berth_agent_proto::HOLD_HELPER;

pub fn main() -> i32 {
    let all = SigSet::all();
    loop {
        match all.wait() {
            Ok(Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP | Signal::SIGQUIT) => return 0,
            Ok(_) => {}
            Err(error) => {
                eprintln!("{HELPER_NAME}: waiting for a signal: {error}");
                return 1;
            }
        }
    }
}
