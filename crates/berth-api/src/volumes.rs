//! `/volumes` endpoints: create, list (filters name, label, dangling, driver), inspect,
//! remove (409 while in use), prune (anonymous volumes; `all=true` for every unused one).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_engine::volumes::VolumeRecord;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::filters::{label_matches, Filters};
use crate::AppState;

/// Docker's `VolumeCreateRequest`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    driver: Option<String>,
    #[serde(default)]
    driver_opts: Option<HashMap<String, String>>,
    #[serde(default)]
    labels: Option<HashMap<String, String>>,
}

fn volume_json(engine: &AppState, volume: &VolumeRecord, usage: bool) -> Value {
    // As dockerd shows them: empty labels and options are null, the time in seconds.
    let or_null = |map: &HashMap<String, String>| {
        if map.is_empty() {
            Value::Null
        } else {
            json!(map)
        }
    };
    let created_at = chrono::DateTime::parse_from_rfc3339(&volume.created_at)
        .map(|time| {
            time.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
        .unwrap_or_else(|_| volume.created_at.clone());
    let mut value = json!({
        "Name": volume.name,
        "Driver": "local",
        "Mountpoint": engine.volume_mountpoint(volume).display().to_string(),
        "CreatedAt": created_at,
        "Labels": or_null(&volume.labels),
        "Scope": "local",
        "Options": or_null(&volume.options),
    });
    if usage {
        value["UsageData"] = json!({
            "Size": engine.volume_usage(&volume.name),
            "RefCount": engine.volume_users(&volume.name).len(),
        });
    }
    value
}

/// Every volume with its usage (`docker system df`).
pub fn all_with_usage(engine: &AppState) -> Vec<Value> {
    engine
        .list_volumes()
        .iter()
        .map(|v| volume_json(engine, v, true))
        .collect()
}

/// `POST /volumes/create`.
pub async fn create(
    State(engine): State<AppState>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let body: CreateBody = if body.is_empty() {
        CreateBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(e.to_string()))?
    };
    let volume = engine
        .create_volume(
            body.name.as_deref(),
            body.driver.as_deref(),
            body.labels.unwrap_or_default(),
            body.driver_opts.unwrap_or_default(),
            false,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(volume_json(&engine, &volume, false)),
    )
        .into_response())
}

/// `GET /volumes`.
pub async fn list(
    State(engine): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let filters = Filters::parse(params.get("filters"))?;
    filters.only(&["name", "label", "dangling", "driver"])?;
    let volumes: Vec<Value> = engine
        .list_volumes()
        .iter()
        .filter(|v| filters.allows("name", |name| v.name.contains(name)))
        .filter(|_| filters.allows("driver", |driver| driver == "local"))
        .filter(|v| {
            filters
                .0
                .get("label")
                .is_none_or(|wanted| wanted.iter().all(|l| label_matches(&v.labels, l)))
        })
        .filter(|v| {
            filters.allows("dangling", |d| {
                let dangling = matches!(d, "true" | "1");
                engine.volume_users(&v.name).is_empty() == dangling
            })
        })
        .map(|v| volume_json(&engine, v, false))
        .collect();
    Ok(Json(json!({ "Volumes": volumes, "Warnings": Value::Null })).into_response())
}

/// `GET /volumes/{name}`.
pub async fn inspect(
    State(engine): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let volume = engine.volume(&name).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, format!("get {name}: no such volume"))
    })?;
    Ok(Json(volume_json(&engine, &volume, true)).into_response())
}

/// `DELETE /volumes/{name}?force=`.
pub async fn remove(
    State(engine): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    engine
        .remove_volume(&name, crate::containers::flag(&params, "force"))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /volumes/prune`.
pub async fn prune(
    State(engine): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let filters = Filters::parse(params.get("filters"))?;
    filters.only(&["all", "label", "label!"])?;
    let all = filters
        .0
        .get("all")
        .is_some_and(|values| values.iter().any(|v| v == "true" || v == "1"));
    let keep = |volume: &VolumeRecord| {
        let wanted = filters
            .0
            .get("label")
            .is_none_or(|labels| labels.iter().all(|l| label_matches(&volume.labels, l)));
        let unwanted = filters
            .0
            .get("label!")
            .is_some_and(|labels| labels.iter().any(|l| label_matches(&volume.labels, l)));
        !wanted || unwanted
    };
    let (removed, freed) = engine.prune_volumes(all, keep).await?;
    Ok(Json(json!({ "VolumesDeleted": removed, "SpaceReclaimed": freed })).into_response())
}
