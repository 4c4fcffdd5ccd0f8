//! `/containers/{id}/archive`: `docker cp`. `HEAD` answers the path's stat in the
//! `X-Docker-Container-Path-Stat` header (base64 of Docker's PathStat JSON); `GET` adds
//! a tar of the path as the body; `PUT` extracts the tar in the body into the path, which
//! must be a directory.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use crate::error::{ApiError, ApiResult};
use crate::AppState;

const STAT_HEADER: &str = "x-docker-container-path-stat";

fn path_param(params: &HashMap<String, String>) -> ApiResult<&str> {
    params
        .get("path")
        .map(String::as_str)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::bad_request("path is required"))
}

fn stat_header(stat: &serde_json::Value) -> ApiResult<HeaderValue> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(stat.to_string());
    HeaderValue::from_str(&encoded)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// `HEAD /containers/{id}/archive?path=`.
pub async fn head(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let stat = engine
        .stat_container_path(&id, path_param(&params)?)
        .await?;
    let mut response = StatusCode::OK.into_response();
    response
        .headers_mut()
        .insert(STAT_HEADER, stat_header(&stat)?);
    Ok(response)
}

/// `GET /containers/{id}/archive?path=`.
pub async fn get(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let (stat, tar) = engine
        .read_container_archive(&id, path_param(&params)?)
        .await?;
    let mut response = Body::from_stream(tar).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    headers.insert(STAT_HEADER, stat_header(&stat)?);
    Ok(response)
}

/// `PUT /containers/{id}/archive?path=`.
pub async fn put(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    body: Body,
) -> ApiResult<Response> {
    let path = path_param(&params)?.to_owned();
    engine
        .write_container_archive(&id, &path, body.into_data_stream())
        .await?;
    Ok(StatusCode::OK.into_response())
}

/// `GET /containers/{id}/export`.
pub async fn export(State(engine): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let tar = engine.export_container(&id).await?;
    let mut response = Body::from_stream(tar).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    Ok(response)
}

/// `GET /containers/{id}/changes`: `docker diff`.
pub async fn changes(
    State(engine): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let changes = engine.container_changes(&id).await?;
    Ok(axum::Json(changes).into_response())
}

/// `POST /commit?container=&repo=&tag=&comment=&author=&pause=&changes=...` (`changes`
/// repeats, so the raw query is parsed).
pub async fn commit(
    State(engine): State<AppState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> ApiResult<Response> {
    let query = crate::filters::QueryPairs::parse(query.as_deref())?;
    let container = query.get("container");
    if container.is_empty() {
        return Err(ApiError::bad_request("container is required"));
    }
    let options = berth_engine::changes::CommitOptions {
        reference: query.reference(),
        comment: query.get("comment"),
        author: query.get("author"),
        changes: query.all("changes"),
        pause: !matches!(query.get("pause").as_str(), "0" | "false"),
    };
    let id = engine.commit_container(&container, options).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(serde_json::json!({ "Id": id })),
    )
        .into_response())
}
