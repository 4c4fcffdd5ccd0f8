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

/// How long the rest of a request body is read (and dropped) after spooling it failed.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Spools a request body to a temporary file under the daemon's root (archives are read
/// more than once, and a file keeps memory flat).
///
/// When the file cannot be written (a full disk), the rest of the body is still read,
/// and dropped, for up to [`DRAIN_LIMIT`] before the error is answered: a client that is
/// still sending when the server stops reading gets a broken pipe instead of the error.
pub(crate) async fn spool(engine: &AppState, body: Body) -> ApiResult<tempfile::NamedTempFile> {
    let spool_dir = engine.root().join("tmp");
    let internal = |e: std::io::Error| {
        let error = ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("saving the upload under {}: {e}", spool_dir.display()),
        );
        crate::error::with_disk_full_hint(error, &e)
    };
    let mut stream = body.into_data_stream();
    let written: ApiResult<tempfile::NamedTempFile> = async {
        tokio::fs::create_dir_all(&spool_dir)
            .await
            .map_err(internal)?;
        let spool = tempfile::NamedTempFile::new_in(&spool_dir).map_err(internal)?;
        let mut file = tokio::fs::File::from_std(spool.reopen().map_err(internal)?);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
            file.write_all(&chunk).await.map_err(internal)?;
        }
        file.flush().await.map_err(internal)?;
        Ok(spool)
    }
    .await;
    if let Err(error) = &written {
        if error.status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %error.message, "spooling an upload failed");
            let drain = async { while let Some(Ok(_)) = stream.next().await {} };
            let _ = tokio::time::timeout(DRAIN_LIMIT, drain).await;
        }
    }
    written
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
