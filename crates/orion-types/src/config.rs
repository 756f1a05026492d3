//! `ClusterConfig`: the settings that are the cluster's, not one node's (placement strategy,
//! dynamic host port range, restart back-off, voter count). They live in the replicated state
//! and change only through `Command::SetClusterConfig`, so whichever node leads behaves the
//! same. An agent's flags (`--scheduler`, `--dynamic-ports`, `--restart-*`, `--voters`) only
//! seed the value when the cluster is bootstrapped.
//!
//! Also the user's JSON for it (`GET`/`PUT /cluster/config`): a partial object merged over the
//! current value, every error naming its field.

use crate::api::ValidationError;
use crate::{BackoffConfig, Strategy};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

/// Most Raft voters a cluster may ask for. Every write waits for a majority of voters, so
/// more voters cost latency; seven survive three failures, which is beyond what a cluster of
/// a handful of servers needs (etcd and Consul recommend 3 or 5).
pub const VOTERS_MAX: usize = 7;
/// Longest restart delay and longest reset period: a day. Longer is surely a typo (seconds
/// taken for milliseconds would still fit), and it keeps `at + delay` far from overflow.
pub const BACKOFF_MS_MAX: u64 = 86_400_000;

/// A range of host ports, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Parses `FIRST-LAST`, e.g. `20000-32767`.
    pub fn parse(s: &str) -> Result<PortRange, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?}: expected FIRST-LAST, e.g. 20000-32767"))?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("{s:?}: {p:?} is not a port number (1-65535)"))
        };
        let r = PortRange {
            first: port(a)?,
            last: port(b)?,
        };
        r.check()?;
        Ok(r)
    }

    fn check(&self) -> Result<(), String> {
        if self.first == 0 || self.last < self.first {
            return Err(format!(
                "{self}: FIRST must be 1 or more and not above LAST"
            ));
        }
        Ok(())
    }

    pub fn range(&self) -> RangeInclusive<u16> {
        self.first..=self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The default `vipRange`: 65,534 service VIPs. Chosen away from the ranges a host is likely
/// to route already: Docker's local pools (172.17.0.0/12 and 192.168.0.0/16), Kubernetes'
/// service range (10.96.0.0/12), k3s' (10.42.0.0/16, 10.43.0.0/16) and the low end of 10/8
/// where Swarm's overlay pools and most office networks start.
pub const VIP_RANGE_DEFAULT: VipRange = VipRange {
    network: Ipv4Addr::new(10, 200, 0, 0),
    prefix_len: 16,
};
/// Shortest and longest prefix of a VIP range: a /8 is the largest private block, a /30 the
/// smallest that holds a usable address (network and broadcast addresses are never given).
pub const VIP_PREFIX_MIN: u8 = 8;
pub const VIP_PREFIX_MAX: u8 = 30;

/// An IPv4 block that service VIPs are allocated from, `A.B.C.D/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipRange {
    /// The block's first address (host bits zero).
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl VipRange {
    /// Parses `A.B.C.D/N`, e.g. `10.200.0.0/16`; host bits must be zero.
    pub fn parse(s: &str) -> Result<VipRange, String> {
        let (a, n) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected A.B.C.D/N, e.g. 10.200.0.0/16"))?;
        let network: Ipv4Addr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: {a:?} is not an IPv4 address"))?;
        let prefix_len: u8 = n
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: {n:?} is not a prefix length"))?;
        let r = VipRange {
            network,
            prefix_len,
        };
        r.check()?;
        Ok(r)
    }

    fn check(&self) -> Result<(), String> {
        if !(VIP_PREFIX_MIN..=VIP_PREFIX_MAX).contains(&self.prefix_len) {
            return Err(format!(
                "{self}: the prefix length must be between {VIP_PREFIX_MIN} and {VIP_PREFIX_MAX}"
            ));
        }
        if u32::from(self.network) & !self.mask() != 0 {
            return Err(format!(
                "{self}: host bits are set (the block starts at {})",
                Ipv4Addr::from(u32::from(self.network) & self.mask())
            ));
        }
        Ok(())
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    /// Whether `ip` is a usable address of the block (not its network or broadcast address).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let (first, last) = self.usable();
        (first..=last).contains(&u32::from(ip))
    }

    /// First and last usable address, as numbers.
    fn usable(&self) -> (u32, u32) {
        let net = u32::from(self.network) & self.mask();
        (net + 1, (net | !self.mask()) - 1)
    }

    /// The lowest usable address of the block not in `taken`, or `None` when all are.
    pub fn lowest_free(&self, taken: &std::collections::BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let (first, last) = self.usable();
        // `taken` is sorted: walk it alongside the candidates, so the cost is its length.
        let mut next = first;
        for ip in taken.iter().map(|ip| u32::from(*ip)) {
            if ip < next {
                continue;
            }
            if ip > next {
                break;
            }
            next = next.checked_add(1)?;
        }
        (next <= last).then(|| Ipv4Addr::from(next))
    }
}

impl fmt::Display for VipRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

fn default_vip_range() -> VipRange {
    VIP_RANGE_DEFAULT
}

/// The cluster-wide settings, as the replicated state holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// Placement strategy for tasks that do not name one.
    pub strategy: Strategy,
    /// Where host ports for `0`/empty port bindings are chosen.
    pub dynamic_ports: PortRange,
    /// Restart back-off of exited containers.
    pub backoff: BackoffConfig,
    /// Most Raft voters; the controller keeps an odd count up to this, further nodes are
    /// learners.
    pub voters: usize,
    /// Where service VIPs are allocated. A change applies to services created afterwards;
    /// existing ones keep their VIP. Absent in configs stored before VIPs existed.
    #[serde(default = "default_vip_range")]
    pub vip_range: VipRange,
}

