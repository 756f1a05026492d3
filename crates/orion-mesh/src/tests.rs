//! The mesh with real sockets on loopback (127.0.108.100-212, this crate's share of the mesh nets): listeners that
//! follow a view fed through a `watch` channel, backends that are plain tokio servers.

use super::*;
use orion_types::endpoint::{Endpoint, ServiceEndpoints};
use orion_types::service::{PortMode, ServicePort, ServiceProtocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(5);

/// A backend that answers every connection with its name and closes.
async fn named_backend(ip: &str, name: &'static str) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(name.as_bytes()).await;
        }
    });
    addr
}

/// A backend that reads until the end of a request head (or `n` bytes for TCP) and answers
/// with exactly what it received.
async fn echo_backend(ip: &str, n: Option<usize>) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut b = [0u8; 1024];
                loop {
                    let done = match n {
                        Some(n) => got.len() >= n,
                        None => got.windows(4).any(|w| w == b"\r\n\r\n"),
                    };
                    if done {
                        break;
                    }
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => got.extend_from_slice(&b[..k]),
                    }
                }
                let _ = s.write_all(&got).await;
            });
        }
    });
    addr
}

fn endpoint(task: &str, addr: SocketAddr, target: u16) -> Endpoint {
    Endpoint {
        task: task.into(),
        node: "n1".into(),
        address: addr.ip(),
        port: addr.port(),
        target_port: target,
        healthy: true,
        draining: false,
    }
}

fn service(
    id: &str,
    published: u16,
    protocol: ServiceProtocol,
    pp: bool,
    endpoints: Vec<Endpoint>,
) -> EndpointView {
    let svc = ServiceEndpoints {
        id: id.into(),
        vip: None,
        ports: vec![ServicePort {
            target: 80,
            published: Some(published),
            protocol,
            mode: PortMode::Ingress,
            proxy_protocol: pp,
        }],
        endpoints,
    };
    EndpointView {
        services: [(id.to_string(), svc)].into_iter().collect(),
        nodes: BTreeMap::new(),
    }
}

fn settings(publish: &str) -> Settings {
    Settings {
        publish_ip: publish.parse().unwrap(),
        source_ip: Some(publish.parse().unwrap()),
        serve_vips: false,
        shortcuts: None,
        limits: Limits::default(),
    }
}

fn start(view: EndpointView, s: Settings) -> (Mesh, watch::Sender<Arc<EndpointView>>) {
    let (tx, rx) = watch::channel(Arc::new(view));
    (Mesh::spawn(rx, s, Box::new(NoAddresses)), tx)
}

/// Waits until the mesh listens on exactly `want`.
async fn listening(mesh: &Mesh, want: &[SocketAddr]) {
    let mut rx = mesh.listening();
    let want: BTreeSet<SocketAddr> = want.iter().copied().collect();
    timeout(WAIT, rx.wait_for(|l| *l == want))
        .await
        .expect("listeners within the deadline")
        .unwrap();
}

/// Connects from `from`, sends `send`, reads to the end.
async fn call(from: &str, to: SocketAddr, send: &[u8]) -> io::Result<Vec<u8>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse().unwrap(), 0))?;
    let mut s = socket.connect(to).await?;
    s.write_all(send).await?;
    let mut out = Vec::new();
    timeout(WAIT, s.read_to_end(&mut out))
        .await
        .map_err(io::Error::other)??;
    Ok(out)
}

async fn text(from: &str, to: SocketAddr, send: &[u8]) -> String {
    String::from_utf8_lossy(&call(from, to, send).await.unwrap()).into_owned()
}

#[tokio::test]
async fn round_robin_over_healthy_endpoints_and_listeners_follow_the_view() {
    let a = named_backend("127.0.108.201", "a").await;
    let b = named_backend("127.0.108.202", "b").await;
    let sick = named_backend("127.0.108.203", "sick").await;
    let leaving = named_backend("127.0.108.204", "leaving").await;
    let mut eps = vec![
        endpoint("a", a, 80),
        endpoint("b", b, 80),
        endpoint("s", sick, 80),
        endpoint("l", leaving, 80),
    ];
    eps[2].healthy = false;
    eps[3].draining = true;
    let (mesh, tx) = start(
        service("web", 18080, ServiceProtocol::Tcp, false, eps),
        settings("127.0.108.110"),
    );
    let front: SocketAddr = "127.0.108.110:18080".parse().unwrap();
    listening(&mesh, &[front]).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(text("127.0.108.110", front, b"").await);
    }
    seen.sort();
    assert_eq!(seen, ["a", "a", "b", "b"]);

    // A new port: a second listener; the service's removal: both gone.
    let mut v = (**tx.borrow()).clone();
    let svc = v.services.get_mut("web").unwrap();
    svc.ports.push(ServicePort {
        target: 80,
        published: Some(18081),
        protocol: ServiceProtocol::Tcp,
        mode: PortMode::Ingress,
        proxy_protocol: false,
    });
    tx.send_replace(Arc::new(v));
    let second: SocketAddr = "127.0.108.110:18081".parse().unwrap();
    listening(&mesh, &[front, second]).await;
    assert!(["a", "b"].contains(&text("127.0.108.110", second, b"").await.as_str()));
    tx.send_replace(Arc::new(EndpointView::default()));
    listening(&mesh, &[]).await;
    assert!(
        TcpStream::connect(front).await.is_err(),
        "a removed listener refuses"
    );
    mesh.shutdown().await;
}

