//! `docker top`: the container's processes, read from the guest's /proc (every process
//! but the agent and the kernel's threads).

use std::fs;

use berth_agent_proto::{GuestMessage, ProcessInfo};

/// At most this many processes are reported.
const MAX_PROCESSES: usize = 4096;

fn field(stat: &str, index: usize) -> Option<&str> {
    // Fields after the command name, which may hold spaces and parentheses.
    stat[stat.rfind(')')? + 2..].split_whitespace().nth(index)
}

fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn tty_name(tty_nr: u64) -> String {
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    match major {
        0 => "?".into(),
        136..=143 => format!("pts/{}", (major - 136) * 256 + minor),
        4 => format!("tty{minor}"),
        _ => "?".into(),
    }
}

/// uid -> name, from the container's /etc/passwd.
fn user_names() -> std::collections::HashMap<u32, String> {
    fs::read_to_string(format!("{}/etc/passwd", crate::boot::CONTAINER_ROOT))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let uid = fields.nth(1)?.parse().ok()?;
            Some((uid, name.chars().take(256).collect()))
        })
        .collect()
}

fn process(pid: i32) -> Option<ProcessInfo> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ppid: i32 = field(&stat, 1)?.parse().ok()?;
    // Kernel threads are kthreadd (2) and its children; the agent is 1.
    if pid == 1 || pid == 2 || ppid == 2 {
        return None;
    }
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let command = if cmdline.is_empty() {
        let name = &stat[stat.find('(')? + 1..stat.rfind(')')?];
        format!("[{name}]")
    } else {
        cmdline
            .split(|b| *b == 0)
            .filter(|part| !part.is_empty())
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let number = |index| {
        field(&stat, index)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(ProcessInfo {
        pid,
        ppid,
        uid,
        user: uid.to_string(),
        state: field(&stat, 0).unwrap_or("?").chars().take(1).collect(),
        tty: tty_name(number(4)),
        cpu_ticks: number(11) + number(12),
        start_ticks: number(19),
        vsz_kib: status_kib(&status, "VmSize:"),
        rss_kib: status_kib(&status, "VmRSS:"),
        command: command.chars().take(4096).collect(),
    })
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf takes a constant and no pointers.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

fn page_bytes() -> u64 {
    // SAFETY: sysconf takes a constant and no pointers.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// The container's processes.
pub fn list() -> GuestMessage {
    let mut processes: Vec<ProcessInfo> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(process)
        .take(MAX_PROCESSES)
        .collect();
    let names = user_names();
    for process in &mut processes {
        if let Some(name) = names.get(&process.uid) {
            process.user = name.clone();
        }
    }
    processes.sort_by_key(|p| p.pid);
    let proc_stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let boot_time = proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    GuestMessage::Processes {
        processes,
        boot_time,
        ticks_per_second: ticks_per_second(),
        mem_total_kib: status_kib(&meminfo, "MemTotal:"),
    }
}

/// What the processes of `container` use now (`ContainerUsage`): what its cgroup
/// counts, when it has one (`crate::cgroups`); else the living processes whose root
/// directory is the container's root, their CPU times and resident memory.
pub fn usage(container: Option<&str>) -> GuestMessage {
    if let Some(group) = crate::cgroups::usage(container) {
        return GuestMessage::ContainerUsage {
            processes: group.processes,
            user_ns: group.user_ns,
            system_ns: group.system_ns,
            rss_bytes: group.anon_bytes,
            memory: Some(group.memory),
        };
    }
    let root = crate::pod::root_of(container).ok();
    let ticks = ticks_per_second().max(1);
    let page_bytes = page_bytes();
    let (mut processes, mut user, mut system, mut rss) = (0u64, 0u64, 0u64, 0u64);
    for pid in fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .take(MAX_PROCESSES * 4)
    {
        let Some(root) = &root else { break };
        let in_container = fs::read_link(format!("/proc/{pid}/root"))
            .is_ok_and(|link| link.as_os_str() == root.as_str());
        if pid == 1 || !in_container {
            continue;
        }
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let number = |index| field(&stat, index).and_then(|v| v.parse::<u64>().ok());
        processes += 1;
        user += number(11).unwrap_or(0);
        system += number(12).unwrap_or(0);
        rss += number(21).unwrap_or(0) * page_bytes;
    }
    let to_ns = |ticks_used: u64| ticks_used.saturating_mul(1_000_000_000) / ticks;
    GuestMessage::ContainerUsage {
        processes,
        user_ns: to_ns(user),
        system_ns: to_ns(system),
        rss_bytes: rss,
        memory: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_ttys_parse() {
        let stat = "42 (my (odd) name) S 7 42 42 34816 42 4194560 100 0 0 0 15 5 0 0 20 0 1 0 1234 1000 200";
        assert_eq!(field(stat, 0), Some("S"));
        assert_eq!(field(stat, 1), Some("7"));
        assert_eq!(field(stat, 11), Some("15"));
        assert_eq!(field(stat, 19), Some("1234"));
        assert_eq!(tty_name(34816), "pts/0");
        assert_eq!(tty_name(0), "?");
        // This very process is listed (it is not PID 1 here).
        let me = process(std::process::id() as i32).expect("own process");
        assert!(
            me.command.contains("berth_agent") || me.command.contains("berth-agent"),
            "{}",
            me.command
        );
    }
}
