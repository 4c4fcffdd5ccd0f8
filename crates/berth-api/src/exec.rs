//! `/containers/{id}/exec` and `/exec/{id}/...`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bollard_stubs::models::{ExecConfig, ExecInspectResponse, ExecStartConfig, ProcessConfig};

use crate::error::{ApiError, ApiResult};
use crate::streams::{pump, upgraded_response, write_and_close, Encoding};
use crate::AppState;

fn parse<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON in request body: {e}")))
}

/// `POST /containers/{id}/exec`.
pub async fn create(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let config: ExecConfig = parse(&body)?;
    let exec_id = engine.create_exec(&id, config)?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "Id": exec_id })),
    )
        .into_response())
}

/// `POST /exec/{id}/start`: detached, or attached over a hijacked connection.
pub async fn start(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
    let start: ExecStartConfig = parse(&bytes)?;
    let mut request = Request::from_parts(parts, axum::body::Body::empty());
    let exec = engine.exec(&id)?;
    if start.detach.unwrap_or(false) {
        engine.start_exec(&id).await?;
        return Ok(StatusCode::OK.into_response());
    }
    let detach_keys = crate::streams::parse_detach_keys(exec.config.detach_keys.as_deref())?;
    let encoding = Encoding {
        stdout: exec.config.attach_stdout.unwrap_or(true),
        stderr: exec.config.attach_stderr.unwrap_or(true),
        // As Docker: the exec's terminal is decided at create; the start's `Tty` only
        // tells what the client expects.
        tty: exec.config.tty.unwrap_or(false),
    };
    if request.headers().get(axum::http::header::UPGRADE).is_none() {
        let attachment = engine.start_exec(&id).await?;
        return Ok(crate::streams::serve_attachment(
            &mut request,
            attachment,
            encoding,
            true,
            detach_keys,
        ));
    }
    // Hijack first, then start, as Docker does: a process that cannot start reports its
    // error as output, and its exit code (126/127) through `GET /exec/{id}/json`.
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::warn!(%error, "exec upgrade failed");
                return;
            }
        };
        match engine.start_exec(&id).await {
            Ok(attachment) => pump(upgraded, attachment, encoding, true, detach_keys).await,
            Err(error) => {
                let message = format!("{}\r\n", berth_engine::error_chain(&error));
                write_and_close(upgraded, encoding, &message).await
            }
        }
    });
    Ok(upgraded_response(encoding))
}

/// `GET /exec/{id}/json`.
pub async fn inspect(
    State(engine): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let exec = engine.exec(&id)?;
    let state = exec.snapshot();
    let cmd = exec.config.cmd.clone().unwrap_or_default();
    Ok(Json(ExecInspectResponse {
        can_remove: Some(false),
        detach_keys: Some(String::new()),
        id: Some(exec.id.clone()),
        running: Some(state.running),
        exit_code: state.exit_code,
        process_config: Some(ProcessConfig {
            privileged: Some(false),
            user: exec.config.user.clone(),
            tty: exec.config.tty,
            entrypoint: cmd.first().cloned(),
            arguments: Some(cmd.iter().skip(1).cloned().collect()),
        }),
        open_stdin: exec.config.attach_stdin,
        open_stderr: exec.config.attach_stderr,
        open_stdout: exec.config.attach_stdout,
        container_id: Some(exec.container_id.clone()),
        pid: Some(i64::from(state.pid)),
    })
    .into_response())
}

/// `POST /exec/{id}/resize`.
pub async fn resize(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    let (rows, cols) = crate::containers::terminal_size(&params)?;
    engine.resize_exec(&id, rows, cols).await?;
    Ok(StatusCode::OK)
}