#[tokio::test]
async fn a_failed_connect_tries_the_next_endpoint() {
    // An endpoint whose port is closed: bind, note the port, drop.
    let dead = TcpListener::bind("127.0.108.205:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let live = named_backend("127.0.108.206", "live").await;
    let (mesh, _tx) = start(
        service(
            "web",
            18080,
            ServiceProtocol::Tcp,
            false,
            vec![endpoint("d", dead, 80), endpoint("l", live, 80)],
        ),
        settings("127.0.108.111"),
    );
    let front: SocketAddr = "127.0.108.111:18080".parse().unwrap();
    listening(&mesh, &[front]).await;
    for _ in 0..4 {
        assert_eq!(text("127.0.108.111", front, b"").await, "live");
    }
}

#[tokio::test]
async fn http_ports_carry_the_client_address() {
    let echo = echo_backend("127.0.108.207", None).await;
    let (mesh, _tx) = start(
        service(
            "web",
            18080,
            ServiceProtocol::Http,
            false,
            vec![endpoint("e", echo, 80)],
        ),
        settings("127.0.108.112"),
    );
    let front: SocketAddr = "127.0.108.112:18080".parse().unwrap();
    listening(&mesh, &[front]).await;
    // The client connects from 127.0.108.199: that address, not the mesh's, reaches the backend.
    let got = text(
        "127.0.108.199",
        front,
        b"GET /x HTTP/1.1\r\nHost: web\r\nX-Forwarded-For: 10.1.1.1\r\n\r\n",
    )
    .await;
    assert_eq!(
        got,
        "GET /x HTTP/1.1\r\nHost: web\r\nX-Forwarded-For: 10.1.1.1, 127.0.108.199\r\nForwarded: for=127.0.108.199\r\n\r\n"
    );
    // A head sent in pieces is reassembled.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.108.198:0".parse().unwrap()).unwrap();
    let mut s = socket.connect(front).await.unwrap();
    for piece in [&b"GET / HT"[..], b"TP/1.0\r\nA: b\r", b"\n\r\n"] {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert_eq!(
        out,
        "GET / HTTP/1.0\r\nA: b\r\nX-Forwarded-For: 127.0.108.198\r\nForwarded: for=127.0.108.198\r\n\r\n"
    );
}

/// A keep-alive HTTP backend: answers each request on a connection (bodies framed by
/// `Content-Length`) with `200` and the request's head as the body, until the client ends.
async fn keep_alive_backend(ip: &str) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut got: Vec<u8> = Vec::new();
                let mut b = [0u8; 1024];
                loop {
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..end + 4]).into_owned();
                        let body = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .map_or(0, |n| n.trim().parse::<usize>().unwrap());
                        if got.len() < end + 4 + body {
                            break;
                        }
                        got.drain(..end + 4 + body);
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{head}",
                            head.len()
                        );
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => got.extend_from_slice(&b[..k]),
                    }
                }
            });
        }
    });
    addr
}

