//! Black-box tests: the real `herd` binary driving real `herd-chaos` worker processes over
//! real sockets. One test binary (see `util.rs` for the fixture harness).

mod autoscale;
mod batch;
mod blame;
mod cancel;
mod chunks;
mod cli;
mod client;
mod config;
mod control;
mod daemon;
mod dashboard;
mod deadline;
mod fresh;
mod hardening;
#[cfg(feature = "nats")]
mod jetstream;
#[cfg(feature = "nats")]
mod jetstream_cluster;
mod keys;
mod logs;
mod metrics;
mod priority;
mod privilege;
mod protocol_v3;
mod rate;
#[cfg(feature = "redis")]
mod redis;
mod resume;
mod run;
mod stdio;
mod supervision;
mod util;
mod worker_sdk;
