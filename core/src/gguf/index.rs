//! Parsing and validating a whole GGUF header into an owned index of byte ranges.
//!
//! Order of checks: magic, version, counts (bounded by the bytes left), each metadata entry
//! (key, type, value; known keys' types), alignment, each tensor-info record (name, dims,
//! type, offset), then the data section: every tensor aligned, inside the file, and no two
//! overlapping; finally the page groups. The first problem found is returned.

use super::cursor::{lossy, Cursor};
use super::schema::{self, KeyType};
use super::value::read_value;
use super::{
    GgufError, Value, ValueType, GGUF_DEFAULT_ALIGNMENT, MAGIC, MAX_ALIGNMENT, MAX_DIMS,
    MAX_TENSOR_NAME, VERSION,
};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::ops::Range;
use modula_quant::dtype::ggml_name_of_unsupported;
use modula_quant::DType;

/// One metadata entry: where its key and value lie in the buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEntry {
    key: Range<usize>,
    ty: ValueType,
    value: Range<usize>,
}

/// One tensor-info record, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    name: Range<usize>,
    n_dims: u8,
    /// GGUF order: `ne[0]` is the innermost (contiguous) dimension.
    ne: [u64; MAX_DIMS],
    dtype: DType,
    rel_offset: u64,
    start: usize,
    len: usize,
}

impl TensorInfo {
    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Shape in row-major order (outermost first, as `ndarray` wants it): the reverse of
    /// GGUF's `ne` order. A matrix with `rows` rows of `cols` elements is `[rows, cols]`.
    pub fn shape(&self) -> Vec<usize> {
        self.ne[..self.n_dims as usize]
            .iter()
            .rev()
            .map(|&d| d as usize)
            .collect()
    }

    /// GGUF `ne` order (innermost first), as stored in the file.
    pub fn ggml_dims(&self) -> &[u64] {
        &self.ne[..self.n_dims as usize]
    }

    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.ne[..self.n_dims as usize].iter().product()
    }

    /// Offset relative to the start of the data section (as stored).
    pub fn data_offset(&self) -> u64 {
        self.rel_offset
    }

    /// Absolute byte range in the file.
    pub fn byte_range(&self) -> Range<usize> {
        self.start..self.start + self.len
    }

    pub(crate) fn name_range(&self) -> Range<usize> {
        self.name.clone()
    }
}

impl KvEntry {
    pub(crate) fn key_range(&self) -> Range<usize> {
        self.key.clone()
    }
    pub(crate) fn value_range(&self) -> Range<usize> {
        self.value.clone()
    }
    pub(crate) fn value_type(&self) -> ValueType {
        self.ty
    }
}

/// A page-aligned group of consecutive tensors (one expert, one nested-size slice).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageGroupInfo {
    /// Group name (as written).
    pub name: String,
    /// Absolute byte range, page-aligned at both ends (the end may be the file's end).
    pub range: Range<usize>,
    /// Indices (into the file's tensor order) of the tensors inside, in data order.
    pub tensors: Vec<usize>,
}

/// The validated structure of a GGUF file, as byte ranges into the buffer it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufIndex {
    pub(crate) version: u32,
    pub(crate) alignment: usize,
    pub(crate) data_start: usize,
    pub(crate) kvs: Vec<KvEntry>,
    pub(crate) tensors: Vec<TensorInfo>,
    /// Tensor indices sorted by name.
    pub(crate) by_name: Vec<u32>,
    /// Metadata indices sorted by key.
    pub(crate) by_key: Vec<u32>,
    pub(crate) page_size: usize,
    pub(crate) groups: Vec<PageGroupInfo>,
}

fn str_at(buf: &[u8], r: Range<usize>) -> &str {
    // Ranges in the index were validated as UTF-8 when parsed from this buffer.
    buf.get(r)
        .and_then(|b| core::str::from_utf8(b).ok())
        .unwrap_or("\u{fffd}")
}

