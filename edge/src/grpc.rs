//! The gRPC rules the edge enforces before a request goes anywhere: request headers a backend
//! would choke on, and the length-prefixed framing of a unary request. Each refusal carries
//! the status and message a Triton server gives for the same bytes, so a client cannot tell
//! the edge's answer from Triton's.

use crate::body::Upstream;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use std::time::Duration;

/// gRPC status codes the edge answers with.
pub mod code {
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
}

/// A request refused by the edge itself, answered trailers-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u32,
    pub message: String,
}

impl Refusal {
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    pub fn response<B: From<Upstream>>(&self) -> Response<B> {
        trailers_only(self.code, &self.message)
    }
}

/// A trailers-only gRPC answer (status in the headers, no body).
pub fn trailers_only<B: From<Upstream>>(code: u32, message: &str) -> Response<B> {
    let mut response = Response::new(B::from(Upstream::Empty));
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(code));
    if !message.is_empty() {
        headers.insert("grpc-message", percent_encode(message));
    }
    response
}

/// grpc-message is percent-encoded (gRPC's HTTP/2 spec): every byte outside printable ASCII,
/// and '%' itself.
fn percent_encode(message: &str) -> HeaderValue {
    let mut encoded = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Compression algorithms Triton's gRPC server decodes.
const KNOWN_ENCODINGS: [&[u8]; 3] = [b"identity", b"gzip", b"deflate"];

/// A request header Triton answers by resetting the stream (RST_STREAM INTERNAL_ERROR):
/// the edge resets it too, and never forwards it.
#[derive(Debug, PartialEq, Eq)]
pub struct BadHeader(pub &'static str);

impl std::fmt::Display for BadHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed {} header", self.0)
    }
}

impl std::error::Error for BadHeader {}

/// Checks (and normalises) the headers of a request before it is forwarded anywhere.
///
/// A `grpc-timeout` is parsed as the gRPC spec says (1 to 8 digits and a unit); a valid one is
/// passed on as the client sent it, but one past [`MAX_TIMEOUT`] is clamped to it. A malformed
/// `grpc-timeout` or an unknown `grpc-encoding` is answered as Triton answers it, by resetting
/// the stream. Never forwarding them keeps one client's bad header off the upstream connection
/// other clients share.
pub fn check_headers(headers: &mut HeaderMap) -> Result<(), BadHeader> {
    if let Some(value) = headers.get("grpc-timeout") {
        match parse_timeout(value.as_bytes()) {
            Some(timeout) if timeout > MAX_TIMEOUT => {
                headers.insert("grpc-timeout", HeaderValue::from_static(MAX_TIMEOUT_HEADER));
            }
            Some(_) => {}
            None => return Err(BadHeader("grpc-timeout")),
        }
    }
    if let Some(value) = headers.get("grpc-encoding") {
        if !KNOWN_ENCODINGS.contains(&value.as_bytes()) {
            return Err(BadHeader("grpc-encoding"));
        }
    }
    Ok(())
}

/// gRPC's default hard limit on a request's metadata, which Triton's server keeps: more is
/// refused with RESOURCE_EXHAUSTED. The edge refuses it the same way before forwarding, as
/// Triton's answer to a forwarded call past it is not reliable (over one connection Triton
/// refuses one such call and serves the next).
pub const TRITON_METADATA_LIMIT: usize = 16 * 1024;

