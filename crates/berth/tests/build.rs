//! `docker build` end to end: the docker CLI (its classic builder, which it picks from
//! Berth's `/_ping`), docker-py from PyPI and compose v1 against a real daemon whose
//! build steps run in real VMs.

mod common;

use std::path::{Path, PathBuf};

use common::{busybox_archive, raw_entry, scratch, shared, stderr, stdout, Daemon};

/// A build context directory with these files.
fn context(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = scratch().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    for (path, content) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    dir
}

fn build(daemon: &Daemon, args: &[&str], dir: &Path) -> std::process::Output {
    let mut all: Vec<&str> = vec!["build"];
    all.extend_from_slice(args);
    let dir = dir.to_str().unwrap();
    all.push(dir);
    daemon.docker(&all)
}

fn build_ok(daemon: &Daemon, args: &[&str], dir: &Path) -> String {
    let output = build(daemon, args, dir);
    assert!(
        output.status.success(),
        "docker build {args:?} failed ({}):\n{}\n{}",
        output.status,
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

const MULTI_STAGE: &str = r#"# syntax=docker/dockerfile:1
ARG BASE=busybox
FROM ${BASE} AS build
ARG GREETING=hello
ENV APP=/app
WORKDIR $APP
COPY src/ ./src/
RUN echo "$GREETING from $(cat src/name.txt)" > out.txt
FROM busybox
LABEL team=blue
EXPOSE 8080
COPY --from=build /app/out.txt /final/
COPY *.txt /final/
CMD ["cat", "/final/out.txt"]
"#;

#[test]
fn a_multi_stage_dockerfile_builds_in_vms_with_args_ignores_and_a_cache_that_survives_restarts() {
    let root = scratch().join("build-daemon");
    let daemon = Daemon::start(&root);
    daemon.docker_ok(&["load", "-i", busybox_archive().to_str().unwrap()]);
    let dir = context(
        "multi-stage",
        &[
            ("Dockerfile", MULTI_STAGE),
            ("src/name.txt", "berth"),
            ("a.txt", "A"),
            ("secret.txt", "not for the image"),
            (".dockerignore", "# keep secrets out\nsecret.txt\n"),
        ],
    );
    let out = build_ok(
        &daemon,
        &["-t", "built:1", "--build-arg", "GREETING=hey"],
        &dir,
    );
    for expected in [
        "Step 1/13 : ARG BASE=busybox",
        "Step 2/13 : FROM ${BASE} AS build",
        " ---> Running in ",
        "Removing intermediate container",
        "Successfully built ",
        "Successfully tagged built:1",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from:\n{out}");
    }
    assert!(
        !out.contains("Using cache"),
        "a first build has no cache:\n{out}"
    );
    assert_eq!(
        daemon.docker_ok(&["run", "--rm", "built:1"]),
        "hey from berth"
    );
    // The pattern took a.txt; .dockerignore kept secret.txt out of the context.
    assert_eq!(
        daemon.docker_ok(&["run", "--rm", "built:1", "ls", "/final"]),
        "a.txt\nout.txt"
    );
    let config = daemon.docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{.Config.Labels.team}} {{json .Config.ExposedPorts}} {{json .Config.Cmd}}",
        "built:1",
    ]);
    assert_eq!(config, r#"blue {"8080/tcp":{}} ["cat","/final/out.txt"]"#);
    let history = daemon.docker_ok(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.CreatedBy}}",
        "built:1",
    ]);
    assert!(history.contains("#(nop)  LABEL team=blue"), "{history}");
    assert!(history.contains("#(nop) COPY file:"), "{history}");
    // Step containers are gone; intermediate images are listed only with -a.
    assert_eq!(daemon.docker_ok(&["ps", "-aq"]), "");
    let listed = daemon.docker_ok(&["images", "-q"]).lines().count();
    let all = daemon.docker_ok(&["images", "-aq"]).lines().count();
    assert!(all > listed + 5, "{all} images with -a, {listed} without");
    let id = daemon.docker_ok(&["image", "inspect", "-f", "{{.Id}}", "built:1"]);

    // Everything again: every step from the cache, the same image.
    let again = build_ok(
        &daemon,
        &["-t", "built:1", "--build-arg", "GREETING=hey"],
        &dir,
    );
    assert_eq!(again.matches("Using cache").count(), 10, "{again}");
    assert!(!again.contains("Running in"), "{again}");
    // The cache is on disk: a restarted daemon reuses it.
    // (Its namespace goes with the old handle: drop that before the new daemon starts.)
    daemon.stop();
    drop(daemon);
    let daemon = Daemon::start(&root);
    let quiet = build_ok(
        &daemon,
        &["-q", "-t", "built:1", "--build-arg", "GREETING=hey"],
        &dir,
    );
    assert_eq!(quiet.trim(), id);

    // A source file changes: the steps before its COPY are cached, the rest run again.
    std::fs::write(dir.join("src/name.txt"), "a VM").unwrap();
    let changed = build_ok(
        &daemon,
        &["-t", "built:2", "--build-arg", "GREETING=hey"],
        &dir,
    );
    assert_eq!(changed.matches("Using cache").count(), 5, "{changed}");
    assert_eq!(
        daemon.docker_ok(&["run", "--rm", "built:2"]),
        "hey from a VM"
    );

    // --target stops at a stage; --no-cache runs every step.
    build_ok(&daemon, &["--target", "build", "-t", "stage:1"], &dir);
    assert_eq!(
        daemon.docker_ok(&["run", "--rm", "stage:1", "cat", "/app/out.txt"]),
        "hello from a VM"
    );
    let fresh = build_ok(
        &daemon,
        &["--no-cache", "--target", "build", "-t", "stage:2"],
        &dir,
    );
    assert!(!fresh.contains("Using cache"), "{fresh}");

    // The cache shows in system df and goes with builder prune; tagged images stay.
    let df = daemon.docker_ok(&["system", "df", "--format", "{{.Type}} {{.TotalCount}}"]);
    let cache_line = df
        .lines()
        .find(|l| l.starts_with("Build Cache"))
        .unwrap_or("");
    assert_ne!(cache_line, "Build Cache 0", "{df}");
    daemon.docker_ok(&["builder", "prune", "-f"]);
    let df = daemon.docker_ok(&["system", "df", "--format", "{{.Type}} {{.TotalCount}}"]);
    assert!(df.contains("Build Cache 0"), "{df}");
    assert_eq!(
        daemon.docker_ok(&["run", "--rm", "built:2"]),
        "hey from a VM"
    );
    let rebuilt = build_ok(
        &daemon,
        &["-t", "built:2", "--build-arg", "GREETING=hey"],
        &dir,
    );
    assert!(!rebuilt.contains("Using cache"), "{rebuilt}");

    // --cache-from: an image that came from elsewhere (here `docker save`/`load`, with no
    // cache of this daemon's behind it) serves the steps its history shows.
    let single = context(
        "cache-from",
        &[
            ("Dockerfile", "FROM busybox\nARG V=1\nRUN echo $V > /v\nCOPY a.txt /a.txt\nCMD [\"cat\", \"/v\"]\n"),
            ("a.txt", "A"),
        ],
    );
    build_ok(&daemon, &["-t", "cf:1"], &single);
    let id = daemon.docker_ok(&["image", "inspect", "-f", "{{.Id}}", "cf:1"]);
    let archive = scratch().join("cf.tar");
    daemon.docker_ok(&["save", "-o", archive.to_str().unwrap(), "cf:1"]);
    daemon.docker_ok(&["rmi", "cf:1"]);
    daemon.docker_ok(&["builder", "prune", "-f"]);
    daemon.docker_ok(&["load", "-i", archive.to_str().unwrap()]);
    let from_source = build_ok(&daemon, &["--cache-from", "cf:1", "-t", "cf:2"], &single);
    assert_eq!(
        from_source.matches("Using cache").count(),
        4,
        "{from_source}"
    );
    assert!(!from_source.contains("Running in"), "{from_source}");
    assert_eq!(
        daemon.docker_ok(&["image", "inspect", "-f", "{{.Id}}", "cf:2"]),
        id
    );
    assert_eq!(daemon.docker_ok(&["run", "--rm", "cf:2"]), "1");
    daemon.stop();
}

