//! `/containers/{id}/restart`, `/rename`, `/update` and `/containers/prune`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bollard_stubs::models::ContainerUpdateBody;
use serde_json::json;

use crate::error::{ApiError, ApiResult};
use crate::filters::{label_matches, Filters};
use crate::AppState;

type Params = Query<HashMap<String, String>>;

/// `POST /containers/{id}/restart?t=SECONDS`.
pub async fn restart(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Query(params): Params,
) -> ApiResult<StatusCode> {
    let timeout = params.get("t").and_then(|t| t.parse::<i64>().ok());
    engine.restart_container(&id, timeout).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /containers/{id}/top?ps_args=...`.
pub async fn top(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Query(params): Params,
) -> ApiResult<Response> {
    let ps_args = params.get("ps_args").map(String::as_str).unwrap_or("");
    let (titles, processes) = engine.top_container(&id, ps_args).await?;
    Ok(Json(json!({ "Titles": titles, "Processes": processes })).into_response())
}

/// `POST /containers/{id}/rename?name=NEW`.
pub async fn rename(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Query(params): Params,
) -> ApiResult<StatusCode> {
    let name = params
        .get("name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("the new name is missing (?name=)"))?;
    engine.rename_container(&id, name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /containers/{id}/update`.
pub async fn update(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let update: ContainerUpdateBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON in request body: {e}")))?;
    let warnings = engine.update_container(&id, update).await?;
    Ok(Json(json!({ "Warnings": warnings })).into_response())
}

/// Docker's `until` filter value: Unix seconds, RFC 3339, or a duration before now
/// (`10m`, `24h`, `1h30m`). Returns Unix seconds.
pub fn parse_until(value: &str, now: i64) -> Result<i64, ApiError> {
    if let Ok(seconds) = value.parse::<f64>() {
        return Ok(seconds as i64);
    }
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(value) {
        return Ok(time.timestamp());
    }
    let mut total = 0i64;
    let mut number = String::new();
    for c in value.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let amount: i64 = number
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid until value {value:?}")))?;
        number.clear();
        total += amount
            * match c {
                'h' => 3600,
                'm' => 60,
                's' => 1,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "invalid until value {value:?}"
                    )))
                }
            };
    }
    if !number.is_empty() || value.is_empty() {
        return Err(ApiError::bad_request(format!(
            "invalid until value {value:?}"
        )));
    }
    Ok(now - total)
}

/// `POST /containers/prune` with filters `label`, `label!` and `until`.
pub async fn prune(State(engine): State<AppState>, Query(params): Params) -> ApiResult<Response> {
    let filters = Filters::parse(params.get("filters"))?;
    filters.only(&["label", "label!", "until"])?;
    let now = chrono::Utc::now().timestamp();
    let until: Option<i64> = match filters.0.get("until").and_then(|v| v.first()) {
        Some(value) => Some(parse_until(value, now)?),
        None => None,
    };
    let (removed, reclaimed) = engine
        .prune_containers(|record| {
            let labels = record.config.labels.clone().unwrap_or_default();
            let created = chrono::DateTime::parse_from_rfc3339(&record.created)
                .map(|t| t.timestamp())
                .unwrap_or(0);
            !filters.allows("label", |v| label_matches(&labels, v))
                || filters
                    .0
                    .get("label!")
                    .is_some_and(|values| values.iter().any(|v| label_matches(&labels, v)))
                || until.is_some_and(|until| created >= until)
        })
        .await;
    Ok(Json(json!({ "ContainersDeleted": removed, "SpaceReclaimed": reclaimed })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_takes_docker_forms() {
        assert_eq!(parse_until("1700000000", 0).unwrap(), 1_700_000_000);
        assert_eq!(
            parse_until("2026-01-01T00:00:00Z", 0).unwrap(),
            1_767_225_600
        );
        assert_eq!(parse_until("1h30m", 10_000).unwrap(), 10_000 - 5400);
        assert!(parse_until("soon", 0).is_err());
        assert!(parse_until("10", 0).is_ok());
        assert!(parse_until("5x", 0).is_err());
    }
}
