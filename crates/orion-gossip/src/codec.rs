//! The wire format of Orion gossip: a small hand-written binary codec for foca's
//! headers and member updates, plus the one custom broadcast we use ("this
//! node left"). Everything decoded here comes from the network, so every read
//! is bounds-checked and every failure is a typed [`CodecError`]; nothing
//! panics.
//!
//! Layout (all integers big-endian):
//! - header: magic `b"OG"`, version `u8`, src identity, src incarnation `u16`,
//!   dst identity, message tag `u8`, then the message's fields;
//! - identity: node id (`u8` length + UTF-8), generation `u64`, address (tag
//!   `4|6`, octets, port `u16`): about 30 bytes;
//! - member: identity, incarnation `u16`, state `u8`.
//!
//! foca frames the packet itself: header, then a `u16` count and that many
//! members, then length-prefixed custom broadcasts.
//!
//! Beside foca's packets, the metadata packet (`ORM`): magic, flags `u8` (bit 0:
//! "send me yours"), the sender's identity, metadata (`u16` length + JSON).
//! Metadata is not in identities (version 1 had it there: each update cost ~300
//! bytes with the agent's metadata, so a 1,400-byte packet carried two).

use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use bytes::{Buf, BufMut};
use foca::{Header, Member, Message, State};
use serde::de::DeserializeOwned;

use crate::identity::NodeIdentity;

/// First bytes of every packet; lets us drop stray traffic before parsing.
const MAGIC: [u8; 2] = *b"OG";
/// Bumped on any incompatible change of the layout above.
const VERSION: u8 = 2;
/// First bytes of the metadata packet.
pub(crate) const META_MAGIC: [u8; 3] = *b"ORM";
/// Metadata packet flag: the receiver should answer with its own metadata.
const META_REPLY_WANTED: u8 = 1;
/// Flag of the metadata packet: "send me your member list" (the join's one-off state
/// exchange). Added after the first release of the packet: older engines read only the bit
/// above, so to them the request is a plain metadata packet and they answer with theirs.
const META_MEMBERS_WANTED: u8 = 2;
/// Magic of the member list, the answer to a pull: `ORL`, a count (u16) and that many members
/// as SWIM encodes them in its own packets. Only an engine that pulled expects one (older
/// engines never pull, and drop it as undecodable if one reaches them).
pub(crate) const LIST_MAGIC: [u8; 3] = *b"ORL";

/// Decode a member list (magic included).
pub(crate) fn decode_list<M: DeserializeOwned>(
    mut data: &[u8],
) -> Result<Vec<Member<NodeIdentity<M>>>, CodecError> {
    need(&data, LIST_MAGIC.len() + 2)?;
    if data[..LIST_MAGIC.len()] != LIST_MAGIC {
        return Err(CodecError::BadMagic);
    }
    data.advance(LIST_MAGIC.len());
    let count = data.get_u16();
    use foca::Codec as _;
    let mut codec = WireCodec::<M>::new();
    let mut out = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        out.push(codec.decode_member(&mut data)?);
    }
    if !data.is_empty() {
        return Err(CodecError::Invalid("trailing bytes in member list"));
    }
    Ok(out)
}
/// Custom broadcast tag for "node left on purpose".
const BROADCAST_LEAVE: u8 = 1;
/// Custom broadcast tag for a node's note (opaque bytes it announces about itself).
const BROADCAST_NOTE: u8 = 2;

/// The tag of a custom broadcast, to pick its decoder.
pub(crate) fn broadcast_tag(data: &[u8]) -> Option<u8> {
    data.first().copied()
}

pub(crate) fn is_note(data: &[u8]) -> bool {
    broadcast_tag(data) == Some(BROADCAST_NOTE)
}

/// A node's note as it travels: who, which life, which version of the note, the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NoteWire {
    pub(crate) node_id: String,
    pub(crate) generation: u64,
    pub(crate) version: u64,
    pub(crate) data: Vec<u8>,
}

