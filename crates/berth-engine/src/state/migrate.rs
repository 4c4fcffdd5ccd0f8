//! Schema versions and the migrations between them. Opening a database runs every
//! migration from its version to [`SCHEMA_VERSION`] in one write transaction, then
//! records the new version: a crash during a migration leaves the old database.
//!
//! - 1 → 2: the version is recorded in `meta`; every container, network and volume
//!   record is read as this berth's type and written back complete (fields that older
//!   daemons did not write take their defaults); a record that does not parse is
//!   quarantined.

use redb::{Database, ReadableTable, WriteTransaction};

use super::store::{
    quarantine, records, StoreError, CONTAINERS, META, NETWORKS, QUARANTINE, VOLUMES,
};
use super::SCHEMA_VERSION;
use crate::records::ContainerRecord;
use crate::records::NetworkRecord;
use crate::records::VolumeRecord;

const SCHEMA_KEY: &str = "schema";

/// Brings the database to [`SCHEMA_VERSION`]; a database of a newer schema is refused.
pub(super) fn to_current(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    let found = version(&txn)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for table in [CONTAINERS, NETWORKS, VOLUMES, QUARANTINE] {
        txn.open_table(records(table))?;
    }
    if found < 2 {
        complete_records::<ContainerRecord>(&txn, CONTAINERS)?;
        complete_records::<NetworkRecord>(&txn, NETWORKS)?;
        complete_records::<VolumeRecord>(&txn, VOLUMES)?;
    }
    if found != SCHEMA_VERSION {
        tracing::info!(
            from = found,
            to = SCHEMA_VERSION,
            "migrated the state database"
        );
        let mut meta = txn.open_table(META)?;
        meta.insert(SCHEMA_KEY, SCHEMA_VERSION.to_string().as_str())?;
    }
    txn.commit()?;
    Ok(())
}

/// The recorded schema version; 1 when none is recorded (a database from before
/// versions, or a new one, whose tables are all empty).
fn version(txn: &WriteTransaction) -> Result<u32, StoreError> {
    let meta = txn.open_table(META)?;
    let Some(value) = meta.get(SCHEMA_KEY)? else {
        return Ok(1);
    };
    let text = value.value().to_owned();
    text.parse().map_err(|_| StoreError::BadVersion(text))
}

