//! Compares the primary's and the shadow's answers to one ModelInfer request, output by output,
//! so a new model version can be judged on live traffic before it takes any: whether it answers
//! in the same form, how far its numbers stray, and whether a classifier still picks the same
//! class.
//!
//! The answers are read where they lie (KServe v2 `inference.ModelInferResponse`, as Triton's
//! grpc_service.proto spells it) and their elements are converted one at a time, so comparing
//! a large answer costs a walk over it rather than a copy of it.

use crate::wire::varint;

/// How far a shadow element may stray from the primary's and still be the same answer: an
/// element agrees when `|shadow - primary| <= atol + rtol * |primary|` (numpy's `isclose`, with
/// the primary as the reference since it is the answer clients get). Both terms are needed:
/// rtol alone fails every value near zero, atol alone means nothing next to large logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub atol: f64,
    pub rtol: f64,
}

/// The least denominator of `max_rel_diff`, there only so that a primary 0 does not divide by
/// zero: the smallest normal f64, so the quotient is relative for every other primary value. A
/// shadow that strays from a primary 0 thus shows an enormous relative difference (infinite
/// from about 4 on); judge such outputs by `max_abs_diff` and the tolerance's atol.
pub const RELATIVE_FLOOR: f64 = f64::MIN_POSITIVE;

/// How the shadow's answer for one output of the primary's compares with it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputComparison {
    /// The primary's output; its counterpart is the first shadow output of the same name.
    pub name: String,
    /// Same datatype and shape as the primary's (an output missing on the shadow side: false).
    /// Elements are compared only when it holds: in another layout they do not pair up.
    pub conforms: bool,
    /// The largest `|shadow - primary|` over the elements; 0 when the output is not numeric or
    /// does not conform. A NaN facing a number has no size: it is left out here and shows in
    /// `within_tolerance` and the NaN counts. An infinity facing anything else counts as
    /// infinite.
    pub max_abs_diff: f64,
    /// The largest `|shadow - primary| / max(|primary|, RELATIVE_FLOOR)` over the elements, so
    /// it reads as a fraction of the answer clients get (0.01: one percent); 0 when
    /// `max_abs_diff` is.
    pub max_rel_diff: f64,
    /// Every element agrees under the tolerance (see `Tolerance`). Equal values always agree, so
    /// do NaNs in the same place on both sides (the model failing the same way twice), and an
    /// infinity agrees only with the same infinity. BYTES outputs (and datatypes this module
    /// does not know, compared as their encoded bytes): every element equal. False when the
    /// output does not conform.
    pub within_tolerance: bool,
    /// Rows whose argmax was compared: for a conforming numeric output whose last dimension is
    /// at least 2, each run of that many elements is a row (a classifier's scores for one item
    /// of a batch); 0 otherwise. A NaN counts as the largest value and ties go to the first
    /// index, as numpy and PyTorch have it.
    pub argmax_rows: u64,
    /// Rows in which both sides pick the same index: the number a classifier's clients see.
    pub argmax_agreeing: u64,
    /// NaN and infinite elements of each side's own output (FP16, BF16, FP32, FP64 only),
    /// counted whether or not the outputs conform: a version that starts producing them is
    /// worth knowing about even when nothing else can be compared.
    pub primary_nan: u64,
    pub primary_inf: u64,
    pub shadow_nan: u64,
    pub shadow_inf: u64,
}

/// One `OutputComparison` per output of the primary, in its order: the primary's answer is the
/// one clients got, so it sets what the shadow is held to, and shadow outputs it lacks are not
/// judged. Err when either message cannot be parsed (malformed protobuf, a string that is not
/// UTF-8, a shape that does not match its contents): such an answer says nothing about the
/// model, and Triton's clients would reject it too.
pub fn compare(primary: &[u8], shadow: &[u8], tolerance: Tolerance) -> Result<Vec<OutputComparison>, String> {
    let primary = outputs(primary).map_err(|error| format!("primary answer: {error}"))?;
    let shadow = outputs(shadow).map_err(|error| format!("shadow answer: {error}"))?;
    Ok(primary
        .iter()
        .map(|output| {
            let counterpart = shadow.iter().find(|other| other.name == output.name);
            compare_output(output, counterpart, tolerance)
        })
        .collect())
}

fn compare_output(primary: &Output, shadow: Option<&Output>, tolerance: Tolerance) -> OutputComparison {
    let (primary_nan, primary_inf) = specials(primary);
    let (shadow_nan, shadow_inf) = shadow.map_or((0, 0), specials);
    let mut result = OutputComparison {
        name: primary.name.to_string(),
        conforms: false,
        max_abs_diff: 0.0,
        max_rel_diff: 0.0,
        within_tolerance: false,
        argmax_rows: 0,
        argmax_agreeing: 0,
        primary_nan,
        primary_inf,
        shadow_nan,
        shadow_inf,
    };
    let Some(shadow) = shadow else {
        return result;
    };
    if primary.datatype != shadow.datatype || primary.shape != shadow.shape {
        return result;
    }
    result.conforms = true;
    match primary.dtype {
        DataType::Bytes => {
            result.within_tolerance = byte_elements(primary).eq(byte_elements(shadow));
        }
        DataType::Other => result.within_tolerance = same_encoding(primary, shadow),
        _ => compare_numbers(primary, shadow, tolerance, &mut result),
    }
    result
}

