//! A model file opened for inference: the bytes (a memory map, a `&'static [u8]` in flash,
//! or any owned buffer) plus their validated [`GgufIndex`], and zero-copy typed views.
//!
//! `Model<B>` is generic over the backing store so the same API serves `std` (where
//! [`Model::open`] maps a file with `memmap2`) and bare metal (`Model::from_bytes` over
//! a `&'static [u8]`). A view borrows the model; no weight is ever copied.

use crate::gguf::{GgufError, GgufIndex, PageGroupInfo, TensorInfo, Value};
use alloc::string::ToString;
use alloc::vec::Vec;
use core::ops::Range;
use half::{bf16, f16};
use modula_quant::{BlockQ4_0, BlockQ8_0, DType};
use ndarray::{ArrayViewD, IxDyn};

/// A validated GGUF model over a byte buffer `B`.
#[derive(Debug)]
pub struct Model<B> {
    buf: B,
    index: GgufIndex,
}

impl<B: AsRef<[u8]>> Model<B> {
    /// Validate `buf` as a GGUF v3 file and keep it.
    pub fn from_bytes(buf: B) -> Result<Self, GgufError> {
        let index = GgufIndex::parse(buf.as_ref())?;
        Ok(Model { buf, index })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// The validated index.
    pub fn index(&self) -> &GgufIndex {
        &self.index
    }

    /// Container version (always 3).
    pub fn version(&self) -> u32 {
        self.index.version
    }

    /// Alignment of tensor data in bytes.
    pub fn alignment(&self) -> usize {
        self.index.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_start(&self) -> usize {
        self.index.data_start
    }

    /// Number of tensors.
    pub fn tensor_count(&self) -> usize {
        self.index.tensors.len()
    }

    /// All tensors in file order.
    pub fn tensors(&self) -> impl Iterator<Item = TensorView<'_>> + '_ {
        (0..self.index.tensors.len()).map(move |i| self.tensor_at(i))
    }

    /// The tensor at position `i` in file order (panics if `i >= tensor_count()`).
    pub fn tensor_at(&self, i: usize) -> TensorView<'_> {
        let info = &self.index.tensors[i];
        let buf = self.bytes();
        TensorView {
            name: str_of(buf, info.name_range()),
            info,
            data: buf.get(info.byte_range()).unwrap_or_default(),
            rows: None,
        }
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>, GgufError> {
        self.index
            .find_tensor(self.bytes(), name)
            .map(|i| self.tensor_at(i))
            .ok_or_else(|| GgufError::TensorNotFound {
                name: name.to_string(),
            })
    }

    /// The zero-copy view of a nested size ([`NestedSpec`]): which tensors, and which
    /// leading slice of each, that sub-model reads — the same slices the engines run
    /// (`DenseEngine::set_submodel`, `MfEngine::set_submodel`). A size beyond the model
    /// (depth over `modula.block_count`, more FFN units or experts than a tensor has, a
    /// zero anywhere) is an error.
    pub fn submodel(&self, spec: NestedSpec) -> Result<SubModel<'_>, GgufError> {
        let bad = |reason: alloc::string::String| GgufError::InvalidInput { reason };
        let layers = self.get_u32("modula.block_count").ok().map(|v| v as usize);
        if let Some(d) = spec.depth {
            match layers {
                Some(l) if d >= 1 && d <= l => {}
                Some(l) => return Err(bad(alloc::format!("depth {d} is outside 1..={l}"))),
                None => return Err(bad("the file declares no modula.block_count".into())),
            }
        }
        // which tensor is what: the description's roles (the one loader), not names
        let desc = crate::ModelDesc::from_model(self).map_err(|e| bad(e.to_string()))?;
        let head_rows = match spec.heads {
            None => None,
            Some(h) => {
                let att = desc.blocks.first().and_then(|b| match b.mixer {
                    crate::arch::MixerSpec::Attention(a) => Some(a),
                    _ => None,
                });
                let Some(a) = att.filter(|a| a.layout == crate::arch::AttnLayout::HeadMajor) else {
                    return Err(bad(
                        "nested heads need a head-major file (modula.attention.layout = head_major)"
                            .into(),
                    ));
                };
                if h == 0 || h > a.heads {
                    return Err(bad(alloc::format!(
                        "{h} heads is outside 1..={} (width {})",
                        a.heads,
                        desc.d
                    )));
                }
                Some(h * a.head_dim)
            }
        };
        for (what, v) in [
            ("FFN width", spec.ffn),
            ("attention experts", spec.att_experts),
            ("FFN experts", spec.ffn_experts),
        ] {
            if v == Some(0) {
                return Err(bad(alloc::format!("{what} 0")));
            }
        }
        let table = desc.tensors();
        let mut tensors = Vec::new();
        for t in self.tensors() {
            if t.name().starts_with("optimizer.") {
                continue;
            }
            // a tensor the description does not know (none in a file Modula wrote) is kept whole
            let Some(d) = table.iter().find(|d| d.name == t.name()) else {
                tensors.push(t);
                continue;
            };
            if let (Some(l), Some(depth)) = (d.block, spec.depth) {
                if l >= depth {
                    continue;
                }
            }
            use crate::arch::{Layout, Role};
            if let Some(e) = d.expert {
                let count = match d.role {
                    Role::ExpertQ | Role::ExpertOut => spec.att_experts,
                    _ => spec.ffn_experts,
                };
                if count.is_some_and(|c| e >= c) {
                    continue;
                }
            }
            let rows = match (d.role, d.expert, d.layout) {
                (Role::FfnUp | Role::FfnUpBias, None, _) => spec.ffn,
                (Role::FfnDown, None, Layout::InOut) => spec.ffn,
                (Role::AttnRouter, ..) => spec.att_experts,
                (Role::Router, ..) => spec.ffn_experts,
                (Role::AttnQkv | Role::AttnQkvBias, ..) => head_rows.map(|r| 3 * r),
                (Role::AttnOut, _, Layout::InOut) => head_rows,
                _ => None,
            };
            tensors.push(match rows {
                Some(r) => t.prefix(r)?,
                None => t,
            });
        }
        Ok(SubModel { spec, tensors })
    }

    /// Metadata entries in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, Value<'_>)> + '_ {
        let buf = self.bytes();
        self.index.kvs.iter().filter_map(move |e| {
            let key = str_of(buf, e.key_range());
            let mut cur = crate::gguf::cursor_at(buf, e.value_range().start);
            crate::gguf::read_value_pub(&mut cur, e.value_type(), key).map(|v| (key, v))
        })
    }

