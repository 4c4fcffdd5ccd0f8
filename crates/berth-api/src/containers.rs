//! `/containers/...` endpoints other than the streams.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_engine::{StartOutcome, WaitCondition};
use bollard_stubs::models::{
    ContainerCreateBody, ContainerCreateResponse, ContainerWaitExitError, ContainerWaitResponse,
};

use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::filters::{label_matches, Filters};
use crate::AppState;

/// Query parameters, read leniently as Docker reads them.
pub type Params = Query<HashMap<String, String>>;

/// Docker's boolean query values: `1`, `true`, `True` are true.
pub fn flag(params: &HashMap<String, String>, key: &str) -> bool {
    params
        .get(key)
        .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "True" | "TRUE" | "yes"))
}

/// `POST /containers/create`.
pub async fn create(
    State(engine): State<AppState>,
    Query(params): Params,
    body: Bytes,
) -> ApiResult<Response> {
    let mut raw: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON in request body: {e}")))?;
    check_restart_policy_name(&raw)?;
    move_mac_address_to_endpoint(&mut raw);
    let body: ContainerCreateBody = serde_json::from_value(raw)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON in request body: {e}")))?;
    let created = engine
        .create_container(params.get("name").map(String::as_str), body)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(ContainerCreateResponse {
            id: created.id,
            warnings: created.warnings,
        }),
    )
        .into_response())
}

/// Clients of API versions before 1.44 (docker-py, compose v1) ask for a MAC address in
/// `Config.MacAddress`; since 1.44 it is the endpoint's. As dockerd does, the old field
/// becomes the MAC of the endpoint of the container's network mode, unless that endpoint
/// asks for one itself.
fn move_mac_address_to_endpoint(body: &mut serde_json::Value) {
    let Some(mac) = body
        .get("MacAddress")
        .and_then(|m| m.as_str())
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
    else {
        return;
    };
    let mode = body["HostConfig"]["NetworkMode"]
        .as_str()
        .filter(|m| !m.is_empty())
        .unwrap_or("default")
        .to_owned();
    if !body["NetworkingConfig"].is_object() {
        body["NetworkingConfig"] = serde_json::json!({});
    }
    let endpoints = &mut body["NetworkingConfig"]["EndpointsConfig"];
    if !endpoints.is_object() {
        *endpoints = serde_json::json!({});
    }
    let endpoint = &mut endpoints[mode.as_str()];
    if !endpoint.is_object() {
        *endpoint = serde_json::json!({});
    }
    if endpoint["MacAddress"].as_str().is_none_or(str::is_empty) {
        endpoint["MacAddress"] = serde_json::json!(mac);
    }
}

/// A restart policy's name as dockerd checks it at create (the model's enum would only
/// say that the JSON does not decode).
fn check_restart_policy_name(body: &serde_json::Value) -> Result<(), ApiError> {
    let name = &body["HostConfig"]["RestartPolicy"]["Name"];
    match name.as_str() {
        None | Some("" | "no" | "always" | "on-failure" | "unless-stopped") => Ok(()),
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid restart policy: unknown policy '{other}'; use one of 'no', 'always', 'on-failure' or 'unless-stopped'"
        ))),
    }
}

