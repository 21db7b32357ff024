//! Wire formats: how Nextcloud encodes keys and ciphertexts as strings, with no cryptography.

pub(crate) mod der;
pub mod metadata;
pub mod metadata_v1;
pub mod private_key_blob;
