//! Differential tests against ct-merkle, an independent RFC 6962 implementation, plus proptests.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

use ct_merkle::mem_backed_tree::MemoryBackedTree;
use ct_merkle::{ConsistencyProof, InclusionProof, RootHash};
use proptest::prelude::*;
use sha2_for_ct_merkle::Sha256;
use tlog::Hash;
use tlog::merkle::{Frontier, tree_root};
use tlog::proof::{HashReader, consistency_proof, inclusion_proof, verify_consistency, verify_inclusion};

/// Every perfect subtree hash, level by level: an O(1) `HashReader`, like a tile store.
struct LevelCache {
    levels: Vec<Vec<Hash>>,
}

impl LevelCache {
    fn new(leaves: &[Hash]) -> Self {
        let mut levels = vec![leaves.to_vec()];
        while let Some(below) = levels.last().filter(|level| level.len() > 1) {
            let above = below
                .chunks_exact(2)
                .map(|pair| tlog::node_hash(&pair[0], &pair[1]))
                .collect();
            levels.push(above);
        }
        LevelCache { levels }
    }
}

impl HashReader for LevelCache {
    type Error = (u32, u64);

    fn subtree_hash(&self, level: u32, index: u64) -> Result<Hash, (u32, u64)> {
        self.levels
            .get(level as usize)
            .and_then(|hashes| hashes.get(index as usize))
            .copied()
            .ok_or((level, index))
    }
}

/// Deterministic pseudo-random entries (SplitMix64), of varying lengths.
fn entries(count: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..count)
        .map(|_| {
            let length = (next() % 100) as usize;
            (0..length).map(|_| next() as u8).collect()
        })
        .collect()
}

fn flatten(hashes: &[Hash]) -> Vec<u8> {
    hashes.concat()
}

/// Compares roots, every inclusion proof and every consistency proof with ct-merkle for each
/// tree size up to `max_size` (or, with `step`, every `step`-th index and old size).
fn compare_with_ct_merkle(max_size: usize, step: usize, seed: u64) {
    let entries = entries(max_size, seed);
    let leaves: Vec<Hash> = entries.iter().map(|entry| tlog::leaf_hash(entry)).collect();
    let cache = LevelCache::new(&leaves);
    let mut oracle = MemoryBackedTree::<Sha256, Vec<u8>>::new();
    let mut frontier = Frontier::new();
    // prefix_roots[k] is the root of the first k leaves.
    let mut prefix_roots = vec![tlog::empty_root()];
    for (count, entry) in entries.iter().enumerate() {
        oracle.push(entry.clone());
        frontier.push(leaves[count]).expect("not full");
        let size = count + 1;
        let oracle_root = oracle.root();
        let root = frontier.root();
        prefix_roots.push(root);
        assert_eq!(oracle_root.as_bytes()[..], root[..], "root of size {size}");
        if size % step != 0 && size != max_size {
            continue;
        }
        let size_u64 = size as u64;
        for index in (0..size).step_by(step) {
            let proof = inclusion_proof(&cache, index as u64, size_u64).expect("cached");
            let oracle_proof = oracle.prove_inclusion(index);
            assert_eq!(flatten(&proof), oracle_proof.as_bytes(), "PATH({index}, {size})");
            verify_inclusion(&leaves[index], index as u64, size_u64, &proof, &root).expect("our proof verifies");
            let ours_for_oracle = InclusionProof::<Sha256>::from_bytes(flatten(&proof));
            oracle_root
                .verify_inclusion(&entries[index], index as u64, &ours_for_oracle)
                .expect("ct-merkle accepts our proof");
        }
        for old in (1..=size).step_by(step) {
            let proof = consistency_proof(&cache, old as u64, size_u64).expect("cached");
            let oracle_proof = oracle.prove_consistency(size - old);
            assert_eq!(flatten(&proof), oracle_proof.as_bytes(), "PROOF({old}, {size})");
            let old_root = prefix_roots[old];
            verify_consistency(old as u64, size_u64, &old_root, &root, &proof).expect("our proof verifies");
            let old_oracle_root = RootHash::<Sha256>::new(old_root.into(), old as u64);
            let ours_for_oracle = ConsistencyProof::<Sha256>::try_from_bytes(flatten(&proof)).expect("whole hashes");
            oracle_root
                .verify_consistency(&old_oracle_root, &ours_for_oracle)
                .expect("ct-merkle accepts our proof");
        }
    }
}

#[test]
fn every_tree_up_to_300_leaves_matches_ct_merkle() {
    compare_with_ct_merkle(300, 1, 1);
}

#[test]
fn larger_trees_match_ct_merkle_on_a_sample() {
    for (size, seed) in [(1025, 2), (4096, 3), (5000, 4)] {
        compare_with_ct_merkle(size, 97, seed);
    }
}

#[test]
fn slice_reader_agrees_with_the_cached_reader() {
    let leaves: Vec<Hash> = entries(150, 5).iter().map(|entry| tlog::leaf_hash(entry)).collect();
    let cache = LevelCache::new(&leaves);
    for size in [1u64, 2, 3, 64, 65, 127, 150] {
        for index in (0..size).step_by(7) {
            assert_eq!(
                inclusion_proof(&leaves[..], index, size).expect("in slice"),
                inclusion_proof(&cache, index, size).expect("cached")
            );
            let old = index + 1;
            assert_eq!(
                consistency_proof(&leaves[..], old, size).expect("in slice"),
                consistency_proof(&cache, old, size).expect("cached")
            );
        }
    }
}

proptest! {
    #[test]
    fn frontier_root_matches_ct_merkle(entries in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..200)) {
        let mut oracle = MemoryBackedTree::<Sha256, Vec<u8>>::new();
        let mut frontier = Frontier::new();
        for entry in &entries {
            oracle.push(entry.clone());
            frontier.push(tlog::leaf_hash(entry)).expect("not full");
        }
        let oracle_root = oracle.root();
        prop_assert_eq!(&oracle_root.as_bytes()[..], &frontier.root()[..]);
        // A frontier survives being written out and read back (an export's frontier.txt).
        let rebuilt = Frontier::from_parts(frontier.size(), frontier.hashes().to_vec()).expect("valid");
        prop_assert_eq!(rebuilt.root(), frontier.root());
    }

    #[test]
    fn proofs_for_random_positions_verify(size in 1u64..3000, index_seed in any::<u64>(), old_seed in any::<u64>()) {
        let leaves: Vec<Hash> = (0..size).map(|i| tlog::leaf_hash(&i.to_be_bytes())).collect();
        let cache = LevelCache::new(&leaves);
        let root = tree_root(&leaves);
        let index = index_seed % size;
        let proof = inclusion_proof(&cache, index, size).expect("cached");
        prop_assert!(verify_inclusion(&leaves[index as usize], index, size, &proof, &root).is_ok());
        let old = old_seed % (size + 1);
        let proof = consistency_proof(&cache, old, size).expect("cached");
        let old_root = tree_root(&leaves[..old as usize]);
        prop_assert!(verify_consistency(old, size, &old_root, &root, &proof).is_ok());
    }
}
