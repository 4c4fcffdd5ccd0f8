//! `POST /build` (the classic builder's endpoint, which the docker CLI uses when the
//! daemon's `/_ping` says `Builder-Version: 1`, and docker-py and compose always use),
//! `POST /build/prune`, and `/session` (BuildKit's, which Berth does not speak).
//!
//! The body is the build context: a tar, plain or compressed (gzip, bzip2, xz), spooled
//! to a file under the daemon's root first. Query parameters as dockerd reads them:
//! `dockerfile`, `t` (repeated), `buildargs` and `labels` (JSON objects), `target`,
//! `nocache`, `pull`, `rm`, `forcerm`, `q`, `networkmode`, `extrahosts`, `shmsize`,
//! `memory`, `memswap`, `cpushares`, `cpuperiod`, `cpuquota`, `cpusetcpus`, `platform`,
//! `cachefrom` (a JSON array). `remote` (a URL context) is refused: Berth builds only
//! what the client sends. `X-Registry-Config` gives the credentials FROM pulls use.
//!
//! The answer is Docker's JSON stream: `{"stream": text}` lines, pull progress,
//! `{"aux": {"ID": id}}` and, for a failure once the build started, `{"errorDetail":
//! {"code", "message"}, "error"}` (the CLI exits with `code`). An option that does not
//! parse is a 400 before the build starts.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_engine::build::{BuildMessage, BuildOptions};
use berth_engine::EngineError;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::error::{ApiError, ApiResult};
use crate::AppState;

fn flag(value: &str) -> bool {
    matches!(value, "1" | "true" | "True" | "TRUE")
}

fn number(name: &str, value: &str) -> Result<Option<i64>, ApiError> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| ApiError::bad_request(format!("invalid value for {name}: {value}")))
}

fn json_param<T: serde::de::DeserializeOwned + Default>(
    name: &str,
    value: &str,
) -> Result<T, ApiError> {
    if value.is_empty() || value == "null" {
        return Ok(T::default());
    }
    serde_json::from_str(value).map_err(|e| ApiError::bad_request(format!("invalid {name}: {e}")))
}

/// The build's options from the query.
fn options(params: &[(String, String)]) -> Result<(BuildOptions, bool), ApiError> {
    let mut options = BuildOptions {
        remove: true,
        ..Default::default()
    };
    let mut quiet = false;
    for (name, value) in params {
        match name.as_str() {
            "dockerfile" => options.dockerfile = value.clone(),
            "t" if !value.is_empty() => options.tags.push(value.clone()),
            "buildargs" => options.build_args = json_param(name, value)?,
            "labels" => options.labels = json_param::<BTreeMap<String, String>>(name, value)?,
            "target" => options.target = Some(value.clone()),
            "nocache" => options.no_cache = flag(value),
            "pull" => options.pull = flag(value),
            "rm" => options.remove = value.is_empty() || flag(value),
            "forcerm" if flag(value) => options.remove = true,
            "q" => quiet = flag(value),
            "networkmode" if value != "default" => options.network_mode = Some(value.clone()),
            "extrahosts" if !value.is_empty() => options
                .extra_hosts
                .extend(value.split(',').map(str::to_owned)),
            "shmsize" => options.shm_size = number(name, value)?,
            "memory" => options.memory = number(name, value)?,
            "memswap" => options.memory_swap = number(name, value)?,
            "cpushares" => options.cpu_shares = number(name, value)?,
            "cpuperiod" => options.cpu_period = number(name, value)?,
            "cpuquota" => options.cpu_quota = number(name, value)?,
            "cpusetcpus" => options.cpuset_cpus = Some(value.clone()),
            "platform" => options.platform = Some(value.clone()),
            "cachefrom" => options.cache_from = json_param(name, value)?,
            "remote" if !value.is_empty() => {
                return Err(ApiError::bad_request(format!(
                    "remote build contexts ({value}) are not available: Berth builds the context the client sends; clone or download it and build the directory"
                )))
            }
            "version" if value == "2" => {
                return Err(ApiError::bad_request(
                    "BuildKit is not available: Berth has Docker's classic builder (DOCKER_BUILDKIT=0)",
                ))
            }
            "outputs" if !value.is_empty() && value != "null" && value != "[]" => {
                return Err(ApiError::bad_request(
                    "build outputs are BuildKit's: Berth's classic builder makes images only",
                ))
            }
            _ => {}
        }
    }
    Ok((options, quiet))
}

