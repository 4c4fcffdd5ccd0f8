//! Reading an instruction's arguments, as Docker's classic builder does.
//!
//! * [`exec_form`]: a JSON array of strings (`["sh", "-c", "x"]`), or `None` for the shell
//!   form.
//! * [`split_flags`]: the leading `--name=value` options of FROM, COPY, ADD, HEALTHCHECK.
//! * [`Lexer`]: Docker's shell lexer: quotes (`'...'` literal, `"..."` with `$` and the
//!   escape character), the escape character, and environment substitution. Unquoted
//!   whitespace separates words; a substituted value is never split again (Docker's lexer
//!   does not split what it substitutes).
//! * [`name_values`]: the `key=value ...` pairs of ENV, LABEL and ARG, and ENV's and
//!   LABEL's legacy `key value` form.

use thiserror::Error;

/// An argument that cannot be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WordError {
    #[error("unexpected end of statement while looking for matching {0}")]
    Unterminated(char),
    #[error("missing '}}' in a variable substitution")]
    UnterminatedBrace,
    #[error("{name}: {message}")]
    Required { name: String, message: String },
    #[error("bad substitution: ${{{0}}}")]
    BadSubstitution(String),
    #[error("{keyword} requires at least one argument")]
    Missing { keyword: String },
    #[error("{0}")]
    Invalid(String),
}

/// The exec form: the arguments as a JSON array of strings, if they are one.
pub fn exec_form(rest: &str) -> Option<Vec<String>> {
    let trimmed = rest.trim();
    if !trimmed.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(trimmed).ok()
}

/// A `--name=value` option before an instruction's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub name: String,
    pub value: String,
}

/// Splits the leading `--name=value` (or `--name`) options from the rest.
pub fn split_flags(rest: &str) -> (Vec<Flag>, &str) {
    let mut flags = Vec::new();
    let mut remainder = rest.trim_start();
    while let Some(option) = remainder.strip_prefix("--") {
        let end = option.find(char::is_whitespace).unwrap_or(option.len());
        let word = &option[..end];
        if word.is_empty() {
            break;
        }
        let (name, value) = word.split_once('=').unwrap_or((word, ""));
        flags.push(Flag {
            name: name.to_ascii_lowercase(),
            value: value.to_owned(),
        });
        remainder = option[end..].trim_start();
    }
    (flags, remainder)
}

/// Variables that substitution reads: `(name, value)`, later entries winning.
pub trait Variables {
    fn lookup(&self, name: &str) -> Option<String>;
}

impl Variables for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
}

impl Variables for &[(String, String)] {
    fn lookup(&self, name: &str) -> Option<String> {
        Variables::lookup(*self, name)
    }
}

impl Variables for Vec<(String, String)> {
    fn lookup(&self, name: &str) -> Option<String> {
        Variables::lookup(self.as_slice(), name)
    }
}

/// Docker's shell lexer with a given escape character.
#[derive(Debug, Clone, Copy)]
pub struct Lexer {
    pub escape: char,
}

impl Lexer {
    pub fn new(escape: char) -> Self {
        Self { escape }
    }

    /// The text as one word: quotes removed, escapes applied, variables substituted
    /// (whitespace kept).
    pub fn word(&self, text: &str, vars: &dyn Variables) -> Result<String, WordError> {
        Ok(self.process(text, vars, false)?.join(""))
    }

    /// The text as words: split at unquoted whitespace, each processed as [`Lexer::word`].
    pub fn words(&self, text: &str, vars: &dyn Variables) -> Result<Vec<String>, WordError> {
        self.process(text, vars, true)
    }

