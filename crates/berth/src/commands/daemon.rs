//! `berth daemon`: the engine behind the Docker API on a unix socket.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use berth_engine::{Engine, EngineConfig};
use berth_qemu::QemuBackend;
use berth_vm::VmBackend;

#[derive(clap::Args)]
pub struct DaemonArgs {
    /// Where state, images and container disks live.
    #[arg(long, default_value = "/var/lib/berth")]
    pub root: PathBuf,
    /// The Docker API socket.
    #[arg(long, default_value = "/run/berth/docker.sock")]
    pub socket: PathBuf,
    /// The group whose members may use the API socket, by name or number, as dockerd's
    /// `--group`: the socket is root's and this group's, mode 0660. When the default
    /// group `docker` does not exist, the socket is root's alone.
    #[arg(long, short = 'G', default_value = DEFAULT_SOCKET_GROUP)]
    pub group: String,
    /// More places to serve the API, as dockerd's `-H` (repeatable): `unix:///PATH`, or
    /// `tcp://ADDRESS:PORT`, with TLS under `--tls` or `--tlsverify`. Plain TCP is
    /// refused on any address but loopback unless `--insecure-tcp`. The `--socket` is
    /// served as well.
    #[arg(short = 'H', long = "host")]
    pub hosts: Vec<String>,
    /// Serve `-H tcp://` with TLS, with the certificate and key of `--tlscert` and
    /// `--tlskey` (clients are not asked for a certificate).
    #[arg(long)]
    pub tls: bool,
    /// Serve `-H tcp://` with TLS and accept only clients whose certificate chains to
    /// `--tlscacert` (mutual TLS, as dockerd's `--tlsverify`).
    #[arg(long)]
    pub tlsverify: bool,
    /// CA certificates (PEM) that clients' certificates must chain to.
    #[arg(long)]
    pub tlscacert: Option<PathBuf>,
    /// The server's certificate chain (PEM).
    #[arg(long)]
    pub tlscert: Option<PathBuf>,
    /// The server's private key (PEM).
    #[arg(long)]
    pub tlskey: Option<PathBuf>,
    /// Serve plain TCP on a non-loopback address anyway: anyone who reaches it is root
    /// on this host.
    #[arg(long)]
    pub insecure_tcp: bool,
    /// Serve the web console of container VMs and Prometheus metrics (`/metrics`) on
    /// this address (e.g. 127.0.0.1:9323): with TLS when --tlscert and --tlskey are
    /// given (and sign-in by a client certificate of --tlscacert), else plain HTTP on a
    /// loopback address only. Off by default
    #[arg(long, value_name = "ADDRESS:PORT")]
    pub console: Option<std::net::SocketAddr>,
    /// The console's sign-in token (its first line). Without it, the daemon makes one and
    /// writes it to <exec-root>/console-token (mode 0600)
    #[arg(long, value_name = "FILE")]
    pub console_token_file: Option<PathBuf>,
    /// Runtime files of running VMs (sockets, console logs).
    #[arg(long, default_value = "/run/berth")]
    pub exec_root: PathBuf,
    /// Cache for the guest kernel and initramfs (shared by daemons with other roots).
    #[arg(long, default_value = "/var/cache/berth")]
    pub cache: PathBuf,
    /// VM memory (MiB) for containers started without --memory.
    #[arg(long, default_value_t = 256)]
    pub memory: u32,
    /// VMs to keep restored ahead of demand, per VM shape in use: a container's start
    /// claims one instead of restoring its clone then, and another is restored in the
    /// background. Each costs an idle clone's memory. 0 turns this off
    #[arg(long = "spare-vms", default_value_t = 0)]
    pub spare_vms: usize,
    /// The QEMU system emulator to run VMs with.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// Which VMM runs container VMs: `kvm` (Berth's own, needs hardware
    /// virtualization), `qemu` (KVM where hardware virtualization works, software
    /// emulation otherwise), or `auto` (`kvm` where hardware virtualization works,
    /// else `qemu`).
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Boot container VMs with this kernel (a bzImage) instead of Debian's cloud kernel,
    /// e.g. a PVM-ready one on a PVM host.
    #[arg(long)]
    pub guest_kernel: Option<PathBuf>,
    /// The modules directory of `--guest-kernel` (where its virtio drivers are); leave
    /// it out when they are built in.
    #[arg(long, requires = "guest_kernel")]
    pub guest_modules: Option<PathBuf>,
    /// The network namespace (an `ip netns` name) that holds container networks: their
    /// bridges, taps, DNS servers and addresses never appear on the host's interfaces.
    /// Created if missing.
    #[arg(long, default_value = "berth")]
    pub netns: String,
    /// Let containers reach the outside world: a veth pair from the namespace to the
    /// host, masqueraded twice (in the namespace, then on the host, whose IP forwarding
    /// this turns on). Off by default: containers then reach only each other, Berth's
    /// DNS, and what publishes ports to them.
    #[arg(long)]
    pub outbound_nat: bool,
    /// The /30 link subnet between the host and the namespace for --outbound-nat.
    #[arg(long, default_value = "169.254.123.0/30")]
    pub nat_link: berth_net::Subnet,
    /// A resolver (IP or IP:PORT; repeatable) that Berth's DNS servers forward names
    /// they do not know to, as dockerd's `--dns`. Default: the host's /etc/resolv.conf.
    #[arg(long = "dns", value_parser = parse_resolver)]
    pub dns: Vec<std::net::SocketAddr>,
    /// A configuration file in the format of Docker's daemon.json; Berth applies its
    /// `registry-mirrors`, `insecure-registries` and `dns` keys.
    #[arg(long = "config-file", visible_alias = "config")]
    pub config_file: Option<PathBuf>,
    /// A registry mirror URL for Docker Hub names (repeatable), tried before Docker Hub.
    #[arg(long = "registry-mirror")]
    pub registry_mirrors: Vec<String>,
    /// A registry (host[:port] or CIDR; repeatable) spoken to over plain HTTP.
    /// Registries on 127.0.0.0/8 always are.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
}

