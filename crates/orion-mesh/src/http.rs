//! The one change the mesh makes to HTTP: every request head of a connection gets the
//! client's address in `X-Forwarded-For` and `Forwarded` (RFC 7239). Existing values are kept
//! and the client's address appended, as a proxy in a chain does. `RequestStream` follows the
//! requests of a keep-alive connection in turn: a head, then the body its `Content-Length` or
//! chunked `Transfer-Encoding` frames (RFC 9112 section 6), then the next head. After a
//! `CONNECT` or an `Upgrade` request the rest of the connection is passed through untouched.
//! Pure: bytes in, bytes out; every line it buffers is bounded.

use std::net::SocketAddr;

/// Headers a request head may carry; more answers 431.
pub const HEADERS_MAX: usize = 100;
/// A chunk-size line or trailer line longer than this ends the connection. A size line is
/// at most 16 hex digits plus extensions; hyper and nginx bound these lines at a few KiB too.
pub const LINE_BYTES_MAX: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not an HTTP/1 request head, or a body framing that cannot be followed safely: an
    /// unknown transfer coding, `Content-Length` values that disagree or come with
    /// `Transfer-Encoding` (request smuggling), a bad chunk (answered 400 on a connection's
    /// first request; later, the connection is closed).
    #[error("malformed request")]
    Malformed,
    /// Over `HEADERS_MAX` headers (answered 431).
    #[error("too many request headers")]
    TooManyHeaders,
}

/// How the body after a head is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Exactly this many bytes (0: no body, as for a request without either header).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// `CONNECT` or an upgrade: whatever follows is not HTTP/1 requests.
    Opaque,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The first `len` bytes of the input are the head...
    pub len: usize,
    /// ...to be replaced by these, which carry the client's address.
    pub rewritten: Vec<u8>,
    pub body: Body,
}

/// Parses the request head at the start of `buf`. `Ok(None)`: incomplete, read more.
pub fn parse_head(buf: &[u8], client: SocketAddr) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Malformed),
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed);
    };
    let body = body_framing(method, req.headers)?;
    let ip = client.ip();
    let xff = ip.to_string();
    // RFC 7239: an IPv6 address is quoted and bracketed.
    let fwd = match ip {
        std::net::IpAddr::V4(v4) => format!("for={v4}"),
        std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
    };
    let mut out = Vec::with_capacity(len + 96);
    out.extend_from_slice(format!("{method} {path} HTTP/1.{version}\r\n").as_bytes());
    let (mut saw_xff, mut saw_fwd) = (false, false);
    for h in req.headers.iter() {
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        if h.name.eq_ignore_ascii_case("x-forwarded-for") && !saw_xff {
            saw_xff = true;
            out.extend_from_slice(b", ");
            out.extend_from_slice(xff.as_bytes());
        } else if h.name.eq_ignore_ascii_case("forwarded") && !saw_fwd {
            saw_fwd = true;
            out.extend_from_slice(b", ");
            out.extend_from_slice(fwd.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    if !saw_xff {
        out.extend_from_slice(format!("X-Forwarded-For: {xff}\r\n").as_bytes());
    }
    if !saw_fwd {
        out.extend_from_slice(format!("Forwarded: {fwd}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(Head {
        len,
        rewritten: out,
        body,
    }))
}

/// The comma-separated tokens of a header value, trimmed, empty ones left out.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// RFC 9112 section 6: how a request's body is framed, or `Malformed` when a proxy cannot
/// tell safely (the next request would be found in the wrong place).
fn body_framing(method: &str, headers: &[httparse::Header<'_>]) -> Result<Body, HeadError> {
    let mut length: Option<u64> = None;
    let mut last_coding: Option<&[u8]> = None;
    let (mut upgrade, mut connection_upgrade) = (false, false);
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let mut any = false;
            for t in tokens(h.value) {
                any = true;
                // 19 digits always fit a u64.
                if t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
                    return Err(HeadError::Malformed);
                }
                let n: u64 = std::str::from_utf8(t)
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .ok_or(HeadError::Malformed)?;
                if length.is_some_and(|l| l != n) {
                    return Err(HeadError::Malformed);
                }
                length = Some(n);
            }
            if !any {
                return Err(HeadError::Malformed);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            last_coding = Some(tokens(h.value).last().ok_or(HeadError::Malformed)?);
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        } else if name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"upgrade"));
        }
    }
    if method.eq_ignore_ascii_case("CONNECT") || (upgrade && connection_upgrade) {
        return Ok(Body::Opaque);
    }
    match (last_coding, length) {
        (Some(_), Some(_)) => Err(HeadError::Malformed),
        (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(Body::Chunked),
        (Some(_), None) => Err(HeadError::Malformed),
        (None, l) => Ok(Body::Length(l.unwrap_or(0))),
    }
}

