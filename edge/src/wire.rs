//! Reads fields 1 (model name) and 2 (model version) of a gRPC-framed protobuf request.

/// Returns None when the frame is compressed, malformed or not UTF-8: the gateway then answers.
pub fn model_key(frame: &[u8]) -> Option<(&str, &str)> {
    // gRPC framing: 1 byte compressed flag, 4 bytes big-endian length, then the message.
    if frame.len() < 5 || frame[0] != 0 {
        return None;
    }
    let length = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    let message = frame.get(5..5 + length)?;
    let mut name: &[u8] = b"";
    let mut version: &[u8] = b"";
    let mut pos = 0usize;
    while pos < message.len() {
        let (tag, next) = varint(message, pos)?;
        pos = next;
        if tag >> 3 == 0 {
            return None;
        }
        match tag & 7 {
            0 => pos = varint(message, pos)?.1,
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let (length, next) = varint(message, pos)?;
                let end = next.checked_add(usize::try_from(length).ok()?)?;
                let value = message.get(next..end)?;
                match tag >> 3 {
                    1 => name = value,
                    2 => version = value,
                    _ => {}
                }
                pos = end;
            }
            _ => return None,
        }
    }
    if pos != message.len() {
        return None;
    }
    Some((std::str::from_utf8(name).ok()?, std::str::from_utf8(version).ok()?))
}

fn varint(data: &[u8], mut pos: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *data.get(pos)?;
        pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some((value, pos));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::model_key;

    fn frame(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    #[test]
    fn reads_name_and_version() {
        let message = [b"\x0a\x06simple\x12\x011".as_slice(), b"\x1a\x02id"].concat();
        assert_eq!(model_key(&frame(&message)), Some(("simple", "1")));
    }

    #[test]
    fn missing_version_is_empty() {
        assert_eq!(model_key(&frame(b"\x0a\x01m")), Some(("m", "")));
    }

    #[test]
    fn rejects_compressed_truncated_and_bad_utf8() {
        let mut compressed = frame(b"\x0a\x01m");
        compressed[0] = 1;
        assert_eq!(model_key(&compressed), None);
        assert_eq!(model_key(&frame(b"\x0a\x09short")), None);
        assert_eq!(model_key(&frame(b"\x0a\x02\xff\xfe")), None);
        assert_eq!(model_key(b"\x00\x00"), None);
    }
}
