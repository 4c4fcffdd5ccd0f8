//! Docker's event stream: what happened to containers, images and networks, in order.
//!
//! Events are kept in memory: the last [`KEPT_EVENTS`] for clients that ask from a time
//! in the past (`--since`), and a broadcast channel for those that follow. Nothing is
//! written to disk (as with dockerd, events do not survive a daemon restart).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::lock;
use crate::records::ContainerRecord;

/// How many past events are kept.
pub const KEPT_EVENTS: usize = 1024;

/// One event, in the Engine API's shape (with the legacy `status`/`id`/`from` fields
/// that older clients read for containers and images).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "Action")]
    pub action: String,
    #[serde(rename = "Actor")]
    pub actor: Actor,
    pub scope: String,
    pub time: i64,
    #[serde(rename = "timeNano")]
    pub time_nano: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Attributes")]
    pub attributes: HashMap<String, String>,
}

/// The engine's events.
pub struct EventLog {
    kept: Mutex<VecDeque<Event>>,
    live: broadcast::Sender<Event>,
}

impl Default for EventLog {
    fn default() -> Self {
        Self {
            kept: Mutex::new(VecDeque::with_capacity(KEPT_EVENTS)),
            live: broadcast::channel(KEPT_EVENTS).0,
        }
    }
}

impl EventLog {
    pub fn emit(&self, kind: &str, action: &str, id: &str, attributes: HashMap<String, String>) {
        let now = chrono::Utc::now();
        let time_nano = now.timestamp_nanos_opt().unwrap_or(0);
        let legacy = matches!(kind, "container" | "image");
        let event = Event {
            kind: kind.to_owned(),
            action: action.to_owned(),
            status: legacy.then(|| action.to_owned()),
            id: legacy.then(|| id.to_owned()),
            from: (kind == "container")
                .then(|| attributes.get("image").cloned())
                .flatten(),
            actor: Actor {
                id: id.to_owned(),
                attributes,
            },
            scope: "local".into(),
            time: now.timestamp(),
            time_nano,
        };
        {
            let mut kept = lock(&self.kept);
            if kept.len() == KEPT_EVENTS {
                kept.pop_front();
            }
            kept.push_back(event.clone());
        }
        let _ = self.live.send(event);
    }

    /// A container event: its name, image and labels are its attributes, with `extra`.
    pub fn container(&self, record: &ContainerRecord, action: &str, extra: &[(&str, String)]) {
        let mut attributes: HashMap<String, String> =
            record.config.labels.clone().unwrap_or_default();
        attributes.insert("name".into(), record.name.clone());
        attributes.insert("image".into(), record.image_ref.clone());
        for (key, value) in extra {
            attributes.insert((*key).to_owned(), value.clone());
        }
        self.emit("container", action, &record.id, attributes);
    }

    /// Past events (oldest first) and a receiver of the ones to come, taken together so
    /// that none falls between them.
    pub fn subscribe(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let kept = lock(&self.kept);
        let receiver = self.live.subscribe();
        (kept.iter().cloned().collect(), receiver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_kept_and_broadcast() {
        let log = EventLog::default();
        log.emit(
            "network",
            "create",
            "n1",
            HashMap::from([("name".into(), "web".into())]),
        );
        let (past, mut live) = log.subscribe();
        assert_eq!(past.len(), 1);
        assert_eq!(past[0].status, None, "networks have no legacy fields");
        log.emit("image", "load", "sha256:1", HashMap::new());
        let next = live.try_recv().unwrap();
        assert_eq!(
            (next.kind.as_str(), next.action.as_str()),
            ("image", "load")
        );
        assert_eq!(next.status.as_deref(), Some("load"));
        for i in 0..KEPT_EVENTS + 5 {
            log.emit("image", "tag", &i.to_string(), HashMap::new());
        }
        assert_eq!(log.subscribe().0.len(), KEPT_EVENTS);
        let json = serde_json::to_value(&next).unwrap();
        assert_eq!(json["Actor"]["ID"], "sha256:1");
        assert!(json["timeNano"].as_i64().unwrap() > 0);
    }
}
