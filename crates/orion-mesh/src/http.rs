//! The one change the mesh makes to HTTP: the first request head of a connection gets the
//! client's address in `X-Forwarded-For` and `Forwarded` (RFC 7239). Existing values are kept
//! and the client's address appended, as a proxy in a chain does. Pure: bytes in, bytes out.

use std::net::SocketAddr;

/// Headers a request head may carry; more answers 431.
pub const HEADERS_MAX: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not an HTTP/1 request head (answered 400).
    #[error("malformed request head")]
    Malformed,
    /// Over `HEADERS_MAX` headers (answered 431).
    #[error("too many request headers")]
    TooManyHeaders,
}

/// Parses the request head at the start of `buf`. `Ok(None)`: incomplete, read more.
/// `Ok(Some((head_len, rewritten)))`: the first `head_len` bytes are the head, to be replaced
/// by `rewritten`, which carries the client's address.
pub fn rewrite_head(buf: &[u8], client: SocketAddr) -> Result<Option<(usize, Vec<u8>)>, HeadError> {
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
    Ok(Some((len, out)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn client() -> SocketAddr {
        "192.0.2.7:5555".parse().unwrap()
    }

    fn check(input: &str, want: Result<Option<&str>, HeadError>) {
        let got = rewrite_head(input.as_bytes(), client())
            .map(|r| r.map(|(len, out)| (len, String::from_utf8(out).unwrap())));
        match (got, want) {
            (Ok(Some((len, out))), Ok(Some(want))) => {
                assert_eq!(out, want);
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
            Ok(Some(
                "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 192.0.2.7\r\nForwarded: for=192.0.2.7\r\n\r\n",
            )),
        );
        check(
            "POST /x?y=1 HTTP/1.0\r\nx-forwarded-for: 10.0.0.1\r\nForwarded: for=10.0.0.1\r\n\r\nbody",
            Ok(Some(
                "POST /x?y=1 HTTP/1.0\r\nx-forwarded-for: 10.0.0.1, 192.0.2.7\r\nForwarded: for=10.0.0.1, for=192.0.2.7\r\n\r\n",
            )),
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

    #[test]
    fn ipv6_client_is_quoted() {
        let c: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
        let (_, out) = rewrite_head(b"GET / HTTP/1.1\r\n\r\n", c).unwrap().unwrap();
        let out = String::from_utf8(out).unwrap();
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
            if let Ok(Some((len, _))) = rewrite_head(&bytes, client()) {
                prop_assert!(len <= bytes.len());
            }
        }

        #[test]
        fn heads_with_random_headers_parse_back(
            names in proptest::collection::vec("[a-zA-Z][a-zA-Z0-9-]{0,20}", 0..20),
            value in "[ -~]{0,40}",
        ) {
            let mut head = String::from("GET /p HTTP/1.1\r\n");
            for n in &names {
                head.push_str(&format!("{n}: {}\r\n", value.trim()));
            }
            head.push_str("\r\n");
            let (len, out) = rewrite_head(head.as_bytes(), client()).unwrap().unwrap();
            prop_assert_eq!(len, head.len());
            let mut hs = [httparse::EMPTY_HEADER; HEADERS_MAX + 2];
            let mut req = httparse::Request::new(&mut hs);
            prop_assert!(matches!(req.parse(&out), Ok(httparse::Status::Complete(n)) if n == out.len()));
            let xff = req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for")).count();
            prop_assert!(xff >= 1);
        }
    }
}
