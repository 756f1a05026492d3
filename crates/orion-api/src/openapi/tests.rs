//! Tests that the OpenAPI description cannot drift from the code: the committed copy is what
//! the code generates, routes and described operations are the same set, and what the
//! handlers answer conforms to the described schemas.

use super::openapi_json;
use crate::tests::{MemBackend, call};
use crate::{Backend, router};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use tower::ServiceExt;

/// The description as JSON.
fn spec() -> Value {
    serde_json::from_str(&openapi_json()).expect("the description is JSON")
}

const METHODS: [&str; 4] = ["get", "post", "put", "delete"];

/// The committed `docs/openapi.json` is what this code generates. To regenerate it:
/// `ORION_WRITE_OPENAPI=1 cargo test -p orion-api openapi`.
#[test]
fn docs_openapi_json_is_what_the_code_generates() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    let generated = openapi_json();
    if std::env::var_os("ORION_WRITE_OPENAPI").is_some() {
        std::fs::write(path, &generated).expect("write docs/openapi.json");
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json differs from what the code generates; regenerate it with \
         `ORION_WRITE_OPENAPI=1 cargo test -p orion-api openapi` and commit it"
    );
}

#[test]
fn it_is_openapi_3_1_with_a_version() {
    let s = spec();
    assert_eq!(s["openapi"], "3.1.0");
    assert_eq!(s["info"]["version"], env!("CARGO_PKG_VERSION"));
}

/// The paths the router registers, read from its source: `.route("PATH", ...)`. (axum cannot
/// list a router's routes.)
fn routed_paths() -> BTreeSet<String> {
    let src = include_str!("../lib.rs");
    src.split(".route(")
        .skip(1)
        .filter_map(|rest| rest.trim_start().strip_prefix('"'))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect()
}

/// Sends a request with no body and returns its status and error message, if any.
async fn probe(b: &Arc<MemBackend>, method: &str, uri: &str) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from("{}"))
        .expect("request");
    let resp = router(b.clone()).oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let msg = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["error"].as_str().map(String::from))
        .unwrap_or_default();
    (status, msg)
}

/// Every route is described, every described operation is routed, and a method that is not
/// described answers 405.
#[tokio::test]
async fn routes_and_described_operations_are_the_same() {
    let s = spec();
    let paths = s["paths"].as_object().expect("paths");
    let described: BTreeSet<String> = paths.keys().cloned().collect();
    assert_eq!(described, routed_paths(), "described paths vs router");
    let b = Arc::new(MemBackend::default());
    for (path, item) in paths {
        // `?follow=false` so that a stream route ends.
        let uri = format!("{}?follow=false", path.replace("{id}", "x"));
        for method in METHODS {
            let (status, msg) = probe(&b, &method.to_uppercase(), &uri).await;
            if item.get(method).is_some() {
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                assert!(!msg.contains("no such route"), "{method} {path}: {msg}");
            } else {
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            }
        }
    }
}

/// Follows a `$ref` to `#/components/schemas/NAME`.
fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            resolve(spec, &spec["components"]["schemas"][name])
        }
        None => schema,
    }
}

