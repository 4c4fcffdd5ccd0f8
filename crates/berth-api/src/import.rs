//! `docker import` (`POST /images/create?fromSrc=-`), and [`spool`], which saves a request
//! body to a temporary file for it and for `docker load`.
//!
//! It sits apart from the two route modules that need it so that they depend on each
//! other one way only: [`crate::registry`] hands the `fromSrc` form of `/images/create`
//! to [`import`]; [`crate::images`] spools the archive of `/images/load` (and re-exports
//! [`import`] where it used to be) and hands `/images/{name}/push` to `registry`, never
//! the reverse.

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Spools a request body to a temporary file under the daemon's root (archives are read
/// more than once, and a file keeps memory flat).
pub(crate) async fn spool(engine: &AppState, body: Body) -> ApiResult<tempfile::NamedTempFile> {
    let internal =
        |e: std::io::Error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let spool_dir = engine.root().join("tmp");
    tokio::fs::create_dir_all(&spool_dir)
        .await
        .map_err(internal)?;
    let spool = tempfile::NamedTempFile::new_in(&spool_dir).map_err(internal)?;
    let mut file = tokio::fs::File::from_std(spool.reopen().map_err(internal)?);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        file.write_all(&chunk).await.map_err(internal)?;
    }
    file.flush().await.map_err(internal)?;
    Ok(spool)
}

/// `POST /images/create?fromSrc=-&repo=&tag=&message=&changes=...` (`docker import`):
/// the body is a root filesystem tarball. `changes` repeats, so the raw query is parsed.
pub async fn import(engine: AppState, query: Option<String>, body: Body) -> ApiResult<Response> {
    let query = crate::filters::QueryPairs::parse(query.as_deref())?;
    if query.get("fromSrc") != "-" {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "Berth imports from the request body only (docker import FILE, or - for stdin); it does not download from URLs",
        ));
    }
    let spooled = spool(&engine, body).await?;
    let id = engine
        .import_image(
            spooled.path().to_path_buf(),
            query.all("changes"),
            query.get("message"),
            query.reference(),
        )
        .await?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        format!("{}\r\n", json!({ "status": id })),
    )
        .into_response())
}
