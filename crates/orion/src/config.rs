//! The agent's command line (`AgentArgs`, as clap parses it) and the runtime configuration
//! built from it (`AgentConfig`, every value checked), in the manner of ripgrep's
//! low-level/high-level arguments.

use anyhow::{Context, Result, bail};
use clap::Args;
use orion_types::{BackoffConfig, ClusterConfig, PortRange, Resources, Strategy, VipRange};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::ops::RangeInclusive;
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// This node's id; unique in the cluster [default: the host name]
    #[arg(long)]
    pub id: Option<String>,
    /// HTTP API port
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Gossip port (UDP)
    #[arg(long, default_value_t = 6000)]
    pub gossip_port: u16,
    /// Inter-node RPC port (Raft and forwarding)
    #[arg(long, default_value_t = 7000)]
    pub raft_port: u16,
    /// Address to listen on
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// Address peers dial [default: --bind when specific, else the address that routes to the
    /// first --join peer, else 127.0.0.1]
    #[arg(long)]
    pub advertise: Option<IpAddr>,
    /// Host address that published container ports bind to
    #[arg(long, default_value = "0.0.0.0")]
    pub publish_ip: IpAddr,
    /// Where the Raft log and state live [default: ./data-<id>]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Start a new cluster with this node as its first voter (the default when --join is not given)
    #[arg(long)]
    pub bootstrap: bool,
    /// Gossip address of any live member, host:port; repeatable or comma separated
    #[arg(long, value_delimiter = ',')]
    pub join: Vec<String>,
    /// Most Raft voters; further nodes are learners. Cluster-wide: seeds the cluster config at
    /// bootstrap (later: `orion cluster config --voters`)
    #[arg(long, default_value_t = 3)]
    pub voters: usize,
    /// Node label key=value; repeatable
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Placement strategy for tasks that do not name one. Cluster-wide: seeds the cluster
    /// config at bootstrap (later: `orion cluster config --strategy`)
    #[arg(long, default_value = "spread")]
    pub scheduler: String,
    /// Memory kept back for the host and Orion itself (bytes or 100m, 1g)
    #[arg(long, default_value = "256m")]
    pub reserve_memory: String,
    /// CPU kept back for the host, in cores
    #[arg(long, default_value_t = 0.0)]
    pub reserve_cpu: f64,
    /// Override detected memory capacity (bytes or 4g); for tests and odd hosts
    #[arg(long)]
    pub capacity_memory: Option<String>,
    /// Override detected CPU capacity in cores
    #[arg(long)]
    pub capacity_cpu: Option<f64>,
    /// Host ports chosen for "0"/"" port bindings, FIRST-LAST. Cluster-wide: seeds the cluster
    /// config at bootstrap (later: `orion cluster config --dynamic-ports`)
    #[arg(long, default_value = "20000-32767")]
    pub dynamic_ports: String,
    /// DNS port (UDP and TCP) at --bind; containers reach the same server at their network's
    /// gateway, port 53
    #[arg(long, default_value_t = 53)]
    pub dns_port: u16,
    /// Block that service VIPs are allocated from, A.B.C.D/N. Cluster-wide: seeds the cluster
    /// config at bootstrap (later: `orion cluster config --vip-range`)
    #[arg(long, default_value = "10.200.0.0/16")]
    pub vip_range: String,
    /// Turn off the Lifeguard extensions to SWIM (for comparison)
    #[arg(long)]
    pub no_lifeguard: bool,
    /// Do not declare a member dead when its host refuses our gossip (ICMP port unreachable:
    /// its process is gone); wait out the suspicion timeout as for a lost host (for comparison)
    #[arg(long)]
    pub no_refusal_detection: bool,
    /// First restart delay after a container exits, in ms; doubles up to --restart-max-ms.
    /// Cluster-wide, like the other --restart-* flags: seeds the cluster config at bootstrap
    #[arg(long, default_value_t = 1000)]
    pub restart_base_ms: u64,
    /// Longest restart delay, in ms
    #[arg(long, default_value_t = 60_000)]
    pub restart_max_ms: u64,
    /// A container that ran this long resets its restart back-off, in ms
    #[arg(long, default_value_t = 60_000)]
    pub restart_reset_ms: u64,
    /// How long gossip must have declared a voter dead before it is replaced, in ms
    #[arg(long, default_value_t = 3_000)]
    pub voter_grace_ms: u64,
    /// Build a Raft snapshot after this many new log entries (benchmarks and tests set it low
    /// to measure writes during a snapshot)
    #[arg(long, default_value_t = 5_000, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_logs: u64,
    /// Log line format: text (human) or json (one JSON object per line, for log shippers)
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Join token (ORNTKN-1-...), printed at bootstrap and by `orion join-token`; read from
    /// ORION_TOKEN, else from the credentials file on the bootstrap host
    #[arg(long = "token", value_name = "JOIN_TOKEN")]
    pub join_token: Option<String>,
    /// Turn authentication and encryption off (API tokens, mutual TLS between nodes, sealed
    /// gossip): for trials only
    #[arg(long)]
    pub insecure: bool,
    /// Lifetime of the node certificates this node issues (its own, renewed at two thirds of
    /// it, and those of nodes it admits): e.g. 90d, 12h, 10m; at least 10s
    #[arg(long, default_value = "90d", value_parser = parse_cert_ttl)]
    pub cert_ttl: std::time::Duration,
    /// Serve the HTTP API over HTTPS, with a certificate from the cluster CA (renewed with the
    /// node's) naming the bind and advertise addresses and localhost; the CLI checks it against
    /// the CA it pins. Not with --insecure
    #[arg(long)]
    pub api_tls: bool,
    /// Another name (DNS name or IP address) the API's certificate holds, e.g. a load
    /// balancer's; repeatable
    #[arg(long = "api-tls-name", value_name = "NAME", requires = "api_tls")]
    pub api_tls_names: Vec<String>,
}

