//! The DNS answers of API.md, as a pure function of a query's bytes and the endpoint view:
//! `answer(bytes, &view, udp)` returns the reply's bytes, "forward this", or "drop it". The
//! server (`dns_server`) does the IO around it.
//!
//! Names (case-insensitive, under `orion.`):
//! - `<service>.orion`, `<service>.<stack>.orion`: A of the VIP (a service id is its DNS name
//!   without `.orion`);
//! - `tasks.<service>[.<stack>].orion`: A of the healthy endpoints' host addresses, SRV with
//!   their host ports (target `<task>.tasks.<service>[.<stack>].orion`, which resolves to that
//!   endpoint's address; the additional section carries it);
//! - `<node>.node.orion`: the node's advertise address;
//! - anything else under `orion.`: NXDOMAIN; a known name asked for another type: NOERROR
//!   with no answer (so a resolver asking A and AAAA gets the A).
//!
//! Codec: hickory-proto; nothing here panics on any input (a proptest feeds it garbage,
//! truncations and mutations of valid queries).

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use orion_types::endpoint::EndpointView;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// TTL of the VIP and node names: they change rarely (a VIP never while its service lives).
pub const TTL_STABLE_SECS: u32 = 5;
/// TTL of `tasks.` names: endpoints come and go with every update and every failing check.
pub const TTL_TASKS_SECS: u32 = 1;
/// Answers over UDP without EDNS are at most 512 bytes (RFC 1035); with EDNS at most what
/// the client offers, capped here (4,096 is the common ceiling, RFC 6891's advice).
pub const UDP_PAYLOAD_MIN: usize = 512;
pub const UDP_PAYLOAD_MAX: usize = 4096;
/// Most records in one answer (a service with many replicas): more would only be truncated.
pub const ANSWERS_MAX: usize = 64;

/// What to do with a datagram or a TCP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not ours (outside `orion.`): pass the query to the host's resolvers.
    Forward,
    /// Not even a header to answer to (or a response sent to us): say nothing.
    Drop,
}

