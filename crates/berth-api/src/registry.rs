//! Registry endpoints: `POST /images/create` (pull), `POST /images/{name}/push` and
//! `POST /auth` (login), and the JSON progress stream they answer with.
//!
//! # Credentials
//!
//! The CLI sends what `docker login` stored in the `X-Registry-Auth` header: base64url
//! (padded or not) of a JSON `AuthConfig` (`username`, `password`, `auth` =
//! base64(`user:pass`), `identitytoken`, `registrytoken`, `serveraddress`). A missing or
//! empty header means anonymous access; a header that does not decode is a 400.
//!
//! # Progress stream
//!
//! Newline-delimited JSON messages as dockerd writes them: `{"status", "id",
//! "progressDetail": {"current", "total"}, "progress"}` while layers move, a final
//! `Status:` line (pull) or `aux` record (push), and `{"errorDetail": {"message"},
//! "error"}` for a failure after the stream began. A failure before the first message
//! (an unknown image, refused credentials) is an ordinary HTTP error, as with dockerd.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Query, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use berth_engine::registry::{Credentials, Progress};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Docker's `AuthConfig` (types.go), the fields Berth reads.
#[derive(Debug, Default, Deserialize)]
struct AuthConfig {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    auth: String,
    #[serde(default, rename = "serveraddress")]
    server_address: String,
    #[serde(default, rename = "identitytoken")]
    identity_token: String,
    #[serde(default, rename = "registrytoken")]
    registry_token: String,
}

impl AuthConfig {
    fn credentials(&self) -> Result<Credentials, ApiError> {
        if !self.registry_token.is_empty() {
            return Ok(Credentials::Bearer(self.registry_token.clone()));
        }
        if !self.identity_token.is_empty() {
            // An OAuth refresh token: the registry's token service takes it as the
            // password of a basic login (Docker's `<token>` user).
            return Ok(Credentials::Basic {
                username: "<token>".into(),
                password: self.identity_token.clone(),
            });
        }
        let (username, password) = if self.username.is_empty() && !self.auth.is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .map_err(|_| ApiError::bad_request("invalid auth configuration: bad auth field"))?;
            let text = String::from_utf8(decoded)
                .map_err(|_| ApiError::bad_request("invalid auth configuration: bad auth field"))?;
            let (user, pass) = text.split_once(':').ok_or_else(|| {
                ApiError::bad_request("invalid auth configuration: bad auth field")
            })?;
            (user.to_owned(), pass.to_owned())
        } else {
            (self.username.clone(), self.password.clone())
        };
        if username.is_empty() {
            return Ok(Credentials::Anonymous);
        }
        Ok(Credentials::Basic { username, password })
    }
}

/// Decodes `X-Registry-Auth`.
fn header_credentials(headers: &HeaderMap) -> Result<Credentials, ApiError> {
    let Some(value) = headers.get("x-registry-auth") else {
        return Ok(Credentials::Anonymous);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::bad_request("invalid X-Registry-Auth header"))?
        .trim();
    if text.is_empty() {
        return Ok(Credentials::Anonymous);
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(text))
        .map_err(|_| ApiError::bad_request("invalid X-Registry-Auth header: not base64"))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Credentials::Anonymous);
    }
    let config: AuthConfig = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid X-Registry-Auth header: {e}")))?;
    config.credentials()
}

/// Decodes `X-Registry-Config` (what `/build` gets): base64 of a JSON map from registry
/// to `AuthConfig`, keyed here by registry domain (`localhost:5000`; Docker Hub's
/// `https://index.docker.io/v1/` is `docker.io`). A missing header is no credentials.
pub(crate) fn registry_config_credentials(
    headers: &HeaderMap,
) -> Result<HashMap<String, Credentials>, ApiError> {
    let invalid =
        |why: String| ApiError::bad_request(format!("invalid X-Registry-Config header: {why}"));
    let Some(value) = headers.get("x-registry-config") else {
        return Ok(HashMap::new());
    };
    let text = value.to_str().map_err(|e| invalid(e.to_string()))?.trim();
    if text.is_empty() {
        return Ok(HashMap::new());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(text))
        .map_err(|_| invalid("not base64".into()))?;
    let configs: HashMap<String, AuthConfig> =
        serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    let mut credentials = HashMap::new();
    for (server, config) in configs {
        let host = server
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        let domain = match host {
            "index.docker.io" | "registry-1.docker.io" => "docker.io",
            other => other,
        };
        credentials.insert(domain.to_owned(), config.credentials()?);
    }
    Ok(credentials)
}

