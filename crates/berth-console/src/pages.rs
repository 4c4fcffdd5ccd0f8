//! The console's pages and the fragments htmx swaps into them.
//!
//! `/` lists every container as a card (its VM: state, image, runtime and template,
//! vCPUs and memory, private and shared memory, CPU use over the last two minutes,
//! disk and volumes, NICs, ports, uptime, health, actions), then templates, networks,
//! volumes and the live event list. `/containers/{id}` adds the container's log and its
//! VM's console log, both followed live. Cards reflow to one column at phone width.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use berth_engine::ContainerRecord;
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::Console;

/// A whole page around `body`.
pub fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Berth" }
                link rel="stylesheet" href="/assets/pico.min.css";
                style { (PreEscaped(STYLE)) }
                script src="/assets/htmx.min.js" {}
                script src="/assets/sse.min.js" {}
            }
            body {
                header class="container" {
                    nav {
                        ul { li { a href="/" { strong { "Berth" } } } }
                        ul {
                            li { a href="/#containers" { "Containers" } }
                            li { a href="/#templates" { "Templates" } }
                            li { a href="/#networks" { "Networks" } }
                            li { a href="/#volumes" { "Volumes" } }
                            li { a href="/#events" { "Events" } }
                        }
                    }
                }
                main class="container" { (body) }
            }
        }
    }
}

