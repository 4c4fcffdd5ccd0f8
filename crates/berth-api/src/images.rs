//! `/images/...` endpoints.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::Extension;

use crate::version::ApiVersion;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// `POST /images/load`: a `docker save` archive in the body. The body is spooled to a
/// temporary file under the daemon's root before it is read (archives list their
/// manifest anywhere, and a file keeps memory flat).
pub async fn load(State(engine): State<AppState>, body: Body) -> ApiResult<Response> {
    let spool_dir = engine.root().join("tmp");
    tokio::fs::create_dir_all(&spool_dir)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let spool = tempfile::NamedTempFile::new_in(&spool_dir)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut file = tokio::fs::File::from_std(
        spool
            .reopen()
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
    );
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        file.write_all(&chunk)
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    }
    file.flush()
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    drop(file);
    let (loaded, _steps) = engine.load_images(spool.path().to_path_buf()).await?;
    let mut text = String::new();
    for image in loaded {
        if image.tags.is_empty() {
            text.push_str(
                &json!({ "stream": format!("Loaded image ID: {}\n", image.id) }).to_string(),
            );
            text.push('\n');
        }
        for tag in image.tags {
            text.push_str(&json!({ "stream": format!("Loaded image: {tag}\n") }).to_string());
            text.push('\n');
        }
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response())
}

/// `GET /images/json`.
pub async fn list(
    State(engine): State<AppState>,
    Extension(version): Extension<ApiVersion>,
) -> ApiResult<Response> {
    let usage = engine.image_usage();
    let mut images = engine.list_images()?;
    images.sort_by_key(|image| std::cmp::Reverse(image.loaded_at));
    let mut summaries = serde_json::to_value(
        images
            .iter()
            .map(|i| convert::image_summary(i, usage.get(&i.id).copied().unwrap_or(0)))
            .collect::<Vec<_>>(),
    )
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    for summary in summaries.as_array_mut().into_iter().flatten() {
        crate::version::older_image_shape(version, summary);
    }
    Ok(Json(summaries).into_response())
}

/// `GET /images/{name}/json` (names contain slashes, so the route takes the rest).
pub async fn by_name(
    State(engine): State<AppState>,
    Extension(version): Extension<ApiVersion>,
    Path(rest): Path<String>,
) -> ApiResult<Response> {
    if let Some(name) = rest.strip_suffix("/json") {
        let image = engine.resolve_image(name)?;
        let mut value = serde_json::to_value(convert::image_inspect(&image))
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        crate::version::older_image_shape(version, &mut value);
        if version < ApiVersion(1, 45) {
            // Removed in 1.45; older clients read them.
            value["Container"] = serde_json::json!("");
            value["ContainerConfig"] = value["Config"].clone();
        }
        return Ok(Json(value).into_response());
    }
    Err(ApiError::new(StatusCode::NOT_FOUND, "page not found"))
}

/// `POST /images/create` (pull): no registry client yet.
pub async fn pull() -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "Berth cannot pull images from registries yet: make an archive with `docker save` or `skopeo copy ... docker-archive:` and run `docker load -i FILE`",
    )
}
