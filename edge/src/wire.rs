//! Reads what routing needs from gRPC-framed protobuf messages (model name and version, the
//! sequence, request and response ids) and writes the few stream answers the edge makes.

use bytes::Bytes;

/// Returns None when the message is malformed or its strings are not UTF-8 (a message Triton
/// cannot parse either). The flag byte is not looked at: `grpc::check_unary_framing` decided
/// the message is readable.
pub fn model_key(frame: &[u8]) -> Option<(&str, &str)> {
    // gRPC framing: 1 byte compressed flag, 4 bytes big-endian length, then the message.
    if frame.len() < 5 {
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
    let (name, version) = (std::str::from_utf8(name).ok()?, std::str::from_utf8(version).ok()?);
    // Triton hands the name to its core as a C string: it ends at the first NUL.
    let name = name.split('\0').next().unwrap_or_default();
    Some((name, version))
}

/// Top-level fields of a protobuf message: (field number, wire type, start, end of value);
/// None when the message is malformed.
fn fields(message: &[u8]) -> Option<Vec<(u64, u64, usize, usize)>> {
    let mut iter = FieldIter { message, pos: 0 };
    let found: Vec<_> = iter.by_ref().collect();
    (iter.pos == message.len()).then_some(found)
}

/// The top-level fields of a message one by one, without allocating; it stops at the first
/// malformed one (then `pos` is not the message's end).
struct FieldIter<'a> {
    message: &'a [u8],
    pos: usize,
}

impl Iterator for FieldIter<'_> {
    type Item = (u64, u64, usize, usize);

    fn next(&mut self) -> Option<Self::Item> {
        let message = self.message;
        if self.pos >= message.len() {
            return None;
        }
        let (tag, start) = varint(message, self.pos)?;
        let (field, wire) = (tag >> 3, tag & 7);
        let (from, end) = match wire {
            0 => (start, varint(message, start)?.1),
            1 => (start, start.checked_add(8)?),
            5 => (start, start.checked_add(4)?),
            2 => {
                let (length, next) = varint(message, start)?;
                (next, next.checked_add(usize::try_from(length).ok()?)?)
            }
            _ => return None,
        };
        if end > message.len() {
            return None;
        }
        self.pos = end;
        Some((field, wire, from, end))
    }
}

/// The `id` (field 3) of a ModelInferRequest frame ("" when it has none or is malformed).
pub fn request_id(frame: &[u8]) -> &str {
    message_of(frame)
        .and_then(|message| string_field(message, 3))
        .unwrap_or("")
}

/// `infer_response.model_name` and `infer_response.id` of a ModelStreamInferResponse frame
/// ("" for what it does not carry).
pub fn stream_response_key(frame: &[u8]) -> (&str, &str) {
    let response = message_of(frame).and_then(|message| {
        let (_, _, from, to) = fields(message)?
            .into_iter()
            .find(|(field, wire, _, _)| *field == 2 && *wire == 2)?;
        Some(&message[from..to])
    });
    let Some(response) = response else {
        return ("", "");
    };
    (
        string_field(response, 1).unwrap_or(""),
        string_field(response, 3).unwrap_or(""),
    )
}

/// The `infer_response` (a ModelInferResponse message) of a plain ModelStreamInferResponse
/// frame; None when compressed or absent.
pub fn stream_infer_response(frame: &[u8]) -> Option<&[u8]> {
    if frame.first() != Some(&0) {
        return None;
    }
    let message = message_of(frame)?;
    let (_, _, from, to) = fields(message)?
        .into_iter()
        .find(|(field, wire, _, _)| *field == 2 && *wire == 2)?;
    Some(&message[from..to])
}

/// Whether a ModelStreamInferResponse frame is its request's last answer: Triton marks it with
/// the `triton_final_response` parameter (a decoupled model's final flag may also never reach
/// the client: Triton sends no answer for a bare flag unless the request asked for one).
pub fn stream_response_final(frame: &[u8]) -> bool {
    let Some(response) = stream_infer_response(frame) else {
        return false;
    };
    // ModelInferResponse.parameters (field 4): the map's last entry for a key wins.
    let mut last = false;
    for (field, _, from, to) in (FieldIter {
        message: response,
        pos: 0,
    }) {
        if field != 4 {
            continue;
        }
        if let Some((b"triton_final_response", Some(parameter))) = map_entry(&response[from..to]) {
            last = flag(parameter);
        }
    }
    last
}