/// The names the API's certificate holds: the advertise address, the bind address when it is
/// specific (else the loopback addresses), `localhost`, and the `--api-tls-name`s.
fn api_tls_names(bind: IpAddr, advertise: IpAddr, extra: &[String]) -> Result<Vec<String>> {
    let mut names = vec![advertise.to_string()];
    if bind.is_unspecified() {
        names.push(Ipv4Addr::LOCALHOST.to_string());
        names.push(std::net::Ipv6Addr::LOCALHOST.to_string());
    } else {
        names.push(bind.to_string());
    }
    names.push("localhost".to_string());
    for n in extra.iter().map(|n| n.trim()) {
        let ok = n.parse::<IpAddr>().is_ok()
            || (!n.is_empty()
                && n.len() <= 253
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.*".contains(c)));
        if !ok {
            bail!("--api-tls-name {n:?}: expected a DNS name or an IP address");
        }
        names.push(n.to_string());
    }
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    Ok(names)
}

fn parse_cert_ttl(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if d < std::time::Duration::from_secs(10) {
        return Err(format!("{s:?}: a certificate must live at least 10s"));
    }
    if d > std::time::Duration::from_secs(10 * 365 * 24 * 3600) {
        return Err(format!("{s:?}: at most 10 years"));
    }
    Ok(d)
}

/// How the agent writes its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration of one agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub id: String,
    pub api_bind: SocketAddr,
    pub gossip_bind: SocketAddr,
    pub raft_bind: SocketAddr,
    pub advertise: IpAddr,
    pub publish_ip: IpAddr,
    pub data_dir: PathBuf,
    pub bootstrap: bool,
    pub join: Vec<SocketAddr>,
    pub voters: usize,
    pub labels: BTreeMap<String, String>,
    pub strategy: Strategy,
    pub capacity: Resources,
    pub dynamic_ports: RangeInclusive<u16>,
    pub vip_range: VipRange,
    pub dns_port: u16,
    pub lifeguard: bool,
    pub refusal_detection: bool,
    pub backoff: BackoffConfig,
    pub voter_grace_ms: u64,
    pub snapshot_logs: u64,
    /// `--token`, else `ORION_TOKEN` when it holds a join token.
    pub join_token: Option<String>,
    pub insecure: bool,
    pub cert_ttl: std::time::Duration,
    /// `--api-tls`: the names the API's certificate holds; `None` serves plain HTTP.
    pub api_tls: Option<Vec<String>>,
}