fn type_matches(value: &Value, ty: &str) -> bool {
    match ty {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "integer" => value.is_u64() || value.is_i64(),
        "number" => value.is_number(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    }
}

/// Checks `value` against `schema`, more strictly than JSON Schema on one point: an object's
/// key that the schema does not name is an error unless `additionalProperties` allows it, so
/// that a field added to a view but not to its schema is caught. Returns the first problem.
fn conform(spec: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(spec, schema);
    if schema.as_object().is_some_and(|o| o.is_empty()) || schema == &Value::Bool(true) {
        return Ok(());
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            let errors: Vec<String> = options
                .iter()
                .filter_map(|o| conform(spec, o, value, at).err())
                .collect();
            if errors.len() == options.len() {
                return Err(format!("{at}: matches none of {key}: {errors:?}"));
            }
        }
    }
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            conform(spec, s, value, at)?;
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() && !types.iter().any(|t| type_matches(value, t)) {
        return Err(format!("{at}: {value} is not of type {types:?}"));
    }
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {options:?}"));
    }
    if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
        for (i, v) in values.iter().enumerate() {
            conform(spec, items, v, &format!("{at}[{i}]"))?;
        }
    }
    if let Some(obj) = value.as_object()
        && (schema.get("properties").is_some() || schema.get("additionalProperties").is_some())
    {
        let props = schema["properties"].as_object();
        for req in schema["required"].as_array().into_iter().flatten() {
            let req = req.as_str().unwrap_or_default();
            if !obj.contains_key(req) {
                return Err(format!("{at}: required field {req} is missing"));
            }
        }
        for (k, v) in obj {
            let here = format!("{at}.{k}");
            match props.and_then(|p| p.get(k)) {
                Some(s) => conform(spec, s, v, &here)?,
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) | None => {
                        return Err(format!("{here}: not in the schema"));
                    }
                    Some(extra) => conform(spec, extra, v, &here)?,
                },
            }
        }
    }
    Ok(())
}

/// Sends a request through the router and checks the answer against the schema the
/// description gives for that path, method and status.
async fn check(b: &Arc<MemBackend>, method: &str, uri: &str, path: &str, body: &str) -> Value {
    let (status, got) = call(b, method, uri, body).await;
    let s = spec();
    let op = &s["paths"][path][method.to_lowercase()];
    let response = &op["responses"][status.as_str()];
    assert!(
        response.is_object(),
        "{method} {uri}: status {status} is not described: {got}"
    );
    let schema = &response["content"]["application/json"]["schema"];
    assert!(schema.is_object(), "{method} {uri}: no JSON schema");
    if let Err(e) = conform(&s, schema, &got, "body") {
        panic!("{method} {uri} ({status}): {e}\n{got:#}");
    }
    got
}