/// Whether a ModelStreamInferResponse frame reports a failed request (`error_message`, field 1).
pub fn stream_response_failed(frame: &[u8]) -> bool {
    message_of(frame).and_then(fields).is_some_and(|found| {
        found
            .iter()
            .any(|(field, wire, from, to)| *field == 1 && *wire == 2 && to > from)
    })
}

/// A ModelStreamInferResponse frame wrapping a ModelInferResponse message (a unary answer's
/// payload, without its 5-byte prefix).
pub fn stream_response(infer_response: &[u8]) -> Bytes {
    let mut message = Vec::with_capacity(infer_response.len() + 16);
    put_bytes(&mut message, 2, infer_response);
    framed(&message)
}

/// A ModelStreamInferResponse frame carrying an error, as Triton reports a failed request on a
/// stream: the message, and the request's id in `infer_response` so the client can match it.
pub fn stream_error(error: &str, request_id: &str) -> Bytes {
    let mut response = Vec::new();
    if !request_id.is_empty() {
        put_bytes(&mut response, 3, request_id.as_bytes());
    }
    let mut message = Vec::with_capacity(error.len() + response.len() + 8);
    put_bytes(&mut message, 1, error.as_bytes());
    put_bytes(&mut message, 2, &response);
    framed(&message)
}

/// The message of a gRPC frame (after its 5-byte prefix), when the frame holds it whole.
fn message_of(frame: &[u8]) -> Option<&[u8]> {
    let length = u32::from_be_bytes([*frame.get(1)?, *frame.get(2)?, *frame.get(3)?, *frame.get(4)?]);
    frame.get(5..5 + length as usize)
}

fn string_field(message: &[u8], number: u64) -> Option<&str> {
    let (_, _, from, to) = fields(message)?
        .into_iter()
        .find(|(field, wire, _, _)| *field == number && *wire == 2)?;
    std::str::from_utf8(&message[from..to]).ok()
}