    fn process(
        &self,
        text: &str,
        vars: &dyn Variables,
        split: bool,
    ) -> Result<Vec<String>, WordError> {
        let chars: Vec<char> = text.chars().collect();
        let mut words = Vec::new();
        let mut word = String::new();
        // Whether the current word has begun (an empty quoted string is a word).
        let mut started = false;
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if split && c.is_whitespace() {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
                i += 1;
                continue;
            }
            started = true;
            if c == self.escape {
                // The escape character takes the next character literally; at the end
                // of the text it is itself.
                match chars.get(i + 1) {
                    Some(&next) => word.push(next),
                    None => word.push(c),
                }
                i += 2;
            } else if c == '\'' {
                let close = chars[i + 1..]
                    .iter()
                    .position(|&x| x == '\'')
                    .ok_or(WordError::Unterminated('\''))?;
                word.extend(&chars[i + 1..i + 1 + close]);
                i += close + 2;
            } else if c == '"' {
                i += 1;
                loop {
                    let Some(&q) = chars.get(i) else {
                        return Err(WordError::Unterminated('"'));
                    };
                    if q == '"' {
                        i += 1;
                        break;
                    }
                    if q == self.escape {
                        // Inside double quotes the escape character escapes `"`, `$`
                        // and itself; before anything else it stays.
                        match chars.get(i + 1) {
                            Some(&next) if next == '"' || next == '$' || next == self.escape => {
                                word.push(next);
                                i += 2;
                            }
                            _ => {
                                word.push(q);
                                i += 1;
                            }
                        }
                    } else if q == '$' {
                        i = self.substitute(&chars, i, vars, &mut word)?;
                    } else {
                        word.push(q);
                        i += 1;
                    }
                }
            } else if c == '$' {
                i = self.substitute(&chars, i, vars, &mut word)?;
            } else {
                word.push(c);
                i += 1;
            }
        }
        if started || !split {
            words.push(word);
        }
        Ok(words)
    }

    /// Substitutes the variable at `chars[at]` (a `$`) into `out`; returns the index after
    /// it.
    fn substitute(
        &self,
        chars: &[char],
        at: usize,
        vars: &dyn Variables,
        out: &mut String,
    ) -> Result<usize, WordError> {
        let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
        match chars.get(at + 1) {
            Some('{') => {
                let start = at + 2;
                let mut end = start;
                while end < chars.len() && is_name(chars[end]) {
                    end += 1;
                }
                let name: String = chars[start..end].iter().collect();
                if name.is_empty() {
                    return Err(WordError::BadSubstitution(String::new()));
                }
                match chars.get(end) {
                    Some('}') => {
                        out.push_str(&vars.lookup(&name).unwrap_or_default());
                        Ok(end + 1)
                    }
                    Some(_) => {
                        // `${name<op>word}`: the word runs to the matching `}`.
                        let (colon, op_at) = if chars[end] == ':' {
                            (true, end + 1)
                        } else {
                            (false, end)
                        };
                        let op = *chars.get(op_at).ok_or(WordError::UnterminatedBrace)?;
                        let mut depth = 0;
                        let mut close = op_at + 1;
                        loop {
                            match chars.get(close) {
                                None => return Err(WordError::UnterminatedBrace),
                                Some('}') if depth == 0 => break,
                                Some('}') => depth -= 1,
                                Some('{') => depth += 1,
                                Some(_) => {}
                            }
                            close += 1;
                        }
                        let raw: String = chars[op_at + 1..close].iter().collect();
                        let value = vars.lookup(&name);
                        // With `:`, an empty value counts as unset.
                        let set = match &value {
                            Some(v) => !colon || !v.is_empty(),
                            None => false,
                        };
                        match op {
                            '-' => {
                                if set {
                                    out.push_str(&value.unwrap_or_default());
                                } else {
                                    out.push_str(&self.word(&raw, vars)?);
                                }
                            }
                            '+' => {
                                if set {
                                    out.push_str(&self.word(&raw, vars)?);
                                }
                            }
                            '?' => {
                                if set {
                                    out.push_str(&value.unwrap_or_default());
                                } else {
                                    let message = self.word(&raw, vars)?;
                                    return Err(WordError::Required {
                                        name,
                                        message: if message.is_empty() {
                                            "is not allowed to be unset".into()
                                        } else {
                                            message
                                        },
                                    });
                                }
                            }
                            _ => {
                                let text: String = chars[start..=close].iter().collect();
                                return Err(WordError::BadSubstitution(
                                    text.trim_end_matches('}').to_owned(),
                                ));
                            }
                        }
                        Ok(close + 1)
                    }
                    None => Err(WordError::UnterminatedBrace),
                }
            }
            Some(&c) if is_name(c) => {
                let start = at + 1;
                let mut end = start;
                while end < chars.len() && is_name(chars[end]) {
                    end += 1;
                }
                let name: String = chars[start..end].iter().collect();
                out.push_str(&vars.lookup(&name).unwrap_or_default());
                Ok(end)
            }
            // A `$` before anything else is itself.
            _ => {
                out.push('$');
                Ok(at + 1)
            }
        }
    }
}

