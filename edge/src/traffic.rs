//! Traffic routes: a model name as clients send it, split among variants (model, version) by
//! weight, sticky per routing key, forced by a header or parameter for tests and debugging,
//! and optionally mirrored to a shadow variant.
//!
//! The choice is a pure function of the snapshot and the request (plus a random draw for
//! requests with no key), so every edge — every gateway replica — picks the same variant for
//! the same key with no state shared between them.

use crate::control::proto;
use crate::version;
use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Buckets a routing key hashes into; variants own contiguous runs of them, in order.
pub const BUCKETS: u32 = 10_000;
/// Header (and, as `FORCE_PARAMETER`, request parameter) naming the variant a request wants.
pub const FORCE_HEADER: &str = "x-gateway-variant";
pub const FORCE_PARAMETER: &str = "gateway_variant";

/// One variant of a route, with the buckets it owns: those below `bucket_end` and not below
/// the previous variant's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variant {
    pub name: Arc<str>,
    pub model: Arc<str>,
    /// "" = the model's latest.
    pub version: Arc<str>,
    pub weight: u32,
    pub bucket_end: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Shadow {
    pub target: Variant,
    pub fraction: f64,
    pub max_in_flight: usize,
    pub max_bytes_in_flight: usize,
    pub atol: f64,
    pub rtol: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TrafficRoute {
    pub name: Arc<str>,
    pub revision: u64,
    pub variants: Vec<Variant>,
    pub key_header: Option<HeaderName>,
    pub key_parameter: Option<String>,
    pub salt: Vec<u8>,
    pub shadow: Option<Shadow>,
    /// Requests naming a version go to this model (an alias route); None: unchanged.
    pub versioned_model: Option<Arc<str>>,
}

/// Where one request goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Selected<'a> {
    /// A variant of the split (or the forced one).
    Variant(&'a Variant),
    /// A request naming a version: to that version of `model`.
    Versioned { model: &'a str },
    /// The request forces a variant the route does not have.
    UnknownVariant(String),
}

/// What a request carries that the choice reads.
pub struct Request<'a> {
    pub headers: &'a HeaderMap,
    /// The plain ModelInferRequest frame (parameters are read from it only when needed).
    pub frame: &'a [u8],
    /// The version the request names ("" for none).
    pub version: &'a str,
    /// A sequence's id: its requests stay on one variant like a routing key's.
    pub sequence_id: Option<&'a str>,
}

impl TrafficRoute {
    pub fn from_proto(route: proto::TrafficRoute) -> Result<TrafficRoute, String> {
        let name = route.name;
        if name.is_empty() {
            return Err("a traffic route has no name".into());
        }
        let at = |what: String| format!("traffic route {name}: {what}");
        if route.variants.is_empty() {
            return Err(at("it has no variants".into()));
        }
        let total: u64 = route.variants.iter().map(|v| u64::from(v.weight)).sum();
        if total == 0 {
            return Err(at("the weights sum to zero".into()));
        }
        let mut variants: Vec<Variant> = Vec::with_capacity(route.variants.len());
        let mut cumulative = 0u64;
        for variant in route.variants {
            cumulative += u64::from(variant.weight);
            let bucket_end = u32::try_from(cumulative * u64::from(BUCKETS) / total).unwrap_or(BUCKETS);
            let parsed = self::variant(variant, bucket_end).map_err(at)?;
            if variants.iter().any(|v| v.name == parsed.name) {
                return Err(at(format!("variant {} is named twice", parsed.name)));
            }
            variants.push(parsed);
        }
        let key_header = if route.key_header.is_empty() {
            None
        } else {
            let header = HeaderName::from_bytes(route.key_header.as_bytes())
                .map_err(|_| at(format!("key_header {:?} is not a header name", route.key_header)))?;
            if header.as_str() != route.key_header {
                return Err(at(format!("key_header {:?} must be lower case", route.key_header)));
            }
            Some(header)
        };
        let shadow = match route.shadow {
            Some(shadow) if shadow.fraction > 0.0 => {
                if shadow.fraction > 1.0 {
                    return Err(at("shadow.fraction must be in [0, 1]".into()));
                }
                let check = |value: f64, field: &str| {
                    if value >= 0.0 && value.is_finite() {
                        Ok(value)
                    } else {
                        Err(at(format!("shadow.{field} must be a non-negative number")))
                    }
                };
                let target =
                    self::variant(shadow.target.ok_or_else(|| at("shadow has no target".into()))?, 0).map_err(at)?;
                Some(Shadow {
                    target,
                    fraction: shadow.fraction,
                    max_in_flight: shadow.max_in_flight as usize,
                    max_bytes_in_flight: usize::try_from(shadow.max_bytes_in_flight).unwrap_or(usize::MAX),
                    atol: check(shadow.atol, "atol")?,
                    rtol: check(shadow.rtol, "rtol")?,
                })
            }
            _ => None,
        };
        Ok(TrafficRoute {
            name: Arc::from(name.as_str()),
            revision: route.revision,
            variants,
            key_header,
            key_parameter: (!route.key_parameter.is_empty()).then_some(route.key_parameter),
            salt: route.salt.into_bytes(),
            shadow,
            versioned_model: (!route.versioned_model.is_empty()).then(|| Arc::from(route.versioned_model.as_str())),
        })
    }

    /// The variant (or versioned target) for a request.
    pub fn select(&self, request: &Request<'_>, draw: impl FnOnce() -> u64) -> Selected<'_> {
        if !request.version.is_empty() {
            let model = self.versioned_model.as_deref().unwrap_or(&self.name);
            return Selected::Versioned { model };
        }
        if let Some(forced) = header_or_parameter(request, Some(&FORCE_HEADER_NAME), Some(FORCE_PARAMETER)) {
            return match self.variants.iter().find(|v| *v.name == *forced) {
                Some(variant) => Selected::Variant(variant),
                None => Selected::UnknownVariant(forced.to_string()),
            };
        }
        let key = header_or_parameter(request, self.key_header.as_ref(), self.key_parameter.as_deref())
            .or(request.sequence_id);
        let bucket = match key {
            Some(key) => bucket(&self.salt, key.as_bytes()),
            None => (draw() % u64::from(BUCKETS)) as u32,
        };
        Selected::Variant(self.variant_of(bucket))
    }

    /// The variant owning `bucket`.
    pub fn variant_of(&self, bucket: u32) -> &Variant {
        self.variants
            .iter()
            .find(|v| bucket < v.bucket_end)
            .unwrap_or_else(|| &self.variants[self.variants.len() - 1])
    }

    /// The names of its variants, for an error message.
    pub fn variant_names(&self) -> String {
        self.variants.iter().map(|v| &*v.name).collect::<Vec<_>>().join(", ")
    }
}

const FORCE_HEADER_NAME: HeaderName = HeaderName::from_static(FORCE_HEADER);

fn variant(variant: proto::Variant, bucket_end: u32) -> Result<Variant, String> {
    if variant.name.is_empty() || variant.model.is_empty() {
        return Err("a variant needs a name and a model".into());
    }
    // Routes know versions as Triton reads them: the canonical number, or "" (latest).
    let canonical = version::canonical(&variant.version).filter(|c| *c == variant.version);
    if canonical.is_none() {
        return Err(format!(
            "variant {}: version {:?} is not a version number",
            variant.name, variant.version
        ));
    }
    Ok(Variant {
        name: Arc::from(variant.name.as_str()),
        model: Arc::from(variant.model.as_str()),
        version: Arc::from(variant.version.as_str()),
        weight: variant.weight,
        bucket_end,
    })
}

/// The header's value, else the request's string parameter of that name.
fn header_or_parameter<'a>(
    request: &Request<'a>,
    header: Option<&HeaderName>,
    parameter: Option<&str>,
) -> Option<&'a str> {
    if let Some(value) = header.and_then(|h| request.headers.get(h)) {
        return value.to_str().ok();
    }
    crate::wire::string_parameter(request.frame, parameter?)
}