impl AgentConfig {
    /// The cluster-wide settings these flags ask for: what a bootstrapping node seeds.
    pub fn cluster_config(&self) -> ClusterConfig {
        ClusterConfig {
            strategy: self.strategy,
            dynamic_ports: PortRange {
                first: *self.dynamic_ports.start(),
                last: *self.dynamic_ports.end(),
            },
            backoff: self.backoff,
            voters: self.voters,
            vip_range: self.vip_range,
        }
    }
    pub fn api_addr(&self) -> SocketAddr {
        SocketAddr::new(self.advertise, self.api_bind.port())
    }
    pub fn raft_addr(&self) -> SocketAddr {
        SocketAddr::new(self.advertise, self.raft_bind.port())
    }
    pub fn gossip_addr(&self) -> SocketAddr {
        SocketAddr::new(self.advertise, self.gossip_bind.port())
    }
}

impl AgentArgs {
    pub fn resolve(self) -> Result<AgentConfig> {
        let id = match self.id {
            Some(id) => id,
            None => host_name().unwrap_or_else(|| "node1".to_string()),
        };
        if id.is_empty()
            || id.len() > 64
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bail!("--id {id:?}: use 1 to 64 letters, digits, '-', '_' or '.'");
        }
        let mut join = Vec::new();
        for j in self.join.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            join.push(resolve_host_port(j).with_context(|| format!("--join {j:?}"))?);
        }
        let advertise = match self.advertise {
            Some(a) if a.is_unspecified() => {
                bail!("--advertise {a}: must be an address peers can dial")
            }
            Some(a) => a,
            None if !self.bind.is_unspecified() => self.bind,
            None => join
                .first()
                .and_then(|peer| route_source(*peer))
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        };
        let mut labels = BTreeMap::new();
        for l in &self.labels {
            let (k, v) = l
                .split_once('=')
                .with_context(|| format!("--label {l:?}: expected KEY=VALUE"))?;
            if k.is_empty() {
                bail!("--label {l:?}: the key is empty");
            }
            labels.insert(k.to_string(), v.to_string());
        }
        let strategy = Strategy::parse(&self.scheduler).with_context(|| {
            format!(
                "--scheduler {:?}: expected spread or binpack",
                self.scheduler
            )
        })?;
        let reserve = Resources {
            memory_bytes: orion_types::api::parse_size(&self.reserve_memory)
                .map_err(|e| anyhow::anyhow!("--reserve-memory: {e}"))?,
            cpu_millis: cores_to_millis(self.reserve_cpu).context("--reserve-cpu")?,
        };
        let detected = crate::capacity::detect();
        let total = Resources {
            memory_bytes: match &self.capacity_memory {
                Some(s) => orion_types::api::parse_size(s)
                    .map_err(|e| anyhow::anyhow!("--capacity-memory: {e}"))?,
                None => detected.memory_bytes,
            },
            cpu_millis: match self.capacity_cpu {
                Some(c) => cores_to_millis(c).context("--capacity-cpu")?,
                None => detected.cpu_millis,
            },
        };
        let dynamic_ports = PortRange::parse(&self.dynamic_ports)
            .map_err(|e| anyhow::anyhow!("--dynamic-ports: {e}"))?
            .range();
        let vip_range =
            VipRange::parse(&self.vip_range).map_err(|e| anyhow::anyhow!("--vip-range: {e}"))?;
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from(format!("./data-{id}")));
        let cfg = AgentConfig {
            api_bind: SocketAddr::new(self.bind, self.port),
            gossip_bind: SocketAddr::new(self.bind, self.gossip_port),
            raft_bind: SocketAddr::new(self.bind, self.raft_port),
            advertise,
            publish_ip: self.publish_ip,
            data_dir,
            bootstrap: self.bootstrap || join.is_empty(),
            join_token: self.join_token.clone().or_else(|| {
                // ORION_TOKEN is also the CLI's API token: only a join token counts here.
                std::env::var("ORION_TOKEN")
                    .ok()
                    .filter(|t| t.trim().starts_with("ORNTKN-"))
            }),
            insecure: self.insecure,
            cert_ttl: self.cert_ttl,
            api_tls: if self.api_tls {
                if self.insecure {
                    bail!(
                        "--api-tls needs the cluster CA, which --insecure turns off: drop one of them"
                    );
                }
                Some(api_tls_names(self.bind, advertise, &self.api_tls_names)?)
            } else {
                None
            },
            join,
            voters: self.voters,
            labels,
            strategy,
            capacity: total.saturating_sub(reserve),
            dynamic_ports,
            vip_range,
            dns_port: self.dns_port,
            lifeguard: !self.no_lifeguard,
            refusal_detection: !self.no_refusal_detection,
            backoff: BackoffConfig {
                base_ms: self.restart_base_ms,
                max_ms: self.restart_max_ms,
                reset_after_ms: self.restart_reset_ms,
            },
            voter_grace_ms: self.voter_grace_ms,
            snapshot_logs: self.snapshot_logs,
            id,
        };
        // The cluster-wide flags are checked as the cluster config they seed.
        cfg.cluster_config().validate().map_err(|e| {
            let flag = match e.field.as_str() {
                "strategy" => "--scheduler",
                "dynamicPorts" => "--dynamic-ports",
                "voters" => "--voters",
                "restartBaseMs" => "--restart-base-ms",
                "restartMaxMs" => "--restart-max-ms",
                "restartResetAfterMs" => "--restart-reset-ms",
                "vipRange" => "--vip-range",
                _ => "a cluster-wide flag",
            };
            anyhow::anyhow!("{flag}: {}", e.message)
        })?;
        Ok(cfg)
    }
}