    /// Number of metadata entries.
    pub fn metadata_count(&self) -> usize {
        self.index.kvs.len()
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<Value<'_>> {
        self.index.find_kv(self.bytes(), key)
    }

    /// A required `u32` key (`modula.block_count`, ...).
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        match self.get(key) {
            Some(Value::U32(v)) => Ok(v),
            Some(v) => Err(GgufError::WrongMetadataType {
                key: key.to_string(),
                expected: "u32",
                found: v.type_description(),
            }),
            None => Err(GgufError::InvalidMetadataValue {
                key: key.to_string(),
                reason: "required key is missing".to_string(),
            }),
        }
    }

    /// A string key.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| v.as_str())
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// Page size of the page groups (0 when the file has none).
    pub fn page_size(&self) -> usize {
        self.index.page_size
    }

    /// The page-aligned tensor groups.
    pub fn page_groups(&self) -> impl Iterator<Item = PageGroup<'_>> + '_ {
        self.index.groups.iter().map(move |g| PageGroup {
            model_bytes: self.bytes(),
            info: g,
        })
    }

    /// The page group a tensor belongs to, if any.
    pub fn group_of(&self, tensor: &str) -> Option<PageGroup<'_>> {
        let i = self.index.find_tensor(self.bytes(), tensor)?;
        self.page_groups().find(|g| g.info.tensors.contains(&i))
    }
}

