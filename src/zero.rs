//! The all-zero test used to keep zeros out of outputs and stores.

/// Whether every byte of `bytes` is zero.
///
/// Works on 64-byte blocks folded with OR, which the compiler turns into
/// vector instructions; about memory bandwidth on large buffers.
pub fn is_all_zero(bytes: &[u8]) -> bool {
    let (head, body, tail) = split_u64(bytes);
    if head.iter().chain(tail).any(|&b| b != 0) {
        return false;
    }
    for block in body.chunks(8) {
        if block.iter().fold(0u64, |acc, &w| acc | w) != 0 {
            return false;
        }
    }
    true
}

fn split_u64(bytes: &[u8]) -> (&[u8], &[u64], &[u8]) {
    // SAFETY: every bit pattern is a valid u64, and align_to only hands out
    // the correctly aligned middle part.
    unsafe { bytes.align_to::<u64>() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_single_set_byte_anywhere() {
        let mut buf = vec![0u8; 4099];
        assert!(is_all_zero(&buf));
        assert!(is_all_zero(&buf[1..]));
        for i in [0, 1, 7, 8, 63, 64, 2000, 4098] {
            buf[i] = 1;
            assert!(!is_all_zero(&buf), "byte {i}");
            assert!(!is_all_zero(&buf[i..]), "from byte {i}");
            buf[i] = 0;
        }
        assert!(is_all_zero(&[]));
    }
}
