//! The ABI's serialisation of header maps: a little-endian `u32` count, then a `(key_len,
//! value_len)` pair of `u32` per entry, then each key and value followed by a NUL byte.

use crate::types::Status;

pub(crate) fn encode(pairs: &[(String, String)]) -> Vec<u8> {
    let data: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + data);
    out.extend_from_slice(&len_u32(pairs.len()).to_le_bytes());
    for (key, value) in pairs {
        out.extend_from_slice(&len_u32(key.len()).to_le_bytes());
        out.extend_from_slice(&len_u32(value.len()).to_le_bytes());
    }
    for (key, value) in pairs {
        out.extend_from_slice(key.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

/// Parses a map sent by the guest. Every length is checked; malformed input is
/// `BadArgument`, never a panic. Empty input is an empty map (the SDK sends a null pointer
/// for "no headers" in some calls).
pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<(String, String)>, Status> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let count = read_u32(bytes, 0)? as usize;
    let sizes_end = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .ok_or(Status::BadArgument)?;
    if sizes_end > bytes.len() {
        return Err(Status::BadArgument);
    }

    let mut pairs = Vec::with_capacity(count);
    let mut cursor = sizes_end;
    for index in 0..count {
        let key_len = read_u32(bytes, 4 + index * 8)? as usize;
        let value_len = read_u32(bytes, 8 + index * 8)? as usize;
        let key = take(bytes, &mut cursor, key_len)?;
        let value = take(bytes, &mut cursor, value_len)?;
        pairs.push((lossy(key), lossy(value)));
    }
    Ok(pairs)
}

/// Splits a property path: segments separated by NUL bytes.
pub(crate) fn split_path(bytes: &[u8]) -> Vec<String> {
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes.split(|byte| *byte == 0).map(lossy).collect()
}

/// Takes `len` bytes at `cursor` and skips the NUL that must follow them.
fn take<'a>(bytes: &'a [u8], cursor: &mut usize, len: usize) -> Result<&'a [u8], Status> {
    let end = cursor.checked_add(len).ok_or(Status::BadArgument)?;
    let slice = bytes.get(*cursor..end).ok_or(Status::BadArgument)?;
    if bytes.get(end) != Some(&0) {
        return Err(Status::BadArgument);
    }
    *cursor = end + 1;
    Ok(slice)
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32, Status> {
    let end = at.checked_add(4).ok_or(Status::BadArgument)?;
    let raw = bytes.get(at..end).ok_or(Status::BadArgument)?;
    let array: [u8; 4] = raw.try_into().map_err(|_| Status::BadArgument)?;
    Ok(u32::from_le_bytes(array))
}

fn len_u32(len: usize) -> u32 {
    // Guest memory is 32-bit, so nothing it can hold is longer.
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn round_trip() {
        let pairs = owned(&[(":path", "/v1/chat"), ("x-empty", ""), ("a", "b")]);
        assert_eq!(decode(&encode(&pairs)).unwrap(), pairs);
        assert_eq!(encode(&[]), vec![0, 0, 0, 0]);
        assert!(decode(&encode(&[])).unwrap().is_empty());
        assert!(decode(&[]).unwrap().is_empty());
    }

    #[test]
    fn layout_matches_the_abi() {
        let bytes = encode(&owned(&[("ab", "c")]));
        let expected = [1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, b'a', b'b', 0, b'c', 0];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let good = encode(&owned(&[("key", "value")]));
        for cut in 1..good.len() {
            assert_eq!(decode(&good[..cut]), Err(Status::BadArgument), "cut {cut}");
        }
        let mut missing_nul = good.clone();
        let last = missing_nul.len() - 1;
        missing_nul[last] = b'x';
        assert_eq!(decode(&missing_nul), Err(Status::BadArgument));
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xff]), Err(Status::BadArgument));
    }

    #[test]
    fn property_paths() {
        assert_eq!(split_path(b"source\0address"), ["source", "address"]);
        assert_eq!(split_path(b"plugin_name"), ["plugin_name"]);
        assert!(split_path(b"").is_empty());
    }
}