/// Fills the differences, the tolerance verdict and the argmax counts of two conforming numeric
/// outputs in one walk over both.
fn compare_numbers(primary: &Output, shadow: &Output, tolerance: Tolerance, result: &mut OutputComparison) {
    let row_length = match primary.shape.last() {
        Some(&length) if length >= 2 => usize::try_from(length).ok(),
        _ => None,
    };
    let (mut primary_best, mut shadow_best) = (Argmax::default(), Argmax::default());
    let mut within = true;
    for (index, (p, s)) in numbers(primary).zip(numbers(shadow)).enumerate() {
        match difference(p, s) {
            Difference::None => {}
            Difference::Unmeasurable => within = false,
            Difference::Of { abs, reference } => {
                let relative = if abs.is_infinite() {
                    f64::INFINITY
                } else {
                    abs / reference.max(RELATIVE_FLOOR)
                };
                result.max_abs_diff = result.max_abs_diff.max(abs);
                result.max_rel_diff = result.max_rel_diff.max(relative);
                // Written so that a NaN bound (a NaN tolerance) fails rather than passes.
                let agrees = abs.is_finite() && abs <= tolerance.atol + tolerance.rtol * reference;
                within &= agrees;
            }
        }
        if let Some(length) = row_length {
            let column = index % length;
            primary_best.offer(column, p);
            shadow_best.offer(column, s);
            if column == length - 1 {
                result.argmax_rows += 1;
                if primary_best.index == shadow_best.index {
                    result.argmax_agreeing += 1;
                }
            }
        }
    }
    result.within_tolerance = within;
}

/// An element, kept exact: integers stay integers so that two INT64 or UINT64 values that f64
/// would round to the same number still differ.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Number {
    Int(i128),
    Float(f64),
}

enum Difference {
    None,
    /// A NaN facing a number: they disagree, by no amount.
    Unmeasurable,
    /// `reference` is |primary|, what the tolerance and the relative difference scale with.
    Of {
        abs: f64,
        reference: f64,
    },
}

fn difference(primary: Number, shadow: Number) -> Difference {
    match (primary, shadow) {
        (Number::Int(p), Number::Int(s)) if p == s => Difference::None,
        (Number::Int(p), Number::Int(s)) => Difference::Of {
            abs: p.abs_diff(s) as f64,
            reference: p.unsigned_abs() as f64,
        },
        (Number::Float(p), Number::Float(s)) if p == s || (p.is_nan() && s.is_nan()) => Difference::None,
        (Number::Float(p), Number::Float(s)) if p.is_nan() || s.is_nan() => Difference::Unmeasurable,
        (Number::Float(p), Number::Float(s)) => Difference::Of {
            abs: (s - p).abs(),
            reference: p.abs(),
        },
        // Conforming outputs share a datatype, so this is never reached.
        _ => Difference::Unmeasurable,
    }
}

/// The index of the largest element of the row seen so far.
#[derive(Default)]
struct Argmax {
    index: usize,
    value: Option<Number>,
}

impl Argmax {
    /// `column` 0 starts a new row.
    fn offer(&mut self, column: usize, value: Number) {
        let larger = match (self.value, value) {
            _ if column == 0 => true,
            (None, _) => true,
            (Some(Number::Float(best)), Number::Float(value)) => !best.is_nan() && (value.is_nan() || value > best),
            (Some(Number::Int(best)), Number::Int(value)) => value > best,
            _ => false,
        };
        if larger {
            self.index = column;
            self.value = Some(value);
        }
    }
}

/// (NaN, infinite) elements of a floating-point output; (0, 0) for any other.
fn specials(output: &Output) -> (u64, u64) {
    if !output.dtype.is_float() {
        return (0, 0);
    }
    numbers(output).fold((0, 0), |(nan, inf), number| match number {
        Number::Float(value) if value.is_nan() => (nan + 1, inf),
        Number::Float(value) if value.is_infinite() => (nan, inf + 1),
        _ => (nan, inf),
    })
}

/// Outputs of a datatype this module does not know agree only when encoded alike.
fn same_encoding(primary: &Output, shadow: &Output) -> bool {
    match (&primary.data, &shadow.data) {
        (Data::Raw(p), Data::Raw(s)) => p == s,
        (Data::Typed(p), Data::Typed(s)) => p == s,
        _ => false,
    }
}

// ---- The answer as read --------------------------------------------------------------------

/// An InferOutputTensor, with its raw content when the answer has one for it. Its data has been
/// checked against its shape, so the element iterators below need not report errors.
struct Output<'a> {
    name: &'a str,
    datatype: &'a [u8],
    dtype: DataType,
    shape: Vec<i64>,
    data: Data<'a>,
}

enum Data<'a> {
    /// The output's `raw_output_contents` entry: little-endian elements, row-major.
    Raw(&'a [u8]),
    /// Each occurrence of the tensor's `contents` (InferTensorContents); a parser merges them,
    /// which for repeated fields is the same as reading them one after the other.
    Typed(Vec<&'a [u8]>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Bf16,
    Fp32,
    Fp64,
    Bytes,
    /// A name this module does not know: compared as encoded, never rejected.
    Other,
}

/// How an InferTensorContents field encodes one element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar {
    Varint,
    Fixed32,
    Fixed64,
    Bytes,
}

impl DataType {
    fn from_name(name: &[u8]) -> Self {
        match name {
            b"BOOL" => Self::Bool,
            b"UINT8" => Self::Uint8,
            b"UINT16" => Self::Uint16,
            b"UINT32" => Self::Uint32,
            b"UINT64" => Self::Uint64,
            b"INT8" => Self::Int8,
            b"INT16" => Self::Int16,
            b"INT32" => Self::Int32,
            b"INT64" => Self::Int64,
            b"FP16" => Self::Fp16,
            b"BF16" => Self::Bf16,
            b"FP32" => Self::Fp32,
            b"FP64" => Self::Fp64,
            b"BYTES" => Self::Bytes,
            _ => Self::Other,
        }
    }

    /// Bytes per element in raw contents; None where elements have no fixed size.
    fn size(self) -> Option<usize> {
        match self {
            Self::Bool | Self::Uint8 | Self::Int8 => Some(1),
            Self::Uint16 | Self::Int16 | Self::Fp16 | Self::Bf16 => Some(2),
            Self::Uint32 | Self::Int32 | Self::Fp32 => Some(4),
            Self::Uint64 | Self::Int64 | Self::Fp64 => Some(8),
            Self::Bytes | Self::Other => None,
        }
    }

