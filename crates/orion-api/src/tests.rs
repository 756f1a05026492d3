//! HTTP-level tests against an in-memory backend that applies commands directly (the Raft
//! path is tested in orion-raft and by the cluster tests). Each case is one `check` call.

use super::*;
use axum::http::Request;
use http_body_util::BodyExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tower::ServiceExt;

#[derive(Default)]
pub(crate) struct MemBackend {
    state: Mutex<ClusterState>,
    ids: AtomicU64,
    writes: AtomicU64,
}

impl Backend for MemBackend {
    async fn write(&self, cmd: Command) -> Result<CmdResponse, ApiError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(self.state.lock().expect("lock").apply(&cmd).0)
    }
    async fn consistent_read(&self) -> Result<(), ApiError> {
        Ok(())
    }
    fn read<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> T {
        f(&self.state.lock().expect("lock"))
    }
    fn nodes(&self) -> Vec<NodeView> {
        Vec::new()
    }
    fn status(&self) -> StatusView {
        StatusView {
            id: "n1".into(),
            role: "leader".into(),
            ..Default::default()
        }
    }
    fn new_id(&self) -> String {
        format!(
            "{:032x}",
            0xabc000 + self.ids.fetch_add(1, Ordering::SeqCst)
        )
    }
    fn now_ms(&self) -> u64 {
        1_700_000_000_000
    }
    async fn logs(
        &self,
        _task: Task,
        _follow: bool,
        _tail: Option<usize>,
    ) -> Result<Body, ApiError> {
        Ok(Body::from("log line\n"))
    }
}

/// Sends one request and returns status and JSON body.
pub(crate) async fn call(
    b: &Arc<MemBackend>,
    method: &str,
    uri: &str,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_string()))
        .expect("request");
    let resp = router(b.clone()).oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{method} {uri}: body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, json)
}

/// Checks a request's status and that an error body names `error_contains`.
async fn check(
    b: &Arc<MemBackend>,
    method: &str,
    uri: &str,
    body: &str,
    want: u16,
    error_contains: &str,
) {
    let (status, json) = call(b, method, uri, body).await;
    assert_eq!(status.as_u16(), want, "{method} {uri} {body}: {json}");
    if !error_contains.is_empty() {
        let msg = json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {json}"));
        assert!(msg.contains(error_contains), "{method} {uri} {body}: {msg}");
    }
}

