//! Berth's host-side file server for shared directories and files (bind mounts and
//! shared volumes).
//!
//! A container VM reaches a share through FUSE: the agent mounts a `fuse` file system,
//! carries each request to the host as a frame on the agent channel (see
//! `berth-agent-proto`), and the engine passes it to this server over a
//! `SOCK_SEQPACKET` connection, one FUSE message per packet; the reply goes back the
//! same way. No guest memory is shared with the host, so a clone of a template VM (whose
//! RAM is a private copy-on-write mapping) shares files as a cold-booted VM does.
//!
//! One server process serves one share of one VM (`berth share-server`): a guest that
//! floods its share slows only its own server. The process confines itself first
//! ([`sandbox`]), then serves with fuse-backend-rs's passthrough file system, after
//! Berth's own checks of each request ([`wire`]). It takes connections one after another
//! on the listening socket it is given, keeping its inodes and open files in between: a
//! daemon that restarts (live restore) connects again and the guest's share goes on.
//! It exits when the VM's process does.

pub mod sandbox;
mod server;
pub mod wire;

use std::path::PathBuf;

pub use server::{serve, ServeOptions, SOCKET_BUFFER};

/// Why a share server could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("the shared path {path} cannot be used")]
    Source {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("confining the file server failed while {step}")]
    Sandbox {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the passthrough file system could not start")]
    FileSystem(#[source] std::io::Error),
    #[error("watching the VM's process {pid} failed")]
    Watch {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("accepting a connection failed")]
    Accept(#[source] std::io::Error),
}
