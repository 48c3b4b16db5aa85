//! Metadata values: the 13 GGUF value types, a borrowed [`Value`] read from a file and an
//! owned [`MetaValue`] for writing. Arrays are kept as raw bytes and decoded lazily.

use super::cursor::Cursor;
use super::{GgufError, MAX_ARRAY_DEPTH};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// GGUF metadata value types with their standard ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ValueType {
    /// id 0
    U8 = 0,
    /// id 1
    I8 = 1,
    /// id 2
    U16 = 2,
    /// id 3
    I16 = 3,
    /// id 4
    U32 = 4,
    /// id 5
    I32 = 5,
    /// id 6
    F32 = 6,
    /// id 7 (one byte, 0 or 1)
    Bool = 7,
    /// id 8 (u64 length + UTF-8 bytes)
    String = 8,
    /// id 9 (element type u32 + u64 count + elements)
    Array = 9,
    /// id 10
    U64 = 10,
    /// id 11
    I64 = 11,
    /// id 12
    F64 = 12,
}

impl ValueType {
    /// The type with id `id`.
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Size in bytes of a scalar of this type; `None` for strings and arrays.
    pub fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// Smallest encoding of one value of this type (used to bound counts).
    pub(crate) fn min_size(self) -> usize {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            t => t.fixed_size().unwrap_or(1),
        }
    }

    /// Lower-case name used in messages and `modula inspect`.
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

/// A metadata value borrowed from a file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// u8
    U8(u8),
    /// i8
    I8(i8),
    /// u16
    U16(u16),
    /// i16
    I16(i16),
    /// u32
    U32(u32),
    /// i32
    I32(i32),
    /// f32
    F32(f32),
    /// bool
    Bool(bool),
    /// string
    Str(&'a str),
    /// array (lazily decoded)
    Array(ArrayValue<'a>),
    /// u64
    U64(u64),
    /// i64
    I64(i64),
    /// f64
    F64(f64),
}

/// An array value: element type, count and the raw bytes of its elements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ArrayValue<'a> {
    elem: ValueType,
    len: u64,
    bytes: &'a [u8],
}

impl<'a> ArrayValue<'a> {
    /// Element type.
    pub fn elem_type(&self) -> ValueType {
        self.elem
    }

    /// Number of elements.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements in order. (The array was validated when the file was opened, so
    /// decoding cannot fail unless the underlying bytes changed; the iterator then stops.)
    pub fn iter(&self) -> impl Iterator<Item = Value<'a>> + 'a {
        let mut cur = Cursor::new(self.bytes);
        let elem = self.elem;
        (0..self.len).map_while(move |_| read_value(&mut cur, elem, "", 1).ok())
    }

    /// The elements as `u64` if this is an array of unsigned integers.
    pub fn to_u64_vec(&self) -> Option<Vec<u64>> {
        self.iter().map(|v| v.as_u64()).collect()
    }

    /// The elements as strings if this is an array of strings.
    pub fn to_str_vec(&self) -> Option<Vec<&'a str>> {
        self.iter().map(|v| v.as_str()).collect()
    }
}

