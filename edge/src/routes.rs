//! Route snapshots from the Python gateway, swapped whole under a lock readers barely hold.

use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// One snapshot: model key -> backend addresses, plus the Python gateway's own address.
pub struct RouteTable {
    pub gateway: String,
    routes: HashMap<(String, String), Route>,
}

/// A backend as routes name it: (name for metrics, address to dial).
pub type Backend = (String, String);

struct Route {
    backends: Vec<Backend>,
    next: AtomicUsize,
}

impl RouteTable {
    /// `{"gateway": "127.0.0.1:PORT", "routes": [["simple", "1", [["t0", "127.0.0.1:8101"]]]]}`
    pub fn parse(line: &str) -> Result<RouteTable, String> {
        let value: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let gateway = value["gateway"].as_str().ok_or("missing gateway")?.to_string();
        let mut routes = HashMap::new();
        for entry in value["routes"].as_array().ok_or("missing routes")? {
            let name = entry[0].as_str().ok_or("route name")?;
            let version = entry[1].as_str().ok_or("route version")?;
            let backends: Vec<Backend> = entry[2]
                .as_array()
                .ok_or("route backends")?
                .iter()
                .filter_map(|b| Some((b[0].as_str()?.to_string(), b[1].as_str()?.to_string())))
                .collect();
            if !backends.is_empty() {
                let route = Route { backends, next: AtomicUsize::new(0) };
                routes.insert((name.to_string(), version.to_string()), route);
            }
        }
        Ok(RouteTable { gateway, routes })
    }

    /// Round-robin over the backends of the key, or None when no backend serves it. A
    /// request of a sequence always gets the same backend (rendezvous hashing, the same
    /// weights as the gateway's `gateway.balancing.affinity`).
    pub fn choose(&self, name: &str, version: &str, sequence: Option<&str>) -> Option<&Backend> {
        // The tuple key needs owned strings; a lookup allocates two short strings at most.
        let route = self.routes.get(&(name.to_string(), version.to_string()))?;
        if let Some(sequence) = sequence {
            return route.backends.iter().max_by_key(|(backend, _)| weight(sequence, backend));
        }
        let index = route.next.fetch_add(1, Ordering::Relaxed);
        route.backends.get(index % route.backends.len())
    }
}

/// FNV-1a 64 of `sequence NUL backend`.
pub fn weight(sequence: &str, backend: &str) -> u64 {
    let mut value: u64 = 0xcbf29ce484222325;
    for byte in sequence.bytes().chain(std::iter::once(0u8)).chain(backend.bytes()) {
        value = (value ^ u64::from(byte)).wrapping_mul(0x100000001b3);
    }
    value
}

#[derive(Clone)]
pub struct SharedRoutes(Arc<RwLock<Arc<RouteTable>>>);

impl SharedRoutes {
    pub fn new(table: RouteTable) -> Self {
        SharedRoutes(Arc::new(RwLock::new(Arc::new(table))))
    }

    pub fn current(&self) -> Arc<RouteTable> {
        self.0.read().expect("route lock").clone()
    }

    pub fn replace(&self, table: RouteTable) {
        *self.0.write().expect("route lock") = Arc::new(table);
    }
}

#[cfg(test)]
mod tests {
    use super::RouteTable;

    #[test]
    fn parses_and_round_robins() {
        let table = RouteTable::parse(
            r#"{"gateway": "127.0.0.1:1",
                "routes": [["m", "", [["a", "a:1"], ["b", "b:2"]]], ["n", "1", []]]}"#,
        )
        .unwrap();
        assert_eq!(table.gateway, "127.0.0.1:1");
        assert_eq!(table.choose("m", "", None).unwrap().1, "a:1");
        assert_eq!(table.choose("m", "", None).unwrap().0, "b");
        assert_eq!(table.choose("m", "", None).unwrap().1, "a:1");
        assert!(table.choose("n", "1", None).is_none());
        assert!(table.choose("x", "", None).is_none());
        let pinned = table.choose("m", "", Some("seq-1")).unwrap().0.clone();
        for _ in 0..5 {
            assert_eq!(table.choose("m", "", Some("seq-1")).unwrap().0, pinned);
        }
    }

    #[test]
    fn weight_matches_the_gateway() {
        // The same vector is checked in tests/unit/test_affinity.py.
        assert_eq!(super::weight("42", "triton-0"), 0x05E8EB9AD641B8D6);
    }

    #[test]
    fn rejects_a_snapshot_without_gateway() {
        assert!(RouteTable::parse(r#"{"routes": []}"#).is_err());
    }
}
