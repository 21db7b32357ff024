//! Transparency-log primitives shared by the CA, the client and the offline verifier (in progress).

#![forbid(unsafe_code)]