/// One `-H` place.
enum Host {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

/// The `-H` places, checked against the TLS flags; and the TLS configuration if any.
fn hosts(args: &DaemonArgs) -> anyhow::Result<(Vec<Host>, Option<Arc<rustls::ServerConfig>>)> {
    let mut hosts = Vec::new();
    for text in &args.hosts {
        let host = if let Some(path) = text.strip_prefix("unix://") {
            Host::Unix(PathBuf::from(path))
        } else if let Some(address) = text.strip_prefix("tcp://") {
            let address = address.trim_end_matches('/');
            let address = std::net::ToSocketAddrs::to_socket_addrs(address)
                .ok()
                .and_then(|mut found| found.next())
                .with_context(|| {
                    format!(
                        "-H {text}: a TCP host is tcp://ADDRESS:PORT, e.g. tcp://127.0.0.1:2376"
                    )
                })?;
            Host::Tcp(address)
        } else {
            anyhow::bail!("-H {text}: Berth serves unix:///PATH and tcp://ADDRESS:PORT");
        };
        hosts.push(host);
    }
    let tls = args.tls || args.tlsverify;
    let tcp: Vec<_> = hosts
        .iter()
        .filter_map(|host| match host {
            Host::Tcp(address) => Some(*address),
            Host::Unix(_) => None,
        })
        .collect();
    if !tls {
        if let Some(open) = tcp.iter().find(|address| !address.ip().is_loopback()) {
            if !args.insecure_tcp {
                anyhow::bail!(
                    "-H tcp://{open} without TLS gives root on this host to anyone who can reach it: use --tlsverify with --tlscacert, --tlscert and --tlskey, serve 127.0.0.1, or pass --insecure-tcp to do it anyway"
                );
            }
            tracing::warn!(address = %open, "serving the Docker API over plain TCP: anyone who reaches it is root on this host");
        }
        return Ok((hosts, None));
    }
    let (Some(cert), Some(key)) = (args.tlscert.clone(), args.tlskey.clone()) else {
        anyhow::bail!("--tls and --tlsverify need --tlscert and --tlskey (PEM files)");
    };
    if args.tlsverify && args.tlscacert.is_none() {
        anyhow::bail!("--tlsverify needs --tlscacert: the CA that clients' certificates chain to");
    }
    let files = berth_api::TlsFiles {
        cert,
        key,
        client_ca: args.tlsverify.then(|| args.tlscacert.clone()).flatten(),
        client_certificate_optional: false,
    };
    let config = berth_api::tls_config(&files).context("setting up TLS for -H tcp://")?;
    Ok((hosts, Some(config)))
}

/// The console's listener (bound now, so that an address in use stops the start) and
/// configuration: TLS from the daemon's certificate, client certificates of its CA
/// asked for but not required, and the sign-in token.
async fn console_setup(
    args: &DaemonArgs,
    address: std::net::SocketAddr,
) -> anyhow::Result<(tokio::net::TcpListener, berth_console::ConsoleConfig)> {
    let tls = match (args.tlscert.clone(), args.tlskey.clone()) {
        (Some(cert), Some(key)) => Some(
            berth_api::tls_config(&berth_api::TlsFiles {
                cert,
                key,
                client_ca: args.tlscacert.clone(),
                client_certificate_optional: true,
            })
            .context("setting up TLS for the console")?,
        ),
        _ if address.ip().is_loopback() => None,
        _ => anyhow::bail!(
            "--console {address}: serving the console beyond loopback needs TLS: give --tlscert and --tlskey (and --tlscacert to sign in with client certificates)"
        ),
    };
    let token = match &args.console_token_file {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("reading the console token from {}", file.display()))?
            .lines()
            .next()
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .with_context(|| format!("{} holds no token on its first line", file.display()))?
            .to_owned(),
        None => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let token = berth_console::auth::new_token();
            let path = args.exec_root.join("console-token");
            std::fs::create_dir_all(&args.exec_root)?;
            let _ = std::fs::remove_file(&path);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .and_then(|mut file| file.write_all(format!("{token}\n").as_bytes()))
                .with_context(|| format!("writing the console token to {}", path.display()))?;
            tracing::info!(file = %path.display(), "the console's sign-in token is in this file (readable by root only)");
            token
        }
    };
    let listener = berth_api::bind_tcp(address)
        .await
        .with_context(|| format!("binding --console {address}"))?;
    Ok((listener, berth_console::ConsoleConfig { tls, token }))
}

