//! `POST /containers/{id}/{action}`: what an operator may do to a container from the
//! console (the page asks for confirmation first), through the engine as the Docker API
//! does it. The answer is the refreshed list of containers, which htmx swaps in; an
//! error is shown above it.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::html;

use crate::Console;

/// The actions, as their path segment.
pub const ACTIONS: &[&str] = &[
    "start", "stop", "restart", "pause", "unpause", "kill", "remove",
];

pub(crate) async fn act(
    State(console): State<Arc<Console>>,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let engine = &console.engine;
    let done = match action.as_str() {
        "start" => engine.start_container(&id).await.map(|_| ()),
        "stop" => engine.stop_container(&id, None).await.map(|_| ()),
        "restart" => engine.restart_container(&id, None).await.map(|_| ()),
        "pause" => engine.pause_container(&id).await,
        "unpause" => engine.unpause_container(&id).await,
        "kill" => engine.kill_container(&id, "SIGKILL").await,
        "remove" => engine.remove_container_and_volumes(&id, true, false).await,
        _ => {
            return (
                StatusCode::NOT_FOUND,
                format!(
                    "no action {action}: the console does {}",
                    ACTIONS.join(", ")
                ),
            )
                .into_response()
        }
    };
    tracing::info!(container = %id, %action, ok = done.is_ok(), "console action");
    let list = crate::pages::container_list(&console);
    let body = match done {
        Ok(()) => list,
        Err(error) => html! {
            p role="alert" data-testid="action-error" { mark { (action) " failed: " (berth_engine::error_chain(&error)) } }
            (list)
        },
    };
    Html(body.into_string()).into_response()
}
