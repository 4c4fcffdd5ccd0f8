//! The templates' state files, each checked against its recorded sha256 once and then
//! kept in memory.
//!
//! Every clone restores from a private copy of its template's state (QEMU's migration
//! stream or the built-in VMM's snapshot, ~0.7 MiB). Hashing that file on every start
//! cost more instructions than all the rest of the daemon's work for the start (counted
//! with callgrind by `scripts/clone-instructions.sh`: SHA-256 without SHA-NI, twice over
//! the file). Instead, the bytes are read and verified once per version of the file and
//! each clone's copy is written from those verified bytes, so a clone still restores
//! exactly what was verified, whatever happens to the file meanwhile.
//!
//! A version of the file is its identity as the file system reports it: device, inode,
//! size, modification and change times. Any write to the file changes its change time,
//! which no caller can set, so a file changed in place is read and hashed again.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::lock;

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileVersion {
    device: u64,
    inode: u64,
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl FileVersion {
    fn of(metadata: &std::fs::Metadata) -> Self {
        FileVersion {
            device: metadata.dev(),
            inode: metadata.ino(),
            size: metadata.size(),
            modified: (metadata.mtime(), metadata.mtime_nsec()),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

/// State bytes whose sha256 matched a template's record.
#[derive(Clone)]
pub struct VerifiedState(Arc<[u8]>);

impl VerifiedState {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for VerifiedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifiedState({} bytes)", self.0.len())
    }
}

/// Verified state files by path, with the version each was verified at.
#[derive(Default)]
pub struct VerifiedStates {
    files: Mutex<HashMap<PathBuf, (FileVersion, String, VerifiedState)>>,
}

/// The lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl VerifiedStates {
    /// The bytes of `path` if they have the sha256 `expected`: from memory when this
    /// version of the file was verified before, else read and hashed now. `None` when the
    /// file cannot be read or does not match.
    pub fn get(&self, path: &Path, expected: &str) -> Option<VerifiedState> {
        let version = FileVersion::of(&std::fs::metadata(path).ok()?);
        if let Some((known, digest, state)) = lock(&self.files).get(path) {
            if *known == version {
                return (digest == expected).then(|| state.clone());
            }
        }
        let mut file = std::fs::File::open(path).ok()?;
        // The version read is that of the open file, so that the bytes and the version
        // recorded with them belong together.
        let version = FileVersion::of(&file.metadata().ok()?);
        let mut bytes = Vec::with_capacity(usize::try_from(version.size).unwrap_or(0));
        std::io::Read::read_to_end(&mut file, &mut bytes).ok()?;
        let digest = sha256_hex(&bytes);
        let state = VerifiedState(bytes.into());
        let matches = digest == expected;
        lock(&self.files).insert(path.to_path_buf(), (version, digest, state.clone()));
        matches.then_some(state)
    }

    /// Forgets `path` (its template was removed).
    pub fn forget(&self, path: &Path) {
        lock(&self.files).remove(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_hashed_again_after_any_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::write(&path, b"state one").unwrap();
        let states = VerifiedStates::default();
        let one = sha256_hex(b"state one");
        assert_eq!(states.get(&path, &one).unwrap().bytes(), b"state one");
        // From memory, still held to the digest asked for.
        assert_eq!(states.get(&path, &one).unwrap().bytes(), b"state one");
        assert!(states.get(&path, &sha256_hex(b"other")).is_none());
        // Changed in place with the same size: the change time moves, so it is read again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"state two").unwrap();
        assert!(states.get(&path, &one).is_none());
        assert_eq!(
            states
                .get(&path, &sha256_hex(b"state two"))
                .unwrap()
                .bytes(),
            b"state two"
        );
        std::fs::remove_file(&path).unwrap();
        assert!(states.get(&path, &one).is_none());
    }
}
