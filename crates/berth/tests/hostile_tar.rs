//! One corpus of hostile tar archives, put through every way an archive reaches Berth:
//! `docker import` (then a container is made of it, which builds its filesystem on the
//! host), `docker load` (as an image's layer, then a container), `docker cp` into a
//! running container (unpacked by the agent in its VM) and `docker build` (as the build
//! context, copied into the image).
//!
//! The corpus: `..` out of the tree, an absolute path, a symlink to the host's /tmp (and
//! one that climbs with `..`) then a file through it, hard links to a host file (absolute
//! and with `..`) then a file over the link, a device node, and headers that claim a
//! gigabyte (a GNU long name and a PAX header) the archive does not have. Each may be
//! refused or contained, never more: nothing appears outside the target, on the host or
//! in the container; the host file the links name keeps its content; the daemon answers
//! after each.

mod common;

use std::path::{Path, PathBuf};

use common::{raw_entry, scratch, shared, write_archive, Daemon};

/// What every archive tries to create outside its target.
fn marker() -> String {
    format!("berth-hostile-{}", std::process::id())
}

/// The end of an archive.
fn finish(mut tar: Vec<u8>) -> Vec<u8> {
    tar.extend([0u8; 1024]);
    tar
}

/// A regular file entry with its content.
fn file(tar: &mut Vec<u8>, name: &str, data: &[u8]) {
    raw_entry(tar, name, b'0', "", data, data.len() as u64);
}

/// The corpus: (what it tries, the archive). `victim` is a host file the links name.
fn corpus(victim: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let marker = marker();
    let victim = victim.display().to_string();
    let climb = "../../../../../../../..";
    let mut all = Vec::new();

    let mut tar = Vec::new();
    file(&mut tar, &format!("{climb}/tmp/{marker}"), b"evil\n");
    all.push(("a `..` path", finish(tar)));

    let mut tar = Vec::new();
    file(&mut tar, &format!("/tmp/{marker}"), b"inside\n");
    all.push(("an absolute path", finish(tar)));

    let mut tar = Vec::new();
    raw_entry(&mut tar, "to-tmp", b'2', "/tmp", b"", 0);
    file(&mut tar, &format!("to-tmp/{marker}"), b"evil\n");
    all.push(("a file through a symlink to /tmp", finish(tar)));

    let mut tar = Vec::new();
    raw_entry(&mut tar, "up", b'2', &format!("{climb}/tmp"), b"", 0);
    file(&mut tar, &format!("up/{marker}"), b"evil\n");
    all.push(("a file through a symlink that climbs", finish(tar)));

    let mut tar = Vec::new();
    raw_entry(&mut tar, "hard", b'1', &victim, b"", 0);
    file(&mut tar, "hard", b"overwritten\n");
    all.push(("a file over a hard link to a host file", finish(tar)));

    let mut tar = Vec::new();
    raw_entry(
        &mut tar,
        "hard-up",
        b'1',
        &format!("{climb}{victim}"),
        b"",
        0,
    );
    file(&mut tar, "hard-up", b"overwritten\n");
    all.push(("a file over a hard link that climbs", finish(tar)));

    let mut tar = Vec::new();
    let mut header = tar::Header::new_ustar();
    header.set_path(format!("dev-{marker}")).unwrap();
    header.set_entry_type(tar::EntryType::Char);
    header.set_device_major(1).unwrap();
    header.set_device_minor(1).unwrap();
    header.set_mode(0o666);
    header.set_size(0);
    header.set_cksum();
    tar.extend_from_slice(header.as_bytes());
    all.push(("a device node", finish(tar)));

    // A GNU long name ('L') and a PAX header ('x') that claim 1 GiB; 64 KiB follow.
    for (what, kind) in [
        ("a long-name header claiming 1 GiB", b'L'),
        ("a PAX header claiming 1 GiB", b'x'),
    ] {
        let mut tar = Vec::new();
        raw_entry(&mut tar, "././@LongLink", kind, "", &[b'a'; 65536], 1 << 30);
        all.push((what, tar));
    }
    all
}

/// Host places an escape would have written to (the marker's name in each).
fn host_places(daemon: &Daemon) -> Vec<PathBuf> {
    let marker = marker();
    let mut places = vec![
        Path::new("/tmp").join(&marker),
        Path::new("/").join(&marker),
        daemon.root.join(&marker),
    ];
    if let Some(parent) = daemon.root.parent() {
        places.push(parent.join(&marker));
    }
    places
}

/// Fails if anything of the marker's appeared on the host, or the victim changed.
fn assert_nothing_escaped(daemon: &Daemon, victim: &Path, verb: &str, what: &str) {
    for place in host_places(daemon) {
        assert!(
            !place.exists(),
            "{verb} of {what} wrote {}",
            place.display()
        );
    }
    assert_eq!(
        std::fs::read_to_string(victim).unwrap(),
        "victim\n",
        "{verb} of {what} changed the host file a link named"
    );
    assert_eq!(
        daemon.request("GET", "/_ping", None).unwrap().0,
        200,
        "the daemon stopped answering after {verb} of {what}"
    );
}

