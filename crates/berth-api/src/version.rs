//! API versions: which the daemon serves, and stripping the `/v1.NN` prefix.
//!
//! Clients send `/v1.NN/path` (or an unversioned path, meaning the daemon's newest
//! version). A version above [`MAX_API_VERSION`] is refused as Docker refuses it; one
//! below [`MIN_API_VERSION`] too. The version is put in the request's extensions as
//! [`ApiVersion`] for handlers whose answers differ between versions.

use axum::body::Body;
use axum::http::{Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The newest API version Berth speaks (the Docker models it uses are of this version).
pub const MAX_API_VERSION: ApiVersion = ApiVersion(1, 53);
/// The oldest API version Berth accepts.
pub const MIN_API_VERSION: ApiVersion = ApiVersion(1, 24);

/// An API version `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion(pub u32, pub u32);

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

impl ApiVersion {
    pub fn parse(text: &str) -> Option<Self> {
        let (major, minor) = text.split_once('.')?;
        Some(Self(major.parse().ok()?, minor.parse().ok()?))
    }
}

/// Image summaries and inspect answers before API 1.44 also carry `VirtualSize` (the
/// same as `Size`).
pub fn older_image_shape(version: ApiVersion, image: &mut serde_json::Value) {
    if version < ApiVersion(1, 44) {
        image["VirtualSize"] = image["Size"].clone();
    }
}

/// Splits `/v1.NN/rest` into the version and `/rest`.
pub fn split_version(path: &str) -> Option<(ApiVersion, &str)> {
    let rest = path.strip_prefix("/v")?;
    let slash = rest.find('/')?;
    let version = ApiVersion::parse(&rest[..slash])?;
    Some((version, &rest[slash..]))
}

/// Rewrites a versioned request to its unversioned path, or answers it with an error.
pub fn route_version(mut request: Request<Body>) -> Result<Request<Body>, Box<Response>> {
    let path = request.uri().path().to_owned();
    let version = match split_version(&path) {
        Some((version, rest)) => {
            if version > MAX_API_VERSION {
                return Err(Box::new(ApiError::bad_request(format!(
                    "client version {version} is too new. Maximum supported API version is {MAX_API_VERSION}"
                ))
                .into_response()));
            }
            if version < MIN_API_VERSION {
                return Err(Box::new(ApiError::bad_request(format!(
                    "client version {version} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
                ))
                .into_response()));
            }
            let query = request
                .uri()
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            // `docker rm --link /web/db` asks for `/containers//web/db`.
            let rest = match rest.strip_prefix("/containers//") {
                Some(link) => format!("/containers/{link}"),
                None => rest.to_owned(),
            };
            let uri: Uri = match format!("{rest}{query}").parse() {
                Ok(uri) => uri,
                Err(_) => {
                    return Err(Box::new(
                        ApiError::new(StatusCode::BAD_REQUEST, "invalid request path")
                            .into_response(),
                    ))
                }
            };
            *request.uri_mut() = uri;
            version
        }
        None => MAX_API_VERSION,
    };
    request.extensions_mut().insert(version);
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_versioned_paths() {
        assert_eq!(
            split_version("/v1.50/containers/json"),
            Some((ApiVersion(1, 50), "/containers/json"))
        );
        assert_eq!(split_version("/containers/json"), None);
        assert_eq!(split_version("/v1.x/foo"), None);
        assert!(ApiVersion(1, 9) < ApiVersion(1, 10));
    }

    #[test]
    fn refuses_too_new_and_rewrites_known() {
        let request = Request::builder()
            .uri("/v9.0/_ping")
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            route_version(request).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
        let request = Request::builder()
            .uri("/v1.45/images/json?all=1")
            .body(Body::empty())
            .unwrap();
        let rewritten = route_version(request).unwrap();
        assert_eq!(rewritten.uri().to_string(), "/images/json?all=1");
        assert_eq!(
            rewritten.extensions().get::<ApiVersion>(),
            Some(&ApiVersion(1, 45))
        );
    }
}
