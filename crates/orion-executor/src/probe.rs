//! `probe`: the IO of one health probe, run by the driver as a job. `http` connects to the
//! target port (where the engine published it on this host, else at the container's own
//! address), sends one `GET` and reads the status line (2xx and 3xx pass); `tcp` connects;
//! `exec` runs the command in the container through the runtime (exit 0 passes); `image`
//! reads the engine's verdict on the image's own `HEALTHCHECK` from inspect. Every probe
//! ends within the check's timeout (an image probe within the runtime's inspect bound) and
//! returns an outcome and a short output saying why; nothing here decides health (that is
//! `health::Probe`).

use crate::health::Outcome;
use crate::runtime::ContainerRuntime;
use orion_docker::{ContainerInfo, ContainerState, EngineHealthStatus};
use orion_types::service::{HealthCheck, HealthTest};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes of an HTTP answer read for its status line: a status line is short, and a server
/// that sends more before a line break is not answering HTTP.
const STATUS_LINE_MAX: usize = 512;
/// Bound on the inspect of an image probe: the runtime's own inspect bound (10 s for Docker)
/// is far above any health check's timeout, so this one applies.
const IMAGE_INSPECT_MAX: Duration = Duration::from_secs(10);

/// Where an `http` or `tcp` probe connects: for `http`, the host address and port the engine
/// published the check's port on (a wildcard address means this host's loopback), else the
/// container's own address and the port itself; for `tcp`, the container's own address
/// first, since a connect is all it tests and the engine's userland proxy (on loopback
/// addresses) accepts a connect to a published port whether or not anything listens in the
/// container. `None` when neither exists.
pub fn target(check: &HealthCheck, c: &ContainerInfo) -> Option<SocketAddr> {
    let port = check.port?;
    let own = || {
        let ip: IpAddr = c.ip_address.as_deref()?.parse().ok()?;
        Some(SocketAddr::new(ip, port))
    };
    if check.test == HealthTest::Tcp
        && let Some(addr) = own()
    {
        return Some(addr);
    }
    let published = c
        .ports
        .iter()
        .filter(|p| p.container_port == port && p.protocol == "tcp")
        .find_map(|p| {
            let ip: IpAddr = if p.host_ip.is_empty() {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                p.host_ip.parse().ok()?
            };
            let ip = match ip {
                IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            Some(SocketAddr::new(ip, p.host_port))
        });
    published.or_else(own)
}

/// Runs one probe of `check` against container `id` (reached at `addr` for http/tcp).
pub async fn run<R: ContainerRuntime>(
    runtime: &R,
    id: &str,
    check: &HealthCheck,
    addr: Option<SocketAddr>,
) -> (Outcome, String) {
    let timeout = Duration::from_millis(check.timeout_ms);
    let unreachable = || {
        let port = check.port.map_or("?".to_string(), |p| p.to_string());
        (
            Outcome::Fail,
            format!("port {port} is neither published nor reachable at a container address"),
        )
    };
    match &check.test {
        HealthTest::Http(path) => {
            let Some(addr) = addr else {
                return unreachable();
            };
            match tokio::time::timeout(timeout, http_get(addr, path)).await {
                Ok(Ok(line)) => match http_status(&line) {
                    Some(code) if (200..400).contains(&code) => (Outcome::Pass, line),
                    Some(_) => (Outcome::Fail, format!("GET {path}: {line}")),
                    None => (
                        Outcome::Fail,
                        format!("GET {path}: not an HTTP answer: {line}"),
                    ),
                },
                Ok(Err(e)) => (Outcome::Fail, format!("GET http://{addr}{path}: {e}")),
                Err(_) => (
                    Outcome::Fail,
                    format!("GET http://{addr}{path}: no answer within {timeout:?}"),
                ),
            }
        }
        HealthTest::Tcp => {
            let Some(addr) = addr else {
                return unreachable();
            };
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(Ok(_)) => (Outcome::Pass, format!("connected to {addr}")),
                Ok(Err(e)) => (Outcome::Fail, format!("connect to {addr}: {e}")),
                Err(_) => (
                    Outcome::Fail,
                    format!("connect to {addr}: no answer within {timeout:?}"),
                ),
            }
        }
        HealthTest::Exec(cmd) => match runtime.exec(id, cmd, timeout).await {
            Ok(done) => {
                let text = String::from_utf8_lossy(&done.output).to_string();
                if done.exit_code == 0 {
                    (Outcome::Pass, text)
                } else {
                    (
                        Outcome::Fail,
                        format!("exit code {}: {}", done.exit_code, text.trim()),
                    )
                }
            }
            Err(e) => (Outcome::Fail, format!("exec failed: {e}")),
        },
        HealthTest::Image => {
            match tokio::time::timeout(IMAGE_INSPECT_MAX, runtime.inspect(id)).await {
                Ok(Ok(info)) => image_verdict(&info),
                Ok(Err(e)) => (Outcome::Undecided, format!("inspect failed: {e}")),
                Err(_) => (
                    Outcome::Undecided,
                    format!("inspect took over {IMAGE_INSPECT_MAX:?}"),
                ),
            }
        }
    }
}