/// A message of a progress stream, or the failure that ends it.
enum Message {
    Line(Value),
    Failed(ApiError),
}

/// A Docker-style progress bar: `[=====>      ]  1.2MB/3.4MB`.
fn progress_bar(current: u64, total: Option<u64>) -> String {
    const WIDTH: u64 = 50;
    match total {
        Some(total) if total > 0 => {
            let done = (current.min(total) * WIDTH / total) as usize;
            let arrow = if done < WIDTH as usize { ">" } else { "" };
            format!(
                "[{}{arrow}{}] {:>8}/{}",
                "=".repeat(done),
                " ".repeat((WIDTH as usize).saturating_sub(done + arrow.len())),
                human_size(current),
                human_size(total)
            )
        }
        _ => human_size(current),
    }
}

/// Decimal units with four significant digits, as Docker's progress shows them.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    let decimals = if value >= 100.0 {
        1
    } else if value >= 10.0 {
        2
    } else {
        3
    };
    let mut text = format!("{value:.decimals$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_owned();
    }
    text + UNITS[unit]
}

pub(crate) fn progress_json(progress: &Progress) -> Value {
    let mut message = json!({ "status": progress.status });
    if let Some(id) = &progress.id {
        message["id"] = json!(id);
        message["progressDetail"] = json!({});
    }
    if let Some(current) = progress.current {
        let mut detail = json!({ "current": current });
        if let Some(total) = progress.total {
            detail["total"] = json!(total);
        }
        message["progressDetail"] = detail;
        message["progress"] = json!(progress_bar(current, progress.total));
    }
    message
}

/// Runs `work` (which reports through the sender it is given) and answers with its
/// progress stream; a failure before the first message is an HTTP error instead.
async fn progress_response<F>(
    work: impl FnOnce(mpsc::UnboundedSender<Message>) -> F,
) -> ApiResult<Response>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, mut receiver) = mpsc::unbounded_channel();
    tokio::spawn(work(sender));
    let first = match receiver.recv().await {
        Some(Message::Failed(error)) => return Err(error),
        Some(Message::Line(line)) => line,
        None => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the operation ended without a result",
            ))
        }
    };
    let rest = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let line = match receiver.recv().await? {
            Message::Line(line) => line,
            Message::Failed(error) => json!({
                "errorDetail": { "message": error.message },
                "error": error.message,
            }),
        };
        Some((line, receiver))
    });
    let lines = futures_util::stream::once(async move { first })
        .chain(rest)
        .map(|line| Ok::<_, std::convert::Infallible>(format!("{line}\r\n")));
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(lines),
    )
        .into_response())
}

/// The reporter a pull or push hands to the engine.
fn reporter(sender: &mpsc::UnboundedSender<Message>) -> impl Fn(Progress) + Send + Sync {
    let sender = sender.clone();
    move |progress| {
        let _ = sender.send(Message::Line(progress_json(&progress)));
    }
}

/// `POST /images/create?fromImage=NAME&tag=TAG`: pull. (`fromSrc`, import, is handed to
/// the `import` module.)
pub async fn create(
    State(engine): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    if params.get("fromSrc").is_some_and(|s| !s.is_empty()) {
        return crate::import::import(engine, query, body).await;
    }
    let from = params
        .get("fromImage")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request("fromImage or fromSrc is required"))?;
    if let Some(platform) = params.get("platform").filter(|p| !p.is_empty()) {
        if !matches!(platform.as_str(), "linux/amd64" | "linux" | "amd64") {
            return Err(ApiError::bad_request(format!(
                "Berth runs linux/amd64 images only; platform {platform:?} is not available"
            )));
        }
    }
    let reference = match params.get("tag").filter(|t| !t.is_empty()) {
        Some(tag) if tag.starts_with("sha256:") => format!("{from}@{tag}"),
        Some(tag) => format!("{from}:{tag}"),
        None => from.clone(),
    };
    let credentials = header_credentials(&headers)?;
    progress_response(move |sender| async move {
        let report = reporter(&sender);
        match engine.pull_image(&reference, &credentials, &report).await {
            Ok((reference, outcome)) => {
                let status = if outcome.up_to_date {
                    "Image is up to date for"
                } else {
                    "Downloaded newer image for"
                };
                let name = match &reference.digest {
                    Some(digest) => format!("{}@{digest}", reference.familiar_name()),
                    None => reference.familiar(),
                };
                let _ = sender.send(Message::Line(
                    json!({ "status": format!("Status: {status} {name}") }),
                ));
            }
            Err(error) => {
                let _ = sender.send(Message::Failed(error.into()));
            }
        }
    })
    .await
}