#[cfg(feature = "std")]
impl Model<memmap2::Mmap> {
    /// Map the file at `path` read-only and validate it. No tensor data is read until a
    /// view of it is used.
    ///
    /// The file must not be modified while it is mapped (standard memory-map caveat).
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let io_err = |e: std::io::Error| GgufError::Io {
            path: path.display().to_string(),
            message: alloc::format!("cannot open the model file: {e}"),
        };
        if path.is_dir() {
            return Err(GgufError::Io {
                path: path.display().to_string(),
                message: "is a directory, not a model file".into(),
            });
        }
        let file = std::fs::File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        if len == 0 {
            return Err(GgufError::Truncated {
                what: "magic".to_string(),
                offset: 0,
                needed: 4,
                file_len: 0,
            });
        }
        // SAFETY: the map is read-only and lives as long as the Model; the caller must not
        // modify the file while it is mapped (documented above). All reads go through
        // bounds-checked slices of the map.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
        Model::from_bytes(map)
    }

    /// `MADV_WILLNEED` (or `DONTNEED`) exactly the bytes a sub-model reads
    /// ([`SubModel::ranges`]): a cold start reads those pages and no others.
    pub fn advise_submodel(&self, sub: &SubModel<'_>, need: bool) -> Result<(), GgufError> {
        for r in sub.ranges() {
            self.advise_range(r.start, r.end - r.start, need)?;
        }
        Ok(())
    }

    /// Advise the OS about bytes `off..off + len` of the map (`off` page-aligned, as page
    /// groups are): `need` = `MADV_WILLNEED` (start reading them in now), else
    /// `MADV_DONTNEED` (drop them from this process's resident set; the map is read-only,
    /// so a later access reads the file again). A no-op where the platform has no advice.
    pub fn advise_range(&self, off: usize, len: usize, need: bool) -> Result<(), GgufError> {
        #[cfg(unix)]
        {
            let len = len.min(self.buf.len().saturating_sub(off));
            if len == 0 {
                return Ok(());
            }
            let r = if need {
                self.buf.advise_range(memmap2::Advice::WillNeed, off, len)
            } else {
                // SAFETY: the map is read-only (private, never written), so dropping its
                // pages loses nothing; later reads fault them in from the file again.
                unsafe {
                    self.buf
                        .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, off, len)
                }
            };
            r.map_err(|e| GgufError::Io {
                path: "(mapped model)".to_string(),
                message: alloc::format!("cannot advise the kernel on its pages: {e}"),
            })?;
        }
        #[cfg(not(unix))]
        let _ = (off, len, need);
        Ok(())
    }

    /// Ask the OS not to read ahead around page faults in this map (`MADV_RANDOM`): only
    /// the pages a (sub-)model actually touches become resident — lower memory for a small
    /// nested sub-model or a few experts, at the cost of more, smaller reads on a cold
    /// first pass. A no-op where the platform has no such advice.
    pub fn advise_no_readahead(&self) -> Result<(), GgufError> {
        #[cfg(unix)]
        {
            self.buf
                .advise(memmap2::Advice::Random)
                .map_err(|e| GgufError::Io {
                    path: "(mapped model)".to_string(),
                    message: alloc::format!("cannot advise the kernel on its pages: {e}"),
                })?;
        }
        Ok(())
    }
}

fn str_of(buf: &[u8], r: Range<usize>) -> &str {
    buf.get(r)
        .and_then(|b| core::str::from_utf8(b).ok())
        .unwrap_or("\u{fffd}")
}

/// A named, page-aligned range of the file holding consecutive tensors.
#[derive(Clone, Copy, Debug)]
pub struct PageGroup<'a> {
    model_bytes: &'a [u8],
    info: &'a PageGroupInfo,
}

impl<'a> PageGroup<'a> {
    /// Group name.
    pub fn name(&self) -> &'a str {
        &self.info.name
    }

    /// Absolute, page-aligned byte range.
    pub fn range(&self) -> Range<usize> {
        self.info.range.clone()
    }

    /// The bytes of the group (for `madvise`, prefetch, checksums).
    pub fn bytes(&self) -> &'a [u8] {
        self.model_bytes
            .get(self.info.range.clone())
            .unwrap_or_default()
    }

    /// Positions (file order) of the tensors inside.
    pub fn tensor_indices(&self) -> &'a [usize] {
        &self.info.tensors
    }
}