/// dockerd's socket group, and so Berth's.
const DEFAULT_SOCKET_GROUP: &str = "docker";

/// The gid for `--group`: a number as it is, a name looked up; the default group may be
/// missing (then `None`: the socket is root's alone), a group asked for by name may not.
fn socket_group(name: &str) -> anyhow::Result<Option<u32>> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(Some(gid));
    }
    // A system without a group database at all (a minimal initramfs) fails the lookup
    // rather than finding nothing: for the default group, both mean "none".
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(Some(group.gid.as_raw())),
        Ok(None) | Err(_) if name == DEFAULT_SOCKET_GROUP => {
            tracing::info!(
                "no group {name:?}: the API socket is root's alone (create the group, or name another with --group)"
            );
            Ok(None)
        }
        Ok(None) => anyhow::bail!(
            "--group {name}: no such group; create it (groupadd {name}) or name another"
        ),
        Err(error) => Err(error).with_context(|| format!("looking up the group {name:?}")),
    }
}

fn parse_resolver(text: &str) -> Result<std::net::SocketAddr, String> {
    text.parse::<std::net::SocketAddr>()
        .or_else(|_| {
            text.parse::<std::net::IpAddr>()
                .map(|ip| std::net::SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("{text:?} is not an IP address or IP:PORT"))
}

pub fn run(args: DaemonArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))
}

