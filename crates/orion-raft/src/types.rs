//! The openraft type configuration for Orion: what a log entry carries (a `Payload`: a
//! `Command`, shared, and encoded once; see there), what
//! applying it returns (`Response`), how a node is named inside Raft (`u64`, a stable hash of
//! the operator's string id) and what Raft remembers about each member (`Peer`: its addresses).
//!
//! Everything else in the crate is generic over nothing: it names `TypeConfig` directly.

use orion_types::Command;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use std::fmt;
use std::io::Cursor;
use std::sync::{Arc, OnceLock};

/// Raft's numeric id of a node.
pub type RaftId = u64;

openraft::declare_raft_types!(
    /// Orion's Raft types.
    pub TypeConfig:
        D = Payload,
        R = orion_types::Response,
        NodeId = RaftId,
        Node = Peer,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// What a log entry carries: a `Command`, shared and encoded at most once.
///
/// Shared: the log's in-memory tail, replication to each follower and the apply all hand an
/// entry on by cloning it, and a clone is a count, not a copy of the task spec.
///
/// Encoded once: the leader wrote each entry's JSON for its own log and again for each
/// follower's append request (a tenth of its CPU at 64 clients went to these encodings), and
/// a follower wrote again the JSON it had just read. The first encoding is kept
/// (`serde_json`'s `RawValue`), and a payload read from JSON keeps the text it was read from;
/// every later encoding copies that text. The bytes on disk and on the wire are those of the
/// `Command` as before, so logs and peers of earlier versions read them unchanged. Every
/// encoder and decoder of entries is `serde_json` (the log, the RPCs, the simulator's).
#[derive(Clone)]
pub struct Payload(Arc<Encoded>);

struct Encoded {
    cmd: Command,
    /// The command's JSON, once made or as read. `None` inside: it could not be encoded (no
    /// `Command` fails to, but then each encoding tries again and reports its own error).
    json: OnceLock<Option<Box<RawValue>>>,
}

impl Payload {
    pub fn new(cmd: Command) -> Payload {
        Payload(Arc::new(Encoded {
            cmd,
            json: OnceLock::new(),
        }))
    }

    /// The command's JSON: made on the first call, kept for the later ones.
    pub fn json(&self) -> Option<&RawValue> {
        self.0
            .json
            .get_or_init(|| serde_json::value::to_raw_value(&self.0.cmd).ok())
            .as_deref()
    }
}

impl std::ops::Deref for Payload {
    type Target = Command;

    fn deref(&self) -> &Command {
        &self.0.cmd
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.cmd.fmt(f)
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.json() {
            Some(raw) => raw.serialize(s),
            None => self.0.cmd.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Payload, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        let cmd: Command = serde_json::from_str(raw.get()).map_err(D::Error::custom)?;
        Ok(Payload(Arc::new(Encoded {
            cmd,
            json: OnceLock::from(Some(raw)),
        })))
    }
}

/// What the membership config records about a member: its string id and where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The operator's `--id`.
    pub node_id: String,
    /// `ip:port` of the inter-node RPC (Raft and forwarding).
    pub raft_addr: String,
    /// `ip:port` of the HTTP API, so followers can tell clients where the leader answers.
    pub api_addr: String,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.node_id, self.raft_addr)
    }
}

/// The stable Raft id of a string node id: 64-bit FNV-1a.
///
/// FNV-1a because it is fixed by specification (offset basis and prime below), so the same
/// string gives the same id on every build, platform and release; std's hashers promise none of
/// that. A collision between two operator-chosen ids is possible in principle (birthday bound at
/// 2^32 names) and is refused when a learner is added (`RaftError::IdCollision`).
pub fn raft_id(node_id: &str) -> RaftId {
    // FNV-1a 64-bit parameters, from the FNV specification (draft-eastlake-fnv).
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET_BASIS;
    for byte in node_id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_id_is_fnv1a() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(raft_id(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(raft_id("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(raft_id("foobar"), 0x8594_4171_f739_67e8);
        assert_ne!(raft_id("node1"), raft_id("node2"));
    }

    fn create() -> Command {
        Command::CreateTask {
            task_id: "t1".into(),
            spec: Box::new(
                orion_types::api::parse_task_request(
                    br#"{"image":"busybox","command":["sh","-c","echo \"hi\""],"env":{"A":"\u00e9"}}"#,
                )
                .expect("spec"),
            ),
            at: 7,
        }
    }

    /// The bytes on disk and on the wire are the command's own JSON, however often a payload is
    /// encoded: logs and peers of earlier versions (which wrote the `Command` itself) read them.
    #[test]
    fn a_payload_encodes_as_its_command_each_time() {
        let cmd = create();
        let want = serde_json::to_string(&cmd).expect("json");
        let p = Payload::new(cmd.clone());
        assert_eq!(serde_json::to_string(&p).expect("json"), want);
        assert_eq!(
            serde_json::to_string(&p).expect("json"),
            want,
            "from the kept text"
        );
        let batch = Payload::new(Command::Batch {
            commands: vec![cmd.clone(), cmd],
        });
        let entry = openraft::Entry::<TypeConfig> {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), 3),
            payload: openraft::EntryPayload::Normal(batch.clone()),
        };
        let text = serde_json::to_string(&entry).expect("json");
        assert!(text.contains(&serde_json::to_string(&*batch).expect("json")));
        let back: openraft::Entry<TypeConfig> = serde_json::from_str(&text).expect("decodes");
        match back.payload {
            openraft::EntryPayload::Normal(p) => assert_eq!(*p, *batch),
            other => panic!("not a normal entry: {other:?}"),
        }
    }

    /// A payload read from JSON keeps the text it was read from: encoded again (a follower's own
    /// log), it is that text, not a second encoding of the command.
    #[test]
    fn a_decoded_payload_encodes_as_the_text_it_was_read_from() {
        let text = serde_json::to_string(&create())
            .expect("json")
            .replace(",", ", ");
        let p: Payload = serde_json::from_str(&text).expect("decodes");
        assert_eq!(*p, create());
        assert_eq!(serde_json::to_string(&p).expect("json"), text);
    }

    /// A payload that is not a command is refused with serde's error, as a `Command` was.
    #[test]
    fn a_payload_that_is_no_command_is_refused() {
        for bad in [
            r#"{"NoSuchCommand":{}}"#,
            r#"[1,2"#,
            r#""text""#,
            r#"{"CreateTask":{}}"#,
        ] {
            assert!(serde_json::from_str::<Payload>(bad).is_err(), "{bad}");
        }
    }
}
