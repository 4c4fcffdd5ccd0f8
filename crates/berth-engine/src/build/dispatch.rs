//! What each instruction does to a stage's config, and how its arguments read, as
//! Docker's classic builder does it (variables substituted in ADD, COPY, ENV, EXPOSE,
//! FROM, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR and ARG; never in RUN, CMD or
//! ENTRYPOINT, where the shell does it).
//!
//! The history line of a config-only step is Docker's: the stage's shell, then
//! `#(nop) ` and the instruction as the builder restates it (`CMD ["sh" "-c" "x"]`,
//! `VOLUME [/data]`, `ENV A=1`), so `docker history` reads as it does for Docker.

use berth_dockerfile::words::{exec_form, name_values, split_flags, Flag, Lexer};
use berth_dockerfile::Instruction;
use serde_json::{json, Map, Value};

use super::{at_line, BuildError, Stage};

/// FROM's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct From {
    pub image: String,
    /// `AS name`, lower case.
    pub name: Option<String>,
    pub platform: Option<String>,
}

/// A stage's `AS name` as written (before substitution, which names never use).
pub(crate) fn stage_name(rest: &str) -> Option<String> {
    let (_, rest) = split_flags(rest);
    let words: Vec<&str> = rest.split_whitespace().collect();
    match words.as_slice() {
        [_, as_word, name] if as_word.eq_ignore_ascii_case("as") => Some(name.to_ascii_lowercase()),
        _ => None,
    }
}

pub(crate) fn parse_from(
    rest: &str,
    line: usize,
    lexer: &Lexer,
    vars: &[(String, String)],
) -> Result<From, BuildError> {
    let (flags, rest) = split_flags(rest);
    let mut platform = None;
    for flag in flags {
        match flag.name.as_str() {
            "platform" => platform = Some(lexer.word(&flag.value, &vars).map_err(at_line(line))?),
            other => return Err(unknown_flag(line, "FROM", other)),
        }
    }
    let words = lexer.words(rest, &vars).map_err(at_line(line))?;
    let invalid = || BuildError::Instruction {
        line,
        message: "FROM requires either one or three arguments".into(),
    };
    let (image, name) = match words.as_slice() {
        [image] => (image.clone(), None),
        [image, as_word, name] if as_word.eq_ignore_ascii_case("as") => {
            let name = name.to_ascii_lowercase();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                || !name.starts_with(|c: char| c.is_ascii_alphabetic())
            {
                return Err(BuildError::Instruction {
                    line,
                    message: format!("invalid name for build stage: \"{name}\", name can't start with a number or contain symbols"),
                });
            }
            (image.clone(), Some(name))
        }
        _ => return Err(invalid()),
    };
    if image.is_empty() {
        return Err(invalid());
    }
    Ok(From {
        image,
        name,
        platform,
    })
}

fn unknown_flag(line: usize, keyword: &str, flag: &str) -> BuildError {
    BuildError::Instruction {
        line,
        message: format!("Unknown flag: {flag} (on {keyword})"),
    }
}

/// ARG's `name[=default]` pairs (defaults substituted).
pub(crate) fn arg_pairs(
    rest: &str,
    line: usize,
    lexer: &Lexer,
    vars: &[(String, String)],
) -> Result<Vec<(String, Option<String>)>, BuildError> {
    name_values("ARG", rest, lexer, &vars).map_err(at_line(line))
}

/// The base image's ONBUILD triggers, taken out of the config (they run once).
pub(crate) fn onbuild_triggers(config: &mut Map<String, Value>) -> Vec<String> {
    let triggers = strings(config.get("OnBuild"));
    config.remove("OnBuild");
    triggers
}

/// The history line of a config-only step.
pub(crate) fn nop(stage: &Stage, comment: &str) -> String {
    format!("{} #(nop)  {comment}", stage.shell.join(" "))
}

/// A JSON array of strings as a list.
pub(crate) fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Go's `%q` of a list of strings, as the classic builder writes CMD in history:
/// `["sh" "-c" "echo hi"]`.
fn go_quoted(list: &[String]) -> String {
    let items: Vec<String> = list
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_default())
        .collect();
    format!("[{}]", items.join(" "))
}

/// The command of RUN, CMD or ENTRYPOINT: the exec form, or the shell form run by the
/// stage's shell.
pub(crate) fn command(stage: &Stage, rest: &str) -> (Vec<String>, bool) {
    match exec_form(rest) {
        Some(argv) => (argv, false),
        None => {
            let mut argv = stage.shell.clone();
            argv.push(rest.to_owned());
            (argv, true)
        }
    }
}

