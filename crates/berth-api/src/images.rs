//! `/images/...` endpoints.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::Extension;

use crate::version::ApiVersion;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::import::spool;
use crate::AppState;

// `docker import` lives in `crate::import` (which `registry` uses too); re-exported here,
// where it used to be, so that `images::import` keeps working.
pub use crate::import::import;

/// `POST /images/load`: a `docker save` archive in the body, spooled to a file first
/// (archives list their manifest anywhere).
pub async fn load(State(engine): State<AppState>, body: Body) -> ApiResult<Response> {
    let spool = spool(&engine, body).await?;
    // As dockerd: an archive that cannot be loaded is an error in the JSON stream (the
    // CLI prints it and exits 1), not an HTTP error.
    let (loaded, _steps) = match engine.load_images(spool.path().to_path_buf()).await {
        Ok(loaded) => loaded,
        Err(error) => {
            // The archive's bytes can be in the message (a tar header that does not
            // parse): keep it printable and short.
            let message: String = berth_engine::error_chain(&error)
                .chars()
                .map(|c| match c {
                    '\u{fffd}' => '?',
                    c if c.is_control() => '?',
                    c => c,
                })
                .take(300)
                .collect();
            let line = json!({ "errorDetail": { "message": message }, "error": message });
            return Ok((
                [(header::CONTENT_TYPE, "application/json")],
                format!("{line}\n"),
            )
                .into_response());
        }
    };
    let mut text = String::new();
    for image in loaded {
        if image.tags.is_empty() {
            text.push_str(
                &json!({ "stream": format!("Loaded image ID: {}\n", image.id) }).to_string(),
            );
            text.push('\n');
        }
        for tag in image.tags {
            text.push_str(&json!({ "stream": format!("Loaded image: {tag}\n") }).to_string());
            text.push('\n');
        }
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response())
}

/// `GET /images/json`.
pub async fn list(
    State(engine): State<AppState>,
    Extension(version): Extension<ApiVersion>,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> ApiResult<Response> {
    let filters = crate::filters::Filters::parse(params.get("filters"))?;
    filters.only(&["dangling", "label", "reference", "before", "since"])?;
    let usage = engine.image_usage();
    let mut images = engine.list_images()?;
    images.sort_by_key(|image| std::cmp::Reverse(image.loaded_at));
    // `before` and `since` name images; they select by load time.
    let loaded_at = |key: &str| -> Vec<i64> {
        filters
            .0
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|r| engine.resolve_image(r).ok().map(|i| i.loaded_at))
            .collect()
    };
    let (before, since) = (loaded_at("before"), loaded_at("since"));
    for value in filters.0.get("dangling").into_iter().flatten() {
        if !matches!(value.as_str(), "true" | "false" | "1" | "0") {
            return Err(ApiError::bad_request(format!(
                "Invalid filter 'dangling=[{value}]'"
            )));
        }
    }
    // As dockerd: a build's intermediate images (untagged, with an image built on them)
    // are listed only with `all`, and are not dangling.
    let parents: std::collections::HashSet<String> =
        images.iter().filter_map(|i| i.parent.clone()).collect();
    let all = params
        .get("all")
        .is_some_and(|v| matches!(v.as_str(), "1" | "true"));
    images.retain(|image| {
        let labels = convert::image_labels(image);
        let intermediate = image.repo_tags.is_empty() && parents.contains(&image.id);
        (all || !intermediate)
            && filters.allows("dangling", |v| {
                matches!(v, "true" | "1") == (image.repo_tags.is_empty() && !intermediate)
            })
            && filters.allows("label", |v| crate::filters::label_matches(&labels, v))
            && filters.allows("reference", |pattern| {
                image
                    .repo_tags
                    .iter()
                    .any(|tag| reference_matches(pattern, tag))
            })
            && before.iter().all(|t| image.loaded_at < *t)
            && since.iter().all(|t| image.loaded_at > *t)
    });
    // As dockerd: an image found by reference lists only the tags that matched.
    if filters.0.contains_key("reference") {
        for image in &mut images {
            image.repo_tags.retain(|tag| {
                filters.allows("reference", |pattern| reference_matches(pattern, tag))
            });
        }
    }
    let mut summaries = serde_json::to_value(
        images
            .iter()
            .map(|i| convert::image_summary(i, usage.get(&i.id).copied().unwrap_or(0)))
            .collect::<Vec<_>>(),
    )
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    for summary in summaries.as_array_mut().into_iter().flatten() {
        crate::version::older_image_shape(version, summary);
    }
    Ok(Json(summaries).into_response())
}

