//! `/networks/...` endpoints.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_engine::network::{ConnectRequest, CreateNetwork, NetworkRecord};
use bollard_stubs::models::{
    NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest,
};
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::filters::{label_matches, Filters};
use crate::AppState;

type Params = Query<HashMap<String, String>>;

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON in request body: {e}")))
}

/// A network as Docker's API shows it; `Containers` lists the running containers on it.
fn network_json(engine: &AppState, record: &NetworkRecord) -> Value {
    let config: Vec<Value> = match (record.subnet, record.gateway) {
        (Some(subnet), Some(gateway)) => {
            let mut config = json!({
                "Subnet": subnet.to_string(),
                "Gateway": gateway.to_string(),
            });
            if let Some(range) = record.ip_range {
                config["IPRange"] = json!(range.to_string());
            }
            if !record.aux_addresses.is_empty() {
                config["AuxiliaryAddresses"] = json!(record.aux_addresses);
            }
            let mut configs = vec![config];
            if let (Some(subnet6), Some(gateway6)) = (record.subnet6, record.gateway6) {
                configs.push(json!({
                    "Subnet": subnet6.to_string(),
                    "Gateway": gateway6.to_string(),
                }));
            }
            configs
        }
        _ => Vec::new(),
    };
    // dockerd: null for the predefined networks, the options (or {}) for the others.
    let ipam_options = (!record.predefined()).then(|| record.ipam_options.clone());
    let prefix = record.subnet.map(|s| s.prefix()).unwrap_or(32);
    let containers: serde_json::Map<String, Value> = engine
        .network_containers(&record.id)
        .into_iter()
        .map(|(container, endpoint)| {
            (
                container.id.clone(),
                json!({
                    "Name": container.name,
                    "EndpointID": endpoint.endpoint_id,
                    "MacAddress": endpoint.mac,
                    "IPv4Address": endpoint.ip.map(|ip| format!("{ip}/{prefix}")).unwrap_or_default(),
                    "IPv6Address": match (endpoint.ip6, record.subnet6) {
                        (Some(ip6), Some(subnet6)) => format!("{ip6}/{}", subnet6.prefix_len()),
                        _ => String::new(),
                    },
                }),
            )
        })
        .collect();
    let mut options = record.options.clone();
    if !record.bridge.is_empty() {
        options
            .entry("com.docker.network.bridge.name".into())
            .or_insert_with(|| record.bridge.clone());
    }
    json!({
        "Name": record.name,
        "Id": record.id,
        "Created": record.created,
        "Scope": "local",
        "Driver": record.driver,
        "EnableIPv4": record.has_connectivity(),
        "EnableIPv6": record.subnet6.is_some(),
        "IPAM": { "Driver": "default", "Options": ipam_options, "Config": config },
        "Internal": record.internal,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": { "Network": "" },
        "ConfigOnly": false,
        "Containers": containers,
        "Options": options,
        "Labels": record.labels,
    })
}

/// `GET /networks` with filters `name`, `id`, `label`, `driver`, `type`, `dangling`.
pub async fn list(State(engine): State<AppState>, Query(params): Params) -> ApiResult<Response> {
    let filters = Filters::parse(params.get("filters"))?;
    filters.only(&["name", "id", "label", "driver", "type", "dangling", "scope"])?;
    let networks: Vec<Value> = engine
        .networks()
        .list()
        .iter()
        .filter(|n| filters.allows("name", |v| n.name.contains(v)))
        .filter(|n| filters.allows("id", |v| n.id.starts_with(v)))
        .filter(|n| filters.allows("label", |v| label_matches(&n.labels, v)))
        .filter(|n| filters.allows("driver", |v| n.driver == v))
        .filter(|_| filters.allows("scope", |v| v == "local"))
        .filter(|n| {
            filters.allows("type", |v| match v {
                "builtin" => n.predefined(),
                "custom" => !n.predefined(),
                _ => false,
            })
        })
        .filter(|n| {
            filters.allows("dangling", |v| {
                let dangling = !n.predefined() && engine.network_containers(&n.id).is_empty();
                matches!(v, "true" | "1") == dangling
            })
        })
        .map(|n| network_json(&engine, n))
        .collect();
    Ok(Json(networks).into_response())
}

