//! Reading netlink attributes (TLVs) from kernel bytes without trusting them.
//!
//! Framing errors (a length running past the buffer) are decode errors;
//! attributes we do not know are skipped. Nothing here indexes without a
//! length check, so garbage input gives an error, never a panic.

use netlink_packet_core::{NlasIterator, NLA_TYPE_MASK};

use super::error::NetlinkError;

/// The `(type, value)` pairs of a run of attributes; the NESTED and
/// NET_BYTEORDER flag bits are masked off the type.
pub(crate) fn nlas<'a>(
    buf: &'a [u8],
    what: &'static str,
) -> Result<Vec<(u16, &'a [u8])>, NetlinkError> {
    let mut out = Vec::new();
    for nla in NlasIterator::new(buf) {
        let nla = nla.map_err(|e| NetlinkError::Decode {
            what,
            reason: e.to_string(),
        })?;
        let (kind, len) = (nla.kind(), nla.length() as usize);
        // new_checked guarantees 4 <= len <= the remaining buffer.
        let value = nla.into_inner().get(4..len).unwrap_or_default();
        out.push((kind & NLA_TYPE_MASK, value));
    }
    Ok(out)
}

/// A native-endian `u32` at `offset`, if the buffer is long enough.
pub(crate) fn u32_at(buf: &[u8], offset: usize) -> Option<u32> {
    let bytes = buf.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

/// A native-endian `i32` at `offset`, if the buffer is long enough.
pub(crate) fn i32_at(buf: &[u8], offset: usize) -> Option<i32> {
    u32_at(buf, offset).map(|v| v as i32)
}

/// A NUL-terminated (or not) string attribute; invalid UTF-8 is replaced.
pub(crate) fn string(value: &[u8]) -> String {
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

/// A fixed-width integer attribute; `None` when too short.
pub(crate) fn u32_value(value: &[u8]) -> Option<u32> {
    u32_at(value, 0)
}

pub(crate) fn u8_value(value: &[u8]) -> Option<u8> {
    value.first().copied()
}

/// Round up to the 4-byte netlink alignment.
pub(crate) fn align4(len: usize) -> usize {
    len.saturating_add(3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_attributes_and_masks_flags() {
        // type 3 (with NLA_F_NESTED) len 8 value 1; type 1 len 5 "a" + pad
        let buf = [8, 0, 3, 0x80, 1, 0, 0, 0, 5, 0, 1, 0, b'a', 0, 0, 0];
        let got = nlas(&buf, "test").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, 3);
        assert_eq!(u32_value(got[0].1), Some(1));
        assert_eq!(got[1], (1, &b"a"[..]));
    }

    #[test]
    fn framing_errors_are_errors() {
        // length 12 but only 8 bytes
        assert!(nlas(&[12, 0, 1, 0, 0, 0, 0, 0], "test").is_err());
        // length below the header size
        assert!(nlas(&[2, 0, 1, 0], "test").is_err());
        // fewer than 4 bytes
        assert!(nlas(&[1], "test").is_err());
        assert!(nlas(&[], "test").unwrap().is_empty());
    }

    #[test]
    fn scalar_helpers_check_length() {
        assert_eq!(u32_at(&[1, 0, 0], 0), None);
        assert_eq!(u32_at(&[0, 1, 0, 0, 0], 1), Some(1));
        assert_eq!(u32_at(&[0; 4], usize::MAX), None);
        assert_eq!(string(b"eth0\0\0"), "eth0");
        assert_eq!(string(b"eth0"), "eth0");
        assert_eq!(align4(5), 8);
        assert_eq!(align4(8), 8);
    }
}
