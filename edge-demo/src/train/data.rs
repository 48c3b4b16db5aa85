//! The data flags of `train` and `eval`.

use super::*;

/// Bytes of the built-in `tales` text (`modula_train::corpus`).
pub const TALES_BYTES: usize = 2 << 20;

/// Which data and how to shape it (shared by `train` and `eval`).
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Data: a text file (bytes; the last 10% is validation), `kjv`, `fashion-mnist`,
    /// `tales` (built-in English-like text, 2 MB), `generated` (8x8 images of 4 classes),
    /// `listops`, `recall`, `sparse-recall` or `copy` (the last six are generated, no
    /// download).
    #[arg(long)]
    pub(crate) data: String,
    /// Positions per sequence (bytes for text; fixed by the task for fashion-mnist).
    #[arg(long, default_value_t = 64)]
    pub(crate) seq: usize,
    /// Directory holding kjv.txt and fashion-mnist/ (default: $MODULA_DATA or ./data).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Fashion-MNIST patch side (divides 28).
    #[arg(long, default_value_t = 7)]
    pub(crate) patch: usize,
    /// ListOps deepest nesting.
    #[arg(long, default_value_t = 6)]
    pub(crate) listops_depth: u32,
    /// ListOps most arguments per operator.
    #[arg(long, default_value_t = 5)]
    pub(crate) listops_args: u32,
    /// Distinct keys of the recall task / symbols of the copy task.
    #[arg(long, default_value_t = 16)]
    pub(crate) symbols: usize,
    /// Key-value pairs per sequence of the sparse-recall task.
    #[arg(long, default_value_t = 4)]
    pub(crate) pairs: usize,
    /// Seed of generated validation sets.
    #[arg(long, default_value_t = 1)]
    pub(crate) data_seed: u64,
    /// Use only this part of a text file, as fractions `A:B` of its bytes (e.g. `0:0.479`
    /// for KJV Genesis–Job); the last 10% of the part is its validation split.
    #[arg(long)]
    pub(crate) data_slice: Option<String>,
}

impl DataArgs {
    /// Text data (a path or `kjv`) with defaults for everything else.
    pub fn for_text(data: String, data_slice: Option<String>, seq: usize) -> Self {
        DataArgs {
            data,
            seq,
            data_dir: None,
            patch: 7,
            listops_depth: 6,
            listops_args: 5,
            symbols: 16,
            pairs: 4,
            data_seed: 1,
            data_slice,
        }
    }

    pub(crate) fn dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .or_else(|| std::env::var_os("MODULA_DATA").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("data"))
    }

    /// Text from `path`, cut to `--data-slice`.
    pub(crate) fn text(&self, path: &Path, hint: &str) -> Result<ByteText, String> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read data file '{}': {e}{hint}", path.display()))?;
        let bytes = match &self.data_slice {
            None => bytes,
            Some(sl) => {
                let (a, b) = sl
                    .split_once(':')
                    .and_then(|(a, b)| Some((a.parse::<f64>().ok()?, b.parse::<f64>().ok()?)))
                    .filter(|(a, b)| 0.0 <= *a && a < b && *b <= 1.0)
                    .ok_or_else(|| format!("--data-slice {sl}: use A:B with 0 <= A < B <= 1"))?;
                let n = bytes.len() as f64;
                bytes[(a * n) as usize..(b * n) as usize].to_vec()
            }
        };
        ByteText::from_bytes(bytes, 0.1).map_err(|e| e.to_string())
    }

    /// Load or generate the data set; returns it and the sequence length it uses.
    pub fn load(&self) -> Result<(Box<dyn Dataset>, usize), String> {
        let e = |e: modula_train::data::DataError| e.to_string();
        let hint = "; run scripts/get-data.sh (or pass --data-dir)";
        if self.data_slice.is_some()
            && [
                "fashion-mnist",
                "tales",
                "generated",
                "listops",
                "recall",
                "sparse-recall",
                "copy",
            ]
            .contains(&self.data.as_str())
        {
            return Err("--data-slice applies to text data only".into());
        }
        let ds: Box<dyn Dataset> = match self.data.as_str() {
            "kjv" => Box::new(self.text(&self.dir().join("kjv.txt"), hint)?),
            "tales" => Box::new(
                ByteText::from_bytes(
                    modula_train::corpus::generated_text(TALES_BYTES, self.data_seed),
                    0.1,
                )
                .map_err(e)?,
            ),
            "generated" => Box::new(
                FashionMnist::generated(2000, 1000, self.data_seed, self.patch).map_err(e)?,
            ),
            "fashion-mnist" => {
                let p = self.dir().join("fashion-mnist");
                Box::new(
                    FashionMnist::from_dir(&p, self.patch)
                        .map_err(|x| format!("{}{hint}", e(x)))?,
                )
            }
            "listops" => Box::new(
                ListOps::new(
                    self.listops_depth,
                    self.listops_args,
                    20.min(self.seq / 2),
                    self.seq,
                    2000,
                    self.data_seed,
                )
                .map_err(e)?,
            ),
            "recall" => Box::new(Recall::new(self.symbols, self.seq).map_err(e)?),
            "sparse-recall" => Box::new(SparseRecall::new(self.seq, self.pairs).map_err(e)?),
            "copy" => Box::new(Copy::new(self.symbols, self.seq).map_err(e)?),
            path => Box::new(self.text(Path::new(path), "")?),
        };
        let seq = ds.shape().seq.unwrap_or(self.seq);
        Ok((ds, seq))
    }
}