    /// The InferTensorContents field holding this datatype's elements; None for FP16 and BF16,
    /// which travel raw only.
    fn typed_field(self) -> Option<(u64, Scalar)> {
        match self {
            Self::Bool => Some((1, Scalar::Varint)),
            Self::Int8 | Self::Int16 | Self::Int32 => Some((2, Scalar::Varint)),
            Self::Int64 => Some((3, Scalar::Varint)),
            Self::Uint8 | Self::Uint16 | Self::Uint32 => Some((4, Scalar::Varint)),
            Self::Uint64 => Some((5, Scalar::Varint)),
            Self::Fp32 => Some((6, Scalar::Fixed32)),
            Self::Fp64 => Some((7, Scalar::Fixed64)),
            Self::Bytes => Some((8, Scalar::Bytes)),
            Self::Fp16 | Self::Bf16 | Self::Other => None,
        }
    }

    fn is_float(self) -> bool {
        matches!(self, Self::Fp16 | Self::Bf16 | Self::Fp32 | Self::Fp64)
    }
}

/// The outputs of a ModelInferResponse message, each checked against its shape.
fn outputs(message: &[u8]) -> Result<Vec<Output<'_>>, String> {
    let mut tensors = Vec::new();
    let mut raw = Vec::new();
    for field in Fields::new(message) {
        match field? {
            (5, Value::Bytes(tensor)) => tensors.push(tensor),
            (6, Value::Bytes(content)) => raw.push(content),
            // model_name, model_version, id, parameters: not compared.
            (1..=4, Value::Bytes(_)) => {}
            (number @ 1..=6, _) => return Err(format!("field {number} is not length-delimited")),
            _ => {}
        }
    }
    // Triton sends raw contents for every output or for none; an output without one (or with
    // one past the outputs) is read from its typed contents.
    tensors
        .iter()
        .enumerate()
        .map(|(index, tensor)| {
            output(tensor, raw.get(index).copied()).map_err(|error| format!("output {index}: {error}"))
        })
        .collect()
}

fn output<'a>(tensor: &'a [u8], raw: Option<&'a [u8]>) -> Result<Output<'a>, String> {
    let (mut name, mut datatype) = ("", &b""[..]);
    let (mut shape, mut contents) = (Vec::new(), Vec::new());
    for field in Fields::new(tensor) {
        match field? {
            (1, Value::Bytes(text)) => {
                name = std::str::from_utf8(text).map_err(|_| "name is not UTF-8".to_string())?;
            }
            (2, Value::Bytes(text)) => datatype = text,
            // shape: repeated int64, unpacked or packed.
            (3, Value::Varint(dimension)) => shape.push(dimension as i64),
            (3, Value::Bytes(mut packed)) => {
                while !packed.is_empty() {
                    let (dimension, next) = varint(packed, 0).ok_or("truncated packed shape")?;
                    shape.push(dimension as i64);
                    packed = packed.get(next..).unwrap_or_default();
                }
            }
            (4, Value::Bytes(_)) => {}
            (5, Value::Bytes(message)) => contents.push(message),
            (number @ 1..=5, _) => {
                return Err(format!("tensor field {number} has the wrong wire type"));
            }
            _ => {}
        }
    }
    let mut elements = 1usize;
    for &dimension in &shape {
        let dimension = usize::try_from(dimension).map_err(|_| format!("{name}: negative dimension"))?;
        elements = elements
            .checked_mul(dimension)
            .ok_or_else(|| format!("{name}: shape {shape:?} is too large"))?;
    }
    let output = Output {
        name,
        datatype,
        dtype: DataType::from_name(datatype),
        shape,
        data: match raw {
            Some(raw) => Data::Raw(raw),
            None => Data::Typed(contents),
        },
    };
    if let Some(found) = element_count(&output)? {
        if found != elements {
            return Err(format!(
                "{name}: shape {:?} holds {elements} elements, its contents {found}",
                output.shape
            ));
        }
    }
    Ok(output)
}

/// How many elements the output's data holds, checking its encoding on the way (so that the
/// iterators can trust it); None for a datatype this module does not know.
fn element_count(output: &Output) -> Result<Option<usize>, String> {
    let name = output.name;
    match (&output.data, output.dtype) {
        (_, DataType::Other) => Ok(None),
        (Data::Raw(raw), DataType::Bytes) => {
            let mut count = 0;
            let mut rest = *raw;
            while !rest.is_empty() {
                let (length, tail) = rest
                    .split_first_chunk::<4>()
                    .ok_or_else(|| format!("{name}: truncated BYTES element length"))?;
                let length = u32::from_le_bytes(*length) as usize;
                rest = tail
                    .get(length..)
                    .ok_or_else(|| format!("{name}: truncated BYTES element"))?;
                count += 1;
            }
            Ok(Some(count))
        }
        (Data::Raw(raw), dtype) => {
            let size = dtype.size().unwrap_or(1);
            if raw.len() % size != 0 {
                return Err(format!(
                    "{name}: raw content of {} bytes is not a whole number of {size}-byte elements",
                    raw.len()
                ));
            }
            Ok(Some(raw.len() / size))
        }
        (Data::Typed(parts), dtype) => {
            let Some((number, scalar)) = dtype.typed_field() else {
                return Ok(Some(0));
            };
            let mut count = 0;
            for part in parts {
                for field in Fields::new(part) {
                    let (found, value) = field?;
                    if found != number {
                        continue;
                    }
                    count += match (scalar, value) {
                        (Scalar::Varint, Value::Varint(_))
                        | (Scalar::Fixed32, Value::Fixed32(_))
                        | (Scalar::Fixed64, Value::Fixed64(_))
                        | (Scalar::Bytes, Value::Bytes(_)) => 1,
                        (Scalar::Varint, Value::Bytes(packed)) => {
                            varint_count(packed).ok_or_else(|| format!("{name}: truncated packed contents"))?
                        }
                        (Scalar::Fixed32, Value::Bytes(packed)) if packed.len() % 4 == 0 => packed.len() / 4,
                        (Scalar::Fixed64, Value::Bytes(packed)) if packed.len() % 8 == 0 => packed.len() / 8,
                        _ => return Err(format!("{name}: contents field {number} is malformed")),
                    };
                }
            }
            Ok(Some(count))
        }
    }
}

