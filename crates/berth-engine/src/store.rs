//! The state database: one redb file, `berth.redb`, in the daemon's root.
//!
//! Table `containers`: container id (64 hex) -> the [`ContainerRecord`] as JSON.
//! Table `networks`: network id (64 hex) -> the [`NetworkRecord`] as JSON.
//! The image store keeps its own tables in the same database. Each write is one redb
//! transaction, so a crash leaves either the old or the new record, never half of one.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableTable, TableDefinition};

use crate::container::ContainerRecord;
use crate::error::EngineError;
use crate::network::NetworkRecord;

const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("networks");
const VOLUMES: TableDefinition<&str, &[u8]> = TableDefinition::new("volumes");

fn db_error(error: impl std::fmt::Display) -> EngineError {
    EngineError::Store(error.to_string())
}

/// Persistent container records.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

impl Store {
    /// Opens (or creates) the database file.
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        let db = Database::create(path).map_err(db_error)?;
        let txn = db.begin_write().map_err(db_error)?;
        txn.open_table(CONTAINERS).map_err(db_error)?;
        txn.open_table(NETWORKS).map_err(db_error)?;
        txn.open_table(VOLUMES).map_err(db_error)?;
        txn.commit().map_err(db_error)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// The database, for the image store's tables.
    pub fn database(&self) -> Arc<Database> {
        self.db.clone()
    }

    pub fn put(&self, record: &ContainerRecord) -> Result<(), EngineError> {
        self.put_json(CONTAINERS, &record.id, record)
    }

    pub fn delete(&self, id: &str) -> Result<(), EngineError> {
        self.delete_key(CONTAINERS, id)
    }

    /// All records; a record that no longer parses is skipped with a warning.
    pub fn all(&self) -> Result<Vec<ContainerRecord>, EngineError> {
        self.all_json(CONTAINERS)
    }

    pub fn put_network(&self, record: &NetworkRecord) -> Result<(), EngineError> {
        self.put_json(NETWORKS, &record.id, record)
    }

    pub fn delete_network(&self, id: &str) -> Result<(), EngineError> {
        self.delete_key(NETWORKS, id)
    }

    pub fn all_networks(&self) -> Result<Vec<NetworkRecord>, EngineError> {
        self.all_json(NETWORKS)
    }

    pub fn put_volume(&self, record: &crate::volumes::VolumeRecord) -> Result<(), EngineError> {
        self.put_json(VOLUMES, &record.name, record)
    }

    pub fn delete_volume(&self, name: &str) -> Result<(), EngineError> {
        self.delete_key(VOLUMES, name)
    }

    pub fn all_volumes(&self) -> Result<Vec<crate::volumes::VolumeRecord>, EngineError> {
        self.all_json(VOLUMES)
    }

    fn put_json<T: serde::Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        record: &T,
    ) -> Result<(), EngineError> {
        let json = serde_json::to_vec(record).map_err(db_error)?;
        let txn = self.db.begin_write().map_err(db_error)?;
        {
            let mut table = txn.open_table(table).map_err(db_error)?;
            table.insert(key, json.as_slice()).map_err(db_error)?;
        }
        txn.commit().map_err(db_error)
    }

    fn delete_key(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<(), EngineError> {
        let txn = self.db.begin_write().map_err(db_error)?;
        {
            let mut table = txn.open_table(table).map_err(db_error)?;
            table.remove(key).map_err(db_error)?;
        }
        txn.commit().map_err(db_error)
    }

    fn all_json<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, EngineError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(table).map_err(db_error)?;
        let mut records = Vec::new();
        for entry in table.iter().map_err(db_error)? {
            let (key, value) = entry.map_err(db_error)?;
            match serde_json::from_slice::<T>(value.value()) {
                Ok(record) => records.push(record),
                Err(error) => {
                    tracing::warn!(key = key.value(), %error, "skipping unreadable record")
                }
            }
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::StateRecord;

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.redb");
        let record = ContainerRecord {
            id: "b".repeat(64),
            name: "web".into(),
            created: "2026-01-01T00:00:00Z".into(),
            image_ref: "busybox".into(),
            image_id: "sha256:1".into(),
            config: Default::default(),
            host_config: Default::default(),
            path: "sh".into(),
            args: vec!["-c".into()],
            state: StateRecord::default(),
            restart_count: 0,
            networks: Default::default(),
            ports: Vec::new(),
            manually_stopped: false,
            health: None,
            mounts: Vec::new(),
        };
        {
            let store = Store::open(&path).unwrap();
            store.put(&record).unwrap();
        }
        let store = Store::open(&path).unwrap();
        let all = store.all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].name, "web");
        store.delete(&record.id).unwrap();
        assert!(store.all().unwrap().is_empty());
    }
}