#[tokio::test]
async fn seed_flow_create_get_list_delete() {
    let b = Arc::new(MemBackend::default());
    let (status, task) = call(
        &b,
        "POST",
        "/tasks",
        r#"{"image": "nginx", "memory": 100000000, "portBindings": {"80/tcp": "8080"}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(task["state"], "pending");
    assert_eq!(task["memory"], 100000000);
    assert_eq!(task["portBindings"]["80/tcp"], "8080");
    let id = task["id"].as_str().expect("id").to_string();
    let (status, got) = call(&b, "GET", &format!("/tasks/{id}"), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["id"], id.as_str());
    // A unique prefix finds it too.
    let (status, _) = call(&b, "GET", &format!("/tasks/{}", &id[..8]), "").await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = call(&b, "GET", "/tasks?state=pending", "").await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let (_, list) = call(&b, "GET", "/tasks?state=running&consistent=true", "").await;
    assert_eq!(list.as_array().map(Vec::len), Some(0));
    let (status, deleted) = call(&b, "DELETE", &format!("/tasks/{id}"), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deleted["state"], "stopped");
}

#[tokio::test]
async fn bad_input_gets_400_naming_the_field_and_writes_nothing() {
    let b = Arc::new(MemBackend::default());
    let cases: &[(&str, &str)] = &[
        ("{not json", "not valid JSON"),
        (r#"{"memory": 100}"#, "image"),
        (r#"{"image": "x", "memory": -5}"#, "memory"),
        (r#"{"image": "x", "memory": 999999999999999999}"#, "memory"),
        (
            r#"{"image": "x", "portBindings": {"80/xyz": "1"}}"#,
            "portBindings",
        ),
        (
            r#"{"image": "x", "portBindings": {"80/tcp": "99999"}}"#,
            "portBindings",
        ),
        (
            r#"{"image": "x", "restartPolicy": "sometimes"}"#,
            "restartPolicy",
        ),
        (r#"{"image": "x", "bogus": 1}"#, "bogus"),
    ];
    for (body, field) in cases {
        check(&b, "POST", "/tasks", body, 400, field).await;
    }
    assert_eq!(b.writes.load(Ordering::SeqCst), 0);
    assert!(b.read(|s| s.tasks.is_empty()));
}

#[tokio::test]
async fn errors_are_json_everywhere() {
    let b = Arc::new(MemBackend::default());
    check(&b, "GET", "/tasks/0123456789", "", 404, "not found").await;
    check(&b, "DELETE", "/tasks/nope", "", 404, "not found").await;
    check(&b, "GET", "/nope", "", 404, "no such route").await;
    check(&b, "PUT", "/tasks", "", 405, "method not allowed").await;
    check(&b, "GET", "/tasks?state=sleepy", "", 400, "state").await;
    check(&b, "POST", "/nodes/ghost/drain", "", 404, "ghost").await;
    let huge = format!(
        r#"{{"image": "x", "name": "{}"}}"#,
        "a".repeat(limits::BODY_BYTES_MAX + 10)
    );
    check(&b, "POST", "/tasks", &huge, 413, "larger than").await;
    check(&b, "GET", "/health", "", 200, "").await;
    let (_, status) = call(&b, "GET", "/status", "").await;
    assert_eq!(status["role"], "leader");
}

#[tokio::test]
async fn cluster_config_reads_the_defaults_and_merges_a_partial_change() {
    let b = Arc::new(MemBackend::default());
    let (status, got) = call(&b, "GET", "/cluster/config", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, orion_types::ClusterConfig::default().to_json());
    let (status, put) = call(
        &b,
        "PUT",
        "/cluster/config",
        r#"{"strategy": "binpack", "voters": 5}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_eq!(put["strategy"], "binpack");
    assert_eq!(put["voters"], 5);
    assert_eq!(put["dynamicPorts"], "20000-32767", "untouched fields stay");
    let (_, got) = call(&b, "GET", "/cluster/config?consistent=true", "").await;
    assert_eq!(got, put);
    assert_eq!(b.read(|s| s.config.map(|c| c.voters)), Some(5));
}

#[tokio::test]
async fn a_bad_cluster_config_gets_400_naming_the_field_and_writes_nothing() {
    let b = Arc::new(MemBackend::default());
    let cases: &[(&str, &str)] = &[
        (r#"{"strategy": "random"}"#, "strategy"),
        (r#"{"dynamicPorts": "9-1"}"#, "dynamicPorts"),
        (r#"{"voters": 0}"#, "voters"),
        (r#"{"restartBaseMs": 0}"#, "restartBaseMs"),
        (r#"{"restartMaxMs": 1}"#, "restartMaxMs"),
        (r#"{"colour": 1}"#, "colour"),
        ("{not json", "not valid JSON"),
    ];
    for (body, field) in cases {
        check(&b, "PUT", "/cluster/config", body, 400, field).await;
    }
    assert_eq!(b.writes.load(Ordering::SeqCst), 0);
}

mod services {
    //! `/services`: the contract of API.md, each family through the same `call`/`check`.

    use super::*;
    use orion_types::service::parse_service_request;
    use serde_json::Value;

    const WEB: &str = r#"{"name":"web","image":"orion/busybox","replicas":3,
        "ports":[{"target":80,"published":8080}],"healthcheck":{"http":"/"},
        "update":{"parallelism":2,"order":"stop-first","monitor":"2s"}}"#;

    #[tokio::test]
    async fn create_get_list_update_scale_rollback_delete() {
        let b = Arc::new(MemBackend::default());
        let (status, svc) = call(&b, "POST", "/services", WEB).await;
        assert_eq!(status, StatusCode::CREATED, "{svc}");
        assert_eq!(svc["id"], "web");
        assert_eq!(svc["version"], 1);
        assert_eq!(
            svc["replicas"],
            serde_json::json!({"desired": 3, "running": 0, "healthy": 0})
        );
        assert_eq!(
            svc["vip"], "10.200.0.1",
            "the lowest address of the default vipRange"
        );
        assert_eq!(svc["deployment"], Value::Null);
        assert_eq!(svc["endpoints"], serde_json::json!([]));
        assert_eq!(svc["healthcheck"]["interval"], "5s");
        assert_eq!(svc["update"]["order"], "stop-first");
        assert_eq!(svc["update"]["monitor"], "2s");
        assert_eq!(svc["stopGracePeriod"], "10s");
        assert!(svc["createdAt"].is_string() && svc["updatedAt"].is_string());

        check(&b, "POST", "/services", WEB, 409, "already exists").await;
        let (_, got) = call(&b, "GET", "/services/web", "").await;
        assert_eq!(got, svc);
        let (_, list) = call(&b, "GET", "/services", "").await;
        assert_eq!(list.as_array().map(Vec::len), Some(1));
        let (_, list) = call(&b, "GET", "/services?stack=shop", "").await;
        assert_eq!(list.as_array().map(Vec::len), Some(0));
        let (_, tasks) = call(&b, "GET", "/services/web/tasks", "").await;
        assert_eq!(tasks, serde_json::json!([]));

        // The same spec again changes nothing.
        let (status, same) = call(&b, "PUT", "/services/web", WEB).await;
        assert_eq!((status, &same["version"]), (StatusCode::OK, &1.into()));
        // A new image: version 2 and a running deployment.
        let new = WEB.replace("orion/busybox", "orion/busybox:2");
        let (status, v2) = call(&b, "PUT", "/services/web", &new).await;
        assert_eq!(status, StatusCode::OK, "{v2}");
        assert_eq!(v2["version"], 2);
        assert_eq!(v2["image"], "orion/busybox:2");
        assert_eq!(v2["deployment"]["state"], "running");
        assert_eq!(v2["deployment"]["fromVersion"], 1);
        assert_eq!(v2["deployment"]["toVersion"], 2);
        assert_eq!(v2["deployment"]["total"], 3);

        let (status, scaled) = call(&b, "POST", "/services/web/scale", r#"{"replicas":5}"#).await;
        assert_eq!(status, StatusCode::OK, "{scaled}");
        assert_eq!(scaled["replicas"]["desired"], 5);
        assert_eq!(scaled["version"], 3);

        let (status, back) = call(&b, "POST", "/services/web/rollback", "").await;
        assert_eq!(status, StatusCode::OK, "{back}");
        assert_eq!(back["image"], "orion/busybox");
        assert_eq!(back["replicas"]["desired"], 5, "a rollback keeps the count");
        assert_eq!(back["deployment"]["state"], "rolling-back");

        let (status, gone) = call(&b, "DELETE", "/services/web", "").await;
        assert_eq!((status, &gone["id"]), (StatusCode::OK, &"web".into()));
        check(&b, "GET", "/services/web", "", 404, "not found").await;
        check(&b, "DELETE", "/services/web", "", 404, "not found").await;
    }

    /// Regression: the service object left out `stopAfterDisconnect`, so a service read and
    /// `PUT` back lost it (found while writing its OpenAPI schema).
    #[tokio::test]
    async fn service_object_keeps_stop_after_disconnect() {
        let b = Arc::new(MemBackend::default());
        let body = r#"{"name":"web","image":"orion/busybox","stopAfterDisconnect":"30s"}"#;
        let (status, svc) = call(&b, "POST", "/services", body).await;
        assert_eq!(status, StatusCode::CREATED, "{svc}");
        assert_eq!(svc["stopAfterDisconnect"], "30s");
        let (_, plain) = call(&b, "POST", "/services", WEB).await;
        assert!(plain.get("stopAfterDisconnect").is_none(), "{plain}");
    }

    #[tokio::test]
    async fn the_service_object_reads_back_as_the_same_spec() {
        let b = Arc::new(MemBackend::default());
        let (_, svc) = call(&b, "POST", "/services", WEB).await;
        let spec = spec_json(&parse_service_request(WEB.as_bytes()).expect("valid"));
        let body = serde_json::to_vec(&spec).expect("json");
        assert_eq!(
            parse_service_request(&body).expect("round trip"),
            parse_service_request(WEB.as_bytes()).expect("valid")
        );
        // A PUT of the object as read (view-only fields removed) is an unchanged spec.
        let mut obj = svc.as_object().cloned().expect("object");
        for k in SERVICE_VIEW_ONLY_FIELDS {
            obj.remove(*k);
        }
        obj.insert("replicas".into(), svc["replicas"]["desired"].clone());
        let body = serde_json::to_string(&obj).expect("json");
        let (status, same) = call(&b, "PUT", "/services/web", &body).await;
        assert_eq!(
            (status, &same["version"]),
            (StatusCode::OK, &1.into()),
            "{same}"
        );
    }

    #[tokio::test]
    async fn bad_input_gets_400_or_409_naming_the_field_and_writes_nothing() {
        let b = Arc::new(MemBackend::default());
        let cases: &[(&str, &str, &str, u16, &str)] = &[
            (
                "POST",
                "/services",
                r#"{"name":"web","image":"x","mode":"daemon"}"#,
                400,
                "mode",
            ),
            (
                "POST",
                "/services",
                r#"{"name":"web","image":"x","replicas":-1}"#,
                400,
                "replicas",
            ),
            (
                "POST",
                "/services",
                r#"{"name":"web","image":"x","replicas":1001}"#,
                400,
                "replicas",
            ),
            (
                "POST",
                "/services",
                r#"{"name":"web","image":"x","mode":"global","replicas":1}"#,
                400,
                "replicas",
            ),
            (
                "POST",
                "/services",
                r#"{"name":"web","image":"x","healthcheck":{"exec":["true"],"interval":"0s"}}"#,
                400,
                "interval",
            ),
            (
                "POST",
                "/services",
                r#"{"name":"web","image":"x","update":{"parallelism":0}}"#,
                400,
                "parallelism",
            ),
            (
                "POST",
                "/services",
                r#"{"name":"Web_1","image":"x"}"#,
                400,
                "name",
            ),
            (
                "POST",
                "/services",
                r#"{"name":"web","image":"x","bogus":1}"#,
                400,
                "bogus",
            ),
            ("POST", "/services", "{not json", 400, "not valid JSON"),
            (
                "PUT",
                "/services/web",
                r#"{"name":"web","image":"x"}"#,
                404,
                "not found",
            ),
            (
                "POST",
                "/services/web/scale",
                r#"{"replicas":2}"#,
                404,
                "not found",
            ),
            ("POST", "/services/web/rollback", "", 404, "not found"),
            ("GET", "/services/web/tasks", "", 404, "not found"),
        ];
        for (method, uri, body, want, field) in cases {
            check(&b, method, uri, body, *want, field).await;
        }
        assert!(b.read(|s| s.services.is_empty() && s.tasks.is_empty()));

        check(
            &b,
            "POST",
            "/services",
            r#"{"name":"web","image":"x"}"#,
            201,
            "",
        )
        .await;
        let after_create = b.read(|s| s.clone());
        let cases: &[(&str, &str, &str, u16, &str)] = &[
            (
                "POST",
                "/services",
                r#"{"name":"web","image":"y"}"#,
                409,
                "already exists",
            ),
            (
                "PUT",
                "/services/web",
                r#"{"name":"web","image":"x","replicas":-1}"#,
                400,
                "replicas",
            ),
            (
                "PUT",
                "/services/web",
                r#"{"name":"api","image":"x"}"#,
                400,
                "name",
            ),
            (
                "POST",
                "/services/web/scale",
                r#"{"replicas":-1}"#,
                400,
                "replicas",
            ),
            (
                "POST",
                "/services/web/scale",
                r#"{"replicas":5000}"#,
                400,
                "replicas",
            ),
            (
                "POST",
                "/services/web/scale",
                r#"{"count":2}"#,
                400,
                "count",
            ),
            (
                "POST",
                "/services/web/rollback",
                "",
                400,
                "no previous spec",
            ),
            ("GET", "/services/web/tasks?state=sleepy", "", 400, "state"),
        ];
        for (method, uri, body, want, field) in cases {
            check(&b, method, uri, body, *want, field).await;
        }
        assert_eq!(b.read(|s| s.clone()), after_create);
        check(
            &b,
            "POST",
            "/services",
            r#"{"name":"g","image":"x","mode":"global"}"#,
            201,
            "",
        )
        .await;
        check(
            &b,
            "POST",
            "/services/g/scale",
            r#"{"replicas":2}"#,
            400,
            "global",
        )
        .await;
    }

    #[tokio::test]
    async fn service_tasks_show_service_version_slot_and_health() {
        let b = Arc::new(MemBackend::default());
        check(&b, "POST", "/services", WEB, 201, "").await;
        let spec = parse_service_request(WEB.as_bytes()).expect("valid");
        let cmd = Command::CreateServiceTasks {
            tasks: vec![orion_types::NewServiceTask {
                task_id: "t1".into(),
                service: "web".into(),
                version: 1,
                slot: Some(2),
                spec: Box::new(spec.task_spec("web.2".into(), None)),
            }],
            at: 1,
        };
        b.write(cmd).await.expect("write");
        let (_, tasks) = call(&b, "GET", "/services/web/tasks", "").await;
        let t = &tasks[0];
        assert_eq!(
            (
                &t["service"],
                &t["version"],
                &t["slot"],
                &t["health"],
                &t["name"]
            ),
            (
                &"web".into(),
                &1.into(),
                &2.into(),
                &"starting".into(),
                &"web.2".into()
            )
        );
        // One-off tasks show no service.
        let (_, task) = call(&b, "POST", "/tasks", r#"{"image":"x"}"#).await;
        assert_eq!(
            (&task["service"], &task["health"]),
            (&Value::Null, &"none".into())
        );
    }
}

/// `GET /tasks` writes its array one view at a time; the bytes must be exactly those of the
/// whole list serialized at once, whatever the count and however wrong the size hint.
#[test]
fn a_list_written_one_view_at_a_time_is_the_json_of_the_whole_list() {
    let items: Vec<BTreeMapItem> = (0..5)
        .map(|i| BTreeMapItem {
            id: format!("t{i}"),
            tags: (0..i)
                .map(|j| (format!("k{j}"), "v \"quoted\"".to_string()))
                .collect(),
        })
        .collect();
    for n in 0..items.len() {
        let whole = serde_json::to_vec(&items[..n]).expect("whole");
        for hint in [0, n, 100] {
            let streamed = json_array(hint, items[..n].iter()).expect("streamed");
            assert_eq!(
                String::from_utf8(streamed).expect("utf8"),
                String::from_utf8(whole.clone()).expect("utf8"),
                "{n} items, hint {hint}"
            );
        }
    }
}

#[derive(serde::Serialize)]
struct BTreeMapItem {
    id: String,
    tags: std::collections::BTreeMap<String, String>,
}