/// `POST /images/{name}/push?tag=TAG`.
pub async fn push(
    engine: AppState,
    name: &str,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let reference = match params.get("tag").filter(|t| !t.is_empty()) {
        Some(tag) => format!("{name}:{tag}"),
        None => name.to_owned(),
    };
    let credentials = header_credentials(headers)?;
    progress_response(move |sender| async move {
        let report = reporter(&sender);
        match engine.push_image(&reference, &credentials, &report).await {
            Ok(outcome) => {
                let _ = sender.send(Message::Line(json!({
                    "progressDetail": {},
                    "aux": { "Tag": outcome.tag, "Digest": outcome.digest, "Size": outcome.size },
                })));
            }
            Err(error) => {
                let _ = sender.send(Message::Failed(error.into()));
            }
        }
    })
    .await
}

/// `GET /distribution/{name}/json`: what the registry holds under a name (docker-py's
/// `get_registry_data`). The name may hold slashes, so the route takes the rest of the
/// path, which ends in `/json`.
pub async fn distribution(
    State(engine): State<AppState>,
    axum::extract::Path(rest): axum::extract::Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let name = rest
        .strip_suffix("/json")
        .filter(|name| !name.is_empty())
        .ok_or_else(|| ApiError::new(axum::http::StatusCode::NOT_FOUND, "page not found"))?;
    let credentials = header_credentials(&headers)?;
    let info = engine.distribution_info(name, &credentials).await?;
    Ok(Json(json!({
        "Descriptor": {
            "mediaType": info.media_type,
            "digest": info.digest,
            "size": info.size,
        },
        "Platforms": info.platforms.iter().map(|p| {
            let mut platform = json!({ "architecture": p.architecture, "os": p.os });
            if let Some(variant) = &p.variant {
                platform["variant"] = json!(variant);
            }
            platform
        }).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// `POST /auth`: `docker login`.
pub async fn auth(State(engine): State<AppState>, body: axum::body::Bytes) -> ApiResult<Response> {
    let config: AuthConfig = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid auth configuration: {e}")))?;
    let credentials = config.credentials()?;
    engine.login(&config.server_address, &credentials).await?;
    Ok(Json(json!({ "Status": "Login Succeeded", "IdentityToken": "" })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_auth_header_decodes_as_the_cli_encodes_it() {
        let mut headers = HeaderMap::new();
        let encoded = base64::engine::general_purpose::URL_SAFE
            .encode(br#"{"username":"alice","password":"pw","serveraddress":"127.0.0.1:5000"}"#);
        headers.insert("x-registry-auth", encoded.parse().expect("header"));
        assert_eq!(
            header_credentials(&headers).expect("decodes"),
            Credentials::Basic {
                username: "alice".into(),
                password: "pw".into()
            }
        );
        headers.insert("x-registry-auth", "e30=".parse().expect("header"));
        assert_eq!(
            header_credentials(&headers).expect("decodes"),
            Credentials::Anonymous
        );
        headers.insert("x-registry-auth", "!!!".parse().expect("header"));
        assert!(header_credentials(&headers).is_err());
        let auth = AuthConfig {
            auth: "Ym9iOnNlY3JldA==".into(),
            ..AuthConfig::default()
        };
        assert_eq!(
            auth.credentials().expect("decodes"),
            Credentials::Basic {
                username: "bob".into(),
                password: "secret".into()
            }
        );
    }

    #[test]
    fn progress_messages_look_like_dockers() {
        let message = progress_json(&Progress {
            id: Some("abc".into()),
            status: "Downloading".into(),
            current: Some(500_000),
            total: Some(1_000_000),
        });
        assert_eq!(message["progressDetail"]["current"], 500_000);
        assert_eq!(message["progressDetail"]["total"], 1_000_000);
        let bar = message["progress"].as_str().expect("bar");
        assert!(bar.starts_with("[=========================>"), "{bar}");
        assert!(bar.ends_with("500kB/1MB"), "{bar}");
        assert_eq!(human_size(1_234_567), "1.235MB");
        assert_eq!(human_size(999), "999B");
    }
}
