//! What every answer is stamped with, in its trailing metadata (in the headers of a
//! trailers-only answer): the variant that served it, the model version and the sha256 of that
//! version's model file, and the route's revision — so an answer can be traced to the exact
//! artifact and configuration. Built once per snapshot, so stamping allocates nothing.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

pub const VARIANT: HeaderName = HeaderName::from_static("x-gateway-variant");
pub const MODEL_VERSION: HeaderName = HeaderName::from_static("x-gateway-model-version");
pub const MODEL_SHA256: HeaderName = HeaderName::from_static("x-gateway-model-sha256");
pub const ROUTE_REVISION: HeaderName = HeaderName::from_static("x-gateway-route-revision");

/// The stamp as headers, and as the bytes that add it to a stream answer's parameters.
#[derive(Debug, Default)]
pub struct Stamp(Vec<(HeaderName, HeaderValue)>, Bytes);

impl Stamp {
    /// Empty parts are left out (a model whose file the control plane does not know has no
    /// sha256; a request no traffic route covers has no variant or revision).
    pub fn new(variant: &str, version: &str, sha256: &str, revision: Option<u64>) -> Stamp {
        let mut headers = Vec::with_capacity(4);
        for (name, value) in [(VARIANT, variant), (MODEL_VERSION, version), (MODEL_SHA256, sha256)] {
            if let (false, Ok(value)) = (value.is_empty(), HeaderValue::from_str(value)) {
                headers.push((name, value));
            }
        }
        if let Some(revision) = revision {
            headers.push((ROUTE_REVISION, HeaderValue::from(revision)));
        }
        let parameters = stream_parameters(&headers);
        Stamp(headers, parameters)
    }

    /// A stream answer (a plain ModelStreamInferResponse frame) with the stamp in its
    /// `infer_response.parameters`, under the header names; a compressed frame as it is.
    pub fn stream_answer(&self, frame: Bytes) -> Bytes {
        if frame.first() != Some(&0) || self.1.is_empty() {
            return frame;
        }
        crate::wire::appending(&frame, &self.1)
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.0 {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// `infer_response { parameters { key: name value { string_param: value } } ... }` as the
/// bytes of a ModelStreamInferResponse field: appended to a message, a parser merges it into
/// the answer it carries (embedded messages merge, maps add entries).
fn stream_parameters(headers: &[(HeaderName, HeaderValue)]) -> Bytes {
    let mut parameters = Vec::new();
    for (name, value) in headers {
        let mut string_param = Vec::new();
        crate::wire::put_bytes(&mut string_param, 3, value.as_bytes());
        let mut entry = Vec::new();
        crate::wire::put_bytes(&mut entry, 1, name.as_str().as_bytes());
        crate::wire::put_bytes(&mut entry, 2, &string_param);
        crate::wire::put_bytes(&mut parameters, 4, &entry);
    }
    if parameters.is_empty() {
        return Bytes::new();
    }
    let mut field = Vec::new();
    crate::wire::put_bytes(&mut field, 2, &parameters);
    Bytes::from(field)
}

#[cfg(test)]
mod tests {
    use super::Stamp;
    use http::HeaderMap;

    #[test]
    fn empty_parts_are_left_out() {
        let mut headers = HeaderMap::new();
        Stamp::new("2", "2", "", Some(7)).apply(&mut headers);
        assert_eq!(headers.len(), 3);
        assert_eq!(headers["x-gateway-route-revision"], "7");
        assert!(!headers.contains_key("x-gateway-model-sha256"));
        assert!(Stamp::new("", "", "", None).0.is_empty());
    }

    #[test]
    fn stream_answers_carry_it_in_their_parameters() {
        let stamp = Stamp::new("2", "2", "", Some(7));
        let answer = crate::wire::stream_response(b"\x0a\x01m\x1a\x02id");
        let stamped = stamp.stream_answer(answer.clone());
        assert_eq!(crate::wire::stream_response_key(&stamped), ("m", "id"));
        assert_eq!(
            crate::wire::stream_answer_parameter(&stamped, "x-gateway-variant").as_deref(),
            Some("2")
        );
        assert_eq!(
            crate::wire::stream_answer_parameter(&stamped, "x-gateway-route-revision").as_deref(),
            Some("7")
        );
        assert!(stamped.starts_with(&[0]) && stamped.len() > answer.len());
    }
}