/// Sets `NAME=value` in the config's Env (replacing an earlier one).
fn set_env(config: &mut Map<String, Value>, name: &str, value: &str) {
    let mut env = strings(config.get("Env"));
    let entry = format!("{name}={value}");
    match env.iter_mut().find(|e| e.split('=').next() == Some(name)) {
        Some(existing) => *existing = entry,
        None => env.push(entry),
    }
    config.insert("Env".into(), json!(env));
}

/// A Go duration (`30s`, `1m30s`, `500ms`) in nanoseconds.
fn parse_duration(text: &str) -> Option<i64> {
    if text == "0" {
        return Some(0);
    }
    let mut total = 0f64;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Some(total as i64)
}

/// EXPOSE's port specs as `port/proto` keys (ranges expanded).
fn exposed_ports(words: &[String], line: usize) -> Result<Vec<String>, BuildError> {
    let mut ports = Vec::new();
    for word in words {
        let (range, proto) = word.split_once('/').unwrap_or((word, "tcp"));
        let proto = proto.to_ascii_lowercase();
        let invalid = || BuildError::Instruction {
            line,
            message: format!("Invalid containerPort: {word}"),
        };
        if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
            return Err(BuildError::Instruction {
                line,
                message: format!("invalid proto: {proto}"),
            });
        }
        let (start, end) = match range.split_once('-') {
            Some((a, b)) => (a, b),
            None => (range, range),
        };
        let start: u16 = start.parse().map_err(|_| invalid())?;
        let end: u16 = end.parse().map_err(|_| invalid())?;
        if end < start {
            return Err(invalid());
        }
        for port in start..=end {
            ports.push(format!("{port}/{proto}"));
        }
    }
    Ok(ports)
}

/// Applies a config-only instruction to the stage; returns its history line.
pub(crate) fn apply_metadata(
    stage: &mut Stage,
    instruction: &Instruction,
    lexer: &Lexer,
) -> Result<String, BuildError> {
    let line = instruction.line;
    let rest = instruction.rest.as_str();
    let vars = stage.variables();
    let keyword = instruction.keyword.as_str();
    let missing = || BuildError::Instruction {
        line,
        message: format!("{keyword} requires at least one argument"),
    };
    let comment = match keyword {
        "ENV" | "LABEL" => {
            let pairs = name_values(keyword, rest, lexer, &vars).map_err(at_line(line))?;
            let mut parts = Vec::new();
            for (name, value) in pairs {
                let value = value.unwrap_or_default();
                if keyword == "ENV" {
                    set_env(&mut stage.config, &name, &value);
                } else {
                    let labels = stage.config.entry("Labels").or_insert_with(|| json!({}));
                    if !labels.is_object() {
                        *labels = json!({});
                    }
                    labels[&name] = json!(value);
                }
                parts.push(format!("{name}={value}"));
            }
            format!("{keyword} {}", parts.join(" "))
        }
        "CMD" | "ENTRYPOINT" => {
            let (argv, _) = command(stage, rest);
            let field = if keyword == "CMD" {
                "Cmd"
            } else {
                "Entrypoint"
            };
            stage.config.insert(field.into(), json!(argv));
            if keyword == "CMD" {
                stage.cmd_set = true;
            } else if !stage.cmd_set {
                // A new ENTRYPOINT drops the base image's CMD.
                stage.config.insert("Cmd".into(), Value::Null);
            }
            format!("{keyword} {}", go_quoted(&argv))
        }
        "EXPOSE" => {
            let words = lexer.words(rest, &vars).map_err(at_line(line))?;
            if words.is_empty() {
                return Err(missing());
            }
            let ports = exposed_ports(&words, line)?;
            let exposed = stage
                .config
                .entry("ExposedPorts")
                .or_insert_with(|| json!({}));
            if !exposed.is_object() {
                *exposed = json!({});
            }
            for port in &ports {
                exposed[port] = json!({});
            }
            format!("EXPOSE {}", ports.join(" "))
        }
        "USER" => {
            let user = lexer.word(rest, &vars).map_err(at_line(line))?;
            if user.is_empty() {
                return Err(missing());
            }
            stage.config.insert("User".into(), json!(user));
            format!("USER {user}")
        }
        "WORKDIR" => {
            let dir = lexer.word(rest, &vars).map_err(at_line(line))?;
            if dir.is_empty() {
                return Err(missing());
            }
            let current = stage
                .config
                .get("WorkingDir")
                .and_then(Value::as_str)
                .unwrap_or("/")
                .to_owned();
            let joined = if dir.starts_with('/') {
                dir
            } else {
                format!("{current}/{dir}")
            };
            let cleaned = format!("/{}", berth_dockerfile::ignore::clean_relative(&joined));
            stage.config.insert("WorkingDir".into(), json!(cleaned));
            format!("WORKDIR {cleaned}")
        }
        "VOLUME" => {
            let volumes = match exec_form(rest) {
                Some(list) => list
                    .iter()
                    .map(|v| lexer.word(v, &vars))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(at_line(line))?,
                None => lexer.words(rest, &vars).map_err(at_line(line))?,
            };
            if volumes.iter().all(|v| v.trim().is_empty()) {
                return Err(BuildError::Instruction {
                    line,
                    message: "VOLUME specified can not be an empty string".into(),
                });
            }
            let map = stage.config.entry("Volumes").or_insert_with(|| json!({}));
            if !map.is_object() {
                *map = json!({});
            }
            for volume in &volumes {
                map[volume.trim()] = json!({});
            }
            format!("VOLUME [{}]", volumes.join(" "))
        }
        "STOPSIGNAL" => {
            let signal = lexer.word(rest, &vars).map_err(at_line(line))?;
            crate::container::lifecycle::parse_signal(&signal).map_err(|_| {
                BuildError::Instruction {
                    line,
                    message: format!("Invalid signal: {signal}"),
                }
            })?;
            stage.config.insert("StopSignal".into(), json!(signal));
            format!("STOPSIGNAL {signal}")
        }
        "HEALTHCHECK" => {
            let check = healthcheck(rest, line)?;
            stage.config.insert("Healthcheck".into(), check);
            format!("HEALTHCHECK {rest}")
        }
        "ONBUILD" => {
            let trigger = berth_dockerfile::parse(rest).map_err(|e| BuildError::Instruction {
                line,
                message: format!("ONBUILD: {e}"),
            })?;
            let inner = &trigger.instructions[0];
            if matches!(inner.keyword.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
                return Err(BuildError::Instruction {
                    line,
                    message: format!("{} isn't allowed as an ONBUILD trigger", inner.keyword),
                });
            }
            let text = inner.display();
            let mut triggers = strings(stage.config.get("OnBuild"));
            triggers.push(text.clone());
            stage.config.insert("OnBuild".into(), json!(triggers));
            format!("ONBUILD {text}")
        }
        "MAINTAINER" => {
            let name = lexer.word(rest, &vars).map_err(at_line(line))?;
            stage.author = name.clone();
            format!("MAINTAINER {name}")
        }
        "SHELL" => {
            let shell = exec_form(rest).filter(|s| !s.is_empty()).ok_or_else(|| {
                BuildError::Instruction {
                    line,
                    message: "SHELL requires the arguments to be in JSON form".into(),
                }
            })?;
            stage.config.insert("Shell".into(), json!(shell));
            stage.shell = shell.clone();
            format!("SHELL [{}]", shell.join(" "))
        }
        other => {
            return Err(BuildError::Instruction {
                line,
                message: format!("{other} is not a config instruction"),
            })
        }
    };
    Ok(nop(stage, &comment))
}

