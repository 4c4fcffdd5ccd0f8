//! The state database across daemon restarts, seen through the docker CLI: a record
//! that no longer parses is set aside (kept, and named in `docker info`'s warnings),
//! never silently dropped, and the daemon serves everything else.

mod common;

use common::{busybox_archive, Daemon};
use redb::{Database, ReadableTable, TableDefinition};

const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
const QUARANTINE: TableDefinition<&str, &[u8]> = TableDefinition::new("quarantine");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

#[test]
fn an_unreadable_record_is_set_aside_and_reported_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let broken_id = "e".repeat(64);
    {
        let daemon = Daemon::start(&root);
        daemon.docker_ok(&["load", "-i", busybox_archive().to_str().unwrap()]);
        daemon.docker_ok(&["create", "--name", "keep", "busybox", "true"]);
        daemon.stop();
    }
    {
        // While no daemon runs: the schema is recorded, and a record goes bad.
        let db = Database::create(root.join("berth.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let meta = txn.open_table(META).unwrap();
            assert_eq!(meta.get("schema").unwrap().unwrap().value(), "2");
            let mut containers = txn.open_table(CONTAINERS).unwrap();
            containers
                .insert(broken_id.as_str(), b"{\"id\": 7, not json".as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let daemon = Daemon::start(&root);
    let names = daemon.docker_ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert_eq!(names.trim(), "keep");
    let warnings = daemon.docker_ok(&["info", "--format", "{{json .Warnings}}"]);
    assert!(
        warnings.contains(&broken_id) && warnings.contains("quarantine"),
        "{warnings}"
    );
    // The daemon serves on: the good container runs.
    daemon.docker_ok(&["start", "-a", "keep"]);
    daemon.stop();
    let db = Database::create(root.join("berth.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    let quarantine = txn.open_table(QUARANTINE).unwrap();
    let kept = quarantine
        .get(format!("containers/{broken_id}").as_str())
        .unwrap()
        .expect("the bad record is kept");
    assert_eq!(kept.value(), b"{\"id\": 7, not json");
    let containers = txn.open_table(CONTAINERS).unwrap();
    assert!(containers.get(broken_id.as_str()).unwrap().is_none());
    assert_eq!(containers.iter().unwrap().count(), 1);
}
