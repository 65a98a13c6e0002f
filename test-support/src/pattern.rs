//! Reproducible byte patterns and a fast order-sensitive checksum, shared by the tests, the
//! benchmarks, the test peer and the demo, so that both ends of a transfer can check what
//! arrived without shipping the data twice.

/// Fills `buf` with the xorshift64 sequence started from `seed` (any seed; 0 is mapped to 1).
pub fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// Checksum of a sequence of buffers (a model's tensors), in order: each buffer's
/// [`checksum`], combined so that order matters.
pub fn checksum_all<'a>(buffers: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    buffers
        .into_iter()
        .fold(0u64, |acc, bytes| acc.rotate_left(7) ^ checksum(bytes))
}

/// FNV-1a over little-endian 8-byte words, then over the remaining bytes: sensitive to the
/// order and value of every byte, and fast enough to check gigabytes.
pub fn checksum(buf: &[u8]) -> u64 {
    const PRIME: u64 = 0x100_0000_01b3;
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut words = buf.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        hash = (hash ^ u64::from_le_bytes(w)).wrapping_mul(PRIME);
    }
    for &b in words.remainder() {
        hash = (hash ^ u64::from(b)).wrapping_mul(PRIME);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let (mut a, mut b, mut c) = (vec![0; 1001], vec![0; 1001], vec![0; 1001]);
        fill(&mut a, 5);
        fill(&mut b, 5);
        fill(&mut c, 6);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(checksum(&a), checksum(&b));
        assert_ne!(checksum(&a), checksum(&c));
    }

    #[test]
    fn checksum_sees_order_and_tail_bytes() {
        assert_ne!(
            checksum(&[1, 2, 3, 4, 5, 6, 7, 8, 9]),
            checksum(&[1, 2, 3, 4, 5, 6, 7, 8, 10])
        );
        assert_ne!(
            checksum(&[1, 0, 0, 0, 0, 0, 0, 0]),
            checksum(&[0, 0, 0, 0, 0, 0, 0, 1])
        );
        assert_ne!(checksum(&[]), checksum(&[0]));
    }
}
