//! `berth lab -- COMMAND...`: run a command in the KVM lab (see `berth-lab`), against a
//! `berth daemon --backend kvm` started inside it.

use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct LabArgs {
    /// Berth's cache (guest kernel and initramfs).
    #[arg(long, default_value = "/var/cache/berth")]
    pub cache: PathBuf,
    /// The lab VM's memory in MiB.
    #[arg(long, default_value_t = 4096)]
    pub memory: u32,
    /// The lab VM's vCPUs.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Copy a host file into the lab: HOST_PATH:LAB_PATH (repeatable).
    #[arg(long = "file", value_parser = parse_file)]
    pub files: Vec<(PathBuf, String)>,
    /// Load this image archive (`docker save` format) into the lab's daemon (repeatable).
    #[arg(long = "image")]
    pub images: Vec<PathBuf>,
    /// Bring QEMU into the lab as well (to run `berth daemon --backend qemu` beside the
    /// built-in VMM, e.g. for `berth bench clone` of both).
    #[arg(long)]
    pub with_qemu: bool,
    /// Start no daemon in the lab.
    #[arg(long)]
    pub no_daemon: bool,
    /// An argument for the lab's `berth daemon` (repeatable; default: `--backend kvm`).
    #[arg(long = "daemon-arg", allow_hyphen_values = true)]
    pub daemon_args: Vec<String>,
    /// Give up (and kill the lab) after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// The QEMU binary that runs the lab (default: the one `scripts/setup.sh` unpacked
    /// under the cache, else the host's `qemu-system-x86_64`).
    #[arg(long)]
    pub qemu: Option<String>,
    /// Where the lab's run files go.
    #[arg(long, default_value = "/var/tmp/berth-lab")]
    pub work_dir: PathBuf,
    /// Keep the run's files (initramfs, console log) and say where.
    #[arg(long)]
    pub keep: bool,
    /// Print the lab kernel's console log after the command.
    #[arg(long)]
    pub console: bool,
    /// The command to run inside the lab, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

fn parse_file(text: &str) -> Result<(PathBuf, String), String> {
    let (host, inside) = text.split_once(':').ok_or("expected HOST_PATH:LAB_PATH")?;
    if !inside.starts_with('/') {
        return Err("the lab path must be absolute".into());
    }
    Ok((PathBuf::from(host), inside.to_owned()))
}

/// Runs the lab and exits with the command's status.
pub fn run(args: LabArgs) -> anyhow::Result<()> {
    let qemu_root = match args.qemu {
        Some(_) => None,
        None => berth_lab::cached_qemu(&args.cache),
    };
    let qemu = match (&args.qemu, &qemu_root) {
        (Some(qemu), _) => qemu.clone(),
        (None, Some(root)) => root.join(berth_lab::LAB_QEMU_BINARY).display().to_string(),
        (None, None) => {
            eprintln!(
                "berth lab: note: running on the host's QEMU; scripts/setup.sh unpacks the \
                 one the lab is tested on (the host's may hang the lab now and then)"
            );
            "qemu-system-x86_64".to_owned()
        }
    };
    let spec = berth_lab::LabSpec {
        cache: args.cache,
        memory_mib: args.memory,
        vcpus: args.cpus,
        files: args.files,
        images: args.images,
        with_qemu: args.with_qemu,
        daemon_args: (!args.no_daemon).then(|| {
            if args.daemon_args.is_empty() {
                vec!["--backend".to_owned(), "kvm".to_owned()]
            } else {
                args.daemon_args.clone()
            }
        }),
        command: args.command,
        timeout: Duration::from_secs(args.timeout),
        qemu,
        qemu_root,
        work_dir: args.work_dir,
        keep: args.keep,
    };
    let outcome = berth_lab::run(&spec, &|step| eprintln!("berth lab: {step}"))?;
    if outcome.command_hung {
        eprintln!("berth lab: {}; the lab's console:", berth_lab::COMMAND_HUNG);
    }
    if args.console || outcome.command_hung {
        eprintln!("{}", outcome.console);
    }
    eprintln!(
        "berth lab: exit status {} after {:.1} s",
        outcome.status,
        outcome.elapsed.as_secs_f64()
    );
    std::process::exit(outcome.status);
}