/// A nested (SortedNet) size of a model file: the leading slices a sub-model reads.
/// `None` in a field means "all".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NestedSpec {
    /// The first `depth` blocks (`blk.{l}.*` with `l < depth`); the embedding, final norm
    /// and head are shared.
    pub depth: Option<usize>,
    /// The first `ffn` hidden units of every dense FFN: rows of `ffn_up.weight`,
    /// `ffn_up.bias` and of the transposed `ffn_down_t.weight`.
    pub ffn: Option<usize>,
    /// The first experts of every attention mixture (ModuleFormer): expert groups
    /// `blk.{l}.attn_expert.{e}` with `e` below it, and those rows of `attn_router.weight`.
    pub att_experts: Option<usize>,
    /// The same for the FFN mixtures (`ffn_expert`, `ffn_router.weight`).
    pub ffn_experts: Option<usize>,
    /// The first `heads` attention heads of every block, for files that store attention
    /// head-major (`modula.attention.layout = "head_major"`): the first `3·heads·head_dim`
    /// rows of `attn_qkv.weight`/`.bias` and the first `heads·head_dim` rows of the
    /// transposed output projection `attn_output_t.weight`. Refused for other files.
    pub heads: Option<usize>,
}

/// A zero-copy view of one nested size of a model ([`Model::submodel`]): every tensor the
/// sub-model reads, each as the leading slice it reads. Building one allocates only this
/// list of views; switching sizes never touches or copies a weight.
#[derive(Clone, Debug)]
pub struct SubModel<'a> {
    spec: NestedSpec,
    tensors: Vec<TensorView<'a>>,
}

impl<'a> SubModel<'a> {
    /// The size this view is of.
    pub fn spec(&self) -> NestedSpec {
        self.spec
    }

    /// The tensors it reads (file order), each cut to its prefix.
    pub fn tensors(&self) -> &[TensorView<'a>] {
        &self.tensors
    }

    /// The view of `name`, or `None` when the sub-model does not read it (a block past its
    /// depth, an expert past its count, an optimiser state).
    pub fn tensor(&self, name: &str) -> Option<TensorView<'a>> {
        self.tensors.iter().find(|t| t.name == name).copied()
    }

    /// Bytes of weights it reads.
    pub fn weight_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.data.len() as u64).sum()
    }

    /// The file byte ranges it reads, sorted and merged (for `madvise`, prefetch, or a
    /// copy of just this size).
    pub fn ranges(&self) -> Vec<Range<usize>> {
        let mut r: Vec<Range<usize>> = self
            .tensors
            .iter()
            .filter(|t| !t.data.is_empty())
            .map(|t| t.file_offset()..t.file_offset() + t.data.len())
            .collect();
        r.sort_by_key(|x| x.start);
        let mut out: Vec<Range<usize>> = Vec::with_capacity(r.len());
        for x in r {
            match out.last_mut() {
                Some(l) if x.start <= l.end => l.end = l.end.max(x.end),
                _ => out.push(x),
            }
        }
        out
    }
}

/// A borrowed view of one tensor.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    name: &'a str,
    info: &'a TensorInfo,
    data: &'a [u8],
    /// A nested sub-model's view: only the first `rows` entries of the outermost
    /// dimension (`data` is then that prefix of the tensor's bytes).
    rows: Option<usize>,
}

/// Rows of blocks of a quantised tensor: row `r` is `blocks[r*blocks_per_row..][..blocks_per_row]`.
#[derive(Clone, Copy, Debug)]
pub struct BlockRows<'a, T> {
    /// All blocks, row-major.
    pub blocks: &'a [T],
    /// Blocks in one row (row length / block length).
    pub blocks_per_row: usize,
    /// Number of rows (product of the outer dimensions).
    pub rows: usize,
}

