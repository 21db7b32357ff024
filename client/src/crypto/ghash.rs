//! GHASH, the universal hash under GCM (NIST SP 800-38D §6.4): bulk input through aws-lc-rs's hardware GHASH,
//! joined up here with a constant-time portable field multiplication.
//!
//! aws-lc-rs exposes GCM only one-shot with 96-bit nonces and exposes no GHASH, but its AES-GCM hashes the
//! associated data with the same hash key H = E_K(0^128) and the same (PCLMULQDQ/VPCLMULQDQ, aggregated,
//! constant-time) code as the ciphertext. Sealing an empty message under a fixed nonce N0 with data A as
//! associated data returns the tag
//!
//! ```text
//! T = GHASH_H(A ‖ 0-pad ‖ [len(A)]_64 ‖ [0]_64) ⊕ E_K(N0 ‖ 1) = (S ⊕ L)·H ⊕ M,
//! ```
//!
//! where S is GHASH_H over A's blocks from a zero state, L the length block and M = E_K(N0 ‖ 1) (the tag of
//! sealing nothing at all, since GHASH of the bare zero length block is 0). GHASH is linear: after m more
//! blocks the running value Y becomes Y·H^m ⊕ S. Keeping Z = Y·H instead avoids needing H⁻¹:
//!
//! ```text
//! Z' = Z·H^m ⊕ (T ⊕ M) ⊕ L·H,    and at the end  GHASH(everything ‖ B) = (Y ⊕ B)·H = Z ⊕ B·H.
//! ```
//!
//! So each call costs one aws-lc-rs pass over the data plus three multiplications here (H^m from a table of
//! H^(2^i)). Nothing secret leaves this module: the tags of these hashing-only seals are unmasked in memory
//! and no ciphertext is produced, so reusing N0 encrypts nothing twice.
//!
//! The multiplication is BearSSL's `ghash_ctmul64` (Thomas Pornin, MIT): carry-less products built
//! from integer multiplications of operands with "holes" every fourth bit, Karatsuba over 64-bit halves,
//! and bit reversal instead of GCM's reflected reduction. No secret-dependent branches or table lookups
//! (it assumes, like BearSSL, that 64-bit multiplication is constant-time, true on x86-64 and AArch64).
//! The tests check it against the specification's bit-serial algorithm 1, and `Ghash` against a
//! block-by-block GHASH built from it.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce};
use zeroize::Zeroize;

use super::CryptoError;

/// Blocks hashed per aws-lc-rs call at most (16 MiB); bounds the table of powers of H.
const MAX_BLOCKS_PER_CALL: usize = 1 << 20;

/// H^(2^i) for i = 0..=20: enough to raise H to any block count up to `MAX_BLOCKS_PER_CALL`.
const POWERS: usize = 21;

/// The fixed nonce of the hashing-only seals (see the module comment).
const HASHING_NONCE: [u8; 12] = [0u8; 12];

/// A running GHASH under one key: whole blocks go through aws-lc-rs, a trailing partial block waits here.
pub(crate) struct Ghash {
    /// AES-GCM under the message's AES key, used only to hash associated data.
    bulk: LessSafeKey,
    /// M = E_K(N0 ‖ 1), the mask on every hashing-only tag.
    bulk_mask: u128,
    /// The hash key H = E_K(0^128), as a big-endian integer.
    h: u128,
    /// `powers[i]` = H^(2^i).
    powers: [u128; POWERS],
    /// Z = Y·H, where Y is GHASH over the whole blocks absorbed so far.
    state: u128,
    /// Input not yet hashed (less than one block).
    partial: [u8; 16],
    partial_len: usize,
}

impl Ghash {
    /// A fresh hash for `bulk`, an AES-GCM key made from the AES key K whose E_K(0^128) is `hash_key`.
    pub(crate) fn new(bulk: LessSafeKey, hash_key: &[u8; 16]) -> Result<Ghash, CryptoError> {
        let h = u128::from_be_bytes(*hash_key);
        let mut powers = [h; POWERS];
        for index in 1..POWERS {
            let previous = powers[index - 1];
            powers[index] = multiply(previous, previous);
        }
        let mut ghash = Ghash {
            bulk,
            bulk_mask: 0,
            h,
            powers,
            state: 0,
            partial: [0u8; 16],
            partial_len: 0,
        };
        ghash.bulk_mask = ghash.hashing_tag(&[])?;
        Ok(ghash)
    }

