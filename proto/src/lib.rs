//! The berth scheduler API (`berth.v1`), generated from `berth/v1/agent.proto`,
//! and [`connect`], the one way clients (berthctl, the integration tests) reach an
//! agent: over a unix socket (`unix:///run/berth/agent.sock`) or TCP
//! (`http://127.0.0.1:7070`).

pub mod v1 {
    #![allow(clippy::derive_partial_eq_without_eq)]
    tonic::include_proto!("berth.v1");

    /// Encoded file descriptor set of `berth.v1`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("berth_v1_descriptor");
}

mod connect;

pub use connect::{connect, connect_tls, ClientTls, ConnectError};
