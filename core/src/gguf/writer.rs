//! Writing GGUF v3 files (std only).
//!
//! The writer collects metadata and tensors (borrowed or owned bytes), then lays the file
//! out in one pass: header, padding to `general.alignment`, tensor data each aligned.
//! Tensors added between [`GgufWriter::begin_group`] and [`GgufWriter::end_group`] form a
//! *page group*: the group starts on a page boundary (absolute file offset) and the next
//! tensor starts on a new page, so the group can be prefetched or dropped on its own; the
//! groups are recorded under `modula.page_groups.*`. Files are written atomically.

use super::schema::{self, KeyType};
use super::value::encode_str;
use super::{
    GgufError, MetaValue, ValueType, DEFAULT_ALIGNMENT, DEFAULT_PAGE_SIZE, MAGIC, MAX_ALIGNMENT,
    MAX_DIMS, MAX_TENSOR_NAME, VERSION,
};
use modula_quant::DType;
use std::borrow::Cow;
use std::format;
use std::io::{self, Write};
use std::path::Path;
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

struct PendingTensor<'a> {
    name: String,
    dtype: DType,
    /// GGUF order (innermost first).
    ne: Vec<u64>,
    data: Cow<'a, [u8]>,
}

struct Group {
    name: String,
    first: usize,
    end: usize,
}

/// Builds a GGUF file. See the module documentation.
pub struct GgufWriter<'a> {
    alignment: u32,
    page_size: u32,
    kvs: Vec<(String, MetaValue)>,
    tensors: Vec<PendingTensor<'a>>,
    groups: Vec<Group>,
    open_group: Option<(String, usize)>,
}

impl std::fmt::Debug for GgufWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("alignment", &self.alignment)
            .field("kvs", &self.kvs.len())
            .field("tensors", &self.tensors.len())
            .field("groups", &self.groups.len())
            .finish()
    }
}

impl Default for GgufWriter<'_> {
    fn default() -> Self {
        Self::new()
    }
}

/// The computed placement of everything in the file.
struct Layout {
    header: Vec<u8>,
    data_start: usize,
    /// Absolute start of each tensor.
    starts: Vec<usize>,
    total: usize,
}

impl<'a> GgufWriter<'a> {
    /// A writer with alignment 64 and 16 KiB pages, and `general.architecture = "modula"`.
    pub fn new() -> Self {
        let mut w = GgufWriter {
            alignment: DEFAULT_ALIGNMENT,
            page_size: DEFAULT_PAGE_SIZE,
            kvs: Vec::new(),
            tensors: Vec::new(),
            groups: Vec::new(),
            open_group: None,
        };
        w.kvs.push((
            "general.architecture".into(),
            MetaValue::String("modula".into()),
        ));
        w.kvs.push((
            schema::ALIGNMENT_KEY.into(),
            MetaValue::U32(DEFAULT_ALIGNMENT),
        ));
        w.kvs
            .push(("modula.format_version".into(), MetaValue::U32(1)));
        w
    }

    /// Set the tensor-data alignment (power of two, at most 1 MiB).
    pub fn set_alignment(&mut self, alignment: u32) -> Result<(), GgufError> {
        let a = u64::from(alignment);
        if a == 0 || !a.is_power_of_two() || a > MAX_ALIGNMENT {
            return Err(GgufError::BadAlignment { value: a });
        }
        self.alignment = alignment;
        self.page_size = self.page_size.max(alignment);
        self.put(schema::ALIGNMENT_KEY, MetaValue::U32(alignment));
        Ok(())
    }

    /// Set the page size used by page groups (power of two, multiple of the alignment).
    pub fn set_page_size(&mut self, page: u32) -> Result<(), GgufError> {
        if page == 0 || !page.is_power_of_two() || page < self.alignment {
            return Err(GgufError::InvalidInput {
                reason: format!(
                    "page size {page} must be a power of two >= alignment {}",
                    self.alignment
                ),
            });
        }
        self.page_size = page;
        Ok(())
    }

