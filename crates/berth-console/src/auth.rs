//! Who may use the console: a client whose TLS certificate chains to the daemon's CA
//! (rustls verified it in the handshake; the certificate is asked for, not required),
//! a browser with a session cookie from `/login`, or a client that sends the token as
//! `Authorization: Bearer TOKEN`. Sessions live in memory: a daemon restart signs
//! everyone out. Actions (POST) also need `HX-Request` (htmx sends it) or the bearer
//! token: a form posted from another site can send neither.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::serve::IncomingStream;
use axum::Form;
use maud::html;
use rand::RngCore;
use serde::Deserialize;

use crate::Console;

/// The session cookie's name.
pub const COOKIE: &str = "berth_console";

/// What the connection itself proves.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub address: SocketAddr,
    /// The client presented a certificate that chains to the daemon's CA.
    pub certified: bool,
}

impl Connected<IncomingStream<'_, berth_api::TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, berth_api::TlsListener>) -> Self {
        Self {
            address: *stream.remote_addr(),
            certified: stream.io().get_ref().1.peer_certificates().is_some(),
        }
    }
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Self {
            address: *stream.remote_addr(),
            certified: false,
        }
    }
}

/// The token and the sessions signed in with it.
pub(crate) struct Sessions {
    token: String,
    /// Set `Secure` on the cookie (the console serves TLS).
    secure: bool,
    live: Mutex<HashSet<String>>,
}

impl Sessions {
    pub fn new(token: String, secure: bool) -> Self {
        Self {
            token,
            secure,
            live: Mutex::new(HashSet::new()),
        }
    }

    fn token_matches(&self, offered: &str) -> bool {
        constant_time_eq(offered.as_bytes(), self.token.as_bytes())
    }

    fn open(&self) -> String {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone());
        id
    }

    fn is_open(&self, id: &str) -> bool {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    fn close(&self, id: &str) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// Compares without returning early on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The session id in the request's cookies, if any.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Lets signed-in requests through; sends others to `/login` (pages) or answers 401.
pub(crate) async fn require_sign_in(
    State(console): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let by_token = bearer(headers).is_some_and(|token| console.auth.token_matches(token));
    let by_session = session_cookie(headers).is_some_and(|id| console.auth.is_open(&id));
    if !(peer.certified || by_token || by_session) {
        let wants_page = request.method() == Method::GET
            && headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|accept| accept.contains("text/html"))
            && !headers.contains_key("HX-Request");
        if wants_page {
            return Redirect::to("/login").into_response();
        }
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "sign in: a client certificate of the daemon's CA, the console's token as a bearer token, or /login\n",
        )
            .into_response();
    }
    if request.method() == Method::POST && !by_token && !headers.contains_key("HX-Request") {
        return (
            StatusCode::FORBIDDEN,
            "actions come from the console's page (HX-Request) or with the bearer token\n",
        )
            .into_response();
    }
    next.run(request).await
}

/// The sign-in form.
pub(crate) async fn login_page() -> Html<String> {
    Html(login_form(None))
}

fn login_form(error: Option<&str>) -> String {
    crate::pages::layout(
        "Sign in",
        html! {
            article {
                h2 { "Sign in to Berth's console" }
                @if let Some(error) = error { p role="alert" { mark { (error) } } }
                form method="post" action="/login" {
                    label { "Token"
                        input type="password" name="token" autocomplete="current-password" required;
                    }
                    button type="submit" { "Sign in" }
                }
                small { "The token is in the file the daemon named when it started (or the one given with --console-token-file). A client certificate of the daemon's CA signs in without it." }
            }
        },
    )
    .into_string()
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    token: String,
}

/// Checks the token; on success opens a session and goes to the overview.
pub(crate) async fn login(
    State(console): State<Arc<Console>>,
    Form(form): Form<LoginForm>,
) -> Response {
    if !console.auth.token_matches(form.token.trim()) {
        return (
            StatusCode::UNAUTHORIZED,
            Html(login_form(Some("That is not the console's token."))),
        )
            .into_response();
    }
    let id = console.auth.open();
    let secure = if console.auth.secure { "; Secure" } else { "" };
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{secure}"),
        )],
        Redirect::to("/"),
    )
        .into_response()
}

/// Ends the session.
pub(crate) async fn logout(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        console.auth.close(&id);
    }
    (
        [
            (
                header::SET_COOKIE,
                format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"),
            ),
            (
                header::HeaderName::from_static("hx-redirect"),
                "/login".to_owned(),
            ),
        ],
        Redirect::to("/login"),
    )
        .into_response()
}

/// A new random token (64 hex digits), for a daemon given none.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_tokens_are_read_and_compared() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; berth_console=abc; b=2".parse().unwrap(),
        );
        assert_eq!(session_cookie(&headers).as_deref(), Some("abc"));
        headers.insert(header::AUTHORIZATION, "Bearer t0k".parse().unwrap());
        assert_eq!(bearer(&headers), Some("t0k"));
        let sessions = Sessions::new("secret".into(), true);
        assert!(sessions.token_matches("secret"));
        assert!(!sessions.token_matches("secreT"));
        assert!(!sessions.token_matches("secret2"));
        let id = sessions.open();
        assert!(sessions.is_open(&id));
        sessions.close(&id);
        assert!(!sessions.is_open(&id));
        assert_eq!(new_token().len(), 64);
    }
}