/// Where a connection's request stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for (the rest of) a request head.
    Head,
    /// This many body bytes still to pass.
    Length(u64),
    /// A chunk-size line next.
    ChunkSize,
    /// This many bytes of chunk data still to pass.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// Trailer lines after the last chunk, this many so far.
    Trailer(usize),
    /// Untouched to the end.
    Opaque,
}

/// The requests of one client connection, in turn: each head rewritten, each body passed
/// through as it is framed.
#[derive(Debug, Clone)]
pub struct RequestStream {
    client: SocketAddr,
    state: State,
}

impl RequestStream {
    pub fn new(client: SocketAddr) -> RequestStream {
        RequestStream {
            client,
            state: State::Head,
        }
    }

    /// Whether the next bytes are (the rest of) a request head: what the caller bounds in
    /// size and time.
    pub fn in_head(&self) -> bool {
        self.state == State::Head
    }

    /// Takes what it can from the start of `input` (the client's bytes not taken yet) and
    /// appends what goes to the endpoint to `out`. Returns the bytes taken; 0 when it needs
    /// more input (an incomplete head or line, or no input). An error leaves the stream
    /// unusable: the connection must end.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, HeadError> {
        if input.is_empty() {
            return Ok(0);
        }
        match self.state {
            State::Head => {
                let Some(head) = parse_head(input, self.client)? else {
                    return Ok(0);
                };
                out.extend_from_slice(&head.rewritten);
                self.state = match head.body {
                    Body::Length(0) => State::Head,
                    Body::Length(n) => State::Length(n),
                    Body::Chunked => State::ChunkSize,
                    Body::Opaque => State::Opaque,
                };
                Ok(head.len)
            }
            State::Length(left) => {
                let n = take(input, left, out);
                self.state = if n as u64 == left {
                    State::Head
                } else {
                    State::Length(left - n as u64)
                };
                Ok(n)
            }
            State::ChunkSize => {
                let Some(line) = line(input)? else {
                    return Ok(0);
                };
                let size = chunk_size(&line[..line.len() - 2])?;
                out.extend_from_slice(line);
                self.state = if size == 0 {
                    State::Trailer(0)
                } else {
                    State::ChunkData(size)
                };
                Ok(line.len())
            }
            State::ChunkData(left) => {
                let n = take(input, left, out);
                self.state = if n as u64 == left {
                    State::ChunkEnd
                } else {
                    State::ChunkData(left - n as u64)
                };
                Ok(n)
            }
            State::ChunkEnd => match input {
                [b'\r'] => Ok(0),
                [b'\r', b'\n', ..] => {
                    out.extend_from_slice(b"\r\n");
                    self.state = State::ChunkSize;
                    Ok(2)
                }
                _ => Err(HeadError::Malformed),
            },
            State::Trailer(lines) => {
                let Some(line) = line(input)? else {
                    return Ok(0);
                };
                out.extend_from_slice(line);
                self.state = if line.len() == 2 {
                    State::Head
                } else if lines >= HEADERS_MAX {
                    return Err(HeadError::TooManyHeaders);
                } else {
                    State::Trailer(lines + 1)
                };
                Ok(line.len())
            }
            State::Opaque => {
                out.extend_from_slice(input);
                Ok(input.len())
            }
        }
    }
}

/// Passes up to `left` bytes of `input` to `out`; returns how many.
fn take(input: &[u8], left: u64, out: &mut Vec<u8>) -> usize {
    let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
    out.extend_from_slice(&input[..n]);
    n
}

