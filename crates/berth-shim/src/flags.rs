//! The shim's command line, as containerd's runtime v2 manager writes it (Go's `flag`
//! syntax: `-name value` or `-name=value`, flags before the one positional word, the
//! action):
//!
//! ```text
//! containerd-shim-berth-v2 -namespace NS -address GRPC_SOCKET -publish-binary BIN \
//!     -id ID [-bundle DIR] [-socket unix://PATH] [-debug] start|delete
//! ```
//!
//! With no action, the shim serves the task API on `-socket` (how `start` runs it).
//! Go's `flag` package is what containerd and its shims use; no Rust crate parses its
//! syntax except one bundled with containerd's own shim crate (which brings its whole
//! runtime), so these few lines are Berth's own.

use std::ffi::OsString;

use crate::ShimError;

/// The parsed command line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flags {
    pub namespace: String,
    pub id: String,
    /// containerd's gRPC socket.
    pub address: String,
    pub publish_binary: String,
    pub bundle: String,
    /// Where to serve (`unix:///...`), when serving.
    pub socket: String,
    pub debug: bool,
    /// `start`, `delete`, or empty (serve).
    pub action: String,
}

/// Parses `args` (without the program's name).
pub fn parse(args: &[OsString]) -> Result<Flags, ShimError> {
    let mut flags = Flags::default();
    let mut words = args.iter().map(|arg| arg.to_string_lossy().into_owned());
    while let Some(word) = words.next() {
        let Some(flag) = word.strip_prefix('-') else {
            if !flags.action.is_empty() {
                return Err(ShimError::Usage(format!("unexpected argument {word:?}")));
            }
            flags.action = word;
            continue;
        };
        let flag = flag.strip_prefix('-').unwrap_or(flag);
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (flag, None),
        };
        if name == "debug" || name == "v" {
            flags.debug = inline.as_deref().is_none_or(|v| v == "true");
            continue;
        }
        let value = match inline {
            Some(value) => value,
            None => words
                .next()
                .ok_or_else(|| ShimError::Usage(format!("flag -{name} needs a value")))?,
        };
        let slot = match name {
            "namespace" => &mut flags.namespace,
            "id" => &mut flags.id,
            "address" => &mut flags.address,
            "publish-binary" => &mut flags.publish_binary,
            "bundle" => &mut flags.bundle,
            "socket" => &mut flags.socket,
            // Flags of later containerd releases that this shim does not need.
            "debug-ttrpc" | "log-level" => continue,
            other => return Err(ShimError::Usage(format!("unknown flag -{other}"))),
        };
        *slot = value;
    }
    if flags.namespace.is_empty() {
        return Err(ShimError::Usage("-namespace is required".into()));
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn containerds_start_line_is_read() {
        let flags = parse(&words(
            "-namespace default -address /run/c.sock -publish-binary /usr/bin/containerd -id t1 -debug start",
        ))
        .unwrap();
        assert_eq!(flags.namespace, "default");
        assert_eq!(flags.address, "/run/c.sock");
        assert_eq!(flags.publish_binary, "/usr/bin/containerd");
        assert_eq!(flags.id, "t1");
        assert!(flags.debug);
        assert_eq!(flags.action, "start");
    }

    #[test]
    fn inline_values_and_serving_without_an_action() {
        let flags = parse(&words("-namespace=k8s.io -id=x -socket=unix:///run/s")).unwrap();
        assert_eq!(flags.namespace, "k8s.io");
        assert_eq!(flags.socket, "unix:///run/s");
        assert_eq!(flags.action, "");
        assert!(!flags.debug);
    }

    #[test]
    fn bad_lines_are_refused() {
        assert!(parse(&words("-id x start")).is_err(), "no namespace");
        assert!(parse(&words("-namespace n -bogus 1")).is_err());
        assert!(
            parse(&words("-namespace n -id")).is_err(),
            "a flag without its value"
        );
        assert!(parse(&words("-namespace n start delete")).is_err());
    }
}
