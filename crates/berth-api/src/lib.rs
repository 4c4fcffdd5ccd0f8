//! The Docker Engine API, as Berth serves it on a unix socket.
//!
//! Routes are grouped by resource: [`system`] (`/_ping`, `/version`, `/info`),
//! [`images`], [`containers`], and [`streams`] (attach with its hijacked connection, and
//! logs). Requests are first stripped of their `/v1.NN` prefix ([`version`]); errors
//! become Docker's `{"message": ...}` bodies in one place ([`error`]). This layer knows
//! nothing about VMs: it speaks to `berth-engine` only.

pub mod archive;
pub mod build;
pub mod containers;
pub mod convert;
pub mod error;
pub mod events;
pub mod exec;
pub mod filters;
pub mod images;
mod import;
mod listen;

pub use listen::{bind_tcp, serve_tcp, serve_unix, tls_config, TlsError, TlsFiles, TlsListener};
pub mod manage;
pub mod networks;
pub mod registry;
pub mod stats;
pub mod streams;
pub mod system;
pub mod version;
pub mod volumes;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use axum::Router;
use berth_engine::Engine;

/// Shared state of the handlers.
pub type AppState = Arc<Engine>;

/// The router for all supported endpoints (on unversioned paths).
pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/_ping", get(system::ping).head(system::ping))
        .route("/version", get(system::version))
        .route("/info", get(system::info))
        .route("/images/load", post(images::load))
        .route("/images/json", get(images::list))
        .route("/images/create", post(registry::create))
        .route("/auth", post(registry::auth))
        .route("/distribution/{*rest}", get(registry::distribution))
        .route("/images/prune", post(images::prune))
        .route("/images/get", get(images::save_many))
        .route("/system/df", get(images::system_df))
        .route(
            "/images/{*rest}",
            get(images::by_name)
                .post(images::post_by_name)
                .delete(images::remove),
        )
        .route("/containers/create", post(containers::create))
        .route("/containers/json", get(containers::list))
        .route("/containers/prune", post(manage::prune))
        .route("/containers/{id}/restart", post(manage::restart))
        .route("/containers/{id}/rename", post(manage::rename))
        .route("/containers/{id}/top", get(manage::top))
        .route("/containers/{id}/update", post(manage::update))
        .route("/containers/{id}/json", get(containers::inspect))
        .route("/containers/{id}/start", post(containers::start))
        .route("/containers/{id}/wait", post(containers::wait))
        .route("/containers/{id}/kill", post(containers::kill))
        .route("/containers/{id}/stop", post(containers::stop))
        .route("/containers/{id}/resize", post(containers::resize))
        .route("/containers/{id}/pause", post(containers::pause))
        .route("/containers/{id}/unpause", post(containers::unpause))
        .route("/containers/{id}/attach", post(streams::attach))
        .route("/containers/{id}/logs", get(streams::logs))
        .route("/containers/{id}/stats", get(stats::stats))
        .route("/containers/{id}", delete(containers::remove))
        .route(
            "/containers/{linker}/{alias}",
            delete(containers::remove_link),
        )
        .route(
            "/containers/{id}/archive",
            get(archive::get).head(archive::head).put(archive::put),
        )
        .route("/containers/{id}/export", get(archive::export))
        .route("/containers/{id}/changes", get(archive::changes))
        .route("/commit", post(archive::commit))
        .route("/containers/{id}/exec", post(exec::create))
        .route("/exec/{id}/start", post(exec::start))
        .route("/exec/{id}/json", get(exec::inspect))
        .route("/exec/{id}/resize", post(exec::resize))
        .route("/volumes", get(volumes::list))
        .route("/volumes/create", post(volumes::create))
        .route("/volumes/prune", post(volumes::prune))
        .route(
            "/volumes/{name}",
            get(volumes::inspect).delete(volumes::remove),
        )
        .route("/networks", get(networks::list))
        .route("/networks/create", post(networks::create))
        .route("/networks/prune", post(networks::prune))
        .route(
            "/networks/{id}",
            get(networks::inspect).delete(networks::remove),
        )
        .route("/networks/{id}/connect", post(networks::connect))
        .route("/networks/{id}/disconnect", post(networks::disconnect))
        .route("/events", get(events::events))
        .route("/build", post(build::build))
        .route("/build/prune", post(build::prune))
        .route("/session", any(build::session_unavailable))
        .route("/plugins", get(system::plugins_list))
        .route(
            "/plugins/{*rest}",
            get(system::plugin_not_found).fallback(system::plugins_unavailable),
        )
        .route("/swarm", any(system::swarm_unavailable))
        .route("/swarm/{*rest}", any(system::swarm_unavailable))
        .route("/nodes/{*rest}", any(system::swarm_unavailable))
        .route("/services/{*rest}", any(system::swarm_unavailable))
        .route("/tasks", any(system::swarm_unavailable))
        .route("/tasks/{*rest}", any(system::swarm_unavailable))
        .route("/secrets", any(system::swarm_unavailable))
        .route("/secrets/{*rest}", any(system::swarm_unavailable))
        .route("/configs", any(system::swarm_unavailable))
        .route("/configs/{*rest}", any(system::swarm_unavailable))
        .route("/nodes", any(system::swarm_unavailable))
        .route("/services", any(system::swarm_unavailable))
        .route_layer(axum::middleware::from_fn_with_state(
            engine.clone(),
            count_request,
        ))
        .fallback(not_found)
        .with_state(engine)
}

/// Counts each answered request by method, route pattern and status (the engine's
/// `berth_api_requests_total`).
async fn count_request(
    axum::extract::State(engine): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = request.method().clone();
    let path = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    engine
        .metrics()
        .api_request(method.as_str(), &path, response.status().as_u16());
    response
}

async fn not_found() -> Response {
    error::ApiError::new(StatusCode::NOT_FOUND, "page not found").into_response()
}