/// The CRLF-terminated line at the start of `input`, with its CRLF; `None` if it is not
/// complete yet. A bare LF or a line over `LINE_BYTES_MAX` is `Malformed`.
fn line(input: &[u8]) -> Result<Option<&[u8]>, HeadError> {
    let window = &input[..input.len().min(LINE_BYTES_MAX)];
    match window.iter().position(|b| *b == b'\n') {
        Some(i) if i >= 1 && window[i - 1] == b'\r' => Ok(Some(&window[..=i])),
        Some(_) => Err(HeadError::Malformed),
        None if input.len() >= LINE_BYTES_MAX => Err(HeadError::Malformed),
        None => Ok(None),
    }
}

/// A chunk-size line without its CRLF: hex digits, then optional extensions after `;`.
fn chunk_size(line: &[u8]) -> Result<u64, HeadError> {
    let digits = line
        .split(|b| *b == b';')
        .next()
        .unwrap_or(&[])
        .trim_ascii();
    if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(HeadError::Malformed);
    }
    let digits = std::str::from_utf8(digits).map_err(|_| HeadError::Malformed)?;
    u64::from_str_radix(digits, 16).map_err(|_| HeadError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn client() -> SocketAddr {
        "192.0.2.7:5555".parse().unwrap()
    }

    const XFF: &str = "X-Forwarded-For: 192.0.2.7\r\nForwarded: for=192.0.2.7\r\n";

    fn check(input: &str, want: Result<Option<(&str, Body)>, HeadError>) {
        let got = parse_head(input.as_bytes(), client())
            .map(|r| r.map(|h| (h.len, String::from_utf8(h.rewritten).unwrap(), h.body)));
        match (got, want) {
            (Ok(Some((len, out, body))), Ok(Some((want, want_body)))) => {
                assert_eq!(out, want);
                assert_eq!(body, want_body, "{input:?}");
                assert_eq!(&input[len..], input.split_once("\r\n\r\n").unwrap().1);
            }
            (Ok(None), Ok(None)) => {}
            (Err(e), Err(w)) => assert_eq!(e, w),
            (got, want) => panic!("input {input:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn heads() {
        check(
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            Ok(Some((
                "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 192.0.2.7\r\nForwarded: for=192.0.2.7\r\n\r\n",
                Body::Length(0),
            ))),
        );
        check(
            "POST /x?y=1 HTTP/1.0\r\nx-forwarded-for: 10.0.0.1\r\nForwarded: for=10.0.0.1\r\n\r\nbody",
            Ok(Some((
                "POST /x?y=1 HTTP/1.0\r\nx-forwarded-for: 10.0.0.1, 192.0.2.7\r\nForwarded: for=10.0.0.1, for=192.0.2.7\r\n\r\n",
                Body::Length(0),
            ))),
        );
        check("GET / HTTP/1.1\r\nHost: a\r\n", Ok(None));
        check("", Ok(None));
        check("\u{1}GET / HTTP/1.1\r\n\r\n", Err(HeadError::Malformed));
        check("GET / HTTP/2.0\r\n\r\n", Err(HeadError::Malformed));
        let many: String = (0..=HEADERS_MAX).map(|i| format!("h{i}: v\r\n")).collect();
        check(
            &format!("GET / HTTP/1.1\r\n{many}\r\n"),
            Err(HeadError::TooManyHeaders),
        );
    }

    /// One row: the request head's framing headers and the body framing (or error) expected.
    fn framing(headers: &str, want: Result<Body, HeadError>) {
        let input = format!("POST / HTTP/1.1\r\n{headers}\r\n");
        let got = parse_head(input.as_bytes(), client()).map(|h| h.unwrap().body);
        assert_eq!(got, want, "{headers:?}");
    }

    #[test]
    fn bodies_are_framed_as_rfc_9112_says_or_refused() {
        use Body::*;
        framing("", Ok(Length(0)));
        framing("Content-Length: 12\r\n", Ok(Length(12)));
        framing(
            "content-length: 5, 5\r\nContent-Length: 5\r\n",
            Ok(Length(5)),
        );
        framing("Transfer-Encoding: chunked\r\n", Ok(Chunked));
        framing("Transfer-Encoding: gzip, Chunked\r\n", Ok(Chunked));
        framing(
            "Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n",
            Ok(Opaque),
        );
        // Upgrade without Connection: upgrade is not an upgrade.
        framing("Upgrade: websocket\r\nContent-Length: 1\r\n", Ok(Length(1)));
        framing(
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            Err(HeadError::Malformed),
        );
        framing("Content-Length: -1\r\n", Err(HeadError::Malformed));
        framing("Content-Length: +1\r\n", Err(HeadError::Malformed));
        framing("Content-Length: \r\n", Err(HeadError::Malformed));
        framing(
            "Content-Length: 99999999999999999999\r\n",
            Err(HeadError::Malformed),
        );
        // Smuggling: both framings, or a coding that does not end in chunked.
        framing(
            "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
            Err(HeadError::Malformed),
        );
        framing(
            "Transfer-Encoding: chunked, gzip\r\n",
            Err(HeadError::Malformed),
        );
        framing("Transfer-Encoding: \r\n", Err(HeadError::Malformed));
        let connect = parse_head(b"CONNECT a:443 HTTP/1.1\r\n\r\n", client());
        assert_eq!(connect.unwrap().unwrap().body, Opaque);
    }

    /// Feeds `input` in pieces of `piece` bytes, as reads would deliver it; returns what went
    /// upstream and the error that ended the stream, if any.
    fn stream(input: &[u8], piece: usize) -> (String, Option<HeadError>) {
        let mut s = RequestStream::new(client());
        let (mut pending, mut out) = (Vec::new(), Vec::new());
        for part in input.chunks(piece.max(1)) {
            pending.extend_from_slice(part);
            loop {
                match s.feed(&pending, &mut out) {
                    Ok(0) => break,
                    Ok(n) => drop(pending.drain(..n)),
                    Err(e) => return (String::from_utf8(out).unwrap(), Some(e)),
                }
            }
        }
        (String::from_utf8(out).unwrap(), None)
    }

    /// The regression of issue 12: only the first request of a keep-alive connection got
    /// the headers.
    #[test]
    fn every_request_of_a_keep_alive_connection_gets_x_forwarded_for() {
        let input = concat!(
            "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n",
            "POST /2 HTTP/1.1\r\nContent-Length: 22\r\n\r\n",
            "GET /fake HTTP/1.1\r\n\r\n", // a body that looks like a head: not rewritten
            "POST /3 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "4;ext=1\r\nGET \r\n1B\r\n/fake HTTP/1.1\r\nHost: b\r\n\r\n\r\n0\r\nT: v\r\n\r\n",
            "GET /4 HTTP/1.1\r\n\r\n",
        );
        let want = [
            "GET /1 HTTP/1.1\r\nHost: a\r\n",
            XFF,
            "\r\n",
            "POST /2 HTTP/1.1\r\nContent-Length: 22\r\n",
            XFF,
            "\r\nGET /fake HTTP/1.1\r\n\r\n",
            "POST /3 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n",
            XFF,
            "\r\n4;ext=1\r\nGET \r\n1B\r\n/fake HTTP/1.1\r\nHost: b\r\n\r\n\r\n0\r\nT: v\r\n\r\n",
            "GET /4 HTTP/1.1\r\n",
            XFF,
            "\r\n",
        ]
        .concat();
        // Whole, and split at every size a read could deliver.
        for piece in [input.len(), 1, 2, 3, 7, 16, 64] {
            assert_eq!(
                stream(input.as_bytes(), piece),
                (want.clone(), None),
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn unparseable_input_after_a_request_ends_the_stream() {
        let ok = format!("GET / HTTP/1.1\r\n{XFF}\r\n");
        for (input, err) in [
            (
                "GET / HTTP/1.1\r\n\r\n\x16\x03garbage\r\n\r\n",
                HeadError::Malformed,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                HeadError::Malformed,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc",
                HeadError::Malformed,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\nabc",
                HeadError::Malformed,
            ),
        ] {
            let (out, e) = stream(input.as_bytes(), input.len());
            assert_eq!(e, Some(err), "{input:?}");
            if input.starts_with("GET") {
                assert_eq!(out, ok);
            }
        }
        // A chunk-size line that never ends is bounded.
        let long = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            "0".repeat(LINE_BYTES_MAX)
        );
        assert_eq!(stream(long.as_bytes(), 100).1, Some(HeadError::Malformed));
        let trailers: String = (0..=HEADERS_MAX).map(|i| format!("t{i}: v\r\n")).collect();
        let many =
            format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n{trailers}\r\n");
        assert_eq!(
            stream(many.as_bytes(), 50).1,
            Some(HeadError::TooManyHeaders)
        );
    }

    #[test]
    fn after_an_upgrade_bytes_pass_untouched() {
        let input = "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET / HTTP/1.1\r\n\r\n\x00\x7f";
        let (out, e) = stream(input.as_bytes(), 5);
        assert_eq!(e, None);
        assert_eq!(
            out,
            format!(
                "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n{XFF}\r\nGET / HTTP/1.1\r\n\r\n\x00\x7f"
            )
        );
    }

    #[test]
    fn ipv6_client_is_quoted() {
        let c: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
        let head = parse_head(b"GET / HTTP/1.1\r\n\r\n", c).unwrap().unwrap();
        let out = String::from_utf8(head.rewritten).unwrap();
        assert!(out.contains("X-Forwarded-For: 2001:db8::1\r\n"), "{out}");
        assert!(
            out.contains("Forwarded: for=\"[2001:db8::1]\"\r\n"),
            "{out}"
        );
    }

    proptest! {
        /// Any bytes from a peer: an answer, never a panic; a complete head never claims
        /// more bytes than it was given.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(Some(head)) = parse_head(&bytes, client()) {
                prop_assert!(head.len <= bytes.len());
            }
            let mut s = RequestStream::new(client());
            let mut out = Vec::new();
            let mut at = 0;
            while let Ok(n) = s.feed(&bytes[at..], &mut out) {
                if n == 0 {
                    break;
                }
                at += n;
                prop_assert!(at <= bytes.len());
            }
        }

        /// Where reads split a connection's bytes changes nothing in what goes upstream.
        #[test]
        fn splits_do_not_change_the_stream(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..5),
            chunked in any::<bool>(),
            piece in 1usize..50,
        ) {
            let mut input = Vec::new();
            for b in &bodies {
                if chunked {
                    input.extend_from_slice(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
                    for c in b.chunks(7) {
                        input.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                        input.extend_from_slice(c);
                        input.extend_from_slice(b"\r\n");
                    }
                    input.extend_from_slice(b"0\r\n\r\n");
                } else {
                    input.extend_from_slice(format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", b.len()).as_bytes());
                    input.extend_from_slice(b);
                }
            }
            let run = |piece: usize| {
                let mut s = RequestStream::new(client());
                let (mut pending, mut out) = (Vec::new(), Vec::new());
                for part in input.chunks(piece) {
                    pending.extend_from_slice(part);
                    loop {
                        match s.feed(&pending, &mut out) {
                            Ok(0) => break,
                            Ok(n) => drop(pending.drain(..n)),
                            Err(e) => return Err(e),
                        }
                    }
                }
                Ok((out, pending.len(), s.in_head()))
            };
            let whole = run(input.len()).unwrap();
            prop_assert_eq!(whole.1, 0);
            prop_assert!(whole.2);
            let heads = whole.0.windows(16).filter(|w| *w == b"X-Forwarded-For:").count();
            prop_assert!(heads >= bodies.len());
            prop_assert_eq!(run(piece).unwrap(), whole);
        }

        #[test]
        fn heads_with_random_headers_parse_back(
            names in proptest::collection::vec("[a-zA-Z][a-zA-Z0-9-]{0,20}", 0..20),
            value in "[ -~]{0,40}",
        ) {
            let mut head = String::from("GET /p HTTP/1.1\r\n");
            let framing = ["content-length", "transfer-encoding", "upgrade", "connection"];
            for n in names.iter().filter(|n| !framing.iter().any(|f| n.eq_ignore_ascii_case(f))) {
                head.push_str(&format!("{n}: {}\r\n", value.trim()));
            }
            head.push_str("\r\n");
            let parsed = parse_head(head.as_bytes(), client()).unwrap().unwrap();
            prop_assert_eq!(parsed.len, head.len());
            let out = parsed.rewritten;
            let mut hs = [httparse::EMPTY_HEADER; HEADERS_MAX + 2];
            let mut req = httparse::Request::new(&mut hs);
            prop_assert!(matches!(req.parse(&out), Ok(httparse::Status::Complete(n)) if n == out.len()));
            let xff = req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for")).count();
            prop_assert!(xff >= 1);
        }
    }
}
