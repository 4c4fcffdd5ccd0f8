//! `docker diff` and `docker commit`: what a container changed in its filesystem, found
//! inside its VM by the agent's `berth-changes` helper, which compares the container's
//! root with its image's root filesystem (attached read-only; see `berth-agent`). A
//! stopped container's changes are read in a copy VM, as `docker cp` does.
//!
//! A commit makes a new image: the container's image's layers plus one layer of the
//! changes (with OCI whiteouts for deletions), and the container's own config (command,
//! environment, working directory, user, ports, labels), with `--change` instructions
//! applied on top, as dockerd does.

use std::sync::Arc;

use berth_vm::{DiskFormat, DiskSpec};
use tokio::io::AsyncWriteExt;

use crate::agent::AgentError;
use crate::process::output::{OutputChunk, OutputStream};
use crate::{Engine, EngineError};

/// Largest `docker diff` answer read from the guest (lines of JSON).
const MAX_DIFF_LEN: usize = 64 * 1024 * 1024;

/// One change, as Docker's API reports it (`Kind` 0 modified, 1 added, 2 deleted).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Change {
    pub path: String,
    pub kind: u8,
}

/// What `docker commit` asks for besides the container.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// `repo[:tag]` for the new image, if any.
    pub reference: Option<String>,
    pub comment: String,
    pub author: String,
    /// Dockerfile instructions (`CMD ["sh"]`, `ENV A=b`, ...).
    pub changes: Vec<String>,
    /// Docker pauses a running container while it reads its changes; a paused VM runs
    /// nothing, not even the helper that reads them, so Berth reads them live.
    pub pause: bool,
}

impl Engine {
    /// The image's root filesystem as a read-only disk for the changes helper.
    pub(crate) fn base_disk_spec(&self, image_id: &str) -> Result<DiskSpec, EngineError> {
        let image = self.images.resolve(image_id)?;
        let (path, _) = tokio::task::block_in_place(|| self.images.rootfs(&image))?;
        Ok(DiskSpec {
            path,
            format: DiskFormat::Raw,
            read_only: true,
            serial: Some("berth-base".into()),
            pci_slot: Some(berth_vm::BASE_DISK_SLOT),
        })
    }

    /// `GET /containers/{id}/changes`.
    pub async fn container_changes(
        self: &Arc<Self>,
        reference: &str,
    ) -> Result<Vec<Change>, EngineError> {
        let argv = vec!["berth-changes".to_owned(), "diff".to_owned()];
        let result = self
            .start_helper(reference, argv, false, true, false)
            .await?
            .collect(MAX_DIFF_LEN, "change list")
            .await?;
        if result.code != 0 {
            return Err(AgentError::HelperFailed {
                during: "listing the container's changes",
                stderr: String::from_utf8_lossy(&result.stderr).trim().to_owned(),
            }
            .into());
        }
        let stdout = result.stdout;
        // The guest is untrusted: each line must be a change with an absolute path.
        let mut changes = Vec::new();
        for line in stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let value: serde_json::Value =
                serde_json::from_slice(line).map_err(|source| AgentError::Malformed {
                    what: "change",
                    source,
                })?;
            let path = value["Path"].as_str().unwrap_or_default();
            let kind = value["Kind"].as_u64().unwrap_or(u64::MAX);
            if !path.starts_with('/') || kind > 2 {
                return Err(AgentError::Invalid {
                    what: "change",
                    value: String::from_utf8_lossy(line).into_owned(),
                }
                .into());
            }
            changes.push(Change {
                path: path.to_owned(),
                kind: kind as u8,
            });
        }
        Ok(changes)
    }

    /// `POST /commit`: a new image from the container's changes. Returns its id.
    pub async fn commit_container(
        self: &Arc<Self>,
        reference: &str,
        options: CommitOptions,
    ) -> Result<String, EngineError> {
        let handle = self.lookup(reference)?;
        let record = handle.snapshot();
        let layer = self.read_commit_layer(&handle.id).await;
        let layer = layer?;
        let tag = options
            .reference
            .as_deref()
            .map(berth_image::reference::normalize)
            .transpose()?;
        let mut config = serde_json::to_value(&record.config).unwrap_or_default();
        // The container's own identity is not the image's.
        if let Some(object) = config.as_object_mut() {
            for key in [
                "Hostname",
                "Domainname",
                "Image",
                "AttachStdin",
                "AttachStdout",
                "AttachStderr",
                "Tty",
                "OpenStdin",
                "StdinOnce",
            ] {
                object.remove(key);
            }
        }
        let engine = self.clone();
        let parent = record.image_id.clone();
        let comment = options.comment.clone();
        // dockerd's history of a commit: the container's command, as one line.
        let created_by = record.config.cmd.clone().unwrap_or_default().join(" ");
        let id = tokio::task::spawn_blocking(move || {
            engine.images.commit_layer(
                &parent,
                layer.path(),
                config,
                &options.changes,
                &options.comment,
                &options.author,
                &created_by,
                tag.as_ref(),
            )
        })
        .await
        .map_err(EngineError::panicked("commit"))??;
        self.events
            .container(&record, "commit", &[("comment", comment)]);
        Ok(id)
    }

    /// Spools the changes layer the helper writes into a temporary file.
    pub(crate) async fn read_commit_layer(
        self: &Arc<Self>,
        id: &str,
    ) -> Result<tempfile::NamedTempFile, EngineError> {
        let argv = vec!["berth-changes".to_owned(), "commit".to_owned()];
        let mut run = self.start_helper(id, argv, false, true, false).await?;
        let spool_dir = self.config.root.join("tmp");
        std::fs::create_dir_all(&spool_dir).map_err(EngineError::io(&spool_dir))?;
        let spool =
            tempfile::NamedTempFile::new_in(&spool_dir).map_err(EngineError::io(&spool_dir))?;
        let mut file =
            tokio::fs::File::from_std(spool.reopen().map_err(EngineError::io(spool.path()))?);
        let mut stderr = Vec::new();
        while let Some(OutputChunk { stream, data }) = run.output.recv().await {
            match stream {
                OutputStream::Stdout => file
                    .write_all(&data)
                    .await
                    .map_err(EngineError::io(spool.path()))?,
                OutputStream::Stderr => stderr.extend_from_slice(&data),
            }
        }
        file.flush().await.map_err(EngineError::io(spool.path()))?;
        let code = run.exit.await.unwrap_or(-1);
        if code != 0 {
            return Err(AgentError::HelperFailed {
                during: "reading the container's changes",
                stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
            }
            .into());
        }
        Ok(spool)
    }
}
