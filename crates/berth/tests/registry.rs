//! Pull, push and login against a real registry: Debian's `docker-registry` (the CNCF
//! distribution registry) started on 127.0.0.1, seeded with skopeo, driven by the docker
//! CLI. One daemon serves the file's tests; its daemon.json names the open registry as a
//! Docker Hub mirror.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{busybox_archive, busybox_layer, scratch, stderr, stdout, write_archive, Daemon};

/// A registry on 127.0.0.1 that lives as long as the test process.
struct Registry {
    host: String,
    storage: PathBuf,
}

impl Registry {
    /// Starts `docker-registry` with its storage under `dir`; with `htpasswd`, it asks
    /// for basic authentication.
    fn start(dir: &Path, htpasswd: Option<&Path>) -> Registry {
        std::fs::create_dir_all(dir).unwrap();
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let storage = dir.join("data");
        let auth = htpasswd
            .map(|path| {
                format!(
                    "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                    path.display()
                )
            })
            .unwrap_or_default();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
                storage.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        // Spawned from a thread that never ends, so that the parent-death signal fires
        // only when the test process does.
        std::thread::spawn(move || {
            let mut command = Command::new("docker-registry");
            command
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            common::die_with_parent_thread(&mut command);
            let mut child = command
                .spawn()
                .expect("docker-registry (apt-get install docker-registry)");
            sender.send(child.id()).unwrap();
            // Reaps the registry if it ever ends; until then this thread waits here.
            let _ = child.wait();
        });
        receiver.recv().unwrap();
        let host = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&host).is_err() {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { host, storage }
    }

    /// Copies a docker-archive into `repo:tag` here with skopeo.
    fn seed(&self, archive: &Path, name: &str, extra: &[&str]) {
        let output = Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .args(extra)
            .arg(format!("docker-archive:{}", archive.display()))
            .arg(format!("docker://{}/{name}", self.host))
            .output()
            .expect("skopeo");
        assert!(output.status.success(), "skopeo copy: {}", stderr(&output));
    }

    /// `skopeo inspect` of `name` here (with `--raw`: the manifest itself).
    fn inspect(&self, name: &str, raw: bool, creds: Option<&str>) -> serde_json::Value {
        let mut command = Command::new("skopeo");
        command.args(["inspect", "--tls-verify=false"]);
        if raw {
            command.arg("--raw");
        }
        if let Some(creds) = creds {
            command.args(["--creds", creds]);
        }
        let output = command
            .arg(format!("docker://{}/{name}", self.host))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "skopeo inspect: {}",
            stderr(&output)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// The file holding blob `sha256:<hex>` in the registry's storage.
    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

struct Setup {
    daemon: Daemon,
    open: Registry,
}

/// The open registry (seeded with `test/busybox:1` and, for the mirror,
/// `library/busybox:latest`) and a daemon whose daemon.json names it as a mirror.
fn setup() -> &'static Setup {
    static SETUP: OnceLock<&'static Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let dir = scratch().join("registry");
        let open = Registry::start(&dir.join("open"), None);
        open.seed(busybox_archive(), "test/busybox:1", &[]);
        open.seed(busybox_archive(), "library/busybox:latest", &[]);
        let config = dir.join("daemon.json");
        std::fs::write(
            &config,
            serde_json::json!({
                "registry-mirrors": [format!("http://{}", open.host)],
                "insecure-registries": ["10.99.0.0/16"],
                "log-level": "info",
            })
            .to_string(),
        )
        .unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        let root = dir.join("daemon");
        std::thread::spawn(move || {
            let daemon = Daemon::start_with(&root, &["--config-file", config.to_str().unwrap()]);
            let setup: &'static Setup = Box::leak(Box::new(Setup { daemon, open }));
            sender.send(setup).unwrap();
            loop {
                std::thread::park();
            }
        });
        receiver.recv().unwrap()
    })
}

/// A docker-archive of an image no other test has, so that its layer must be fetched.
fn unique_archive(name: &str) -> PathBuf {
    let mut builder = tar::Builder::new(Vec::new());
    let data = format!("made for {name} at {:?}\n", Instant::now());
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, format!("etc/{name}"), data.as_bytes())
        .unwrap();
    let path = scratch().join(format!("{name}.tar"));
    write_archive(
        &path,
        &format!("local/{name}:1"),
        &[busybox_layer(), builder.into_inner().unwrap()],
        &["sh"],
    );
    path
}

