//! Bad input gets Docker's error shape and status, and the daemon keeps serving.

mod common;

use common::{shared, stderr, write_archive};

fn message(body: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)));
    value["message"]
        .as_str()
        .expect("a message field")
        .to_owned()
}

#[test]
fn malformed_json_is_a_400_with_a_message() {
    let daemon = shared();
    let (status, body) = daemon
        .request("POST", "/v1.45/containers/create", Some(b"{not json"))
        .unwrap();
    assert_eq!(status, 400);
    assert!(message(&body).contains("invalid JSON"));
    let (status, _) = daemon.request("GET", "/_ping", None).unwrap();
    assert_eq!(status, 200);
}

#[test]
fn invalid_restart_policies_are_refused_at_create_with_dockers_words() {
    let daemon = shared();
    let create = |policy: &str| {
        let body = format!(r#"{{"Image":"busybox","HostConfig":{{"RestartPolicy":{policy}}}}}"#);
        daemon
            .request("POST", "/containers/create", Some(body.as_bytes()))
            .unwrap()
    };
    let (status, body) = create(r#"{"Name":"sometimes"}"#);
    assert_eq!(status, 400);
    assert_eq!(
        message(&body),
        "invalid restart policy: unknown policy 'sometimes'; use one of 'no', 'always', 'on-failure' or 'unless-stopped'"
    );
    let (status, body) = create(r#"{"Name":"always","MaximumRetryCount":3}"#);
    assert_eq!(status, 400);
    assert!(
        message(&body).contains("maximum retry count can only be used with 'on-failure'"),
        "{}",
        message(&body)
    );
    let (status, body) = create(r#"{"Name":"on-failure","MaximumRetryCount":2}"#);
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let id: serde_json::Value = serde_json::from_slice(&body).unwrap();
    daemon.docker_ok(&["rm", id["Id"].as_str().unwrap()]);
}

#[test]
fn unknown_ids_and_images_are_404() {
    let daemon = shared();
    let (status, body) = daemon
        .request("GET", "/v1.45/containers/doesnotexist/json", None)
        .unwrap();
    assert_eq!(status, 404);
    assert_eq!(message(&body), "No such container: doesnotexist");
    let (status, body) = daemon
        .request(
            "POST",
            "/v1.45/containers/create",
            Some(br#"{"Image":"nosuchimage:1"}"#),
        )
        .unwrap();
    assert_eq!(status, 404);
    assert!(
        message(&body).contains("No such image"),
        "{}",
        message(&body)
    );
    let (status, body) = daemon.request("GET", "/v1.45/no/such/route", None).unwrap();
    assert_eq!(status, 404);
    assert_eq!(message(&body), "page not found");
    let (status, _) = daemon.request("GET", "/v9.99/_ping", None).unwrap();
    assert_eq!(status, 400);
}

#[test]
fn drivers_nobody_has_are_404_and_dockers_own_that_berth_lacks_501() {
    // dockerd looks any driver but its own up as a plugin, and answers 404 without one.
    let daemon = shared();
    for (path, body, status, said) in [
        (
            "/volumes/create",
            r#"{"Name":"v1","Driver":"nosuch"}"#,
            404,
            r#"plugin "nosuch" not found"#,
        ),
        (
            "/networks/create",
            r#"{"Name":"n1","Driver":"nosuch"}"#,
            404,
            r#"plugin "nosuch" not found"#,
        ),
        (
            "/networks/create",
            r#"{"Name":"n1","Driver":"overlay"}"#,
            501,
            "not supported by Berth",
        ),
    ] {
        let (got, answer) = daemon.request("POST", path, Some(body.as_bytes())).unwrap();
        assert_eq!(got, status, "{path} {body}");
        assert!(message(&answer).contains(said), "{}", message(&answer));
    }
    assert!(daemon
        .docker_ok(&["volume", "ls", "-q"])
        .lines()
        .all(|v| v != "v1"));
    assert!(daemon
        .docker_ok(&["network", "ls", "--format", "{{.Name}}"])
        .lines()
        .all(|n| n != "n1"));
}

#[test]
fn name_conflicts_are_409() {
    let daemon = shared();
    daemon.docker_ok(&["create", "--name", "twin", "busybox", "true"]);
    let second = daemon.docker(&["create", "--name", "twin", "busybox", "true"]);
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("already in use"),
        "stderr: {}",
        stderr(&second)
    );
    daemon.docker_ok(&["rm", "twin"]);
}

#[test]
fn hostile_archives_are_refused_and_write_nothing_outside() {
    let daemon = shared();
    let dir = common::scratch().join("hostile");
    std::fs::create_dir_all(&dir).unwrap();
    // A layer that climbs out of its tree.
    let mut layer = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    let payload = b"escaped";
    header.set_size(payload.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    {
        // tar::Builder refuses `..` itself, so write the name into the header by hand.
        let name = b"../../../../../../tmp/berth-escaped";
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
    }
    header.set_cksum();
    layer.append(&header, &payload[..]).unwrap();
    let archive = dir.join("escape.tar");
    write_archive(
        &archive,
        "hostile:latest",
        &[layer.into_inner().unwrap()],
        &["sh"],
    );
    let _ = std::fs::remove_file("/tmp/berth-escaped");
    let output = daemon.docker(&["load", "-i", archive.to_str().unwrap()]);
    // Loading may succeed (the layer is stored as data), but building its filesystem must refuse.
    if output.status.success() {
        let run = daemon.docker(&["create", "hostile:latest"]);
        assert!(!run.status.success(), "a hostile layer became a container");
    }
    assert!(
        !std::path::Path::new("/tmp/berth-escaped").exists(),
        "the archive wrote outside its tree"
    );

    // Garbage instead of an archive.
    let garbage = dir.join("garbage.tar");
    std::fs::write(&garbage, b"this is not a tar archive at all").unwrap();
    let output = daemon.docker(&["load", "-i", garbage.to_str().unwrap()]);
    assert!(!output.status.success());
    // As dockerd answers: 200, and the error in the JSON stream.
    let (status, body) = daemon
        .request(
            "POST",
            "/images/load",
            Some(b"this is not a tar archive at all"),
        )
        .unwrap();
    let line: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&body)));
    assert_eq!(status, 200, "{line}");
    assert!(line["errorDetail"]["message"].is_string(), "{line}");
    assert_eq!(line["error"], line["errorDetail"]["message"]);
    // Binary garbage: the message says what is wrong, without quoting the bytes of the
    // damaged header (the tar reader's own message did).
    let noise: Vec<u8> = (0..3000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (status, body) = daemon
        .request("POST", "/images/load", Some(&noise))
        .unwrap();
    let line: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&body)));
    assert_eq!(status, 200, "{line}");
    let message = line["error"].as_str().unwrap_or_default();
    assert!(message.contains("invalid tar header"), "{line}");
    assert!(
        message.chars().all(|c| !c.is_control() && c != '\u{fffd}'),
        "{line}"
    );
    let (status, _) = daemon.request("GET", "/_ping", None).unwrap();
    assert_eq!(status, 200, "the daemon keeps serving");
}