#[test]
fn a_hostile_tar_corpus_through_import_load_cp_and_build() {
    let daemon = shared();
    let dir = scratch().join("hostile-tar");
    std::fs::create_dir_all(&dir).unwrap();
    let victim = dir.join("victim");
    std::fs::write(&victim, "victim\n").unwrap();
    let target = daemon.docker_ok(&["run", "-d", "busybox", "sleep", "600"]);
    daemon.docker_ok(&["exec", &target, "mkdir", "-p", "/target"]);
    let marker = marker();
    let dockerfile = b"FROM busybox\nCOPY . /ctx/\n";
    let mut outcomes = Vec::new();
    for (index, (what, tar)) in corpus(&victim).into_iter().enumerate() {
        // import, then a container made of it (its filesystem is built on the host).
        let tag = format!("hostile-import-{index}");
        let imported = daemon.docker_with_input(&["import", "-", &tag], Some(&tar));
        let import_made = imported.status.success()
            && daemon
                .docker(&["create", "--name", &tag, &tag, "sh"])
                .status
                .success();
        assert_nothing_escaped(daemon, &victim, "import", what);

        // load, as an image's only layer, then a container.
        let archive = dir.join(format!("load-{index}.tar"));
        let tag = format!("hostile-load-{index}:1");
        write_archive(&archive, &tag, std::slice::from_ref(&tar), &["sh"]);
        let loaded = daemon.docker(&["load", "-i", archive.to_str().unwrap()]);
        let name = format!("hostile-load-{index}");
        let load_made = loaded.status.success()
            && daemon
                .docker(&["create", "--name", &name, &tag, "sh"])
                .status
                .success();
        assert_nothing_escaped(daemon, &victim, "load", what);

        // cp into /target of a running container: nothing outside /target in it.
        let (status, _) = daemon
            .request(
                "PUT",
                &format!("/containers/{target}/archive?path=/target"),
                Some(&tar),
            )
            .unwrap();
        // Taken (contained), or refused as the client's error (a 4xx), never a 5xx.
        assert!(
            status == 200 || (400..500).contains(&status),
            "cp of {what}: {status}"
        );
        let outside = daemon.docker_ok(&[
            "exec",
            &target,
            "sh",
            "-c",
            &format!("ls -d /tmp/{marker} /{marker} /dev-{marker} 2>/dev/null; true"),
        ]);
        assert_eq!(outside, "", "cp of {what} wrote outside /target");
        assert_nothing_escaped(daemon, &victim, "cp", what);

        // build, with the archive as the context (and a Dockerfile in it).
        let mut context = Vec::new();
        file(&mut context, "Dockerfile", dockerfile);
        context.extend_from_slice(&tar[..tar.len().saturating_sub(1024)]);
        let context = finish(context);
        let tag = format!("hostile-build-{index}:1");
        let built = daemon.docker_with_input(&["build", "-q", "-t", &tag, "-"], Some(&context));
        if built.status.success() {
            let seen = daemon.docker_ok(&[
                "run",
                "--rm",
                &tag,
                "sh",
                "-c",
                &format!("ls -d /tmp/{marker} /{marker} 2>/dev/null; true"),
            ]);
            assert_eq!(seen, "", "build of {what} put files outside /ctx");
        }
        assert_nothing_escaped(daemon, &victim, "build", what);
        outcomes.push(format!(
            "{what}: import {}, load {}, cp {status}, build {}",
            if import_made { "made" } else { "refused" },
            if load_made { "made" } else { "refused" },
            if built.status.success() {
                "made"
            } else {
                "refused"
            },
        ));
    }
    // The archives that must be refused outright are.
    let refused_by_all = |what: &str| {
        outcomes.iter().any(|line| {
            line.starts_with(what)
                && line.contains("import refused")
                && line.contains("load refused")
                && line.contains("cp 4")
        })
    };
    for what in [
        "a `..` path",
        "a file over a hard link that climbs",
        "a long-name header claiming 1 GiB",
        "a PAX header claiming 1 GiB",
    ] {
        assert!(
            refused_by_all(what),
            "{what} was taken:\n{}",
            outcomes.join("\n")
        );
    }
    eprintln!("{}", outcomes.join("\n"));
    // Leave the shared daemon as it was.
    let made = daemon.docker_ok(&["ps", "-aq", "--filter", "name=hostile-"]);
    for id in made.lines().chain([target.as_str()]) {
        daemon.docker_ok(&["rm", "-f", id]);
    }
    let images = daemon.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    for image in images.lines().filter(|image| image.starts_with("hostile-")) {
        daemon.docker_ok(&["rmi", image]);
    }
}
