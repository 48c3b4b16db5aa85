//! `modula m2mkd`: module-to-module distillation from a dense teacher into a modular
//! (MoE) student, phase by phase over a working directory (each phase resumes from the
//! files the previous ones left; see `modula_train::m2mkd::pipeline`):
//!
//! * `meta` — PT: the meta model (one block per module, teacher width);
//! * `incubate` — MT: each teacher module trained inside the frozen meta model;
//! * `teacher` — FT: the teacher modules assembled and fine-tuned (health checks printed);
//! * `distill --variant V --seed S` — K: each student module trained in its hybrid;
//! * `assemble --variant V --seed S` — A: the student assembled (stitches dropped) and
//!   fine-tuned, its accuracy measured;
//! * `run --variants … --seeds …` — every phase, every variant and seed, and the table.

use clap::{Args, Subcommand};
use modula_train::data::ByteText;
use modula_train::m2mkd::loss::KlNorm;
use modula_train::m2mkd::pipeline::{
    table, Arch, FixedSeq, Pipeline, PipelineCfg, Steps, StudentResult, Variant,
};
use modula_train::tasks::{Dataset, FashionMnist};
use std::path::PathBuf;
use std::time::Instant;

/// `modula m2mkd` subcommands.
#[derive(Subcommand, Debug)]
pub enum M2mCommand {
    /// PT: train the meta model.
    Meta(M2mArgs),
    /// MT: incubate every teacher module inside the meta model.
    Incubate(M2mArgs),
    /// FT: assemble and fine-tune the teacher; print the teacher side's health checks.
    Teacher(M2mArgs),
    /// K: train every student module of one variant and seed in its hybrid.
    Distill(StudentArgs),
    /// A: assemble one student (stitches dropped), fine-tune it, measure it.
    Assemble(StudentArgs),
    /// Everything: teacher side, every variant for every seed, the table.
    Run(RunArgs),
    /// Test and shifted-test accuracy of a whole network file (a student or the teacher;
    /// quantised copies too).
    Eval(EvalArgs),
}

/// A network file and the data to measure it on.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The network (.gguf written by a phase, or a quantised copy).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    common: M2mArgs,
}

