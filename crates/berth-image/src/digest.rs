//! SHA-256 digests: validation of `sha256:<hex>` strings and hashing while copying.
//!
//! Contract: an image id and a layer diff id are always `sha256:` followed by exactly 64
//! lower-case hex digits; [`parse_sha256`] is the only gate through which such a string
//! becomes a file name under `blobs/sha256/`, so a hostile config cannot name a path.

use std::io::{self, Write};

use sha2::{Digest, Sha256};

/// True for exactly 64 lower-case hex digits.
pub(crate) fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64 && is_lower_hex(hex)
}

/// True for a non-empty string of lower-case hex digits.
pub(crate) fn is_lower_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// The hex part of `sha256:<64 lower-case hex>`, or `None` if `digest` is not that.
pub(crate) fn parse_sha256(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|hex| is_sha256_hex(hex))
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A writer that hashes and counts everything written through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// Returns the inner writer, `sha256:<hex>` of the bytes written, and their count.
    pub(crate) fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, digest, self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let written = buf.get(..n).unwrap_or(buf);
        self.hasher.update(written);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(sha256_digest(b""), format!("sha256:{empty}"));
        assert_eq!(parse_sha256(&format!("sha256:{empty}")), Some(empty));
        assert_eq!(parse_sha256(empty), None);
        assert_eq!(parse_sha256("sha256:../../etc/passwd"), None);
        assert_eq!(
            parse_sha256(&format!("sha256:{}", empty.to_uppercase())),
            None
        );
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"abc").expect("write to vec");
        let (bytes, digest, n) = w.finish();
        assert_eq!(bytes, b"abc");
        assert_eq!(n, 3);
        assert_eq!(digest, sha256_digest(b"abc"));
    }
}
