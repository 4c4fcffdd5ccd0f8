//! Docker image references: parsing and normalisation.
//!
//! Contract: [`normalize`] accepts what `docker` accepts for `name[:tag][@digest]` and
//! fills in the same defaults:
//!
//! * no registry domain → `docker.io`; `index.docker.io` → `docker.io`;
//! * a single-component name on `docker.io` → `library/<name>`;
//! * neither tag nor digest → tag `latest`.
//!
//! The first `/`-separated component is a registry domain only when it contains `.` or
//! `:`, is `localhost`, or contains an upper-case letter (exactly Docker's rule).
//! Repository path components must be lower case (`[a-z0-9]+` joined by `.`, `_`, `__`
//! or runs of `-`); tags are `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`; digests are
//! `algorithm:hex` (`sha256` needs exactly 64 lower-case hex digits). A bare 64-hex-digit
//! name is refused, as Docker does, since it would be confused with an image id.
//!
//! [`Reference::canonical`] is the fully-qualified form (`docker.io/library/busybox:latest`)
//! used as the key of the store's `tags` table; [`Reference::familiar`] is the short form
//! Docker shows users (`busybox:latest`, `localhost:5000/foo:1`).

use crate::error::ImageError;

/// The default registry.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// The legacy name of the default registry, normalised to [`DEFAULT_DOMAIN`].
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
/// The namespace of official images on the default registry.
const OFFICIAL_REPO_PREFIX: &str = "library/";
/// The tag used when a reference has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
/// Longest repository name (domain + path) Docker accepts.
const NAME_TOTAL_LENGTH_MAX: usize = 255;
/// Longest tag Docker accepts.
const TAG_LENGTH_MAX: usize = 128;

/// A normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry domain, with optional `:port` (`docker.io`, `localhost:5000`).
    pub domain: String,
    /// Repository path inside the registry (`library/busybox`, `a/b`).
    pub path: String,
    /// The tag; `Some("latest")` when the input had neither tag nor digest.
    pub tag: Option<String>,
    /// The digest (`sha256:<hex>`), if the input named one.
    pub digest: Option<String>,
}

impl Reference {
    /// The fully-qualified repository name, `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The repository name as Docker shows it: `busybox`, `foo/bar`, `localhost:5000/a/b`.
    pub fn familiar_name(&self) -> String {
        if self.domain == DEFAULT_DOMAIN {
            match self.path.strip_prefix(OFFICIAL_REPO_PREFIX) {
                Some(rest) if !rest.contains('/') => rest.to_owned(),
                _ => self.path.clone(),
            }
        } else {
            self.name()
        }
    }

    /// The fully-qualified reference: `docker.io/library/busybox:latest`.
    pub fn canonical(&self) -> String {
        Self::with_suffixes(self.name(), self.tag.as_deref(), self.digest.as_deref())
    }

    /// The reference as Docker shows it: `busybox:latest`, `localhost:5000/foo:1`.
    pub fn familiar(&self) -> String {
        Self::with_suffixes(
            self.familiar_name(),
            self.tag.as_deref(),
            self.digest.as_deref(),
        )
    }

    fn with_suffixes(mut name: String, tag: Option<&str>, digest: Option<&str>) -> String {
        if let Some(tag) = tag {
            name.push(':');
            name.push_str(tag);
        }
        if let Some(digest) = digest {
            name.push('@');
            name.push_str(digest);
        }
        name
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.familiar())
    }
}

/// Parses and normalises a reference as Docker does (see the module docs).
pub fn normalize(s: &str) -> Result<Reference, ImageError> {
    let invalid = |why: &str| ImageError::InvalidReference(format!("{s:?}: {why}"));
    if s.is_empty() {
        return Err(invalid("empty reference"));
    }
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(
            "cannot specify 64-byte hexadecimal strings as a repository name",
        ));
    }
    let (name_and_tag, digest) = match s.split_once('@') {
        Some((name, digest)) => {
            if !valid_digest(digest) {
                return Err(invalid("invalid digest"));
            }
            (name, Some(digest.to_owned()))
        }
        None => (s, None),
    };
    // A ':' after the last '/' separates the tag (a ':' before it is a registry port).
    let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
        Some(i) => {
            let colon = last_slash + i;
            let tag = &name_and_tag[colon + 1..];
            if !valid_tag(tag) {
                return Err(invalid("invalid tag"));
            }
            (&name_and_tag[..colon], Some(tag.to_owned()))
        }
        None => (name_and_tag, None),
    };
    if name.is_empty() {
        return Err(invalid("empty repository name"));
    }
    if name.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(invalid(
            "repository name must not be more than 255 characters",
        ));
    }

    let (domain, path) = split_domain(name);
    if !valid_domain(&domain) {
        return Err(invalid("invalid registry domain"));
    }
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(invalid("repository name must be lowercase"));
    }
    if path.is_empty() || !path.split('/').all(valid_path_component) {
        return Err(invalid("invalid repository name"));
    }
    let tag = match (&tag, &digest) {
        (None, None) => Some(DEFAULT_TAG.to_owned()),
        _ => tag,
    };
    Ok(Reference {
        domain,
        path,
        tag,
        digest,
    })
}

