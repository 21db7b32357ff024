//! The reference E2EE client: device keys, enrollment against the CA and certificate checks.
//!
//! The client reaches the CA through the small `transport::CaTransport` trait; gRPC is the default
//! implementation. It never depends on the CA's own crate.

#![forbid(unsafe_code)]

pub mod identity;
pub mod transport;
