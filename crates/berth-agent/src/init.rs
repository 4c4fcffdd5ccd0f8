//! `docker run --init`: a minimal init as the container's PID 1, as Docker's docker-init
//! (tini) is.
//!
//! Contract: run as `berth-init PROGRAM [ARGS...]` (the agent's own binary under that
//! name, started as the container's first process with the container's identity,
//! environment and working directory). It starts PROGRAM (looked up in the container's
//! `PATH`) as its child, passes every signal it receives on to it (a PID 1 without
//! handlers would ignore them), reaps every orphan that the namespace hands it, and exits
//! with the child's status: its exit code, or 128 + the signal that killed it. A PROGRAM
//! that cannot be started is reported on stderr with exit code 127 (not found) or 126
//! (not executable), as Docker reports it.

use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// The name the agent's binary answers to as the container's init.
pub const HELPER_NAME: &str = berth_agent_proto::INIT_HELPER;

/// Signals init keeps for itself: the rest go to the child.
fn forwarded(signal: Signal) -> bool {
    !matches!(
        signal,
        Signal::SIGCHLD | Signal::SIGKILL | Signal::SIGSTOP | Signal::SIGTTIN | Signal::SIGTTOU
    )
}

pub fn main(args: &[String]) -> i32 {
    let Some(program) = args.get(1) else {
        eprintln!("{HELPER_NAME}: no program to run");
        return 125;
    };
    // Every signal waits for `sigwait` below (the agent starts this process with all of
    // them blocked already, so none is lost before this line); the child starts with
    // none blocked, as the standard library leaves it.
    let all = SigSet::all();
    if let Err(error) = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&all), None)
    {
        eprintln!("{HELPER_NAME}: blocking signals: {error}");
        return 125;
    }
    let mut command = Command::new(program);
    command.args(&args[2..]);
    // SAFETY: the hook runs in the child between fork and exec and only sets its signal
    // mask (sigprocmask is async-signal-safe).
    unsafe {
        command.pre_exec(|| {
            SigSet::empty()
                .thread_set_mask()
                .map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let child = match command.spawn() {
        Ok(child) => Pid::from_raw(child.id() as i32),
        Err(error) => {
            eprintln!("{HELPER_NAME}: exec {program} failed: {error}");
            return match error.raw_os_error() {
                Some(libc::ENOENT) => 127,
                _ => 126,
            };
        }
    };
    loop {
        let signal = match all.wait() {
            Ok(signal) => signal,
            Err(_) => continue,
        };
        if forwarded(signal) {
            let _ = nix::sys::signal::kill(child, signal);
            continue;
        }
        if signal != Signal::SIGCHLD {
            continue;
        }
        // Reap every child that has ended: orphans of the namespace end up here.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => return code,
                Ok(WaitStatus::Signaled(pid, signal, _)) if pid == child => {
                    return 128 + signal as i32
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_keeps_child_and_stop_signals_and_passes_on_the_rest() {
        assert!(forwarded(Signal::SIGTERM));
        assert!(forwarded(Signal::SIGINT));
        assert!(forwarded(Signal::SIGUSR1));
        assert!(!forwarded(Signal::SIGCHLD));
        assert!(!forwarded(Signal::SIGKILL));
    }
}
