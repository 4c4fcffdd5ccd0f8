//! The engine's errors. The Docker API layer maps each variant to a status code in one
//! place (`berth-api`'s `error` module); messages here are what Docker users read.

use std::path::PathBuf;

/// Errors from engine operations.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No container by that id, id prefix or name.
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    /// No exec instance by that id.
    #[error("No such exec instance: {0}")]
    NoSuchExec(String),
    /// No network by that id, id prefix or name.
    #[error("network {0} not found")]
    NoSuchNetwork(String),
    /// Setting up a container network failed.
    #[error("container networking failed")]
    Network(#[source] berth_net::NetError),
    /// No image by that reference.
    #[error("No such image: {0}")]
    NoSuchImage(String),
    /// Something else that does not exist (a registry manifest, a local tag to push).
    #[error("{0}")]
    NotFound(String),
    /// A registry refused the credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// A request that conflicts with the container's state or another container.
    #[error("{0}")]
    Conflict(String),
    /// The container's state does not allow the verb (see `container::state`).
    #[error("{}", refusal.message(container))]
    Refused {
        /// The container as the message names it (its id; `/name` for removals).
        container: String,
        refusal: crate::container::Refusal,
    },
    /// The engine tried a state change its lifecycle table forbids.
    #[error("internal error")]
    IllegalTransition(#[from] crate::container::state::IllegalTransition),
    /// A request that is understood but not allowed (e.g. removing a predefined network).
    #[error("{0}")]
    Forbidden(String),
    /// A request that is malformed or asks for something impossible.
    #[error("{0}")]
    InvalidArgument(String),
    /// Something Berth does not do (yet); the message says what instead.
    #[error("{0}")]
    NotSupported(String),
    /// The container's process could not be started (e.g. executable not found).
    #[error("failed to create task for container: {0}")]
    StartFailed(String),
    /// A build failed (its Dockerfile, context or a step).
    #[error(transparent)]
    Build(#[from] crate::build::BuildError),
    /// The image store failed.
    #[error("image store error")]
    Image(#[source] berth_image::ImageError),
    #[error("VM error")]
    Vm(#[source] berth_vm::VmError),
    #[error("preparing the guest kernel and initramfs failed")]
    Guest(#[source] berth_guest::GuestError),
    /// The container's agent (the guest) failed or misbehaved.
    #[error("the container's agent failed")]
    Agent(#[from] crate::agent::AgentError),
    /// A start failed at a step, for a reason of the engine's, the VM's or the guest's.
    #[error("{step} failed")]
    Start {
        step: crate::start::StartStep,
        #[source]
        source: Box<EngineError>,
    },
    /// A template's state file differs from what was recorded when it was made.
    #[error("template {key} changed while in use (state sha256 {digest})")]
    TemplateChanged { key: String, digest: String },
    /// Work handed to a blocking thread panicked.
    #[error("{what} panicked")]
    Panicked {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// The state database failed (boxed: redb's errors are large).
    #[error("state database error")]
    Store(#[source] Box<crate::state::StoreError>),
    #[error("I/O error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
}

/// What kind of failure an error is: the API layer turns kinds into status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    Unauthorized,
    /// The request conflicts with a container's state or another object.
    Conflict,
    Forbidden,
    InvalidArgument,
    /// Something Berth does not do.
    NotSupported,
    /// Berth's own failure, or its host's, or a guest's.
    Internal,
}

impl EngineError {
    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NoSuchContainer(_)
            | Self::NoSuchImage(_)
            | Self::NoSuchExec(_)
            | Self::NoSuchNetwork(_)
            | Self::NotFound(_) => ErrorKind::NotFound,
            Self::Unauthorized(_) => ErrorKind::Unauthorized,
            Self::Conflict(_) | Self::Refused { .. } => ErrorKind::Conflict,
            Self::Forbidden(_) => ErrorKind::Forbidden,
            Self::InvalidArgument(_) | Self::StartFailed(_) | Self::Build(_) => {
                ErrorKind::InvalidArgument
            }
            Self::NotSupported(_) | Self::Vm(berth_vm::VmError::Unsupported(_)) => {
                ErrorKind::NotSupported
            }
            Self::Start { source, .. } => source.kind(),
            Self::Network(_)
            | Self::IllegalTransition(_)
            | Self::Image(_)
            | Self::Vm(_)
            | Self::Guest(_)
            | Self::Agent(_)
            | Self::TemplateChanged { .. }
            | Self::Panicked { .. }
            | Self::Store(_)
            | Self::Io { .. }
            | Self::Command { .. } => ErrorKind::Internal,
        }
    }

    /// Says which step of a start failed, when the failure is Berth's, its VM's or its
    /// guest's; a user's error (a conflict, a bad argument, a program not found) is
    /// reported as it is.
    pub(crate) fn in_start_step(self, step: crate::start::StartStep) -> Self {
        match self.kind() {
            ErrorKind::Internal => Self::Start {
                step,
                source: Box::new(self),
            },
            _ => self,
        }
    }

    /// A blocking task's panic, as an error.
    pub(crate) fn panicked(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> Self {
        move |source| Self::Panicked { what, source }
    }

    /// The state of the container named `container` refuses a verb.
    pub(crate) fn refused(container: &str) -> impl FnOnce(crate::container::Refusal) -> Self + '_ {
        move |refusal| Self::Refused {
            container: container.to_owned(),
            refusal,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

impl From<berth_image::ImageError> for EngineError {
    fn from(error: berth_image::ImageError) -> Self {
        match error {
            berth_image::ImageError::NotFound(reference) => Self::NoSuchImage(reference),
            berth_image::ImageError::InvalidArchive(_)
            | berth_image::ImageError::InvalidJson { .. }
            | berth_image::ImageError::InvalidReference(_)
            | berth_image::ImageError::DigestMismatch { .. }
            | berth_image::ImageError::UnsafePath(_) => Self::InvalidArgument(error_chain(&error)),
            other => Self::Image(other),
        }
    }
}

impl From<crate::state::StoreError> for EngineError {
    fn from(error: crate::state::StoreError) -> Self {
        Self::Store(Box::new(error))
    }
}

impl From<berth_vm::VmError> for EngineError {
    fn from(error: berth_vm::VmError) -> Self {
        Self::Vm(error)
    }
}

/// Prints an error with its whole chain of causes, for logs and API messages.
pub use berth_image::error_chain;

impl From<berth_net::NetError> for EngineError {
    fn from(error: berth_net::NetError) -> Self {
        match error {
            berth_net::NetError::Invalid(message) => Self::InvalidArgument(message),
            other => Self::Network(other),
        }
    }
}
