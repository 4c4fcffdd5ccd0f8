//! `GET /events`: Docker's event stream, JSON objects one per line, with `since`,
//! `until` and `filters` (type, event, container, image, network, label, scope).

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use berth_engine::events::Event;

use crate::error::{ApiError, ApiResult};
use crate::filters::{label_matches, Filters};
use crate::manage::parse_until;
use crate::AppState;

type Params = Query<HashMap<String, String>>;

/// A time as nanoseconds since the epoch, from Docker's forms (`1700000000.123`,
/// RFC 3339, or a duration before now such as `10m`).
pub fn parse_time_nanos(value: &str, now: i64) -> Result<i64, ApiError> {
    if let Some((seconds, fraction)) = value.split_once('.') {
        if let (Ok(seconds), Ok(_)) = (seconds.parse::<i64>(), fraction.parse::<u64>()) {
            let digits: String = fraction
                .chars()
                .chain(std::iter::repeat('0'))
                .take(9)
                .collect();
            return Ok(seconds * 1_000_000_000 + digits.parse::<i64>().unwrap_or(0));
        }
    }
    Ok(parse_until(value, now)? * 1_000_000_000)
}

fn matches(filters: &Filters, event: &Event) -> bool {
    let attribute = |key: &str| event.actor.attributes.get(key).cloned().unwrap_or_default();
    filters.allows("type", |v| v == event.kind)
        && filters.allows("event", |v| {
            event.action == v || event.action.split(':').next() == Some(v)
        })
        && filters.allows("container", |v| {
            event.kind == "container" && (event.actor.id.starts_with(v) || attribute("name") == v)
        })
        && filters.allows("image", |v| {
            (event.kind == "image" && (event.actor.id == v || attribute("name") == v))
                || (event.kind == "container" && attribute("image") == v)
        })
        && filters.allows("network", |v| {
            event.kind == "network" && (event.actor.id.starts_with(v) || attribute("name") == v)
        })
        && filters.allows("label", |v| label_matches(&event.actor.attributes, v))
        && filters.allows("scope", |v| v == "local")
}

fn line(event: &Event) -> Bytes {
    let mut json = serde_json::to_vec(event).unwrap_or_default();
    json.push(b'\n');
    Bytes::from(json)
}

/// `GET /events`.
pub async fn events(State(engine): State<AppState>, Query(params): Params) -> ApiResult<Response> {
    let filters = Filters::parse(params.get("filters"))?;
    filters.only(&[
        "type",
        "event",
        "container",
        "image",
        "network",
        "label",
        "scope",
        "volume",
        "daemon",
        "plugin",
        "node",
        "service",
        "secret",
        "config",
    ])?;
    let now = chrono::Utc::now();
    let now_seconds = now.timestamp();
    let since = match params.get("since").filter(|s| !s.is_empty()) {
        Some(value) => Some(parse_time_nanos(value, now_seconds)?),
        None => None,
    };
    let until = match params.get("until").filter(|s| !s.is_empty()) {
        Some(value) => Some(parse_time_nanos(value, now_seconds)?),
        None => None,
    };
    let (past, mut live) = engine.events().subscribe();
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(64);
    let backlog: Vec<Bytes> = match since {
        Some(since) => past
            .iter()
            .filter(|e| e.time_nano >= since && until.is_none_or(|u| e.time_nano <= u))
            .filter(|e| matches(&filters, e))
            .map(line)
            .collect(),
        None => Vec::new(),
    };
    tokio::spawn(async move {
        for item in backlog {
            if sender.send(item).await.is_err() {
                return;
            }
        }
        let deadline = until.map(|until| {
            let wait = (until - chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)).max(0);
            tokio::time::Instant::now() + std::time::Duration::from_nanos(wait as u64)
        });
        loop {
            let next = async {
                match deadline {
                    Some(deadline) => tokio::time::timeout_at(deadline, live.recv()).await.ok(),
                    None => Some(live.recv().await),
                }
            };
            match next.await {
                None => return, // until reached
                Some(Ok(event)) => {
                    if until.is_some_and(|u| event.time_nano > u) {
                        return;
                    }
                    if matches(&filters, &event) && sender.send(line(&event)).await.is_err() {
                        return;
                    }
                }
                Some(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                Some(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|item| (Ok::<_, std::io::Error>(item), receiver))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_docker_forms() {
        assert_eq!(parse_time_nanos("12.5", 0).unwrap(), 12_500_000_000);
        assert_eq!(parse_time_nanos("12", 0).unwrap(), 12_000_000_000);
        assert_eq!(parse_time_nanos("1m", 100).unwrap(), 40_000_000_000);
        assert!(parse_time_nanos("later", 0).is_err());
    }
}
