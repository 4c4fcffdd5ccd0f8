//! Registry verbs of the engine: pull, push and login, with their events. The protocol
//! work is `berth_image::registry`'s; this module normalises names, maps errors to
//! Docker's, and emits `pull`/`push` image events.

use std::collections::HashMap;
use std::sync::Arc;

pub use berth_image::registry::{PullOutcome, PushOutcome};
use berth_image::ImageError;
pub use berth_image::{Credentials, Progress, RegistryOptions};

use crate::{Engine, EngineError};

impl Engine {
    /// The registry settings the daemon runs with.
    pub fn registry_options(&self) -> &berth_image::RegistryOptions {
        &self.config.registry
    }

    /// `docker pull`: fetches `reference` (`name[:tag]` or `name@digest`) into the image
    /// store. `progress` gets Docker's progress steps, the first only once the image's
    /// manifest is found.
    pub async fn pull_image(
        self: &Arc<Self>,
        reference: &str,
        credentials: &Credentials,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<(berth_image::Reference, PullOutcome), EngineError> {
        let reference = berth_image::reference::normalize(reference)?;
        let outcome = berth_image::registry::pull(
            &self.images,
            &self.config.registry,
            &reference,
            credentials,
            progress,
        )
        .await
        .map_err(registry_error)?;
        self.emit_image_event("pull", &reference);
        Ok((reference, outcome))
    }

    /// `GET /distribution/{name}/json`: the descriptor and platforms the registry holds
    /// for `reference`, without pulling it.
    pub async fn distribution_info(
        &self,
        reference: &str,
        credentials: &Credentials,
    ) -> Result<berth_image::registry::DistributionInfo, EngineError> {
        let reference = berth_image::reference::normalize(reference)?;
        berth_image::registry::inspect_distribution(&self.config.registry, &reference, credentials)
            .await
            .map_err(registry_error)
    }

    /// `docker push`: uploads the local image tagged `reference` to its registry.
    pub async fn push_image(
        self: &Arc<Self>,
        reference: &str,
        credentials: &Credentials,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<PushOutcome, EngineError> {
        let reference = berth_image::reference::normalize(reference)?;
        if reference.digest.is_some() {
            return Err(EngineError::InvalidArgument(format!(
                "cannot push a digest reference ({}): push a tag",
                reference.familiar()
            )));
        }
        let outcome = berth_image::registry::push(
            &self.images,
            &self.config.registry,
            &reference,
            credentials,
            progress,
        )
        .await
        .map_err(registry_error)?;
        self.emit_image_event("push", &reference);
        Ok(outcome)
    }

    fn emit_image_event(&self, action: &str, reference: &berth_image::Reference) {
        let name = reference.familiar();
        let attributes = HashMap::from([("name".to_owned(), name.clone())]);
        self.events.emit("image", action, &name, attributes);
    }

    /// `docker login`: checks the credentials against the registry at `server`.
    pub async fn login(&self, server: &str, credentials: &Credentials) -> Result<(), EngineError> {
        berth_image::registry::login(&self.config.registry, server, credentials)
            .await
            .map_err(registry_error)
    }
}

/// Docker's status for each registry failure: unknown manifests and refused pulls are
/// "not found" (404), refused credentials "unauthorized" (401).
fn registry_error(error: ImageError) -> EngineError {
    match error {
        ImageError::ManifestUnknown(_) | ImageError::PullAccessDenied(_) => {
            EngineError::NotFound(error.to_string())
        }
        ImageError::NotFound(message) => EngineError::NotFound(message),
        ImageError::Unauthorized(_) => EngineError::Unauthorized(error.to_string()),
        ImageError::Registry { .. } | ImageError::BadRegistryResponse { .. } => {
            EngineError::Command {
                what: "talking to the registry".into(),
                detail: crate::error_chain(&error),
            }
        }
        other => other.into(),
    }
}
