//! The operator's console (`berth daemon --console ADDRESS`): every container as the VM
//! it runs in, the templates it is cloned from, networks, volumes and events, in a web
//! page that updates itself; and Prometheus metrics at `/metrics`.
//!
//! Contracts:
//! - **Off by default.** Served on one TCP address, with TLS when the daemon has a
//!   certificate (`--tlscert`, `--tlskey`); plain HTTP only on a loopback address.
//! - **Sign-in** ([`auth`]): a client certificate that chains to `--tlscacert` (asked for,
//!   not required), or the console's token: typed into `/login` (a session cookie,
//!   `HttpOnly`, `SameSite=Strict`, `Secure` under TLS) or sent as `Authorization: Bearer
//!   TOKEN` (Prometheus's `authorization` setting). Everything but `/login` and
//!   `/assets/` needs one of them. Actions are POSTs that also need htmx's `HX-Request`
//!   header or the bearer token, which a cross-site form cannot send.
//! - **Pages** ([`pages`]) are HTML rendered here (maud); htmx (vendored under `assets/`,
//!   see `assets/VENDORED.md`) swaps fragments in every 2 s and appends what the server
//!   sends on event streams (SSE: events, a container's log, its VM's console log). Pico's
//!   stylesheet makes the same page usable at phone width. No script of the console's own.
//! - **Actions** ([`actions`]): start, stop, restart, pause, unpause, kill, remove, each
//!   behind a confirmation in the page, through the engine as the Docker API does them.
//! - **Metrics** ([`metrics`]): OpenMetrics text (prometheus-client): the engine's own
//!   (starts, templates, agent errors, API requests) and each running container VM's CPU
//!   seconds, private and shared memory, disk and network bytes, read at scrape time.

pub mod actions;
pub mod auth;
pub mod live;
pub mod metrics;
pub mod pages;
pub mod sampler;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use berth_engine::Engine;
use tokio::net::TcpListener;

/// How the console is served.
pub struct ConsoleConfig {
    /// TLS (the daemon's certificate; client certificates asked for when it has a CA).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The sign-in token.
    pub token: String,
}

/// Why the console could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("the console serves plain HTTP on a loopback address only; give the daemon --tlscert and --tlskey to serve {0}")]
    PlainBeyondLoopback(SocketAddr),
    #[error("serving the console")]
    Serve(#[source] std::io::Error),
}

/// What every handler shares.
pub struct Console {
    pub engine: Arc<Engine>,
    pub(crate) auth: auth::Sessions,
    pub(crate) samples: sampler::CpuSamples,
}

/// The console's routes over `console`.
pub fn router(console: Arc<Console>) -> Router {
    let signed_in = Router::new()
        .route("/", get(pages::overview))
        .route("/fragments/containers", get(pages::containers_fragment))
        .route("/fragments/templates", get(pages::templates_fragment))
        .route("/containers/{id}", get(pages::container_page))
        .route("/containers/{id}/{action}", post(actions::act))
        .route("/events/stream", get(live::events))
        .route("/containers/{id}/logs/stream", get(live::logs))
        .route("/containers/{id}/console/stream", get(live::console_log))
        .route("/metrics", get(metrics::metrics))
        .route("/logout", post(auth::logout))
        .route_layer(axum::middleware::from_fn_with_state(
            console.clone(),
            auth::require_sign_in,
        ));
    Router::new()
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/assets/{file}", get(pages::asset))
        .merge(signed_in)
        .with_state(console)
}

/// Serves the console on `listener` until `shutdown` resolves.
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    config: ConsoleConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ConsoleError> {
    let address = listener.local_addr().map_err(ConsoleError::Serve)?;
    if config.tls.is_none() && !address.ip().is_loopback() {
        return Err(ConsoleError::PlainBeyondLoopback(address));
    }
    let console = Arc::new(Console {
        auth: auth::Sessions::new(config.token, config.tls.is_some()),
        samples: sampler::CpuSamples::default(),
        engine,
    });
    sampler::start(console.clone());
    let app = router(console);
    match config.tls {
        Some(tls) => axum::serve(
            berth_api::TlsListener::new(listener, tls),
            app.into_make_service_with_connect_info::<auth::Peer>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ConsoleError::Serve),
        None => axum::serve(
            listener,
            app.into_make_service_with_connect_info::<auth::Peer>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ConsoleError::Serve),
    }
}
