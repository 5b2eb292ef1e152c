//! Small stable hashes: the same value on every machine and in every version, for
//! seeds, splits and checksums (not for hash tables, which use faster ones).

/// FNV-1a's starting value.
pub const FNV_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a (64 bit) of `bytes`, continuing from `h` (start from [`FNV_BASIS`]).
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>, mut h: u64) -> u64 {
    for b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// SplitMix64's finaliser: every input bit moves every output bit.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One well-mixed seed from two values (a seed and a stream, an epoch, a batch).
pub fn combine(a: u64, b: u64) -> u64 {
    mix(a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // FNV-1a test vectors.
        assert_eq!(fnv1a(*b"", FNV_BASIS), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(*b"a", FNV_BASIS), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(combine(1, 2), combine(2, 1));
        assert_eq!(mix(0), 0);
    }
}