fn cores_to_millis(c: f64) -> Result<u64> {
    if !c.is_finite() || !(0.0..=4096.0).contains(&c) {
        bail!("{c} is not a number of cores between 0 and 4096");
    }
    Ok((c * 1000.0).round() as u64)
}

fn resolve_host_port(s: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .context("expected host:port")?
        .next()
        .context("the name resolves to no address")
}

/// The local address the kernel would use to reach `peer`. A UDP "connect" sends nothing.
fn route_source(peer: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if peer.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .ok()?;
    let sock = UdpSocket::bind(bind).ok()?;
    sock.connect(peer).ok()?;
    sock.local_addr()
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
}

fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_certificate_names_the_addresses_the_api_answers_on() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let cases: &[(&str, &str, &[&str], &[&str])] = &[
            (
                "127.0.220.1",
                "127.0.220.1",
                &[],
                &["127.0.220.1", "localhost"],
            ),
            (
                "0.0.0.0",
                "10.0.0.5",
                &["orion.example.com"],
                &[
                    "10.0.0.5",
                    "127.0.0.1",
                    "::1",
                    "localhost",
                    "orion.example.com",
                ],
            ),
            (
                "10.0.0.5",
                "192.168.1.9",
                &["10.0.0.5"],
                &["192.168.1.9", "10.0.0.5", "localhost"],
            ),
        ];
        for (bind, advertise, extra, want) in cases {
            let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            let got = api_tls_names(ip(bind), ip(advertise), &extra).expect("names");
            assert_eq!(got, *want, "bind {bind} advertise {advertise}");
        }
        for bad in ["", "a b", "caf\u{e9}.example"] {
            assert!(api_tls_names(ip("0.0.0.0"), ip("10.0.0.5"), &[bad.into()]).is_err());
        }
    }

    #[test]
    fn api_tls_is_refused_with_insecure() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            a: AgentArgs,
        }
        let args = |extra: &[&str]| {
            let mut v = vec!["orion", "--id", "n1", "--bind", "127.0.220.1"];
            v.extend_from_slice(extra);
            Cli::parse_from(v).a.resolve()
        };
        let e = args(&["--api-tls", "--insecure"]).expect_err("refused");
        assert!(e.to_string().contains("--insecure"), "{e}");
        let c = args(&["--api-tls"]).expect("api tls");
        assert_eq!(
            c.api_tls,
            Some(vec!["127.0.220.1".to_string(), "localhost".to_string()])
        );
        assert_eq!(args(&[]).expect("plain").api_tls, None);
    }
}