/// Refuses a call whose metadata gRPC would count past [`TRITON_METADATA_LIMIT`]: every
/// header, pseudo-headers included, counts its name, its value and 32 bytes (HPACK's entry
/// overhead). Triton's message goes on to list the headers it had read; that list is left out.
pub fn check_metadata_size(parts: &http::request::Parts) -> Result<(), Refusal> {
    const OVERHEAD: usize = 32;
    let pseudo = [
        (
            ":path",
            parts.uri.path_and_query().map_or(0, |path| path.as_str().len()),
        ),
        (
            ":authority",
            parts.uri.authority().map_or(0, |authority| authority.as_str().len()),
        ),
        (":method", parts.method.as_str().len()),
        (":scheme", parts.uri.scheme_str().map_or(0, str::len)),
    ];
    let size = pseudo
        .iter()
        .map(|(name, length)| name.len() + length + OVERHEAD)
        .chain(
            parts
                .headers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len() + OVERHEAD),
        )
        .sum::<usize>();
    if size <= TRITON_METADATA_LIMIT {
        return Ok(());
    }
    let message = format!("received metadata size exceeds hard limit ({size} vs. {TRITON_METADATA_LIMIT})");
    Err(Refusal::new(code::RESOURCE_EXHAUSTED, message))
}

/// The longest deadline forwarded: beyond it a deadline means "none" in practice, and a
/// larger one overflows the deadline arithmetic of some gRPC servers (an answer of
/// DEADLINE_EXCEEDED at once). 99,999,999 seconds is over three years.
const MAX_TIMEOUT: Duration = Duration::from_secs(99_999_999);
const MAX_TIMEOUT_HEADER: &str = "99999999S";

/// A `grpc-timeout` value: `TimeoutValue TimeoutUnit`, the value at most 8 ASCII digits.
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// A `grpc-timeout` value for `timeout`, in the finest unit whose amount fits 8 digits.
pub fn encode_timeout(timeout: Duration) -> HeaderValue {
    const MAX_AMOUNT: u128 = 99_999_999;
    let (amount, unit) = if timeout.as_micros() <= MAX_AMOUNT {
        (timeout.as_micros(), 'u')
    } else if timeout.as_millis() <= MAX_AMOUNT {
        (timeout.as_millis(), 'm')
    } else if u128::from(timeout.as_secs()) <= MAX_AMOUNT {
        (u128::from(timeout.as_secs()), 'S')
    } else {
        ((u128::from(timeout.as_secs()) / 3600).min(MAX_AMOUNT), 'H')
    };
    HeaderValue::from_str(&format!("{amount}{unit}")).unwrap_or_else(|_| HeaderValue::from_static(MAX_TIMEOUT_HEADER))
}

/// What the edge can do with a unary request body, once the whole body is in.
#[derive(Debug, PartialEq, Eq)]
pub enum Framing {
    /// The first message is plain, or compressed with the request's `grpc-encoding` (the
    /// edge reads an inflated copy: see `compression`). As Triton does, bytes after it are
    /// ignored, and a compressed flag without a `grpc-encoding` is taken as plain.
    Readable,
    /// Flags no gRPC version defines: only a gRPC server can say what it makes of them.
    Opaque,
}

/// Triton's answer to a request it cannot parse (no message, or a truncated one).
pub const UNPARSABLE: &str = "Unable to parse request";

