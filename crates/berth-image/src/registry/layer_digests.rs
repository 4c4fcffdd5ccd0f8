//! The layer digest cache: per diff id, the compressed blob Berth last pulled or pushed
//! with that content (table `layer_digests`, `&str` diff id → `&[u8]` JSON
//! [`Descriptor`]). A pull writes it, and a push reads it to skip uploading what the
//! registry already has, and writes it after an upload. It is a cache: losing a row only
//! costs an upload.
//!
//! Both `pull` and `push` use it, so it is a module of its own beside them rather than
//! a part of either.

use redb::TableDefinition;

use super::Descriptor;
use crate::error::ImageError;
use crate::store::ImageStore;

/// Diff id → JSON [`Descriptor`] of a compressed blob with that content.
const LAYER_DIGESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("layer_digests");

/// Remembers that `descriptor` is a compressed form of the layer `diff_id`.
pub(super) fn remember_layer(
    store: &ImageStore,
    diff_id: &str,
    descriptor: &Descriptor,
) -> Result<(), ImageError> {
    let json = serde_json::to_vec(descriptor).map_err(|source| ImageError::Record {
        id: diff_id.to_owned(),
        source,
    })?;
    let txn = store.db.begin_write()?;
    txn.open_table(LAYER_DIGESTS)?
        .insert(diff_id, json.as_slice())?;
    txn.commit()?;
    Ok(())
}

/// The compressed blob remembered for the layer `diff_id`, if any.
pub(super) fn known_layer(store: &ImageStore, diff_id: &str) -> Option<Descriptor> {
    let txn = store.db.begin_read().ok()?;
    let table = txn.open_table(LAYER_DIGESTS).ok()?;
    let row = table.get(diff_id).ok()??;
    serde_json::from_slice(row.value()).ok()
}
