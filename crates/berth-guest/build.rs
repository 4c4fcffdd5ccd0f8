//! Builds Berth's agent as a static binary and hands its path to the crate, which embeds
//! it: `cargo build --release` then yields one `berth` binary that carries its own guest
//! PID 1. The agent is built by a nested cargo with its own target directory, for the
//! explicit target triple, so that `+crt-static` applies to the agent only and not to
//! build scripts or proc-macros.

use std::path::PathBuf;
use std::process::Command;

const TRIPLE: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .join("../..")
        .canonicalize()
        .expect("workspace root exists");
    for watched in [
        "crates/berth-agent",
        "crates/berth-agent-proto",
        "Cargo.lock",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    let target_dir = workspace.join("target/agent");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "berth-agent",
            "--target",
            TRIPLE,
            "--target-dir",
        ])
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        )
        .status()
        .expect("running cargo to build berth-agent");
    assert!(
        status.success(),
        "building berth-agent (static) failed; run `cargo build --release -p berth-agent` to see why"
    );
    let binary = target_dir.join(TRIPLE).join("release/berth-agent");
    println!("cargo:rustc-env=BERTH_AGENT_BINARY={}", binary.display());
}
