//! The VMM process's system call filter, applied to every thread once the VM is built.
//!
//! Setting up (opening the kernel, disks, taps and /dev/kvm, creating the VM and vCPUs)
//! happens before the filter; what runs after it (vCPU loops, device workers, the agent
//! channel's reconnects, the control socket) needs only the calls below. `ioctl` is
//! limited to KVM's (type 0xae), `socket` to unix sockets and `setsockopt` to a socket's
//! receive and send timeouts (the control socket's clients); only a template's VMM may
//! open a file (its snapshot). Any other call kills the process: a VMM that was made to
//! do something else is ended, never allowed to.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::VmmError;

/// KVM's ioctl type byte (`KVMIO`), in bits 8-15 of the request number.
const KVM_IOCTL_TYPE: u64 = 0xae00;

/// Calls allowed with any arguments.
const ALLOWED: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_sched_getaffinity,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_tgkill,
    libc::SYS_getrandom,
    libc::SYS_restart_syscall,
];

fn condition(
    argument: u8,
    operator: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, VmmError> {
    SeccompCondition::new(argument, SeccompCmpArgLen::Qword, operator, value)
        .map_err(|e| VmmError::Seccomp(e.to_string()))
}

/// Calls a template VM needs besides, to write its snapshot file.
const SNAPSHOT_WRITING: &[libc::c_long] = &[libc::SYS_openat, libc::SYS_rename];

/// The filter as a BPF program; `writes_snapshots` for a template's VMM.
pub fn filter(writes_snapshots: bool) -> Result<BpfProgram, VmmError> {
    let extra: &[libc::c_long] = if writes_snapshots {
        SNAPSHOT_WRITING
    } else {
        &[]
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED
        .iter()
        .chain(extra)
        .map(|call| (*call, Vec::new()))
        .collect();
    let rule =
        |conditions| SeccompRule::new(conditions).map_err(|e| VmmError::Seccomp(e.to_string()));
    rules.insert(
        libc::SYS_ioctl,
        vec![rule(vec![condition(
            1,
            SeccompCmpOp::MaskedEq(0xff00),
            KVM_IOCTL_TYPE,
        )?])?],
    );
    rules.insert(
        libc::SYS_socket,
        vec![rule(vec![condition(
            0,
            SeccompCmpOp::Eq,
            libc::AF_UNIX as u64,
        )?])?],
    );
    // std's set_read_timeout and set_write_timeout, nothing else.
    let timeouts = [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO]
        .into_iter()
        .map(|option| {
            rule(vec![
                condition(1, SeccompCmpOp::Eq, libc::SOL_SOCKET as u64)?,
                condition(2, SeccompCmpOp::Eq, option as u64)?,
            ])
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_setsockopt, timeouts);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| VmmError::Seccomp(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| VmmError::Seccomp(e.to_string()))
}

/// Applies the filter to every thread of the process (and so to threads made later).
pub fn apply(writes_snapshots: bool) -> Result<(), VmmError> {
    let program = filter(writes_snapshots)?;
    seccompiler::apply_filter_all_threads(&program).map_err(|e| VmmError::Seccomp(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_and_kills_by_default() {
        let program = filter(false).unwrap();
        assert!(filter(true).unwrap().len() > program.len());
        assert!(program.len() > ALLOWED.len());
        // The last instruction of a seccompiler program returns the mismatch action.
        let last = program.last().unwrap();
        assert_eq!(last.k, libc::SECCOMP_RET_KILL_PROCESS);
    }

    /// Runs `calls` in a child under the filter, with a unix socket made before it;
    /// the child's wait status.
    fn status_of_a_filtered_child(calls: fn(&std::os::unix::net::UnixStream) -> i32) -> i32 {
        let (socket, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        // In a child, so that the test process keeps its freedom.
        // SAFETY: fork in a test; the child only applies the filter, makes system calls
        // and exits without returning into the test harness.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = match apply(false) {
                Ok(()) => calls(&socket),
                Err(_) => 2,
            };
            // SAFETY: leaves the child at once.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        status
    }

    #[test]
    fn socket_timeouts_may_be_set_and_nothing_else() {
        let status = status_of_a_filtered_child(|socket| {
            let second = Some(std::time::Duration::from_secs(1));
            match (
                socket.set_read_timeout(second),
                socket.set_write_timeout(second),
            ) {
                (Ok(()), Ok(())) => 0,
                _ => 4,
            }
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "status {status:#x}"
        );
        let status = status_of_a_filtered_child(|socket| {
            let one: libc::c_int = 1;
            // SAFETY: setsockopt on a socket the test owns, with a valid int option.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(socket),
                    libc::SOL_SOCKET,
                    libc::SO_KEEPALIVE,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            0
        });
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }

    #[test]
    fn a_filtered_child_dies_on_a_forbidden_call() {
        let status = status_of_a_filtered_child(|_| {
            // SAFETY: plain system calls; openat is not allowed and must kill the child.
            unsafe {
                libc::getpid();
                libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
            }
            0
        });
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}