impl GgufIndex {
    /// Parse and validate `buf` as a GGUF v3 file.
    pub fn parse(buf: &[u8]) -> Result<GgufIndex, GgufError> {
        let mut cur = Cursor::new(buf);
        let magic: [u8; 4] = cur.array(|| "magic".to_string()).map_err(|_| {
            let mut found = [0u8; 4];
            found[..buf.len().min(4)].copy_from_slice(&buf[..buf.len().min(4)]);
            if buf.len() < 4 && buf == &MAGIC[..buf.len()] {
                GgufError::Truncated {
                    what: "magic".to_string(),
                    offset: 0,
                    needed: 4,
                    file_len: buf.len() as u64,
                }
            } else {
                GgufError::BadMagic { found }
            }
        })?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = cur.u32(|| "version".to_string())?;
        if version != VERSION {
            return Err(GgufError::UnsupportedVersion { found: version });
        }
        let n_tensors = cur.u64(|| "tensor count".to_string())?;
        let n_kv = cur.u64(|| "metadata count".to_string())?;
        // A tensor-info record takes >= 8 (name len) + 4 (n_dims) + 4 (type) + 8 (offset)
        // bytes; a metadata entry >= 8 (key len) + 4 (type) + 1 (value).
        let left = cur.remaining() as u64;
        if n_kv > left / 13 {
            return Err(GgufError::CountTooLarge {
                what: "metadata entry count".to_string(),
                count: n_kv,
                max_possible: left / 13,
            });
        }
        if n_tensors > left / 24 {
            return Err(GgufError::CountTooLarge {
                what: "tensor count".to_string(),
                count: n_tensors,
                max_possible: left / 24,
            });
        }

        // ---- metadata
        let mut kvs = Vec::new();
        for i in 0..n_kv {
            let key = cur.string_range(&|| format!("key of metadata entry #{i}"))?;
            if key.is_empty() {
                return Err(GgufError::EmptyKey { index: i });
            }
            let key_s = str_at(buf, key.clone());
            let type_id = cur.u32(|| format!("value type of metadata key '{key_s}'"))?;
            let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
                key: key_s.to_string(),
                type_id,
            })?;
            let vstart = cur.pos();
            let value = read_value(&mut cur, ty, key_s, 1)?;
            check_known_key(key_s, &value)?;
            kvs.push(KvEntry {
                key,
                ty,
                value: vstart..cur.pos(),
            });
        }
        let by_key =
            sorted_unique(&kvs, |e| &buf[e.key.clone()]).map_err(|i| GgufError::DuplicateKey {
                key: str_at(buf, kvs[i].key.clone()).to_string(),
            })?;
        let alignment = match lookup_kv(buf, &kvs, &by_key, schema::ALIGNMENT_KEY) {
            Some(v) => {
                let a = u64::from(v.as_u32().unwrap_or(0));
                if a == 0 || !a.is_power_of_two() || a > MAX_ALIGNMENT {
                    return Err(GgufError::BadAlignment { value: a });
                }
                a as usize
            }
            None => GGUF_DEFAULT_ALIGNMENT as usize,
        };

        // ---- tensor infos
        let mut tensors = Vec::new();
        for i in 0..n_tensors {
            let name = cur.string_range(&|| format!("name of tensor #{i}"))?;
            let name_s = str_at(buf, name.clone());
            if name.is_empty() || name.len() > MAX_TENSOR_NAME {
                return Err(GgufError::BadTensorName {
                    index: i,
                    name: lossy(name_s.as_bytes()),
                    len: name.len() as u64,
                });
            }
            let n_dims = cur.u32(|| format!("dimension count of tensor '{name_s}'"))?;
            if n_dims as usize > MAX_DIMS {
                return Err(GgufError::TooManyDims {
                    tensor: name_s.to_string(),
                    n_dims,
                });
            }
            let mut ne = [1u64; MAX_DIMS];
            for d in ne.iter_mut().take(n_dims as usize) {
                *d = cur.u64(|| format!("dimensions of tensor '{name_s}'"))?;
            }
            let type_id = cur.u32(|| format!("type of tensor '{name_s}'"))?;
            let dtype =
                DType::from_ggml_id(type_id).ok_or_else(|| {
                    match ggml_name_of_unsupported(type_id) {
                        Some(type_name) => GgufError::UnsupportedTensorType {
                            tensor: name_s.to_string(),
                            type_id,
                            type_name,
                        },
                        None => GgufError::UnknownTensorType {
                            tensor: name_s.to_string(),
                            type_id,
                        },
                    }
                })?;
            let rel_offset = cur.u64(|| format!("data offset of tensor '{name_s}'"))?;
            let overflow = || GgufError::ShapeOverflow {
                tensor: name_s.to_string(),
            };
            let n_el = ne[..n_dims as usize]
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(overflow)?;
            let row_len = if n_dims == 0 { 1 } else { ne[0] };
            if row_len % dtype.block_len() as u64 != 0 {
                return Err(GgufError::RowNotWholeBlocks {
                    tensor: name_s.to_string(),
                    dtype: dtype.info().name,
                    row_len,
                    block_len: dtype.block_len() as u64,
                });
            }
            let nbytes = dtype.bytes_for(n_el).ok_or_else(overflow)?;
            if rel_offset % alignment as u64 != 0 {
                return Err(GgufError::MisalignedOffset {
                    tensor: name_s.to_string(),
                    offset: rel_offset,
                    alignment: alignment as u64,
                });
            }
            tensors.push((name, n_dims as u8, ne, dtype, rel_offset, nbytes));
        }
        let header_end = cur.pos();
        let data_start = header_end.div_ceil(alignment) * alignment;
        let file_len = buf.len() as u64;
        let tensors: Vec<TensorInfo> = tensors
            .into_iter()
            .map(|(name, n_dims, ne, dtype, rel_offset, nbytes)| {
                let start = (data_start as u64).checked_add(rel_offset);
                let end = start.and_then(|s| s.checked_add(nbytes));
                match (start, end) {
                    (Some(s), Some(e)) if e <= file_len => Ok(TensorInfo {
                        name,
                        n_dims,
                        ne,
                        dtype,
                        rel_offset,
                        start: s as usize,
                        len: nbytes as usize,
                    }),
                    _ => Err(GgufError::TensorOutOfBounds {
                        tensor: str_at(buf, name).to_string(),
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        file_len,
                    }),
                }
            })
            .collect::<Result<_, _>>()?;
        let by_name = sorted_unique(&tensors, |t| &buf[t.name.clone()]).map_err(|i| {
            GgufError::DuplicateTensor {
                name: str_at(buf, tensors[i].name.clone()).to_string(),
            }
        })?;

        // ---- no overlap (zero-length tensors overlap nothing)
        let mut by_offset: Vec<usize> =
            (0..tensors.len()).filter(|&i| tensors[i].len > 0).collect();
        by_offset.sort_by_key(|&i| tensors[i].start);
        for w in by_offset.windows(2) {
            let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
            if b.start < a.start + a.len {
                return Err(GgufError::TensorOverlap {
                    first: str_at(buf, a.name.clone()).to_string(),
                    second: str_at(buf, b.name.clone()).to_string(),
                });
            }
        }
        let mut index = GgufIndex {
            version,
            alignment,
            data_start,
            kvs,
            tensors,
            by_name,
            by_key,
            page_size: 0,
            groups: Vec::new(),
        };
        index.parse_page_groups(buf, &by_offset)?;
        Ok(index)
    }

    /// `by_offset`: indices of the non-empty tensors sorted by start (they do not overlap).
    fn parse_page_groups(&mut self, buf: &[u8], by_offset: &[usize]) -> Result<(), GgufError> {
        let get = |k: &str| self.find_kv(buf, k);
        let (size, names, offsets, sizes) = (
            get(schema::PAGE_SIZE_KEY),
            get(schema::PAGE_NAMES_KEY),
            get(schema::PAGE_OFFSETS_KEY),
            get(schema::PAGE_SIZES_KEY),
        );
        if size.is_none() && names.is_none() && offsets.is_none() && sizes.is_none() {
            return Ok(());
        }
        let bad = |reason: String| GgufError::BadPageGroups { reason };
        let (Some(size), Some(names), Some(offsets), Some(sizes)) = (size, names, offsets, sizes)
        else {
            return Err(bad(
                "page_size, names, offsets and sizes must all be present".into(),
            ));
        };
        // Types were checked against the schema when the entries were read.
        let page = size.as_u32().unwrap_or(0) as usize;
        if page == 0 || !page.is_power_of_two() || !page.is_multiple_of(self.alignment) {
            return Err(bad(format!(
                "page_size {page} must be a power of two and a multiple of the alignment {}",
                self.alignment
            )));
        }
        let names = names
            .as_array()
            .and_then(|a| a.to_str_vec())
            .unwrap_or_default();
        let offsets = offsets
            .as_array()
            .and_then(|a| a.to_u64_vec())
            .unwrap_or_default();
        let sizes = sizes
            .as_array()
            .and_then(|a| a.to_u64_vec())
            .unwrap_or_default();
        if names.len() != offsets.len() || names.len() != sizes.len() {
            return Err(bad(format!(
                "{} names, {} offsets and {} sizes: the three arrays must have equal length",
                names.len(),
                offsets.len(),
                sizes.len()
            )));
        }
        let file_len = buf.len() as u64;
        let mut groups = Vec::new();
        let mut prev_end = self.data_start as u64;
        for ((name, &off), &len) in names.iter().zip(&offsets).zip(&sizes) {
            let end = off.saturating_add(len);
            if off % page as u64 != 0 || (len % page as u64 != 0 && end != file_len) {
                return Err(bad(format!(
                    "group '{name}' ({off}..{end}) is not aligned to whole pages of {page} bytes"
                )));
            }
            if off < prev_end {
                return Err(bad(format!(
                    "group '{name}' starts at {off}, before the end of the previous group or \
                     the start of the data section ({prev_end})"
                )));
            }
            if end > file_len {
                return Err(bad(format!(
                    "group '{name}' ends at {end}, past the end of the file ({file_len})"
                )));
            }
            let (off, end) = (off as usize, end as usize);
            // Tensors starting inside [off, end): a contiguous run of `by_offset`. Since
            // tensors do not overlap, only the one before the run and the last one in it
            // can cross a boundary. O(log T) per group.
            let t = &self.tensors;
            let lo = by_offset.partition_point(|&i| t[i].start < off);
            let hi = by_offset.partition_point(|&i| t[i].start < end);
            let straddles = |i: usize| GgufError::BadPageGroups {
                reason: format!(
                    "tensor '{}' straddles the boundary of group '{name}'",
                    str_at(buf, t[i].name.clone())
                ),
            };
            if let Some(&before) = lo.checked_sub(1).and_then(|k| by_offset.get(k)) {
                if t[before].start + t[before].len > off {
                    return Err(straddles(before));
                }
            }
            if hi > lo {
                let last = by_offset[hi - 1];
                if t[last].start + t[last].len > end {
                    return Err(straddles(last));
                }
            }
            let members = by_offset[lo..hi].to_vec();
            groups.push(PageGroupInfo {
                name: name.to_string(),
                range: off..end,
                tensors: members,
            });
            prev_end = end as u64;
        }
        self.page_size = page;
        self.groups = groups;
        Ok(())
    }

    pub(crate) fn find_kv<'a>(&self, buf: &'a [u8], key: &str) -> Option<Value<'a>> {
        lookup_kv(buf, &self.kvs, &self.by_key, key)
    }

    pub(crate) fn find_tensor(&self, buf: &[u8], name: &str) -> Option<usize> {
        let pos = self
            .by_name
            .binary_search_by(|&i| {
                buf.get(self.tensors[i as usize].name.clone())
                    .cmp(&Some(name.as_bytes()))
            })
            .ok()?;
        Some(self.by_name[pos] as usize)
    }
}