/// The engine's verdict on the image's own check; an image without one never passes.
fn image_verdict(info: &ContainerInfo) -> (Outcome, String) {
    if info.state != ContainerState::Running {
        return (
            Outcome::Undecided,
            "the container is not running".to_string(),
        );
    }
    let Some(h) = &info.health else {
        return (
            Outcome::Fail,
            "the image defines no HEALTHCHECK (healthcheck \"image\")".to_string(),
        );
    };
    let output = h.last_output.clone().unwrap_or_default();
    match h.status {
        EngineHealthStatus::Starting => (Outcome::Undecided, output),
        EngineHealthStatus::Healthy => (Outcome::Pass, output),
        EngineHealthStatus::Unhealthy => (Outcome::Fail, output),
    }
}

/// One `GET` over HTTP/1.0 (the connection closes after the answer); the status line.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: orion-health\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(STATUS_LINE_MAX);
    let mut chunk = [0u8; STATUS_LINE_MAX];
    while buf.len() < STATUS_LINE_MAX && !buf.contains(&b'\n') {
        let n = stream
            .read(&mut chunk[..STATUS_LINE_MAX - buf.len()])
            .await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the connection closed without an answer",
        ));
    }
    Ok(line.to_string())
}

/// The status code of an HTTP status line (`HTTP/1.1 200 OK`).
pub fn http_status(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use orion_docker::{BoundPort, EngineHealth};
    use std::collections::BTreeMap;
    use tokio::net::TcpListener;

    fn check_of(test: HealthTest, port: Option<u16>) -> HealthCheck {
        HealthCheck {
            test,
            port,
            interval_ms: 1_000,
            timeout_ms: 2_000,
            retries: 3,
            start_period_ms: 0,
        }
    }

    fn info(ports: &[(u16, &str, &str, u16)], ip: Option<&str>) -> ContainerInfo {
        ContainerInfo {
            id: "c1".into(),
            name: "c1".into(),
            labels: BTreeMap::new(),
            state: ContainerState::Running,
            ports: ports
                .iter()
                .map(|(cp, proto, host_ip, hp)| BoundPort {
                    container_port: *cp,
                    protocol: proto.to_string(),
                    host_ip: host_ip.to_string(),
                    host_port: *hp,
                })
                .collect(),
            started_at: None,
            finished_at: None,
            ip_address: ip.map(str::to_string),
            health: None,
            pid: None,
        }
    }

    #[test]
    fn status_lines() {
        let check = |line: &str, want: Option<u16>| assert_eq!(http_status(line), want, "{line}");
        check("HTTP/1.1 200 OK", Some(200));
        check("HTTP/1.0 404 Not Found", Some(404));
        check("HTTP/1.1 302", Some(302));
        check("SSH-2.0-OpenSSH", None);
        check("HTTP/1.1 20 OK", None);
        check("", None);
    }

    #[test]
    fn http_targets_prefer_the_published_port_then_the_container_address() {
        let check = |ports: &[(u16, &str, &str, u16)], ip: Option<&str>, want: Option<&str>| {
            let got = target(
                &check_of(HealthTest::Http("/".into()), Some(80)),
                &info(ports, ip),
            );
            assert_eq!(
                got.map(|a| a.to_string()).as_deref(),
                want,
                "{ports:?} {ip:?}"
            );
        };
        check(
            &[(80, "tcp", "127.0.46.1", 32768)],
            Some("172.17.0.2"),
            Some("127.0.46.1:32768"),
        );
        check(
            &[(80, "tcp", "0.0.0.0", 8080)],
            None,
            Some("127.0.0.1:8080"),
        );
        check(&[(80, "tcp", "::", 8080)], None, Some("[::1]:8080"));
        check(&[(80, "udp", "127.0.0.1", 53)], None, None);
        check(
            &[(81, "tcp", "127.0.0.1", 81)],
            Some("172.17.0.2"),
            Some("172.17.0.2:80"),
        );
        check(&[], Some("not an ip"), None);
    }

    /// Found with issue 11: on loopback the engine's userland proxy accepts a connect to a
    /// published port even while nothing listens in the container, so a `tcp` check there
    /// passed at once. It connects to the container's own address when there is one.
    #[test]
    fn tcp_targets_prefer_the_container_address_where_the_userland_proxy_cannot_answer() {
        let check = |ports: &[(u16, &str, &str, u16)], ip: Option<&str>, want: Option<&str>| {
            let got = target(&check_of(HealthTest::Tcp, Some(80)), &info(ports, ip));
            assert_eq!(
                got.map(|a| a.to_string()).as_deref(),
                want,
                "{ports:?} {ip:?}"
            );
        };
        check(
            &[(80, "tcp", "127.0.46.1", 32768)],
            Some("172.17.0.2"),
            Some("172.17.0.2:80"),
        );
        check(
            &[(80, "tcp", "127.0.46.1", 32768)],
            None,
            Some("127.0.46.1:32768"),
        );
        check(
            &[(80, "tcp", "0.0.0.0", 8080)],
            Some("not an ip"),
            Some("127.0.0.1:8080"),
        );
        check(&[], None, None);
    }

    #[test]
    fn image_verdicts() {
        let check = |state: ContainerState, h: Option<EngineHealthStatus>, want: Outcome| {
            let mut i = info(&[], None);
            i.state = state;
            i.health = h.map(|status| EngineHealth {
                status,
                last_output: Some("out".into()),
            });
            assert_eq!(image_verdict(&i).0, want, "{h:?}");
        };
        use EngineHealthStatus::*;
        check(ContainerState::Running, Some(Starting), Outcome::Undecided);
        check(ContainerState::Running, Some(Healthy), Outcome::Pass);
        check(ContainerState::Running, Some(Unhealthy), Outcome::Fail);
        check(ContainerState::Running, None, Outcome::Fail);
        check(ContainerState::Created, Some(Healthy), Outcome::Undecided);
    }

    /// Serves one connection on loopback with `answer`, or accepts and says nothing.
    async fn server(answer: Option<&'static str>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                match answer {
                    Some(a) => {
                        let _ = s.write_all(a.as_bytes()).await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(30)).await,
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_and_tcp_probes_on_loopback() {
        let rt = crate::FakeRuntime::new(std::sync::Arc::new(orion_types::env::SystemClock));
        let mut http = check_of(HealthTest::Http("/".into()), Some(80));
        http.timeout_ms = 300;
        let cases: &[(Option<&'static str>, Outcome, &str)] = &[
            (Some("HTTP/1.0 200 OK\r\n\r\nhi"), Outcome::Pass, "200"),
            (Some("HTTP/1.1 301 Moved\r\n"), Outcome::Pass, "301"),
            (Some("HTTP/1.0 404 Not Found\r\n\r\n"), Outcome::Fail, "404"),
            (Some("hello"), Outcome::Fail, "not an HTTP answer"),
            (Some(""), Outcome::Fail, "without an answer"),
            (None, Outcome::Fail, "no answer within"),
        ];
        for (answer, want, says) in cases {
            let addr = server(*answer).await;
            let (got, out) = run(&rt, "c1", &http, Some(addr)).await;
            assert_eq!(got, *want, "{answer:?}: {out}");
            assert!(out.contains(says), "{answer:?}: {out}");
        }
        let tcp = check_of(HealthTest::Tcp, Some(80));
        let addr = server(Some("")).await;
        assert_eq!(run(&rt, "c1", &tcp, Some(addr)).await.0, Outcome::Pass);
        // Nothing listens on a port just freed.
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .and_then(|l| l.local_addr())
            .expect("port");
        assert_eq!(run(&rt, "c1", &tcp, Some(closed)).await.0, Outcome::Fail);
        let (got, out) = run(&rt, "c1", &tcp, None).await;
        assert_eq!(got, Outcome::Fail);
        assert!(out.contains("neither published"), "{out}");
    }
}
