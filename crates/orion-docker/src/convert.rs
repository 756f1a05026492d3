//! Pure translation between this crate's types and bollard's models: the
//! create body built from a `ContainerSpec`, and `ContainerInfo` /
//! `ContainerEvent` read back from inspect and event messages. No IO here, so
//! the odd corners of the engine's answers (missing fields, `/`-prefixed
//! names, the zero time for "never") are unit-tested without an engine.
//! Nothing here panics on engine data: unparsable parts are skipped and logged.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, EventMessage,
    EventMessageTypeEnum, Health, HealthStatusEnum, HostConfig, NetworkSettings, PortBinding,
    PortMap,
};

use crate::error::RuntimeError;
use crate::types::{
    BoundPort, ContainerEvent, ContainerInfo, ContainerSpec, ContainerState, EngineHealth,
    EngineHealthStatus,
};

/// Event attribute keys the engine adds next to the container's labels; they
/// are dropped so that an event's `labels` are the container's labels.
const ENGINE_EVENT_ATTRIBUTES: [&str; 4] = ["name", "image", "exitCode", "signal"];

/// The engine's way of saying "never" in `StartedAt` / `FinishedAt`.
const ZERO_TIME_PREFIX: &str = "0001-01-01T00:00:00";

/// Builds the create body. Every published port is also listed in
/// `exposed_ports`: the 1.41 engine accepts a binding for an unexposed port
/// and silently publishes nothing.
pub(crate) fn create_body(spec: &ContainerSpec) -> Result<ContainerCreateBody, RuntimeError> {
    let mut port_bindings: PortMap = HashMap::new();
    let mut exposed: Vec<String> = Vec::new();
    for port in &spec.ports {
        let key = format!("{}/{}", port.container_port, port.protocol);
        if !exposed.contains(&key) {
            exposed.push(key.clone());
        }
        let binding = PortBinding {
            host_ip: Some(port.host_ip.clone()),
            // An empty host port asks the engine to pick one, like `-p ip::port`.
            host_port: Some(if port.host_port == 0 {
                String::new()
            } else {
                port.host_port.to_string()
            }),
        };
        port_bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(binding);
    }

    let memory = spec
        .memory_bytes
        .map(|m| to_i64("memory_bytes", m))
        .transpose()?;
    let nano_cpus = spec.nano_cpus.map(|n| to_i64("nano_cpus", n)).transpose()?;

    let host_config = HostConfig {
        memory,
        // Equal to memory: swap may not extend the limit, so it is a real cap.
        memory_swap: memory,
        nano_cpus,
        port_bindings: if port_bindings.is_empty() {
            None
        } else {
            Some(port_bindings)
        },
        network_mode: spec.network.clone(),
        dns: (!spec.dns.is_empty()).then(|| spec.dns.clone()),
        dns_search: (!spec.dns_search.is_empty()).then(|| spec.dns_search.clone()),
        ..Default::default()
    };

    Ok(ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.command.clone(),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(
            spec.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        exposed_ports: if exposed.is_empty() {
            None
        } else {
            Some(exposed)
        },
        host_config: Some(host_config),
        ..Default::default()
    })
}

fn to_i64(what: &str, value: u64) -> Result<i64, RuntimeError> {
    i64::try_from(value)
        .map_err(|_| RuntimeError::Engine(format!("{what} {value} exceeds the engine's range")))
}

