//! Lower-case hex: the only binary-to-text form in the export's JSON files, and how
//! the proxy writes a message's identity.

/// `b` in lower-case hex, two digits a byte.
pub fn encode(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(char::from(DIGITS[usize::from(x >> 4)]));
        s.push(char::from(DIGITS[usize::from(x & 15)]));
    }
    s
}

/// Decodes exactly `N` bytes of lower- or upper-case hex.
pub(crate) fn decode<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    decode_into(s, &mut out)?;
    Some(out)
}

/// Decodes hex of any even length.
pub(crate) fn decode_vec(s: &str) -> Option<Vec<u8>> {
    let mut out = vec![0u8; s.len() / 2];
    decode_into(s, &mut out)?;
    Some(out)
}

fn decode_into(s: &str, out: &mut [u8]) -> Option<()> {
    let b = s.as_bytes();
    if b.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        let (hi, lo) = match pair {
            [h, l] => (digit(*h)?, digit(*l)?),
            _ => return None,
        };
        *o = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(b in proptest::array::uniform32(any::<u8>())) {
            prop_assert_eq!(super::decode::<32>(&super::encode(&b)), Some(b));
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(super::decode::<2>("abc"), None);
        assert_eq!(super::decode::<2>("abzz"), None);
        assert_eq!(super::decode::<2>("ABcd"), Some([0xab, 0xcd]));
    }
}