/// The regression of issue 12: only the first request of a keep-alive connection got
/// `X-Forwarded-For`.
#[tokio::test]
async fn every_request_of_a_keep_alive_connection_gets_x_forwarded_for() {
    let backend = keep_alive_backend("127.0.108.209").await;
    let (mesh, _tx) = start(
        service(
            "web",
            18080,
            ServiceProtocol::Http,
            false,
            vec![endpoint("e", backend, 80)],
        ),
        settings("127.0.108.119"),
    );
    let front: SocketAddr = "127.0.108.119:18080".parse().unwrap();
    listening(&mesh, &[front]).await;
    // Three requests, the second with a body that looks like a head, in two writes.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.108.196:0".parse().unwrap()).unwrap();
    let mut s = socket.connect(front).await.unwrap();
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 256];
    let n = timeout(WAIT, s.read(&mut first)).await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&first[..n]).contains("X-Forwarded-For: 127.0.108.196\r\n"),
        "{:?}",
        String::from_utf8_lossy(&first[..n])
    );
    s.write_all(
        b"POST /2 HTTP/1.1\r\nContent-Length: 18\r\n\r\nGET /fake HTTP/1.1GET /3 HTTP/1.1\r\n\r\n",
    )
    .await
    .unwrap();
    s.shutdown().await.unwrap();
    let mut rest = String::new();
    timeout(WAIT, s.read_to_string(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest.matches("HTTP/1.1 200 OK").count(), 2, "{rest}");
    assert_eq!(
        rest.matches("X-Forwarded-For: 127.0.108.196\r\n").count(),
        2,
        "{rest}"
    );
    assert!(
        rest.contains("GET /3 HTTP/1.1\r\nX-Forwarded-For"),
        "{rest}"
    );
    // Garbage after a good request: the good one is answered, then the connection closes.
    let got = text(
        "127.0.108.196",
        front,
        b"GET /4 HTTP/1.1\r\n\r\n\x16\x03\x01garbage\r\n\r\n",
    )
    .await;
    assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 1, "{got}");
    assert!(got.contains("GET /4 HTTP/1.1\r\nX-Forwarded-For"), "{got}");
}

#[tokio::test]
async fn bad_http_input_gets_an_answer_and_the_mesh_keeps_serving() {
    let echo = echo_backend("127.0.108.208", None).await;
    let mut s = settings("127.0.108.113");
    s.limits.head_bytes_max = 1024;
    s.limits.head_timeout_ms = 300;
    let (mesh, tx) = start(
        service(
            "web",
            18080,
            ServiceProtocol::Http,
            false,
            vec![endpoint("e", echo, 80)],
        ),
        s,
    );
    let front: SocketAddr = "127.0.108.113:18080".parse().unwrap();
    listening(&mesh, &[front]).await;
    let status = |t: String| t.lines().next().unwrap_or("").to_string();
    assert_eq!(
        status(text("127.0.108.113", front, b"\x16\x03\x01garbage\r\n\r\n").await),
        "HTTP/1.1 400 Bad Request"
    );
    let long = format!("GET / HTTP/1.1\r\nA: {}\r\n\r\n", "x".repeat(2000));
    assert_eq!(
        status(text("127.0.108.113", front, long.as_bytes()).await),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // Half a head, then silence: answered at the head timeout.
    assert_eq!(
        status(text("127.0.108.113", front, b"GET / HTTP/1.1\r\n").await),
        "HTTP/1.1 408 Request Timeout"
    );
    // Closed before a head: nothing to answer, nothing breaks.
    let mut s = TcpStream::connect(front).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.is_empty());
    // No endpoint: 503.
    let mut v = (**tx.borrow()).clone();
    v.services.get_mut("web").unwrap().endpoints[0].healthy = false;
    tx.send_replace(Arc::new(v));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        status(text("127.0.108.113", front, b"GET / HTTP/1.1\r\n\r\n").await),
        "HTTP/1.1 503 Service Unavailable"
    );
    v = (**tx.borrow()).clone();
    v.services.get_mut("web").unwrap().endpoints[0].healthy = true;
    tx.send_replace(Arc::new(v));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        text("127.0.108.113", front, b"GET / HTTP/1.1\r\n\r\n")
            .await
            .contains("X-Forwarded-For: 127.0.108.113")
    );
}