async fn serve(mut args: DaemonArgs) -> anyhow::Result<()> {
    // Taken over first: a SIGTERM or Ctrl-C that comes while the engine opens or builds
    // its first template must stop the daemon cleanly (its VMs with it), not kill it
    // outright, which would leave those VMs running.
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    if let Some(path) = &args.config_file {
        let file = super::daemon_json::read(path)?;
        // Flags win over the file, as with dockerd (which refuses a conflict instead).
        if args.registry_mirrors.is_empty() {
            args.registry_mirrors = file.registry_mirrors;
        }
        if args.insecure_registries.is_empty() {
            args.insecure_registries = file.insecure_registries;
        }
        if args.dns.is_empty() {
            args.dns = file
                .dns
                .iter()
                .map(|text| parse_resolver(text).map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<_>>()
                .with_context(|| format!("the dns key of {}", path.display()))?;
        }
    }
    let group = socket_group(&args.group)?;
    let (extra_hosts, tls) = hosts(&args)?;
    let console = match args.console {
        Some(address) => Some(console_setup(&args, address).await?),
        None => None,
    };
    // Bound before anything else starts, so that an address in use stops the start.
    let mut tcp_listeners = Vec::new();
    for host in &extra_hosts {
        if let Host::Tcp(address) = host {
            let listener = berth_api::bind_tcp(*address)
                .await
                .with_context(|| format!("binding -H tcp://{address}"))?;
            tcp_listeners.push((*address, listener));
        }
    }
    let backend = choose_backend(args.backend, &args.qemu)?;
    tracing::info!(
        backend = backend.name(),
        accelerator = backend.accelerator().name(),
        "VM backend"
    );
    let engine = Engine::open(EngineConfig {
        root: args.root.clone(),
        cache: args.cache.clone(),
        exec_root: args.exec_root.clone(),
        backend,
        default_memory_mib: args.memory,
        netns: args.netns.clone(),
        outbound_nat: args.outbound_nat.then_some(args.nat_link),
        dns_upstreams: args.dns.clone(),
        registry: berth_image::RegistryOptions {
            mirrors: args.registry_mirrors.clone(),
            insecure: args.insecure_registries.clone(),
        },
        guest_kernel: args
            .guest_kernel
            .clone()
            .map(|vmlinuz| berth_guest::CustomKernel {
                vmlinuz,
                modules_dir: args.guest_modules.clone(),
            }),
        share_server: Some(
            std::env::current_exe().context("finding the berth binary for its file server")?,
        ),
        spare_vms: args.spare_vms,
    })
    .await
    .with_context(|| format!("opening Berth's state in {}", args.root.display()))?;

    // Fetch the kernel, build the initramfs and the default VM template now, so that the
    // first `docker run` need not wait for them.
    {
        let engine = engine.clone();
        tokio::spawn(async move {
            match engine.guest().await {
                Ok(guest) => {
                    tracing::info!(kernel = %guest.kernel_package, initramfs = %guest.initramfs.display(), "guest image ready")
                }
                Err(error) => {
                    tracing::error!(error = %berth_engine::error_chain(&error), "preparing the guest image failed; containers cannot start until this is fixed");
                    return;
                }
            }
            if !engine.backend_supports_snapshot() {
                tracing::info!("this backend takes no snapshots: every container VM boots cold");
            } else {
                match engine.prepare_default_template().await {
                    Ok(template) => engine.replenish_spares(&template),
                    Err(error) => {
                        tracing::error!(error = %berth_engine::error_chain(&error), "building the default VM template failed; containers will build it on first start")
                    }
                }
            }
            engine.start_with_daemon().await;
        });
    }

    // Every listener serves until the stop is sent; the first to fail ends the daemon.
    let (stop_api, api_stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = api_stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let mut servers = tokio::task::JoinSet::new();
    let mut sockets = vec![args.socket.clone()];
    sockets.extend(extra_hosts.iter().filter_map(|host| match host {
        Host::Unix(path) => Some(path.clone()),
        Host::Tcp(_) => None,
    }));
    for socket in sockets.clone() {
        let (engine, stopped) = (engine.clone(), until_stopped());
        servers.spawn(async move {
            berth_api::serve_unix(engine, &socket, group, stopped)
                .await
                .with_context(|| format!("serving on {}", socket.display()))
        });
    }
    for (address, listener) in tcp_listeners {
        let (engine, tls, stopped) = (engine.clone(), tls.clone(), until_stopped());
        servers.spawn(async move {
            berth_api::serve_tcp(engine, listener, tls, stopped)
                .await
                .with_context(|| format!("serving on tcp://{address}"))
        });
    }
    if let Some((listener, config)) = console {
        let (engine, stopped) = (engine.clone(), until_stopped());
        let address = listener.local_addr()?;
        tracing::info!(%address, tls = config.tls.is_some(), "serving the console and /metrics");
        servers.spawn(async move {
            berth_console::serve(engine, listener, config, stopped)
                .await
                .with_context(|| format!("serving the console on {address}"))
        });
    }
    tracing::info!(socket = %args.socket.display(), hosts = ?args.hosts, tls = tls.is_some(), root = %args.root.display(), "serving the Docker API");

    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
        Some(result) = servers.join_next() => {
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error),
                Err(error) => Err(error.into()),
            };
        }
    }
    tracing::info!("shutting down: stopping running containers");
    engine.shutdown().await;
    let _ = stop_api.send(true);
    for socket in &sockets {
        let _ = std::fs::remove_file(socket);
    }
    Ok(())
}

/// The `--backend` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    Auto,
    Kvm,
    Qemu,
}

pub(crate) fn choose_backend(
    choice: BackendChoice,
    qemu: &std::path::Path,
) -> anyhow::Result<Arc<dyn VmBackend>> {
    let hardware = berth_vm::hardware_kvm_available();
    let kvm = || -> anyhow::Result<Arc<dyn VmBackend>> {
        let binary = std::env::current_exe().context("finding the berth binary for `berth vmm`")?;
        Ok(Arc::new(berth_vmm::backend::KvmBackend::new(binary)))
    };
    match choice {
        BackendChoice::Kvm if !hardware => anyhow::bail!(
            "--backend kvm needs hardware virtualization (VMX or SVM in /proc/cpuinfo and a usable /dev/kvm); use --backend qemu or auto"
        ),
        BackendChoice::Kvm => kvm(),
        BackendChoice::Auto if hardware => kvm(),
        BackendChoice::Auto | BackendChoice::Qemu => {
            Ok(Arc::new(QemuBackend::new(qemu.to_path_buf())))
        }
    }
}
