//! RFC 6962 Merkle tree hashing, and the right-edge frontier that recomputes a root in one pass.

// ring's assembly SHA-256 is about 1.5 times faster than the portable `sha2` crate on CPUs
// without SHA extensions, which matters for root recomputation.
use ring::digest::{Context, SHA256, digest};

/// A SHA-256 tree hash: a leaf hash, an interior node hash or a root.
pub type Hash = [u8; 32];

/// Domain-separation prefix of a leaf hash (RFC 6962 §2.1).
const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix of an interior node hash (RFC 6962 §2.1).
const NODE_PREFIX: u8 = 0x01;

/// RFC 6962 leaf hash: SHA-256(0x00 ‖ entry), where `entry` is the exact stored leaf bytes.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut context = Context::new(&SHA256);
    context.update(&[LEAF_PREFIX]);
    context.update(entry);
    to_hash(context.finish())
}

/// RFC 6962 interior node hash: SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    // One contiguous buffer is faster than three `update` calls on this hot path.
    let mut message = [0u8; 65];
    message[0] = NODE_PREFIX;
    message[1..33].copy_from_slice(left);
    message[33..].copy_from_slice(right);
    to_hash(digest(&SHA256, &message))
}

/// Root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    to_hash(digest(&SHA256, &[]))
}

/// SHA-256 of the concatenation of `parts`.
pub(crate) fn sha256(parts: &[&[u8]]) -> Hash {
    let mut context = Context::new(&SHA256);
    for part in parts {
        context.update(part);
    }
    to_hash(context.finish())
}

/// Copies a SHA-256 digest out of ring's digest type.
fn to_hash(digest: ring::digest::Digest) -> Hash {
    let mut hash = [0u8; 32];
    // Cannot panic: the algorithm is SHA-256, whose digests are 32 bytes.
    hash.copy_from_slice(digest.as_ref());
    hash
}

/// Root of the tree whose leaves have the given hashes, in index order.
///
/// One pass through a [`Frontier`]: O(n) time, O(log n) memory.
pub fn tree_root(leaf_hashes: &[Hash]) -> Hash {
    let mut frontier = Frontier::new();
    for leaf_hash in leaf_hashes {
        frontier.push_unchecked(*leaf_hash);
    }
    frontier.root()
}

/// Why a [`Frontier`] could not be built or extended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrontierError {
    /// The number of hashes is not the number of one bits of the size.
    #[error("a frontier of size {size} has {expected} hashes, got {actual}")]
    WrongHashCount {
        /// The claimed tree size.
        size: u64,
        /// `size.count_ones()`.
        expected: usize,
        /// How many hashes were given.
        actual: usize,
    },
    /// The tree already has `u64::MAX` leaves.
    #[error("the tree is full")]
    Full,
}

/// The right edge of an RFC 6962 tree: the compact range of leaves `[0, size)`.
///
/// It holds one hash per one bit of `size`: the roots of the perfect subtrees that the binary
/// decomposition of `size` splits the tree into, largest (leftmost) first. That is at most 64
/// hashes, whatever the size. Appending a leaf merges the subtrees it completes, so pushing `n`
/// leaves costs about `n` node hashes in total, and [`Frontier::root`] folds at most 63 more.
///
/// This is what an offline verifier uses to recompute the root of a whole export, and what an
/// export's `frontier.txt` stores for a range that does not start at 0.
///
/// Expected throughput: each node hash is two SHA-256 compressions and each leaf hash
/// ⌈(entry length + 10) / 64⌉, about one node per leaf amortised. On the 2-core dev VM (no SHA
/// extensions, ring's AVX2 SHA-256, release build) that measured about 2.3 M leaves/s/core for
/// the tree over precomputed leaf hashes, and 0.8–1.0 M leaves/s/core including the leaf hashes
/// of 200- and 100-byte entries; CPUs with SHA-NI are several times faster.
/// `cargo run -p tlog --release --example recompute [ENTRY_BYTES]` measures it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    /// Number of leaves covered.
    size: u64,
    /// Invariant: `hashes.len() == size.count_ones()`; largest subtree first.
    hashes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Frontier::default()
    }

    /// Rebuilds a frontier from its size and its subtree roots, largest subtree first.
    pub fn from_parts(size: u64, hashes: Vec<Hash>) -> Result<Self, FrontierError> {
        let expected = size.count_ones() as usize;
        if hashes.len() != expected {
            return Err(FrontierError::WrongHashCount {
                size,
                expected,
                actual: hashes.len(),
            });
        }
        Ok(Frontier { size, hashes })
    }

    /// Number of leaves covered.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Roots of the perfect subtrees covering `[0, size)`, largest (leftmost) first.
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// Appends one leaf, given its [`leaf_hash`].
    pub fn push(&mut self, leaf_hash: Hash) -> Result<(), FrontierError> {
        if self.size == u64::MAX {
            return Err(FrontierError::Full);
        }
        self.push_unchecked(leaf_hash);
        Ok(())
    }

    /// Appends one leaf; the caller guarantees `size < u64::MAX` (a slice cannot be that long).
    fn push_unchecked(&mut self, leaf_hash: Hash) {
        // The trailing one bits of `size` are the perfect subtrees that the new leaf completes,
        // so they are the last `trailing_ones` hashes: merge them right to left into one.
        let merged = self.size.trailing_ones() as usize;
        let keep = self.hashes.len().saturating_sub(merged);
        let mut hash = leaf_hash;
        for left in self.hashes.drain(keep..).rev() {
            hash = node_hash(&left, &hash);
        }
        self.hashes.push(hash);
        self.size += 1;
    }

    /// Root of the tree `[0, size)` (RFC 6962 MTH); [`empty_root`] when the size is 0.
    pub fn root(&self) -> Hash {
        fold_subtree_roots(&self.hashes)
    }
}

