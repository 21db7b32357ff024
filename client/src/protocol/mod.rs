//! Protocol operations built from `crypto` primitives and `format` encodings.

pub mod file;
pub mod folder;
pub mod key_backup;
pub mod metadata;
pub mod metadata_v1;
pub mod possession;
pub mod signature;