/// Encode a note broadcast; the caller bounds `data` (`NOTE_BYTES_MAX`).
pub(crate) fn encode_note(node_id: &str, generation: u64, version: u64, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + node_id.len() + 18 + data.len());
    out.put_u8(BROADCAST_NOTE);
    out.put_u8(node_id.len() as u8);
    out.put_slice(node_id.as_bytes());
    out.put_u64(generation);
    out.put_u64(version);
    out.put_u16(data.len() as u16);
    out.put_slice(data);
    out
}

/// Decode a note broadcast; a note over `max_data` bytes is refused.
pub(crate) fn decode_note(mut data: &[u8], max_data: usize) -> Result<NoteWire, CodecError> {
    need(&data, 2)?;
    if data.get_u8() != BROADCAST_NOTE {
        return Err(CodecError::Invalid("broadcast tag"));
    }
    let len = usize::from(data.get_u8());
    need(&data, len + 18)?;
    let mut id = vec![0u8; len];
    data.copy_to_slice(&mut id);
    let generation = data.get_u64();
    let version = data.get_u64();
    let n = usize::from(data.get_u16());
    if n > max_data {
        return Err(CodecError::Invalid("note too large"));
    }
    need(&data, n)?;
    let note = data[..n].to_vec();
    data.advance(n);
    if data.has_remaining() {
        return Err(CodecError::Invalid("trailing bytes in broadcast"));
    }
    let node_id = String::from_utf8(id).map_err(|_| CodecError::Invalid("node id utf8"))?;
    Ok(NoteWire {
        node_id,
        generation,
        version,
        data: note,
    })
}

/// Why a packet could not be decoded or a value could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("packet truncated")]
    Truncated,
    #[error("bad magic or unsupported version")]
    BadMagic,
    #[error("invalid field: {0}")]
    Invalid(&'static str),
    #[error("metadata is not valid for this cluster: {0}")]
    Meta(String),
    #[error("not enough room in the packet")]
    NoRoom,
}

/// The foca codec. Stateless, so the engine can use a second instance to
/// inspect packets before foca does.
pub(crate) struct WireCodec<M>(PhantomData<fn() -> M>);

impl<M> WireCodec<M> {
    pub(crate) fn new() -> Self {
        Self(PhantomData)
    }
}

pub(crate) fn identity_len<M>(id: &NodeIdentity<M>) -> usize {
    let addr_len = match id.addr.ip() {
        IpAddr::V4(_) => 1 + 4 + 2,
        IpAddr::V6(_) => 1 + 16 + 2,
    };
    1 + id.node_id.len() + 8 + addr_len
}

fn put_identity<M>(id: &NodeIdentity<M>, buf: &mut impl BufMut) {
    // Lengths were validated when the identity was built or decoded.
    buf.put_u8(id.node_id.len() as u8);
    buf.put_slice(id.node_id.as_bytes());
    buf.put_u64(id.generation);
    match id.addr.ip() {
        IpAddr::V4(ip) => {
            buf.put_u8(4);
            buf.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            buf.put_u8(6);
            buf.put_slice(&ip.octets());
        }
    }
    buf.put_u16(id.addr.port());
}

fn need(buf: &impl Buf, n: usize) -> Result<(), CodecError> {
    if buf.remaining() < n {
        Err(CodecError::Truncated)
    } else {
        Ok(())
    }
}