/// A few rules beyond Pico's: the cards' grid, charts and the log panels.
const STYLE: &str = "
nav, nav ul { flex-wrap: wrap; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(20rem, 100%), 1fr)); gap: 1rem; }
.cards article { margin: 0; }
.cards dl { display: grid; grid-template-columns: max-content 1fr; gap: .1rem .8rem; margin: 0; font-size: .9rem; }
.cards dt { font-weight: 600; } .cards dd { margin: 0; overflow-wrap: anywhere; }
.state-running { color: #1b873f; } .state-paused { color: #b35900; } .state-exited, .state-dead { color: #b3261e; }
.actions { display: flex; flex-wrap: wrap; gap: .4rem; } .actions button { padding: .2rem .6rem; font-size: .85rem; width: auto; margin: 0; }
svg.cpu { vertical-align: middle; } pre.log { max-height: 24rem; overflow: auto; font-size: .8rem; }
#events li { font-size: .85rem; }
";

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// How long ago `started_at` (RFC 3339) was, as `3h 4m`.
fn uptime(started_at: &str) -> String {
    let Ok(started) = chrono::DateTime::parse_from_rfc3339(started_at) else {
        return "-".into();
    };
    let seconds = (chrono::Utc::now() - started.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// CPU use as a small line chart (1.0 = one core at the top).
fn cpu_chart(usage: &[f64]) -> Markup {
    let (width, height) = (120.0, 24.0);
    let step = width / (crate::sampler::KEPT as f64 - 1.0);
    let points: Vec<String> = usage
        .iter()
        .enumerate()
        .map(|(index, share)| {
            let x = index as f64 * step;
            let y = height - share.clamp(0.0, 1.0) * height;
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let latest = usage
        .last()
        .map_or("-".into(), |share| format!("{:.0}%", share * 100.0));
    html! {
        svg class="cpu" width="120" height="24" viewBox="0 0 120 24" role="img" aria-label={"CPU use, now " (latest)} {
            rect x="0" y="0" width="120" height="24" fill="none" stroke="#ccc";
            polyline points=(points.join(" ")) fill="none" stroke="#0172ad" stroke-width="1.5";
        }
        " " (latest)
    }
}

/// Which actions make sense in a state.
fn actions_for(record: &ContainerRecord) -> Vec<&'static str> {
    match record.state.status.as_str() {
        "running" => vec!["stop", "restart", "pause", "kill", "remove"],
        "paused" => vec!["unpause", "kill", "remove"],
        _ => vec!["start", "remove"],
    }
}

/// One container as a card.
fn container_card(console: &Console, record: &ContainerRecord) -> Markup {
    let name = record.name.trim_start_matches('/');
    let short = &record.id[..12];
    let state = record.state.status.as_str();
    let running = record.state.status.has_vm() && record.state.pid != 0;
    let memory = running
        .then(|| berth_engine::process_memory(record.state.pid))
        .flatten();
    let (vcpus, memory_mib) = record.vm_shape(console.engine.default_memory_mib());
    let how = if record.state.template.is_empty() {
        "cold boot".to_owned()
    } else if record.state.vm.is_empty() {
        format!(
            "clone of template {}",
            &record.state.template[..12.min(record.state.template.len())]
        )
    } else {
        format!(
            "clone of template {} (restored ahead of demand)",
            &record.state.template[..12.min(record.state.template.len())]
        )
    };
    let usage = console.samples.usage(&record.id);
    html! {
        article id={"container-" (short)} data-name=(name) data-state=(state) {
            header {
                a href={"/containers/" (record.id)} { strong { (name) } }
                " " small { code { (short) } }
                " " mark class={"state-" (state)} data-testid="state" { (state) }
            }
            dl {
                dt { "Image" } dd { (record.image_ref) }
                dt { "Runtime" } dd { (record.runtime()) }
                dt { "VM" } dd { (how) }
                dt { "Shape" } dd { (vcpus) " vCPU, " (memory_mib) " MiB" }
                @if let Some(memory) = memory {
                    dt { "Memory" } dd data-testid="memory" { "private " (mib(memory.private)) ", shared " (mib(memory.shared)) }
                }
                @if running {
                    dt { "CPU" } dd { (cpu_chart(&usage)) }
                    dt { "Uptime" } dd { (uptime(&record.state.started_at)) }
                }
                dt { "Disk" } dd { (mib(console.engine.container_disk_usage(&record.id))) " written" }
                @if !record.mounts.is_empty() {
                    dt { "Volumes" } dd {
                        @for mount in &record.mounts {
                            @let source = mount.bind_source.clone().unwrap_or_else(|| mount.volume.clone());
                            div { (source) " → " (mount.target) @if mount.read_only { " (ro)" } }
                        }
                    }
                }
                dt { "NICs" } dd {
                    @for (network, endpoint) in &record.networks {
                        div {
                            (network) ": "
                            @if let Some(ip) = endpoint.ip { (ip) } @else { "-" }
                            @if !endpoint.mac.is_empty() { " (" (endpoint.mac) ")" }
                        }
                    }
                }
                @if !record.ports.is_empty() {
                    dt { "Ports" } dd {
                        @for port in &record.ports {
                            div { (port.host_ip) ":" (port.host_port) " → " (port.key()) }
                        }
                    }
                }
                @if let Some(health) = &record.health {
                    dt { "Health" } dd { (health.status) }
                }
                @if !record.state.error.is_empty() {
                    dt { "Error" } dd { (record.state.error) }
                }
            }
            footer class="actions" {
                @for action in actions_for(record) {
                    button class="outline secondary" data-action=(action)
                        hx-post={"/containers/" (record.id) "/" (action)}
                        hx-confirm={ (action_verb(action)) " the container " (name) "?" }
                        hx-target="#container-list" hx-swap="innerHTML" { (action) }
                }
            }
        }
    }
}

fn action_verb(action: &str) -> &'static str {
    match action {
        "start" => "Start",
        "stop" => "Stop",
        "restart" => "Restart",
        "pause" => "Pause",
        "unpause" => "Unpause",
        "kill" => "Kill",
        _ => "Remove",
    }
}

/// Every container's card.
pub(crate) fn container_list(console: &Console) -> Markup {
    let mut records = console.engine.list_containers();
    records.retain(|record| !record.build_step);
    records.sort_by(|a, b| b.created.cmp(&a.created));
    html! {
        @if records.is_empty() { p { "No containers." } }
        div class="cards" {
            @for record in &records { (container_card(console, record)) }
        }
    }
}

fn templates_table(console: &Console) -> Markup {
    let templates = console.engine.template_summaries();
    html! {
        div class="overflow-auto" {
            table class="striped" {
                thead { tr { th { "Template" } th { "Shape" } th { "Guest" } th { "Backend" } th { "Memory file" } th { "Made" } th { "Clones running" } } }
                tbody {
                    @for template in &templates {
                        tr {
                            td { code { (&template.record.key[..12.min(template.record.key.len())]) } }
                            td { (template.record.shape.vcpus) " vCPU, " (template.record.shape.memory_mib) " MiB" }
                            td { code { (&template.record.guest_digest[..12.min(template.record.guest_digest.len())]) } }
                            td { (template.record.backend) }
                            td { (mib(template.memory_file_bytes)) }
                            td { (template.record.created) }
                            td { (template.clones) }
                        }
                    }
                }
            }
        }
    }
}

fn networks_table(console: &Console) -> Markup {
    let networks = console.engine.networks().list();
    html! {
        div class="overflow-auto" {
            table class="striped" {
                thead { tr { th { "Network" } th { "Driver" } th { "Subnet" } th { "Gateway" } } }
                tbody {
                    @for network in &networks {
                        tr {
                            td { (network.name) }
                            td { (network.driver) }
                            td { @if let Some(subnet) = &network.subnet { (subnet) } }
                            td { @if let Some(gateway) = network.gateway { (gateway) } }
                        }
                    }
                }
            }
        }
    }
}

fn volumes_table(console: &Console) -> Markup {
    let volumes = console.engine.list_volumes();
    html! {
        div class="overflow-auto" {
            table class="striped" {
                thead { tr { th { "Volume" } th { "Kind" } th { "Size" } th { "Made" } } }
                tbody {
                    @for volume in &volumes {
                        tr {
                            td { (volume.name) }
                            td { (format!("{:?}", volume.storage).to_lowercase()) }
                            td { (mib(console.engine.volume_usage(&volume.name))) }
                            td { (volume.created_at) }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /`.
pub(crate) async fn overview(State(console): State<Arc<Console>>) -> Html<String> {
    let body = html! {
        section id="containers" {
            hgroup { h2 { "Containers" } p { "Each in a VM of its own. Updated every 2 s." } }
            div id="container-list" hx-get="/fragments/containers" hx-trigger="every 2s" hx-swap="innerHTML" {
                (container_list(&console))
            }
        }
        section id="templates" {
            h2 { "Templates" }
            div hx-get="/fragments/templates" hx-trigger="every 5s" hx-swap="innerHTML" { (templates_table(&console)) }
        }
        section id="networks" { h2 { "Networks" } (networks_table(&console)) }
        section id="volumes" { h2 { "Volumes" } (volumes_table(&console)) }
        section id="events" {
            h2 { "Events" }
            ul id="event-list" hx-ext="sse" sse-connect="/events/stream" sse-swap="event" hx-swap="afterbegin" {}
        }
        form hx-post="/logout" { button class="secondary outline" type="submit" { "Sign out" } }
    };
    Html(layout("Containers", body).into_string())
}

/// `GET /fragments/containers`.
pub(crate) async fn containers_fragment(State(console): State<Arc<Console>>) -> Html<String> {
    Html(container_list(&console).into_string())
}

/// `GET /fragments/templates`.
pub(crate) async fn templates_fragment(State(console): State<Arc<Console>>) -> Html<String> {
    Html(templates_table(&console).into_string())
}

/// `GET /containers/{id}`: the card, then the logs followed live.
pub(crate) async fn container_page(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
) -> Response {
    let Ok(record) = console.engine.inspect_container(&id) else {
        return (
            StatusCode::NOT_FOUND,
            Html(layout("Not found", html! { p { "No such container: " (id) } }).into_string()),
        )
            .into_response();
    };
    let body = html! {
        div id="container-list" class="cards" { (container_card(&console, &record)) }
        section {
            h3 { "Container log" }
            pre class="log" id="log" hx-ext="sse" sse-connect={"/containers/" (record.id) "/logs/stream"} sse-swap="line" hx-swap="beforeend" {}
        }
        section {
            h3 { "VM console" }
            pre class="log" id="console" hx-ext="sse" sse-connect={"/containers/" (record.id) "/console/stream"} sse-swap="line" hx-swap="beforeend" {}
        }
    };
    Html(layout(record.name.trim_start_matches('/'), body).into_string()).into_response()
}

/// `GET /assets/{file}`: the vendored libraries (see `assets/VENDORED.md`).
pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind): (&'static [u8], &str) = match file.as_str() {
        "htmx.min.js" => (include_bytes!("../assets/htmx.min.js"), "text/javascript"),
        "sse.min.js" => (include_bytes!("../assets/sse.min.js"), "text/javascript"),
        "pico.min.css" => (include_bytes!("../assets/pico.min.css"), "text/css"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        body,
    )
        .into_response()
}
