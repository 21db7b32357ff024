//! Inclusion and consistency proofs: generation from a hash reader, and the RFC 9162 verifiers.
//!
//! Proofs are lists of hashes in RFC 6962/9162 order: from the bottom of the tree (the leaf's
//! sibling, or the deepest subtree of a consistency proof) up to the children of the root.

use crate::merkle::{Hash, fold_subtree_roots, node_hash};

/// Source of the perfect-subtree hashes that proof generation needs.
///
/// Contract: `subtree_hash(level, index)` returns the RFC 6962 hash of the perfect subtree of
/// height `level` covering leaves `[index << level, (index + 1) << level)`; level 0 is a leaf
/// hash. Proof generation only asks for subtrees that lie entirely inside the tree size it was
/// given, and builds the hashes of incomplete right-edge subtrees itself, so a tile store can
/// answer from full tiles plus the right-edge partial tile. Any error (typically "not stored")
/// is passed through unchanged in [`ProveError::Reader`].
pub trait HashReader {
    /// What the reader fails with.
    type Error;

    /// Hash of the perfect subtree of height `level` at position `index` on that level.
    fn subtree_hash(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// A slice of leaf hashes, in index order, is a (linear-time) [`HashReader`].
///
/// Each call hashes the whole subtree, so one proof costs O(size) hashes: fine for tests and
/// small trees, not for serving proofs from a large log.
impl HashReader for [Hash] {
    type Error = LeavesMissing;

    fn subtree_hash(&self, level: u32, index: u64) -> Result<Hash, LeavesMissing> {
        let missing = LeavesMissing { level, index };
        let width = 1u64.checked_shl(level).ok_or(missing)?;
        let start = index.checked_mul(width).ok_or(missing)?;
        let end = start.checked_add(width).ok_or(missing)?;
        let start = usize::try_from(start).map_err(|_| missing)?;
        let end = usize::try_from(end).map_err(|_| missing)?;
        let leaves = self.get(start..end).ok_or(missing)?;
        Ok(crate::merkle::tree_root(leaves))
    }
}

/// A slice of leaf hashes was asked for a subtree it does not cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("leaf hashes of subtree {index} at level {level} are not in the slice")]
pub struct LeavesMissing {
    /// Height of the requested subtree.
    pub level: u32,
    /// Position of the requested subtree on its level.
    pub index: u64,
}

/// Why a proof could not be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProveError<E> {
    /// The leaf index is not below the tree size.
    #[error("leaf index {index} is not in a tree of size {size}")]
    IndexOutOfRange {
        /// The requested leaf index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// The old tree size of a consistency proof is larger than the new one.
    #[error("old tree size {old_size} is larger than new tree size {new_size}")]
    OldSizeLarger {
        /// The old tree size.
        old_size: u64,
        /// The new tree size.
        new_size: u64,
    },
    /// The hash reader failed.
    #[error("reading a subtree hash failed")]
    Reader(#[source] E),
}

/// Why a proof was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The leaf index is not below the tree size.
    #[error("leaf index {index} is not in a tree of size {size}")]
    IndexOutOfRange {
        /// The claimed leaf index.
        index: u64,
        /// The claimed tree size.
        size: u64,
    },
    /// The old tree size is larger than the new one (a rollback).
    #[error("old tree size {old_size} is larger than new tree size {new_size}")]
    OldSizeLarger {
        /// The old tree size.
        old_size: u64,
        /// The new tree size.
        new_size: u64,
    },
    /// The proof has more hashes than the index and sizes call for.
    #[error("proof has too many hashes")]
    TooLong,
    /// The proof has fewer hashes than the index and sizes call for.
    #[error("proof has too few hashes")]
    TooShort,
    /// The proof does not lead to the expected root (the new root, for a consistency proof).
    #[error("proof does not lead to the expected root")]
    RootMismatch,
    /// A consistency proof does not lead to the old root.
    #[error("consistency proof does not lead to the old root")]
    OldRootMismatch,
}

/// Inclusion proof (RFC 6962 §2.1.1 PATH) of leaf `index` in the tree of the first `size` leaves.
pub fn inclusion_proof<R: HashReader + ?Sized>(
    reader: &R,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProveError<R::Error>> {
    if index >= size {
        return Err(ProveError::IndexOutOfRange { index, size });
    }
    // PATH(m, D[start:end]) recurses into the half holding m and appends the other half's hash,
    // so walking down and reversing gives the bottom-up order.
    let mut proof = Vec::new();
    let (mut start, mut end) = (0u64, size);
    while end - start > 1 {
        let split = start + largest_power_of_two_below(end - start);
        if index < split {
            proof.push(range_hash(reader, split, end)?);
            end = split;
        } else {
            proof.push(range_hash(reader, start, split)?);
            start = split;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// Consistency proof (RFC 9162 §2.1.4.1 PROOF/SUBPROOF) from tree size `old_size` to `new_size`.
///
/// Empty when `old_size` is 0 or equals `new_size`, as the verifier expects.
pub fn consistency_proof<R: HashReader + ?Sized>(
    reader: &R,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, ProveError<R::Error>> {
    if old_size > new_size {
        return Err(ProveError::OldSizeLarger { old_size, new_size });
    }
    let mut proof = Vec::new();
    if old_size == 0 || old_size == new_size {
        return Ok(proof);
    }
    // SUBPROOF(m, D[start:end], b), unrolled; `old_is_complete_subtree` is b.
    let (mut start, mut end) = (0u64, new_size);
    let mut old_is_complete_subtree = true;
    loop {
        if old_size == end {
            if !old_is_complete_subtree {
                proof.push(range_hash(reader, start, end)?);
            }
            break;
        }
        let split = start + largest_power_of_two_below(end - start);
        if old_size <= split {
            proof.push(range_hash(reader, split, end)?);
            end = split;
        } else {
            proof.push(range_hash(reader, start, split)?);
            start = split;
            old_is_complete_subtree = false;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// Verifies that `leaf_hash` is leaf `index` of the tree of size `size` with root `root`.
///
/// The iterative algorithm of RFC 9162 §2.1.3.2; it rejects proofs that are too long or too short.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    // `node` and `last` are the positions of the current node and of the tree's last node on the
    // current level (fn and sn in the RFC).
    let (mut node, mut last) = (index, size - 1);
    let mut hash = *leaf_hash;
    for sibling in proof {
        if last == 0 {
            return Err(ProofError::TooLong);
        }
        if node & 1 == 1 || node == last {
            hash = node_hash(sibling, &hash);
            // A right-edge node with no sibling on this level moves up for free.
            while node & 1 == 0 && node != 0 {
                node >>= 1;
                last >>= 1;
            }
        } else {
            hash = node_hash(&hash, sibling);
        }
        node >>= 1;
        last >>= 1;
    }
    if last != 0 {
        return Err(ProofError::TooShort);
    }
    if hash != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Verifies that the tree of size `old_size` and root `old_root` is a prefix of the tree of size
/// `new_size` and root `new_root`.
///
/// The iterative algorithm of RFC 9162 §2.1.4.2, plus its edge cases: equal sizes need an empty
/// proof and equal roots; an empty old tree needs an empty proof. It rejects a shrinking size and
/// proofs that are too long or too short.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::OldSizeLarger { old_size, new_size });
    }
    if old_size == new_size || old_size == 0 {
        if !proof.is_empty() {
            return Err(ProofError::TooLong);
        }
        if old_size == new_size && old_root != new_root {
            return Err(ProofError::RootMismatch);
        }
        return Ok(());
    }
    // When the old tree is a perfect subtree of the new one, its root is the first proof node.
    let prepended = old_size.is_power_of_two().then_some(old_root);
    let mut hashes = prepended.into_iter().chain(proof);
    let Some(first) = hashes.next() else {
        return Err(ProofError::TooShort);
    };
    let (mut old_node, mut last) = (old_size - 1, new_size - 1);
    while old_node & 1 == 1 {
        old_node >>= 1;
        last >>= 1;
    }
    let (mut old_hash, mut new_hash) = (*first, *first);
    for sibling in hashes {
        if last == 0 {
            return Err(ProofError::TooLong);
        }
        if old_node & 1 == 1 || old_node == last {
            old_hash = node_hash(sibling, &old_hash);
            new_hash = node_hash(sibling, &new_hash);
            while old_node & 1 == 0 && old_node != 0 {
                old_node >>= 1;
                last >>= 1;
            }
        } else {
            new_hash = node_hash(&new_hash, sibling);
        }
        old_node >>= 1;
        last >>= 1;
    }
    if last != 0 {
        return Err(ProofError::TooShort);
    }
    if old_hash != *old_root {
        return Err(ProofError::OldRootMismatch);
    }
    if new_hash != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// The largest power of two strictly below `n`; `n` must be at least 2.
fn largest_power_of_two_below(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH of leaves `[start, end)`, where `start` is a multiple of the smallest power of two that is
/// at least `end - start` (true of every range the RFC 6962 recursion visits).
///
/// The range then splits into aligned perfect subtrees following the bits of its length, and its
/// root is their right fold, exactly as for a [`crate::merkle::Frontier`].
fn range_hash<R: HashReader + ?Sized>(reader: &R, start: u64, end: u64) -> Result<Hash, ProveError<R::Error>> {
    let length = end - start;
    let mut hashes = Vec::with_capacity(length.count_ones() as usize);
    let mut position = start;
    for level in (0..u64::BITS).rev() {
        if length >> level & 1 == 1 {
            let hash = reader
                .subtree_hash(level, position >> level)
                .map_err(ProveError::Reader)?;
            hashes.push(hash);
            position += 1 << level;
        }
    }
    Ok(fold_subtree_roots(&hashes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{leaf_hash, tree_root};

    fn leaves(count: u32) -> Vec<Hash> {
        (0..count).map(|i| leaf_hash(&i.to_le_bytes())).collect()
    }

    /// PATH(m, D[n]) written directly from RFC 6962 §2.1.1, recursively.
    fn naive_path(index: usize, leaves: &[Hash]) -> Vec<Hash> {
        if leaves.len() <= 1 {
            return Vec::new();
        }
        let k = largest_power_of_two_below(leaves.len() as u64) as usize;
        if index < k {
            let mut path = naive_path(index, &leaves[..k]);
            path.push(tree_root(&leaves[k..]));
            path
        } else {
            let mut path = naive_path(index - k, &leaves[k..]);
            path.push(tree_root(&leaves[..k]));
            path
        }
    }

    /// SUBPROOF(m, D[n], b) written directly from RFC 9162 §2.1.4.1, recursively.
    fn naive_subproof(old: usize, leaves: &[Hash], complete: bool) -> Vec<Hash> {
        let n = leaves.len();
        if old == n {
            return if complete { Vec::new() } else { vec![tree_root(leaves)] };
        }
        let k = largest_power_of_two_below(n as u64) as usize;
        if old <= k {
            let mut proof = naive_subproof(old, &leaves[..k], complete);
            proof.push(tree_root(&leaves[k..]));
            proof
        } else {
            let mut proof = naive_subproof(old - k, &leaves[k..], false);
            proof.push(tree_root(&leaves[..k]));
            proof
        }
    }

    #[test]
    fn generated_proofs_match_the_rfc_recursion_and_verify() {
        let all = leaves(70);
        for size in 1..=all.len() {
            let tree = &all[..size];
            let root = tree_root(tree);
            for index in 0..size {
                let proof = inclusion_proof(tree, index as u64, size as u64).expect("in range");
                assert_eq!(proof, naive_path(index, tree), "PATH({index}, {size})");
                verify_inclusion(&tree[index], index as u64, size as u64, &proof, &root)
                    .expect("valid inclusion proof");
            }
            for old in 1..=size {
                let proof = consistency_proof(tree, old as u64, size as u64).expect("in range");
                assert_eq!(proof, naive_subproof(old, tree, true), "PROOF({old}, {size})");
                let old_root = tree_root(&tree[..old]);
                verify_consistency(old as u64, size as u64, &old_root, &root, &proof).expect("valid consistency proof");
            }
        }
    }

    #[test]
    fn every_tampering_of_an_inclusion_proof_is_rejected() {
        let all = leaves(41);
        for size in 1..=all.len() {
            let tree = &all[..size];
            let root = tree_root(tree);
            for index in 0..size {
                let (leaf, index_u64, size_u64) = (tree[index], index as u64, size as u64);
                let proof = inclusion_proof(tree, index_u64, size_u64).expect("in range");
                for position in 0..proof.len() {
                    let mut tampered = proof.clone();
                    tampered[position][7] ^= 0x40;
                    assert_eq!(
                        verify_inclusion(&leaf, index_u64, size_u64, &tampered, &root),
                        Err(ProofError::RootMismatch)
                    );
                }
                let mut longer = proof.clone();
                longer.push(root);
                assert_eq!(
                    verify_inclusion(&leaf, index_u64, size_u64, &longer, &root),
                    Err(ProofError::TooLong)
                );
                if let Some((_, shorter)) = proof.split_last() {
                    assert_eq!(
                        verify_inclusion(&leaf, index_u64, size_u64, shorter, &root),
                        Err(ProofError::TooShort)
                    );
                }
                let other_leaf = leaf_hash(b"not in the tree");
                assert!(verify_inclusion(&other_leaf, index_u64, size_u64, &proof, &root).is_err());
                if size > 1 {
                    let other_index = (index_u64 + 1) % size_u64;
                    assert!(
                        verify_inclusion(&leaf, other_index, size_u64, &proof, &root).is_err(),
                        "index {index} size {size} accepted at {other_index}"
                    );
                }
                // No size check: a proof for (index, size) can also fit (index, size + 1), and
                // only the signed checkpoint binds the root to its size.
            }
        }
    }

    #[test]
    fn every_tampering_of_a_consistency_proof_is_rejected() {
        let all = leaves(41);
        for size in 2..=all.len() {
            let tree = &all[..size];
            let root = tree_root(tree);
            for old in 1..size {
                let old_root = tree_root(&tree[..old]);
                let (old_u64, size_u64) = (old as u64, size as u64);
                let proof = consistency_proof(tree, old_u64, size_u64).expect("in range");
                for position in 0..proof.len() {
                    let mut tampered = proof.clone();
                    tampered[position][0] ^= 1;
                    assert!(verify_consistency(old_u64, size_u64, &old_root, &root, &tampered).is_err());
                }
                let mut longer = proof.clone();
                longer.push(root);
                assert_eq!(
                    verify_consistency(old_u64, size_u64, &old_root, &root, &longer),
                    Err(ProofError::TooLong)
                );
                if let Some((_, shorter)) = proof.split_last() {
                    assert_eq!(
                        verify_consistency(old_u64, size_u64, &old_root, &root, shorter),
                        Err(ProofError::TooShort)
                    );
                }
                assert!(verify_consistency(old_u64, size_u64, &root, &root, &proof).is_err());
                assert!(verify_consistency(old_u64, size_u64, &old_root, &old_root, &proof).is_err());
                assert!(verify_consistency(old_u64 + 1, size_u64, &old_root, &root, &proof).is_err());
                assert_eq!(
                    verify_consistency(size_u64, old_u64, &root, &old_root, &proof),
                    Err(ProofError::OldSizeLarger {
                        old_size: size_u64,
                        new_size: old_u64
                    })
                );
            }
        }
    }

    #[test]
    fn edge_cases_of_the_verifiers() {
        let tree = leaves(5);
        let root = tree_root(&tree);
        let empty = crate::merkle::empty_root();
        assert_eq!(
            verify_inclusion(&tree[0], 5, 5, &[], &root),
            Err(ProofError::IndexOutOfRange { index: 5, size: 5 })
        );
        assert_eq!(
            verify_inclusion(&tree[0], 0, 0, &[], &empty),
            Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
        );
        // The empty tree is a prefix of every tree, with an empty proof only.
        assert_eq!(verify_consistency(0, 5, &empty, &root, &[]), Ok(()));
        assert_eq!(
            verify_consistency(0, 5, &empty, &root, &[root]),
            Err(ProofError::TooLong)
        );
        assert_eq!(verify_consistency(5, 5, &root, &root, &[]), Ok(()));
        assert_eq!(
            verify_consistency(5, 5, &root, &empty, &[]),
            Err(ProofError::RootMismatch)
        );
        // Huge sizes neither overflow nor loop: 64 bogus hashes for the last leaf of 2^64 - 1.
        let bogus = vec![[7u8; 32]; 64];
        assert_eq!(
            verify_inclusion(&tree[0], u64::MAX - 1, u64::MAX, &bogus, &root),
            Err(ProofError::TooLong)
        );
        assert_eq!(
            verify_inclusion(&tree[0], u64::MAX - 1, u64::MAX, &bogus[..63], &root),
            Err(ProofError::RootMismatch)
        );
        assert_eq!(
            verify_consistency(u64::MAX - 1, u64::MAX, &root, &root, &bogus),
            Err(ProofError::OldRootMismatch)
        );
        let mut too_many = bogus.clone();
        too_many.push([7u8; 32]);
        assert_eq!(
            verify_consistency(u64::MAX - 1, u64::MAX, &root, &root, &too_many),
            Err(ProofError::TooLong)
        );
    }

    #[test]
    fn generation_reports_bad_arguments_and_missing_hashes() {
        let tree = leaves(5);
        assert_eq!(
            inclusion_proof(&tree[..], 5, 5),
            Err(ProveError::IndexOutOfRange { index: 5, size: 5 })
        );
        assert_eq!(
            consistency_proof(&tree[..], 6, 5),
            Err(ProveError::OldSizeLarger {
                old_size: 6,
                new_size: 5
            })
        );
        assert_eq!(consistency_proof(&tree[..], 0, 5), Ok(Vec::new()));
        assert_eq!(
            inclusion_proof(&tree[..], 0, 8),
            Err(ProveError::Reader(LeavesMissing { level: 2, index: 1 }))
        );
    }
}