impl<'a> Value<'a> {
    /// Value type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::Str(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Unsigned integer value (u8/u16/u32/u64) widened to u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            _ => None,
        }
    }

    /// A `u32` value.
    pub fn as_u32(&self) -> Option<u32> {
        match *self {
            Value::U32(v) => Some(v),
            _ => None,
        }
    }

    /// A float value (f32 or f64) as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    /// A string value.
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A bool value.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// An array value.
    pub fn as_array(&self) -> Option<ArrayValue<'a>> {
        match *self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// `"u32"`, `"array[string]"`, ... for messages.
    pub fn type_description(&self) -> String {
        match self {
            Value::Array(a) => format!("array[{}]", a.elem.name()),
            v => v.value_type().name().to_string(),
        }
    }

    /// An owned copy (for rewriting a file).
    pub fn to_owned_value(&self) -> MetaValue {
        match *self {
            Value::U8(v) => MetaValue::U8(v),
            Value::I8(v) => MetaValue::I8(v),
            Value::U16(v) => MetaValue::U16(v),
            Value::I16(v) => MetaValue::I16(v),
            Value::U32(v) => MetaValue::U32(v),
            Value::I32(v) => MetaValue::I32(v),
            Value::F32(v) => MetaValue::F32(v),
            Value::Bool(v) => MetaValue::Bool(v),
            Value::Str(s) => MetaValue::String(s.to_string()),
            Value::Array(a) => {
                MetaValue::Array(a.elem, a.iter().map(|v| v.to_owned_value()).collect())
            }
            Value::U64(v) => MetaValue::U64(v),
            Value::I64(v) => MetaValue::I64(v),
            Value::F64(v) => MetaValue::F64(v),
        }
    }
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Array(a) => {
                const SHOW: usize = 16;
                f.write_str("[")?;
                for (i, v) in a.iter().take(SHOW).enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                if a.len > SHOW as u64 {
                    write!(f, ", … ({} items)", a.len)?;
                }
                f.write_str("]")
            }
        }
    }
}

