//! Docker's `filters` query parameter: JSON of `{"key": {"value": true}}` (or the older
//! `{"key": ["value"]}`), matched as Docker does: values of one key are alternatives
//! (any may match), different keys must all match.

use std::collections::HashMap;

use crate::error::ApiError;

/// Parsed filters: key -> accepted values.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filters(pub HashMap<String, Vec<String>>);

impl Filters {
    pub fn parse(text: Option<&String>) -> Result<Self, ApiError> {
        let Some(text) = text.filter(|t| !t.is_empty()) else {
            return Ok(Self::default());
        };
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("invalid filter: {e}")))?;
        let object = value
            .as_object()
            .ok_or_else(|| ApiError::bad_request("invalid filter: not an object"))?;
        let mut filters = HashMap::new();
        for (key, values) in object {
            let list: Vec<String> = match values {
                serde_json::Value::Object(map) => map.keys().cloned().collect(),
                serde_json::Value::Array(items) => items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                _ => return Err(ApiError::bad_request(format!("Invalid filter '{key}'"))),
            };
            filters.insert(key.clone(), list);
        }
        Ok(Self(filters))
    }

    /// Refuses keys the caller does not know, as Docker does.
    pub fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.keys().find(|key| !known.contains(&key.as_str())) {
            Some(key) => Err(ApiError::bad_request(format!("Invalid filter '{key}'"))),
            None => Ok(()),
        }
    }

    /// True unless `key` is filtered and no value passes `test`.
    pub fn allows(&self, key: &str, test: impl Fn(&str) -> bool) -> bool {
        self.0
            .get(key)
            .is_none_or(|values| values.iter().any(|value| test(value)))
    }

    pub fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }
}

/// `label=key` or `label=key=value` against a label map.
pub fn label_matches(labels: &HashMap<String, String>, filter: &str) -> bool {
    match filter.split_once('=') {
        Some((key, value)) => labels.get(key).is_some_and(|v| v == value),
        None => labels.contains_key(filter),
    }
}

/// A query string whose keys may repeat (`changes=...&changes=...`), which a map drops.
pub struct QueryPairs(Vec<(String, String)>);

impl QueryPairs {
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        serde_urlencoded::from_str(raw.unwrap_or(""))
            .map(Self)
            .map_err(|e| ApiError::bad_request(format!("bad query: {e}")))
    }

    /// The first value of `key`, or "".
    pub fn get(&self, key: &str) -> String {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// Every non-empty value of `key`, in order.
    pub fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// `repo[:tag]` from the `repo` and `tag` keys, if a repo is given.
    pub fn reference(&self) -> Option<String> {
        let repo = self.get("repo");
        (!repo.is_empty()).then(|| match self.get("tag") {
            tag if tag.is_empty() => repo.clone(),
            tag => format!("{repo}:{tag}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_parse_and_match() {
        let new = Filters::parse(Some(
            &r#"{"name":{"web":true},"status":{"exited":true,"created":true}}"#.to_owned(),
        ))
        .unwrap();
        assert!(new.allows("status", |v| v == "created"));
        assert!(!new.allows("status", |v| v == "running"));
        assert!(
            new.allows("label", |_| false),
            "an absent key allows everything"
        );
        let old = Filters::parse(Some(&r#"{"name":["web"]}"#.to_owned())).unwrap();
        assert_eq!(old.0["name"], vec!["web"]);
        assert!(Filters::parse(Some(&"{nope".to_owned())).is_err());
        assert!(new.only(&["name", "status"]).is_ok());
        assert!(new.only(&["name"]).is_err());
    }

    #[test]
    fn labels() {
        let labels = HashMap::from([("tier".to_owned(), "web".to_owned())]);
        assert!(label_matches(&labels, "tier"));
        assert!(label_matches(&labels, "tier=web"));
        assert!(!label_matches(&labels, "tier=db"));
        assert!(!label_matches(&labels, "other"));
    }
}