/// Splits a repository name into (domain, path), applying Docker's defaults.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first.to_owned(), rest.to_owned())
        }
        _ => (DEFAULT_DOMAIN.to_owned(), name.to_owned()),
    };
    if domain == LEGACY_DEFAULT_DOMAIN {
        domain = DEFAULT_DOMAIN.to_owned();
    }
    if domain == DEFAULT_DOMAIN && !path.contains('/') {
        path = format!("{OFFICIAL_REPO_PREFIX}{path}");
    }
    (domain, path)
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        // One run of alphanumerics.
        let start = i;
        while i < bytes.len() && is_alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        // One separator, followed by more alphanumerics.
        let sep_start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[sep_start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok || i == bytes.len() {
            return false;
        }
    }
}

/// `host[:port]`, host being dot-separated `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?`
/// labels or a bracketed IPv6 address.
fn valid_domain(domain: &str) -> bool {
    let (host_ok, port) = if let Some(rest) = domain.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return false;
        };
        let ip_ok = !ip.is_empty() && ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return false,
            },
        };
        (ip_ok, port)
    } else {
        let (host, port) = match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        };
        let host_ok = !host.is_empty() && host.split('.').all(valid_domain_label);
        (host_ok, port)
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

fn valid_domain_label(label: &str) -> bool {
    let b = label.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        }
        _ => false,
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    b.len() <= TAG_LENGTH_MAX
        && b.first()
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `algorithm:hex`; sha256 needs exactly 64 lower-case hex digits, others at least 32.
fn valid_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let algorithm_ok = algorithm
        .bytes()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && algorithm
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'+' | b'.'));
    let hex_ok = hex.bytes().all(|c| c.is_ascii_hexdigit());
    if algorithm == "sha256" {
        return crate::digest::is_sha256_hex(hex);
    }
    algorithm_ok && hex_ok && hex.len() >= 32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(s: &str) -> String {
        match normalize(s) {
            Ok(r) => r.canonical(),
            Err(e) => panic!("{s}: {e}"),
        }
    }

    fn familiar(s: &str) -> String {
        match normalize(s) {
            Ok(r) => r.familiar(),
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn official_images() {
        for s in [
            "busybox",
            "busybox:latest",
            "library/busybox",
            "docker.io/busybox",
            "docker.io/library/busybox",
            "docker.io/library/busybox:latest",
            "index.docker.io/library/busybox",
        ] {
            assert_eq!(canonical(s), "docker.io/library/busybox:latest", "{s}");
            assert_eq!(familiar(s), "busybox:latest", "{s}");
        }
        assert_eq!(canonical("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(familiar("busybox:1.36"), "busybox:1.36");
    }

    #[test]
    fn user_and_private_registries() {
        assert_eq!(canonical("foo/bar"), "docker.io/foo/bar:latest");
        assert_eq!(familiar("docker.io/foo/bar:2"), "foo/bar:2");
        let r = normalize("localhost:5000/a/b:c").expect("valid");
        assert_eq!(r.domain, "localhost:5000");
        assert_eq!(r.path, "a/b");
        assert_eq!(r.tag.as_deref(), Some("c"));
        assert_eq!(r.canonical(), "localhost:5000/a/b:c");
        assert_eq!(r.familiar(), "localhost:5000/a/b:c");
        assert_eq!(canonical("localhost/x"), "localhost/x:latest");
        assert_eq!(
            canonical("quay.io/a_b/c-d.e:v1.0"),
            "quay.io/a_b/c-d.e:v1.0"
        );
        assert_eq!(canonical("Registry/foo"), "Registry/foo:latest");
        assert_eq!(canonical("[::1]:5000/foo"), "[::1]:5000/foo:latest");
        // "library/a/b" is not an official image: keep the prefix in the familiar form.
        assert_eq!(familiar("docker.io/library/a/b"), "library/a/b:latest");
    }

    #[test]
    fn digests() {
        let hex = "a".repeat(64);
        let r = normalize(&format!("busybox@sha256:{hex}")).expect("valid");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest, Some(format!("sha256:{hex}")));
        assert_eq!(
            r.canonical(),
            format!("docker.io/library/busybox@sha256:{hex}")
        );
        assert_eq!(r.familiar(), format!("busybox@sha256:{hex}"));
        let r = normalize(&format!("busybox:1@sha256:{hex}")).expect("valid");
        assert_eq!(
            r.canonical(),
            format!("docker.io/library/busybox:1@sha256:{hex}")
        );
        assert!(normalize("busybox@sha256:abc").is_err());
        assert!(normalize(&format!("busybox@sha256:{}", "A".repeat(64))).is_err());
    }

    #[test]
    fn invalid() {
        for s in [
            "",
            "Busybox",
            "docker.io/Foo/bar",
            "busybox:",
            "busybox:-x",
            ":tag",
            "a//b",
            "a/",
            "-a",
            "a-",
            "a..b",
            "a___b",
            "foo bar",
            "localhost:x/foo",
            &"a".repeat(300),
            &"b".repeat(64),
        ] {
            assert!(
                matches!(normalize(s), Err(ImageError::InvalidReference(_))),
                "{s:?} should be rejected"
            );
        }
        assert!(normalize("a__b-c--d.e").is_ok());
        assert!(normalize(&format!("foo:{}", "t".repeat(128))).is_ok());
        assert!(normalize(&format!("foo:{}", "t".repeat(129))).is_err());
    }
}