/// HEALTHCHECK's config: `NONE`, or options and a CMD.
fn healthcheck(rest: &str, line: usize) -> Result<Value, BuildError> {
    let (flags, rest) = split_flags(rest);
    let words: Vec<&str> = rest.splitn(2, char::is_whitespace).collect();
    let kind = words
        .first()
        .map(|w| w.to_ascii_uppercase())
        .unwrap_or_default();
    if kind == "NONE" {
        if !flags.is_empty() || words.len() > 1 {
            return Err(BuildError::Instruction {
                line,
                message: "HEALTHCHECK NONE takes no arguments".into(),
            });
        }
        return Ok(json!({ "Test": ["NONE"] }));
    }
    if kind != "CMD" {
        return Err(BuildError::Instruction {
            line,
            message: format!("Unknown type \"{kind}\" in HEALTHCHECK (try CMD)"),
        });
    }
    let command_text = words.get(1).copied().unwrap_or("").trim();
    if command_text.is_empty() {
        return Err(BuildError::Instruction {
            line,
            message: "Missing command after HEALTHCHECK CMD".into(),
        });
    }
    let test = match exec_form(command_text) {
        Some(argv) => std::iter::once("CMD".to_owned()).chain(argv).collect(),
        None => vec!["CMD-SHELL".to_owned(), command_text.to_owned()],
    };
    let mut check = json!({ "Test": test });
    for Flag { name, value } in flags {
        let field = match name.as_str() {
            "interval" => "Interval",
            "timeout" => "Timeout",
            "start-period" => "StartPeriod",
            "start-interval" => "StartInterval",
            "retries" => {
                let retries: i64 = value.parse().map_err(|_| BuildError::Instruction {
                    line,
                    message: format!("invalid --retries value {value:?}"),
                })?;
                check["Retries"] = json!(retries);
                continue;
            }
            other => return Err(unknown_flag(line, "HEALTHCHECK", other)),
        };
        let nanos = parse_duration(&value).ok_or_else(|| BuildError::Instruction {
            line,
            message: format!("invalid duration for --{name}: {value}"),
        })?;
        check[field] = json!(nanos);
    }
    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage() -> Stage {
        Stage {
            name: None,
            image: None,
            config: Map::new(),
            author: String::new(),
            args: vec![("V".into(), "1.2".into())],
            shell: vec!["/bin/sh".into(), "-c".into()],
            cmd_set: false,
        }
    }

    fn apply(stage: &mut Stage, line: &str) -> String {
        let file = berth_dockerfile::parse(line).unwrap();
        apply_metadata(stage, &file.instructions[0], &Lexer::new('\\')).unwrap()
    }

    #[test]
    fn config_instructions_as_docker_writes_them() {
        let mut s = stage();
        assert_eq!(
            apply(&mut s, "ENV A=1 B=\"x y\""),
            "/bin/sh -c #(nop)  ENV A=1 B=x y"
        );
        apply(&mut s, "ENV A=$V");
        assert_eq!(s.config["Env"], json!(["A=1.2", "B=x y"]));
        assert_eq!(
            apply(&mut s, "CMD echo hi"),
            "/bin/sh -c #(nop)  CMD [\"/bin/sh\" \"-c\" \"echo hi\"]"
        );
        apply(&mut s, "ENTRYPOINT [\"/run\"]");
        assert_eq!(
            s.config["Cmd"],
            json!(["/bin/sh", "-c", "echo hi"]),
            "CMD set in this stage stays"
        );
        let mut fresh = stage();
        fresh.config.insert("Cmd".into(), json!(["base"]));
        apply(&mut fresh, "ENTRYPOINT [\"/run\"]");
        assert_eq!(
            fresh.config["Cmd"],
            Value::Null,
            "the base image's CMD goes"
        );
        apply(&mut s, "EXPOSE 80 53/udp 8000-8001");
        assert_eq!(
            s.config["ExposedPorts"],
            json!({"80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}})
        );
        apply(&mut s, "WORKDIR /app");
        apply(&mut s, "WORKDIR sub/../src");
        assert_eq!(s.config["WorkingDir"], json!("/app/src"));
        apply(&mut s, "LABEL version=$V");
        assert_eq!(s.config["Labels"]["version"], json!("1.2"));
        assert_eq!(
            apply(&mut s, "VOLUME /data /logs"),
            "/bin/sh -c #(nop)  VOLUME [/data /logs]"
        );
        apply(&mut s, "HEALTHCHECK --interval=1m30s --retries=2 CMD true");
        assert_eq!(
            s.config["Healthcheck"]["Interval"],
            json!(90_000_000_000i64)
        );
        assert_eq!(
            s.config["Healthcheck"]["Test"],
            json!(["CMD-SHELL", "true"])
        );
        apply(&mut s, "SHELL [\"/bin/bash\", \"-c\"]");
        assert_eq!(apply(&mut s, "USER app"), "/bin/bash -c #(nop)  USER app");
        apply(&mut s, "ONBUILD RUN make");
        assert_eq!(s.config["OnBuild"], json!(["RUN make"]));
        assert_eq!(onbuild_triggers(&mut s.config), vec!["RUN make".to_owned()]);
        assert!(!s.config.contains_key("OnBuild"));
    }

    #[test]
    fn bad_instructions_say_why() {
        let lexer = Lexer::new('\\');
        for bad in [
            "EXPOSE 80/xyz",
            "EXPOSE http",
            "STOPSIGNAL SIGNOPE",
            "SHELL /bin/bash",
            "HEALTHCHECK --interval=soon CMD true",
            "HEALTHCHECK RUN true",
            "ONBUILD FROM x",
            "VOLUME \"\"",
        ] {
            let file = berth_dockerfile::parse(bad).unwrap();
            assert!(
                apply_metadata(&mut stage(), &file.instructions[0], &lexer).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn from_and_stage_names() {
        let lexer = Lexer::new('\\');
        let vars = vec![("TAG".to_owned(), "1.36".to_owned())];
        let from = parse_from(
            "--platform=linux/amd64 busybox:$TAG AS Build",
            1,
            &lexer,
            &vars,
        )
        .unwrap();
        assert_eq!(from.image, "busybox:1.36");
        assert_eq!(from.name.as_deref(), Some("build"));
        assert_eq!(from.platform.as_deref(), Some("linux/amd64"));
        assert!(parse_from("a b", 1, &lexer, &vars).is_err());
        assert!(parse_from("a AS 1x", 1, &lexer, &vars).is_err());
        assert_eq!(stage_name("x AS Final").as_deref(), Some("final"));
        assert_eq!(parse_duration("500ms"), Some(500_000_000));
        assert_eq!(parse_duration("2h"), Some(7_200_000_000_000));
    }
}
