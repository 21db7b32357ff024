//! GHASH, the universal hash under GCM (NIST SP 800-38D §6.4), in constant-time portable Rust.
//!
//! aws-lc-rs exposes GCM only with 96-bit nonces, but Nextcloud writes 128-bit ones, so `gcm` composes
//! GCM itself from aws-lc-rs's AES block function and this hash.
//! The field multiplication is BearSSL's `ghash_ctmul64` (Thomas Pornin, MIT): carry-less products built
//! from integer multiplications of operands with "holes" every fourth bit, Karatsuba over 64-bit halves,
//! and bit reversal instead of GCM's reflected reduction. No secret-dependent branches or table lookups
//! (it assumes, like BearSSL, that 64-bit multiplication is constant-time, true on x86-64 and AArch64).
//! The tests check it against the specification's bit-serial algorithm 1.

/// The running GHASH state for one hash key H.
pub(crate) struct Ghash {
    /// The hash key H = AES_K(0^128), as a big-endian integer.
    h: u128,
    /// The accumulator Y.
    y: u128,
}

impl Ghash {
    /// A fresh state for the hash key `h` (the encryption of the zero block).
    pub(crate) fn new(h: &[u8; 16]) -> Ghash {
        Ghash {
            h: u128::from_be_bytes(*h),
            y: 0,
        }
    }

    /// Absorbs one full 16-byte block.
    pub(crate) fn update_block(&mut self, block: &[u8; 16]) {
        self.y = multiply(self.y ^ u128::from_be_bytes(*block), self.h);
    }

    /// The current value Y.
    pub(crate) fn value(&self) -> [u8; 16] {
        self.y.to_be_bytes()
    }
}

impl Drop for Ghash {
    fn drop(&mut self) {
        // H is derived from the key, and Y from the plaintext's ciphertext under it.
        zeroize::Zeroize::zeroize(&mut self.h);
        zeroize::Zeroize::zeroize(&mut self.y);
    }
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
fn multiply(y: u128, h: u128) -> u128 {
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
