//! What every answer is stamped with, in its trailing metadata (in the headers of a
//! trailers-only answer): the variant that served it, the model version and the sha256 of that
//! version's model file, and the route's revision — so an answer can be traced to the exact
//! artifact and configuration. Built once per snapshot, so stamping allocates nothing.

use http::{HeaderMap, HeaderName, HeaderValue};

pub const VARIANT: HeaderName = HeaderName::from_static("x-gateway-variant");
pub const MODEL_VERSION: HeaderName = HeaderName::from_static("x-gateway-model-version");
pub const MODEL_SHA256: HeaderName = HeaderName::from_static("x-gateway-model-sha256");
pub const ROUTE_REVISION: HeaderName = HeaderName::from_static("x-gateway-route-revision");

#[derive(Debug, Default)]
pub struct Stamp(Vec<(HeaderName, HeaderValue)>);

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
        Stamp(headers)
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.0 {
            headers.insert(name.clone(), value.clone());
        }
    }
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
}