/// Reads the parts of an inspect answer the executor needs.
pub(crate) fn container_info(
    resp: ContainerInspectResponse,
) -> Result<ContainerInfo, RuntimeError> {
    let id = resp
        .id
        .ok_or_else(|| RuntimeError::Engine("inspect answer without an id".to_string()))?;
    let name = resp
        .name
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default();
    let labels = resp
        .config
        .and_then(|c| c.labels)
        .map(|l| l.into_iter().collect())
        .unwrap_or_default();

    let (state, started_at, finished_at, health) = match resp.state {
        Some(s) => {
            let state = match s.status {
                Some(ContainerStateStatusEnum::CREATED) => ContainerState::Created,
                Some(ContainerStateStatusEnum::RUNNING) => ContainerState::Running,
                Some(ContainerStateStatusEnum::EXITED) => ContainerState::Exited {
                    code: s.exit_code.unwrap_or(-1),
                    oom_killed: s.oom_killed.unwrap_or(false),
                },
                Some(other) => ContainerState::Other(other.to_string()),
                None => ContainerState::Other(String::new()),
            };
            (
                state,
                real_time(s.started_at),
                real_time(s.finished_at),
                s.health.and_then(engine_health),
            )
        }
        None => (ContainerState::Other(String::new()), None, None, None),
    };

    let (ports, ip_address) = match resp.network_settings {
        Some(n) => {
            let ip = first_ip(&n);
            (n.ports.map(bound_ports).unwrap_or_default(), ip)
        }
        None => (Vec::new(), None),
    };

    Ok(ContainerInfo {
        id,
        name,
        labels,
        state,
        ports,
        started_at,
        finished_at,
        ip_address,
        health,
    })
}

/// The container's address on its first network by name (the map's order is random).
fn first_ip(n: &NetworkSettings) -> Option<String> {
    let mut nets: Vec<_> = n.networks.as_ref()?.iter().collect();
    nets.sort_by(|a, b| a.0.cmp(b.0));
    nets.into_iter()
        .filter_map(|(_, e)| e.ip_address.as_deref())
        .find(|ip| !ip.is_empty())
        .map(str::to_string)
}

/// `State.Health`, when the image defines a check; the latest run's output goes with it.
fn engine_health(h: Health) -> Option<EngineHealth> {
    let status = match h.status? {
        HealthStatusEnum::STARTING => EngineHealthStatus::Starting,
        HealthStatusEnum::HEALTHY => EngineHealthStatus::Healthy,
        HealthStatusEnum::UNHEALTHY => EngineHealthStatus::Unhealthy,
        HealthStatusEnum::NONE | HealthStatusEnum::EMPTY => return None,
    };
    let last_output = h.log.and_then(|log| log.into_iter().last()?.output);
    Some(EngineHealth {
        status,
        last_output,
    })
}

fn real_time(t: Option<String>) -> Option<String> {
    t.filter(|t| !t.is_empty() && !t.starts_with(ZERO_TIME_PREFIX))
}

/// Reads `NetworkSettings.Ports`: keys like `80/tcp`, values the host
/// bindings (`None` for a port that is exposed but not published).
fn bound_ports(map: PortMap) -> Vec<BoundPort> {
    let mut out = Vec::new();
    for (key, bindings) in map {
        let Some((port, protocol)) = key.split_once('/') else {
            tracing::warn!(%key, "ignoring port key without protocol");
            continue;
        };
        let Ok(container_port) = port.parse::<u16>() else {
            tracing::warn!(%key, "ignoring unparsable container port");
            continue;
        };
        for binding in bindings.into_iter().flatten() {
            let host_port = binding.host_port.as_deref().unwrap_or("");
            let Ok(host_port) = host_port.parse::<u16>() else {
                tracing::warn!(%key, %host_port, "ignoring unparsable host port");
                continue;
            };
            out.push(BoundPort {
                container_port,
                protocol: protocol.to_string(),
                host_ip: binding.host_ip.unwrap_or_default(),
                host_port,
            });
        }
    }
    out.sort_by(|a, b| {
        (a.container_port, &a.protocol, &a.host_ip, a.host_port).cmp(&(
            b.container_port,
            &b.protocol,
            &b.host_ip,
            b.host_port,
        ))
    });
    out
}

