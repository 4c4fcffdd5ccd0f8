//! `docker top`: the processes of a container, from its agent, in the columns of `ps -ef`
//! (the default) or `ps aux`.

use std::sync::Arc;

use berth_agent_proto::{GuestMessage, HostMessage, ProcessInfo};

use crate::agent::AgentError;
use crate::container::ContainerStatus;
use crate::error::EngineError;
use crate::Engine;

/// `docker top`'s answer: column titles and rows.
pub type ProcessTable = (Vec<String>, Vec<Vec<String>>);

fn duration(ticks: u64, per_second: u64) -> String {
    let seconds = ticks / per_second.max(1);
    format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        (seconds / 60) % 60,
        seconds % 60
    )
}

fn start_time(process: &ProcessInfo, boot_time: i64, per_second: u64) -> String {
    let started = boot_time + (process.start_ticks / per_second.max(1)) as i64;
    chrono::DateTime::from_timestamp(started, 0)
        .map(|t| t.format("%H:%M").to_string())
        .unwrap_or_else(|| "?".into())
}

/// Formats the agent's list as `ps` would with `ps_args`.
pub fn format(
    ps_args: &str,
    processes: &[ProcessInfo],
    boot_time: i64,
    per_second: u64,
    mem_total_kib: u64,
) -> Result<ProcessTable, EngineError> {
    let titles = |names: &[&str]| names.iter().map(|s| (*s).to_owned()).collect();
    match ps_args.trim() {
        "" | "-ef" | "ef" | "-e -f" => Ok((
            titles(&["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]),
            processes
                .iter()
                .map(|p| {
                    vec![
                        p.user.clone(),
                        p.pid.to_string(),
                        p.ppid.to_string(),
                        "0".into(),
                        start_time(p, boot_time, per_second),
                        p.tty.clone(),
                        duration(p.cpu_ticks, per_second),
                        p.command.clone(),
                    ]
                })
                .collect(),
        )),
        "aux" | "-aux" => Ok((
            titles(&[
                "USER", "PID", "%CPU", "%MEM", "VSZ", "RSS", "TTY", "STAT", "START", "TIME",
                "COMMAND",
            ]),
            processes
                .iter()
                .map(|p| {
                    let memory = if mem_total_kib > 0 {
                        p.rss_kib as f64 * 100.0 / mem_total_kib as f64
                    } else {
                        0.0
                    };
                    vec![
                        p.user.clone(),
                        p.pid.to_string(),
                        "0.0".into(),
                        format!("{memory:.1}"),
                        p.vsz_kib.to_string(),
                        p.rss_kib.to_string(),
                        p.tty.clone(),
                        p.state.clone(),
                        start_time(p, boot_time, per_second),
                        duration(p.cpu_ticks, per_second),
                        p.command.clone(),
                    ]
                })
                .collect(),
        )),
        other => match other
            .strip_prefix("-o ")
            .or_else(|| other.strip_prefix("o "))
            .or_else(|| other.strip_prefix("-o"))
        {
            Some(list) => columns(list.trim(), processes, boot_time, per_second, mem_total_kib),
            None => Err(EngineError::NotSupported(format!(
                "ps options {other:?}: Berth's top shows the columns of `ps -ef` (the default), `ps aux`, or `ps -o FIELD,...`"
            ))),
        },
    }
}

/// `ps -o FIELD,...` with the fields ps knows that Berth can fill in.
fn columns(
    list: &str,
    processes: &[ProcessInfo],
    boot_time: i64,
    per_second: u64,
    mem_total_kib: u64,
) -> Result<ProcessTable, EngineError> {
    let fields: Vec<&str> = list
        .split([',', ' '])
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .collect();
    let title = |field: &str| -> Result<&'static str, EngineError> {
        Ok(match field {
            "pid" => "PID",
            "ppid" => "PPID",
            "uid" => "UID",
            "user" | "euser" => "USER",
            "comm" | "ucomm" => "COMMAND",
            "args" | "cmd" | "command" => "COMMAND",
            "stat" | "s" | "state" => "STAT",
            "rss" | "rssize" => "RSS",
            "vsz" | "vsize" => "VSZ",
            "time" | "cputime" => "TIME",
            "tty" | "tt" => "TT",
            "stime" | "start" => "STIME",
            "%mem" | "pmem" => "%MEM",
            "%cpu" | "pcpu" => "%CPU",
            other => {
                return Err(EngineError::NotSupported(format!(
                    "ps field {other:?}: Berth's top knows pid, ppid, uid, user, comm, args, stat, rss, vsz, time, tty, stime, %mem, %cpu"
                )))
            }
        })
    };
    let titles: Vec<String> = fields
        .iter()
        .map(|f| title(f).map(str::to_owned))
        .collect::<Result<_, _>>()?;
    if !fields.contains(&"pid") {
        return Err(EngineError::InvalidArgument(
            "Couldn't find PID field in ps output".into(),
        ));
    }
    let rows = processes
        .iter()
        .map(|p| {
            fields
                .iter()
                .map(|field| match *field {
                    "pid" => p.pid.to_string(),
                    "ppid" => p.ppid.to_string(),
                    "uid" => p.uid.to_string(),
                    "user" | "euser" => p.user.clone(),
                    "comm" | "ucomm" => p
                        .command
                        .split_whitespace()
                        .next()
                        .and_then(|c| c.rsplit('/').next())
                        .unwrap_or("")
                        .to_owned(),
                    "args" | "cmd" | "command" => p.command.clone(),
                    "stat" | "s" | "state" => p.state.clone(),
                    "rss" | "rssize" => p.rss_kib.to_string(),
                    "vsz" | "vsize" => p.vsz_kib.to_string(),
                    "time" | "cputime" => duration(p.cpu_ticks, per_second),
                    "tty" | "tt" => p.tty.clone(),
                    "stime" | "start" => start_time(p, boot_time, per_second),
                    "%mem" | "pmem" => format!(
                        "{:.1}",
                        if mem_total_kib > 0 {
                            p.rss_kib as f64 * 100.0 / mem_total_kib as f64
                        } else {
                            0.0
                        }
                    ),
                    _ => "0.0".to_owned(),
                })
                .collect()
        })
        .collect();
    Ok((titles, rows))
}

impl Engine {
    /// How many processes run in the container (`docker stats`' PIDS), as the agent
    /// counts them in the guest (every process but the agent and kernel threads);
    /// `None` when it is not running or its VM is paused (a paused guest answers
    /// nothing).
    pub async fn container_pids(self: &Arc<Self>, reference: &str) -> Option<u64> {
        let (handle, _) = self
            .running_handle(reference, ContainerStatus::can_exec)
            .ok()?;
        match self
            .agent_request(&handle, HostMessage::ListProcesses)
            .await
        {
            Ok(GuestMessage::Processes { processes, .. }) => Some(processes.len() as u64),
            _ => None,
        }
    }

    /// `GET /containers/{id}/top?ps_args=...`.
    pub async fn top_container(
        self: &Arc<Self>,
        reference: &str,
        ps_args: &str,
    ) -> Result<ProcessTable, EngineError> {
        // Check the options before asking the guest.
        format(ps_args, &[], 0, 100, 0)?;
        let (handle, _) = self.running_handle(reference, ContainerStatus::can_use_vm)?;
        match self
            .agent_request(&handle, HostMessage::ListProcesses)
            .await?
        {
            GuestMessage::Processes {
                processes,
                boot_time,
                ticks_per_second,
                mem_total_kib,
            } => format(
                ps_args,
                &processes,
                boot_time,
                ticks_per_second,
                mem_total_kib,
            ),
            other => Err(AgentError::unexpected("listing processes", &other).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_have_ps_columns() {
        let process = ProcessInfo {
            pid: 7,
            ppid: 1,
            uid: 0,
            user: "root".into(),
            state: "S".into(),
            tty: "?".into(),
            cpu_ticks: 6100,
            start_ticks: 0,
            vsz_kib: 1000,
            rss_kib: 500,
            command: "sleep 300".into(),
        };
        let (titles, rows) = format("", std::slice::from_ref(&process), 0, 100, 1000).unwrap();
        assert_eq!(titles[0], "UID");
        assert_eq!(
            rows[0],
            ["root", "7", "1", "0", "00:00", "?", "00:01:01", "sleep 300"]
        );
        let (titles, rows) = format("aux", std::slice::from_ref(&process), 0, 100, 1000).unwrap();
        assert_eq!(titles.len(), rows[0].len());
        assert_eq!(rows[0][3], "50.0");
        let (titles, rows) = format(
            "-o pid,comm,rss",
            std::slice::from_ref(&process),
            0,
            100,
            1000,
        )
        .unwrap();
        assert_eq!(titles, ["PID", "COMMAND", "RSS"]);
        assert_eq!(rows[0], ["7", "sleep", "500"]);
        assert!(format("-o comm", &[], 0, 100, 0).is_err(), "no PID column");
        assert!(format("-o pid,wchan", &[], 0, 100, 0).is_err());
        assert!(format("-x", &[], 0, 100, 0).is_err());
    }
}
