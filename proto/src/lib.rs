//! The generated e2ee.ca.v1 messages, clients and servers, and the descriptor set for reflection.

#![allow(clippy::all)]

/// Package `e2ee.ca.v1`.
pub mod v1 {
    tonic::include_proto!("e2ee.ca.v1");
}

/// The encoded `FileDescriptorSet` of every e2ee.ca.v1 file, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/e2ee_ca_v1_descriptor.bin"));
