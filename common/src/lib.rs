//! The shared core of jst2kd: configuration, the message contract, the queue abstraction
//! (RabbitMQ and in-process), retries and dead letters, telemetry, and the worker harness.
//!
//! Workers depend on this crate and on the API clients, never on each other.

pub mod backoff;
pub mod config;
pub mod events;
pub mod files;
pub mod http;
pub mod intake;
pub mod messages;
pub mod outcomes;
pub mod queue;
pub mod settle;
pub mod telemetry;
pub mod time;
pub mod traces;
pub mod worker;