#[tokio::test]
async fn local_endpoints_are_dialled_at_their_shortcut_while_it_matches() {
    let published = named_backend("127.0.108.211", "published").await;
    let direct = named_backend("127.0.108.212", "direct").await;
    let mut s = settings("127.0.108.120");
    let cut = |published: SocketAddr, direct: SocketAddr| {
        let mut m = Shortcuts::new();
        m.insert(("e".to_string(), 80), Shortcut { published, direct });
        Arc::new(m)
    };
    let (cuts_tx, cuts) = watch::channel(cut(published, direct));
    s.shortcuts = Some(cuts);
    let (mesh, _tx) = start(
        service(
            "web",
            18080,
            ServiceProtocol::Tcp,
            false,
            vec![endpoint("e", published, 80)],
        ),
        s,
    );
    let front: SocketAddr = "127.0.108.120:18080".parse().unwrap();
    listening(&mesh, &[front]).await;
    assert_eq!(text("127.0.108.120", front, b"").await, "direct");
    // A shortcut for another published address (the task moved): not used.
    cuts_tx.send_replace(cut("127.0.108.211:1".parse().unwrap(), direct));
    assert_eq!(text("127.0.108.120", front, b"").await, "published");
    // A shortcut that refuses (the container is gone): the published address next.
    let dead = TcpListener::bind("127.0.108.212:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    cuts_tx.send_replace(cut(published, dead_addr));
    assert_eq!(text("127.0.108.120", front, b"").await, "published");
}

#[tokio::test]
async fn proxy_protocol_ports_send_a_v2_header() {
    let echo = echo_backend("127.0.108.209", Some(28 + 5)).await;
    let (mesh, _tx) = start(
        service(
            "db",
            18080,
            ServiceProtocol::Tcp,
            true,
            vec![endpoint("e", echo, 80)],
        ),
        settings("127.0.108.114"),
    );
    let front: SocketAddr = "127.0.108.114:18080".parse().unwrap();
    listening(&mesh, &[front]).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.108.197:0".parse().unwrap()).unwrap();
    let mut s = socket.connect(front).await.unwrap();
    let client = s.local_addr().unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut got = Vec::new();
    timeout(WAIT, s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got[..12], proxy_protocol::SIGNATURE);
    assert_eq!(got[12..16], [0x21, 0x11, 0, 12]);
    assert_eq!(got[16..20], [127, 0, 108, 197], "source: the client");
    assert_eq!(
        got[20..24],
        [127, 0, 108, 114],
        "destination: the mesh's address"
    );
    assert_eq!(u16::from_be_bytes([got[24], got[25]]), client.port());
    assert_eq!(u16::from_be_bytes([got[26], got[27]]), 18080);
    assert_eq!(&got[28..], b"hello");
}

#[tokio::test]
async fn connections_per_service_are_bounded() {
    // A backend that holds connections open and never answers.
    let l = TcpListener::bind("127.0.108.210:0").await.unwrap();
    let hold = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let mut s = settings("127.0.108.115");
    s.limits.connections_per_service_max = 2;
    let (mesh, _tx) = start(
        service(
            "web",
            18080,
            ServiceProtocol::Tcp,
            false,
            vec![endpoint("h", hold, 80)],
        ),
        s,
    );
    let front: SocketAddr = "127.0.108.115:18080".parse().unwrap();
    listening(&mesh, &[front]).await;
    let _one = TcpStream::connect(front).await.unwrap();
    let _two = TcpStream::connect(front).await.unwrap();
    timeout(WAIT, async {
        while mesh.stats().active.load(Ordering::Relaxed) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await
        }
    })
    .await
    .unwrap();
    // The third is accepted by the kernel, then closed by the mesh at once.
    let mut three = TcpStream::connect(front).await.unwrap();
    let mut b = [0u8; 1];
    let r = timeout(WAIT, three.read(&mut b))
        .await
        .expect("closed, not held");
    assert!(matches!(r, Ok(0) | Err(_)));
    assert_eq!(mesh.stats().refused.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn two_meshes_serve_one_address_with_reuseport() {
    // All test agents share one kernel and must all serve the same VIP and port.
    let a = named_backend("127.0.108.211", "a").await;
    let view = service(
        "web",
        18080,
        ServiceProtocol::Tcp,
        false,
        vec![endpoint("a", a, 80)],
    );
    let (m1, _t1) = start(view.clone(), settings("127.0.108.116"));
    let (m2, _t2) = start(view, settings("127.0.108.116"));
    let front: SocketAddr = "127.0.108.116:18080".parse().unwrap();
    listening(&m1, &[front]).await;
    listening(&m2, &[front]).await;
    for _ in 0..4 {
        assert_eq!(text("127.0.108.116", front, b"").await, "a");
    }
    m1.shutdown().await;
    assert_eq!(
        text("127.0.108.116", front, b"").await,
        "a",
        "the other mesh still serves"
    );
}

#[tokio::test]
async fn vips_are_served_on_target_ports() {
    // A loopback address stands for the VIP: it is local already, so no address is added.
    let a = named_backend("127.0.108.212", "a").await;
    let mut view = service(
        "web",
        18080,
        ServiceProtocol::Tcp,
        false,
        vec![endpoint("a", a, 80)],
    );
    view.services.get_mut("web").unwrap().vip = Some("127.0.108.117".parse().unwrap());
    view.services.get_mut("web").unwrap().ports[0].target = 18082;
    view.services.get_mut("web").unwrap().endpoints[0].target_port = 18082;
    let mut s = settings("127.0.108.118");
    s.serve_vips = true;
    let (mesh, _tx) = start(view, s);
    let vip: SocketAddr = "127.0.108.117:18082".parse().unwrap();
    listening(&mesh, &[vip, "127.0.108.118:18080".parse().unwrap()]).await;
    assert_eq!(text("127.0.108.118", vip, b"").await, "a");
}
