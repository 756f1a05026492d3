//! Table tests: compose files in, planned bodies or errors (key, service, line) out.

use super::*;

struct NoFiles(BTreeMap<String, Vec<u8>>);

impl Files for NoFiles {
    fn read(&self, path: &str) -> Result<Vec<u8>, String> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| format!("cannot read {path}: no such file"))
    }
}

fn files() -> NoFiles {
    NoFiles(BTreeMap::from([
        ("./db_password.txt".to_string(), b"s3cret\n".to_vec()),
        ("web.env".to_string(), b"A=from-file\nB=file\n".to_vec()),
        ("nginx.conf".to_string(), b"server {}\n".to_vec()),
    ]))
}

fn input(texts: &[&str]) -> Input {
    Input {
        files: texts
            .iter()
            .enumerate()
            .map(|(i, t)| Source {
                name: format!("f{i}.yaml"),
                text: t.to_string(),
            })
            .collect(),
        project: None,
        folder: "My_Shop".into(),
        vars: BTreeMap::from([("TAG".into(), "1.0".into()), ("N".into(), "3".into())]),
    }
}

fn plan(texts: &[&str]) -> Plan {
    match load(&input(texts), &files()) {
        Ok(p) => p,
        Err(e) => panic!("{texts:?}: {e}"),
    }
}

fn body(p: &Plan, name: &str) -> Value {
    Value::Object(
        p.services
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service {name}"))
            .body
            .clone(),
    )
}

const SHOP: &str = r#"
name: shop
x-common: &common
  restart: unless-stopped
services:
  web:
    <<: *common
    image: orion/busybox:${TAG}
    command: httpd -f -p 80
    ports:
      - "8080:80"
      - target: 443
        published: 8443
        mode: host
    environment:
      - API=http://api
      - EMPTY=
    env_file: web.env
    labels:
      tier: front
    depends_on:
      api:
        condition: service_healthy
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "-", "http://localhost/"]
      interval: 2s
      timeout: 1s
      retries: 5
      start_period: 1s
  api:
    image: orion/busybox:latest
    entrypoint: ["sh", "-c"]
    command: ["httpd -f -p 8000"]
    expose: ["8000"]
    user: "1000:1000"
    working_dir: /srv
    hostname: api
    stop_signal: SIGINT
    stop_grace_period: 30s
    environment:
      B: env
    deploy:
      replicas: ${N}
      resources:
        limits: {cpus: "0.5", memory: 64M}
      placement:
        constraints: ["node.labels.zone == a"]
        max_replicas_per_node: 2
      update_config: {parallelism: 2, delay: 1s, order: stop-first, failure_action: pause}
      rollback_config: {parallelism: 2, delay: 1s, order: stop-first, failure_action: pause}
      restart_policy: {condition: on-failure}
    depends_on: [db, cache]
    healthcheck:
      test: wget -q -O - http://localhost:8000/
    networks: [back]
  db:
    image: orion/busybox:latest
    volumes:
      - dbdata:/var/lib/db
      - type: bind
        source: /etc/hostname
        target: /host-name
        read_only: true
    secrets:
      - db_password
      - source: db_password
        target: other
        mode: 0400
    configs:
      - source: nginx
        target: /etc/nginx.conf
    networks:
      back:
  cache:
    image: orion/busybox:latest
    deploy: {mode: global}
    build: ./cache
volumes:
  dbdata: {}
networks:
  back: {driver: overlay}
secrets:
  db_password:
    file: ./db_password.txt
configs:
  nginx:
    file: nginx.conf
"#;