fn varint_count(mut packed: &[u8]) -> Option<usize> {
    let mut count = 0;
    while !packed.is_empty() {
        packed = packed.get(varint(packed, 0)?.1..)?;
        count += 1;
    }
    Some(count)
}

// ---- Elements, one at a time ---------------------------------------------------------------

/// The elements of a numeric output (checked by `element_count`).
enum Numbers<'a> {
    Raw {
        dtype: DataType,
        chunks: std::slice::ChunksExact<'a, u8>,
    },
    Typed {
        dtype: DataType,
        values: TypedValues<'a>,
    },
}

fn numbers<'a>(output: &'a Output<'a>) -> Numbers<'a> {
    let dtype = output.dtype;
    match &output.data {
        Data::Raw(raw) => Numbers::Raw {
            dtype,
            chunks: raw.chunks_exact(dtype.size().unwrap_or(1)),
        },
        Data::Typed(parts) => Numbers::Typed {
            dtype,
            values: TypedValues::new(parts, dtype),
        },
    }
}

impl Iterator for Numbers<'_> {
    type Item = Number;

    fn next(&mut self) -> Option<Number> {
        match self {
            Self::Raw { dtype, chunks } => from_raw(*dtype, chunks.next()?),
            Self::Typed { dtype, values } => from_typed(*dtype, values.next()?),
        }
    }
}

fn from_raw(dtype: DataType, bytes: &[u8]) -> Option<Number> {
    fn array<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
        bytes.try_into().ok()
    }
    let int = |value: i128| Some(Number::Int(value));
    let float = |value: f64| Some(Number::Float(value));
    match dtype {
        DataType::Bool => int(i128::from(*bytes.first()? != 0)),
        DataType::Uint8 => int(i128::from(*bytes.first()?)),
        DataType::Int8 => int(i128::from(i8::from_le_bytes(array(bytes)?))),
        DataType::Uint16 => int(i128::from(u16::from_le_bytes(array(bytes)?))),
        DataType::Int16 => int(i128::from(i16::from_le_bytes(array(bytes)?))),
        DataType::Uint32 => int(i128::from(u32::from_le_bytes(array(bytes)?))),
        DataType::Int32 => int(i128::from(i32::from_le_bytes(array(bytes)?))),
        DataType::Uint64 => int(i128::from(u64::from_le_bytes(array(bytes)?))),
        DataType::Int64 => int(i128::from(i64::from_le_bytes(array(bytes)?))),
        DataType::Fp16 => float(half(u16::from_le_bytes(array(bytes)?))),
        DataType::Bf16 => {
            let upper = u32::from(u16::from_le_bytes(array(bytes)?));
            float(f64::from(f32::from_bits(upper << 16)))
        }
        DataType::Fp32 => float(f64::from(f32::from_le_bytes(array(bytes)?))),
        DataType::Fp64 => float(f64::from_le_bytes(array(bytes)?)),
        DataType::Bytes | DataType::Other => None,
    }
}

/// Narrowing as a protobuf parser does: int32 and uint32 keep the low 32 bits of the varint.
fn from_typed(dtype: DataType, value: Value) -> Option<Number> {
    match value {
        Value::Varint(value) => Some(Number::Int(match dtype {
            DataType::Bool => i128::from(value != 0),
            DataType::Int8 | DataType::Int16 | DataType::Int32 => i128::from(value as u32 as i32),
            DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => i128::from(value as u32),
            DataType::Int64 => i128::from(value as i64),
            DataType::Uint64 => i128::from(value),
            _ => return None,
        })),
        Value::Fixed32(bits) => Some(Number::Float(f64::from(f32::from_bits(bits)))),
        Value::Fixed64(bits) => Some(Number::Float(f64::from_bits(bits))),
        Value::Bytes(_) => None,
    }
}

/// An IEEE 754 half-precision value; every one of them is exact in f64.
fn half(bits: u16) -> f64 {
    let sign = if bits & 0x8000 == 0 { 1.0 } else { -1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let fraction = f64::from(bits & 0x3ff);
    match exponent {
        0 => sign * fraction * 2f64.powi(-24),
        0x1f if fraction == 0.0 => sign * f64::INFINITY,
        0x1f => f64::NAN,
        _ => sign * (1.0 + fraction / 1024.0) * 2f64.powi(exponent - 15),
    }
}

/// The elements of a BYTES output (checked by `element_count`).
enum ByteElements<'a> {
    /// Each element: a 4-byte little-endian length, then that many bytes.
    Raw(&'a [u8]),
    Typed(TypedValues<'a>),
}

fn byte_elements<'a>(output: &'a Output<'a>) -> ByteElements<'a> {
    match &output.data {
        Data::Raw(raw) => ByteElements::Raw(raw),
        Data::Typed(parts) => ByteElements::Typed(TypedValues::new(parts, output.dtype)),
    }
}

impl<'a> Iterator for ByteElements<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        match self {
            Self::Raw(rest) => {
                let (length, tail) = rest.split_first_chunk::<4>()?;
                let length = u32::from_le_bytes(*length) as usize;
                let element = tail.get(..length)?;
                *rest = tail.get(length..)?;
                Some(element)
            }
            Self::Typed(values) => match values.next()? {
                Value::Bytes(element) => Some(element),
                _ => None,
            },
        }
    }
}

/// The values of a datatype's InferTensorContents field, across every occurrence of the
/// contents and of the field, packed or not.
struct TypedValues<'a> {
    parts: std::slice::Iter<'a, &'a [u8]>,
    fields: Fields<'a>,
    number: u64,
    scalar: Scalar,
    /// What is left of the packed occurrence being read.
    packed: &'a [u8],
}