/// Read (and validate) one value of type `ty`. `depth` counts array nesting, from 1.
pub(crate) fn read_value<'a>(
    cur: &mut Cursor<'a>,
    ty: ValueType,
    key: &str,
    depth: usize,
) -> Result<Value<'a>, GgufError> {
    let what = || format!("value of metadata key '{key}'");
    Ok(match ty {
        ValueType::U8 => Value::U8(cur.array::<1>(what)?[0]),
        ValueType::I8 => Value::I8(cur.array::<1>(what)?[0] as i8),
        ValueType::U16 => Value::U16(u16::from_le_bytes(cur.array(what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(cur.array(what)?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(cur.array(what)?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(cur.array(what)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(cur.array(what)?)),
        ValueType::U64 => Value::U64(u64::from_le_bytes(cur.array(what)?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(cur.array(what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(cur.array(what)?)),
        ValueType::Bool => match cur.array::<1>(what)?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            byte => {
                return Err(GgufError::InvalidBool {
                    key: key.to_string(),
                    byte,
                })
            }
        },
        ValueType::String => {
            let r = cur.string_range(&what)?;
            let bytes = cur_slice(cur, r);
            // Validated as UTF-8 by string_range.
            Value::Str(
                core::str::from_utf8(bytes).map_err(|_| GgufError::InvalidUtf8 { what: what() })?,
            )
        }
        ValueType::Array => {
            if depth > MAX_ARRAY_DEPTH {
                return Err(GgufError::ArrayTooDeep {
                    key: key.to_string(),
                });
            }
            let elem_id = cur.u32(|| format!("array element type of metadata key '{key}'"))?;
            let elem = ValueType::from_id(elem_id).ok_or_else(|| GgufError::UnknownValueType {
                key: key.to_string(),
                type_id: elem_id,
            })?;
            let len = cur.u64(|| format!("array length of metadata key '{key}'"))?;
            let max = (cur.remaining() / elem.min_size()) as u64;
            if len > max {
                return Err(GgufError::CountTooLarge {
                    what: format!("array length of metadata key '{key}'"),
                    count: len,
                    max_possible: max,
                });
            }
            let start = cur.pos();
            if let Some(sz) = elem.fixed_size() {
                // len * sz <= remaining, checked above through min_size == sz.
                cur.take(len * sz as u64, what)?;
                if elem == ValueType::Bool {
                    let bytes = cur_slice(cur, start..cur.pos());
                    if let Some(&byte) = bytes.iter().find(|&&b| b > 1) {
                        return Err(GgufError::InvalidBool {
                            key: key.to_string(),
                            byte,
                        });
                    }
                }
            } else {
                for _ in 0..len {
                    read_value(cur, elem, key, depth + 1)?;
                }
            }
            Value::Array(ArrayValue {
                elem,
                len,
                bytes: cur_slice(cur, start..cur.pos()),
            })
        }
    })
}

/// Bytes of a range this cursor produced (so it lies inside the buffer).
fn cur_slice<'a>(cur: &Cursor<'a>, r: core::ops::Range<usize>) -> &'a [u8] {
    cur.buffer().get(r).unwrap_or_default()
}

/// An owned metadata value, for writing.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    /// u8
    U8(u8),
    /// i8
    I8(i8),
    /// u16
    U16(u16),
    /// i16
    I16(i16),
    /// u32
    U32(u32),
    /// i32
    I32(i32),
    /// f32
    F32(f32),
    /// bool
    Bool(bool),
    /// string
    String(String),
    /// Array of values that all have the given element type.
    Array(ValueType, Vec<MetaValue>),
    /// u64
    U64(u64),
    /// i64
    I64(i64),
    /// f64
    F64(f64),
}

impl MetaValue {
    /// Value type.
    pub fn value_type(&self) -> ValueType {
        match self {
            MetaValue::U8(_) => ValueType::U8,
            MetaValue::I8(_) => ValueType::I8,
            MetaValue::U16(_) => ValueType::U16,
            MetaValue::I16(_) => ValueType::I16,
            MetaValue::U32(_) => ValueType::U32,
            MetaValue::I32(_) => ValueType::I32,
            MetaValue::F32(_) => ValueType::F32,
            MetaValue::Bool(_) => ValueType::Bool,
            MetaValue::String(_) => ValueType::String,
            MetaValue::Array(..) => ValueType::Array,
            MetaValue::U64(_) => ValueType::U64,
            MetaValue::I64(_) => ValueType::I64,
            MetaValue::F64(_) => ValueType::F64,
        }
    }

    /// An array of u32.
    pub fn u32_array(v: &[u32]) -> MetaValue {
        MetaValue::Array(
            ValueType::U32,
            v.iter().map(|&x| MetaValue::U32(x)).collect(),
        )
    }

    /// An array of u64.
    pub fn u64_array(v: &[u64]) -> MetaValue {
        MetaValue::Array(
            ValueType::U64,
            v.iter().map(|&x| MetaValue::U64(x)).collect(),
        )
    }

    /// An array of strings.
    pub fn str_array<S: AsRef<str>>(v: &[S]) -> MetaValue {
        MetaValue::Array(
            ValueType::String,
            v.iter()
                .map(|s| MetaValue::String(s.as_ref().to_string()))
                .collect(),
        )
    }

    /// Check that arrays are homogeneous and not nested too deeply.
    #[cfg(feature = "std")]
    pub(crate) fn check(&self, key: &str, depth: usize) -> Result<(), GgufError> {
        if let MetaValue::Array(elem, items) = self {
            if depth > MAX_ARRAY_DEPTH {
                return Err(GgufError::ArrayTooDeep {
                    key: key.to_string(),
                });
            }
            for it in items {
                if it.value_type() != *elem {
                    return Err(GgufError::InvalidInput {
                        reason: format!(
                            "metadata key '{key}': array of {} holds a {}",
                            elem.name(),
                            it.value_type().name()
                        ),
                    });
                }
                it.check(key, depth + 1)?;
            }
        }
        Ok(())
    }

    /// Append the GGUF encoding of the value (without its type id) to `out`.
    #[cfg(feature = "std")]
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            MetaValue::U8(v) => out.push(*v),
            MetaValue::I8(v) => out.push(*v as u8),
            MetaValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::Bool(v) => out.push(u8::from(*v)),
            MetaValue::String(s) => encode_str(s, out),
            MetaValue::Array(elem, items) => {
                out.extend_from_slice(&(*elem as u32).to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for it in items {
                    it.encode(out);
                }
            }
            MetaValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            MetaValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

/// Append a GGUF string (u64 length + bytes).
#[cfg(feature = "std")]
pub(crate) fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}