fn get_identity<M: DeserializeOwned>(buf: &mut impl Buf) -> Result<NodeIdentity<M>, CodecError> {
    need(buf, 1)?;
    let id_len = usize::from(buf.get_u8());
    if id_len == 0 {
        return Err(CodecError::Invalid("empty node id"));
    }
    need(buf, id_len)?;
    let mut id_bytes = vec![0u8; id_len];
    buf.copy_to_slice(&mut id_bytes);
    let node_id = String::from_utf8(id_bytes).map_err(|_| CodecError::Invalid("node id utf8"))?;
    need(buf, 8 + 1)?;
    let generation = buf.get_u64();
    let ip = match buf.get_u8() {
        4 => {
            need(buf, 4)?;
            let mut o = [0u8; 4];
            buf.copy_to_slice(&mut o);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        6 => {
            need(buf, 16)?;
            let mut o = [0u8; 16];
            buf.copy_to_slice(&mut o);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return Err(CodecError::Invalid("address family")),
    };
    need(buf, 2)?;
    let port = buf.get_u16();
    Ok(NodeIdentity::new(
        Arc::from(node_id),
        generation,
        SocketAddr::new(ip, port),
    ))
}

/// Length of the metadata packet for this identity and metadata.
pub(crate) fn meta_packet_len<M>(id: &NodeIdentity<M>, meta_json: &[u8]) -> usize {
    META_MAGIC.len() + 1 + identity_len(id) + 2 + meta_json.len()
}

/// Encode the metadata packet: `id`'s metadata, and whether we want theirs.
pub(crate) fn encode_meta<M>(
    id: &NodeIdentity<M>,
    meta_json: &[u8],
    reply_wanted: bool,
) -> Vec<u8> {
    encode_meta_flags(id, meta_json, reply_wanted, false)
}

/// [`encode_meta`], and whether we want the receiver's member list as well.
pub(crate) fn encode_meta_flags<M>(
    id: &NodeIdentity<M>,
    meta_json: &[u8],
    reply_wanted: bool,
    members_wanted: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(meta_packet_len(id, meta_json));
    out.put_slice(&META_MAGIC);
    let mut flags = 0;
    if reply_wanted {
        flags |= META_REPLY_WANTED;
    }
    if members_wanted {
        flags |= META_MEMBERS_WANTED;
    }
    out.put_u8(flags);
    put_identity(id, &mut out);
    // Bounded by `spawn` (`GossipError::MetadataTooLarge`).
    out.put_u16(meta_json.len() as u16);
    out.put_slice(meta_json);
    out
}

/// A decoded metadata packet.
pub(crate) struct MetaPacket<M> {
    pub(crate) id: NodeIdentity<M>,
    pub(crate) meta: M,
    pub(crate) reply_wanted: bool,
    pub(crate) members_wanted: bool,
}

/// Decode the metadata packet (magic included).
pub(crate) fn decode_meta<M: DeserializeOwned>(
    mut data: &[u8],
) -> Result<MetaPacket<M>, CodecError> {
    need(&data, META_MAGIC.len() + 1)?;
    if data[..META_MAGIC.len()] != META_MAGIC {
        return Err(CodecError::BadMagic);
    }
    data.advance(META_MAGIC.len());
    let flags = data.get_u8();
    let id = get_identity(&mut data)?;
    need(&data, 2)?;
    let len = usize::from(data.get_u16());
    need(&data, len)?;
    if data.len() != len {
        return Err(CodecError::Invalid("trailing bytes in metadata packet"));
    }
    let meta: M = serde_json::from_slice(data).map_err(|e| CodecError::Meta(e.to_string()))?;
    Ok(MetaPacket {
        id,
        meta,
        reply_wanted: flags & META_REPLY_WANTED != 0,
        members_wanted: flags & META_MEMBERS_WANTED != 0,
    })
}

fn message_len<M>(msg: &Message<NodeIdentity<M>>) -> usize {
    1 + match msg {
        Message::Ping(_) | Message::Ack(_) => 1,
        Message::PingReq { target: id, .. }
        | Message::IndirectPing { origin: id, .. }
        | Message::IndirectAck { target: id, .. }
        | Message::ForwardedAck { origin: id, .. } => identity_len(id) + 1,
        Message::Announce
        | Message::Feed
        | Message::Gossip
        | Message::Broadcast
        | Message::TurnUndead => 0,
    }
}

fn put_message<M>(msg: &Message<NodeIdentity<M>>, buf: &mut impl BufMut) {
    match msg {
        Message::Ping(n) => {
            buf.put_u8(1);
            buf.put_u8(*n);
        }
        Message::Ack(n) => {
            buf.put_u8(2);
            buf.put_u8(*n);
        }
        Message::PingReq {
            target,
            probe_number,
        } => {
            buf.put_u8(3);
            put_identity(target, buf);
            buf.put_u8(*probe_number);
        }
        Message::IndirectPing {
            origin,
            probe_number,
        } => {
            buf.put_u8(4);
            put_identity(origin, buf);
            buf.put_u8(*probe_number);
        }
        Message::IndirectAck {
            target,
            probe_number,
        } => {
            buf.put_u8(5);
            put_identity(target, buf);
            buf.put_u8(*probe_number);
        }
        Message::ForwardedAck {
            origin,
            probe_number,
        } => {
            buf.put_u8(6);
            put_identity(origin, buf);
            buf.put_u8(*probe_number);
        }
        Message::Announce => buf.put_u8(7),
        Message::Feed => buf.put_u8(8),
        Message::Gossip => buf.put_u8(9),
        Message::Broadcast => buf.put_u8(10),
        Message::TurnUndead => buf.put_u8(11),
    }
}

fn get_message<M: DeserializeOwned, B: Buf>(
    buf: &mut B,
) -> Result<Message<NodeIdentity<M>>, CodecError> {
    need(buf, 1)?;
    let tag = buf.get_u8();
    let with_id = |buf: &mut B| -> Result<(NodeIdentity<M>, u8), CodecError> {
        let id = get_identity(buf)?;
        need(buf, 1)?;
        Ok((id, buf.get_u8()))
    };
    Ok(match tag {
        1 | 2 => {
            need(buf, 1)?;
            let n = buf.get_u8();
            if tag == 1 {
                Message::Ping(n)
            } else {
                Message::Ack(n)
            }
        }
        3 => {
            let (target, probe_number) = with_id(buf)?;
            Message::PingReq {
                target,
                probe_number,
            }
        }
        4 => {
            let (origin, probe_number) = with_id(buf)?;
            Message::IndirectPing {
                origin,
                probe_number,
            }
        }
        5 => {
            let (target, probe_number) = with_id(buf)?;
            Message::IndirectAck {
                target,
                probe_number,
            }
        }
        6 => {
            let (origin, probe_number) = with_id(buf)?;
            Message::ForwardedAck {
                origin,
                probe_number,
            }
        }
        7 => Message::Announce,
        8 => Message::Feed,
        9 => Message::Gossip,
        10 => Message::Broadcast,
        11 => Message::TurnUndead,
        _ => return Err(CodecError::Invalid("message tag")),
    })
}

pub(crate) fn header_len<M>(h: &Header<NodeIdentity<M>>) -> usize {
    MAGIC.len() + 1 + identity_len(&h.src) + 2 + identity_len(&h.dst) + message_len(&h.message)
}

pub(crate) fn member_len<M>(m: &Member<NodeIdentity<M>>) -> usize {
    identity_len(m.id()) + 2 + 1
}

impl<M: DeserializeOwned> foca::Codec<NodeIdentity<M>> for WireCodec<M> {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<NodeIdentity<M>>,
        mut buf: impl BufMut,
    ) -> Result<(), CodecError> {
        if buf.remaining_mut() < header_len(header) {
            return Err(CodecError::NoRoom);
        }
        buf.put_slice(&MAGIC);
        buf.put_u8(VERSION);
        put_identity(&header.src, &mut buf);
        buf.put_u16(header.src_incarnation);
        put_identity(&header.dst, &mut buf);
        put_message(&header.message, &mut buf);
        Ok(())
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<NodeIdentity<M>>, CodecError> {
        need(&buf, MAGIC.len() + 1)?;
        let mut magic = [0u8; 2];
        buf.copy_to_slice(&mut magic);
        if magic != MAGIC || buf.get_u8() != VERSION {
            return Err(CodecError::BadMagic);
        }
        let src = get_identity(&mut buf)?;
        need(&buf, 2)?;
        let src_incarnation = buf.get_u16();
        let dst = get_identity(&mut buf)?;
        let message = get_message(&mut buf)?;
        Ok(Header {
            src,
            src_incarnation,
            dst,
            message,
        })
    }

    fn encode_member(
        &mut self,
        member: &Member<NodeIdentity<M>>,
        mut buf: impl BufMut,
    ) -> Result<(), CodecError> {
        // foca requires a clean buffer when the item does not fit.
        if buf.remaining_mut() < member_len(member) {
            return Err(CodecError::NoRoom);
        }
        put_identity(member.id(), &mut buf);
        buf.put_u16(member.incarnation());
        buf.put_u8(match member.state() {
            State::Alive => 1,
            State::Suspect => 2,
            State::Down => 3,
        });
        Ok(())
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<NodeIdentity<M>>, CodecError> {
        let id = get_identity(&mut buf)?;
        need(&buf, 3)?;
        let incarnation = buf.get_u16();
        let state = match buf.get_u8() {
            1 => State::Alive,
            2 => State::Suspect,
            3 => State::Down,
            _ => return Err(CodecError::Invalid("member state")),
        };
        Ok(Member::new(id, incarnation, state))
    }
}

/// A decoded packet, as the engine inspects it before handing it to foca.
pub(crate) struct Parsed<M> {
    pub(crate) header: Header<NodeIdentity<M>>,
    pub(crate) updates: Vec<Member<NodeIdentity<M>>>,
    /// Byte offset where custom broadcasts start (end of the updates).
    pub(crate) tail_at: usize,
}

/// Parse a whole packet with foca's framing. Used for inspection only; foca
/// parses again, so a mismatch can only make foca reject what we accepted.
pub(crate) fn parse_packet<M: DeserializeOwned>(data: &[u8]) -> Result<Parsed<M>, CodecError> {
    use foca::Codec;
    let mut codec = WireCodec::<M>::new();
    let mut cur = data;
    let header = codec.decode_header(&mut cur)?;
    let mut updates = Vec::new();
    // Same rule as foca's `handle_data`, so we inspect exactly what it applies.
    if cur.len() >= 2 && header.message != Message::Broadcast {
        let count = cur.get_u16();
        // Each member takes at least 18 bytes; refuse absurd counts early.
        if usize::from(count) > cur.len() / 18 + 1 {
            return Err(CodecError::Invalid("member count"));
        }
        updates.reserve(usize::from(count));
        for _ in 0..count {
            updates.push(codec.decode_member(&mut cur)?);
        }
    }
    Ok(Parsed {
        header,
        updates,
        tail_at: data.len() - cur.len(),
    })
}

/// Re-frame a packet after the engine removed some updates from it.
pub(crate) fn reencode_packet<M: DeserializeOwned>(
    parsed: &Parsed<M>,
    tail: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    use foca::Codec;
    let mut codec = WireCodec::<M>::new();
    out.clear();
    codec.encode_header(&parsed.header, &mut *out)?;
    out.put_u16(u16::try_from(parsed.updates.len()).map_err(|_| CodecError::NoRoom)?);
    for m in &parsed.updates {
        codec.encode_member(m, &mut *out)?;
    }
    out.put_slice(tail);
    Ok(())
}

/// Encode the "node left" custom broadcast.
pub(crate) fn encode_leave(node_id: &str, generation: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + node_id.len() + 8);
    out.put_u8(BROADCAST_LEAVE);
    out.put_u8(node_id.len() as u8);
    out.put_slice(node_id.as_bytes());
    out.put_u64(generation);
    out
}

/// Decode the "node left" custom broadcast.
pub(crate) fn decode_leave(mut data: &[u8]) -> Result<(String, u64), CodecError> {
    need(&data, 2)?;
    if data.get_u8() != BROADCAST_LEAVE {
        return Err(CodecError::Invalid("broadcast tag"));
    }
    let len = usize::from(data.get_u8());
    need(&data, len + 8)?;
    let mut id = vec![0u8; len];
    data.copy_to_slice(&mut id);
    let generation = data.get_u64();
    if data.has_remaining() {
        return Err(CodecError::Invalid("trailing bytes in broadcast"));
    }
    let id = String::from_utf8(id).map_err(|_| CodecError::Invalid("node id utf8"))?;
    Ok((id, generation))
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Codec;

    fn ident(node_id: &str) -> NodeIdentity<String> {
        NodeIdentity::new(
            node_id.into(),
            7,
            "127.0.0.2:6000".parse().expect("literal"),
        )
    }

    #[test]
    fn meta_roundtrip_and_every_truncation_is_an_error() {
        let id = ident("n1");
        let json = serde_json::to_vec("role-a").expect("string");
        let data = encode_meta(&id, &json, true);
        assert_eq!(data.len(), meta_packet_len(&id, &json));
        let back = decode_meta::<String>(&data).expect("valid");
        assert_eq!(
            (back.id.clone(), back.meta.as_str(), back.reply_wanted),
            (id.clone(), "role-a", true)
        );
        assert!(!back.members_wanted);
        // The pull's flag rides in the same byte: an engine that reads only the first bit
        // (`reply_wanted`) sees a plain metadata packet.
        let pull = encode_meta_flags(&id, &json, false, true);
        assert_eq!(pull.len(), data.len());
        let back = decode_meta::<String>(&pull).expect("valid");
        assert!(back.members_wanted && !back.reply_wanted);
        assert_eq!(pull[META_MAGIC.len()] & META_REPLY_WANTED, 0);
        for cut in 0..data.len() {
            assert!(decode_meta::<String>(&data[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = data.clone();
        long.push(0);
        assert!(decode_meta::<String>(&long).is_err());
    }

    #[test]
    fn list_roundtrip_and_every_truncation_is_an_error() {
        use foca::Codec as _;
        let mut codec = WireCodec::<String>::new();
        let mut data = LIST_MAGIC.to_vec();
        data.put_u16(2);
        let members = [Member::alive(ident("a")), Member::alive(ident("b"))];
        for m in &members {
            codec.encode_member(m, &mut data).expect("room");
        }
        let back = decode_list::<String>(&data).expect("valid");
        assert_eq!(back.as_slice(), members.as_slice());
        for cut in 0..data.len() {
            assert!(decode_list::<String>(&data[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = data.clone();
        long.push(0);
        assert!(decode_list::<String>(&long).is_err());
    }

    #[test]
    fn header_roundtrip_and_every_truncation_is_an_error() {
        let mut codec = WireCodec::<String>::new();
        let header = Header {
            src: ident("a"),
            src_incarnation: 3,
            dst: ident("b"),
            message: Message::PingReq {
                target: ident("c"),
                probe_number: 9,
            },
        };
        let mut buf = Vec::new();
        codec.encode_header(&header, &mut buf).expect("fits");
        assert_eq!(buf.len(), header_len(&header));
        let back = codec.decode_header(&buf[..]).expect("decodes");
        assert_eq!(back, header);
        for cut in 0..buf.len() {
            assert!(codec.decode_header(&buf[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn note_roundtrip_and_every_truncation_is_an_error() {
        let data = encode_note("node-a", 42, 7, b"hello");
        let want = NoteWire {
            node_id: "node-a".into(),
            generation: 42,
            version: 7,
            data: b"hello".to_vec(),
        };
        assert_eq!(decode_note(&data, 64).expect("valid"), want);
        for cut in 0..data.len() {
            assert!(decode_note(&data[..cut], 64).is_err(), "cut at {cut}");
        }
        assert!(decode_note(&data, 4).is_err(), "over the bound");
        let mut long = data.clone();
        long.push(0);
        assert!(decode_note(&long, 64).is_err());
        assert!(is_note(&data) && !is_note(&encode_leave("a", 1)));
    }

    #[test]
    fn leave_roundtrip() {
        let data = encode_leave("node-a", 42);
        assert_eq!(decode_leave(&data).expect("valid"), ("node-a".into(), 42));
        assert!(decode_leave(&data[..data.len() - 1]).is_err());
    }
}