#[test]
fn a_failing_step_ends_the_build_with_its_code_and_leaves_no_image() {
    let daemon = shared();
    let dir = context(
        "failing",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo about to fail && exit 3\nRUN echo never\n",
        )],
    );
    let output = build(daemon, &["-t", "failing:1"], &dir);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("about to fail"),
        "{}",
        stdout(&output)
    );
    assert!(!stdout(&output).contains("never"));
    assert!(
        stderr(&output).contains(
            "The command '/bin/sh -c echo about to fail && exit 3' returned a non-zero code: 3"
        ),
        "{}",
        stderr(&output)
    );
    assert!(!daemon
        .docker(&["image", "inspect", "failing:1"])
        .status
        .success());
    let commands = daemon.docker_ok(&["ps", "-a", "--no-trunc", "--format", "{{.Command}}"]);
    assert!(!commands.contains("about to fail"), "{commands}");

    // A Dockerfile that does not parse is refused before anything runs.
    let dir = context("unparsable", &[("Dockerfile", "FROM busybox\nFOO bar\n")]);
    let output = build(daemon, &[], &dir);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("dockerfile parse error line 2: unknown instruction: FOO"),
        "{}",
        stderr(&output)
    );
    // ADD of a URL says what to do instead; a missing source is named.
    let dir = context(
        "url",
        &[(
            "Dockerfile",
            "FROM busybox\nADD https://example.invalid/x /x\n",
        )],
    );
    let output = build(daemon, &[], &dir);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("download it into the build context"),
        "{}",
        stderr(&output)
    );
    let dir = context(
        "missing",
        &[("Dockerfile", "FROM busybox\nCOPY nope.txt /x\n")],
    );
    let output = build(daemon, &[], &dir);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("file not found in build context or excluded by .dockerignore"),
        "{}",
        stderr(&output)
    );
}

