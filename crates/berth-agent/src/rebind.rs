//! A clone's new identity: fresh entropy for the kernel RNG (then a forced reseed) and
//! the host's wall clock. Everything here must happen before any container code runs.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

use berth_agent_proto::RebindSpec;

/// `_IOW('R', 0x03, int[2])`: add entropy and credit it (needs CAP_SYS_ADMIN).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the kernel's CRNG now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Applies `spec`; returns the names of the steps taken, in order.
pub fn rebind(spec: &RebindSpec) -> io::Result<Vec<String>> {
    let mut steps = Vec::new();
    if spec.entropy.len() < 32 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "at least 32 bytes of entropy are needed",
        ));
    }
    let random = OpenOptions::new().write(true).open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut request = Vec::with_capacity(8 + spec.entropy.len());
    request.extend_from_slice(&((spec.entropy.len() * 8) as i32).to_ne_bytes());
    request.extend_from_slice(&(spec.entropy.len() as i32).to_ne_bytes());
    request.extend_from_slice(&spec.entropy);
    request.resize(8 + spec.entropy.len().div_ceil(4) * 4, 0);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buf_size bytes follow its header;
    // `request` holds exactly that, 4-byte padded, and outlives the call.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, request.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    steps.push("entropy".to_owned());
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    steps.push("reseed".to_owned());
    let (seconds, nanos) = spec.realtime;
    let now = libc::timespec {
        tv_sec: seconds,
        tv_nsec: i64::from(nanos.min(999_999_999)),
    };
    // SAFETY: clock_settime reads a timespec that lives across the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &now) } < 0 {
        return Err(io::Error::last_os_error());
    }
    steps.push("clock".to_owned());
    Ok(steps)
}