/// Docker's `reference` filter: a glob over `name[:tag]` (`busybox`, `tagged/*:v1`); a
/// pattern without a tag matches any tag.
fn reference_matches(pattern: &str, tag: &str) -> bool {
    fn glob(pattern: &[u8], text: &[u8]) -> bool {
        match (pattern.first(), text.first()) {
            (None, None) => true,
            (Some(b'*'), _) => {
                glob(&pattern[1..], text)
                    || (!text.is_empty() && text[0] != b'/' && glob(pattern, &text[1..]))
            }
            (Some(p), Some(t)) if *p == b'?' || p == t => glob(&pattern[1..], &text[1..]),
            _ => false,
        }
    }
    let (name, _) = tag.rsplit_once(':').unwrap_or((tag, ""));
    glob(pattern.as_bytes(), tag.as_bytes())
        || (!pattern.contains(':') && glob(pattern.as_bytes(), name.as_bytes()))
}

/// `GET /images/{name}/json` (names contain slashes, so the route takes the rest).
pub async fn by_name(
    State(engine): State<AppState>,
    Extension(version): Extension<ApiVersion>,
    Path(rest): Path<String>,
) -> ApiResult<Response> {
    if let Some(name) = rest.strip_suffix("/history") {
        return history(&engine, name).await;
    }
    if let Some(name) = rest.strip_suffix("/get") {
        return save(&engine, vec![name.to_owned()]).await;
    }
    if let Some(name) = rest.strip_suffix("/json") {
        let image = engine.resolve_image(name)?;
        let mut value = serde_json::to_value(convert::image_inspect(&image))
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        value["Parent"] = json!(image.parent.clone().unwrap_or_default());
        // What the OCI config has no field for, from the image's own config.
        if let Ok(raw) = engine.image_raw_config(&image.id) {
            for key in ["Healthcheck", "OnBuild", "Shell"] {
                if let Some(field) = raw.pointer(&format!("/config/{key}")) {
                    if !field.is_null() && value["Config"].is_object() {
                        value["Config"][key] = field.clone();
                    }
                }
            }
        }
        crate::version::older_image_shape(version, &mut value);
        if version < ApiVersion(1, 45) {
            // Removed in 1.45; older clients read them.
            value["Container"] = serde_json::json!("");
            value["ContainerConfig"] = value["Config"].clone();
        }
        return Ok(Json(value).into_response());
    }
    Err(ApiError::new(StatusCode::NOT_FOUND, "page not found"))
}

/// `GET /images/{name}/history`, `POST /images/{name}/tag`, `DELETE /images/{name}`:
/// image names contain slashes, so these routes take the rest of the path.
pub async fn history(engine: &AppState, name: &str) -> ApiResult<Response> {
    let entries: Vec<serde_json::Value> = engine
        .image_history(name)?
        .into_iter()
        .map(|e| {
            json!({
                "Id": e.id, "Created": e.created, "CreatedBy": e.created_by,
                "Tags": if e.tags.is_empty() { serde_json::Value::Null } else { json!(e.tags) },
                "Size": e.size, "Comment": e.comment,
            })
        })
        .collect();
    Ok(Json(entries).into_response())
}