fn build_stdin(daemon: &Daemon, args: &[&str], tar: &[u8]) -> std::process::Output {
    let mut all = vec!["build"];
    all.extend_from_slice(args);
    all.push("-");
    daemon.docker_with_input(&all, Some(tar))
}

#[test]
fn hostile_build_contexts_are_refused_or_contained() {
    let daemon = shared();
    let marker = format!("escape-{}", std::process::id());
    let dockerfile = b"FROM busybox\nCOPY . /ctx/\n";

    // `..` out of the context: refused, nothing written beside the build's directory.
    let mut tar = Vec::new();
    raw_entry(
        &mut tar,
        "Dockerfile",
        b'0',
        "",
        dockerfile,
        dockerfile.len() as u64,
    );
    raw_entry(&mut tar, &format!("../../../{marker}"), b'0', "", b"x", 1);
    tar.extend([0u8; 1024]);
    let output = build_stdin(daemon, &[], &tar);
    assert!(!output.status.success(), "{}", stdout(&output));
    assert!(
        stderr(&output).contains("build context"),
        "{}",
        stderr(&output)
    );
    for place in [
        daemon.root.join(&marker),
        daemon.root.join("build").join(&marker),
    ] {
        assert!(!place.exists(), "{} was written", place.display());
    }

    // Absolute names land inside; a symlink to the host's /etc is copied as a link and
    // never followed to the host's files.
    let dockerfile = b"FROM busybox\nCOPY . /ctx/\nCMD [\"sh\"]\n";
    let mut tar = Vec::new();
    raw_entry(
        &mut tar,
        "Dockerfile",
        b'0',
        "",
        dockerfile,
        dockerfile.len() as u64,
    );
    raw_entry(&mut tar, &format!("/{marker}"), b'0', "", b"inside", 6);
    raw_entry(&mut tar, "etc-link", b'2', "/etc", b"", 0);
    tar.extend([0u8; 1024]);
    let output = build_stdin(daemon, &["-t", "contained:1"], &tar);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!Path::new(&format!("/{marker}")).exists());
    let seen = daemon.docker_ok(&[
        "run",
        "--rm",
        "contained:1",
        "sh",
        "-c",
        &format!("cat /ctx/{marker}; echo; readlink /ctx/etc-link"),
    ]);
    assert_eq!(seen, "inside\n/etc");
    // A source through that link resolves inside the context: not the host's passwd.
    let dockerfile = b"FROM busybox\nCOPY etc-link/passwd /got\n";
    let mut tar = Vec::new();
    raw_entry(
        &mut tar,
        "Dockerfile",
        b'0',
        "",
        dockerfile,
        dockerfile.len() as u64,
    );
    raw_entry(&mut tar, "etc-link", b'2', "/etc", b"", 0);
    tar.extend([0u8; 1024]);
    let output = build_stdin(daemon, &[], &tar);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("file not found"),
        "{}",
        stderr(&output)
    );

    // An entry that claims a gigabyte and ends: a clear error, and the daemon serves on.
    let mut tar = Vec::new();
    raw_entry(
        &mut tar,
        "Dockerfile",
        b'0',
        "",
        dockerfile,
        dockerfile.len() as u64,
    );
    raw_entry(&mut tar, "huge", b'0', "", b"short", 1 << 30);
    let output = build_stdin(daemon, &[], &tar);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("build context"),
        "{}",
        stderr(&output)
    );
    daemon.docker_ok(&["version"]);
}

