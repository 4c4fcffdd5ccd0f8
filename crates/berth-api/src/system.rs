//! `/_ping`, `/version`, `/info`, and the swarm endpoints of a daemon outside a swarm.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bollard_stubs::models::{
    IndexInfo, RegistryServiceConfig, Runtime, SystemInfo, SystemVersion, SystemVersionComponents,
    SystemVersionPlatform,
};

use crate::error::ApiError;
use crate::version::{MAX_API_VERSION, MIN_API_VERSION};
use crate::AppState;

/// Berth's own version, shown as the engine version.
pub const BERTH_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Headers Docker puts on every `/_ping` answer; the CLI negotiates its version from them.
fn ping_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "API-Version",
        HeaderValue::from_str(&MAX_API_VERSION.to_string()).expect("ascii"),
    );
    headers.insert("Docker-Experimental", HeaderValue::from_static("false"));
    headers.insert("OSType", HeaderValue::from_static("linux"));
    headers.insert("Builder-Version", HeaderValue::from_static("1"));
    headers.insert(
        header::SERVER,
        HeaderValue::from_str(&format!("Berth/{BERTH_VERSION} (linux)")).expect("ascii"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers
}

/// `GET|HEAD /_ping`.
pub async fn ping(method: Method) -> Response {
    let body = if method == Method::HEAD { "" } else { "OK" };
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().extend(ping_headers());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// `GET /version`.
pub async fn version(State(engine): State<AppState>) -> Json<SystemVersion> {
    let info = engine.info();
    Json(SystemVersion {
        platform: Some(SystemVersionPlatform {
            name: "Berth".into(),
        }),
        components: Some(vec![SystemVersionComponents {
            name: "Engine".into(),
            version: BERTH_VERSION.into(),
            details: Some(std::collections::HashMap::from([
                ("ApiVersion".to_owned(), MAX_API_VERSION.to_string()),
                ("MinAPIVersion".to_owned(), MIN_API_VERSION.to_string()),
                ("VmBackend".to_owned(), info.backend.to_owned()),
                ("Accelerator".to_owned(), info.accelerator.to_owned()),
            ])),
        }]),
        version: Some(BERTH_VERSION.into()),
        api_version: Some(MAX_API_VERSION.to_string()),
        min_api_version: Some(MIN_API_VERSION.to_string()),
        git_commit: Some(String::new()),
        go_version: Some(String::new()),
        os: Some("linux".into()),
        arch: Some("amd64".into()),
        kernel_version: Some(kernel_release()),
        experimental: Some(false),
        build_time: Some(String::new()),
    })
}

/// `GET /info`.
pub async fn info(State(engine): State<AppState>) -> Json<SystemInfo> {
    let info = engine.info();
    let host = std::fs::read_to_string("/etc/hostname")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .map(str::to_owned)
        })
        .and_then(|line| {
            line.split_whitespace()
                .nth(1)
                .and_then(|kib| kib.parse::<i64>().ok())
        })
        .map(|kib| kib * 1024);
    let runtime = |what: &str| Runtime {
        path: Some("berth".into()),
        runtime_args: Some(vec![what.to_owned()]),
        ..Default::default()
    };
    let mib = |bytes: u64| format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0));
    Json(SystemInfo {
        id: Some(format!("berth-{host}")),
        containers: Some(info.containers as i64),
        containers_running: Some(info.running as i64),
        containers_paused: Some(info.paused as i64),
        containers_stopped: Some(info.stopped as i64),
        images: Some(info.images as i64),
        driver: Some("berth-ext4-qcow2".into()),
        driver_status: Some(vec![
            vec!["VM backend".into(), info.backend.into()],
            vec!["Accelerator".into(), info.accelerator.into()],
            vec!["VM memory, private".into(), mib(info.vm_memory.private)],
            vec![
                "VM memory, shared with templates".into(),
                mib(info.vm_memory.shared),
            ],
            vec![
                "VM memory, proportional (PSS)".into(),
                mib(info.vm_memory.pss),
            ],
            vec![
                "Guest kernel".into(),
                info.guest_kernel
                    .clone()
                    .unwrap_or_else(|| "not fetched yet".into()),
            ],
            vec!["Network namespace".into(), info.netns.clone()],
            vec![
                "Outbound NAT".into(),
                match &info.outbound_nat {
                    Some((link, subnet)) => format!("on ({link}, {subnet})"),
                    None => "off".into(),
                },
            ],
            vec![
                "Spare VMs".into(),
                match info.spare_vms {
                    (_, 0) => "off".into(),
                    (ready, wanted) => format!("{ready} ready ({wanted} per VM shape)"),
                },
            ],
        ]),
        docker_root_dir: Some(info.root.display().to_string()),
        kernel_version: Some(kernel_release()),
        operating_system: Some("Berth (every container in its own VM)".into()),
        os_type: Some("linux".into()),
        architecture: Some("x86_64".into()),
        ncpu: Some(
            std::thread::available_parallelism()
                .map(|n| n.get() as i64)
                .unwrap_or(1),
        ),
        mem_total: memory,
        name: Some(host),
        server_version: Some(BERTH_VERSION.into()),
        default_runtime: Some(berth_engine::RUNTIME_CLONE.into()),
        runtimes: Some(std::collections::HashMap::from([
            (
                berth_engine::RUNTIME_CLONE.to_owned(),
                runtime("clone each VM from a pre-booted template"),
            ),
            (
                berth_engine::RUNTIME_COLDBOOT.to_owned(),
                runtime("boot each VM from scratch"),
            ),
        ])),
        registry_config: Some(registry_config(engine.registry_options())),
        index_server_address: Some("https://index.docker.io/v1/".into()),
        logging_driver: Some("json-file".into()),
        cgroup_driver: Some(bollard_stubs::models::SystemInfoCgroupDriverEnum::NONE),
        cgroup_version: Some(bollard_stubs::models::SystemInfoCgroupVersionEnum::_2),
        memory_limit: Some(true),
        swap_limit: Some(false),
        experimental_build: Some(false),
        live_restore_enabled: Some(false),
        isolation: None,
        security_options: Some(vec!["name=vm-isolation".into()]),
        warnings: Some(info.warnings.clone()),
        debug: Some(tracing::enabled!(tracing::Level::DEBUG)),
        ..Default::default()
    })
}