    /// Absorbs `data`, which need not be a whole number of blocks.
    pub(crate) fn update(&mut self, data: &[u8]) -> Result<(), CryptoError> {
        let mut rest = data;
        // Top up a partial block first; then hash whole blocks straight from the input.
        if self.partial_len > 0 {
            let take = (16 - self.partial_len).min(rest.len());
            self.partial[self.partial_len..self.partial_len + take].copy_from_slice(&rest[..take]);
            self.partial_len += take;
            rest = &rest[take..];
            if self.partial_len < 16 {
                return Ok(());
            }
            let block = self.partial;
            self.absorb_blocks(&block)?;
            self.partial_len = 0;
        }
        let whole = rest.len() - rest.len() % 16;
        let (blocks, tail) = rest.split_at(whole);
        for run in blocks.chunks(16 * MAX_BLOCKS_PER_CALL) {
            self.absorb_blocks(run)?;
        }
        self.partial[..tail.len()].copy_from_slice(tail);
        self.partial_len = tail.len();
        Ok(())
    }

    /// Pads what was absorbed with zeros to a whole block, hashes `last_block` (GCM's length block) after it,
    /// and returns GHASH over all of it.
    pub(crate) fn finish(mut self, last_block: &[u8; 16]) -> Result<[u8; 16], CryptoError> {
        if self.partial_len > 0 {
            let mut block = self.partial;
            block[self.partial_len..].fill(0);
            self.absorb_blocks(&block)?;
        }
        Ok((self.state ^ multiply(u128::from_be_bytes(*last_block), self.h)).to_be_bytes())
    }

    /// Z ← Z·H^m ⊕ (T ⊕ M) ⊕ L·H for the m whole blocks in `blocks` (1 ≤ m ≤ `MAX_BLOCKS_PER_CALL`).
    fn absorb_blocks(&mut self, blocks: &[u8]) -> Result<(), CryptoError> {
        debug_assert!(blocks.len() % 16 == 0 && blocks.len() <= 16 * MAX_BLOCKS_PER_CALL);
        let block_count = blocks.len() / 16;
        let hashed = self.hashing_tag(blocks)? ^ self.bulk_mask;
        let length_block = u128::from(blocks.len() as u64 * 8) << 64;
        self.state = multiply(self.state, self.power(block_count)) ^ hashed ^ multiply(length_block, self.h);
        Ok(())
    }

    /// H^count by square-and-multiply over the public `count`, from the table of H^(2^i).
    fn power(&self, count: usize) -> u128 {
        // The field element 1, in GCM's reflected bit order.
        let mut result = 1u128 << 127;
        for (bit, power) in self.powers.iter().enumerate() {
            if (count >> bit) & 1 == 1 {
                result = multiply(result, *power);
            }
        }
        result
    }

    /// The tag aws-lc-rs's AES-GCM gives an empty message with associated data `data`, under the fixed nonce.
    fn hashing_tag(&self, data: &[u8]) -> Result<u128, CryptoError> {
        let tag = self
            .bulk
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(HASHING_NONCE), Aad::from(data), &mut [])
            .map_err(|_| CryptoError::Backend("GHASH"))?;
        let bytes: [u8; 16] = tag
            .as_ref()
            .try_into()
            .map_err(|_| CryptoError::Backend("GHASH tag length"))?;
        Ok(u128::from_be_bytes(bytes))
    }
}

impl Drop for Ghash {
    fn drop(&mut self) {
        // H and its powers are derived from the key, the state and the partial block from the data under it.
        self.h.zeroize();
        self.powers.zeroize();
        self.bulk_mask.zeroize();
        self.state.zeroize();
        self.partial.zeroize();
    }
}