/// What a name under `orion.` is.
enum Target<'a> {
    Zone,
    Vip(&'a str),
    Tasks(&'a str),
    Task(&'a str, &'a str),
    Node(&'a str),
}

/// Answers one DNS message. `udp`: the reply must fit the client's UDP size (else it is
/// truncated, TC set, and the client retries over TCP).
pub fn answer(query: &[u8], view: &EndpointView, udp: bool) -> Answer {
    let msg = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => return format_error(query),
    };
    if msg.message_type() != MessageType::Query {
        return Answer::Drop;
    }
    if msg.op_code() != OpCode::Query {
        return reply(
            &msg,
            Message::error_msg(msg.id(), msg.op_code(), ResponseCode::NotImp),
            udp,
        );
    }
    let [q] = msg.queries() else {
        return reply(
            &msg,
            Message::error_msg(msg.id(), msg.op_code(), ResponseCode::FormErr),
            udp,
        );
    };
    let name = q.name().to_lowercase();
    let labels: Vec<String> = name
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    if labels.last().map(String::as_str) != Some("orion") {
        return Answer::Forward;
    }
    let mut out = Message::new();
    out.set_id(msg.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(true)
        .set_recursion_desired(msg.recursion_desired())
        .set_recursion_available(true);
    out.add_query(q.clone());
    let inner = &labels[..labels.len() - 1];
    let Some(target) = resolve(inner, view) else {
        out.set_response_code(ResponseCode::NXDomain);
        return reply(&msg, out, udp);
    };
    if q.query_class() != DNSClass::IN {
        return reply(&msg, out, udp);
    }
    let qtype = q.query_type();
    let wants = |t: RecordType| qtype == t || qtype == RecordType::ANY;
    let fqdn = {
        let mut n = q.name().clone();
        n.set_fqdn(true);
        n
    };
    match target {
        Target::Zone => {}
        Target::Vip(id) => {
            if let Some(vip) = view.services.get(id).and_then(|s| s.vip)
                && wants(RecordType::A)
            {
                out.add_answer(Record::from_rdata(fqdn, TTL_STABLE_SECS, RData::A(A(vip))));
            }
        }
        Target::Node(node) => {
            if let Some(ip) = view.nodes.get(node) {
                add_address(&mut out, &fqdn, *ip, TTL_STABLE_SECS, wants);
            }
        }
        Target::Task(id, task) => {
            let addrs: BTreeSet<IpAddr> = healthy(view, id)
                .filter(|e| e.0 == task)
                .map(|e| e.1)
                .collect();
            for ip in addrs {
                add_address(&mut out, &fqdn, ip, TTL_TASKS_SECS, wants);
            }
        }
        Target::Tasks(id) => {
            let eps: Vec<(&str, IpAddr, u16)> = healthy(view, id).take(ANSWERS_MAX).collect();
            let addrs: BTreeSet<IpAddr> = eps.iter().map(|e| e.1).collect();
            for ip in addrs {
                add_address(&mut out, &fqdn, ip, TTL_TASKS_SECS, wants);
            }
            if wants(RecordType::SRV) {
                for (task, ip, port) in &eps {
                    let Ok(target) = Name::from_ascii(task).and_then(|t| t.append_domain(&fqdn))
                    else {
                        continue;
                    };
                    out.add_answer(Record::from_rdata(
                        fqdn.clone(),
                        TTL_TASKS_SECS,
                        RData::SRV(SRV::new(0, 10, *port, target.clone())),
                    ));
                    let rdata = match ip {
                        IpAddr::V4(v4) => RData::A(A(*v4)),
                        IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                    };
                    out.add_additional(Record::from_rdata(target, TTL_TASKS_SECS, rdata));
                }
            }
        }
    }
    reply(&msg, out, udp)
}

/// The healthy endpoints of service `id`: (task, address, host port), in view order, one per
/// (task, port) pair.
fn healthy<'a>(view: &'a EndpointView, id: &str) -> impl Iterator<Item = (&'a str, IpAddr, u16)> {
    view.services
        .get(id)
        .into_iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.healthy && !e.draining)
        .map(|e| (e.task.as_str(), e.address, e.port))
}

fn add_address(
    out: &mut Message,
    name: &Name,
    ip: IpAddr,
    ttl: u32,
    wants: impl Fn(RecordType) -> bool,
) {
    match ip {
        IpAddr::V4(v4) if wants(RecordType::A) => {
            out.add_answer(Record::from_rdata(name.clone(), ttl, RData::A(A(v4))));
        }
        IpAddr::V6(v6) if wants(RecordType::AAAA) => {
            out.add_answer(Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(v6))));
        }
        _ => {}
    }
}

/// What the labels before `orion` name, if anything. A service id is the labels joined by
/// dots (`web`, `db.shop`); `tasks.` before a service id is its tasks; a task id before that
/// is one endpoint; `<node>.node` is a node. A service named like one of these patterns wins
/// over them only where the pattern does not match an existing service or node.
fn resolve<'a>(labels: &[String], view: &'a EndpointView) -> Option<Target<'a>> {
    if labels.is_empty() {
        return Some(Target::Zone);
    }
    let service = |ls: &[String]| -> Option<&'a str> {
        if ls.is_empty() || ls.len() > 2 {
            return None;
        }
        view.services
            .get_key_value(ls.join(".").as_str())
            .map(|(k, _)| k.as_str())
    };
    if labels[0] == "tasks"
        && let Some(id) = service(&labels[1..])
    {
        return Some(Target::Tasks(id));
    }
    if labels.len() >= 3
        && labels[1] == "tasks"
        && let Some(id) = service(&labels[2..])
        && let Some(s) = view.services.get(id)
        && let Some(e) = s.endpoints.iter().find(|e| e.task == labels[0])
    {
        return Some(Target::Task(id, e.task.as_str()));
    }
    if let Some(id) = service(labels) {
        return Some(Target::Vip(id));
    }
    if let [node, kind] = labels
        && kind == "node"
        && let Some((id, _)) = view.nodes.get_key_value(node.as_str())
    {
        return Some(Target::Node(id.as_str()));
    }
    None
}