/// `GET /containers/json` with `all`, `limit` and `filters` (id, name, label, status,
/// exited, ancestor, before, since).
pub async fn list(State(engine): State<AppState>, Query(params): Params) -> ApiResult<Response> {
    let filters = Filters::parse(params.get("filters"))?;
    filters.only(&[
        "id", "name", "label", "status", "exited", "ancestor", "before", "since", "health",
        "volume", "network",
    ])?;
    let all = flag(&params, "all") || filters.has("status") || filters.has("exited");
    let limit: Option<usize> = params
        .get("limit")
        .and_then(|l| l.parse::<i64>().ok())
        .filter(|l| *l > 0)
        .map(|l| l as usize);
    let records = engine.list_containers();
    // As dockerd lists them: a link's target also goes by `/LINKER/ALIAS`.
    let link_names = berth_engine::links::names_by_target(&records);
    // `before` and `since` name containers; they select by creation order.
    let created_of = |reference: &str| engine.inspect_container(reference).ok().map(|r| r.created);
    let before: Vec<String> = filters
        .0
        .get("before")
        .into_iter()
        .flatten()
        .filter_map(|r| created_of(r))
        .collect();
    let since: Vec<String> = filters
        .0
        .get("since")
        .into_iter()
        .flatten()
        .filter_map(|r| created_of(r))
        .collect();
    let ancestors: Vec<String> = filters
        .0
        .get("ancestor")
        .into_iter()
        .flatten()
        .filter_map(|reference| engine.resolve_image(reference).ok().map(|image| image.id))
        .collect();
    let mut selected: Vec<_> = records
        .into_iter()
        .filter(|r| all || limit.is_some() || r.state.status.is_running())
        .filter(|r| filters.allows("id", |v| r.id.starts_with(v)))
        .filter(|r| filters.allows("name", |v| r.name.contains(v.trim_start_matches('/'))))
        .filter(|r| filters.allows("status", |v| v == r.state.status.as_str()))
        .filter(|r| {
            filters.allows("exited", |v| {
                r.state.status == berth_engine::ContainerStatus::Exited
                    && v.parse::<i64>().ok() == Some(r.state.exit_code)
            })
        })
        .filter(|r| {
            let labels = r.config.labels.clone().unwrap_or_default();
            filters
                .0
                .get("label")
                .is_none_or(|wanted| wanted.iter().all(|l| label_matches(&labels, l)))
        })
        .filter(|r| !filters.has("ancestor") || ancestors.contains(&r.image_id))
        .filter(|r| {
            filters.allows("volume", |v| {
                r.mounts.iter().any(|m| m.volume == v || m.target == v)
            })
        })
        .filter(|r| {
            filters.allows("health", |v| {
                let status = r
                    .health
                    .as_ref()
                    .map(|h| h.status.as_str())
                    .unwrap_or("none");
                status == v
            })
        })
        .filter(|r| {
            filters.allows("network", |v| {
                r.networks
                    .iter()
                    .any(|(name, endpoint)| name == v || endpoint.network_id.starts_with(v))
            })
        })
        .filter(|r| before.iter().all(|t| r.created < *t) && since.iter().all(|t| r.created > *t))
        .collect();
    if let Some(limit) = limit {
        selected.truncate(limit);
    }
    let networks = engine.networks().list();
    let summaries: Vec<_> = selected
        .iter()
        .map(|record| {
            let mut summary = convert::container_summary(record, &networks);
            if let (Some(names), Some(more)) =
                (summary.names.as_mut(), link_names.get(&record.name))
            {
                names.extend(more.iter().cloned());
            }
            if flag(&params, "size") {
                let size = engine.container_disk_usage(&record.id) as i64;
                summary.size_rw = Some(size);
                summary.size_root_fs = Some(size);
            }
            summary
        })
        .collect();
    Ok(Json(summaries).into_response())
}

/// `GET /containers/{id}/json`.
pub async fn inspect(
    State(engine): State<AppState>,
    axum::Extension(version): axum::Extension<crate::version::ApiVersion>,
    Path(id): Path<String>,
    Query(params): Params,
) -> ApiResult<Response> {
    let record = engine.inspect_container(&id)?;
    let log_path = engine
        .root()
        .join("containers")
        .join(&record.id)
        .join("container.log")
        .display()
        .to_string();
    let networks = engine.networks().list();
    let mut value = serde_json::to_value(convert::container_inspect(&record, log_path, &networks))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    value["Mounts"] = serde_json::to_value(convert::mount_points(&record, |name| {
        engine
            .volume(name)
            .map(|volume| engine.volume_mountpoint(&volume).display().to_string())
            .unwrap_or_default()
    }))
    .unwrap_or_default();
    // Before API 1.44 the container's MAC address was also in its Config.
    if version < crate::version::ApiVersion(1, 44) {
        if let Some(mac) = value["NetworkSettings"]["Networks"]
            .as_object()
            .and_then(|networks| networks.values().next())
            .and_then(|endpoint| endpoint.get("MacAddress").cloned())
        {
            value["Config"]["MacAddress"] = mac;
        }
    }
    // Every endpoint field Docker shows, null when empty (the models leave empty ones
    // out, and a template such as `{{.NetworkSettings.Networks.web.Aliases}}` reads a
    // missing key differently from a null one).
    if let Some(networks) = value["NetworkSettings"]["Networks"].as_object_mut() {
        for endpoint in networks.values_mut() {
            let Some(endpoint) = endpoint.as_object_mut() else {
                continue;
            };
            for key in ["IPAMConfig", "Links", "Aliases", "DriverOpts", "DNSNames"] {
                endpoint.entry(key).or_insert(serde_json::Value::Null);
            }
            endpoint.entry("GwPriority").or_insert(serde_json::json!(0));
            endpoint
                .entry("GlobalIPv6PrefixLen")
                .or_insert(serde_json::json!(0));
        }
    }
    // The default network's address also at the top of NetworkSettings, where older
    // clients and scripts (`{{.NetworkSettings.IPAddress}}`) read it.
    if let Some(settings) = value["NetworkSettings"]["Networks"].get("bridge").cloned() {
        for key in ["IPAddress", "IPPrefixLen", "Gateway", "MacAddress"] {
            value["NetworkSettings"][key] = settings[key].clone();
        }
    }
    if let Some(health) = &record.health {
        value["State"]["Health"] = serde_json::json!({
            "Status": health.status,
            "FailingStreak": health.failing_streak,
            "Log": health.log.iter().map(|r| serde_json::json!({
                "Start": r.start, "End": r.end, "ExitCode": r.exit_code, "Output": r.output,
            })).collect::<Vec<_>>(),
        });
    }
    if params.get("size").is_some_and(|v| v == "1" || v == "true") {
        let size = engine.container_disk_usage(&record.id);
        value["SizeRw"] = serde_json::json!(size);
        value["SizeRootFs"] = serde_json::json!(size);
    }
    // Berth's own facts about the container's VM, under a key of its own.
    let memory = (record.state.pid != 0)
        .then(|| berth_engine::process_memory(record.state.pid))
        .flatten();
    value["Berth"] = serde_json::json!({
        "Runtime": record.runtime(),
        "VmPid": record.state.pid,
        "Memory": memory.map(|m| serde_json::json!({
            "PrivateBytes": m.private,
            "SharedBytes": m.shared,
            "PssBytes": m.pss,
            "RssBytes": m.rss,
        })),
    });
    Ok(Json(value).into_response())
}