/// Settings shared by every phase (they must stay the same within a directory).
#[derive(Args, Debug, Clone)]
pub struct M2mArgs {
    /// Working directory (phase files, results.jsonl, teacher.json, table.md).
    #[arg(long, default_value = "m2mkd-run")]
    dir: PathBuf,
    /// Data: `generated` (8x8 images of 4 classes, no download), `fashion-mnist`, `kjv`
    /// or a text file (byte LM).
    #[arg(long, default_value = "generated")]
    data: String,
    /// Directory holding kjv.txt and fashion-mnist/ (default: $MODULA_DATA or ./data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Image patch side, dividing the image side (default: 7 for Fashion-MNIST's 28x28, 2 for
    /// the generated 8x8 images).
    #[arg(long)]
    patch: Option<usize>,
    /// Training images used (0 = all).
    #[arg(long, default_value_t = 0)]
    train_images: usize,
    /// Test images used (0 = all).
    #[arg(long, default_value_t = 0)]
    test_images: usize,
    /// Byte LM: positions per sequence.
    #[arg(long, default_value_t = 64)]
    seq: usize,
    /// Byte LM: a second text whose validation split is the out-of-distribution test
    /// (images get the shifted test set automatically).
    #[arg(long)]
    ood: Option<PathBuf>,
    /// Modules L.
    #[arg(long, default_value_t = 4)]
    modules: usize,
    /// Width of the meta model and the teacher.
    #[arg(long, default_value_t = 48)]
    teacher_width: usize,
    /// Teacher blocks per module.
    #[arg(long, default_value_t = 2)]
    teacher_blocks: usize,
    /// Teacher (and meta) FFN width.
    #[arg(long, default_value_t = 96)]
    teacher_ffn: usize,
    /// Student width (stitches map it to the meta width in the hybrids).
    #[arg(long, default_value_t = 24)]
    student_width: usize,
    /// Student blocks per module.
    #[arg(long, default_value_t = 1)]
    student_blocks: usize,
    /// Student expert FFN width.
    #[arg(long, default_value_t = 48)]
    student_ffn: usize,
    /// Experts per student MoE block.
    #[arg(long, default_value_t = 4)]
    experts: usize,
    /// Experts per token.
    #[arg(long, default_value_t = 2)]
    top_k: usize,
    /// Every N-th student block is MoE (1 = all, 2 = every other, 0 = dense student).
    #[arg(long, default_value_t = 1)]
    moe_every: usize,
    /// Attention heads (all networks).
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// PT steps.
    #[arg(long, default_value_t = 1500)]
    steps_meta: u64,
    /// MT steps per module.
    #[arg(long, default_value_t = 600)]
    steps_incubate: u64,
    /// FT steps.
    #[arg(long, default_value_t = 800)]
    steps_teacher: u64,
    /// K steps per module.
    #[arg(long, default_value_t = 300)]
    steps_distill: u64,
    /// A steps (the from-scratch baseline too; twice for scratch2x).
    #[arg(long, default_value_t = 600)]
    steps_finetune: u64,
    /// Examples per step.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    lr: f32,
    /// Teacher weight α of the distillation loss.
    #[arg(long, default_value_t = 0.5)]
    alpha: f32,
    /// KL temperature τ.
    #[arg(long, default_value_t = 1.0)]
    tau: f32,
    /// KL normalisation of the m2mkd variant: logit (the released code: ÷ rows·classes)
    /// or row (÷ rows).
    #[arg(long, default_value = "logit")]
    kl_norm: String,
    /// Label smoothing.
    #[arg(long, default_value_t = 0.1)]
    smoothing: f32,
    /// Seed of the teacher side.
    #[arg(long, default_value_t = 1)]
    teacher_seed: u64,
    /// A trained dense baseline (`modula train`, .gguf or .safetensors) to use as the
    /// teacher: split into the modules, incubated (MT) and fine-tuned (FT) from its weights
    /// instead of from scratch. Its width, heads, FFN and blocks (= modules x
    /// --teacher-blocks) must match the teacher flags.
    #[arg(long)]
    teacher_init: Option<PathBuf>,
    /// Teacher modules of the K phase: `ft` (split from the fine-tuned teacher, as the
    /// released code does) or `mt` (the incubated modules, still fitted to the meta model).
    #[arg(long, default_value = "ft")]
    teacher_modules: String,
    /// Evaluation batches (of --batch examples).
    #[arg(long, default_value_t = 200)]
    eval_batches: usize,
    /// Kernel threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Where training's matrix products run: cpu, gpu or auto (gpu/auto need a build with
    /// `--features gpu`; no adapter: the CPU, saying why).
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// One student.
#[derive(Args, Debug)]
pub struct StudentArgs {
    #[command(flatten)]
    common: M2mArgs,
    /// Variant: scratch, scratch2x, logitkd, incubation, m2mkd, m2mkd-row, m2mkd-mse.
    #[arg(long, default_value = "m2mkd")]
    variant: String,
    /// Student seed (initialisation and batches; variants are paired by it).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// The whole study.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    common: M2mArgs,
    /// Variants, comma-separated (default: all).
    #[arg(long)]
    variants: Option<String>,
    /// Seeds: a list `1,2,3` or a range `1-6`.
    #[arg(long, default_value = "1")]
    seeds: String,
}

struct Data {
    train: Box<dyn Dataset>,
    shifted: Option<Box<dyn Dataset>>,
    fixed: Option<usize>,
}

impl M2mArgs {
    fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .or_else(|| std::env::var_os("MODULA_DATA").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("data"))
    }

    fn load(&self) -> Result<Data, String> {
        let e = |e: modula_train::data::DataError| e.to_string();
        let images = |f: FashionMnist| -> Result<Data, String> {
            let f = f.subset(self.train_images, self.test_images).map_err(e)?;
            let s = f.shifted(0x5eed);
            Ok(Data {
                train: Box::new(f),
                shifted: Some(Box::new(s)),
                fixed: None,
            })
        };
        if self.ood.is_some() && matches!(self.data.as_str(), "generated" | "fashion-mnist") {
            return Err("--ood is for text data; images get a shifted test set".into());
        }
        match self.data.as_str() {
            "generated" => {
                let (tr, te) = (
                    if self.train_images == 0 {
                        2000
                    } else {
                        self.train_images
                    },
                    if self.test_images == 0 {
                        1000
                    } else {
                        self.test_images
                    },
                );
                let patch = self.patch.unwrap_or(2);
                if patch == 0 || 8 % patch != 0 {
                    return Err(format!(
                        "--patch {patch}: the generated images are 8x8; use a patch side that divides 8 (1, 2, 4 or 8)"
                    ));
                }
                images(FashionMnist::generated(tr, te, 1, patch).map_err(e)?)
            }
            "fashion-mnist" => {
                let p = self.data_dir().join("fashion-mnist");
                images(
                    FashionMnist::from_dir(&p, self.patch.unwrap_or(7)).map_err(|x| {
                        format!("{}; run scripts/get-data.sh (or pass --data-dir)", e(x))
                    })?,
                )
            }
            text => {
                let path = if text == "kjv" {
                    self.data_dir().join("kjv.txt")
                } else {
                    PathBuf::from(text)
                };
                let read = |p: &PathBuf| -> Result<ByteText, String> {
                    ByteText::from_file(p, 0.1).map_err(|x| format!("{}: {}", p.display(), e(x)))
                };
                let train = read(&path)?;
                train.check_window(self.seq).map_err(e)?;
                let shifted: Option<Box<dyn Dataset>> = match &self.ood {
                    Some(p) => {
                        let t = read(p)?;
                        t.check_window(self.seq).map_err(e)?;
                        Some(Box::new(t))
                    }
                    None => None,
                };
                Ok(Data {
                    train: Box::new(train),
                    shifted,
                    fixed: Some(self.seq),
                })
            }
        }
    }