/// GHASH of a few whole blocks, in portable code only: for the pre-counter block of a 128-bit nonce.
pub(crate) fn hash_blocks(hash_key: &[u8; 16], blocks: &[[u8; 16]]) -> [u8; 16] {
    let h = u128::from_be_bytes(*hash_key);
    let mut y = 0u128;
    for block in blocks {
        y = multiply(y ^ u128::from_be_bytes(*block), h);
    }
    y.to_be_bytes()
}

/// Carry-less 64 × 64 → low 64 bits, with the operands split into four interleaved bit classes so that
/// integer-multiplication carries land only in bits that are masked away.
fn carryless_multiply_low(x: u64, y: u64) -> u64 {
    const M0: u64 = 0x1111_1111_1111_1111;
    const M1: u64 = 0x2222_2222_2222_2222;
    const M2: u64 = 0x4444_4444_4444_4444;
    const M3: u64 = 0x8888_8888_8888_8888;
    let (x0, x1, x2, x3) = (x & M0, x & M1, x & M2, x & M3);
    let (y0, y1, y2, y3) = (y & M0, y & M1, y & M2, y & M3);
    let z0 = x0.wrapping_mul(y0) ^ x1.wrapping_mul(y3) ^ x2.wrapping_mul(y2) ^ x3.wrapping_mul(y1);
    let z1 = x0.wrapping_mul(y1) ^ x1.wrapping_mul(y0) ^ x2.wrapping_mul(y3) ^ x3.wrapping_mul(y2);
    let z2 = x0.wrapping_mul(y2) ^ x1.wrapping_mul(y1) ^ x2.wrapping_mul(y0) ^ x3.wrapping_mul(y3);
    let z3 = x0.wrapping_mul(y3) ^ x1.wrapping_mul(y2) ^ x2.wrapping_mul(y1) ^ x3.wrapping_mul(y0);
    (z0 & M0) | (z1 & M1) | (z2 & M2) | (z3 & M3)
}

