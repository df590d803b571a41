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
        let algorithm = String::from_utf8_lossy(encoding);
        let message = format!("Unexpected error decompressing data for algorithm {algorithm}");
        return Err(Refusal::new(code::INTERNAL, message));
    }
    if inflated.len() > limit {
        let message = format!("Received message larger than max ({} vs. {limit})", inflated.len());
        return Err(Refusal::new(code::RESOURCE_EXHAUSTED, message));
    }
    Ok(crate::wire::framed(&inflated))
}

/// `frame` as Triton reads it, for the gateway's gRPC server: a compressed flag with no
/// encoding to inflate by (none, or `identity`) is read as plain by Triton but refused by
/// other gRPC servers, so the flag is cleared. Any other frame is returned as it is.
pub fn as_triton_reads(frame: Bytes, encoding: Option<&[u8]>) -> Bytes {
    let inflatable = matches!(encoding, Some(b"gzip" | b"deflate"));
    if frame.first() != Some(&1) || inflatable {
        return frame;
    }
    let mut plain = frame.to_vec();
    plain[0] = 0;
    Bytes::from(plain)
}

#[cfg(test)]
mod tests {
    use super::{as_triton_reads, readable};
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
        let refusal = readable(&Bytes::from(garbage.clone()), Some(b"gzip"), 1024).unwrap_err();
        assert_eq!(refusal.code, crate::grpc::code::INTERNAL);
        assert_eq!(
            refusal.message,
            "Unexpected error decompressing data for algorithm gzip"
        );
        let refusal = readable(&Bytes::from(garbage), Some(b"deflate"), 1024).unwrap_err();
        assert_eq!(
            refusal.message,
            "Unexpected error decompressing data for algorithm deflate"
        );
    }

    #[test]
    fn a_compressed_flag_nothing_can_inflate_is_cleared_for_the_gateway() {
        let flagged = Bytes::from_static(b"\x01\x00\x00\x00\x03\x0a\x01m");
        for encoding in [None, Some(b"identity".as_slice())] {
            assert_eq!(
                &as_triton_reads(flagged.clone(), encoding)[..],
                b"\x00\x00\x00\x00\x03\x0a\x01m"
            );
        }
        assert_eq!(as_triton_reads(flagged.clone(), Some(b"gzip")), flagged);
        let plain = crate::wire::framed(b"\x0a\x01m");
        assert_eq!(as_triton_reads(plain.clone(), None), plain);
    }
}