impl<'a, T> BlockRows<'a, T> {
    /// The blocks of row `r`, or `None` if `r >= rows`.
    pub fn row(&self, r: usize) -> Option<&'a [T]> {
        let start = r.checked_mul(self.blocks_per_row)?;
        self.blocks.get(start..start + self.blocks_per_row)
    }

    /// The first `n` rows as one contiguous slice (a nested-size prefix), or `None` if
    /// `n > rows`.
    pub fn prefix_rows(&self, n: usize) -> Option<&'a [T]> {
        if n > self.rows {
            return None;
        }
        self.blocks.get(..n * self.blocks_per_row)
    }
}

impl<'a> TensorView<'a> {
    /// Name.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.info.dtype()
    }

    /// Row-major shape (outermost first; a sub-model's prefix view has its outermost
    /// dimension cut to the prefix).
    pub fn shape(&self) -> Vec<usize> {
        let mut s = self.info.shape();
        if let (Some(r), Some(first)) = (self.rows, s.first_mut()) {
            *first = r;
        }
        s
    }

    /// Element count (of the view).
    pub fn n_elements(&self) -> u64 {
        match self.rows {
            Some(_) => self.shape().iter().map(|&d| d as u64).product(),
            None => self.info.n_elements(),
        }
    }

    /// The first `rows` entries of the outermost dimension as their own view (zero-copy:
    /// a prefix of the same bytes). Quantised rows are whole blocks, so any prefix is.
    pub fn prefix(&self, rows: usize) -> Result<TensorView<'a>, GgufError> {
        let shape = self.shape();
        let outer = shape.first().copied().unwrap_or(1);
        if rows > outer {
            return Err(GgufError::InvalidInput {
                reason: alloc::format!(
                    "tensor '{}': a prefix of {rows} rows of {outer}",
                    self.name
                ),
            });
        }
        let per_row = self.data.len().checked_div(outer).unwrap_or(0);
        Ok(TensorView {
            data: &self.data[..rows * per_row],
            rows: Some(rows),
            ..*self
        })
    }

    /// The raw bytes, borrowed from the file.
    pub fn bytes(&self) -> &'a [u8] {
        self.data
    }

    /// Absolute file offset of the first byte.
    pub fn file_offset(&self) -> usize {
        self.info.byte_range().start
    }

    /// The record this view was made from.
    pub fn info(&self) -> &'a TensorInfo {
        self.info
    }

    fn expect(&self, want: DType) -> Result<(), GgufError> {
        if self.dtype() == want {
            Ok(())
        } else {
            Err(GgufError::DTypeMismatch {
                tensor: self.name.to_string(),
                expected: want.info().name,
                found: self.dtype().info().name,
            })
        }
    }

    fn cast<T: bytemuck::Pod>(&self, want: DType) -> Result<&'a [T], GgufError> {
        self.expect(want)?;
        #[cfg(target_endian = "big")]
        {
            return Err(GgufError::InvalidInput {
                reason: "zero-copy views of little-endian GGUF data need a little-endian CPU"
                    .to_string(),
            });
        }
        #[allow(unreachable_code)]
        bytemuck::try_cast_slice(self.data).map_err(|_| GgufError::MisalignedBuffer {
            tensor: self.name.to_string(),
            align: core::mem::align_of::<T>(),
        })
    }

    fn nd<T: bytemuck::Pod>(&self, want: DType) -> Result<ArrayViewD<'a, T>, GgufError> {
        let s = self.cast::<T>(want)?;
        ArrayViewD::from_shape(IxDyn(&self.shape()), s).map_err(|_| GgufError::ShapeOverflow {
            tensor: self.name.to_string(),
        })
    }

    /// F32 data as a flat slice.
    pub fn as_f32_slice(&self) -> Result<&'a [f32], GgufError> {
        self.cast(DType::F32)
    }

    /// The weights as a `[rows, cols]` matrix for the kernels (`rows` = product of the
    /// outer dimensions, `cols` = the innermost), whatever the supported type.
    pub fn as_matrix(&self) -> Result<crate::kernels::linear::MatRef<'a>, GgufError> {
        use crate::kernels::linear::{MatRef, WeightData};
        let shape = self.shape();
        let cols = shape.last().copied().unwrap_or(1);
        let rows = shape[..shape.len().saturating_sub(1)]
            .iter()
            .product::<usize>();
        let data = match self.dtype() {
            DType::F32 => WeightData::F32(self.cast(DType::F32)?),
            DType::F16 => WeightData::F16(self.cast(DType::F16)?),
            DType::BF16 => WeightData::BF16(self.cast(DType::BF16)?),
            DType::Q8_0 => WeightData::Q8_0(self.cast(DType::Q8_0)?),
            DType::Q4_0 => WeightData::Q4_0(self.cast(DType::Q4_0)?),
            DType::Q4K => WeightData::Q4K(self.cast(DType::Q4K)?),
            DType::Q6K => WeightData::Q6K(self.cast(DType::Q6K)?),
        };
        MatRef::new(data, rows, cols, cols).map_err(|e| GgufError::InvalidInput {
            reason: alloc::format!("tensor '{}': {e}", self.name),
        })
    }

    /// F32 data as an `ndarray` view with the row-major shape.
    pub fn as_f32(&self) -> Result<ArrayViewD<'a, f32>, GgufError> {
        self.nd(DType::F32)
    }

    /// F16 data as an `ndarray` view.
    pub fn as_f16(&self) -> Result<ArrayViewD<'a, f16>, GgufError> {
        self.nd(DType::F16)
    }

    /// BF16 data as an `ndarray` view.
    pub fn as_bf16(&self) -> Result<ArrayViewD<'a, bf16>, GgufError> {
        self.nd(DType::BF16)
    }

    fn rows<T: bytemuck::Pod>(&self, want: DType) -> Result<BlockRows<'a, T>, GgufError> {
        let blocks = self.cast::<T>(want)?;
        let ne = self.info.ggml_dims();
        let row_len = ne.first().copied().unwrap_or(1) as usize;
        let blocks_per_row = row_len / want.block_len();
        let rows = blocks.len().checked_div(blocks_per_row).unwrap_or(0);
        Ok(BlockRows {
            blocks,
            blocks_per_row,
            rows,
        })
    }

    /// Q8_0 data as rows of blocks.
    pub fn as_q8_0(&self) -> Result<BlockRows<'a, BlockQ8_0>, GgufError> {
        self.rows(DType::Q8_0)
    }

    /// Q4_0 data as rows of blocks.
    pub fn as_q4_0(&self) -> Result<BlockRows<'a, BlockQ4_0>, GgufError> {
        self.rows(DType::Q4_0)
    }

    /// Every element widened or dequantised to f32 (a copy), for any supported type.
    pub fn to_f32_vec(&self) -> Result<alloc::vec::Vec<f32>, GgufError> {
        use modula_quant::quantize::{dequantize_row_q4_0, dequantize_row_q8_0};
        Ok(match self.dtype() {
            DType::F32 => self.as_f32_slice()?.to_vec(),
            DType::F16 => self.as_f16()?.iter().map(|v| v.to_f32()).collect(),
            DType::BF16 => self.as_bf16()?.iter().map(|v| v.to_f32()).collect(),
            DType::Q8_0 => {
                let r = self.as_q8_0()?;
                let mut out = alloc::vec![0f32; r.blocks.len() * modula_quant::QK8_0];
                dequantize_row_q8_0(r.blocks, &mut out);
                out
            }
            DType::Q4_0 => {
                let r = self.as_q4_0()?;
                let mut out = alloc::vec![0f32; r.blocks.len() * modula_quant::QK4_0];
                dequantize_row_q4_0(r.blocks, &mut out);
                out
            }
            DType::Q4K => {
                let b = self.cast::<modula_quant::BlockQ4K>(DType::Q4K)?;
                let mut out = alloc::vec![0f32; b.len() * modula_quant::QK_K];
                modula_quant::quantize::dequantize_row_q4_k(b, &mut out);
                out
            }
            DType::Q6K => {
                let b = self.cast::<modula_quant::BlockQ6K>(DType::Q6K)?;
                let mut out = alloc::vec![0f32; b.len() * modula_quant::QK_K];
                modula_quant::quantize::dequantize_row_q6_k(b, &mut out);
                out
            }
        })
    }
}