/// Y • H in GF(2^128) with GCM's bit order (bit 0 is the most significant bit of the first byte).
pub(super) fn multiply(y: u128, h: u128) -> u128 {
    let (y1, y0) = ((y >> 64) as u64, y as u64);
    let (h1, h0) = ((h >> 64) as u64, h as u64);
    let (h0r, h1r) = (h0.reverse_bits(), h1.reverse_bits());
    let (h2, h2r) = (h0 ^ h1, h0r ^ h1r);
    let (y0r, y1r) = (y0.reverse_bits(), y1.reverse_bits());
    let (y2, y2r) = (y0 ^ y1, y0r ^ y1r);
    // Karatsuba: low halves of the three products, and (through bit reversal) their high halves.
    let z0 = carryless_multiply_low(y0, h0);
    let z1 = carryless_multiply_low(y1, h1);
    let mut z2 = carryless_multiply_low(y2, h2);
    let mut z0h = carryless_multiply_low(y0r, h0r);
    let mut z1h = carryless_multiply_low(y1r, h1r);
    let mut z2h = carryless_multiply_low(y2r, h2r);
    z2 ^= z0 ^ z1;
    z2h ^= z0h ^ z1h;
    z0h = z0h.reverse_bits() >> 1;
    z1h = z1h.reverse_bits() >> 1;
    z2h = z2h.reverse_bits() >> 1;
    // The 256-bit product v3:v2:v1:v0, shifted left by one for GCM's reflected convention, then reduced.
    let (mut v0, mut v1, mut v2, mut v3) = (z0, z0h ^ z2, z1 ^ z2h, z1h);
    v3 = (v3 << 1) | (v2 >> 63);
    v2 = (v2 << 1) | (v1 >> 63);
    v1 = (v1 << 1) | (v0 >> 63);
    v0 <<= 1;
    v2 ^= v0 ^ (v0 >> 1) ^ (v0 >> 2) ^ (v0 >> 7);
    v1 ^= (v0 << 63) ^ (v0 << 62) ^ (v0 << 57);
    v3 ^= v1 ^ (v1 >> 1) ^ (v1 >> 2) ^ (v1 >> 7);
    v2 ^= (v1 << 63) ^ (v1 << 62) ^ (v1 << 57);
    (u128::from(v3) << 64) | u128::from(v2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reduction constant R = 11100001 || 0^120.
    const R: u128 = 0xE1 << 120;

    /// SP 800-38D algorithm 1, bit by bit: the oracle for `multiply`.
    fn multiply_bitwise(x: u128, y: u128) -> u128 {
        let mut product = 0u128;
        let mut v = y;
        for bit_index in 0..128 {
            if (x >> (127 - bit_index)) & 1 == 1 {
                product ^= v;
            }
            v = if v & 1 == 1 { (v >> 1) ^ R } else { v >> 1 };
        }
        product
    }

    /// `Ghash` (aws-lc-rs in bulk, chained here) equals block-by-block GHASH however the input is split.
    fn check_against_block_by_block(key: &[u8; 16], data: &[u8], pieces: &[usize]) {
        use aws_lc_rs::aead::{AES_128_GCM, UnboundKey};
        use aws_lc_rs::cipher::{AES_128, EncryptingKey, UnboundCipherKey};
        let mut hash_key = [0u8; 16];
        EncryptingKey::ecb(UnboundCipherKey::new(&AES_128, key).expect("key"))
            .expect("ecb")
            .encrypt(&mut hash_key)
            .expect("block");
        let bulk = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, key).expect("key"));
        let mut ghash = Ghash::new(bulk, &hash_key).expect("ghash");
        let mut rest = data;
        for piece in pieces.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at((*piece).min(rest.len()));
            ghash.update(now).expect("update");
            rest = later;
        }
        let last_block = [0x42u8; 16];
        let mut blocks: Vec<[u8; 16]> = data
            .chunks(16)
            .map(|chunk| {
                let mut block = [0u8; 16];
                block[..chunk.len()].copy_from_slice(chunk);
                block
            })
            .collect();
        blocks.push(last_block);
        assert_eq!(
            ghash.finish(&last_block).expect("finish"),
            hash_blocks(&hash_key, &blocks)
        );
    }

    #[test]
    fn bulk_ghash_matches_block_by_block_across_call_sizes() {
        let data: Vec<u8> = (0..70_000u32).map(|index| (index * 7 + index / 256) as u8).collect();
        for pieces in [&[65_536][..], &[1], &[15, 17], &[4096, 3], &[70_000]] {
            check_against_block_by_block(&[9u8; 16], &data, pieces);
        }
        check_against_block_by_block(&[9u8; 16], &[], &[1]);
        // More than one aws-lc-rs call's worth in one update.
        let long = vec![0xa5u8; 16 * MAX_BLOCKS_PER_CALL + 40];
        check_against_block_by_block(&[3u8; 16], &long, &[long.len()]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn bulk_ghash_matches_block_by_block(
            key in any::<[u8; 16]>(),
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            pieces in proptest::collection::vec(1usize..700, 1..4),
        ) {
            check_against_block_by_block(&key, &data, &pieces);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn multiply_matches_the_specification(x in any::<u128>(), y in any::<u128>()) {
            prop_assert_eq!(multiply(x, y), multiply_bitwise(x, y));
        }
    }

    #[test]
    fn multiply_matches_the_specification_on_edge_values() {
        let values = [
            0,
            1,
            u128::MAX,
            1 << 127,
            R,
            1 << 64,
            (1 << 64) - 1,
            0x0388dace60b6a392f328c2b971b2fe78,
        ];
        for x in values {
            for y in values {
                assert_eq!(multiply(x, y), multiply_bitwise(x, y), "{x:x} {y:x}");
            }
        }
    }

    #[test]
    fn one_is_the_multiplicative_identity() {
        // In GCM's reflected order the field element 1 is the block 0x80 00 .. 00.
        let one = 1u128 << 127;
        let x = 0x0388dace60b6a392f328c2b971b2fe78u128;
        assert_eq!(multiply(one, x), x);
        assert_eq!(multiply(x, one), x);
        assert_eq!(multiply(0, x), 0);
    }

    #[test]
    fn multiplication_commutes() {
        let a = 0x66e94bd4ef8a2c3b884cfa59ca342b2eu128;
        let b = 0x0388dace60b6a392f328c2b971b2fe78u128;
        assert_eq!(multiply(a, b), multiply(b, a));
    }
}
