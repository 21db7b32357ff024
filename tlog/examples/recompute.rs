//! Measures root recomputation speed: hashes 4 million synthetic leaves through a `Frontier`.
//!
//! Usage: `cargo run -p tlog --release --example recompute [ENTRY_BYTES]` (default 200).

use std::time::Instant;

use anyhow::Context as _;

use tlog::merkle::Frontier;

/// Number of synthetic leaves, as in an export of a few months of audit entries.
const LEAVES: u64 = 4_000_000;

/// Default entry length: about one canonical-JSON audit line without long fields.
const DEFAULT_ENTRY_BYTES: usize = 200;

fn main() -> anyhow::Result<()> {
    let entry_bytes = match std::env::args().nth(1) {
        Some(argument) => argument.parse().context("ENTRY_BYTES must be a number")?,
        None => DEFAULT_ENTRY_BYTES,
    };
    // The index in the first bytes makes every leaf distinct.
    let mut entry = vec![b'x'; entry_bytes.max(8)];

    let started = Instant::now();
    let mut frontier = Frontier::new();
    for index in 0..LEAVES {
        entry[..8].copy_from_slice(&index.to_be_bytes());
        frontier.push(tlog::leaf_hash(&entry))?;
    }
    let root = frontier.root();
    let with_leaf_hashing = started.elapsed().as_secs_f64();

    // The tree alone: leaf hashes that cost nothing to make, so only node hashing is timed.
    let started = Instant::now();
    let mut frontier = Frontier::new();
    for index in 0..LEAVES {
        let mut leaf_hash = [0u8; 32];
        leaf_hash[..8].copy_from_slice(&index.to_be_bytes());
        frontier.push(leaf_hash)?;
    }
    let tree_root = frontier.root();
    let tree_only = started.elapsed().as_secs_f64();

    println!("leaves: {LEAVES} of {} bytes", entry.len());
    println!("root: {}", hex(&root));
    println!(
        "leaf hashing + tree: {with_leaf_hashing:.3} s, {:.0} leaves/s",
        LEAVES as f64 / with_leaf_hashing
    );
    println!(
        "tree only (root {}): {tree_only:.3} s, {:.0} leaves/s",
        &hex(&tree_root)[..16],
        LEAVES as f64 / tree_only
    );
    Ok(())
}

/// Lowercase hex of a hash.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