/// The value of `key`, by binary search over `by_key` (indices of `kvs` sorted by key).
fn lookup_kv<'a>(buf: &'a [u8], kvs: &[KvEntry], by_key: &[u32], key: &str) -> Option<Value<'a>> {
    let pos = by_key
        .binary_search_by(|&i| {
            buf.get(kvs[i as usize].key.clone())
                .cmp(&Some(key.as_bytes()))
        })
        .ok()?;
    let e = &kvs[by_key[pos] as usize];
    read_value(&mut Cursor::at(buf, e.value.start), e.ty, key, 1).ok()
}

/// Indices of `items` sorted by `key`; `Err(i)` names an item whose key is duplicated.
fn sorted_unique<'b, T>(items: &[T], key: impl Fn(&T) -> &'b [u8]) -> Result<Vec<u32>, usize> {
    let mut idx: Vec<u32> = (0..items.len() as u32).collect();
    idx.sort_by(|&a, &b| key(&items[a as usize]).cmp(key(&items[b as usize])));
    for w in idx.windows(2) {
        if key(&items[w[0] as usize]) == key(&items[w[1] as usize]) {
            return Err(w[1] as usize);
        }
    }
    Ok(idx)
}

/// Refuse a known key stored with the wrong type or an impossible value.
fn check_known_key(key: &str, value: &Value<'_>) -> Result<(), GgufError> {
    let Some(spec) = schema::lookup(key) else {
        return Ok(());
    };
    let ok = match (spec.ty, value) {
        (KeyType::Scalar(t), v) => v.value_type() == t,
        (KeyType::ArrayOf(t), Value::Array(a)) => a.elem_type() == t,
        _ => false,
    };
    if !ok {
        return Err(GgufError::WrongMetadataType {
            key: key.to_string(),
            expected: spec.ty.describe(),
            found: value.type_description(),
        });
    }
    if key.starts_with("modula.nested.") {
        let v = value
            .as_array()
            .and_then(|a| a.to_u64_vec())
            .unwrap_or_default();
        let ascending = v.windows(2).all(|w| w[0] < w[1]);
        if v.is_empty() || v[0] == 0 || !ascending {
            return Err(GgufError::InvalidMetadataValue {
                key: key.to_string(),
                reason: format!(
                    "nested sizes {v:?} must be non-empty, >= 1 and strictly ascending"
                ),
            });
        }
    }
    Ok(())
}