impl Default for ClusterConfig {
    /// The agent's flag defaults, so a cluster that never stored a config behaves as before.
    fn default() -> Self {
        ClusterConfig {
            strategy: Strategy::Spread,
            dynamic_ports: PortRange {
                first: 20_000,
                last: 32_767,
            },
            backoff: BackoffConfig::default(),
            voters: 3,
            vip_range: VIP_RANGE_DEFAULT,
        }
    }
}

fn err(field: &str, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.to_string(),
        message: message.into(),
    }
}

impl ClusterConfig {
    /// Checks every field; the error names the field as the API spells it.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.dynamic_ports
            .check()
            .map_err(|m| err("dynamicPorts", m))?;
        self.vip_range.check().map_err(|m| err("vipRange", m))?;
        if self.voters == 0 || self.voters > VOTERS_MAX {
            return Err(err(
                "voters",
                format!("{} is not between 1 and {VOTERS_MAX}", self.voters),
            ));
        }
        let b = self.backoff;
        if b.base_ms == 0 || b.base_ms > BACKOFF_MS_MAX {
            return Err(err(
                "restartBaseMs",
                format!("{} is not between 1 and {BACKOFF_MS_MAX}", b.base_ms),
            ));
        }
        if b.max_ms < b.base_ms || b.max_ms > BACKOFF_MS_MAX {
            return Err(err(
                "restartMaxMs",
                format!(
                    "{} is not between restartBaseMs ({}) and {BACKOFF_MS_MAX}",
                    b.max_ms, b.base_ms
                ),
            ));
        }
        if b.reset_after_ms > BACKOFF_MS_MAX {
            return Err(err(
                "restartResetAfterMs",
                format!("{} is above {BACKOFF_MS_MAX}", b.reset_after_ms),
            ));
        }
        Ok(())
    }

    /// The JSON of `GET /cluster/config`.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "strategy": self.strategy.as_str(),
            "dynamicPorts": self.dynamic_ports.to_string(),
            "voters": self.voters,
            "restartBaseMs": self.backoff.base_ms,
            "restartMaxMs": self.backoff.max_ms,
            "restartResetAfterMs": self.backoff.reset_after_ms,
            "vipRange": self.vip_range.to_string(),
        })
    }
}

const FIELDS: &[&str] = &[
    "strategy",
    "dynamicPorts",
    "voters",
    "restartBaseMs",
    "restartMaxMs",
    "restartResetAfterMs",
    "vipRange",
];

/// The JSON of `GET /cluster/config` (every field) and of `PUT /cluster/config` (any of them),
/// as the OpenAPI description shows it: `to_json` writes it and `parse_config_patch` reads it by
/// hand; a test checks all three name the fields of `FIELDS`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
#[schema(example = json!({"strategy": "binpack", "voters": 5}))]
pub struct ClusterConfigJson {
    /// Placement strategy of tasks that name none.
    pub strategy: Strategy,
    /// Host ports chosen for `0`/empty port bindings, `FIRST-LAST`, e.g. `20000-32767`.
    pub dynamic_ports: String,
    /// Most Raft voters (1 to 7); further nodes are learners.
    pub voters: u64,
    /// First restart delay of an exited container, in milliseconds.
    pub restart_base_ms: u64,
    /// Longest restart delay, in milliseconds.
    pub restart_max_ms: u64,
    /// A container that ran this long has its back-off reset, in milliseconds.
    pub restart_reset_after_ms: u64,
    /// Block that service VIPs are allocated from, `A.B.C.D/N`, e.g. `10.200.0.0/16`; a change
    /// applies to services created afterwards.
    pub vip_range: String,
}

