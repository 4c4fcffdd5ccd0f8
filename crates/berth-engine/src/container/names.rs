//! Container ids and names, as Docker makes and checks them.

use rand::seq::SliceRandom;
use rand::RngCore;

const ADJECTIVES: &[&str] = &[
    "admiring",
    "brave",
    "clever",
    "dazzling",
    "eager",
    "focused",
    "gallant",
    "happy",
    "jolly",
    "keen",
    "loving",
    "modest",
    "nifty",
    "optimistic",
    "peaceful",
    "quirky",
    "relaxed",
    "serene",
    "trusting",
    "upbeat",
    "vibrant",
    "wizardly",
    "youthful",
    "zealous",
];
const SURNAMES: &[&str] = &[
    "agnesi", "babbage", "curie", "darwin", "euclid", "feynman", "goldberg", "hopper", "hypatia",
    "johnson", "kepler", "lovelace", "meitner", "noether", "pasteur", "ritchie", "shannon",
    "tesla", "thompson", "turing", "wing", "yalow", "zuse",
];

/// A new container id: 32 random bytes as 64 hex digits.
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A random `adjective_surname` name (the caller retries on a collision).
pub fn random_name() -> String {
    let mut rng = rand::thread_rng();
    format!(
        "{}_{}",
        ADJECTIVES.choose(&mut rng).expect("non-empty"),
        SURNAMES.choose(&mut rng).expect("non-empty")
    )
}

/// Docker's rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, with an optional leading slash.
pub fn validate_name(name: &str) -> Result<String, String> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    let mut chars = bare.chars();
    let valid = bare.len() >= 2
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(bare.to_owned())
    } else {
        Err(format!(
            "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex() {
        let id = new_id();
        assert_eq!(id.len(), 64);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(id, new_id());
    }

    #[test]
    fn names_follow_docker_rules() {
        assert_eq!(validate_name("/web-1").unwrap(), "web-1");
        assert_eq!(validate_name("a.b_c").unwrap(), "a.b_c");
        assert!(validate_name("-x").is_err());
        assert!(validate_name("a").is_err());
        assert!(validate_name("has space").is_err());
        assert!(random_name().contains('_'));
    }
}
