//! Events to containerd (`/tasks/create`, `/tasks/start`, `/tasks/exit`, ...), forwarded
//! over containerd's ttrpc socket (`TTRPC_ADDRESS`) as `containerd.services.events.ttrpc.
//! v1.Events/Forward` envelopes whose event is a protobuf `Any` named by the message's
//! full name (`containerd.events.TaskExit`).
//!
//! One thread sends them in order: a task API call never waits on containerd (which may
//! be waiting on that very call). An event that cannot be sent is logged and dropped;
//! containerd learns a task's state from the task API as well. Before the shim exits,
//! [`Publisher::flush`] sends what is queued (the last task's delete, say).

use std::sync::mpsc;
use std::time::Duration;

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::ttrpc::context;
use containerd_shim_protos::{Client, EventsClient};

use crate::service::timestamp_now;

/// A task event and its topic.
pub(crate) enum TaskEvent {
    Create(TaskCreate),
    Start(TaskStart),
    Exit(TaskExit),
    Delete(TaskDelete),
    ExecAdded(TaskExecAdded),
    ExecStarted(TaskExecStarted),
    Paused(TaskPaused),
    Resumed(TaskResumed),
}

impl TaskEvent {
    fn topic(&self) -> &'static str {
        match self {
            TaskEvent::Create(_) => "/tasks/create",
            TaskEvent::Start(_) => "/tasks/start",
            TaskEvent::Exit(_) => "/tasks/exit",
            TaskEvent::Delete(_) => "/tasks/delete",
            TaskEvent::ExecAdded(_) => "/tasks/exec-added",
            TaskEvent::ExecStarted(_) => "/tasks/exec-started",
            TaskEvent::Paused(_) => "/tasks/paused",
            TaskEvent::Resumed(_) => "/tasks/resumed",
        }
    }

    fn message(&self) -> &dyn MessageDyn {
        match self {
            TaskEvent::Create(event) => event,
            TaskEvent::Start(event) => event,
            TaskEvent::Exit(event) => event,
            TaskEvent::Delete(event) => event,
            TaskEvent::ExecAdded(event) => event,
            TaskEvent::ExecStarted(event) => event,
            TaskEvent::Paused(event) => event,
            TaskEvent::Resumed(event) => event,
        }
    }
}

/// What the publisher's thread is handed.
enum Queued {
    Event(TaskEvent),
    /// Answered once every event queued before it is sent (or dropped).
    Flush(mpsc::Sender<()>),
}

/// Sends events to containerd from a thread of its own.
#[derive(Clone)]
pub(crate) struct Publisher {
    queue: mpsc::Sender<Queued>,
}

impl Publisher {
    /// A publisher to containerd's ttrpc socket at `address` (a path), in `namespace`.
    /// With no address (a shim run by hand), events are dropped.
    pub fn new(address: Option<String>, namespace: String) -> Self {
        let (queue, queued) = mpsc::channel::<Queued>();
        std::thread::spawn(move || {
            let client = address.and_then(|address| {
                let address = match address.starts_with("unix://") {
                    true => address,
                    false => format!("unix://{address}"),
                };
                Client::connect(&address)
                    .map_err(|error| tracing::warn!("events: connecting to {address}: {error}"))
                    .ok()
                    .map(EventsClient::new)
            });
            for item in queued {
                match item {
                    Queued::Event(event) => {
                        let Some(client) = &client else { continue };
                        if let Err(error) = forward(client, &namespace, &event) {
                            tracing::warn!("events: {}: {error}", event.topic());
                        }
                    }
                    Queued::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Publisher { queue }
    }

    pub fn publish(&self, event: TaskEvent) {
        let _ = self.queue.send(Queued::Event(event));
    }

    /// Waits, at most `limit`, until every event published so far is sent; false when
    /// the limit passed first.
    pub fn flush(&self, limit: Duration) -> bool {
        let (done, flushed) = mpsc::channel();
        if self.queue.send(Queued::Flush(done)).is_err() {
            return true;
        }
        flushed.recv_timeout(limit).is_ok()
    }
}

fn forward(
    client: &EventsClient,
    namespace: &str,
    event: &TaskEvent,
) -> Result<(), containerd_shim_protos::ttrpc::Error> {
    let message = event.message();
    let mut any = Any::new();
    any.type_url = message.descriptor_dyn().full_name().to_owned();
    any.value = message
        .write_to_bytes_dyn()
        .map_err(|error| containerd_shim_protos::ttrpc::Error::Others(error.to_string()))?;
    let mut envelope = Envelope::new();
    envelope.set_topic(event.topic().to_owned());
    envelope.set_namespace(namespace.to_owned());
    envelope.timestamp = Some(timestamp_now()).into();
    envelope.event = Some(any).into();
    let mut request = ForwardRequest::new();
    request.envelope = Some(envelope).into();
    client.forward(
        context::with_timeout(Duration::from_secs(5).as_nanos() as i64),
        &request,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_returns_once_what_was_published_before_it_is_handled() {
        let publisher = Publisher::new(None, "test".into());
        for _ in 0..3 {
            publisher.publish(TaskEvent::Create(TaskCreate::new()));
        }
        assert!(publisher.flush(Duration::from_secs(5)));
    }
}