/// Root of a tree given the roots of its binary decomposition into perfect subtrees, largest first.
///
/// MTH splits at the largest power of two below n, which is exactly that decomposition, so the
/// root is the right fold of the subtree roots; no subtrees is the empty tree.
pub(crate) fn fold_subtree_roots(subtree_roots: &[Hash]) -> Hash {
    let mut hashes = subtree_roots.iter().rev();
    match hashes.next() {
        None => empty_root(),
        Some(last) => hashes.fold(*last, |right, left| node_hash(left, &right)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// MTH written directly from the RFC 6962 §2.1 definition, recursively.
    pub(crate) fn naive_root(leaf_hashes: &[Hash]) -> Hash {
        match leaf_hashes.len() {
            0 => empty_root(),
            1 => leaf_hashes[0],
            n => {
                let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
                node_hash(&naive_root(&leaf_hashes[..k]), &naive_root(&leaf_hashes[k..]))
            }
        }
    }

    #[test]
    fn primitive_hashes_match_rfc6962() {
        assert_eq!(
            hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        let left = leaf_hash(b"a");
        let right = leaf_hash(b"b");
        // An independent SHA-256 (RustCrypto's) for the prefixes.
        use sha2_for_ct_merkle::{Digest, Sha256};
        let node = Sha256::new()
            .chain_update([1])
            .chain_update(left)
            .chain_update(right)
            .finalize();
        assert_eq!(node_hash(&left, &right)[..], node[..]);
        let leaf = Sha256::new().chain_update([0]).chain_update(b"abc").finalize();
        assert_eq!(leaf_hash(b"abc")[..], leaf[..]);
        assert_eq!(sha256(&[b"a", b"bc"])[..], Sha256::digest(b"abc")[..]);
    }

    #[test]
    fn frontier_matches_recursive_definition() {
        let leaves: Vec<Hash> = (0u32..600).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut frontier = Frontier::new();
        assert_eq!(frontier.root(), empty_root());
        for (count, leaf) in leaves.iter().enumerate() {
            frontier.push(*leaf).expect("not full");
            let size = count + 1;
            assert_eq!(frontier.hashes().len(), size.count_ones() as usize);
            assert_eq!(frontier.root(), naive_root(&leaves[..size]), "size {size}");
        }
        assert_eq!(tree_root(&leaves), naive_root(&leaves));
    }

    #[test]
    fn frontier_round_trips_through_parts() {
        let mut frontier = Frontier::new();
        for i in 0u32..77 {
            frontier.push(leaf_hash(&i.to_be_bytes())).expect("not full");
        }
        let rebuilt = Frontier::from_parts(frontier.size(), frontier.hashes().to_vec());
        assert_eq!(rebuilt.as_ref(), Ok(&frontier));
        assert_eq!(
            Frontier::from_parts(77, vec![[0; 32]; 3]),
            Err(FrontierError::WrongHashCount {
                size: 77,
                expected: 4,
                actual: 3
            })
        );
        let mut full = Frontier::from_parts(u64::MAX, vec![[0; 32]; 64]).expect("64 hashes");
        assert_eq!(full.push([0; 32]), Err(FrontierError::Full));
    }
}
