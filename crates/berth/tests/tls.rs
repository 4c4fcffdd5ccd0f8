//! The Docker API over TCP with TLS, as dockerd's `-H tcp://... --tlsverify`: the docker
//! CLI with a client certificate from the daemon's CA gets in (a `docker run`, whose
//! attach is a hijacked connection, works through TLS); without a certificate, or with
//! one from another CA, it does not. Plain TCP on an address other than loopback is
//! refused at start. Certificates are made by the test with openssl; traffic stays on
//! 127.0.0.1.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{busybox_archive, free_port, make_ca_and_certificates, scratch, Daemon, BERTH};

/// The docker CLI against `host` with `tls` flags, and an empty configuration.
fn docker_tls(dir: &Path, host: &str, tls: &[String], args: &[&str]) -> Output {
    let config = dir.join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    Command::new("docker")
        .env("DOCKER_CONFIG", &config)
        .args(tls)
        .args(["-H", host])
        .args(args)
        .output()
        .unwrap()
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[test]
fn mutual_tls_lets_in_only_clients_of_the_daemons_ca() {
    let dir: PathBuf = scratch().join("tls-certificates");
    std::fs::create_dir_all(&dir).unwrap();
    make_ca_and_certificates(&dir, "berth");
    make_ca_and_certificates(&dir, "other");
    let port = free_port();
    let host = format!("tcp://127.0.0.1:{port}");
    let (ca, cert, key) = (
        path(&dir, "berth-ca.pem"),
        path(&dir, "berth-server.pem"),
        path(&dir, "berth-server-key.pem"),
    );
    let daemon = Daemon::start_with(
        &scratch().join("tls-daemon"),
        &[
            "-H",
            &host,
            "--tlsverify",
            "--tlscacert",
            &ca,
            "--tlscert",
            &cert,
            "--tlskey",
            &key,
        ],
    );
    daemon.docker_ok(&["load", "-i", busybox_archive().to_str().unwrap()]);
    let client = |name: &str| {
        vec![
            "--tlsverify".to_owned(),
            "--tlscacert".to_owned(),
            ca.clone(),
            "--tlscert".to_owned(),
            path(&dir, &format!("{name}-client.pem")),
            "--tlskey".to_owned(),
            path(&dir, &format!("{name}-client-key.pem")),
        ]
    };

    let ran = docker_tls(
        &dir,
        &host,
        &client("berth"),
        &["run", "--rm", "busybox", "echo", "over-tls"],
    );
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ran.stdout).trim(), "over-tls");

    let stranger = docker_tls(&dir, &host, &client("other"), &["version"]);
    assert!(!stranger.status.success(), "a client of another CA got in");
    // (Go's client sends no certificate the server's CA list does not name.)
    let said = String::from_utf8_lossy(&stranger.stderr);
    assert!(said.contains("tls: certificate required"), "{said}");
    let no_certificate = docker_tls(
        &dir,
        &host,
        &["--tlsverify".into(), "--tlscacert".into(), ca.clone()],
        &["version"],
    );
    assert!(
        !no_certificate.status.success(),
        "a client without a certificate got in"
    );
    let said = String::from_utf8_lossy(&no_certificate.stderr);
    assert!(said.contains("tls: certificate required"), "{said}");
    // A client that sends its certificate whatever the server asks for (openssl's):
    // the daemon itself refuses one of another CA, and takes one of its own.
    let ping = |name: &str| {
        let mut child = Command::new("openssl")
            .current_dir(&dir)
            .args([
                "s_client",
                "-quiet",
                "-connect",
                &format!("127.0.0.1:{port}"),
            ])
            .args(["-CAfile", "berth-ca.pem"])
            .args(["-cert", &format!("{name}-client.pem")])
            .args(["-key", &format!("{name}-client-key.pem")])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(b"GET /_ping HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n");
        let output = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert!(
        ping("berth").starts_with("HTTP/1.1 200"),
        "{}",
        ping("berth")
    );
    let refused = ping("other");
    assert!(
        !refused.contains("HTTP/1.1"),
        "a certificate of another CA got an answer: {refused}"
    );
    // Plain HTTP to the TLS port is no way in either.
    let plain = docker_tls(&dir, &host, &[], &["version"]);
    assert!(!plain.status.success(), "plain HTTP got in");
    let said = String::from_utf8_lossy(&plain.stderr);
    assert!(said.contains("TLS-enabled daemon"), "{said}");
    // The unix socket still serves.
    daemon.docker_ok(&["version"]);
}

#[test]
fn plain_tcp_beyond_loopback_and_tls_without_files_are_refused_at_start() {
    let root = scratch().join("tls-refused");
    let start = |extra: &[&str]| {
        Command::new(BERTH)
            .arg("daemon")
            .arg("--root")
            .arg(&root)
            .arg("--socket")
            .arg(root.with_extension("sock"))
            .args(extra)
            .output()
            .unwrap()
    };
    let open = start(&["-H", "tcp://0.0.0.0:2375"]);
    assert!(!open.status.success());
    let said = String::from_utf8_lossy(&open.stderr);
    assert!(
        said.contains("without TLS") && said.contains("--tlsverify"),
        "{said}"
    );
    let no_files = start(&["-H", "tcp://127.0.0.1:2376", "--tls"]);
    assert!(!no_files.status.success());
    let said = String::from_utf8_lossy(&no_files.stderr);
    assert!(said.contains("--tlscert"), "{said}");
    assert!(!root.with_extension("sock").exists());
}