impl Default for ClusterConfigJson {
    fn default() -> Self {
        let c = ClusterConfig::default();
        ClusterConfigJson {
            strategy: c.strategy,
            dynamic_ports: c.dynamic_ports.to_string(),
            voters: c.voters as u64,
            restart_base_ms: c.backoff.base_ms,
            restart_max_ms: c.backoff.max_ms,
            restart_reset_after_ms: c.backoff.reset_after_ms,
            vip_range: c.vip_range.to_string(),
        }
    }
}

/// Parses a `PUT /cluster/config` body: the fields it names replace those of `current`, the
/// result is validated as a whole.
pub fn parse_config_patch(
    body: &[u8],
    current: &ClusterConfig,
) -> Result<ClusterConfig, ValidationError> {
    if body.len() > crate::limits::BODY_BYTES_MAX {
        return Err(err("", "request body is too large"));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| err("", format!("request body is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(err("", "request body must be a JSON object"));
    };
    apply_patch(&obj, current)
}

fn apply_patch(
    obj: &Map<String, Value>,
    current: &ClusterConfig,
) -> Result<ClusterConfig, ValidationError> {
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(err(
            unknown,
            format!("unknown field; known fields are {}", FIELDS.join(", ")),
        ));
    }
    let mut c = *current;
    if let Some(v) = obj.get("strategy") {
        let s = v
            .as_str()
            .ok_or_else(|| err("strategy", "must be a string: spread or binpack"))?;
        c.strategy = Strategy::parse(s)
            .ok_or_else(|| err("strategy", format!("{s:?} is not spread or binpack")))?;
    }
    if let Some(v) = obj.get("dynamicPorts") {
        let s = v
            .as_str()
            .ok_or_else(|| err("dynamicPorts", "must be a string FIRST-LAST"))?;
        c.dynamic_ports = PortRange::parse(s).map_err(|m| err("dynamicPorts", m))?;
    }
    if let Some(v) = obj.get("vipRange") {
        let s = v
            .as_str()
            .ok_or_else(|| err("vipRange", "must be a string A.B.C.D/N"))?;
        c.vip_range = VipRange::parse(s).map_err(|m| err("vipRange", m))?;
    }
    let number = |field: &str| -> Result<Option<u64>, ValidationError> {
        match obj.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| err(field, "must be a whole number, 0 or more")),
        }
    };
    if let Some(n) = number("voters")? {
        c.voters = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(n) = number("restartBaseMs")? {
        c.backoff.base_ms = n;
    }
    if let Some(n) = number("restartMaxMs")? {
        c.backoff.max_ms = n;
    }
    if let Some(n) = number("restartResetAfterMs")? {
        c.backoff.reset_after_ms = n;
    }
    c.validate()?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{schema_fields, sorted};

    /// The OpenAPI schemas of `GET` and `PUT /cluster/config` name exactly the fields that
    /// `to_json` writes and the parser accepts.
    #[test]
    fn config_schemas_name_every_field() {
        let written: Vec<String> = ClusterConfig::default()
            .to_json()
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        let mut written = written;
        written.sort();
        assert_eq!(written, sorted(FIELDS));
        assert_eq!(schema_fields::<ClusterConfigJson>(), sorted(FIELDS));
    }

    /// A patch over the default config and the field of the error, or the resulting config.
    fn check(body: &str, want: Result<ClusterConfig, &str>) {
        let got = parse_config_patch(body.as_bytes(), &ClusterConfig::default());
        match (got, want) {
            (Ok(g), Ok(w)) => assert_eq!(g, w, "{body}"),
            (Err(e), Err(field)) => assert_eq!(e.field, field, "{body}: {e}"),
            (g, w) => panic!("{body}: got {g:?}, want {w:?}"),
        }
    }

    #[test]
    fn config_patches() {
        let d = ClusterConfig::default();
        check("{}", Ok(d));
        check(
            r#"{"strategy": "binpack"}"#,
            Ok(ClusterConfig {
                strategy: Strategy::Binpack,
                ..d
            }),
        );
        check(
            r#"{"dynamicPorts": "30000-30010", "voters": 5}"#,
            Ok(ClusterConfig {
                dynamic_ports: PortRange {
                    first: 30000,
                    last: 30010,
                },
                voters: 5,
                ..d
            }),
        );
        check(
            r#"{"restartBaseMs": 200, "restartMaxMs": 3200, "restartResetAfterMs": 0}"#,
            Ok(ClusterConfig {
                backoff: BackoffConfig {
                    base_ms: 200,
                    max_ms: 3200,
                    reset_after_ms: 0,
                },
                ..d
            }),
        );
        check(r#"{"strategy": "random"}"#, Err("strategy"));
        check(r#"{"strategy": 1}"#, Err("strategy"));
        check(r#"{"dynamicPorts": "0-10"}"#, Err("dynamicPorts"));
        check(r#"{"dynamicPorts": "10-5"}"#, Err("dynamicPorts"));
        check(r#"{"dynamicPorts": "abc"}"#, Err("dynamicPorts"));
        check(r#"{"dynamicPorts": "1-70000"}"#, Err("dynamicPorts"));
        check(r#"{"voters": 0}"#, Err("voters"));
        check(r#"{"voters": 8}"#, Err("voters"));
        check(r#"{"voters": -1}"#, Err("voters"));
        check(r#"{"voters": 1e30}"#, Err("voters"));
        check(r#"{"restartBaseMs": 0}"#, Err("restartBaseMs"));
        check(r#"{"restartMaxMs": 10}"#, Err("restartMaxMs"));
        check(
            r#"{"restartResetAfterMs": 86400001}"#,
            Err("restartResetAfterMs"),
        );
        check(r#"{"color": "red"}"#, Err("color"));
        check(
            r#"{"vipRange": "10.9.0.0/24"}"#,
            Ok(ClusterConfig {
                vip_range: VipRange {
                    network: Ipv4Addr::new(10, 9, 0, 0),
                    prefix_len: 24,
                },
                ..d
            }),
        );
        check(r#"{"vipRange": "10.9.0.1/24"}"#, Err("vipRange"));
        check(r#"{"vipRange": "10.9.0.0/31"}"#, Err("vipRange"));
        check(r#"{"vipRange": "10.9.0.0/7"}"#, Err("vipRange"));
        check(r#"{"vipRange": "10.9.0.0"}"#, Err("vipRange"));
        check(r#"{"vipRange": "10.9.0.0/x"}"#, Err("vipRange"));
        check(r#"{"vipRange": "::1/64"}"#, Err("vipRange"));
        check(r#"{"vipRange": 5}"#, Err("vipRange"));
        check("[1]", Err(""));
        check("{", Err(""));
    }

    #[test]
    fn vips_are_the_lowest_free_usable_addresses() {
        use std::collections::BTreeSet;
        let r = VipRange::parse("10.9.0.0/30").unwrap();
        let ip = |d| Ipv4Addr::new(10, 9, 0, d);
        let mut taken = BTreeSet::new();
        assert_eq!(r.lowest_free(&taken), Some(ip(1)));
        taken.insert(ip(1));
        assert_eq!(r.lowest_free(&taken), Some(ip(2)));
        taken.insert(ip(2));
        // .3 is the broadcast address: the /30 is full.
        assert_eq!(r.lowest_free(&taken), None);
        taken.remove(&ip(1));
        assert_eq!(r.lowest_free(&taken), Some(ip(1)));
        // Addresses outside the block (from an older range) do not count.
        let outside: BTreeSet<_> = [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(11, 0, 0, 1)].into();
        assert_eq!(r.lowest_free(&outside), Some(ip(1)));
        assert!(r.contains(ip(2)) && !r.contains(ip(0)) && !r.contains(ip(3)));
        let wide = VipRange::parse("10.0.0.0/8").unwrap();
        assert_eq!(
            wide.lowest_free(&BTreeSet::new()),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_eq!(VIP_RANGE_DEFAULT.to_string(), "10.200.0.0/16");
    }

    /// A config stored before VIPs existed decodes with the default range.
    #[test]
    fn a_config_without_a_vip_range_decodes_with_the_default() {
        let mut v = serde_json::to_value(ClusterConfig::default()).unwrap();
        v.as_object_mut().unwrap().remove("vip_range");
        let c: ClusterConfig = serde_json::from_value(v).unwrap();
        assert_eq!(c.vip_range, VIP_RANGE_DEFAULT);
    }

    #[test]
    fn the_default_config_is_valid_and_renders_as_the_api_spells_it() {
        let d = ClusterConfig::default();
        assert_eq!(d.validate(), Ok(()));
        let v = d.to_json();
        assert_eq!(v["dynamicPorts"], "20000-32767");
        assert_eq!(v["strategy"], "spread");
        // What GET renders, PUT takes back unchanged.
        let back = parse_config_patch(v.to_string().as_bytes(), &d).expect("round trip");
        assert_eq!(back, d);
    }
}