/// What the handlers answer conforms to the description: a task's and a service's life,
/// the cluster config, the node views and the errors.
#[tokio::test]
async fn answers_conform_to_the_described_schemas() {
    let b = Arc::new(MemBackend::default());
    check(&b, "GET", "/health", "/health", "").await;
    check(&b, "GET", "/status", "/status", "").await;
    check(&b, "GET", "/nodes", "/nodes", "").await;
    let task = check(
        &b,
        "POST",
        "/tasks",
        "/tasks",
        r#"{"image":"orion/busybox","name":"t1","command":["sleep","9"],"env":{"A":"1"},
            "memory":"64m","cpu":0.5,"portBindings":{"80/tcp":"8080","53/udp":""},
            "labels":{"a":"b"},"nodeSelectors":{"zone":"a"},"constraints":["node.id != n3"],
            "restartPolicy":"on-failure","strategy":"binpack","stopAfterDisconnect":"30s"}"#,
    )
    .await;
    let id = task["id"].as_str().expect("id").to_string();
    check(&b, "GET", &format!("/tasks/{id}"), "/tasks/{id}", "").await;
    check(&b, "GET", "/tasks?state=pending", "/tasks", "").await;
    check(&b, "GET", "/tasks?state=nope", "/tasks", "").await;
    check(&b, "POST", "/tasks", "/tasks", r#"{"image": 3}"#).await;
    check(&b, "DELETE", &format!("/tasks/{id}"), "/tasks/{id}", "").await;
    check(&b, "GET", "/tasks/nothere", "/tasks/{id}", "").await;
    check(&b, "POST", "/nodes/nope/drain", "/nodes/{id}/drain", "").await;

    let web = r#"{"name":"web","stack":"shop","image":"orion/busybox","replicas":3,
        "maxPerNode":2,"ports":[{"target":80,"published":8080}],
        "healthcheck":{"http":"/","interval":"2s"},
        "update":{"parallelism":2,"order":"stop-first","maxFailureRatio":0.5}}"#;
    check(&b, "POST", "/services", "/services", web).await;
    check(&b, "POST", "/services", "/services", web).await; // 409
    let v2 = web.replace("orion/busybox", "orion/busybox:2");
    check(&b, "PUT", "/services/web.shop", "/services/{id}", &v2).await;
    check(
        &b,
        "POST",
        "/services/web.shop/scale",
        "/services/{id}/scale",
        r#"{"replicas":5}"#,
    )
    .await;
    check(
        &b,
        "POST",
        "/services/web.shop/rollback",
        "/services/{id}/rollback",
        "",
    )
    .await;
    let global = r#"{"name":"agent","image":"orion/busybox","mode":"global",
        "healthcheck":"image","command":["sh","-c","exec sleep 1d"]}"#;
    check(&b, "POST", "/services", "/services", global).await;
    let exec = r#"{"name":"db","image":"orion/busybox","healthcheck":{"exec":["true"]},
        "stopAfterDisconnect":"1m"}"#;
    check(&b, "POST", "/services", "/services", exec).await;
    check(&b, "GET", "/services", "/services", "").await;
    check(&b, "GET", "/services/web.shop", "/services/{id}", "").await;
    check(
        &b,
        "GET",
        "/services/web.shop/tasks",
        "/services/{id}/tasks",
        "",
    )
    .await;
    check(&b, "DELETE", "/services/web.shop", "/services/{id}", "").await;
    check(&b, "GET", "/services/web.shop", "/services/{id}", "").await; // 404

    check(&b, "GET", "/cluster/config", "/cluster/config", "").await;
    let patch = r#"{"strategy":"binpack","voters":5}"#;
    check(&b, "PUT", "/cluster/config", "/cluster/config", patch).await;
    check(
        &b,
        "PUT",
        "/cluster/config",
        "/cluster/config",
        r#"{"voters":99}"#,
    )
    .await;
    check(&b, "GET", "/events?follow=false", "/events", "").await; // 503: no history here
    check(&b, "GET", "/openapi.json", "/openapi.json", "").await;
    check(&b, "GET", "/metrics", "/metrics", "").await; // 404: the fake keeps none
}

/// The views the fake backend does not produce conform too: a node, a status, an event.
#[test]
fn node_status_and_event_views_conform() {
    let s = spec();
    let schema = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    let b = MemBackend::default();
    let cases = [
        ("NodeView", serde_json::to_value(crate::NodeView::default())),
        ("StatusView", serde_json::to_value(b.status())),
        (
            "EventDoc",
            serde_json::to_value(orion_events::Event {
                index: 65536,
                at: "2026-01-01T00:00:00.000Z".into(),
                topic: orion_events::Topic::Task,
                kind: "placed".into(),
                key: "abc".into(),
                payload: json!({"node": "n1"}).into(),
            }),
        ),
    ];
    for (name, value) in cases {
        let value = value.expect("serializes");
        if let Err(e) = conform(&s, &schema(name), &value, name) {
            panic!("{e}\n{value:#}");
        }
    }
}

/// `POST /services/{id}/scale` states the bound the handler enforces.
#[test]
fn scale_request_maximum_is_the_replica_limit() {
    let s = spec();
    let max = &s["components"]["schemas"]["ScaleRequest"]["properties"]["replicas"]["maximum"];
    let limit = orion_types::limits::SERVICE_REPLICAS_MAX;
    assert_eq!(max.as_f64(), Some(f64::from(limit)));
}

/// The checker itself refuses what it must, so the tests above can fail.
#[test]
fn the_conformance_check_refuses_drift() {
    let s = spec();
    let error = json!({"$ref": "#/components/schemas/ErrorBody"});
    let cases = [
        (json!({"error": "x"}), true),
        (json!({"error": "x", "extra": 1}), false),
        (json!({}), false),
        (json!({"error": 3}), false),
    ];
    for (value, ok) in cases {
        assert_eq!(conform(&s, &error, &value, "body").is_ok(), ok, "{value}");
    }
}
