//! hifi's HTTP serving: the ingest API of each HTTP source, the admin API (metrics, lag,
//! loss, traces, the dashboard), and the test receiver. Handlers turn every failure into
//! a status code and a JSON body; none drops a connection without an answer.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod backlog;
pub mod body;
pub mod dashboard;
pub mod door;
pub mod fingerprints;
pub mod ingest;
pub mod metrics;
pub mod outcomes;
pub mod receiver;
pub mod replay;
pub mod scale;
pub mod serve;
pub mod shadow;
pub mod versions;

pub use serve::{serve, ServeLimits};