/// `/plugins`: Berth has no plugin system; listing says there are none.
pub async fn plugins_list() -> axum::Json<Vec<serde_json::Value>> {
    axum::Json(Vec::new())
}

/// `GET /plugins/{name}/json`: there are none (a 404, so that `docker inspect NAME`
/// goes on to say "No such object").
pub async fn plugin_not_found(axum::extract::Path(rest): axum::extract::Path<String>) -> ApiError {
    let name = rest.strip_suffix("/json").unwrap_or(&rest);
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("plugin \"{name}\" not found"),
    )
}

/// Any other `/plugins/...` request.
pub async fn plugins_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "Berth does not support Docker engine plugins",
    )
}

pub async fn swarm_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.",
    )
}

/// `RegistryConfig` of `docker info`: what the CLI prints as "Insecure Registries" and
/// "Registry Mirrors". Loopback is always insecure (plain HTTP), as with dockerd.
fn registry_config(options: &berth_engine::registry::RegistryOptions) -> RegistryServiceConfig {
    let mut cidrs = vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()];
    let mut index_configs = std::collections::HashMap::new();
    for entry in &options.insecure {
        if entry.contains('/') {
            cidrs.push(entry.clone());
        } else {
            index_configs.insert(
                entry.clone(),
                IndexInfo {
                    name: Some(entry.clone()),
                    mirrors: Some(Vec::new()),
                    secure: Some(false),
                    official: Some(false),
                },
            );
        }
    }
    let mirrors: Vec<String> = options
        .mirrors
        .iter()
        .map(|m| format!("{}/", m.trim_end_matches('/')))
        .collect();
    index_configs.insert(
        "docker.io".into(),
        IndexInfo {
            name: Some("docker.io".into()),
            mirrors: Some(mirrors.clone()),
            secure: Some(true),
            official: Some(true),
        },
    );
    RegistryServiceConfig {
        insecure_registry_cidrs: Some(cidrs),
        index_configs: Some(index_configs),
        mirrors: Some(mirrors),
    }
}