/// A routing key's bucket: the first 8 bytes of sha256(salt, 0x00, key), big-endian, mod
/// `BUCKETS`: every replica computes the same (the tests check it against the definition).
pub fn bucket(salt: &[u8], key: &[u8]) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update([0u8]);
    hasher.update(key);
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % u64::from(BUCKETS)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn route(weights: &[(&str, u32)]) -> TrafficRoute {
        TrafficRoute::from_proto(proto::TrafficRoute {
            name: "classifier".into(),
            revision: 4,
            variants: weights
                .iter()
                .map(|(name, weight)| proto::Variant {
                    name: (*name).into(),
                    model: "classifier".into(),
                    version: (*name).into(),
                    weight: *weight,
                })
                .collect(),
            key_header: "x-gateway-routing-key".into(),
            key_parameter: "gateway_routing_key".into(),
            salt: "classifier".into(),
            shadow: None,
            versioned_model: String::new(),
        })
        .unwrap()
    }

    fn frame(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    fn select<'a>(route: &'a TrafficRoute, headers: &HeaderMap, frame: &[u8], draw: u64) -> Selected<'a> {
        let request = Request {
            headers,
            frame,
            version: "",
            sequence_id: None,
        };
        route.select(&request, || draw)
    }

    #[test]
    fn buckets_go_to_variants_in_order_by_weight() {
        let split = route(&[("1", 90), ("2", 10)]);
        assert_eq!(split.variants[0].bucket_end, 9_000);
        assert_eq!(split.variants[1].bucket_end, 10_000);
        assert_eq!(&*split.variant_of(8_999).name, "1");
        assert_eq!(&*split.variant_of(9_000).name, "2");
        let thirds = route(&[("1", 1), ("2", 1), ("3", 1)]);
        let ends: Vec<u32> = thirds.variants.iter().map(|v| v.bucket_end).collect();
        assert_eq!(ends, [3_333, 6_666, 10_000]);
        let none_first = route(&[("1", 0), ("2", 5)]);
        assert_eq!(&*none_first.variant_of(0).name, "2");
    }

    #[test]
    fn moving_weight_moves_only_keys_from_control_to_treatment() {
        let before = route(&[("1", 90), ("2", 10)]);
        let after = route(&[("1", 80), ("2", 20)]);
        let headers = HeaderMap::new();
        for key in 0..5_000 {
            let mut keyed = headers.clone();
            keyed.insert(
                "x-gateway-routing-key",
                HeaderValue::from_str(&key.to_string()).unwrap(),
            );
            let (Selected::Variant(was), Selected::Variant(now)) =
                (select(&before, &keyed, &[], 0), select(&after, &keyed, &[], 0))
            else {
                panic!("a keyed request gets a variant");
            };
            let bucket = bucket(b"classifier", key.to_string().as_bytes());
            let moved = (8_000..9_000).contains(&bucket);
            assert_eq!(was.name != now.name, moved, "key {key} in bucket {bucket}");
            if moved {
                assert_eq!((&*was.name, &*now.name), ("1", "2"));
            }
        }
    }

    #[test]
    fn the_bucket_is_sha256_of_salt_and_key() {
        // sha256(b"s\x00k")[:8] = 0x85e238288c85c328 (Python: hashlib.sha256(b"s\x00k"))
        let expected = (0x85e2_3828_8c85_c328_u64 % 10_000) as u32;
        assert_eq!(bucket(b"s", b"k"), expected);
    }

    #[test]
    fn forcing_keys_and_parameters() {
        let split = route(&[("1", 100), ("2", 0)]);
        let mut headers = HeaderMap::new();
        headers.insert(FORCE_HEADER, HeaderValue::from_static("2"));
        assert!(matches!(select(&split, &headers, &[], 0), Selected::Variant(v) if &*v.name == "2"));
        headers.insert(FORCE_HEADER, HeaderValue::from_static("9"));
        assert_eq!(select(&split, &headers, &[], 0), Selected::UnknownVariant("9".into()));
        // parameters { key: "gateway_variant" value { string_param: "2" } }
        let entry = [b"\x0a\x0fgateway_variant".as_slice(), b"\x12\x03\x1a\x012"].concat();
        let message = [b"\x0a\x01m".as_slice(), &[0x22, entry.len() as u8], &entry].concat();
        let by_parameter = select(&split, &HeaderMap::new(), &frame(&message), 0);
        assert!(matches!(by_parameter, Selected::Variant(v) if &*v.name == "2"));
        // No key: the draw decides, by weight.
        let half = route(&[("1", 50), ("2", 50)]);
        assert!(matches!(select(&half, &HeaderMap::new(), &[], 4_999), Selected::Variant(v) if &*v.name == "1"));
        assert!(matches!(select(&half, &HeaderMap::new(), &[], 15_000), Selected::Variant(v) if &*v.name == "2"));
    }

    #[test]
    fn versioned_requests_bypass_the_split() {
        let mut alias = route(&[("1", 100)]);
        let request = Request {
            headers: &HeaderMap::new(),
            frame: &[],
            version: "2",
            sequence_id: None,
        };
        assert_eq!(
            alias.select(&request, || 0),
            Selected::Versioned { model: "classifier" }
        );
        alias.versioned_model = Some(Arc::from("real"));
        assert_eq!(alias.select(&request, || 0), Selected::Versioned { model: "real" });
    }

    #[test]
    fn bad_routes_are_refused() {
        let refused = |edit: &dyn Fn(&mut proto::TrafficRoute)| {
            let mut message = proto::TrafficRoute {
                name: "m".into(),
                variants: vec![proto::Variant {
                    name: "1".into(),
                    model: "m".into(),
                    version: "1".into(),
                    weight: 1,
                }],
                ..Default::default()
            };
            edit(&mut message);
            TrafficRoute::from_proto(message).unwrap_err()
        };
        assert!(refused(&|r| r.variants[0].weight = 0).contains("zero"));
        assert!(refused(&|r| r.variants[0].version = "01".into()).contains("version"));
        assert!(refused(&|r| r.variants.push(r.variants[0].clone())).contains("twice"));
        assert!(refused(&|r| r.key_header = "X-Key".into()).contains("lower case"));
        assert!(refused(&|r| r.variants.clear()).contains("no variants"));
    }
}