/// `GET /images/get?names=...` and `GET /images/{name}/get`: a `docker save` archive,
/// written to a spool file under the daemon's root, then streamed.
pub async fn save(engine: &AppState, names: Vec<String>) -> ApiResult<Response> {
    if names.is_empty() {
        return Err(ApiError::bad_request("no image names given"));
    }
    let spool_dir = engine.root().join("tmp");
    tokio::fs::create_dir_all(&spool_dir)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let spool = tempfile::NamedTempFile::new_in(&spool_dir)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    engine
        .save_images(names, spool.path().to_path_buf())
        .await?;
    // Open it before the name goes: the stream reads the unlinked file.
    let file = tokio::fs::File::open(spool.path())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    drop(spool);
    let stream = tokio_util::io::ReaderStream::new(file);
    Ok((
        [(header::CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `GET /images/get?names=a&names=b`.
pub async fn save_many(
    State(engine): State<AppState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> ApiResult<Response> {
    let names: Vec<String> = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| *key == "names")
        .filter_map(|(_, value)| percent_decode(value))
        .collect();
    save(&engine, names).await
}

/// Decodes `%XX` escapes and `+` in a query value.
fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `GET /system/df`: images (with how many containers use each), containers (with the
/// size of their own disks), volumes (their disks) and no build cache.
pub async fn system_df(State(engine): State<AppState>) -> ApiResult<Response> {
    let usage = engine.image_usage();
    let images = engine.list_images()?;
    let layers_size: u64 = images.iter().map(|i| i.size).sum();
    let image_rows: Vec<_> = images
        .iter()
        .map(|i| convert::image_summary(i, usage.get(&i.id).copied().unwrap_or(0)))
        .collect();
    let networks = engine.networks().list();
    let containers: Vec<_> = engine
        .list_containers()
        .iter()
        .map(|record| {
            let mut summary = convert::container_summary(record, &networks);
            let size = engine.container_disk_usage(&record.id) as i64;
            summary.size_rw = Some(size);
            summary.size_root_fs = Some(size);
            summary
        })
        .collect();
    Ok(Json(json!({
        "LayersSize": layers_size,
        "Images": image_rows,
        "Containers": containers,
        "Volumes": crate::volumes::all_with_usage(&engine),
        "BuildCache": engine.build_cache_usage()?,
    }))
    .into_response())
}

/// `POST /images/{name}/tag?repo=&tag=`.
pub async fn post_by_name(
    State(engine): State<AppState>,
    Path(rest): Path<String>,
    Query(params): Query<std::collections::HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    if let Some(name) = rest.strip_suffix("/push") {
        return crate::registry::push(engine, name, &params, &headers).await;
    }
    let Some(name) = rest.strip_suffix("/tag") else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "page not found"));
    };
    let repo = params
        .get("repo")
        .filter(|r| !r.is_empty())
        .ok_or_else(|| ApiError::bad_request("repository name (repo) is required"))?;
    engine.tag_image(name, repo, params.get("tag").map(String::as_str))?;
    Ok(StatusCode::CREATED.into_response())
}

fn removals(steps: Vec<berth_engine::images::Removal>) -> Vec<serde_json::Value> {
    steps
        .into_iter()
        .map(|step| match step {
            berth_engine::images::Removal::Untagged(name) => json!({ "Untagged": name }),
            berth_engine::images::Removal::Deleted(id) => json!({ "Deleted": id }),
        })
        .collect()
}

/// `DELETE /images/{name}?force=`.
pub async fn remove(
    State(engine): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> ApiResult<Response> {
    let force = crate::containers::flag(&params, "force");
    let steps = engine.remove_image(&name, force)?;
    Ok(Json(removals(steps)).into_response())
}

/// `POST /images/prune` (filter `dangling=false` prunes every unused image).
pub async fn prune(
    State(engine): State<AppState>,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> ApiResult<Response> {
    let filters = crate::filters::Filters::parse(params.get("filters"))?;
    filters.only(&["dangling"])?;
    let all = filters
        .0
        .get("dangling")
        .is_some_and(|values| values.iter().any(|v| v == "false" || v == "0"));
    let (steps, reclaimed) = engine.prune_images(all)?;
    Ok(
        Json(json!({ "ImagesDeleted": removals(steps), "SpaceReclaimed": reclaimed }))
            .into_response(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_patterns_match_as_dockers_do() {
        assert!(reference_matches("busybox", "busybox:latest"));
        assert!(reference_matches("busybox:latest", "busybox:latest"));
        assert!(!reference_matches("busybox:1", "busybox:latest"));
        assert!(reference_matches("tagged/*", "tagged/one:v1"));
        assert!(
            !reference_matches("tagged*", "tagged/one:v1"),
            "* does not cross /"
        );
        assert!(reference_matches("*:v?", "alpine:v1"));
    }
}
