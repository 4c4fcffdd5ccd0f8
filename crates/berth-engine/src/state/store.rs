//! Reading and writing records: see the module above for the tables.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableTable, TableDefinition};

use super::migrate;
use crate::records::ContainerRecord;
use crate::records::NetworkRecord;
use crate::records::VolumeRecord;

pub(super) const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
pub(super) const CONTAINERS: &str = "containers";
pub(super) const NETWORKS: &str = "networks";
pub(super) const VOLUMES: &str = "volumes";
pub(super) const QUARANTINE: &str = "quarantine";

/// A table of JSON records by key.
pub(super) fn records(name: &'static str) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

/// Errors of the state database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the state database {path} failed")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    /// A transaction, table, storage or commit failure (boxed: redb's errors are large).
    #[error("the state database failed")]
    Database(#[source] Box<redb::Error>),
    #[error("encoding a {table} record failed")]
    Encode {
        table: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("the state database has schema {found}, newer than this berth's {supported}: use the berth that wrote it, or a newer one")]
    TooNew { found: u32, supported: u32 },
    #[error("the state database's schema version {0:?} is not a number")]
    BadVersion(String),
}

macro_rules! from_redb {
    ($($error:ty),*) => {$(
        impl From<$error> for StoreError {
            fn from(error: $error) -> Self {
                Self::Database(Box::new(error.into()))
            }
        }
    )*};
}

from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A record set aside because it did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The table it came from.
    pub table: String,
    pub key: String,
    /// Why it did not parse.
    pub reason: String,
}

/// Persistent records of containers, networks and volumes.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

impl Store {
    /// Opens (or creates) the database file and brings it to [`super::SCHEMA_VERSION`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        migrate::to_current(&db)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// The database, for the image store's tables.
    pub fn database(&self) -> Arc<Database> {
        self.db.clone()
    }

    pub fn put(&self, record: &ContainerRecord) -> Result<(), StoreError> {
        self.put_json(CONTAINERS, &record.id, record)
    }

    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.delete_key(CONTAINERS, id)
    }

    /// Every container record; one that does not parse is quarantined.
    pub fn all(&self) -> Result<Vec<ContainerRecord>, StoreError> {
        self.all_json(CONTAINERS)
    }

    pub fn put_network(&self, record: &NetworkRecord) -> Result<(), StoreError> {
        self.put_json(NETWORKS, &record.id, record)
    }

    pub fn delete_network(&self, id: &str) -> Result<(), StoreError> {
        self.delete_key(NETWORKS, id)
    }

    pub fn all_networks(&self) -> Result<Vec<NetworkRecord>, StoreError> {
        self.all_json(NETWORKS)
    }

    pub fn put_volume(&self, record: &VolumeRecord) -> Result<(), StoreError> {
        self.put_json(VOLUMES, &record.name, record)
    }

    pub fn delete_volume(&self, name: &str) -> Result<(), StoreError> {
        self.delete_key(VOLUMES, name)
    }

    pub fn all_volumes(&self) -> Result<Vec<VolumeRecord>, StoreError> {
        self.all_json(VOLUMES)
    }

    /// The records set aside so far, for `docker info`'s warnings.
    pub fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(records(QUARANTINE))?;
        let mut found = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let (table_name, record_key) = key.value().split_once('/').unwrap_or(("", ""));
            let reason = parse_error(table_name, value.value())
                .unwrap_or_else(|| "it parses now: a newer berth may read it".into());
            found.push(Quarantined {
                table: table_name.to_owned(),
                key: record_key.to_owned(),
                reason,
            });
        }
        Ok(found)
    }

    fn put_json<T: serde::Serialize>(
        &self,
        table: &'static str,
        key: &str,
        record: &T,
    ) -> Result<(), StoreError> {
        let json =
            serde_json::to_vec(record).map_err(|source| StoreError::Encode { table, source })?;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(records(table))?;
            table.insert(key, json.as_slice())?;
        }
        Ok(txn.commit()?)
    }

    fn delete_key(&self, table: &'static str, key: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(records(table))?;
            table.remove(key)?;
        }
        Ok(txn.commit()?)
    }

    /// Every record of `table`; one that does not parse moves to the quarantine table
    /// (kept, logged), so that it neither vanishes nor stops the daemon.
    fn all_json<T: serde::de::DeserializeOwned>(
        &self,
        table: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        let mut parsed = Vec::new();
        let mut unreadable = Vec::new();
        {
            let txn = self.db.begin_read()?;
            let read = txn.open_table(records(table))?;
            for entry in read.iter()? {
                let (key, value) = entry?;
                match serde_json::from_slice::<T>(value.value()) {
                    Ok(record) => parsed.push(record),
                    Err(_) => unreadable.push(key.value().to_owned()),
                }
            }
        }
        if !unreadable.is_empty() {
            let txn = self.db.begin_write()?;
            for key in &unreadable {
                quarantine(&txn, table, key)?;
            }
            txn.commit()?;
        }
        Ok(parsed)
    }
}

/// Why `bytes` do not parse as a record of `table` (`None`: they do).
fn parse_error(table: &str, bytes: &[u8]) -> Option<String> {
    let result = match table {
        CONTAINERS => serde_json::from_slice::<ContainerRecord>(bytes).map(drop),
        NETWORKS => serde_json::from_slice::<NetworkRecord>(bytes).map(drop),
        VOLUMES => serde_json::from_slice::<VolumeRecord>(bytes).map(drop),
        _ => serde_json::from_slice::<serde_json::Value>(bytes).map(drop),
    };
    result.err().map(|error| error.to_string())
}

/// Moves the record `key` of `table` to the quarantine table, in `txn`.
pub(super) fn quarantine(
    txn: &redb::WriteTransaction,
    table: &'static str,
    key: &str,
) -> Result<(), StoreError> {
    let mut source = txn.open_table(records(table))?;
    let Some(bytes) = source.remove(key)?.map(|value| value.value().to_vec()) else {
        return Ok(());
    };
    tracing::warn!(
        table,
        key,
        "a record does not parse: set aside in the state database's quarantine table"
    );
    let mut quarantined = txn.open_table(records(QUARANTINE))?;
    quarantined.insert(format!("{table}/{key}").as_str(), bytes.as_slice())?;
    Ok(())
}