/// The stream's failure line.
fn failure_line(error: &EngineError) -> Value {
    let message = match error {
        EngineError::Build(build) => build.to_string(),
        other => berth_engine::error_chain(other),
    };
    let code = match error {
        EngineError::Build(build) => build.code(),
        _ => None,
    };
    let mut detail = json!({ "message": message });
    if let Some(code) = code {
        detail["code"] = json!(code);
    }
    json!({ "errorDetail": detail, "error": message })
}

/// `POST /build`.
pub async fn build(
    State(engine): State<AppState>,
    RawQuery(query): RawQuery,
    headers: axum::http::HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let params: Vec<(String, String)> = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let (mut options, quiet) = options(&params)?;
    options.registry_credentials = crate::registry::registry_config_credentials(&headers)?;
    let spool = crate::import::spool(&engine, body).await?;
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let (done_sender, done) = oneshot::channel();
    let task_engine = engine.clone();
    tokio::spawn(async move {
        let result = task_engine.build_image(spool.path(), options, sender).await;
        drop(spool);
        let _ = done_sender.send(result);
    });
    // A build that fails before its first message (a Dockerfile that does not parse, a
    // context that cannot be read) is an HTTP error, as with dockerd.
    let first = receiver.recv().await;
    let (early, done) = match first {
        Some(_) => (None, Some(done)),
        None => match done.await {
            Ok(Err(error)) => return Err(error.into()),
            other => (Some(other), None),
        },
    };
    let first = futures_util::stream::iter(first);
    let rest = futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx));
    let messages = first.chain(rest).filter_map(move |message| async move {
        match message {
            BuildMessage::Stream(text) if !quiet => Some(json!({ "stream": text })),
            BuildMessage::Progress(progress) if !quiet => {
                Some(crate::registry::progress_json(&progress))
            }
            BuildMessage::Aux(aux) => Some(json!({ "aux": aux })),
            _ => None,
        }
    });
    let end = futures_util::stream::once(async move {
        let result = match (early, done) {
            (Some(result), _) => result,
            (None, Some(done)) => done.await,
            (None, None) => Ok(Err(EngineError::InvalidArgument(
                "the build ended without a result".into(),
            ))),
        };
        match result {
            Ok(Ok(id)) if quiet => Some(json!({ "stream": format!("{id}\n") })),
            Ok(Ok(_)) => None,
            Ok(Err(error)) => Some(failure_line(&error)),
            Err(_) => Some(json!({
                "errorDetail": { "message": "the build ended without a result" },
                "error": "the build ended without a result",
            })),
        }
    })
    .filter_map(|line| async move { line });
    let lines = messages
        .chain(end)
        .map(|line| Ok::<_, std::convert::Infallible>(format!("{line}\r\n")));
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(lines),
    )
        .into_response())
}

/// `POST /build/prune`: forgets the build cache and removes its images that nothing
/// keeps.
pub async fn prune(State(engine): State<AppState>) -> ApiResult<Response> {
    let (deleted, reclaimed) = engine.prune_build_cache()?;
    Ok(Json(json!({ "CachesDeleted": deleted, "SpaceReclaimed": reclaimed })).into_response())
}

/// `/session`: BuildKit's session endpoint.
pub async fn session_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "BuildKit is not available: Berth has Docker's classic builder (set DOCKER_BUILDKIT=0, or use `docker build` without buildx)",
    )
}
