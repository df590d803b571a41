//! Per-request policies as pure state machines on an injected clock (`now` is always passed
//! in), so each is tested on a paused clock and none does I/O.

pub mod affinity;
pub mod breaker;
pub mod ejection;
pub mod latency;
pub mod retry_budget;
