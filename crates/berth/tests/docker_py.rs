//! docker-py (Debian's python3-docker), a second real client of the Docker API, against
//! the same daemon: it negotiates an older API version and reads fields the CLI does not.

mod common;

use common::shared;

#[test]
fn docker_py_runs_execs_waits_and_lists() {
    let daemon = shared();
    let script = r#"
import sys, docker
c = docker.DockerClient(base_url="unix://" + sys.argv[1], version="auto")
out = c.containers.run("busybox", ["echo", "from docker-py"], remove=True)
assert out == b"from docker-py\n", out
ct = c.containers.run("busybox", ["sleep", "60"], detach=True)
ct.reload()
assert ct.status == "running", ct.status
code, output = ct.exec_run(["sh", "-c", "echo exec ok; exit 3"])
assert (code, output) == (3, b"exec ok\n"), (code, output)
ct.kill()
assert ct.wait()["StatusCode"] == 137
ct.remove()
assert any("busybox:latest" in image.tags for image in c.images.list())
print("docker-py ok")
"#;
    let output = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(&daemon.socket)
        .output()
        .expect("python3-docker (apt-get install python3-docker)");
    assert!(
        output.status.success(),
        "docker-py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "docker-py ok"
    );
}
