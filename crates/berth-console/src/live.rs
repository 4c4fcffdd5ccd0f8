//! What the console's pages follow live, as server-sent events that htmx's SSE
//! extension appends to the page: the engine's events (`event`), a container's log
//! (`line`: what its process wrote) and its VM's console log (`line`: the guest's serial
//! console, read from the file the VM process writes). Each message's data is HTML
//! (escaped text). A stream ends when its client goes away, or a container's log when
//! its process ends.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use berth_engine::LogFilter;
use futures_util::stream::{self, Stream, StreamExt};
use maud::html;

use crate::Console;

/// How much of a log is shown when a page opens.
const TAIL_LINES: usize = 200;
/// How much of the VM console's file is shown when a page opens.
const CONSOLE_TAIL_BYTES: u64 = 16 * 1024;
/// How often the VM console's file is read for more.
const CONSOLE_POLL: Duration = Duration::from_millis(500);

fn sse(stream: impl Stream<Item = Event> + Send + 'static) -> Response {
    Sse::new(stream.map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// One event as a list item: time, type, action, and the actor's name or id.
fn event_item(event: &berth_engine::events::Event) -> String {
    let time = chrono::DateTime::from_timestamp(event.time, 0)
        .map(|t| t.format("%H:%M:%S").to_string())
        .unwrap_or_default();
    let actor = event
        .actor
        .attributes
        .get("name")
        .cloned()
        .unwrap_or_else(|| event.actor.id.chars().take(12).collect());
    html! { li data-action=(event.action) { small { (time) } " " (event.kind) " " strong { (event.action) } " " (actor) } }
        .into_string()
}

/// `GET /events/stream`: the last events, then each new one.
pub(crate) async fn events(State(console): State<Arc<Console>>) -> Response {
    let (past, live) = console.engine.events().subscribe();
    let past: Vec<Event> = past
        .iter()
        .rev()
        .take(20)
        .rev()
        .map(|event| Event::default().event("event").data(event_item(event)))
        .collect();
    let live = tokio_stream::wrappers::BroadcastStream::new(live).filter_map(|event| async move {
        event
            .ok()
            .map(|event| Event::default().event("event").data(event_item(&event)))
    });
    sse(stream::iter(past).chain(live))
}

/// Text as escaped HTML lines, one message per line.
fn lines_of(bytes: &[u8]) -> Vec<Event> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|line| {
            Event::default()
                .event("line")
                .data(html! { (line) "\n" }.into_string())
        })
        .collect()
}

/// `GET /containers/{id}/logs/stream`: the log's last lines, then what the running
/// process writes.
pub(crate) async fn logs(State(console): State<Arc<Console>>, Path(id): Path<String>) -> Response {
    let filter = LogFilter {
        stdout: true,
        stderr: true,
        tail: Some(TAIL_LINES),
        ..Default::default()
    };
    let logs = match console.engine.container_logs(&id, &filter, true) {
        Ok(logs) => logs,
        Err(error) => return (StatusCode::NOT_FOUND, error.to_string()).into_response(),
    };
    let past: Vec<Event> = logs
        .entries
        .iter()
        .flat_map(|entry| lines_of(&entry.data))
        .collect();
    let live = match logs.live {
        Some(receiver) => tokio_stream::wrappers::UnboundedReceiverStream::new(receiver)
            .flat_map(|chunk| stream::iter(lines_of(&chunk.data)))
            .boxed(),
        None => stream::empty().boxed(),
    };
    sse(stream::iter(past).chain(live))
}

/// `GET /containers/{id}/console/stream`: the end of the VM's console log, then what
/// the guest writes to its serial console.
pub(crate) async fn console_log(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
) -> Response {
    let record = match console.engine.inspect_container(&id) {
        Ok(record) => record,
        Err(error) => return (StatusCode::NOT_FOUND, error.to_string()).into_response(),
    };
    let path = console.engine.vm_console_log(&record);
    let start = std::fs::metadata(&path).map_or(0, |m| m.len().saturating_sub(CONSOLE_TAIL_BYTES));
    let follow = stream::unfold((path, start), |(path, offset)| async move {
        loop {
            match read_from(&path, offset) {
                Some(bytes) if !bytes.is_empty() => {
                    let next = offset + bytes.len() as u64;
                    return Some((stream::iter(lines_of(&bytes)), (path, next)));
                }
                _ => tokio::time::sleep(CONSOLE_POLL).await,
            }
        }
    })
    .flatten();
    sse(follow)
}

/// What the file at `path` holds from `offset` on, at most 64 KiB of it.
fn read_from(path: &PathBuf, offset: u64) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut bytes = Vec::new();
    file.take(64 * 1024).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}