impl<'a> TypedValues<'a> {
    fn new(parts: &'a [&'a [u8]], dtype: DataType) -> Self {
        let (parts, (number, scalar)) = match dtype.typed_field() {
            Some(field) => (parts, field),
            None => (&[][..], (0, Scalar::Bytes)),
        };
        TypedValues {
            parts: parts.iter(),
            fields: Fields::new(&[]),
            number,
            scalar,
            packed: &[],
        }
    }

    fn unpack(&mut self) -> Option<Value<'a>> {
        match self.scalar {
            Scalar::Varint => {
                let (value, next) = varint(self.packed, 0)?;
                self.packed = self.packed.get(next..)?;
                Some(Value::Varint(value))
            }
            Scalar::Fixed32 => {
                let (bits, rest) = self.packed.split_first_chunk::<4>()?;
                self.packed = rest;
                Some(Value::Fixed32(u32::from_le_bytes(*bits)))
            }
            Scalar::Fixed64 => {
                let (bits, rest) = self.packed.split_first_chunk::<8>()?;
                self.packed = rest;
                Some(Value::Fixed64(u64::from_le_bytes(*bits)))
            }
            Scalar::Bytes => None,
        }
    }
}

impl<'a> Iterator for TypedValues<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        loop {
            if !self.packed.is_empty() {
                return self.unpack();
            }
            match self.fields.next() {
                None => self.fields = Fields::new(self.parts.next()?),
                Some(Ok((number, value))) if number == self.number => match value {
                    Value::Bytes(packed) if self.scalar != Scalar::Bytes => self.packed = packed,
                    value => return Some(value),
                },
                Some(Ok(_)) => {}
                // Not reached: `element_count` walked these fields already.
                Some(Err(_)) => return None,
            }
        }
    }
}

// ---- Protobuf wire format ------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