#[test]
fn shop_plans_every_honoured_key() {
    let p = plan(&[SHOP]);
    assert_eq!(p.project, "shop");
    let order: Vec<&str> = p.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(order, ["db", "cache", "api", "web"], "dependencies first");
    let web = body(&p, "web");
    assert_eq!(web["image"], "orion/busybox:1.0");
    assert_eq!(web["stack"], "shop");
    assert_eq!(
        web["command"],
        serde_json::json!(["httpd", "-f", "-p", "80"])
    );
    assert_eq!(
        web["restartPolicy"], "always",
        "unless-stopped via the merge key"
    );
    assert_eq!(
        web["env"],
        serde_json::json!({"A": "from-file", "API": "http://api", "B": "file", "EMPTY": ""})
    );
    assert_eq!(web["labels"], serde_json::json!({"tier": "front"}));
    assert_eq!(
        web["ports"],
        serde_json::json!([
            {"target": 80, "published": 8080, "protocol": "tcp"},
            {"target": 443, "published": 8443, "mode": "host", "protocol": "tcp"}
        ])
    );
    assert_eq!(
        web["healthcheck"],
        serde_json::json!({"exec": ["wget", "-q", "-O", "-", "http://localhost/"],
                           "interval": "2s", "timeout": "1s", "retries": 5, "startPeriod": "1s"})
    );
    let w = &p.services[3];
    assert_eq!(w.depends_on, vec![("api".to_string(), Condition::Healthy)]);
    let api = p.services.iter().find(|s| s.name == "api").expect("api");
    let s = &api.spec;
    assert_eq!(s.replicas, 3);
    assert_eq!(s.max_per_node, 2);
    assert_eq!(s.task.cpu_millis, 500);
    assert_eq!(s.task.memory_bytes, 64 << 20);
    assert_eq!(s.task.restart_policy, orion_types::RestartPolicy::OnFailure);
    assert_eq!(s.update.parallelism, 2);
    assert_eq!(s.stop_grace_period_ms, 30_000);
    assert_eq!(s.ports[0].target, 8000);
    assert_eq!(s.ports[0].published, None);
    assert_eq!(s.task.env["B"], "env");
    let c = &s.task.container;
    assert_eq!(c.entrypoint, Some(vec!["sh".into(), "-c".into()]));
    assert_eq!(c.user.as_deref(), Some("1000:1000"));
    assert_eq!(c.working_dir.as_deref(), Some("/srv"));
    assert_eq!(c.hostname.as_deref(), Some("api"));
    assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(
        api.depends_on,
        vec![
            ("db".to_string(), Condition::Started),
            ("cache".to_string(), Condition::Started)
        ]
    );
    let db = &p.services[0].spec.task.container;
    assert_eq!(db.mounts.len(), 2);
    assert!(db.mounts.iter().any(|m| m.source == "shop_dbdata"
        && m.kind == orion_types::MountKind::Volume
        && m.target == "/var/lib/db"));
    assert!(
        db.mounts
            .iter()
            .any(|m| m.kind == orion_types::MountKind::Bind && m.read_only)
    );
    let targets: Vec<(&str, &str, u32)> = db
        .files
        .iter()
        .map(|f| (f.target.as_str(), f.content.as_str(), f.mode))
        .collect();
    assert_eq!(
        targets,
        [
            ("/etc/nginx.conf", "server {}\n", 0o444),
            ("/run/secrets/db_password", "s3cret\n", 0o444),
            ("/run/secrets/other", "s3cret\n", 0o400),
        ]
    );
    let cache = &p.services[1].spec;
    assert_eq!(cache.mode, orion_types::ServiceMode::Global);
    assert!(
        p.warnings.iter().any(|w| w.contains("build skipped")),
        "{:?}",
        p.warnings
    );
    // The dry run's JSON names every service in order.
    let j = p.to_json();
    assert_eq!(j["order"], serde_json::json!(["db", "cache", "api", "web"]));
    assert_eq!(j["dependsOn"]["web"]["api"], "service_healthy");
}

#[test]
fn project_name_comes_from_flag_then_name_then_folder() {
    let mut i = input(&["services: {a: {image: x}}"]);
    assert_eq!(load(&i, &files()).expect("valid").project, "my-shop");
    i.files[0].text = "name: Named\nservices: {a: {image: x}}".into();
    assert_eq!(load(&i, &files()).expect("valid").project, "named");
    i.project = Some("flag".into());
    assert_eq!(load(&i, &files()).expect("valid").project, "flag");
}

