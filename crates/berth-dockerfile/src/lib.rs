//! The Dockerfile language as Docker's classic builder reads it.
//!
//! * [`parse`] turns a Dockerfile's text into [`Instruction`]s: parser directives
//!   (`# escape=` and `# syntax=`, which Berth notes and ignores), comments, line
//!   continuations with the escape character, and each instruction's keyword (any case)
//!   with the rest of its logical line.
//! * [`words`] reads what follows a keyword: the exec (JSON array) and shell forms,
//!   leading `--flag=value` options, `key=value` pairs (ENV, LABEL, ARG), and
//!   environment substitution (`$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR:+alt}`,
//!   `${VAR-default}`, `${VAR+alt}`, `${VAR:?message}`) with the quoting rules of
//!   Docker's shell lexer.
//! * [`ignore`] decides which context paths a `.dockerignore` excludes, with Docker's
//!   rules (`!` exceptions, `**`, a pattern that excludes a directory excludes its
//!   contents).
//!
//! Why not a parser crate: the one Rust Dockerfile parser on crates.io
//! (`dockerfile-parser`) has no parser directives (so no `# escape=`), no substitution
//! and no `.dockerignore`, and parses instruction arguments in ways the classic builder
//! does not (it is made for reading Dockerfiles, not building them). The grammar is
//! small; the rules here follow Docker's own parser and shell lexer.

pub mod ignore;
pub mod words;

use thiserror::Error;

/// A Dockerfile that cannot be read, with the line Docker would name.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("dockerfile parse error line {line}: unknown instruction: {keyword}")]
    UnknownInstruction { line: usize, keyword: String },
    #[error("dockerfile parse error line {line}: {message}")]
    Invalid { line: usize, message: String },
    #[error("the Dockerfile (or Containerfile) cannot be empty")]
    Empty,
}

/// The instructions the classic builder knows.
pub const KEYWORDS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// One instruction: its keyword (upper case), the rest of its logical line (continuations
/// joined, comments inside it dropped), and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    pub keyword: String,
    pub rest: String,
    pub line: usize,
}

impl Instruction {
    /// The instruction as `docker history` and the classic builder's "Step" lines show
    /// it: the keyword as written by Docker (upper case) and the rest.
    pub fn display(&self) -> String {
        if self.rest.is_empty() {
            self.keyword.clone()
        } else {
            format!("{} {}", self.keyword, self.rest)
        }
    }
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The escape character (`\` unless `# escape=` says `` ` ``).
    pub escape: char,
    /// Notes for the build's output: directives Berth reads but does not act on.
    pub notes: Vec<String>,
    pub instructions: Vec<Instruction>,
}

/// A parser directive line: `# name=value` (spaces allowed around both).
fn directive(line: &str) -> Option<(String, String)> {
    let body = line.trim().strip_prefix('#')?;
    let (name, value) = body.split_once('=')?;
    let name = name.trim();
    if name.is_empty()
        || !name.starts_with(|c: char| c.is_ascii_alphabetic())
        || !name.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return None;
    }
    Some((name.to_ascii_lowercase(), value.trim().to_owned()))
}

/// Whether `line` (trailing whitespace ignored) ends with the escape character that
/// continues it; returns the line without it.
fn continued(line: &str, escape: char) -> Option<&str> {
    let trimmed = line.trim_end();
    trimmed.strip_suffix(escape)
}