/// A unary answer (a ModelInferResponse message) as the stream message Triton writes for it:
/// flagged as its request's last answer (parameter `triton_final_response`), the entry where
/// Triton puts it (after the id and any other parameter, before the outputs).
pub fn stream_final_answer(infer_response: &[u8]) -> Bytes {
    // parameters { key: "triton_final_response" value { bool_param: true } }
    const FINAL_ENTRY: &[u8] = b"\x22\x1b\x0a\x15triton_final_response\x12\x02\x08\x01";
    let mut fields = FieldIter {
        message: infer_response,
        pos: 0,
    };
    let mut split = infer_response.len();
    loop {
        let tag_at = fields.pos;
        match fields.next() {
            Some((field, ..)) if field > 4 => {
                split = tag_at;
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    let mut message = Vec::with_capacity(infer_response.len() + FINAL_ENTRY.len() + 8);
    message.extend_from_slice(&infer_response[..split]);
    message.extend_from_slice(FINAL_ENTRY);
    message.extend_from_slice(&infer_response[split..]);
    stream_response(&message)
}

pub fn put_bytes(out: &mut Vec<u8>, field: u64, value: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The request of `frame` (plain: read with `compression::readable`) naming model `name`
/// (field 1) and `version` (field 2), where given: the fields are appended, and the last
/// occurrence of a protobuf field is the one a parser keeps, so the rest of the message is
/// copied unchanged. Every request the edge routes (ModelInfer, ModelReady, ModelMetadata,
/// ModelConfig) keeps its name in field 1 and its version in field 2.
pub fn renaming(frame: &[u8], name: Option<&str>, version: Option<&str>) -> Bytes {
    let message = frame.get(5..).unwrap_or_default();
    let extra = name.map_or(0, |n| n.len() + 11) + version.map_or(0, |v| v.len() + 11);
    let mut out = Vec::with_capacity(frame.len() + extra);
    out.push(0);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(message);
    if let Some(name) = name {
        put_bytes(&mut out, 1, name.as_bytes());
    }
    if let Some(version) = version {
        put_bytes(&mut out, 2, version.as_bytes());
    }
    let length = (out.len() - 5) as u32;
    out[1..5].copy_from_slice(&length.to_be_bytes());
    Bytes::from(out)
}

/// The frame's message with `suffix` (encoded fields) appended, re-framed (not compressed).
pub fn appending(frame: &[u8], suffix: &[u8]) -> Bytes {
    let message = message_of(frame).unwrap_or_default();
    let mut out = Vec::with_capacity(message.len() + suffix.len() + 5);
    out.push(0);
    out.extend_from_slice(&((message.len() + suffix.len()) as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.extend_from_slice(suffix);
    Bytes::from(out)
}

/// A string parameter of a ModelStreamInferResponse frame's `infer_response` (every
/// occurrence of the field merged, as parsers read it).
#[cfg(test)]
pub fn stream_answer_parameter(frame: &[u8], key: &str) -> Option<String> {
    let message = message_of(frame)?;
    let mut found = None;
    for (field, wire, from, to) in fields(message)? {
        if field == 2 && wire == 2 {
            if let Some(value) = string_parameter(&framed(&message[from..to]), key) {
                found = Some(value.to_string());
            }
        }
    }
    found
}

/// The string value of request parameter `key` (ModelInferRequest.parameters, field 4), when
/// the frame has it as a `string_param`.
pub fn string_parameter<'a>(frame: &'a [u8], key: &str) -> Option<&'a str> {
    let message = message_of(frame)?;
    let mut found = None;
    for (field, wire, from, to) in fields(message)? {
        if field != 4 || wire != 2 {
            continue;
        }
        let entry = &message[from..to];
        let (mut entry_key, mut value) = (None, None);
        for (entry_field, _, s, e) in fields(entry)? {
            match entry_field {
                1 => entry_key = Some(&entry[s..e]),
                2 => value = Some(&entry[s..e]),
                _ => {}
            }
        }
        if entry_key != Some(key.as_bytes()) {
            continue;
        }
        // A map's last entry for a key wins, as protobuf parsers read it.
        found = value.and_then(|value| string_field(value, 3));
    }
    found
}

/// A message with its gRPC prefix (not compressed).
pub fn framed(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

/// A request's place in a Triton sequence, read from its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    /// `sequence_id` (int64 or string) as text; never empty (0 and "" mean "no sequence").
    pub id: String,
    pub start: bool,
    pub end: bool,
}

/// What routing reads of a ModelInferRequest beyond its model, in one pass over its fields.
#[derive(Debug, Default)]
pub struct InferFacts {
    /// Its sequence, when it has a `sequence_id` parameter.
    pub sequence: Option<Sequence>,
    /// Whether an input or a requested output names a shared-memory region (its
    /// `shared_memory_region` parameter): such calls go to the gateway, which holds the
    /// client's regions. Only the small tensor descriptions are read, never raw contents.
    pub shared_memory: bool,
}

/// The facts of a request frame; none of a malformed one (its backend answers it).
pub fn infer_facts(frame: &[u8]) -> InferFacts {
    let Some(message) = message_of(frame) else {
        return InferFacts::default();
    };
    let (mut id, mut start, mut end, mut shared_memory) = (None, false, false, false);
    let mut top = FieldIter { message, pos: 0 };
    for (field, _, from, to) in top.by_ref() {
        let value = &message[from..to];
        match field {
            // ModelInferRequest.parameters: map<string, InferParameter>
            4 => {
                let Some((key, parameter)) = map_entry(value) else {
                    return InferFacts::default();
                };
                match (key, parameter) {
                    (b"sequence_id", Some(parameter)) => id = sequence_id(parameter),
                    (b"sequence_start", Some(parameter)) => start = flag(parameter),
                    (b"sequence_end", Some(parameter)) => end = flag(parameter),
                    (b"sequence_id" | b"sequence_start" | b"sequence_end", None) => {
                        return InferFacts::default();
                    }
                    _ => {}
                }
            }
            // inputs: their parameters are field 4; requested outputs: field 2.
            5 => shared_memory |= names_region(value, 4),
            6 => shared_memory |= names_region(value, 2),
            _ => {}
        }
    }
    if top.pos != message.len() {
        return InferFacts::default();
    }
    InferFacts {
        sequence: id.map(|id| Sequence { id, start, end }),
        shared_memory,
    }
}

/// Whether a tensor description's parameters (field `parameters`) name a region.
fn names_region(tensor: &[u8], parameters: u64) -> bool {
    FieldIter {
        message: tensor,
        pos: 0,
    }
    .any(|(field, _, s, e)| {
        field == parameters && map_entry(&tensor[s..e]).is_some_and(|(key, _)| key == b"shared_memory_region")
    })
}

/// A map entry's key (field 1) and value (field 2); None when malformed or keyless.
fn map_entry(entry: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let mut fields = FieldIter { message: entry, pos: 0 };
    let (mut key, mut value) = (None, None);
    for (field, _, s, e) in fields.by_ref() {
        match field {
            1 => key = Some(&entry[s..e]),
            2 => value = Some(&entry[s..e]),
            _ => {}
        }
    }
    (fields.pos == entry.len()).then_some(())?;
    Some((key?, value))
}

/// InferParameter's int64_param (2), uint64_param (5) or string_param (3) as text.
fn sequence_id(value: &[u8]) -> Option<String> {
    for (param_field, wire, s, e) in fields(value)? {
        match (param_field, wire) {
            (2, 0) | (5, 0) => {
                let number = varint(value, s)?.0;
                return if number == 0 { None } else { Some(number.to_string()) };
            }
            (3, 2) => {
                let text = std::str::from_utf8(&value[s..e]).ok()?;
                return if text.is_empty() { None } else { Some(text.to_string()) };
            }
            _ => {}
        }
    }
    None
}

/// InferParameter's bool_param (1).
fn flag(value: &[u8]) -> bool {
    fields(value)
        .into_iter()
        .flatten()
        .any(|(field, wire, s, _)| field == 1 && wire == 0 && varint(value, s).is_some_and(|(v, _)| v != 0))
}

/// A protobuf varint at `pos`: (value, position after it).
pub fn varint(data: &[u8], mut pos: usize) -> Option<(u64, usize)> {
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
    use super::{model_key, Sequence};

    fn sequence(frame: &[u8]) -> Option<Sequence> {
        super::infer_facts(frame).sequence
    }

    fn uses_shared_memory(frame: &[u8]) -> bool {
        super::infer_facts(frame).shared_memory
    }

    fn frame(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    #[test]
    fn naming_a_version_keeps_the_message_and_is_what_a_parser_reads() {
        let message = [b"\x0a\x06simple".as_slice(), b"\x1a\x02id"].concat();
        let named = super::renaming(&frame(&message), None, Some("12"));
        assert_eq!(model_key(&named), Some(("simple", "12")));
        assert_eq!(super::request_id(&named), "id");
        assert_eq!(&named[5..5 + message.len()], message.as_slice());
        // An empty version already present: the appended one is the last, so it counts.
        let spelled_empty = [b"\x0a\x01m\x12\x00".as_slice()].concat();
        assert_eq!(
            model_key(&super::renaming(&frame(&spelled_empty), None, Some("3"))),
            Some(("m", "3"))
        );
        let aliased = super::renaming(&frame(&message), Some("real"), Some("2"));
        assert_eq!(model_key(&aliased), Some(("real", "2")));
    }

    #[test]
    fn reads_name_and_version() {
        let message = [b"\x0a\x06simple\x12\x011".as_slice(), b"\x1a\x02id"].concat();
        assert_eq!(model_key(&frame(&message)), Some(("simple", "1")));
    }

    #[test]
    fn reads_sequence_ids() {
        // parameters { key: "sequence_id" value { int64_param: 1234 } }
        let int_entry = [b"\x0a\x0bsequence_id".as_slice(), b"\x12\x03\x10\xd2\x09"].concat();
        let message = [b"\x0a\x01m".as_slice(), &[0x22, int_entry.len() as u8], &int_entry].concat();
        let read = sequence(&frame(&message)).unwrap();
        assert_eq!((read.id.as_str(), read.start, read.end), ("1234", false, false));
        let text_entry = [b"\x0a\x0bsequence_id".as_slice(), b"\x12\x03\x1a\x01s"].concat();
        let message = [&[0x22, text_entry.len() as u8], text_entry.as_slice()].concat();
        assert_eq!(sequence(&frame(&message)).unwrap().id, "s");
        assert_eq!(sequence(&frame(b"\x0a\x01m")), None);
        // parameters { key: "sequence_start" value { bool_param: true } } beside a string id
        let start_entry = [b"\x0a\x0esequence_start".as_slice(), b"\x12\x02\x08\x01"].concat();
        let message = [
            &[0x22, text_entry.len() as u8],
            text_entry.as_slice(),
            &[0x22, start_entry.len() as u8],
            start_entry.as_slice(),
        ]
        .concat();
        let read = sequence(&frame(&message)).unwrap();
        assert!(read.start && !read.end);
    }

    #[test]
    fn finds_shared_memory_regions_in_inputs_and_outputs_only() {
        // parameters { key: "shared_memory_region" value { string_param: "r" } }
        let entry = [b"\x0a\x14shared_memory_region".as_slice(), b"\x12\x03\x1a\x01r"].concat();
        let in_input = [b"\x0a\x02IN".as_slice(), &[0x22, entry.len() as u8], &entry].concat();
        let request = [b"\x0a\x01m".as_slice(), &[0x2a, in_input.len() as u8], &in_input].concat();
        assert!(uses_shared_memory(&frame(&request)));
        let in_output = [b"\x0a\x03OUT".as_slice(), &[0x12, entry.len() as u8], &entry].concat();
        let request = [b"\x0a\x01m".as_slice(), &[0x32, in_output.len() as u8], &in_output].concat();
        assert!(uses_shared_memory(&frame(&request)));
        // The same bytes as a request parameter or inside raw contents are not a region.
        let elsewhere = [
            b"\x0a\x01m".as_slice(),
            &[0x22, entry.len() as u8],
            &entry,
            &[0x3a, in_input.len() as u8],
            &in_input,
        ]
        .concat();
        assert!(!uses_shared_memory(&frame(&elsewhere)));
        assert!(!uses_shared_memory(&frame(b"\x0a\x01m")));
    }

    #[test]
    fn stream_answers_carry_the_request_id() {
        let request = frame(b"\x0a\x01m\x1a\x03r-7");
        assert_eq!(super::request_id(&request), "r-7");
        assert_eq!(super::request_id(&frame(b"\x0a\x01m")), "");
        let error = super::stream_error("boom", "r-7");
        assert_eq!(super::stream_response_key(&error), ("", "r-7"));
        // error_message "boom", infer_response { id: "r-7" }
        assert_eq!(&error[5..], b"\x0a\x04boom\x12\x05\x1a\x03r-7");
        let wrapped = super::stream_response(b"\x0a\x01m\x1a\x02id");
        assert_eq!(super::stream_response_key(&wrapped), ("m", "id"));
        assert_eq!(&wrapped[5..], b"\x12\x07\x0a\x01m\x1a\x02id");
    }

    #[test]
    fn a_final_answer_is_the_one_triton_flags() {
        // parameters { key: "triton_final_response" value { bool_param: B } }
        let entry = |flag: u8| {
            let entry = [b"\x0a\x15triton_final_response".as_slice(), &[0x12, 0x02, 0x08, flag]].concat();
            [&[0x22, entry.len() as u8], entry.as_slice()].concat()
        };
        let answer =
            |parameters: &[u8]| super::stream_response(&[b"\x0a\x01m\x1a\x01a".as_slice(), parameters].concat());
        assert!(super::stream_response_final(&answer(&entry(1))));
        assert!(!super::stream_response_final(&answer(&entry(0))));
        assert!(!super::stream_response_final(&answer(b"")));
        // The last entry for the key wins, as a protobuf parser reads the map.
        assert!(!super::stream_response_final(&answer(&[entry(1), entry(0)].concat())));
        assert!(!super::stream_response_final(&super::stream_error("boom", "a")));
    }

    #[test]
    fn a_unary_answer_on_a_stream_is_flagged_final_where_triton_puts_the_flag() {
        // model_name "m", id "a", outputs { name: "O" }
        let answer = super::stream_final_answer(b"\x0a\x01m\x1a\x01a\x2a\x03\x0a\x01O");
        assert!(super::stream_response_final(&answer));
        assert_eq!(super::stream_response_key(&answer), ("m", "a"));
        let infer_response = super::stream_infer_response(&answer).unwrap();
        assert!(infer_response.starts_with(b"\x0a\x01m\x1a\x01a\x22\x1b\x0a\x15triton_final_response"));
        assert!(infer_response.ends_with(b"\x08\x01\x2a\x03\x0a\x01O"));
        // Nothing after the id: the flag comes last.
        let bare = super::stream_final_answer(b"\x1a\x01a");
        assert!(super::stream_response_final(&bare));
        assert_eq!(super::stream_response_key(&bare), ("", "a"));
    }

    #[test]
    fn a_name_ends_at_its_first_nul_as_triton_reads_it() {
        assert_eq!(
            model_key(&frame(b"\x0a\x0bsimple\x00junk\x12\x011")),
            Some(("simple", "1"))
        );
        assert_eq!(model_key(&frame(b"\x0a\x07\x00simple")), Some(("", "")));
    }

    #[test]
    fn missing_version_is_empty() {
        assert_eq!(model_key(&frame(b"\x0a\x01m")), Some(("m", "")));
    }

    #[test]
    fn rejects_truncated_and_bad_utf8() {
        assert_eq!(model_key(&frame(b"\x0a\x09short")), None);
        assert_eq!(model_key(&frame(b"\x0a\x02\xff\xfe")), None);
        assert_eq!(model_key(b"\x00\x00"), None);
    }
}