#[test]
fn list_and_map_forms_are_the_same() {
    let list = plan(&[r#"
services:
  a:
    image: x
    environment: ["A=1", "B=two=2"]
    labels: ["l=v"]
    ports: ["80", "8080:8080/udp"]
    depends_on: [b]
  b: {image: x}
"#]);
    let map = plan(&[r#"
services:
  a:
    image: x
    environment: {A: 1, B: "two=2"}
    labels: {l: v}
    ports:
      - target: 80
      - {target: 8080, published: 8080, protocol: udp}
    depends_on: {b: {condition: service_started}}
  b: {image: x}
"#]);
    let (l, m) = (&list.services[1], &map.services[1]);
    assert_eq!(l.spec, m.spec);
    assert_eq!(l.depends_on, m.depends_on);
}

#[test]
fn override_files_merge_like_docker_compose() {
    let p = plan(&[
        r#"
services:
  web:
    image: x:1
    command: ["a", "b"]
    environment: ["A=1", "B=1"]
    ports: ["80:80"]
    labels: {keep: "yes"}
"#,
        r#"
services:
  web:
    image: x:2
    command: ["c"]
    environment: {B: 2, C: 3}
    ports: ["443:443"]
  extra: {image: y}
"#,
    ]);
    let web = body(&p, "web");
    assert_eq!(web["image"], "x:2");
    assert_eq!(
        web["command"],
        serde_json::json!(["c"]),
        "a command is replaced"
    );
    assert_eq!(
        web["env"],
        serde_json::json!({"A": "1", "B": "2", "C": "3"})
    );
    assert_eq!(
        web["ports"].as_array().map(Vec::len),
        Some(2),
        "ports are appended"
    );
    assert_eq!(web["labels"]["keep"], "yes");
    assert_eq!(p.services.len(), 2);
}

/// Each key Orion does not honour is an error naming the key, the service and the line, and
/// saying what to use instead where there is something.
#[test]
fn unsupported_keys_name_key_service_and_line() {
    // (service body lines, key, line of the key (file line), text in the message)
    let cases: &[(&str, &str, usize, &str)] = &[
        ("    privileged: true", "privileged", 4, "not supported"),
        (
            "    mem_limit: 1g",
            "mem_limit",
            4,
            "deploy.resources.limits.memory",
        ),
        ("    cpus: 0.5", "cpus", 4, "deploy.resources.limits.cpus"),
        ("    scale: 3", "scale", 4, "deploy.replicas"),
        ("    links: [db]", "links", 4, "service's name"),
        ("    network_mode: host", "network_mode", 4, "discovery"),
        ("    logging: {driver: syslog}", "logging", 4, "orion logs"),
        ("    extends: {service: base}", "extends", 4, "-f"),
        ("    cap_add: [NET_ADMIN]", "cap_add", 4, "capabilities"),
        ("    frobnicate: 1", "frobnicate", 4, "not a compose key"),
        ("    restart: on-failure:3", "restart", 4, "use on-failure"),
        (
            "    ports: [\"127.0.0.1:80:80\"]",
            "ports",
            4,
            "--publish-ip",
        ),
        (
            "    ports:\n      - {target: 80, host_ip: 1.2.3.4}",
            "ports.host_ip",
            5,
            "--publish-ip",
        ),
        (
            "    volumes: [\"./data:/data\"]",
            "volumes",
            4,
            "relative bind path",
        ),
        ("    volumes: [\"/data\"]", "volumes", 4, "anonymous volume"),
        (
            "    volumes: [\"nope:/data\"]",
            "volumes",
            4,
            "not declared",
        ),
        (
            "    volumes:\n      - {type: tmpfs, target: /t}",
            "volumes.type",
            5,
            "tmpfs",
        ),
        (
            "    deploy:\n      resources:\n        limits: {pids: 10}",
            "deploy.resources.limits.pids",
            6,
            "cpus and memory",
        ),
        (
            "    deploy:\n      placement:\n        preferences: []",
            "deploy.placement.preferences",
            6,
            "constraints",
        ),
        (
            "    deploy:\n      restart_policy: {max_attempts: 3}",
            "deploy.restart_policy.max_attempts",
            5,
            "backoff",
        ),
        (
            "    deploy:\n      rollback_config: {parallelism: 4}",
            "deploy.rollback_config",
            5,
            "update_config",
        ),
        (
            "    deploy:\n      endpoint_mode: dnsrr",
            "deploy.endpoint_mode",
            5,
            "VIP",
        ),
        (
            "    deploy: {replicas: 2}\n    container_name: web1",
            "container_name",
            5,
            "more than one replica",
        ),
        (
            "    healthcheck: {test: [\"CMD\", \"true\"], start_interval: 1s}",
            "healthcheck.start_interval",
            4,
            "interval",
        ),
        (
            "    depends_on:\n      db: {condition: service_done}",
            "depends_on.db.condition",
            5,
            "service_healthy",
        ),
        ("    networks: [nowhere]", "networks", 4, "not declared"),
        (
            "    networks:\n      default: {aliases: [w]}",
            "networks.default.aliases",
            5,
            "by its name",
        ),
        ("    secrets: [nope]", "secrets", 4, "not declared"),
        (
            "    secrets:\n      - {source: s, uid: \"1\"}",
            "secrets.uid",
            5,
            "mode",
        ),
        ("    env_file: missing.env", "env_file", 4, "no such file"),
        (
            "    stop_grace_period: forever",
            "stop_grace_period",
            4,
            "stopGracePeriod",
        ),
        (
            "    deploy: {replicas: 5000}",
            "deploy.replicas",
            4,
            "limit",
        ),
        ("    user: \"a b\"", "user", 4, "user"),
        ("    ports: [\"99999\"]", "ports", 4, "not a port"),
    ];
    for (lines, key, line, hint) in cases {
        let text = format!(
            "secrets:\n  s: {{file: ./db_password.txt}}\nservices:\n  web:\n    image: x\n{lines}\n"
        );
        // The service body starts on file line 6; the table counts from `web:` at line 4.
        let got = load(&input(&[&text]), &files());
        let e = match got {
            Err(e) => e,
            Ok(_) => panic!("{lines}: accepted"),
        };
        assert_eq!(e.key, *key, "{lines}: {e}");
        assert_eq!(e.service.as_deref(), Some("web"), "{lines}: {e}");
        assert_eq!(e.line, line + 2, "{lines}: {e}");
        assert_eq!(e.file, "f0.yaml");
        let shown = e.to_string();
        assert!(shown.contains(hint), "{lines}: {shown}");
        assert!(
            shown.starts_with(&format!("f0.yaml:{}: service \"web\": {key}: ", line + 2)),
            "{shown}"
        );
    }
}

#[test]
fn build_without_image_is_an_error_naming_the_service() {
    let e = load(&input(&["services:\n  app:\n    build: .\n"]), &files()).unwrap_err();
    assert_eq!(
        (e.service.as_deref(), e.key.as_str(), e.line),
        (Some("app"), "build", 3)
    );
    assert!(e.message.contains("registry"), "{e}");
}

#[test]
fn file_level_errors() {
    let cases: &[(&str, &str)] = &[
        ("services: [a", "not valid YAML"),
        (
            "services:\n  a: {image: x}\nservices:\n  b: {image: x}",
            "not valid YAML",
        ),
        (
            "include: [a.yaml]\nservices: {a: {image: x}}",
            "top-level key",
        ),
        ("services:\n  Web_1: {image: x}", "DNS label"),
        (
            "services:\n  a: {image: \"${REQUIRED:?set it}\"}",
            "REQUIRED is required: set it",
        ),
        (
            "services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [a]}",
            "cycle",
        ),
        (
            "services:\n  a: {image: x, depends_on: [zz]}",
            "not a service",
        ),
        (
            "volumes:\n  v: {driver: nfs}\nservices: {a: {image: x}}",
            "local",
        ),
        (
            "secrets:\n  s: {external: true}\nservices: {a: {image: x}}",
            "file: PATH",
        ),
        ("services: {}", "names no service"),
        ("", "is empty"),
    ];
    for (text, want) in cases {
        match load(&input(&[text]), &files()) {
            Err(e) => assert!(e.to_string().contains(want), "{text}: {e}"),
            Ok(_) => panic!("{text}: accepted"),
        }
    }
}

#[test]
fn billion_laughs_is_refused() {
    let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 0..8 {
        let prev = if i == 0 {
            "a".to_string()
        } else {
            format!("b{}", i - 1)
        };
        text.push_str(&format!(
            "b{i}: &b{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
        ));
    }
    text.push_str("services: {a: {image: x}}\n");
    let e = load(&input(&[&text]), &files()).unwrap_err();
    assert!(e.to_string().contains("YAML"), "{e}");
}

#[test]
fn expose_beside_a_published_port_is_not_a_duplicate() {
    let p = plan(&[r#"
services:
  a:
    image: x
    expose: ["80", "81", "81"]
    ports: ["8080:80"]
"#]);
    assert_eq!(
        body(&p, "a")["ports"],
        serde_json::json!([
            {"target": 81, "protocol": "tcp"},
            {"target": 80, "published": 8080, "protocol": "tcp"}
        ])
    );
}

#[test]
fn an_optional_dependency_missing_from_the_files_is_not_waited_for() {
    let p = plan(&[r#"
services:
  a:
    image: x
    depends_on:
      b: {condition: service_started, required: false}
"#]);
    assert!(p.services[0].depends_on.is_empty());
    let e = load(
        &input(&["services:\n  a:\n    image: x\n    depends_on: [b]\n"]),
        &files(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("not a service"), "{e}");
}