/// `POST /containers/{id}/start`.
pub async fn start(
    State(engine): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    match engine.start_container(&id).await? {
        StartOutcome::Started => Ok(StatusCode::NO_CONTENT),
        StartOutcome::AlreadyRunning => Ok(StatusCode::NOT_MODIFIED),
    }
}

/// `POST /containers/{id}/wait`.
pub async fn wait(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Query(params): Params,
) -> ApiResult<Response> {
    let condition =
        WaitCondition::parse(params.get("condition").map(String::as_str).unwrap_or(""))?;
    let waiting = engine.wait_container(&id, condition)?;
    // The body comes when the condition is met; the headers go out at once, because the
    // docker CLI waits for them before it starts the container.
    let body = futures_util::stream::once(async move {
        let outcome = waiting.await;
        let response = ContainerWaitResponse {
            status_code: outcome.status_code,
            error: outcome.error.map(|message| ContainerWaitExitError {
                message: Some(message),
            }),
        };
        let mut json = serde_json::to_vec(&response).unwrap_or_default();
        json.push(b'\n');
        Ok::<_, std::io::Error>(Bytes::from(json))
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

/// `POST /containers/{id}/kill`.
pub async fn kill(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Query(params): Params,
) -> ApiResult<StatusCode> {
    engine
        .kill_container(&id, params.get("signal").map(String::as_str).unwrap_or(""))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /containers/{id}/stop`.
pub async fn stop(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Query(params): Params,
) -> ApiResult<StatusCode> {
    let timeout = params
        .get("t")
        .or_else(|| params.get("timeout"))
        .map(|t| t.parse::<i64>())
        .transpose();
    let timeout =
        timeout.map_err(|_| ApiError::bad_request("invalid value for t: not an integer"))?;
    if engine.stop_container(&id, timeout).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Ok(StatusCode::NOT_MODIFIED)
    }
}

/// `POST /containers/{id}/pause`.
pub async fn pause(
    State(engine): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    engine.pause_container(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /containers/{id}/unpause`.
pub async fn unpause(
    State(engine): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    engine.unpause_container(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /containers/{id}/resize`.
pub async fn resize(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Query(params): Params,
) -> ApiResult<StatusCode> {
    let (rows, cols) = terminal_size(&params)?;
    engine.resize_container(&id, rows, cols).await?;
    Ok(StatusCode::OK)
}

/// The `h` (rows) and `w` (columns) of a resize request.
pub fn terminal_size(params: &HashMap<String, String>) -> ApiResult<(u16, u16)> {
    let dimension = |key: &str| -> ApiResult<u16> {
        params
            .get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ApiError::bad_request(format!("invalid or missing {key}")))
    };
    Ok((dimension("h")?, dimension("w")?))
}

/// `DELETE /containers/{id}` (`link=1`: `id` must be a link's name, which is refused).
pub async fn remove(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Query(params): Params,
) -> ApiResult<StatusCode> {
    if flag(&params, "link") {
        engine.remove_link(&id)?;
        return Ok(StatusCode::NO_CONTENT);
    }
    engine
        .remove_container_and_volumes(&id, flag(&params, "force"), flag(&params, "v"))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /containers/{linker}/{alias}?link=1`: `docker rm --link`.
pub async fn remove_link(
    State(engine): State<AppState>,
    Path((linker, alias)): Path<(String, String)>,
    Query(params): Params,
) -> ApiResult<StatusCode> {
    let name = format!("{linker}/{alias}");
    if !flag(&params, "link") {
        return Err(berth_engine::EngineError::NoSuchContainer(name).into());
    }
    engine.remove_link(&name)?;
    Ok(StatusCode::NO_CONTENT)
}