/// `GET /networks/{id}`.
pub async fn inspect(
    State(engine): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let record = engine.networks().lookup(&id)?;
    Ok(Json(network_json(&engine, &record)).into_response())
}

/// `POST /networks/create`.
pub async fn create(State(engine): State<AppState>, body: Bytes) -> ApiResult<Response> {
    let request: NetworkCreateRequest = parse_body(&body)?;
    let configs = request
        .ipam
        .as_ref()
        .and_then(|ipam| ipam.config.clone())
        .unwrap_or_default();
    // IPv6 configs name an IPv6 subnet; the rest are IPv4's.
    let is_v6 = |config: &bollard_stubs::models::IpamConfig| {
        config.subnet.as_deref().is_some_and(|s| s.contains(':'))
    };
    let (v6, v4): (Vec<_>, Vec<_>) = configs.into_iter().partition(is_v6);
    if v4.len() > 1 || v6.len() > 1 {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "Berth's networks have one IPv4 subnet and at most one IPv6 subnet each",
        ));
    }
    let ipv6 = request.enable_ipv6 == Some(true);
    if ipv6 && v6.is_empty() {
        return Err(ApiError::bad_request(
            "Berth needs an IPv6 subnet for --ipv6: add --subnet with an IPv6 CIDR (fd00:1::/64, say)",
        ));
    }
    // As dockerd: an IPv6 subnet without --ipv6 is not used.
    let v6 = v6.into_iter().next().filter(|_| ipv6).unwrap_or_default();
    let first = v4.into_iter().next().unwrap_or_default();
    let has_subnet = first.subnet.as_deref().is_some_and(|s| !s.is_empty());
    if !has_subnet
        && (first.ip_range.as_deref().is_some_and(|r| !r.is_empty())
            || first.gateway.as_deref().is_some_and(|g| !g.is_empty()))
    {
        return Err(ApiError::bad_request(
            "every ip-range or gateway must have a corresponding subnet",
        ));
    }
    let record = engine.create_network(CreateNetwork {
        name: request.name,
        driver: request.driver,
        internal: request.internal.unwrap_or(false),
        labels: request.labels.unwrap_or_default(),
        options: request.options.unwrap_or_default(),
        subnet: first.subnet,
        gateway: first.gateway,
        ip_range: first.ip_range,
        aux_addresses: first.auxiliary_addresses.unwrap_or_default(),
        ipam_options: request
            .ipam
            .as_ref()
            .and_then(|ipam| ipam.options.clone())
            .unwrap_or_default(),
        subnet6: v6.subnet,
        gateway6: v6.gateway,
    })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "Id": record.id, "Warning": "" })),
    )
        .into_response())
}

/// `DELETE /networks/{id}`.
pub async fn remove(State(engine): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    engine.remove_network(&id)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /networks/prune` with filters `label` and `label!`.
pub async fn prune(State(engine): State<AppState>, Query(params): Params) -> ApiResult<Response> {
    let filters = Filters::parse(params.get("filters"))?;
    filters.only(&["label", "label!"])?;
    let removed = engine.prune_networks(|network| {
        let keep_for_label = !filters.allows("label", |v| label_matches(&network.labels, v));
        let keep_for_not_label = filters
            .0
            .get("label!")
            .is_some_and(|values| values.iter().any(|v| label_matches(&network.labels, v)));
        keep_for_label || keep_for_not_label
    });
    Ok(Json(json!({ "NetworksDeleted": removed })).into_response())
}

/// `POST /networks/{id}/connect`.
pub async fn connect(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let request: NetworkConnectRequest = parse_body(&body)?;
    let settings = request.endpoint_config.unwrap_or_default();
    engine
        .connect_network(&id, &request.container, {
            let ipam = settings.ipam_config.unwrap_or_default();
            ConnectRequest {
                aliases: settings.aliases.unwrap_or_default(),
                ip: ipam.ipv4_address,
                ip6: ipam.ipv6_address,
                mac: settings.mac_address,
                link_local_ips: ipam.link_local_ips.unwrap_or_default(),
            }
        })
        .await?;
    Ok(StatusCode::OK.into_response())
}

/// `POST /networks/{id}/disconnect`.
pub async fn disconnect(
    State(engine): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let request: NetworkDisconnectRequest = parse_body(&body)?;
    engine.disconnect_network(&id, &request.container).await?;
    Ok(StatusCode::OK.into_response())
}