/// The fields of a message in order, as (field number, value); the first malformed field is an
/// error and ends the walk.
struct Fields<'a> {
    message: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(message: &'a [u8]) -> Self {
        Fields { message, pos: 0 }
    }

    fn read(&mut self) -> Result<(u64, Value<'a>), String> {
        let message = self.message;
        let (tag, pos) = varint(message, self.pos).ok_or("truncated field tag")?;
        let number = tag >> 3;
        if number == 0 || number > 0x1fff_ffff {
            return Err(format!("bad field number {number}"));
        }
        let rest = message.get(pos..).unwrap_or_default();
        let (value, end) = match tag & 7 {
            0 => {
                let (value, end) = varint(message, pos).ok_or("truncated varint")?;
                (Value::Varint(value), end)
            }
            1 => {
                let bits = rest.first_chunk::<8>().ok_or("truncated fixed64")?;
                (Value::Fixed64(u64::from_le_bytes(*bits)), pos + 8)
            }
            5 => {
                let bits = rest.first_chunk::<4>().ok_or("truncated fixed32")?;
                (Value::Fixed32(u32::from_le_bytes(*bits)), pos + 4)
            }
            2 => {
                let (length, start) = varint(message, pos).ok_or("truncated length")?;
                let value = usize::try_from(length)
                    .ok()
                    .and_then(|length| message.get(start..start.checked_add(length)?))
                    .ok_or("truncated length-delimited field")?;
                (Value::Bytes(value), start + value.len())
            }
            wire => return Err(format!("unsupported wire type {wire}")),
        };
        self.pos = end;
        Ok((number, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Value<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.message.len() {
            return None;
        }
        let read = self.read();
        if read.is_err() {
            self.pos = self.message.len();
        }
        Some(read)
    }
}

#[cfg(test)]
mod tests {
    use super::{compare, half, OutputComparison, Tolerance};

    const EXACT: Tolerance = Tolerance { atol: 0.0, rtol: 0.0 };

    /// (primary NaN, primary Inf, shadow NaN, shadow Inf).
    fn non_finite(result: &OutputComparison) -> (u64, u64, u64, u64) {
        (
            result.primary_nan,
            result.primary_inf,
            result.shadow_nan,
            result.shadow_inf,
        )
    }

    fn put_varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    fn put_bytes(out: &mut Vec<u8>, field: u64, value: &[u8]) {
        put_varint(out, (field << 3) | 2);
        put_varint(out, value.len() as u64);
        out.extend_from_slice(value);
    }

    /// An InferOutputTensor with a packed shape, and `contents` (InferTensorContents) unless empty.
    fn tensor(name: &str, datatype: &str, shape: &[i64], contents: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_bytes(&mut out, 1, name.as_bytes());
        put_bytes(&mut out, 2, datatype.as_bytes());
        let mut dims = Vec::new();
        for &dim in shape {
            put_varint(&mut dims, dim as u64);
        }
        put_bytes(&mut out, 3, &dims);
        if !contents.is_empty() {
            put_bytes(&mut out, 5, contents);
        }
        out
    }

    /// A ModelInferResponse with these outputs and raw contents (and a name, version, id and
    /// parameter that the comparison skips).
    fn answer(tensors: &[Vec<u8>], raw: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        put_bytes(&mut out, 1, b"classifier");
        put_bytes(&mut out, 2, b"3");
        put_bytes(&mut out, 3, b"request-1");
        put_bytes(&mut out, 4, b"\x0a\x01k\x12\x02\x08\x01");
        for tensor in tensors {
            put_bytes(&mut out, 5, tensor);
        }
        for content in raw {
            put_bytes(&mut out, 6, content);
        }
        out
    }

    fn fp32(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|value| value.to_le_bytes()).collect()
    }

    /// An answer with one raw FP32 output "scores".
    fn scores(shape: &[i64], values: &[f32]) -> Vec<u8> {
        answer(&[tensor("scores", "FP32", shape, b"")], &[fp32(values)])
    }

    fn only(primary: &[u8], shadow: &[u8], tolerance: Tolerance) -> OutputComparison {
        let mut all = compare(primary, shadow, tolerance).unwrap();
        assert_eq!(all.len(), 1);
        all.pop().unwrap()
    }

    #[test]
    fn identical_outputs_agree_everywhere() {
        let values = [0.1, 0.7, 0.2, 0.5, 0.3, 0.2];
        let answer = scores(&[2, 3], &values);
        let result = only(&answer, &answer, EXACT);
        assert_eq!(
            result,
            OutputComparison {
                name: "scores".into(),
                conforms: true,
                max_abs_diff: 0.0,
                max_rel_diff: 0.0,
                within_tolerance: true,
                argmax_rows: 2,
                argmax_agreeing: 2,
                primary_nan: 0,
                primary_inf: 0,
                shadow_nan: 0,
                shadow_inf: 0,
            }
        );
    }

    #[test]
    fn a_row_whose_argmax_moves_is_counted() {
        let primary = scores(&[2, 3], &[0.125, 0.75, 0.125, 0.5, 0.25, 0.25]);
        let shadow = scores(&[2, 3], &[0.125, 0.75, 0.125, 0.25, 0.25, 0.5]);
        let result = only(&primary, &shadow, EXACT);
        assert!(result.conforms && !result.within_tolerance);
        assert_eq!((result.argmax_rows, result.argmax_agreeing), (2, 1));
        assert_eq!(result.max_abs_diff, 0.25);
        // |0.5 - 0.25| / 0.25 outweighs |0.25 - 0.5| / 0.5.
        assert_eq!(result.max_rel_diff, 1.0);
        let loose = Tolerance { atol: 0.25, rtol: 0.0 };
        assert!(only(&primary, &shadow, loose).within_tolerance);
    }

    #[test]
    fn ties_and_nans_in_argmax_follow_numpy() {
        // Row 1: a tie goes to the first index on both sides. Row 2: NaN is the largest.
        let primary = scores(&[2, 3], &[1.0, 1.0, 0.0, 0.0, f32::NAN, 5.0]);
        let shadow = scores(&[2, 3], &[1.0, 1.0, 0.5, 0.0, 9.0, f32::NAN]);
        let result = only(&primary, &shadow, EXACT);
        assert_eq!((result.argmax_rows, result.argmax_agreeing), (2, 1));
        // A last dimension under 2 has no argmax worth comparing; nor has a scalar.
        let column = scores(&[3, 1], &[1.0, 2.0, 3.0]);
        assert_eq!(only(&column, &column, EXACT).argmax_rows, 0);
        let scalar = scores(&[], &[1.0]);
        assert_eq!(only(&scalar, &scalar, EXACT).argmax_rows, 0);
    }

    #[test]
    fn a_difference_at_the_bound_passes_and_above_it_fails() {
        let tolerance = Tolerance { atol: 0.25, rtol: 0.25 };
        // Bound for p = 1: 0.25 + 0.25 * 1 = 0.5, all exact in binary.
        let primary = scores(&[2], &[1.0, -2.0]);
        let at = only(&primary, &scores(&[2], &[1.5, -2.0]), tolerance);
        assert!(at.within_tolerance);
        assert_eq!((at.max_abs_diff, at.max_rel_diff), (0.5, 0.5));
        let above = scores(&[2], &[f32::from_bits(1.5f32.to_bits() + 1), -2.0]);
        assert!(!only(&primary, &above, tolerance).within_tolerance);
        // rtol scales with the primary: for p = -2 the bound is 0.75.
        let scaled = only(&primary, &scores(&[2], &[1.0, -2.75]), tolerance);
        assert!(scaled.within_tolerance);
        assert!(!only(&primary, &scores(&[2], &[1.0, -2.8]), tolerance).within_tolerance);
    }

    #[test]
    fn nans_and_infinities_are_counted_and_judged() {
        let same = scores(&[4], &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.0]);
        let result = only(&same, &same, EXACT);
        assert!(result.within_tolerance && result.conforms);
        assert_eq!(result.max_abs_diff, 0.0);
        assert_eq!(non_finite(&result), (1, 2, 1, 2));

        let primary = scores(&[4], &[1.0, 2.0, f32::NAN, f32::INFINITY]);
        let nan_for_number = scores(&[4], &[f32::NAN, 2.0, f32::NAN, f32::INFINITY]);
        let result = only(&primary, &nan_for_number, Tolerance { atol: 1e9, rtol: 1.0 });
        assert!(!result.within_tolerance);
        assert_eq!(result.max_abs_diff, 0.0);
        assert_eq!(non_finite(&result), (1, 1, 2, 1));

        let flipped = scores(&[4], &[1.0, 2.0, f32::NAN, f32::NEG_INFINITY]);
        let result = only(&primary, &flipped, Tolerance { atol: 1e9, rtol: 1.0 });
        assert!(!result.within_tolerance);
        assert_eq!(result.max_abs_diff, f64::INFINITY);
        assert_eq!(result.max_rel_diff, f64::INFINITY);
        // A finite shadow for an infinite primary fails even where rtol * inf would pass it.
        let finite = scores(&[4], &[1.0, 2.0, f32::NAN, 3.0e38]);
        assert!(!only(&primary, &finite, Tolerance { atol: 0.0, rtol: 1.0 }).within_tolerance);
    }

    #[test]
    fn another_datatype_or_shape_does_not_conform() {
        let primary = scores(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let reshaped = scores(&[4], &[1.0, 2.0, 3.0, 4.0]);
        let result = only(&primary, &reshaped, EXACT);
        assert!(!result.conforms && !result.within_tolerance);
        assert_eq!((result.max_abs_diff, result.argmax_rows), (0.0, 0));

        let fp64: Vec<u8> = [1.0f64, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let retyped = answer(&[tensor("scores", "FP64", &[2, 2], b"")], &[fp64]);
        let result = only(&primary, &retyped, EXACT);
        assert!(!result.conforms && !result.within_tolerance);
    }

    #[test]
    fn outputs_follow_the_primary_and_missing_ones_do_not_conform() {
        let one = fp32(&[1.0]);
        let primary = answer(
            &[tensor("a", "FP32", &[1], b""), tensor("b", "FP32", &[1], b"")],
            &[one.clone(), one.clone()],
        );
        let shadow = answer(
            &[tensor("c", "FP32", &[1], b""), tensor("b", "FP32", &[1], b"")],
            &[fp32(&[f32::NAN]), one],
        );
        let results = compare(&primary, &shadow, EXACT).unwrap();
        let names: Vec<_> = results.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(!results[0].conforms && !results[0].within_tolerance);
        assert_eq!(results[0].shadow_nan, 0);
        assert!(results[1].conforms && results[1].within_tolerance);
    }

    #[test]
    fn int64_raw_contents_are_compared_exactly() {
        let int64 = |values: &[i64]| -> Vec<u8> {
            let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            answer(&[tensor("ids", "INT64", &[1, 3], b"")], &[raw])
        };
        let big = 1i64 << 60;
        let primary = int64(&[big, -5, 7]);
        // f64 cannot tell 2^60 from 2^60 + 1; the comparison must.
        let result = only(&primary, &int64(&[big + 1, -5, 7]), EXACT);
        assert!(result.conforms && !result.within_tolerance);
        assert_eq!(result.max_abs_diff, 1.0);
        assert_eq!((result.argmax_rows, result.argmax_agreeing), (1, 1));
        let one = Tolerance { atol: 1.0, rtol: 0.0 };
        assert!(only(&primary, &int64(&[big + 1, -5, 7]), one).within_tolerance);
        let result = only(&primary, &int64(&[big, -5, i64::MIN]), EXACT);
        assert_eq!(result.max_abs_diff, (7i128 - i128::from(i64::MIN)) as f64);
        assert_eq!(result.primary_nan + result.primary_inf, 0);
    }

    #[test]
    fn half_precision_is_decoded_by_hand() {
        assert_eq!(half(0x3c00), 1.0);
        assert_eq!(half(0xc000), -2.0);
        assert_eq!(half(0x3555), 0.333251953125);
        assert_eq!(half(0x7bff), 65504.0);
        assert_eq!(half(0x0001), 2f64.powi(-24));
        assert_eq!(half(0x8000).to_bits(), (-0.0f64).to_bits());
        assert_eq!(half(0x7c00), f64::INFINITY);
        assert_eq!(half(0xfc00), f64::NEG_INFINITY);
        assert!(half(0x7e00).is_nan());

        let fp16 = |bits: &[u16]| -> Vec<u8> {
            let raw = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
            answer(&[tensor("h", "FP16", &[3], b"")], &[raw])
        };
        let result = only(
            &fp16(&[0x3c00, 0x3800, 0x7e00]),
            &fp16(&[0x3c00, 0x3c00, 0x7c00]),
            EXACT,
        );
        assert!(result.conforms && !result.within_tolerance);
        assert_eq!(result.max_abs_diff, 0.5);
        assert_eq!((result.primary_nan, result.shadow_inf), (1, 1));
        // The primary's NaN and the shadow's infinity are each side's largest.
        assert_eq!((result.argmax_rows, result.argmax_agreeing), (1, 1));

        // BF16: the upper half of an f32.
        let bf16 = |values: &[f32]| -> Vec<u8> {
            let raw = values
                .iter()
                .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
                .collect();
            answer(&[tensor("b", "BF16", &[2], b"")], &[raw])
        };
        let result = only(&bf16(&[1.0, -3.0]), &bf16(&[1.0, -2.0]), EXACT);
        assert_eq!(result.max_abs_diff, 1.0);
        assert_eq!((result.argmax_rows, result.argmax_agreeing), (1, 1));
    }

    #[test]
    fn typed_contents_packed_or_not_compare_like_raw_ones() {
        // fp32_contents packed...
        let mut packed = Vec::new();
        put_bytes(&mut packed, 6, &fp32(&[0.5, 1.5, -2.0]));
        let typed = answer(&[tensor("scores", "FP32", &[3], &packed)], &[]);
        // ...unpacked (one fixed32 field per element)...
        let mut unpacked = Vec::new();
        for value in [0.5f32, 1.5, -2.25] {
            unpacked.push((6 << 3) | 5);
            unpacked.extend_from_slice(&value.to_le_bytes());
        }
        let unpacked = answer(&[tensor("scores", "FP32", &[3], &unpacked)], &[]);
        // ...and raw.
        let raw = scores(&[3], &[0.5, 1.5, -2.0]);

        let result = only(&typed, &unpacked, EXACT);
        assert!(result.conforms && !result.within_tolerance);
        assert_eq!((result.max_abs_diff, result.max_rel_diff), (0.25, 0.125));
        assert!(only(&typed, &raw, EXACT).within_tolerance);
        assert!(only(&raw, &typed, EXACT).within_tolerance);

        // int_contents with a negative value (ten-byte varint), unpacked shape.
        let int32 = |values: &[i32]| -> Vec<u8> {
            let mut contents = Vec::new();
            for &value in values {
                contents.push(2 << 3);
                put_varint(&mut contents, value as i64 as u64);
            }
            let mut tensor = Vec::new();
            put_bytes(&mut tensor, 1, b"labels");
            put_bytes(&mut tensor, 2, b"INT32");
            for dim in [1u64, 2] {
                tensor.push(3 << 3);
                put_varint(&mut tensor, dim);
            }
            put_bytes(&mut tensor, 5, &contents);
            answer(&[tensor], &[])
        };
        let result = only(&int32(&[-3, 4]), &int32(&[-1, 4]), EXACT);
        assert!(result.conforms);
        assert_eq!((result.max_abs_diff, result.argmax_agreeing), (2.0, 1));
        let raw_int32 = answer(
            &[tensor("labels", "INT32", &[1, 2], b"")],
            &[[-3i32, 4].iter().flat_map(|v| v.to_le_bytes()).collect()],
        );
        assert!(only(&int32(&[-3, 4]), &raw_int32, EXACT).within_tolerance);
    }

    #[test]
    fn bytes_outputs_agree_when_every_element_is_equal() {
        let raw = |elements: &[&[u8]]| -> Vec<u8> {
            let mut content = Vec::new();
            for element in elements {
                content.extend_from_slice(&(element.len() as u32).to_le_bytes());
                content.extend_from_slice(element);
            }
            answer(&[tensor("text", "BYTES", &[2], b"")], &[content])
        };
        let typed = |elements: &[&[u8]]| -> Vec<u8> {
            let mut contents = Vec::new();
            for element in elements {
                put_bytes(&mut contents, 8, element);
            }
            answer(&[tensor("text", "BYTES", &[2], &contents)], &[])
        };
        let primary = raw(&[b"cat", b""]);
        let result = only(&primary, &raw(&[b"cat", b""]), EXACT);
        assert!(result.conforms && result.within_tolerance);
        assert_eq!((result.max_abs_diff, result.argmax_rows), (0.0, 0));
        assert!(only(&primary, &typed(&[b"cat", b""]), EXACT).within_tolerance);
        assert!(!only(&primary, &raw(&[b"cat", b"dog"]), EXACT).within_tolerance);
        assert!(!only(&primary, &typed(&[b"ca", b"t"]), EXACT).within_tolerance);
    }

    #[test]
    fn unknown_datatypes_compare_as_encoded() {
        let answer_of = |raw: &[u8]| answer(&[tensor("x", "FP8", &[1], b"")], &[raw.to_vec()]);
        assert!(only(&answer_of(b"\x01\x02"), &answer_of(b"\x01\x02"), EXACT).within_tolerance);
        let result = only(&answer_of(b"\x01\x02"), &answer_of(b"\x01\x03"), EXACT);
        assert!(result.conforms && !result.within_tolerance);
    }

    #[test]
    fn malformed_answers_are_errors() {
        let good = scores(&[2, 3], &[0.1, 0.7, 0.2, 0.5, 0.3, 0.2]);
        assert!(compare(&good, &good, EXACT).is_ok());
        // Truncated anywhere inside a field.
        let truncated = &good[..good.len() - 1];
        assert!(compare(truncated, &good, EXACT).unwrap_err().starts_with("primary"));
        assert!(compare(&good, truncated, EXACT).unwrap_err().starts_with("shadow"));
        // Raw content that is not shape x element size.
        let short = answer(&[tensor("scores", "FP32", &[2, 3], b"")], &[fp32(&[1.0; 5])]);
        assert!(compare(&good, &short, EXACT).is_err());
        let ragged = answer(&[tensor("scores", "FP32", &[2], b"")], &[vec![0; 7]]);
        assert!(compare(&good, &ragged, EXACT).is_err());
        // Typed contents with another element count; FP16 has no typed field at all.
        let mut contents = Vec::new();
        put_bytes(&mut contents, 6, &fp32(&[1.0]));
        let few = answer(&[tensor("scores", "FP32", &[2], &contents)], &[]);
        assert!(compare(&few, &few, EXACT).is_err());
        let half = answer(&[tensor("h", "FP16", &[1], &contents)], &[]);
        assert!(compare(&half, &half, EXACT).is_err());
        // A BYTES element running past its content.
        let bytes = answer(&[tensor("t", "BYTES", &[1], b"")], &[b"\x05\x00\x00\x00abc".to_vec()]);
        assert!(compare(&bytes, &bytes, EXACT).is_err());
        // A negative or overflowing shape, a wire type protobuf does not have, a group.
        let negative = answer(&[tensor("scores", "FP32", &[-1], b"")], &[vec![]]);
        assert!(compare(&negative, &negative, EXACT).is_err());
        let huge = answer(&[tensor("s", "FP32", &[1 << 40, 1 << 40], b"")], &[vec![]]);
        assert!(compare(&huge, &huge, EXACT).is_err());
        assert!(compare(b"\x0f", b"", EXACT).is_err());
        assert!(compare(b"\x0b\x0c", b"", EXACT).is_err());
        // An output that is not a message (wire type 0 for field 5).
        assert!(compare(b"\x28\x01", b"", EXACT).is_err());
    }

    #[test]
    fn empty_answers_and_empty_outputs_compare() {
        assert_eq!(compare(b"", b"", EXACT).unwrap(), vec![]);
        let empty = answer(&[tensor("scores", "FP32", &[0, 3], b"")], &[vec![]]);
        let result = only(&empty, &empty, EXACT);
        assert!(result.conforms && result.within_tolerance);
        assert_eq!(result.argmax_rows, 0);
        // No raw content and no typed contents: only an empty output may say so.
        let bare = answer(&[tensor("scores", "FP32", &[0], b"")], &[]);
        assert!(only(&bare, &bare, EXACT).within_tolerance);
    }

    #[test]
    fn no_input_makes_it_panic() {
        let typed = {
            let mut contents = Vec::new();
            put_bytes(&mut contents, 6, &fp32(&[0.5, 1.5]));
            put_bytes(&mut contents, 8, b"x");
            answer(&[tensor("t", "FP32", &[2], &contents)], &[])
        };
        let bytes = answer(&[tensor("t", "BYTES", &[1], b"")], &[b"\x01\x00\x00\x00a".to_vec()]);
        let seeds = [scores(&[2, 3], &[0.1, 0.7, 0.2, 0.5, 0.3, 0.2]), typed, bytes];
        // Every truncation, and pseudo-random byte edits, of each seed.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for seed in &seeds {
            for end in 0..seed.len() {
                let _ = compare(&seed[..end], seed, EXACT);
                let _ = compare(seed, &seed[..end], EXACT);
            }
            for _ in 0..20_000 {
                let mut mutated = seed.clone();
                for _ in 0..1 + next() % 4 {
                    let at = (next() % mutated.len() as u64) as usize;
                    mutated[at] = next() as u8;
                }
                let _ = compare(&mutated, seed, EXACT);
                let _ = compare(seed, &mutated, EXACT);
            }
        }
    }
}