/// Turns an engine event into ours; `None` for events we do not report.
pub(crate) fn container_event(msg: EventMessage) -> Option<ContainerEvent> {
    if msg.typ != Some(EventMessageTypeEnum::CONTAINER) {
        return None;
    }
    let actor = msg.actor?;
    let id = actor.id?;
    let mut attributes: BTreeMap<String, String> =
        actor.attributes.unwrap_or_default().into_iter().collect();
    let exit_code = attributes
        .get("exitCode")
        .and_then(|c| c.parse::<i64>().ok());
    for key in ENGINE_EVENT_ATTRIBUTES {
        attributes.remove(key);
    }
    let labels = attributes;
    match msg.action.as_deref()? {
        "start" => Some(ContainerEvent::Started { id, labels }),
        "die" => Some(ContainerEvent::Died {
            id,
            labels,
            exit_code,
        }),
        "oom" => Some(ContainerEvent::Oom { id, labels }),
        "destroy" => Some(ContainerEvent::Destroyed { id, labels }),
        _ => None,
    }
}

/// Engine filter values `key=value` for a label selector.
pub(crate) fn label_filters(labels: &[(&str, &str)]) -> Vec<String> {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::PortRequest;
    use bollard::models::{ContainerState as BState, EventActor, NetworkSettings};

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "n".into(),
            image: "img".into(),
            command: None,
            env: BTreeMap::from([("A".into(), "1".into())]),
            labels: BTreeMap::from([("orion.node".into(), "n1".into())]),
            memory_bytes: Some(8 << 20),
            nano_cpus: Some(500_000_000),
            ports: vec![
                PortRequest {
                    container_port: 80,
                    protocol: "tcp".into(),
                    host_ip: "127.0.0.2".into(),
                    host_port: 0,
                },
                PortRequest {
                    container_port: 80,
                    protocol: "tcp".into(),
                    host_ip: "127.0.0.3".into(),
                    host_port: 8080,
                },
            ],
            network: None,
            dns: Vec::new(),
            dns_search: Vec::new(),
        }
    }

    #[test]
    fn create_body_exposes_every_published_port_once() {
        let body = create_body(&spec()).expect("valid spec");
        assert_eq!(body.exposed_ports, Some(vec!["80/tcp".to_string()]));
        let host = body.host_config.expect("host config");
        assert_eq!(host.memory, Some(8 << 20));
        assert_eq!(host.memory_swap, Some(8 << 20));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        let bindings = host
            .port_bindings
            .and_then(|mut m| m.remove("80/tcp"))
            .flatten()
            .expect("bindings for 80/tcp");
        assert_eq!(bindings.len(), 2);
        assert_eq!(bindings[0].host_port.as_deref(), Some(""));
        assert_eq!(bindings[1].host_port.as_deref(), Some("8080"));
        assert_eq!(body.env, Some(vec!["A=1".to_string()]));
    }

    #[test]
    fn create_body_rejects_limits_beyond_i64() {
        let mut s = spec();
        s.memory_bytes = Some(u64::MAX);
        assert!(matches!(create_body(&s), Err(RuntimeError::Engine(_))));
    }

    #[test]
    fn info_reads_state_ports_and_zero_times() {
        let resp = ContainerInspectResponse {
            id: Some("abc".into()),
            name: Some("/web".into()),
            state: Some(BState {
                status: Some(ContainerStateStatusEnum::EXITED),
                exit_code: Some(137),
                oom_killed: Some(true),
                started_at: Some("2024-01-01T00:00:00Z".into()),
                finished_at: Some("0001-01-01T00:00:00Z".into()),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                ports: Some(HashMap::from([
                    (
                        "80/tcp".to_string(),
                        Some(vec![PortBinding {
                            host_ip: Some("127.0.0.1".into()),
                            host_port: Some("32768".into()),
                        }]),
                    ),
                    ("81/tcp".to_string(), None),
                    ("bogus".to_string(), None),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let info = container_info(resp).expect("has id");
        assert_eq!(info.name, "web");
        assert_eq!(
            info.state,
            ContainerState::Exited {
                code: 137,
                oom_killed: true
            }
        );
        assert_eq!(info.started_at.as_deref(), Some("2024-01-01T00:00:00Z"));
        assert_eq!(info.finished_at, None);
        assert_eq!(
            info.ports,
            vec![BoundPort {
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: "127.0.0.1".into(),
                host_port: 32768
            }]
        );
    }

    #[test]
    fn info_reads_the_images_health_and_the_first_networks_address() {
        use bollard::models::{EndpointSettings, HealthcheckResult};
        let check = |status: Option<HealthStatusEnum>, want: Option<EngineHealthStatus>| {
            let resp = ContainerInspectResponse {
                id: Some("abc".into()),
                state: Some(BState {
                    status: Some(ContainerStateStatusEnum::RUNNING),
                    health: Some(Health {
                        status,
                        failing_streak: Some(0),
                        log: Some(vec![
                            HealthcheckResult {
                                output: Some("old".into()),
                                ..Default::default()
                            },
                            HealthcheckResult {
                                output: Some("last".into()),
                                ..Default::default()
                            },
                        ]),
                    }),
                    ..Default::default()
                }),
                network_settings: Some(NetworkSettings {
                    networks: Some(HashMap::from([
                        (
                            "zeta".to_string(),
                            EndpointSettings {
                                ip_address: Some("10.0.0.9".into()),
                                ..Default::default()
                            },
                        ),
                        (
                            "bridge".to_string(),
                            EndpointSettings {
                                ip_address: Some("172.17.0.2".into()),
                                ..Default::default()
                            },
                        ),
                    ])),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let info = container_info(resp).expect("has id");
            assert_eq!(info.ip_address.as_deref(), Some("172.17.0.2"));
            assert_eq!(info.health.as_ref().map(|h| h.status), want, "{status:?}");
            if want.is_some() {
                assert_eq!(
                    info.health.and_then(|h| h.last_output).as_deref(),
                    Some("last")
                );
            }
        };
        check(
            Some(HealthStatusEnum::STARTING),
            Some(EngineHealthStatus::Starting),
        );
        check(
            Some(HealthStatusEnum::HEALTHY),
            Some(EngineHealthStatus::Healthy),
        );
        check(
            Some(HealthStatusEnum::UNHEALTHY),
            Some(EngineHealthStatus::Unhealthy),
        );
        check(Some(HealthStatusEnum::NONE), None);
        check(None, None);
    }

    #[test]
    fn info_without_id_is_an_engine_error() {
        assert!(matches!(
            container_info(ContainerInspectResponse::default()),
            Err(RuntimeError::Engine(_))
        ));
    }

    #[test]
    fn die_event_carries_exit_code_and_only_labels() {
        let msg = EventMessage {
            typ: Some(EventMessageTypeEnum::CONTAINER),
            action: Some("die".into()),
            actor: Some(EventActor {
                id: Some("abc".into()),
                attributes: Some(HashMap::from([
                    ("exitCode".to_string(), "3".to_string()),
                    ("name".to_string(), "web".to_string()),
                    ("image".to_string(), "img".to_string()),
                    ("orion.node".to_string(), "n1".to_string()),
                ])),
            }),
            ..Default::default()
        };
        assert_eq!(
            container_event(msg),
            Some(ContainerEvent::Died {
                id: "abc".into(),
                labels: BTreeMap::from([("orion.node".into(), "n1".into())]),
                exit_code: Some(3),
            })
        );
    }

    #[test]
    fn other_events_are_dropped() {
        let msg = EventMessage {
            typ: Some(EventMessageTypeEnum::CONTAINER),
            action: Some("exec_start: sh".into()),
            actor: Some(EventActor {
                id: Some("abc".into()),
                attributes: None,
            }),
            ..Default::default()
        };
        assert_eq!(container_event(msg), None);
        let image = EventMessage {
            typ: Some(EventMessageTypeEnum::IMAGE),
            action: Some("destroy".into()),
            ..Default::default()
        };
        assert_eq!(container_event(image), None);
    }
}
