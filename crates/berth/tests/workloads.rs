//! Real workloads, run as a new user would: an image made here from Debian's packages
//! (mmdebstrap from the machine's own apt sources, then `docker import`), its server
//! running as its own user with its data on a named volume, reached from the host through
//! a published port by the host's own clients.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{eventually_within, published_port_of, scratch, shared, stderr, stdout};

/// Where the machine's apt sources are (Debian 12 writes deb822 `.sources`).
fn apt_sources() -> PathBuf {
    let deb822 = Path::new("/etc/apt/sources.list.d/debian.sources");
    if deb822.exists() {
        deb822.to_path_buf()
    } else {
        PathBuf::from("/etc/apt/sources.list")
    }
}

/// A root filesystem tar of Debian 12 with PostgreSQL 15, made by mmdebstrap.
fn postgres_rootfs() -> PathBuf {
    let tar = scratch().join("postgres-rootfs.tar");
    let output = Command::new("mmdebstrap")
        .args([
            "--quiet",
            "--variant=essential",
            "--include=postgresql-15",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--skip=output/dev",
            "bookworm",
        ])
        .arg(&tar)
        .arg(apt_sources())
        .output()
        .expect("running mmdebstrap (scripts/setup.sh installs it)");
    assert!(
        output.status.success(),
        "mmdebstrap failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    tar
}

/// Runs a host client (psql, pgbench) against the published port.
fn client(program: &str, port: u16, args: &[&str]) -> Output {
    Command::new(program)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(args)
        .env("PGPASSWORD", "berth-secret")
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .unwrap_or_else(|error| panic!("running {program}: {error}"))
}

fn psql(port: u16, sql: &str) -> Output {
    client("psql", port, &["-Atc", sql, "postgres"])
}

fn psql_ok(port: u16, sql: &str) -> String {
    let output = psql(port, sql);
    assert!(output.status.success(), "psql {sql:?}: {}", stderr(&output));
    stdout(&output).trim().to_string()
}

/// Waits for the server to answer (its first start runs initdb, which takes minutes of
/// an emulated CPU on a busy machine); on failure, says what the container logged.
fn wait_ready(daemon: &common::Daemon, port: u16) {
    let ready = eventually_within(Duration::from_secs(300), || {
        psql(port, "select 1").status.success()
    });
    if !ready {
        let logs = daemon.docker(&["logs", "--tail", "40", "postgres"]);
        let state = daemon.docker(&["inspect", "-f", "{{json .State}}", "postgres"]);
        panic!(
            "PostgreSQL never answered through the published port\nstate: {}\nlogs:\n{}{}",
            stdout(&state),
            stdout(&logs),
            stderr(&logs)
        );
    }
}

/// The server's first start makes its cluster on the empty volume (as the official
/// image's entrypoint does): initdb refuses a directory that is not empty.
const SERVER: &str = r#"[ -s "$PGDATA/PG_VERSION" ] || {
    echo berth-secret > /tmp/password
    /usr/lib/postgresql/15/bin/initdb --auth-local=trust --auth-host=scram-sha-256 --pwfile=/tmp/password || exit 1
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
}
exec /usr/lib/postgresql/15/bin/postgres -c listen_addresses='*' -c unix_socket_directories=/tmp"#;

#[test]
fn postgresql_from_debian_packages_keeps_its_data_on_a_volume_across_restart() {
    let daemon = shared();
    let rootfs = postgres_rootfs();
    let imported =
        daemon.docker_ok(&["import", rootfs.to_str().unwrap(), "berth-test/postgres:15"]);
    assert!(imported.starts_with("sha256:"), "{imported}");
    let _ = std::fs::remove_file(&rootfs);
    daemon.docker_ok(&["volume", "create", "pgdata"]);

    daemon.docker_ok(&[
        "run",
        "-d",
        "--name",
        "postgres",
        "-u",
        "postgres",
        "-p",
        "127.0.0.1::5432",
        "-v",
        "pgdata:/var/lib/postgresql",
        "-e",
        "PGDATA=/var/lib/postgresql/data",
        "berth-test/postgres:15",
        "sh",
        "-c",
        SERVER,
    ]);
    let port = published_port_of(daemon, "postgres", "5432/tcp");
    wait_ready(daemon, port);

    // The server runs as its own user, on the volume (the image's /var/lib/postgresql,
    // owned by postgres, copied up into the empty volume as Docker does).
    let owner = daemon.docker_ok(&["exec", "postgres", "stat", "-c", "%U", "/proc/1"]);
    assert_eq!(owner, "postgres", "the server runs as {owner:?}");
    assert_eq!(
        psql_ok(port, "show data_directory"),
        "/var/lib/postgresql/data"
    );
    let mountpoint = daemon.docker_ok(&["volume", "inspect", "-f", "{{.Mountpoint}}", "pgdata"]);
    let version = Path::new(&mountpoint).join("data/PG_VERSION");
    assert_eq!(
        std::fs::read_to_string(&version)
            .unwrap_or_else(|e| panic!("{}: {e}", version.display()))
            .trim(),
        "15"
    );

    // The host's own pgbench: initialise, then a short run with two clients.
    let init = client("pgbench", port, &["-i", "-s", "1", "postgres"]);
    assert!(init.status.success(), "pgbench -i: {}", stderr(&init));
    let run = client("pgbench", port, &["-c", "2", "-t", "25", "postgres"]);
    assert!(run.status.success(), "pgbench: {}", stderr(&run));
    let report = stdout(&run);
    assert!(
        report.contains("number of transactions actually processed: 50/50"),
        "{report}"
    );
    psql_ok(
        port,
        "create table notes(t text); insert into notes values ('kept across restart')",
    );

    // docker restart: the server (PID 1 of the container) stops cleanly on SIGTERM and
    // finds its data again.
    daemon.docker_ok(&["restart", "postgres"]);
    let port = published_port_of(daemon, "postgres", "5432/tcp");
    wait_ready(daemon, port);
    assert_eq!(psql_ok(port, "select t from notes"), "kept across restart");
    assert_eq!(
        psql_ok(port, "select count(*) from pgbench_accounts"),
        "100000"
    );
    let logs = stderr(&daemon.docker(&["logs", "postgres"]));
    assert!(
        logs.contains("received smart shutdown request")
            && logs.contains("database system is shut down")
            && !logs.contains("was interrupted"),
        "the restart was not a clean shutdown: {logs}"
    );

    daemon.docker_ok(&["rm", "-f", "postgres"]);
    daemon.docker_ok(&["volume", "rm", "pgdata"]);
    daemon.docker_ok(&["rmi", "berth-test/postgres:15"]);
}