/// FORMERR for a message whose header could be read, else nothing.
fn format_error(query: &[u8]) -> Answer {
    let [a, b, flags, ..] = query else {
        return Answer::Drop;
    };
    if query.len() < 12 || flags & 0x80 != 0 {
        // Too short for a header, or a response: never answer those (no reflection).
        return Answer::Drop;
    }
    let id = u16::from_be_bytes([*a, *b]);
    let mut m = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
    m.set_message_type(MessageType::Response);
    m.to_vec().map_or(Answer::Drop, Answer::Reply)
}

/// Encodes `out`, with EDNS if the query had it, truncated to what a UDP client accepts.
fn reply(query: &Message, mut out: Message, udp: bool) -> Answer {
    let limit = match query.extensions() {
        Some(edns) => {
            let mut e = Edns::new();
            e.set_max_payload(UDP_PAYLOAD_MAX as u16);
            out.set_edns(e);
            usize::from(edns.max_payload()).clamp(UDP_PAYLOAD_MIN, UDP_PAYLOAD_MAX)
        }
        None => UDP_PAYLOAD_MIN,
    };
    let Ok(bytes) = out.to_vec() else {
        return Answer::Drop;
    };
    if udp && bytes.len() > limit {
        return out.truncate().to_vec().map_or(Answer::Drop, Answer::Reply);
    }
    Answer::Reply(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use orion_types::endpoint::{Endpoint, ServiceEndpoints};
    use proptest::prelude::*;

    fn endpoint(task: &str, node: &str, ip: &str, port: u16, healthy: bool) -> Endpoint {
        Endpoint {
            task: task.into(),
            node: node.into(),
            address: ip.parse().unwrap(),
            port,
            target_port: 80,
            healthy,
            draining: false,
        }
    }

    fn view() -> EndpointView {
        let mut v = EndpointView::default();
        v.services.insert(
            "web".into(),
            ServiceEndpoints {
                id: "web".into(),
                vip: Some("10.200.0.1".parse().unwrap()),
                ports: vec![],
                endpoints: vec![
                    endpoint("t1", "n1", "127.0.0.1", 2001, true),
                    endpoint("t2", "n2", "127.0.0.2", 2002, true),
                    endpoint("t3", "n3", "127.0.0.3", 2003, false),
                ],
            },
        );
        v.services.insert(
            "db.shop".into(),
            ServiceEndpoints {
                id: "db.shop".into(),
                vip: Some("10.200.0.2".parse().unwrap()),
                ports: vec![],
                endpoints: vec![],
            },
        );
        v.nodes.insert("n1".into(), "192.168.0.1".parse().unwrap());
        v
    }

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(7).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    /// `rcode answer answer …` of the reply to `name`/`t`, each answer as `TYPE data`.
    fn check(name: &str, t: RecordType, want: &str) {
        let got = match answer(&query(name, t), &view(), true) {
            Answer::Reply(b) => {
                let m = Message::from_vec(&b).unwrap();
                assert_eq!(m.id(), 7);
                assert!(m.authoritative());
                let mut parts = vec![format!("{}", m.response_code())];
                for r in m.answers() {
                    parts.push(format!("{} {}", r.record_type(), r.data()));
                }
                parts.join(" | ")
            }
            other => format!("{other:?}"),
        };
        assert_eq!(got, want, "{name} {t}");
    }

    #[test]
    fn names_of_api_md() {
        check("web.orion.", RecordType::A, "No Error | A 10.200.0.1");
        check("WEB.Orion", RecordType::A, "No Error | A 10.200.0.1");
        check("db.shop.orion.", RecordType::A, "No Error | A 10.200.0.2");
        check(
            "tasks.web.orion.",
            RecordType::A,
            "No Error | A 127.0.0.1 | A 127.0.0.2",
        );
        check(
            "tasks.web.orion.",
            RecordType::SRV,
            "No Error | SRV 0 10 2001 t1.tasks.web.orion. | SRV 0 10 2002 t2.tasks.web.orion.",
        );
        check(
            "t2.tasks.web.orion.",
            RecordType::A,
            "No Error | A 127.0.0.2",
        );
        check("tasks.db.shop.orion.", RecordType::A, "No Error");
        check("n1.node.orion.", RecordType::A, "No Error | A 192.168.0.1");
        // Known names, other types: no data, not NXDOMAIN.
        check("web.orion.", RecordType::AAAA, "No Error");
        check("orion.", RecordType::SOA, "No Error");
        for unknown in [
            "nope.orion.",
            "db.orion.",
            "tasks.nope.orion.",
            "n9.node.orion.",
            "t3.tasks.web.orion.x.orion.",
            "a.b.c.d.orion.",
        ] {
            check(unknown, RecordType::A, "Non-Existent Domain");
        }
        check("example.com.", RecordType::A, "Forward");
    }

    #[test]
    fn odd_messages() {
        let v = view();
        assert_eq!(answer(&[], &v, true), Answer::Drop);
        assert_eq!(answer(&[1, 2, 3], &v, true), Answer::Drop);
        // A header and garbage: FORMERR with the id.
        let mut junk = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        junk.extend_from_slice(&[0xff; 7]);
        let Answer::Reply(b) = answer(&junk, &v, true) else {
            panic!("formerr expected")
        };
        let m = Message::from_vec(&b).unwrap();
        assert_eq!((m.id(), m.response_code()), (0x1234, ResponseCode::FormErr));
        // A response sent to us is never answered.
        let mut resp = Message::from_vec(&query("web.orion.", RecordType::A)).unwrap();
        resp.set_message_type(MessageType::Response);
        assert_eq!(answer(&resp.to_vec().unwrap(), &v, true), Answer::Drop);
    }

    #[test]
    fn a_big_answer_is_truncated_over_udp_only() {
        let mut v = view();
        let web = v.services.get_mut("web").unwrap();
        web.endpoints = (0..60)
            .map(|i| {
                endpoint(
                    &format!("task-{i:040}"),
                    "n1",
                    &format!("10.1.0.{i}"),
                    3000 + i,
                    true,
                )
            })
            .collect();
        let q = query("tasks.web.orion.", RecordType::SRV);
        let Answer::Reply(b) = answer(&q, &v, true) else {
            panic!()
        };
        assert!(b.len() <= UDP_PAYLOAD_MIN);
        assert!(Message::from_vec(&b).unwrap().truncated());
        let Answer::Reply(b) = answer(&q, &v, false) else {
            panic!()
        };
        let m = Message::from_vec(&b).unwrap();
        assert!(!m.truncated());
        assert_eq!((m.answers().len(), m.additionals().len()), (60, 60));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Garbage of any size, never a panic; a reply is always a parseable response.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            if let Answer::Reply(b) = answer(&bytes, &view(), true) {
                let m = Message::from_vec(&b).expect("our replies parse");
                prop_assert_eq!(m.message_type(), MessageType::Response);
                prop_assert!(b.len() <= UDP_PAYLOAD_MAX);
            }
        }

        /// Valid queries cut short, flipped or extended, never a panic.
        #[test]
        fn mutated_queries_never_panic(
            name in "(tasks\\.)?(web|db\\.shop|n1\\.node|x)\\.orion\\.",
            t in prop::sample::select(vec![RecordType::A, RecordType::AAAA, RecordType::SRV, RecordType::ANY, RecordType::TXT]),
            cut in 0usize..80,
            flip in proptest::collection::vec((0usize..80, any::<u8>()), 0..4),
            tail in proptest::collection::vec(any::<u8>(), 0..3000),
        ) {
            let mut q = query(&name, t);
            for (i, b) in flip {
                if let Some(x) = q.get_mut(i) { *x ^= b; }
            }
            let _ = answer(&q, &view(), true);
            let _ = answer(&q[..cut.min(q.len())], &view(), true);
            q.extend_from_slice(&tail);
            let _ = answer(&q, &view(), false);
        }
    }
}