/// docker-py from PyPI (pinned; scripts/setup.sh installs it).
const DOCKER_PY: &str = "/var/cache/berth/docker-py-7.1.0/bin/python";

#[test]
fn docker_py_builds_with_its_high_and_low_level_apis() {
    let daemon = shared();
    let dir = context(
        "docker-py",
        &[(
            "Dockerfile",
            "FROM busybox\nARG WHO=world\nRUN echo \"hi $WHO\" > /greeting\nCMD [\"cat\", \"/greeting\"]\n",
        )],
    );
    let script = r#"
import sys, docker
socket, path = sys.argv[1], sys.argv[2]
client = docker.DockerClient(base_url="unix://" + socket, version="auto")
image, logs = client.images.build(path=path, tag="pybuilt:1", buildargs={"WHO": "py"}, rm=True)
assert "pybuilt:1" in image.tags, image.tags
assert any("Successfully built" in l.get("stream", "") for l in logs)
assert client.containers.run("pybuilt:1", remove=True) == b"hi py\n"
api = docker.APIClient(base_url="unix://" + socket, version="auto")
lines = list(api.build(path=path, tag="pybuilt:2", decode=True, nocache=True, buildargs={"WHO": "low"}))
ids = [l["aux"]["ID"] for l in lines if "aux" in l]
assert len(ids) == 1 and ids[0].startswith("sha256:"), lines
assert api.inspect_image("pybuilt:2")["Id"] == ids[0]
try:
    client.images.build(path=path, dockerfile="Nope")
    raise SystemExit("a missing Dockerfile built")
except docker.errors.BuildError as e:
    assert "Nope" in str(e), e
except docker.errors.APIError as e:
    assert "Nope" in str(e), e
print("docker-py build ok")
"#;
    let output = std::process::Command::new(DOCKER_PY)
        .arg("-c")
        .arg(script)
        .arg(&daemon.socket)
        .arg(&dir)
        .output()
        .expect("docker-py from PyPI (scripts/setup.sh installs it)");
    assert!(
        output.status.success(),
        "docker-py failed:\n{}\n{}",
        stdout(&output),
        stderr(&output)
    );
    assert_eq!(stdout(&output).trim(), "docker-py build ok");
}

