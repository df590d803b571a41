//! Compressed request messages (`grpc-encoding: gzip | deflate`, as Triton accepts them): the
//! edge inflates a copy only to read what routing needs; the backend receives the client's
//! bytes unchanged and decodes them itself.

use crate::grpc::{code, Refusal};
use bytes::Bytes;
use flate2::read::{GzDecoder, ZlibDecoder};
use std::io::Read;

/// The frame to read routing fields from: `frame` itself when its message is plain, else an
/// inflated copy (a plain frame). A message that inflates past `limit` is refused as gRPC
/// servers refuse a large message; one that does not inflate, as Triton refuses bytes it
/// cannot parse.
pub fn readable(frame: &Bytes, encoding: Option<&[u8]>, limit: usize) -> Result<Bytes, Refusal> {
    let compressed = frame.first() == Some(&1);
    let (Some(encoding), true) = (encoding, compressed) else {
        return Ok(frame.clone());
    };
    let message = frame.get(5..).unwrap_or_default();
    let mut inflated = Vec::new();
    // One byte past the limit tells "too large" from "exactly the limit".
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let read = match encoding {
        b"gzip" => GzDecoder::new(message).take(cap).read_to_end(&mut inflated),
        b"deflate" => ZlibDecoder::new(message).take(cap).read_to_end(&mut inflated),
        _ => return Ok(frame.clone()),
    };
    if read.is_err() {
        return Err(Refusal::new(code::INTERNAL, crate::grpc::UNPARSABLE));
    }
    if inflated.len() > limit {
        let message = format!("Received message larger than max ({} vs. {limit})", inflated.len());
        return Err(Refusal::new(code::RESOURCE_EXHAUSTED, message));
    }
    Ok(crate::wire::framed(&inflated))
}

#[cfg(test)]
mod tests {
    use super::readable;
    use bytes::Bytes;
    use flate2::write::{GzEncoder, ZlibEncoder};
    use flate2::Compression;
    use std::io::Write;

    fn compressed_frame(message: &[u8], gzip: bool) -> Bytes {
        let packed = if gzip {
            let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
            encoder.write_all(message).unwrap();
            encoder.finish().unwrap()
        } else {
            let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
            encoder.write_all(message).unwrap();
            encoder.finish().unwrap()
        };
        let mut frame = vec![1u8];
        frame.extend_from_slice(&(packed.len() as u32).to_be_bytes());
        frame.extend_from_slice(&packed);
        Bytes::from(frame)
    }

    #[test]
    fn compressed_messages_are_read_from_an_inflated_copy() {
        let message = b"\x0a\x06simple\x12\x011";
        for (gzip, name) in [(true, b"gzip".as_slice()), (false, b"deflate".as_slice())] {
            let frame = compressed_frame(message, gzip);
            let copy = readable(&frame, Some(name), 1024).unwrap();
            assert_eq!(crate::wire::model_key(&copy), Some(("simple", "1")));
        }
    }

    #[test]
    fn plain_messages_are_read_as_they_are() {
        let frame = crate::wire::framed(b"\x0a\x01m");
        assert_eq!(readable(&frame, Some(b"gzip"), 1024).unwrap(), frame);
        assert_eq!(readable(&frame, None, 1024).unwrap(), frame);
    }

    #[test]
    fn bombs_and_garbage_are_refused() {
        let bomb = compressed_frame(&[0u8; 1 << 20], true);
        let refusal = readable(&bomb, Some(b"gzip"), 1024).unwrap_err();
        assert_eq!(refusal.code, crate::grpc::code::RESOURCE_EXHAUSTED);
        let mut garbage = vec![1u8, 0, 0, 0, 3];
        garbage.extend_from_slice(b"abc");
        let refusal = readable(&Bytes::from(garbage), Some(b"gzip"), 1024).unwrap_err();
        assert_eq!(refusal.code, crate::grpc::code::INTERNAL);
    }
}
