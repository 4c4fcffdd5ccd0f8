//! Pulls from a hostile registry: a small HTTP server of the test's own on 127.0.0.1
//! that speaks just enough of the distribution API, and serves one honest image and
//! several that lie (a layer whose bytes do not match its digest; a layer, an image
//! config or a manifest that never ends; a decompression bomb: 1 GiB of zeros in a
//! gzip layer of 1 MiB, whose content is not what the config says). The honest one must
//! pull and run, which shows
//! the server speaks the protocol; each lie must end the pull with a clear error, keep
//! the daemon's memory bounded, and record nothing: no image, nothing left in the
//! store's staging directory.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use common::{busybox_layer, scratch, Daemon};
use sha2::{Digest, Sha256};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const GZIP_LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// What the bomb's layer expands to.
const BOMB_BYTES: usize = 1 << 30;
/// How much more than at its start the daemon's peak resident memory may grow over all
/// the hostile pulls (the endless blobs it was sent are far larger).
const MEMORY_GROWTH_LIMIT_KIB: u64 = 128 << 10;

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// How a repository of the fake registry lies.
#[derive(Clone, Copy, PartialEq)]
enum Lie {
    None,
    LayerDigest,
    EndlessLayer,
    EndlessConfig,
    EndlessManifest,
    /// Its own image, whose layer is the bomb.
    Bomb,
}

/// One image as the fake registry serves it.
struct Image {
    manifest: Vec<u8>,
    config: Vec<u8>,
    layer: Vec<u8>,
}

/// The registry's two images: busybox, and the bomb.
struct Images {
    plain: Image,
    bomb: Image,
}

/// An image of one layer: `layer` as served (of `media_type`), `diff_id` as its config
/// says.
fn image(layer: Vec<u8>, media_type: &str, diff_id: &str) -> Image {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": ["sh"] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(&config),
            "size": config.len(),
        },
        "layers": [{ "mediaType": media_type, "digest": sha256(&layer), "size": layer.len() }],
    }))
    .unwrap();
    Image {
        manifest,
        config,
        layer,
    }
}

/// Starts the fake registry; returns its `host:port`.
fn start_registry() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let busybox = busybox_layer();
    let diff_id = sha256(&busybox);
    let images = Arc::new(Images {
        plain: image(busybox, LAYER_TYPE, &diff_id),
        // Whole and true to its digest, but not the content the config names.
        bomb: image(bomb(), GZIP_LAYER_TYPE, &diff_id),
    });
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let images = images.clone();
            std::thread::spawn(move || serve(stream, &images));
        }
    });
    host
}

/// A gzip stream of [`BOMB_BYTES`] zeros (about a thousandth of that).
fn bomb() -> Vec<u8> {
    use flate2::{write::GzEncoder, Compression};
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..BOMB_BYTES / zeros.len() {
        encoder.write_all(&zeros).unwrap();
    }
    encoder.finish().unwrap()
}

/// Serves the requests of one connection.
fn serve(stream: TcpStream, images: &Images) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
        }
        let mut words = request_line.split_whitespace();
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let lie = match path.split('/').nth(3).unwrap_or("") {
            "honest" => Lie::None,
            "layer-digest" => Lie::LayerDigest,
            "endless-layer" => Lie::EndlessLayer,
            "endless-config" => Lie::EndlessConfig,
            "endless-manifest" => Lie::EndlessManifest,
            "bomb" => Lie::Bomb,
            _ => Lie::None,
        };
        let image = if lie == Lie::Bomb {
            &images.bomb
        } else {
            &images.plain
        };
        let (kind, body): (&str, Vec<u8>) = if path == "/v2/" {
            ("application/json", b"{}".to_vec())
        } else if path.contains("/manifests/") {
            if lie == Lie::EndlessManifest && method == "GET" {
                return endless(stream);
            }
            (MANIFEST_TYPE, image.manifest.clone())
        } else if path.ends_with(&sha256(&image.config)) {
            if lie == Lie::EndlessConfig {
                return endless(stream);
            }
            ("application/octet-stream", image.config.clone())
        } else if path.ends_with(&sha256(&image.layer)) {
            match lie {
                Lie::EndlessLayer => return endless(stream),
                Lie::LayerDigest => {
                    // As long as the real layer, other bytes.
                    let mut other = image.layer.clone();
                    let middle = other.len() / 2;
                    other[middle] ^= 0xff;
                    ("application/octet-stream", other)
                }
                _ => ("application/octet-stream", image.layer.clone()),
            }
        } else {
            let _ = stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            );
            continue;
        };
        let mut head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n",
            body.len()
        );
        if path.contains("/manifests/") {
            head.push_str(&format!(
                "Docker-Content-Digest: {}\r\n",
                sha256(&image.manifest)
            ));
        }
        head.push_str("\r\n");
        let mut response = head.into_bytes();
        if method != "HEAD" {
            response.extend_from_slice(&body);
        }
        if stream.write_all(&response).is_err() {
            return;
        }
    }
}

/// Sends a 200 with a body that never ends (until the client hangs up).
fn endless(mut stream: TcpStream) {
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let chunk = vec![b'{'; 1 << 20];
    while stream.write_all(&chunk).is_ok() {}
}

fn peak_resident_kib(daemon: &Daemon) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", daemon.pid().unwrap())).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[test]
fn lies_from_a_registry_end_the_pull_clearly_and_record_nothing() {
    let registry = start_registry();
    let root = scratch().join("hostile-registry");
    let daemon = Daemon::start(&root);
    let before = peak_resident_kib(&daemon);
    // The bomb is read to its end, in bounded memory, and found to be other content.
    let mut zeros = Sha256::new();
    for _ in 0..BOMB_BYTES >> 20 {
        zeros.update(vec![0u8; 1 << 20]);
    }
    let bomb_said = format!("got sha256:{}", hex::encode(zeros.finalize()));
    for (repository, expected) in [
        ("layer-digest", "digest"),
        ("endless-layer", "longer than its descriptor says"),
        ("endless-config", "longer than its descriptor says"),
        ("endless-manifest", "larger than 4 MiB"),
        ("bomb", bomb_said.as_str()),
    ] {
        let name = format!("{registry}/test/{repository}:1");
        let output = daemon.docker(&["pull", &name]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !output.status.success() && said.contains(expected),
            "pull of {name}: status {:?}, said {said}",
            output.status.code()
        );
        assert_eq!(
            daemon.docker_ok(&["images", "-q"]),
            "",
            "{name} left an image"
        );
        let staging = root.join("images/tmp");
        assert_eq!(
            std::fs::read_dir(&staging).unwrap().count(),
            0,
            "{name} left files in {}",
            staging.display()
        );
    }
    let after = peak_resident_kib(&daemon);
    assert!(
        after < before + MEMORY_GROWTH_LIMIT_KIB,
        "the daemon's peak memory grew from {before} to {after} KiB"
    );
    // The same server's honest image pulls and runs: it is the lies that failed.
    let honest = format!("{registry}/test/honest:1");
    daemon.docker_ok(&["pull", &honest]);
    assert_eq!(
        daemon.docker_ok(&["run", "--rm", &honest, "echo", "pulled"]),
        "pulled"
    );
}