/// Parses a Dockerfile's text.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.lines().collect();
    let mut escape = '\\';
    let mut notes = Vec::new();
    let mut seen = Vec::new();
    let mut index = 0;
    // Directives come first; the first line that is not one ends them.
    while index < lines.len() {
        let Some((name, value)) = directive(lines[index]) else {
            break;
        };
        if seen.contains(&name) {
            return Err(ParseError::Invalid {
                line: index + 1,
                message: format!("only one {name} parser directive can be used"),
            });
        }
        match name.as_str() {
            "escape" => {
                escape = match value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    other => {
                        return Err(ParseError::Invalid {
                            line: index + 1,
                            message: format!(
                                "invalid escape token '{other}' does not match ` or \\"
                            ),
                        })
                    }
                }
            }
            "syntax" => notes.push(format!(
                "the syntax directive ({value}) is ignored: Berth builds with Docker's classic builder"
            )),
            // Unknown directives are comments, as Docker reads them.
            _ => {}
        }
        seen.push(name);
        index += 1;
    }

    let mut instructions = Vec::new();
    while index < lines.len() {
        let start = index;
        let line = lines[index];
        index += 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut logical = String::new();
        let mut current = line.trim_start();
        loop {
            match continued(current, escape) {
                Some(head) => {
                    logical.push_str(head);
                    // The next line that is neither empty nor a comment continues it.
                    let mut next = None;
                    while index < lines.len() {
                        let candidate = lines[index];
                        index += 1;
                        let t = candidate.trim();
                        if t.is_empty() || t.starts_with('#') {
                            continue;
                        }
                        next = Some(candidate);
                        break;
                    }
                    match next {
                        Some(next) => current = next,
                        None => break,
                    }
                }
                None => {
                    logical.push_str(current);
                    break;
                }
            }
        }
        let logical = logical.trim();
        let (keyword, rest) = match logical.find(char::is_whitespace) {
            Some(at) => (&logical[..at], logical[at..].trim()),
            None => (logical, ""),
        };
        let keyword = keyword.to_ascii_uppercase();
        if !KEYWORDS.contains(&keyword.as_str()) {
            return Err(ParseError::UnknownInstruction {
                line: start + 1,
                keyword,
            });
        }
        instructions.push(Instruction {
            keyword,
            rest: rest.to_owned(),
            line: start + 1,
        });
    }
    if instructions.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(Dockerfile {
        escape,
        notes,
        instructions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keywords(file: &Dockerfile) -> Vec<(String, String)> {
        file.instructions
            .iter()
            .map(|i| (i.keyword.clone(), i.rest.clone()))
            .collect()
    }

    #[test]
    fn continuations_comments_and_case() {
        let file = parse(
            "# a comment\nfrom busybox AS base\n\nRUN echo a \\\n  # inside\n\n  && echo b\nenv A=1\n",
        )
        .unwrap();
        assert_eq!(
            keywords(&file),
            vec![
                ("FROM".into(), "busybox AS base".into()),
                ("RUN".into(), "echo a   && echo b".into()),
                ("ENV".into(), "A=1".into()),
            ]
        );
        assert_eq!(file.instructions[1].line, 4);
        assert_eq!(file.escape, '\\');
    }

    #[test]
    fn escape_directive_changes_the_continuation() {
        let file = parse("# escape=`\nFROM scratch\nCOPY a `\n  C:\\dir\\\n").unwrap();
        assert_eq!(file.escape, '`');
        assert_eq!(file.instructions[1].rest, "a   C:\\dir\\");
    }

    #[test]
    fn directives_stop_at_the_first_other_line() {
        // After a comment, `# escape=` is a comment too.
        let file = parse("# hello\n# escape=`\nFROM scratch\nRUN a \\\n b\n").unwrap();
        assert_eq!(file.escape, '\\');
        assert_eq!(file.instructions[1].rest, "a  b");
        let file = parse("# syntax=docker/dockerfile:1\nFROM scratch\n").unwrap();
        assert_eq!(file.notes.len(), 1);
        assert!(parse("# escape=x\nFROM scratch\n").is_err());
        assert!(parse("# escape=`\n# escape=\\\nFROM scratch\n").is_err());
    }

    #[test]
    fn unknown_and_empty_are_errors() {
        assert_eq!(
            parse("FROM scratch\nFOO bar\n"),
            Err(ParseError::UnknownInstruction {
                line: 2,
                keyword: "FOO".into()
            })
        );
        assert_eq!(parse("# only\n\n"), Err(ParseError::Empty));
    }
}
