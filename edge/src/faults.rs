//! Whose fault a failed call is: the client's (""), the whole server's ("backend") or one
//! model's on it ("model"). Only backend faults trip breakers, are retried on another backend
//! or answered by the fallback; a client error is returned unchanged and teaches nothing. The
//! cases are in `fault_scopes.json`, beside this file.

const QUEUE_FULL: &str = "maximum queue size";
const UNKNOWN_MODEL: &str = "Request for unknown model: '";
/// How Triton refuses a call of a protocol restricted by `--grpc-restricted-protocol` that
/// lacks its header (UNAVAILABLE): the caller is refused, the server is fine.
const RESTRICTED_PROTOCOL: &str = "This protocol is restricted, expecting header ";
/// gRPC's refusals of what the request itself brought, too much metadata or too large a
/// message (RESOURCE_EXHAUSTED): every backend would refuse it the same way.
const CLIENTS_EXCESS: [&str; 2] = ["received metadata size exceeds", "Received message larger than max"];

/// The scope of a routed call's status `code` (its name) with Triton's `message`, for the
/// routed `model` and `version` ("" for the latest). Allocates nothing.
pub fn fault_scope(code: &str, message: &str, model: &str, version: &str) -> &'static str {
    match code {
        "NOT_FOUND" if is_stale_route(message, model, version) => "model",
        "UNAVAILABLE" | "RESOURCE_EXHAUSTED" | "INTERNAL" if message.starts_with(RESTRICTED_PROTOCOL) => "",
        "RESOURCE_EXHAUSTED" if CLIENTS_EXCESS.iter().any(|excess| message.starts_with(excess)) => "",
        "RESOURCE_EXHAUSTED" | "INTERNAL" => "model",
        "UNAVAILABLE" if names_model(message, model) || message.contains(QUEUE_FULL) => "model",
        "UNAVAILABLE" => "backend",
        // Any other NOT_FOUND names something the request brought (a shared-memory region);
        // DEADLINE_EXCEEDED is the client's own deadline (a per-try timeout is reported as
        // UNAVAILABLE); every other code is the client's.
        _ => "",
    }
}

/// Whether Triton's NOT_FOUND says the routed model (version) is gone from the backend, in
/// its exact words and naming the routed key: a stale route, another backend will serve it.
fn is_stale_route(message: &str, model: &str, version: &str) -> bool {
    let Some(tail) = message
        .strip_prefix(UNKNOWN_MODEL)
        .and_then(|rest| rest.strip_prefix(model))
    else {
        return false;
    };
    match tail {
        "' is not found" | "' has no available versions" => true,
        _ => {
            !version.is_empty()
                && tail
                    .strip_prefix("' version ")
                    .and_then(|rest| rest.strip_prefix(version))
                    == Some(" is not found")
        }
    }
}

/// Whether `message` names `model` in quotes, as Triton names the model it speaks of.
fn names_model(message: &str, model: &str) -> bool {
    message
        .match_indices(model)
        .any(|(at, _)| message[..at].ends_with('\'') && message[at + model.len()..].starts_with('\''))
}

#[cfg(test)]
mod tests {
    use super::fault_scope;

    /// (code, details, routed model, routed version, scope): the gateway's tests read the same file.
    const CASES: &str = include_str!("fault_scopes.json");

    #[test]
    fn scopes_match_the_gateway() {
        let cases: Vec<[String; 5]> = serde_json::from_str(CASES).expect("fault_scopes.json");
        assert!(cases.len() > 20);
        for [code, message, model, version, scope] in &cases {
            assert_eq!(
                fault_scope(code, message, model, version),
                scope,
                "{code} {message} {model} {version}"
            );
        }
        let long = "a".repeat(300);
        let message = format!("Request for unknown model: '{long}' is not found");
        assert_eq!(fault_scope("NOT_FOUND", &message, &long, ""), "model");
    }
}