    fn cfg(&self) -> Result<PipelineCfg, String> {
        let arch = |d, ffn, blocks, moe_every, experts, top_k| Arch {
            d,
            heads: self.heads,
            ffn,
            blocks,
            moe_every,
            experts,
            top_k,
        };
        if self.moe_every > 0 && (self.experts < 2 || self.top_k == 0 || self.top_k > self.experts)
        {
            return Err(format!(
                "--experts {} --top-k {}: need at least 2 experts and 1 <= top-k <= experts",
                self.experts, self.top_k
            ));
        }
        for (name, v) in [
            ("--teacher-width", self.teacher_width),
            ("--student-width", self.student_width),
        ] {
            if self.heads == 0 || v % self.heads != 0 || v == 0 {
                return Err(format!(
                    "{name} {v} must be a positive multiple of --heads {}",
                    self.heads
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(format!("--alpha {} must be in [0, 1]", self.alpha));
        }
        if self.tau.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Err(format!("--tau {} must be positive", self.tau));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("--lr {} must be positive", self.lr));
        }
        let steps = Steps {
            meta: self.steps_meta,
            incubate: self.steps_incubate,
            teacher_ft: self.steps_teacher,
            distill: self.steps_distill,
            finetune: self.steps_finetune,
        };
        if [
            steps.meta,
            steps.incubate,
            steps.teacher_ft,
            steps.distill,
            steps.finetune,
        ]
        .contains(&0)
        {
            return Err("every phase needs at least 1 step".into());
        }
        Ok(PipelineCfg {
            modules: self.modules,
            meta: arch(self.teacher_width, self.teacher_ffn, 1, 0, 0, 0),
            teacher: arch(
                self.teacher_width,
                self.teacher_ffn,
                self.teacher_blocks,
                0,
                0,
                0,
            ),
            student: arch(
                self.student_width,
                self.student_ffn,
                self.student_blocks,
                self.moe_every,
                self.experts,
                self.top_k,
            ),
            steps,
            batch: self.batch,
            lr: self.lr,
            min_lr: self.lr / 10.0,
            smoothing: self.smoothing,
            alpha: self.alpha,
            tau: self.tau,
            norm: KlNorm::parse(&self.kl_norm)?,
            teacher_seed: self.teacher_seed,
            teacher_from_mt: match self.teacher_modules.as_str() {
                "ft" => false,
                "mt" => true,
                o => return Err(format!("--teacher-modules {o}: use ft or mt")),
            },
            eval_batches: self.eval_batches,
            ..PipelineCfg::small()
        })
    }

    /// Run `f` on the pipeline these settings describe.
    fn with<R>(
        &self,
        f: impl FnOnce(&Pipeline<'_>) -> Result<R, modula_core::Error>,
    ) -> Result<R, String> {
        crate::set_threads(self.threads)?;
        crate::train::select_device(&self.device)?;
        let cfg = self.cfg()?;
        let data = self.load()?;
        let fixed_train;
        let fixed_shift;
        let (train, shifted): (&dyn Dataset, Option<&dyn Dataset>) = match data.fixed {
            Some(seq) => {
                fixed_train = FixedSeq {
                    inner: data.train.as_ref(),
                    seq,
                };
                fixed_shift = data.shifted.as_deref().map(|d| FixedSeq { inner: d, seq });
                (
                    &fixed_train,
                    fixed_shift.as_ref().map(|d| d as &dyn Dataset),
                )
            }
            None => (data.train.as_ref(), data.shifted.as_deref()),
        };
        let log = |m: &str| eprintln!("{m}");
        let teacher_init = match &self.teacher_init {
            Some(path) => {
                let (dense, _) = crate::train::load_model(path)?;
                Some(
                    modula_train::m2mkd::net::Net::from_dense(&dense, train.shape(), self.modules)
                        .map_err(|e| format!("{}: {e}", path.display()))?,
                )
            }
            None => None,
        };
        let p = Pipeline {
            cfg,
            data: train,
            shifted,
            dir: self.dir.clone(),
            log: &log,
            teacher_init: teacher_init.as_ref(),
        };
        eprintln!("m2mKD in {}: {}", self.dir.display(), train.describe());
        let r = f(&p);
        if let Some(g) = modula_train::compute::report() {
            eprintln!("{g}");
        }
        Ok(r?)
    }
}

fn print_result(r: &StudentResult) {
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    println!(
        "{} seed {}: test {} (loss {:.4}), shifted {}{}{}",
        r.variant.name(),
        r.seed,
        pct(r.iid),
        r.loss,
        r.ood.map_or("-".into(), pct),
        r.before.map_or(String::new(), |b| format!(
            ", assembled before A {}",
            pct(b)
        )),
        if r.hybrids.is_empty() {
            String::new()
        } else {
            format!(
                ", student hybrids {}",
                r.hybrids
                    .iter()
                    .map(|&h| pct(h))
                    .collect::<Vec<_>>()
                    .join(" / ")
            )
        }
    );
}

fn seeds(s: &str) -> Result<Vec<u64>, String> {
    let bad = || format!("--seeds '{s}': use 1,2,3 or 1-6");
    if let Some((a, b)) = s.split_once('-') {
        let (a, b): (u64, u64) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if a > b || b - a > 1000 {
            return Err(bad());
        }
        return Ok((a..=b).collect());
    }
    s.split(',')
        .map(|v| v.trim().parse().map_err(|_| bad()))
        .collect()
}

/// Run `modula m2mkd ...`.
pub fn run(cmd: &M2mCommand) -> Result<(), String> {
    let t0 = Instant::now();
    let r = match cmd {
        M2mCommand::Eval(a) => {
            let net = modula_train::m2mkd::net::Net::read_gguf(&a.model)?;
            // evaluation reads the data only; nothing is written to --dir
            let (iid, loss, ood) = a.common.with(|p| p.evaluate(&net))?;
            println!(
                "{}: test accuracy {:.2}% (loss {loss:.4}){}",
                a.model.display(),
                100.0 * iid,
                ood.map_or(String::new(), |o| format!(
                    ", shifted test {:.2}%",
                    100.0 * o
                ))
            );
            Ok(())
        }
        M2mCommand::Meta(a) => a.with(|p| p.meta().map(|_| ())),
        M2mCommand::Incubate(a) => a.with(|p| {
            let meta = p.meta()?;
            p.incubated(&meta).map(|_| ())
        }),
        M2mCommand::Teacher(a) => a.with(|p| {
            p.teacher()?;
            let text = std::fs::read_to_string(p.dir.join("teacher.json"))
                .map_err(|e| modula_core::Error::io(format!("teacher.json: {e}")))?;
            println!("{text}");
            Ok(())
        }),
        M2mCommand::Distill(a) => {
            let v = Variant::parse(&a.variant)?;
            if !v.modular() {
                return Err(format!(
                    "variant '{}' has no K phase (it trains end to end: use assemble)",
                    v.name()
                ));
            }
            a.common.with(|p| {
                p.distill(v, a.seed)?;
                Ok(())
            })
        }
        M2mCommand::Assemble(a) => {
            let v = Variant::parse(&a.variant)?;
            a.common.with(|p| {
                let r = p.student(v, a.seed)?;
                print_result(&r);
                Ok(())
            })
        }
        M2mCommand::Run(a) => {
            let vs: Vec<Variant> = match &a.variants {
                None => Variant::ALL.to_vec(),
                Some(s) => s
                    .split(',')
                    .map(|v| Variant::parse(v.trim()))
                    .collect::<Result<_, _>>()?,
            };
            let seeds = seeds(&a.seeds)?;
            a.common.with(|p| {
                for &s in &seeds {
                    for &v in &vs {
                        let r = p.student(v, s)?;
                        print_result(&r);
                    }
                }
                let t = table(&p.results()?);
                let tp = p.dir.join("table.md");
                modula_core::io::atomic_write(&tp, |w| w.write_all(t.as_bytes()))
                    .map_err(|e| modula_core::Error::io(format!("{}: {e}", tp.display())))?;
                println!("\n{t}");
                Ok(())
            })
        }
    };
    eprintln!("({:.1} s)", t0.elapsed().as_secs_f64());
    r
}
