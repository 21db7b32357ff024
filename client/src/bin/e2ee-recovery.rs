//! `e2ee-recovery`: the recovery officers' tool for an air-gapped machine (the recovery-key ceremony, opening an escrow).

#![forbid(unsafe_code)]

fn main() {}