/// Splits `text` into words at unquoted whitespace, keeping quotes and escapes as they
/// are (Docker's `parseWords`, used before `key=value` pairs are processed).
fn raw_words(text: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            None if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            None => {
                word.push(c);
                if c == escape {
                    if let Some(next) = chars.next() {
                        word.push(next);
                    }
                } else if c == '"' || c == '\'' {
                    quote = Some(c);
                }
            }
            Some(q) => {
                word.push(c);
                if c == escape && q == '"' {
                    if let Some(next) = chars.next() {
                        word.push(next);
                    }
                } else if c == q {
                    quote = None;
                }
            }
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// The `key=value` pairs of ENV, LABEL or ARG (values processed with `lexer`, reading
/// `vars` as they were before the instruction). ENV and LABEL also take the legacy
/// `key value with spaces` form; ARG takes `name` alone (value `None`).
pub fn name_values(
    keyword: &str,
    rest: &str,
    lexer: &Lexer,
    vars: &dyn Variables,
) -> Result<Vec<(String, Option<String>)>, WordError> {
    let words = raw_words(rest, lexer.escape);
    if words.is_empty() {
        return Err(WordError::Missing {
            keyword: keyword.to_owned(),
        });
    }
    let legacy = keyword != "ARG" && !words[0].contains('=');
    if legacy {
        // `ENV name value...`: one pair; the value is the rest of the line.
        let name = words[0].clone();
        let value_text = rest.trim_start()[words[0].len()..].trim();
        if value_text.is_empty() {
            return Err(WordError::Invalid(format!(
                "{keyword} names can not be blank"
            )));
        }
        return Ok(vec![(name, Some(lexer.word(value_text, vars)?))]);
    }
    let mut pairs = Vec::new();
    for word in words {
        match word.split_once('=') {
            Some((name, value)) => {
                if name.is_empty() {
                    return Err(WordError::Invalid(format!(
                        "{keyword} names can not be blank"
                    )));
                }
                let name = lexer.word(name, vars)?;
                pairs.push((name, Some(lexer.word(value, vars)?)));
            }
            None if keyword == "ARG" => pairs.push((word, None)),
            None => {
                return Err(WordError::Invalid(format!(
                    "Syntax error - can't find = in \"{word}\". Must be of the form: name=value"
                )))
            }
        }
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vec<(String, String)> {
        vec![
            ("A".into(), "apple".into()),
            ("E".into(), String::new()),
            ("S".into(), "two words".into()),
        ]
    }

    #[test]
    fn substitution_as_dockers_lexer_does_it() {
        let lexer = Lexer::new('\\');
        let v = vars();
        let cases = [
            ("$A", "apple"),
            ("${A}pie", "applepie"),
            ("${MISSING:-dflt}", "dflt"),
            ("${E:-dflt}", "dflt"),
            ("${E-dflt}", ""),
            ("${A:+alt}", "alt"),
            ("${E:+alt}", ""),
            ("${E+alt}", "alt"),
            ("${MISSING:-$A}", "apple"),
            ("'$A'", "$A"),
            ("\"$A b\"", "apple b"),
            ("\\$A", "$A"),
            ("a\\ b", "a b"),
            ("\"q\\\"x\"", "q\"x"),
            ("cost$", "cost$"),
        ];
        for (input, expected) in cases {
            assert_eq!(lexer.word(input, &v).unwrap(), expected, "{input}");
        }
        assert!(matches!(
            lexer.word("${MISSING:?needed}", &v),
            Err(WordError::Required { .. })
        ));
        assert_eq!(lexer.word("\"open", &v), Err(WordError::Unterminated('"')));
        assert_eq!(lexer.word("${A", &v), Err(WordError::UnterminatedBrace));
    }

    #[test]
    fn words_split_at_unquoted_whitespace_only() {
        let lexer = Lexer::new('\\');
        let v = vars();
        assert_eq!(
            lexer.words("a  \"b c\" $S ''", &v).unwrap(),
            vec!["a", "b c", "two words", ""]
        );
        let backtick = Lexer::new('`');
        assert_eq!(
            backtick.words("C:\\dir `$A", &v).unwrap(),
            vec!["C:\\dir", "$A"]
        );
    }

    #[test]
    fn exec_form_and_flags() {
        assert_eq!(
            exec_form(r#"["sh", "-c", "echo hi"]"#),
            Some(vec!["sh".into(), "-c".into(), "echo hi".into()])
        );
        assert_eq!(exec_form("echo [x]"), None);
        assert_eq!(exec_form("[not json"), None);
        let (flags, rest) = split_flags("--from=build --chown=1:2  a b/");
        assert_eq!(flags.len(), 2);
        assert_eq!(flags[0].name, "from");
        assert_eq!(flags[1].value, "1:2");
        assert_eq!(rest, "a b/");
    }

    #[test]
    fn env_pairs_and_the_legacy_form() {
        let lexer = Lexer::new('\\');
        let v = vars();
        assert_eq!(
            name_values("ENV", "X=1 Y=\"two words\" Z=$A", &lexer, &v).unwrap(),
            vec![
                ("X".into(), Some("1".into())),
                ("Y".into(), Some("two words".into())),
                ("Z".into(), Some("apple".into())),
            ]
        );
        assert_eq!(
            name_values("ENV", "X  hello   world", &lexer, &v).unwrap(),
            vec![("X".into(), Some("hello   world".into()))]
        );
        assert_eq!(
            name_values("ARG", "V W=3", &lexer, &v).unwrap(),
            vec![("V".into(), None), ("W".into(), Some("3".into()))]
        );
        assert!(name_values("ENV", "", &lexer, &v).is_err());
        assert!(name_values("LABEL", "a=1 b", &lexer, &v).is_err());
    }
}
