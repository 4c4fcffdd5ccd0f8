//! The protocol between Berth's engine (host) and its agent (guest PID 1).
//!
//! One byte stream (a virtio-serial port in the guest, a unix socket on the host) carries
//! a sequence of frames. Every frame is:
//!
//! ```text
//! offset size  field
//! 0      4     length: u32, little-endian: the number of bytes that follow this field
//! 4      4     stream: u32, little-endian: 0 for the agent itself, N for process N
//! 8      1     kind:   1 control (JSON message), 2 stdin, 3 stdout, 4 stderr,
//!                      5 FUSE (one message of a shared directory, either way)
//! 9      ...   payload: `length - 5` bytes
//! ```
//!
//! `length` is at least [`HEADER_AFTER_LEN`] and at most [`MAX_FRAME_LEN`]; a peer that
//! sends anything else is broken or hostile and the connection is dropped. Control
//! payloads are UTF-8 JSON of [`GuestMessage`] (guest to host) or [`HostMessage`]
//! (host to guest), at most [`MAX_CONTROL_LEN`] bytes. Data payloads are raw bytes.
//!
//! The guest speaks first: [`GuestMessage::Hello`] with its [`PROTOCOL_VERSION`]. The
//! host refuses a version it does not know. Then the host configures the guest
//! ([`HostMessage::Setup`]) and spawns processes ([`HostMessage::Spawn`]) on stream ids it
//! chooses; the guest reports [`GuestMessage::Started`] or [`GuestMessage::SpawnFailed`],
//! their output, and finally [`GuestMessage::Exited`].
//!
//! A VM restored from a template snapshot does not say Hello again (its agent said it to
//! the engine that built the template); the host speaks first with [`HostMessage::Rebind`]
//! and the guest answers [`GuestMessage::Rebound`] with the steps it took.
//!
//! Shared directories ([`SetupSpec::shares`]) are FUSE file systems: the agent mounts
//! each one on a `/dev/fuse` connection of its own and carries the kernel's requests to
//! the host, one per [`FrameKind::Fuse`] frame on the share's stream id
//! ([`SHARE_STREAM_BASE`] + its index); the host's file server answers on the same
//! stream. A FUSE message is at most [`MAX_FUSE_MESSAGE`] bytes.
//!
//! The host treats the guest as untrusted: [`FrameDecoder`] bounds every length before it
//! allocates, and [`decode_guest_message`] validates the JSON and its fields.

mod frame;
pub mod fuse;
pub mod fuzzing;
mod message;

pub use frame::{encode_frame, Frame, FrameDecoder, FrameKind, ProtoError, HEADER_AFTER_LEN};
pub use message::{
    decode_guest_message, decode_host_message, encode_control, valid_container_name, ContainerSpec,
    GroupMemory, GuestMessage, HostMessage, InterfaceSpec, ProcessInfo, ProcessSpec, ProcessStatus,
    RebindSpec, Resources, SetupSpec, ShareMount, SpawnFailure, TmpfsSpec, VolumeMount,
    MAX_GUEST_ERROR, RESYNC_MARKER,
};

/// Version of this protocol. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 10;
/// Largest value of the length field (1 MiB plus the header).
pub const MAX_FRAME_LEN: u32 = (1 << 20) + HEADER_AFTER_LEN;
/// Largest data payload a sender puts in one frame.
pub const MAX_DATA_CHUNK: usize = 1 << 16;
/// Largest control (JSON) payload.
pub const MAX_CONTROL_LEN: usize = 256 * 1024;
/// Stream id of messages addressed to the agent rather than to a process.
pub const AGENT_STREAM: u32 = 0;
/// Name of the virtio-serial port the agent talks on.
pub const PORT_NAME: &str = "berth.agent";
/// The agent's helper that is a container's init (`docker run --init`): a first process
/// `[INIT_HELPER, program, args...]` with `agent_helper` set runs `program` under it.
pub const INIT_HELPER: &str = "berth-init";
/// The agent's helper that is a build step's first process: it waits, doing nothing,
/// until a signal ends it, while the step's command runs beside it as an exec.
pub const HOLD_HELPER: &str = "berth-hold";
/// Stream id of a container's first shared directory; share `n` uses this plus `n`.
/// Far from the process streams (1, then one per exec).
pub const SHARE_STREAM_BASE: u32 = 0xF000_0000;
/// Largest FUSE message either side sends in one frame: the file server tells the guest
/// kernel to write and read at most [`MAX_FUSE_IO`] bytes a request, plus headers.
pub const MAX_FUSE_MESSAGE: usize = MAX_FUSE_IO + 4096;
/// Largest read or write one FUSE request carries (128 pages): each request is a round
/// trip through the agent, the engine and the file server, so fewer, larger ones.
pub const MAX_FUSE_IO: usize = 512 * 1024;