#[test]
fn pull_records_digests_and_the_image_runs() {
    let Setup { daemon, open } = setup();
    let name = format!("{}/test/busybox:1", open.host);
    let pulled = daemon.docker_ok(&["pull", &name]);
    let digest = open.inspect("test/busybox:1", false, None)["Digest"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(pulled.contains(&format!("Digest: {digest}")), "{pulled}");
    assert!(
        pulled.contains("Downloaded newer image") || pulled.contains("up to date"),
        "{pulled}"
    );
    let repo_digests =
        daemon.docker_ok(&["image", "inspect", "-f", "{{json .RepoDigests}}", &name]);
    assert!(
        repo_digests.contains(&format!("{}/test/busybox@{digest}", open.host)),
        "{repo_digests}"
    );
    let again = daemon.docker_ok(&["pull", &name]);
    assert!(again.contains("Image is up to date"), "{again}");
    let ran = daemon.docker_ok(&["run", "--rm", &name, "echo", "pulled-and-ran"]);
    assert_eq!(ran, "pulled-and-ran");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let events = daemon.docker_ok(&[
        "events",
        "--since",
        "0",
        "--until",
        &now,
        "--filter",
        "event=pull",
        "--format",
        "{{.Actor.Attributes.name}}",
    ]);
    assert!(events.contains(&name), "{events}");
}

#[test]
fn run_pulls_a_missing_image_with_zstd_layers() {
    let Setup { daemon, open } = setup();
    let archive = unique_archive("zstd-layers");
    open.seed(
        &archive,
        "test/zstd:1",
        &["--format", "oci", "--dest-compress-format", "zstd"],
    );
    let manifest = open.inspect("test/zstd:1", true, None);
    assert!(
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|layer| layer["mediaType"].as_str().unwrap().ends_with("+zstd")),
        "the image's own layer should be zstd in the registry: {manifest}"
    );
    let name = format!("{}/test/zstd:1", open.host);
    let output = daemon.docker(&["run", "--rm", &name, "cat", "/etc/zstd-layers"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("Unable to find image"),
        "{}",
        stderr(&output)
    );
    assert!(
        stdout(&output).contains("made for zstd-layers"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn push_then_pull_back_by_digest() {
    let Setup { daemon, open } = setup();
    let archive = unique_archive("pushed");
    daemon.docker_ok(&["load", "-i", archive.to_str().unwrap()]);
    let target = format!("{}/pushed/app:v2", open.host);
    daemon.docker_ok(&["tag", "local/pushed:1", &target]);
    let pushed = daemon.docker_ok(&["push", &target]);
    assert!(pushed.contains("Pushed"), "{pushed}");
    let digest = pushed
        .lines()
        .find_map(|line| line.strip_prefix("v2: digest: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest line in {pushed}"))
        .to_owned();
    // The registry serves what the push reported, to another client.
    let remote = open.inspect("pushed/app:v2", false, None);
    assert_eq!(remote["Digest"], digest.as_str(), "{remote}");
    assert_eq!(remote["Layers"].as_array().unwrap().len(), 2, "{remote}");
    let again = daemon.docker_ok(&["push", &target]);
    assert!(again.contains("Layer already exists"), "{again}");
    // docker-py's get_registry_data (GET /distribution/{name}/json) sees the same digest
    // and the platform, without pulling.
    let script = r#"
import sys, docker
c = docker.DockerClient(base_url="unix://" + sys.argv[1], version="auto")
data = c.images.get_registry_data(sys.argv[2])
print(data.id, data.has_platform("linux/amd64"), data.attrs["Descriptor"]["size"] > 0)
"#;
    let output = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(&daemon.socket)
        .arg(&target)
        .output()
        .expect("python3-docker");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("{digest} True True"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let unknown = format!("/distribution/{}/never/pushed:1/json", open.host);
    let (status, _) = daemon.request("GET", &unknown, None).unwrap();
    assert_eq!(status, 404);

    // Forget the image, then fetch it back by digest.
    daemon.docker_ok(&["rmi", &target, "local/pushed:1"]);
    let by_digest = format!("{}/pushed/app@{digest}", open.host);
    daemon.docker_ok(&["pull", &by_digest]);
    let ran = daemon.docker_ok(&["run", "--rm", &by_digest, "cat", "/etc/pushed"]);
    assert!(ran.contains("made for pushed"), "{ran}");
    let missing = daemon.docker(&["push", &format!("{}/never/tagged:1", open.host)]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("does not exist locally"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn unknown_images_and_tampered_blobs_are_refused() {
    let Setup { daemon, open } = setup();
    let missing = daemon.docker(&["pull", &format!("{}/test/nope:1", open.host)]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("manifest unknown"),
        "{}",
        stderr(&missing)
    );

    let archive = unique_archive("tampered");
    open.seed(&archive, "test/tampered:1", &[]);
    let manifest = open.inspect("test/tampered:1", true, None);
    let layer = manifest["layers"][1]["digest"].as_str().unwrap();
    let blob = open.blob_path(layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let name = format!("{}/test/tampered:1", open.host);
    let refused = daemon.docker(&["pull", &name]);
    assert!(!refused.status.success(), "{}", stdout(&refused));
    let text = format!("{}{}", stdout(&refused), stderr(&refused)).to_lowercase();
    assert!(text.contains("digest"), "{text}");
    let images = daemon.docker_ok(&["images", "--format", "{{.Repository}}"]);
    assert!(!images.contains("test/tampered"), "{images}");
    // The daemon keeps serving.
    daemon.docker_ok(&["version"]);
}

#[test]
fn hub_names_come_from_the_configured_mirror() {
    let Setup { daemon, open } = setup();
    let pulled = daemon.docker_ok(&["pull", "busybox"]);
    assert!(pulled.contains("Status:"), "{pulled}");
    let tags = daemon.docker_ok(&["image", "inspect", "-f", "{{json .RepoTags}}", "busybox"]);
    assert!(tags.contains("busybox:latest"), "{tags}");
    let info = daemon.docker_ok(&["info"]);
    assert!(info.contains(&format!("http://{}", open.host)), "{info}");
    assert!(info.contains("10.99.0.0/16"), "{info}");
}

#[test]
fn login_then_pull_and_push_with_credentials() {
    let Setup { daemon, .. } = setup();
    let dir = scratch().join("registry").join("private");
    std::fs::create_dir_all(&dir).unwrap();
    let hash = Command::new("/usr/bin/python3")
        .args([
            "-W",
            "ignore",
            "-c",
            "import crypt; print(crypt.crypt('s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH)))",
        ])
        .output()
        .unwrap();
    assert!(hash.status.success(), "{}", stderr(&hash));
    let htpasswd = dir.join("htpasswd");
    std::fs::write(&htpasswd, format!("alice:{}\n", stdout(&hash).trim())).unwrap();
    let private = Registry::start(&dir, Some(&htpasswd));
    private.seed(
        busybox_archive(),
        "team/bb:1",
        &["--dest-creds", "alice:s3cret"],
    );
    let name = format!("{}/team/bb:1", private.host);

    let anonymous = daemon.docker(&["pull", &name]);
    assert!(!anonymous.status.success());
    assert!(
        stderr(&anonymous).contains("docker login"),
        "{}",
        stderr(&anonymous)
    );

    let wrong = daemon.docker_with_input(
        &["login", "-u", "alice", "--password-stdin", &private.host],
        Some(b"wrong\n"),
    );
    assert!(!wrong.status.success(), "{}", stdout(&wrong));
    let login = daemon.docker_with_input(
        &["login", "-u", "alice", "--password-stdin", &private.host],
        Some(b"s3cret\n"),
    );
    assert!(login.status.success(), "{}", stderr(&login));
    assert!(
        stdout(&login).contains("Login Succeeded"),
        "{}",
        stdout(&login)
    );

    daemon.docker_ok(&["pull", &name]);
    let pushed_name = format!("{}/team/bb:2", private.host);
    daemon.docker_ok(&["tag", &name, &pushed_name]);
    daemon.docker_ok(&["push", &pushed_name]);
    let remote = private.inspect("team/bb:2", false, Some("alice:s3cret"));
    assert_eq!(remote["Layers"].as_array().unwrap().len(), 1, "{remote}");

    // `docker build --pull` pulls its FROM image with the credentials the CLI sends
    // (X-Registry-Config), even though a tag of it is here.
    daemon.docker_ok(&["rmi", &name]);
    let context = dir.join("build-context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        format!("FROM {name}\nLABEL base=private\n"),
    )
    .unwrap();
    let built = daemon.docker(&[
        "build",
        "--pull",
        "-t",
        "from-private:1",
        context.to_str().unwrap(),
    ]);
    assert!(built.status.success(), "{}", stderr(&built));
    daemon.docker_ok(&["image", "inspect", &name]);
    assert_eq!(
        daemon.docker_ok(&[
            "image",
            "inspect",
            "-f",
            "{{.Config.Labels.base}}",
            "from-private:1"
        ]),
        "private"
    );
    daemon.docker_ok(&["logout", &private.host]);
}
