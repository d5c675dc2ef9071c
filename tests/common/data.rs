//! Deterministic data: pseudo-random generators and byte patterns from a
//! seed, so every run writes the same bytes.
//!
//! There are several streams because the tests were written with different
//! ones and their expectations (fixture-independent models, the crash
//! suite's counts of crash points and states) follow from the exact bytes:
//! each caller keeps its own stream, under a name that says which it is.
//!
//! - [`Rng`] (SplitMix64) and [`pattern`]: its bytes, never all zero for
//!   8 bytes or more;
//! - [`xorshift_pattern`] and [`xorshift_pattern_nonzero`]: bytes from a
//!   xorshift generator, the second with every byte odd (never zero);
//! - [`XorShift`]: the raw xorshift generator from a given state;
//! - [`XorShift64Star`]: xorshift64*, from a seed.

/// A small deterministic pseudo-random generator (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo < hi);
        lo + self.next_u64() % (hi - lo)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `len` deterministic pseudo-random bytes for `seed`; never all zero for
/// lengths of 8 or more, so a lost write cannot pass for unwritten space.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

/// The xorshift (13, 7, 17) state for `seed`: never zero.
fn xorshift_seed(seed: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
}

/// One xorshift (13, 7, 17) step.
fn xorshift_step(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// `len` deterministic bytes for `seed` from a xorshift generator (bits 24
/// to 31 of each state); may contain zeros.
pub fn xorshift_pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = xorshift_seed(seed);
    (0..len).map(|_| (xorshift_step(&mut x) >> 24) as u8).collect()
}

/// [`xorshift_pattern`] with the low bit of every byte set: no byte is
/// zero, so no written byte can pass for unwritten space.
pub fn xorshift_pattern_nonzero(seed: u64, len: usize) -> Vec<u8> {
    let mut x = xorshift_seed(seed);
    (0..len).map(|_| (xorshift_step(&mut x) >> 24) as u8 | 1).collect()
}

/// The xorshift (13, 7, 17) generator from the state it is given (which
/// must not be zero).
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        xorshift_step(&mut self.0)
    }

    /// Uniform-ish in `[0, n)`; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// xorshift64* from a seed.
pub struct XorShift64Star(u64);

impl XorShift64Star {
    pub fn new(seed: u64) -> XorShift64Star {
        XorShift64Star(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}