/// Checks that `body` starts with one whole length-prefixed message, as a unary call must.
pub fn check_unary_framing(body: &Bytes) -> Result<Framing, Refusal> {
    if body.len() < 5 {
        return Err(Refusal::new(code::INTERNAL, UNPARSABLE));
    }
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() - 5 < length {
        return Err(Refusal::new(code::INTERNAL, UNPARSABLE));
    }
    match body[0] {
        0 | 1 => Ok(Framing::Readable),
        _ => Ok(Framing::Opaque),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(flag: u8, message: &[u8]) -> Bytes {
        let mut out = vec![flag];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        Bytes::from(out)
    }

    #[test]
    fn metadata_is_counted_as_grpc_counts_it() {
        let request = |value_length: usize| {
            let (mut parts, ()) =
                http::Request::post("http://127.0.0.1:8001/inference.GRPCInferenceService/ModelInfer")
                    .header("x-big", "a".repeat(value_length))
                    .body(())
                    .unwrap()
                    .into_parts();
            parts.headers.insert("te", HeaderValue::from_static("trailers"));
            parts
        };
        // :path 5+42+32, :authority 10+14+32, :method 7+4+32, :scheme 7+4+32, te 2+8+32: 263
        let overhead = 263 + "x-big".len() + 32;
        assert!(check_metadata_size(&request(TRITON_METADATA_LIMIT - overhead)).is_ok());
        let refusal = check_metadata_size(&request(TRITON_METADATA_LIMIT - overhead + 1)).unwrap_err();
        assert_eq!(refusal.code, code::RESOURCE_EXHAUSTED);
        assert_eq!(
            refusal.message,
            "received metadata size exceeds hard limit (16385 vs. 16384)"
        );
    }

    #[test]
    fn timeouts_encode_in_the_finest_unit_that_fits() {
        assert_eq!(encode_timeout(Duration::from_micros(1500)), "1500u");
        assert_eq!(encode_timeout(Duration::from_secs(1000)), "1000000m");
        assert_eq!(encode_timeout(Duration::from_secs(99_999_999)), "99999999S");
        assert_eq!(encode_timeout(Duration::from_secs(u64::MAX / 2)), "99999999H");
        for value in ["1500u", "1000000m", "99999999S"] {
            let parsed = parse_timeout(value.as_bytes()).unwrap();
            assert_eq!(encode_timeout(parsed), value);
        }
    }

    #[test]
    fn timeouts_parse_as_the_spec_says() {
        assert_eq!(parse_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(
            parse_timeout(b"99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        assert_eq!(parse_timeout(b"999999999S"), None, "nine digits");
        assert_eq!(parse_timeout(b"S"), None);
        assert_eq!(parse_timeout(b"abc"), None);
        assert_eq!(parse_timeout(b"10x"), None);
        assert_eq!(parse_timeout(b"-1S"), None);
    }

    #[test]
    fn huge_timeouts_are_clamped_and_bad_ones_refused() {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", HeaderValue::from_static("2562047H"));
        assert!(check_headers(&mut headers).is_ok());
        assert_eq!(headers["grpc-timeout"], MAX_TIMEOUT_HEADER);
        headers.insert("grpc-timeout", HeaderValue::from_static("5S"));
        assert!(check_headers(&mut headers).is_ok());
        assert_eq!(headers["grpc-timeout"], "5S");
        headers.insert("grpc-timeout", HeaderValue::from_static("abc"));
        assert_eq!(check_headers(&mut headers), Err(BadHeader("grpc-timeout")));
    }

    #[test]
    fn unknown_encodings_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-encoding", HeaderValue::from_static("gzip"));
        assert!(check_headers(&mut headers).is_ok());
        headers.insert("grpc-encoding", HeaderValue::from_static("bogus"));
        assert_eq!(check_headers(&mut headers), Err(BadHeader("grpc-encoding")));
    }

    #[test]
    fn framing_is_read_as_triton_reads_it() {
        assert_eq!(check_unary_framing(&frame(0, b"abc")), Ok(Framing::Readable));
        assert_eq!(check_unary_framing(&frame(1, b"abc")), Ok(Framing::Readable));
        assert_eq!(check_unary_framing(&frame(2, b"abc")), Ok(Framing::Opaque));
        let unparsable = Err(Refusal::new(code::INTERNAL, UNPARSABLE));
        assert_eq!(check_unary_framing(&Bytes::new()), unparsable);
        assert_eq!(check_unary_framing(&Bytes::from_static(b"\0\0\0")), unparsable);
        let mut long = frame(0, b"abc").to_vec();
        long[4] = 9; // says 9 bytes, carries 3
        assert_eq!(check_unary_framing(&Bytes::from(long)), unparsable);
        let mut two = frame(0, b"abc").to_vec();
        two.extend_from_slice(&frame(0, b"d"));
        assert_eq!(check_unary_framing(&Bytes::from(two)), Ok(Framing::Readable));
    }

    #[test]
    fn messages_are_percent_encoded() {
        let response: Response<Upstream> = trailers_only(3, "50% é\n");
        assert_eq!(response.headers()["grpc-message"], "50%25 %C3%A9%0A");
        assert_eq!(response.headers()["grpc-status"], "3");
    }
}