    fn put(&mut self, key: &str, value: MetaValue) {
        match self.kvs.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.kvs.push((key.to_string(), value)),
        }
    }

    /// Set a metadata entry (replacing an earlier value of the same key). Known keys must
    /// have their documented type; `general.alignment` and `modula.page_groups.*` are
    /// managed by the writer and refused here.
    pub fn set(&mut self, key: &str, value: MetaValue) -> Result<(), GgufError> {
        if key.is_empty() {
            return Err(GgufError::EmptyKey {
                index: self.kvs.len() as u64,
            });
        }
        if key == schema::ALIGNMENT_KEY || key.starts_with("modula.page_groups.") {
            return Err(GgufError::InvalidInput {
                reason: format!("'{key}' is written by the writer itself"),
            });
        }
        value.check(key, 1)?;
        if let Some(spec) = schema::lookup(key) {
            let ok = match (&spec.ty, &value) {
                (KeyType::Scalar(t), v) => v.value_type() == *t,
                (KeyType::ArrayOf(t), MetaValue::Array(e, _)) => e == t,
                _ => false,
            };
            if !ok {
                return Err(GgufError::WrongMetadataType {
                    key: key.to_string(),
                    expected: spec.ty.describe(),
                    found: value.value_type().name().to_string(),
                });
            }
        }
        self.put(key, value);
        Ok(())
    }

    /// Add a tensor with row-major `shape` (outermost first) and its raw little-endian
    /// bytes in `dtype`'s layout.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[usize],
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<(), GgufError> {
        let data = data.into();
        let bad = |reason: String| GgufError::InvalidInput {
            reason: format!("tensor '{name}': {reason}"),
        };
        if name.is_empty() || name.len() > MAX_TENSOR_NAME {
            return Err(bad(format!("name must be 1..={MAX_TENSOR_NAME} bytes")));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(GgufError::DuplicateTensor {
                name: name.to_string(),
            });
        }
        if shape.len() > MAX_DIMS {
            return Err(GgufError::TooManyDims {
                tensor: name.to_string(),
                n_dims: shape.len() as u32,
            });
        }
        let ne: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let n = ne
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| GgufError::ShapeOverflow {
                tensor: name.to_string(),
            })?;
        let row = ne.first().copied().unwrap_or(1);
        if row % dtype.block_len() as u64 != 0 {
            return Err(GgufError::RowNotWholeBlocks {
                tensor: name.to_string(),
                dtype: dtype.info().name,
                row_len: row,
                block_len: dtype.block_len() as u64,
            });
        }
        let want = dtype
            .bytes_for(n)
            .ok_or_else(|| bad("size overflows".into()))?;
        if want != data.len() as u64 {
            return Err(bad(format!(
                "shape {shape:?} of {dtype} needs {want} bytes, got {}",
                data.len()
            )));
        }
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dtype,
            ne,
            data,
        });
        Ok(())
    }

    /// Add an F32 tensor from a slice (borrowed; no copy until written).
    pub fn add_f32(
        &mut self,
        name: &str,
        shape: &[usize],
        data: &'a [f32],
    ) -> Result<(), GgufError> {
        self.add_tensor(
            name,
            DType::F32,
            shape,
            Cow::Borrowed(bytemuck::cast_slice(data)),
        )
    }

    /// Start a page group: the next tensor starts on a page boundary.
    pub fn begin_group(&mut self, name: &str) -> Result<(), GgufError> {
        if let Some((open, _)) = &self.open_group {
            return Err(GgufError::InvalidInput {
                reason: format!("page group '{open}' is still open; end it before '{name}'"),
            });
        }
        if self.groups.iter().any(|g| g.name == name) {
            return Err(GgufError::InvalidInput {
                reason: format!("page group '{name}' already exists"),
            });
        }
        self.open_group = Some((name.to_string(), self.tensors.len()));
        Ok(())
    }

    /// End the open page group.
    pub fn end_group(&mut self) -> Result<(), GgufError> {
        let (name, first) = self
            .open_group
            .take()
            .ok_or_else(|| GgufError::InvalidInput {
                reason: "end_group without begin_group".into(),
            })?;
        self.groups.push(Group {
            name,
            first,
            end: self.tensors.len(),
        });
        Ok(())
    }

    fn layout(&self) -> Result<Layout, GgufError> {
        if let Some((open, _)) = &self.open_group {
            return Err(GgufError::InvalidInput {
                reason: format!("page group '{open}' was never ended"),
            });
        }
        let align = self.alignment as usize;
        let page = self.page_size as usize;
        let up = |x: usize, a: usize| x.div_ceil(a) * a;
        // The page-group arrays have a fixed encoded size whatever their values, so the
        // header can be sized with placeholders first and filled in afterwards.
        let mut kvs = self.kvs.clone();
        let g = self.groups.len();
        if g > 0 {
            kvs.push((schema::PAGE_SIZE_KEY.into(), MetaValue::U32(self.page_size)));
            kvs.push((
                schema::PAGE_NAMES_KEY.into(),
                MetaValue::str_array(
                    &self
                        .groups
                        .iter()
                        .map(|g| g.name.as_str())
                        .collect::<Vec<_>>(),
                ),
            ));
            kvs.push((
                schema::PAGE_OFFSETS_KEY.into(),
                MetaValue::u64_array(&vec![0; g]),
            ));
            kvs.push((
                schema::PAGE_SIZES_KEY.into(),
                MetaValue::u64_array(&vec![0; g]),
            ));
        }
        let header_len = self.encode_header(&kvs, &vec![0; self.tensors.len()]).len();
        let data_start = up(header_len, align);

        let mut starts = Vec::with_capacity(self.tensors.len());
        let mut group_ranges = vec![(0usize, 0usize); g];
        let mut pos = data_start;
        for (i, t) in self.tensors.iter().enumerate() {
            let opens = self
                .groups
                .iter()
                .position(|gr| gr.first == i && gr.end > i);
            pos = if opens.is_some() {
                up(pos, page)
            } else {
                up(pos, align)
            };
            if let Some(k) = opens {
                group_ranges[k].0 = pos;
            }
            starts.push(pos);
            pos += t.data.len();
            for (k, gr) in self.groups.iter().enumerate() {
                if gr.end == i + 1 && gr.end > gr.first {
                    pos = up(pos, page);
                    group_ranges[k].1 = pos;
                }
            }
        }
        for (k, gr) in self.groups.iter().enumerate() {
            if gr.end == gr.first {
                // An empty group is a zero-length range at the next page boundary.
                pos = up(pos, page);
                group_ranges[k] = (pos, pos);
            }
        }
        let total = up(pos, align);
        if g > 0 {
            let n = kvs.len();
            kvs[n - 2].1 =
                MetaValue::u64_array(&group_ranges.iter().map(|r| r.0 as u64).collect::<Vec<_>>());
            kvs[n - 1].1 = MetaValue::u64_array(
                &group_ranges
                    .iter()
                    .map(|r| (r.1 - r.0) as u64)
                    .collect::<Vec<_>>(),
            );
        }
        let rel: Vec<u64> = starts.iter().map(|&s| (s - data_start) as u64).collect();
        let header = self.encode_header(&kvs, &rel);
        debug_assert_eq!(header.len(), header_len);
        Ok(Layout {
            header,
            data_start,
            starts,
            total,
        })
    }

    fn encode_header(&self, kvs: &[(String, MetaValue)], rel_offsets: &[u64]) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
        for (k, v) in kvs {
            encode_str(k, &mut h);
            h.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            v.encode(&mut h);
        }
        for (t, &off) in self.tensors.iter().zip(rel_offsets) {
            encode_str(&t.name, &mut h);
            h.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.dtype.ggml_id().to_le_bytes());
            h.extend_from_slice(&off.to_le_bytes());
        }
        h
    }

    /// Stream the file to `w`; returns the number of bytes written.
    pub fn write(&self, w: &mut dyn Write) -> Result<u64, GgufError> {
        let lay = self.layout()?;
        let io = |e: io::Error| GgufError::Io {
            path: "<stream>".into(),
            message: format!("cannot write: {e}"),
        };
        let zeros = [0u8; 4096];
        let pad = |w: &mut dyn Write, n: usize| -> io::Result<()> {
            let mut left = n;
            while left > 0 {
                let k = left.min(zeros.len());
                w.write_all(&zeros[..k])?;
                left -= k;
            }
            Ok(())
        };
        w.write_all(&lay.header).map_err(io)?;
        let mut pos = lay.header.len();
        pad(w, lay.data_start - pos).map_err(io)?;
        pos = lay.data_start;
        for (t, &s) in self.tensors.iter().zip(&lay.starts) {
            pad(w, s - pos).map_err(io)?;
            w.write_all(&t.data).map_err(io)?;
            pos = s + t.data.len();
        }
        pad(w, lay.total - pos).map_err(io)?;
        Ok(lay.total as u64)
    }

    /// The whole file in memory.
    pub fn to_bytes(&self) -> Result<Vec<u8>, GgufError> {
        let mut v = Vec::new();
        self.write(&mut v)?;
        Ok(v)
    }

    /// Write the file to `path` atomically (temp file, fsync, rename).
    pub fn write_to(&self, path: impl AsRef<Path>) -> Result<u64, GgufError> {
        let path = path.as_ref();
        let mut n = 0;
        let mut inner = None;
        let r = crate::io::atomic_write(path, |w| {
            match self.write(w) {
                Ok(k) => n = k,
                Err(e) => {
                    inner = Some(e);
                    return Err(io::Error::other("gguf layout error"));
                }
            }
            Ok(())
        });
        if let Some(e) = inner {
            return Err(e);
        }
        r.map_err(|e| GgufError::Io {
            path: path.display().to_string(),
            message: format!("cannot write the model file: {e}"),
        })?;
        Ok(n)
    }

    /// Number of tensors added so far.
    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }
}

#[allow(dead_code)]
const _: () = assert!(ValueType::Array as u32 == 9);
