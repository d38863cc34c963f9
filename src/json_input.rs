//! JSON files as Windows tools write them.
//!
//! Windows PowerShell 5.1 writes `Out-File` and `>` as UTF-16 LE with a
//! byte-order mark, and `-Encoding UTF8` as UTF-8 with one; PowerShell 7
//! writes UTF-8 without. Every JSON input vhdkit reads (change lists,
//! chiefly) goes through [`json_text`], so a file a Hyper-V script wrote
//! reads as it is, instead of failing as "not JSON at line 1 column 1".

use std::borrow::Cow;

/// The text of a JSON file in UTF-8 (with or without a byte-order mark)
/// or UTF-16 LE or BE (with a byte-order mark, or without one when the text
/// starts with an ASCII character, as JSON text does). The error says which
/// encoding was taken and where it went wrong.
pub fn json_text(bytes: &[u8]) -> Result<Cow<'_, str>, String> {
    let utf16 = |body: &[u8], little: bool, name: &str| -> Result<Cow<'_, str>, String> {
        if !body.len().is_multiple_of(2) {
            return Err(format!("{name} text of an odd number of bytes ({})", body.len()));
        }
        let units = body.chunks_exact(2).map(|p| {
            let pair = [p[0], p[1]];
            if little { u16::from_le_bytes(pair) } else { u16::from_be_bytes(pair) }
        });
        char::decode_utf16(units)
            .enumerate()
            .map(|(i, c)| c.map_err(|_| format!("{name} text has an unpaired surrogate at byte {}", i * 2)))
            .collect::<Result<String, String>>()
            .map(Cow::Owned)
    };
    match bytes {
        [0xEF, 0xBB, 0xBF, rest @ ..] => utf8(rest),
        [0xFF, 0xFE, rest @ ..] => utf16(rest, true, "UTF-16 LE"),
        [0xFE, 0xFF, rest @ ..] => utf16(rest, false, "UTF-16 BE"),
        [a, 0, ..] if *a != 0 => utf16(bytes, true, "UTF-16 LE (no byte-order mark)"),
        [0, b, ..] if *b != 0 => utf16(bytes, false, "UTF-16 BE (no byte-order mark)"),
        _ => utf8(bytes),
    }
}

fn utf8(bytes: &[u8]) -> Result<Cow<'_, str>, String> {
    std::str::from_utf8(bytes)
        .map(Cow::Borrowed)
        .map_err(|e| format!("not UTF-8 or UTF-16 text: invalid UTF-8 at byte {}", e.valid_up_to()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16(text: &str, little: bool, bom: bool) -> Vec<u8> {
        let mut out = Vec::new();
        if bom {
            out.extend_from_slice(if little { &[0xFF, 0xFE] } else { &[0xFE, 0xFF] });
        }
        for u in text.encode_utf16() {
            out.extend_from_slice(&if little { u.to_le_bytes() } else { u.to_be_bytes() });
        }
        out
    }

    #[test]
    fn every_encoding_powershell_writes_reads_the_same() {
        let text = "{\"ChangedByteOffsets\": [0], \"ChangedByteLengths\": [512], \"n\": \"é😀\"}";
        let mut bom8 = vec![0xEF, 0xBB, 0xBF];
        bom8.extend_from_slice(text.as_bytes());
        for bytes in [
            text.as_bytes().to_vec(),
            bom8,
            utf16(text, true, true),
            utf16(text, false, true),
            utf16(text, true, false),
            utf16(text, false, false),
        ] {
            assert_eq!(json_text(&bytes).unwrap(), text, "{bytes:02x?}");
        }
    }

    #[test]
    fn broken_text_is_refused_with_where() {
        assert!(json_text(&[0xFF, 0xFE, b'{']).unwrap_err().contains("odd"));
        let lone = [0xFF, 0xFE, b'[', 0, 0x00, 0xD8, b']', 0];
        assert!(json_text(&lone).unwrap_err().contains("byte 2"), "{:?}", json_text(&lone));
        assert!(json_text(b"[1, \xC3]").unwrap_err().contains("byte 4"));
        assert_eq!(json_text(b"").unwrap(), "");
    }
}