#[test]
fn compose_builds_a_service_from_its_dockerfile() {
    let daemon = shared();
    let dir = context(
        "compose-build",
        &[
            (
                "docker-compose.yml",
                "version: \"3\"\nservices:\n  app:\n    build:\n      context: .\n      args:\n        FLAVOUR: compose\n",
            ),
            (
                "Dockerfile",
                "FROM busybox\nARG FLAVOUR\nCOPY message.txt /message.txt\nRUN echo \"$FLAVOUR\" >> /message.txt\nCMD [\"cat\", \"/message.txt\"]\n",
            ),
            ("message.txt", "built by\n"),
        ],
    );
    let compose = |args: &[&str]| {
        std::process::Command::new("docker-compose")
            .current_dir(&dir)
            .env("DOCKER_HOST", format!("unix://{}", daemon.socket.display()))
            .args(["-p", "buildproj"])
            .args(args)
            .output()
            .expect("docker-compose (apt-get install docker-compose)")
    };
    let built = compose(&["build"]);
    assert!(built.status.success(), "compose build: {}", stderr(&built));
    let ran = compose(&["run", "--rm", "app"]);
    assert!(ran.status.success(), "compose run: {}", stderr(&ran));
    assert_eq!(stdout(&ran).trim(), "built by\ncompose");
    daemon.docker_ok(&["rmi", "buildproj_app"]);
}

#[test]
fn build_options_and_instructions_reach_the_step_vms() {
    let daemon = shared();
    // A base image whose ONBUILD trigger runs in the image built on it.
    let base = context(
        "onbuild-base",
        &[(
            "Dockerfile",
            "FROM busybox\nONBUILD RUN echo triggered > /trigger\n",
        )],
    );
    build_ok(daemon, &["-t", "onbuild-base:1"], &base);
    let dir = context(
        "options",
        &[("a.txt", "hi\n"), ("pkg/file", "from the archive\n")],
    );
    let packed = std::process::Command::new("tar")
        .args(["czf", "pkg.tar.gz", "pkg"])
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(packed.success());
    std::fs::remove_dir_all(dir.join("pkg")).unwrap();
    // The Dockerfile comes on stdin (`-f -`), beside the context.
    let dockerfile = r#"FROM onbuild-base:1
ADD pkg.tar.gz /opt/
COPY --chown=nobody:nogroup --chmod=600 a.txt /owned
RUN cat /trigger /opt/pkg/file && stat -c '%U %G %a' /owned && grep myhost /etc/hosts && if ip link show eth0; then echo networked; else echo isolated; fi
USER nobody
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s CMD true
"#;
    let output = daemon.docker_with_input(
        &[
            "build",
            "--network",
            "none",
            "--add-host",
            "myhost:10.1.2.3",
            "--label",
            "origin=options test",
            "-f",
            "-",
            "-t",
            "opts:1",
            dir.to_str().unwrap(),
        ],
        Some(dockerfile.as_bytes()),
    );
    let out = stdout(&output);
    assert!(output.status.success(), "{out}\n{}", stderr(&output));
    for expected in [
        "# Executing 1 build trigger",
        "triggered\nfrom the archive\nnobody nogroup 600\n",
        "10.1.2.3",
        "isolated",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from:\n{out}");
    }
    let config = daemon.docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{.Config.User}} {{.Config.StopSignal}} {{json .Config.Healthcheck}} {{.Config.Labels.origin}}",
        "opts:1",
    ]);
    assert_eq!(
        config,
        r#"nobody SIGINT {"Test":["CMD-SHELL","true"],"Interval":5000000000} options test"#
    );
    // COPY --from with patterns: matched files by name, a matched directory's contents.
    let patterns = context(
        "from-patterns",
        &[(
            "Dockerfile",
            concat!(
                "FROM busybox AS files\n",
                "RUN mkdir -p /app/sub && echo one > /app/a.txt && echo two > /app/b.txt",
                " && echo no > /app/c.log && echo deep > /app/sub/d.txt\n",
                "FROM busybox\n",
                "COPY --from=files /app/*.txt /got/\n",
                "COPY --from=files /app/s* /sub-contents/\n",
                "CMD [\"sh\", \"-c\", \"ls /got /sub-contents\"]\n",
            ),
        )],
    );
    build_ok(daemon, &["-t", "patterns:1"], &patterns);
    assert_eq!(
        daemon.docker_ok(&["run", "--rm", "patterns:1"]),
        "/got:\na.txt\nb.txt\n\n/sub-contents:\nd.txt"
    );
    // Only linux/amd64 runs in Berth's VMs.
    let output = build(daemon, &["--platform", "linux/arm64"], &base);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("linux/arm64 is not available"),
        "{}",
        stderr(&output)
    );
}
