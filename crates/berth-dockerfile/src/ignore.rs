//! `.dockerignore`: which paths of a build context the build leaves out.
//!
//! Docker's rules: one pattern per line; blank lines and lines starting with `#` are
//! skipped; a pattern is cleaned as a path (a leading `/` and `./` dropped); `*` and `?`
//! never match `/`, `**` matches any number of directories; a line starting with `!` is
//! an exception. A path is excluded when the last pattern that matches it, or matches
//! one of its parent directories, is not an exception.

use globset::{Glob, GlobBuilder, GlobMatcher};

use crate::words::WordError;

/// A compiled `.dockerignore`.
#[derive(Debug, Default)]
pub struct IgnoreRules {
    rules: Vec<(GlobMatcher, bool)>,
}

/// One pattern as a matcher of slash-separated relative paths.
pub fn compile_pattern(pattern: &str) -> Result<GlobMatcher, WordError> {
    let glob: Glob = GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|error| WordError::Invalid(format!("invalid pattern {pattern:?}: {error}")))?;
    Ok(glob.compile_matcher())
}

/// A path cleaned as Go's `filepath.Clean` does, relative (no leading `/`).
pub fn clean_relative(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

impl IgnoreRules {
    /// Reads a `.dockerignore`'s text.
    pub fn parse(text: &str) -> Result<Self, WordError> {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let pattern = clean_relative(pattern);
            if pattern.is_empty() {
                continue;
            }
            rules.push((compile_pattern(&pattern)?, exception));
        }
        Ok(Self { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether the relative path (slash-separated, no leading `/`) is left out.
    pub fn excludes(&self, path: &str) -> bool {
        let path = clean_relative(path);
        if path.is_empty() {
            return false;
        }
        // The path and each of its parents, the path itself last.
        let mut candidates = Vec::new();
        let mut at = 0;
        while let Some(slash) = path[at..].find('/') {
            candidates.push(&path[..at + slash]);
            at += slash + 1;
        }
        candidates.push(path.as_str());
        let mut excluded = false;
        for (matcher, exception) in &self.rules {
            if candidates.iter().any(|c| matcher.is_match(c)) {
                excluded = !exception;
            }
        }
        excluded
    }

    /// Whether some exception could bring back a path under the directory `dir` (so a
    /// walk must look inside an excluded directory).
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|(_, exception)| *exception)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockers_pattern_rules() {
        let rules = IgnoreRules::parse(
            "# comment\n\n*.log\n/build\nsrc/**/*.tmp\n!keep.log\nnode_modules\n**/secret\n",
        )
        .unwrap();
        assert!(rules.excludes("a.log"));
        assert!(!rules.excludes("keep.log"));
        assert!(!rules.excludes("dir/a.log"), "* does not cross /");
        assert!(rules.excludes("build"));
        assert!(
            rules.excludes("build/out/x"),
            "a directory's contents go with it"
        );
        assert!(rules.excludes("src/a/b/c.tmp"));
        assert!(rules.excludes("src/c.tmp"));
        assert!(rules.excludes("node_modules/x/y.js"));
        assert!(!rules.excludes("lib/node_modules/x"));
        assert!(rules.excludes("deep/er/secret"));
        assert!(rules.excludes("secret"));
        assert!(!rules.excludes("main.rs"));
    }

    #[test]
    fn the_last_matching_rule_wins() {
        let rules = IgnoreRules::parse("docs\n!docs/README.md\n").unwrap();
        assert!(rules.excludes("docs/a.md"));
        assert!(!rules.excludes("docs/README.md"));
        assert!(rules.has_exceptions());
        let rules = IgnoreRules::parse("!a\n*\n").unwrap();
        assert!(rules.excludes("a"));
    }

    #[test]
    fn cleaning() {
        assert_eq!(clean_relative("/a/./b/../c/"), "a/c");
        assert_eq!(clean_relative("../x"), "x");
    }
}