/// Rewrites every record of `table` as `T` with its defaults filled in; quarantines
/// those that do not parse.
fn complete_records<T: serde::Serialize + serde::de::DeserializeOwned>(
    txn: &WriteTransaction,
    table: &'static str,
) -> Result<(), StoreError> {
    let mut rewritten = Vec::new();
    let mut unreadable = Vec::new();
    {
        let read = txn.open_table(records(table))?;
        for entry in read.iter()? {
            let (key, value) = entry?;
            match serde_json::from_slice::<T>(value.value()) {
                Ok(record) => {
                    let json = serde_json::to_vec(&record)
                        .map_err(|source| StoreError::Encode { table, source })?;
                    rewritten.push((key.value().to_owned(), json));
                }
                Err(_) => unreadable.push(key.value().to_owned()),
            }
        }
    }
    {
        let mut write = txn.open_table(records(table))?;
        for (key, json) in &rewritten {
            write.insert(key.as_str(), json.as_slice())?;
        }
    }
    for key in &unreadable {
        quarantine(txn, table, key)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Store;
    use redb::TableDefinition;

    const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
    const TAGS: TableDefinition<&str, &str> = TableDefinition::new("tags");

    /// A container as version 1 wrote it (berth before schema versions), with networks,
    /// ports, mounts and health.
    fn v1_container(id: &str, name: &str) -> serde_json::Value {
        serde_json::json!({
            "id": id, "name": name, "created": "2026-11-30T10:00:00.000000001Z",
            "image_ref": "busybox", "image_id": format!("sha256:{}", "c".repeat(64)),
            "config": {"Image": "busybox", "Cmd": ["sh"], "Env": ["A=1"], "Tty": false},
            "host_config": {"Memory": 536870912, "RestartPolicy": {"Name": "always"}},
            "path": "sh", "args": ["-c", "sleep 1"],
            "state": {"status": "exited", "pid": 0, "exit_code": 3, "error": "",
                      "started_at": "2026-11-30T10:00:01Z", "finished_at": "2026-11-30T10:00:02Z",
                      "oom_killed": false},
            "restart_count": 2,
            "networks": {"web": {"network_id": "d".repeat(64), "aliases": ["db"]}},
            "ports": [],
            "manually_stopped": true,
            "health": null,
            "mounts": [{"volume": "data", "target": "/data", "read_only": false, "populate": true}]
        })
    }

    /// A container as the first daemons wrote it: no network, port, mount or health
    /// fields at all.
    fn v1_oldest_container(id: &str) -> serde_json::Value {
        serde_json::json!({
            "id": id, "name": "old", "created": "", "image_ref": "", "image_id": "",
            "config": {}, "host_config": {}, "path": "sh", "args": [],
            "state": {"status": "created", "pid": 0, "exit_code": 0, "error": "",
                      "started_at": "", "finished_at": "", "oom_killed": false},
            "restart_count": 0
        })
    }

    fn v1_network() -> serde_json::Value {
        serde_json::json!({
            "id": "d".repeat(64), "name": "web", "driver": "bridge",
            "created": "2026-11-30T09:00:00Z", "subnet": "172.20.0.0/16",
            "gateway": "172.20.0.1", "internal": false, "labels": {"team": "a"},
            "options": {}, "bridge": "br-dddddddddddd"
        })
    }

    fn v1_volume() -> serde_json::Value {
        serde_json::json!({"name": "data", "created_at": "2026-11-30T09:30:00Z", "labels": {}})
    }

    /// Writes a database as version 1 did: the engine's and the image store's tables,
    /// no `meta`.
    fn write_v1(path: &std::path::Path, containers: &[(String, serde_json::Value)]) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(records(CONTAINERS)).unwrap();
            for (id, record) in containers {
                table
                    .insert(id.as_str(), serde_json::to_vec(record).unwrap().as_slice())
                    .unwrap();
            }
            let mut table = txn.open_table(records(NETWORKS)).unwrap();
            let network = serde_json::to_vec(&v1_network()).unwrap();
            table
                .insert("d".repeat(64).as_str(), network.as_slice())
                .unwrap();
            let mut table = txn.open_table(records(VOLUMES)).unwrap();
            let volume = serde_json::to_vec(&v1_volume()).unwrap();
            table.insert("data", volume.as_slice()).unwrap();
            let mut table = txn.open_table(IMAGES).unwrap();
            table
                .insert("sha256:cc", b"{\"image\":1}".as_slice())
                .unwrap();
            let mut table = txn.open_table(TAGS).unwrap();
            table.insert("busybox:latest", "sha256:cc").unwrap();
        }
        txn.commit().unwrap();
    }

    fn schema(store: &Store) -> Option<String> {
        let db = store.database();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        let value = meta.get(SCHEMA_KEY).unwrap();
        value.map(|v| v.value().to_owned())
    }

    #[test]
    fn a_version_1_store_opens_with_everything_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.redb");
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        write_v1(
            &path,
            &[
                (a.clone(), v1_container(&a, "web")),
                (b.clone(), v1_oldest_container(&b)),
            ],
        );
        let store = Store::open(&path).unwrap();
        assert_eq!(schema(&store).as_deref(), Some("2"));
        let mut containers = store.all().unwrap();
        containers.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(containers.len(), 2);
        let web = &containers[0];
        assert_eq!(web.name, "web");
        assert_eq!(web.state.exit_code, 3);
        assert_eq!(web.restart_count, 2);
        assert!(web.manually_stopped);
        assert_eq!(web.host_config.memory, Some(536870912));
        assert_eq!(web.networks["web"].aliases, vec!["db".to_owned()]);
        assert_eq!(web.mounts[0].volume, "data");
        let old = &containers[1];
        assert_eq!(old.name, "old");
        assert!(old.networks.is_empty() && old.mounts.is_empty());
        let networks = store.all_networks().unwrap();
        assert_eq!(networks.len(), 1);
        assert_eq!(networks[0].name, "web");
        assert_eq!(networks[0].labels["team"], "a");
        let volumes = store.all_volumes().unwrap();
        assert_eq!(volumes.len(), 1);
        assert_eq!(volumes[0].name, "data");
        assert!(!volumes[0].anonymous);
        assert!(store.quarantined().unwrap().is_empty());
        // The image store's tables are not the engine's to migrate: byte for byte.
        let db = store.database();
        let txn = db.begin_read().unwrap();
        let images = txn.open_table(IMAGES).unwrap();
        let image = images.get("sha256:cc").unwrap().unwrap();
        assert_eq!(image.value(), b"{\"image\":1}");
        let tags = txn.open_table(TAGS).unwrap();
        assert_eq!(
            tags.get("busybox:latest").unwrap().unwrap().value(),
            "sha256:cc"
        );
    }

    #[test]
    fn the_migration_writes_records_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.redb");
        let b = "b".repeat(64);
        write_v1(&path, &[(b.clone(), v1_oldest_container(&b))]);
        let store = Store::open(&path).unwrap();
        let db = store.database();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(records(CONTAINERS)).unwrap();
        let raw: serde_json::Value =
            serde_json::from_slice(table.get(b.as_str()).unwrap().unwrap().value()).unwrap();
        for field in ["networks", "ports", "manually_stopped", "mounts"] {
            assert!(raw.get(field).is_some(), "{field} missing after migration");
        }
    }

    #[test]
    fn an_unreadable_record_is_quarantined_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.redb");
        let (a, bad) = ("a".repeat(64), "e".repeat(64));
        let broken = serde_json::json!({"id": bad, "name": 7});
        write_v1(
            &path,
            &[(a.clone(), v1_container(&a, "web")), (bad.clone(), broken)],
        );
        let store = Store::open(&path).unwrap();
        assert_eq!(store.all().unwrap().len(), 1);
        let quarantined = store.quarantined().unwrap();
        assert_eq!(quarantined.len(), 1);
        assert_eq!(quarantined[0].table, "containers");
        assert_eq!(quarantined[0].key, bad);
        assert!(!quarantined[0].reason.is_empty());
        drop(store);
        // Still there after a reopen, and still out of the way.
        let store = Store::open(&path).unwrap();
        assert_eq!(store.all().unwrap().len(), 1);
        assert_eq!(store.quarantined().unwrap().len(), 1);
    }

    #[test]
    fn a_record_broken_after_the_migration_is_quarantined_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.redb");
        let store = Store::open(&path).unwrap();
        {
            let db = store.database();
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(records(VOLUMES)).unwrap();
                table.insert("broken", b"not json".as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        assert!(store.all_volumes().unwrap().is_empty());
        let quarantined = store.quarantined().unwrap();
        assert_eq!(quarantined.len(), 1);
        assert_eq!(quarantined[0].table, "volumes");
        assert_eq!(quarantined[0].key, "broken");
    }

    #[test]
    fn a_newer_schema_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(SCHEMA_KEY, "99")
                .unwrap();
            txn.commit().unwrap();
        }
        let error = Store::open(&path).err().expect("refused");
        assert!(matches!(
            error,
            StoreError::TooNew {
                found: 99,
                supported: SCHEMA_VERSION
            }
        ));
        let db = Database::create(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        assert_eq!(meta.get(SCHEMA_KEY).unwrap().unwrap().value(), "99");
    }

    #[test]
    fn a_new_store_starts_at_the_current_schema() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("berth.redb")).unwrap();
        assert_eq!(schema(&store), Some(SCHEMA_VERSION.to_string()));
        assert!(store.all().unwrap().is_empty());
    }
}
