//! The block-wise distillation search as phases (ALGORITHMS.md section 6), each a function
//! that returns what it made, resumable and leaving its files in the search's folder:
//!
//! 1. [`supernets`]: block supernets distilled from the teacher (`supernet/`: checkpoints,
//!    per-block losses, the final weights).
//! 2. [`local_search`]: every block's scored candidates (`search/tables.json`); then
//!    [`frontier`] (`search/frontier.json`, the `gamma_sweep`) and [`choose`] (the chosen
//!    paths, `search/choice.json`).
//! 3. [`retrain`]: the student (and with `ablation` the diffusion-only student) retrained with
//!    the dynamic joint loss into ordinary run directories (`student/`,
//!    `student-diffusion-only/`), which `sample`, `eval` and `export` open.
//! 4. [`measure`] and [`write_report`]: teacher vs students in parameters, MACs, sampling
//!    latency measured on the device, and the score (`report.json`, `report.md`).
//!
//! [`BlockConfig`] (`block.json`) holds everything that determines the search. Progress goes
//! through [`BlockEvent`]s; nothing here prints.

use super::distill::{DistillEvent, SUPERNETS_FILE, step_batch, train_supernets};
use super::local::{
    BlockTable, LocalSearchConfig, choose_all, global_budget, path_loss, score_block,
};
use super::retrain::{JointObjective, LambdaSchedule, student_from_supernets};
use super::supernet::BlockSupernet;
use super::{BlockSpace, Path as GenePath, assemble, block_spaces};
use crate::data::{DataSource, Dataset};
use crate::device::DeviceInfo;
use crate::diffusion::{NoiseSchedule, SamplingRun, make_sampler};
use crate::eval::extract::FeatureExtractor;
use crate::eval::reference::Reference;
use crate::eval::rfid::{GenerationConfig, score_denoiser};
use crate::genome::{Cost, Genome, SearchSpace, cost};
use crate::model::{BlockId, Unet};
use crate::rundir::{LoadedRun, RunDirError, RunFiles, Weights, load_denoiser};
use crate::train::{
    LrSchedule, TrainConfig, TrainEvent, TrainOptions, TrainStatus, train_objective, write_atomic,
};
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

pub const CONFIG_FILE: &str = "block.json";
pub const TABLES_FILE: &str = "search/tables.json";
pub const FRONTIER_FILE: &str = "search/frontier.json";
pub const CHOICE_FILE: &str = "search/choice.json";

/// The defaults of a block search (`diffnas search block` shows them in its help).
pub mod defaults {
    pub const SEED: u64 = 0;
    pub const SUPERNET_STEPS: u64 = 1000;
    pub const BATCH_SIZE: usize = 32;
    pub const SUPERNET_LR: f64 = 1e-3;
    pub const EVAL_BATCHES: usize = 4;
    pub const GAMMA: f64 = 1.0;
    pub const GAMMA_SWEEP: &str = "0.9,1,1.1,1.25,1.5,2,3";
    pub const MAX_EXHAUSTIVE: u128 = 1296;
    pub const SAMPLES: usize = 300;
    pub const ROUNDS: usize = 4;
    pub const CHILDREN: usize = 8;
    pub const RETRAIN_STEPS: u64 = 1000;
    pub const RETRAIN_LR: f64 = 5e-4;
    pub const LAMBDA: &str = "linear";
    pub const SCORE_N: usize = 2000;
    pub const SCORE_STEPS: usize = 20;
    pub const LATENCY_BATCH: usize = 16;
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// A setting, or a file the user pointed at, is wrong.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Run(#[from] RunDirError),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    /// A phase failed (training diverged, a device error, ...).
    #[error("{what}: {message}")]
    Failed { what: String, message: String },
}

impl BlockError {
    /// Whether the user gave something wrong (as opposed to a failure while running).
    pub fn is_bad_input(&self) -> bool {
        match self {
            BlockError::Config(_) => true,
            BlockError::Run(r) => r.is_bad_input(),
            _ => false,
        }
    }
}

fn io(path: &Path, e: impl std::fmt::Display) -> BlockError {
    BlockError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn failed(what: impl Into<String>, e: impl std::fmt::Display) -> BlockError {
    BlockError::Failed {
        what: what.into(),
        message: e.to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SupernetInit {
    /// Random initialisation (the paper's setting).
    Fresh,
    /// The teacher's weights in the teacher-shaped path (a warm start).
    Teacher,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StudentInit {
    /// Random initialisation.
    Fresh,
    /// Blocks from the supernets' chosen paths, the rest from the teacher.
    Supernet,
}

/// `block.json`: everything that determines the search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockConfig {
    pub teacher: PathBuf,
    pub teacher_weights: PathBuf,
    pub data: DataSource,
    pub max_images: Option<usize>,
    pub seed: u64,
    pub supernet: TrainConfig,
    pub supernet_init: SupernetInit,
    pub eval_batches: usize,
    pub kernels: Vec<usize>,
    pub hidden_mults: Vec<f64>,
    pub gamma: f64,
    pub gamma_sweep: Vec<f64>,
    pub budget_macs: Option<u64>,
    pub local: LocalSearchConfig,
    pub retrain: TrainConfig,
    pub lambda: LambdaSchedule,
    pub lambda_steps: u64,
    pub student_init: StudentInit,
    pub ablation: bool,
    pub score: GenerationConfig,
    pub latency_batch: usize,
}

/// What `search block` is asked for; the data, its cut and the schedules' other settings come
/// from the teacher's run.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockAsk {
    pub teacher: PathBuf,
    /// None: the teacher's data and cut.
    pub data: Option<DataSource>,
    pub max_images: Option<usize>,
    pub seed: u64,
    pub supernet_steps: u64,
    pub batch_size: usize,
    pub supernet_lr: f64,
    pub supernet_init: SupernetInit,
    pub eval_batches: usize,
    pub gamma: f64,
    pub gamma_sweep: Vec<f64>,
    pub budget_macs: Option<u64>,
    pub max_exhaustive: u128,
    pub samples: usize,
    pub rounds: usize,
    pub children: usize,
    pub retrain_steps: u64,
    pub retrain_lr: f64,
    pub lambda: LambdaSchedule,
    /// None: half the retraining.
    pub lambda_steps: Option<u64>,
    pub student_init: StudentInit,
    pub ablation: bool,
    pub score_n: usize,
    pub score_steps: usize,
    pub latency_batch: usize,
    /// The retraining's loss (None: the teacher's, the only one its head allows).
    pub loss: Option<crate::diffusion::LossKind>,
    /// What the teacher's, the supernets' and the student's convolutions and attention matmuls
    /// compute in, in distillation, retraining and scoring (not the teacher run's own).
    pub precision: crate::precision::Precision,
}

impl BlockConfig {
    /// The configuration `a` describes for its teacher: the teacher's EMA weights, data and
    /// image space, and short schedules on top of its training configuration.
    pub fn for_teacher(a: &BlockAsk) -> Result<BlockConfig, BlockError> {
        let (tg, tfiles) = RunFiles::read(&a.teacher)?;
        let space = SearchSpace::for_image(tg.image);
        let base = &tfiles.config;
        let loss = base.loss_kind();
        if let Some(asked) = a.loss
            && asked != loss
        {
            return Err(BlockError::Config(format!(
                "--loss {asked}: the student keeps its teacher's head, and the teacher {} trained \
                 with {loss}",
                a.teacher.display()
            )));
        }
        // Written only when not f32, so the block.json of an f32 search reads as before.
        let precision = (!a.precision.is_f32()).then_some(a.precision);
        Ok(BlockConfig {
            teacher: a.teacher.clone(),
            teacher_weights: crate::rundir::weights_path(&a.teacher, Weights::Ema)?,
            data: a.data.clone().unwrap_or_else(|| tfiles.data.clone()),
            max_images: a.max_images.or(tfiles.max_images),
            seed: a.seed,
            supernet: short_schedule(base, a.supernet_steps, a.batch_size, a.supernet_lr, a.seed)
                .with_precision(precision),
            supernet_init: a.supernet_init,
            eval_batches: a.eval_batches,
            kernels: space.kernels.clone(),
            hidden_mults: space.hidden_mults.clone(),
            gamma: a.gamma,
            gamma_sweep: a.gamma_sweep.clone(),
            budget_macs: a.budget_macs,
            local: LocalSearchConfig {
                max_exhaustive: a.max_exhaustive,
                samples: a.samples,
                rounds: a.rounds,
                children: a.children,
                seed: a.seed,
            },
            // The joint loss draws its timesteps uniformly (its distillation terms are not
            // L_vlb's, which importance sampling would weigh).
            retrain: short_schedule(base, a.retrain_steps, a.batch_size, a.retrain_lr, a.seed)
                .with_timestep_sampling(Some(crate::diffusion::vlb::TimestepSampling::Uniform))
                .with_precision(precision),
            lambda: a.lambda,
            lambda_steps: a.lambda_steps.unwrap_or(a.retrain_steps / 2),
            student_init: a.student_init,
            ablation: a.ablation,
            score: GenerationConfig {
                n: a.score_n,
                steps: a.score_steps,
                precision: a.precision,
                ..GenerationConfig::rfid()
            },
            latency_batch: a.latency_batch,
        })
    }
}

/// The short schedule of the supernets and the retraining: warm-up 5% of the steps, cosine to
/// 10% of the peak, EMA 0.999 with warm-up, ten checkpoints; the rest from the teacher's run.
pub fn short_schedule(
    base: &TrainConfig,
    steps: u64,
    batch: usize,
    lr: f64,
    seed: u64,
) -> TrainConfig {
    base.clone()
        .with_steps(steps)
        .with_batch_size(batch)
        .with_lr(lr)
        .with_warmup_steps((steps / 20).max(1))
        .with_lr_schedule(LrSchedule::Cosine)
        .with_min_lr_ratio(0.1)
        .with_ema_decay(0.999)
        .with_ema_warmup(true)
        .with_seed(seed)
        .with_checkpoint_every((steps / 10).max(1))
        .with_log_every(25)
}

impl BlockConfig {
    /// Settings that cannot work, named by their field.
    pub fn check(&self) -> Result<(), BlockError> {
        for (name, g) in std::iter::once(("gamma", self.gamma))
            .chain(self.gamma_sweep.iter().map(|g| ("gamma_sweep", *g)))
        {
            if !(g.is_finite() && g > 0.0) {
                return Err(BlockError::Config(format!(
                    "{name} {g}: must be a positive number"
                )));
            }
        }
        if self.eval_batches == 0 || self.supernet.batch_size == 0 {
            return Err(BlockError::Config(
                "eval_batches and the batch size must be at least 1".into(),
            ));
        }
        if self.latency_batch == 0 {
            return Err(BlockError::Config(
                "latency_batch must be at least 1".into(),
            ));
        }
        self.supernet
            .check()
            .map_err(|e| BlockError::Config(format!("supernet: {e}")))?;
        self.retrain
            .check()
            .map_err(|e| BlockError::Config(format!("retrain: {e}")))
    }

    /// The search to run in `dir`: with `resume`, the stored one (checked against `asked` as
    /// [`BlockConfig::resume`] does); else `asked`, with the supernets of the search in `reuse`
    /// when given, written to `block.json`. The directory's lock comes with it: hold it for as
    /// long as the search runs.
    pub fn open(
        dir: &Path,
        asked: BlockConfig,
        resume: bool,
        reuse_from: Option<&Path>,
        fields: &[&str],
        flag: impl Fn(&str) -> String,
    ) -> Result<(BlockConfig, crate::lock::DirLock), BlockError> {
        let lock = || crate::lock::DirLock::take(dir).map_err(RunDirError::from);
        match (resume, reuse_from) {
            (true, Some(_)) => Err(BlockError::Config(
                "--reuse starts a new search from another one's supernets; it does not go with \
                 --resume"
                    .into(),
            )),
            (true, None) => {
                // Checked before the lock is taken, so that a mistyped folder is not created.
                let c = BlockConfig::resume(dir, &asked, fields, flag)?;
                Ok((c, lock()?))
            }
            (false, from) => {
                asked.check()?;
                let lock = lock()?;
                let c = match from {
                    Some(from) => reuse(from, dir, asked)?,
                    None => asked,
                };
                c.start(dir)?;
                Ok((c, lock))
            }
        }
    }

    /// The stored configuration of the search in `dir`.
    pub fn read(dir: &Path) -> Result<BlockConfig, BlockError> {
        read_json(&dir.join(CONFIG_FILE))
    }

    /// A fresh search in `dir`: refuses a folder that already holds one, then writes
    /// `block.json`.
    pub fn start(&self, dir: &Path) -> Result<(), BlockError> {
        if dir.join(CONFIG_FILE).exists() {
            return Err(BlockError::Config(format!(
                "{} already holds a block search; continue it with --resume or pick another \
                 --run-dir",
                dir.display()
            )));
        }
        self.check()?;
        write_json(&dir.join(CONFIG_FILE), self)
    }

    /// The search stored in `dir`, resumed: `asked` (what the flags describe) must name the same
    /// teacher and match it in every field of `fields` (JSON paths such as `supernet.steps`,
    /// the settings the user gave); a difference is refused, with `flag(field)` naming it.
    pub fn resume(
        dir: &Path,
        asked: &BlockConfig,
        fields: &[&str],
        flag: impl Fn(&str) -> String,
    ) -> Result<BlockConfig, BlockError> {
        let stored = BlockConfig::read(dir)
            .map_err(|e| BlockError::Config(format!("{e} (nothing to resume)")))?;
        let same = |p: &Path| std::fs::canonicalize(p).ok();
        let changed = if same(&asked.teacher) != same(&stored.teacher) {
            Some((
                "teacher".to_string(),
                stored.teacher.display().to_string(),
                asked.teacher.display().to_string(),
            ))
        } else {
            stored.first_difference(asked, fields)
        };
        match changed {
            None => Ok(stored),
            Some((field, was, now)) => Err(BlockError::Config(format!(
                "{} {now} differs from the {was} stored in {}, and a resumed search keeps its \
                 settings",
                flag(&field),
                dir.join(CONFIG_FILE).display()
            ))),
        }
    }

    /// The first field (a JSON path such as `supernet.steps`) where `other` differs from this
    /// configuration, with both values: a resumed search keeps its settings.
    pub fn first_difference(
        &self,
        other: &BlockConfig,
        fields: &[&str],
    ) -> Option<(String, String, String)> {
        let (a, b) = (
            serde_json::to_value(self).expect("serialises"),
            serde_json::to_value(other).expect("serialises"),
        );
        fields.iter().find_map(|f| {
            let ptr = format!("/{}", f.replace('.', "/"));
            let (x, y) = (a.pointer(&ptr)?, b.pointer(&ptr)?);
            (x != y).then(|| (f.to_string(), x.to_string(), y.to_string()))
        })
    }
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T, BlockError> {
    let text = std::fs::read_to_string(p)
        .map_err(|e| BlockError::Config(format!("{}: {e}", p.display())))?;
    serde_json::from_str(&text).map_err(|e| BlockError::Config(format!("{}: {e}", p.display())))
}

fn write_json<T: Serialize>(p: &Path, v: &T) -> Result<(), BlockError> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(|e| io(d, e))?;
    }
    let text = serde_json::to_string_pretty(v).expect("serialises");
    write_atomic(p, text.as_bytes()).map_err(|e| io(p, e))
}

/// Take over `from`'s supernet and candidate settings and copy its trained supernets and
/// scored tables into `dir`; everything after the local search is `c`'s own.
pub fn reuse(from: &Path, dir: &Path, c: BlockConfig) -> Result<BlockConfig, BlockError> {
    let old = BlockConfig::read(from)?;
    if old.teacher_weights != c.teacher_weights {
        return Err(BlockError::Config(format!(
            "--reuse {}: its teacher is {}, not {}",
            from.display(),
            old.teacher_weights.display(),
            c.teacher_weights.display()
        )));
    }
    let files = [
        format!("supernet/{SUPERNETS_FILE}"),
        format!("supernet/{}", crate::train::STATE_FILE),
        "supernet/distill-log.jsonl".to_string(),
        TABLES_FILE.to_string(),
    ];
    if !from.join(&files[0]).is_file() {
        return Err(BlockError::Config(format!(
            "--reuse {}: {} is missing (its supernets have not finished training)",
            from.display(),
            files[0]
        )));
    }
    for f in &files {
        let (mut src, dst) = (from.join(f), dir.join(f));
        if !src.is_file()
            && f.ends_with(crate::train::STATE_FILE)
            && let Some(ck) = crate::train::checkpoint::latest(&from.join("supernet"))
        {
            // Runs written before the final state was kept: the newest checkpoint's.
            src = ck.join(crate::train::STATE_FILE);
        }
        if src.is_file() {
            let parent = dst.parent().expect("has a parent");
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
            std::fs::copy(&src, &dst).map_err(|e| io(&dst, e))?;
        }
    }
    Ok(BlockConfig {
        data: old.data,
        max_images: old.max_images,
        seed: old.seed,
        supernet: old.supernet,
        supernet_init: old.supernet_init,
        eval_batches: old.eval_batches,
        kernels: old.kernels,
        hidden_mults: old.hidden_mults,
        local: old.local,
        ..c
    })
}

/// What every phase works from: the frozen teacher, the data, the block spaces.
pub struct Teacher {
    pub model: Unet,
    pub genome: Genome,
    pub cost: Cost,
    pub spaces: Vec<BlockSpace>,
    pub data: Dataset,
}

impl Teacher {
    /// Load the teacher named by `cfg` and its training data on `device`.
    pub fn load(cfg: &BlockConfig, device: &Device) -> Result<Teacher, BlockError> {
        let run = load_denoiser(&cfg.teacher, Weights::Ema, device)?;
        let cost = cost(&run.genome).map_err(|e| BlockError::Config(e.to_string()))?;
        let spaces = block_spaces(&run.genome, &cfg.kernels, &cfg.hidden_mults)
            .map_err(|e| BlockError::Config(e.to_string()))?;
        let image = run.genome.image;
        let data = cfg
            .data
            .load_for(
                crate::data::Split::Train,
                cfg.max_images,
                image.channels,
                image.size,
            )
            .map_err(|e| BlockError::Config(e.to_string()))?;
        Ok(Teacher {
            model: run.model,
            genome: run.genome,
            cost,
            spaces,
            data,
        })
    }
}

/// What happened, for progress output.
pub enum BlockEvent<'a> {
    /// Supernet training (block names in forward order, then the event).
    Distill(&'a [String], &'a DistillEvent),
    /// Scoring `block`'s candidates: `done` of `total`.
    Scoring {
        block: BlockId,
        done: u64,
        total: u64,
    },
    BlockScored(&'a BlockTable),
    /// Retraining the student `name`, whose lambda is `lambda` at the event's step.
    Retrain {
        name: &'a str,
        event: &'a TrainEvent,
        lambda_at: &'a dyn Fn(u64) -> f64,
    },
    /// Scoring model `name`'s samples: `done` of `total`.
    ScoringModel {
        name: &'a str,
        done: u64,
        total: u64,
    },
    Measured(&'a ModelRow),
}

/// How a resumable phase ended.
pub enum Phase<T> {
    Done(T),
    /// Stopped at this step by the user; resuming continues it.
    Stopped(u64),
}

/// Trained supernets and the seconds their training took (across resumes).
pub struct Supernets {
    pub nets: Vec<BlockSupernet>,
    pub seconds: f64,
}

/// Phase 1: the supernets, trained (or read back once trained) in `dir/supernet`.
pub fn supernets(
    cfg: &BlockConfig,
    teacher: &Teacher,
    dir: &Path,
    device: &Device,
    stop: &AtomicBool,
    on: &mut dyn FnMut(BlockEvent),
) -> Result<Phase<Supernets>, BlockError> {
    let sdir = dir.join("supernet");
    let final_nets = sdir.join(SUPERNETS_FILE);
    let fresh_nets = |device: &Device| -> Vec<BlockSupernet> {
        device.seed(cfg.seed);
        teacher
            .spaces
            .iter()
            .map(|s| {
                let n = BlockSupernet::new(&teacher.genome, s, device);
                match cfg.supernet_init {
                    SupernetInit::Fresh => n,
                    SupernetInit::Teacher => n.load_teacher(&teacher.model),
                }
            })
            .collect()
    };
    let names: Vec<String> = teacher.spaces.iter().map(|s| s.id.to_string()).collect();
    if final_nets.is_file() {
        let state = crate::train::checkpoint::read_state(&sdir).ok();
        match state.as_ref().map(|s| s.verify(&sdir)) {
            Some(Err(e)) => {
                // Kept aside; the supernets come back from their newest intact checkpoint
                // (one is written at the last step), and the final file is written again.
                let aside = final_nets.with_extension("bpk.damaged");
                std::fs::rename(&final_nets, &aside).map_err(|e| io(&final_nets, e))?;
                let note = format!(
                    "{e}; moved to {}, restoring the supernets from their checkpoints",
                    aside.display()
                );
                on(BlockEvent::Distill(&names, &DistillEvent::Note(note)));
            }
            checked => {
                if !matches!(checked, Some(Ok(true))) {
                    crate::integrity::unchecked(&final_nets);
                }
                let nets = fresh_nets(device)
                    .try_load_file(&final_nets)
                    .map_err(|e| io(&final_nets, e))?;
                let state = state.or_else(|| {
                    crate::train::checkpoint::latest(&sdir)
                        .and_then(|ck| crate::train::checkpoint::read_state(&ck).ok())
                });
                return Ok(Phase::Done(Supernets {
                    nets,
                    seconds: state.map_or(0.0, |s| s.elapsed_s),
                }));
            }
        }
    }
    let ad = device.clone().autodiff();
    let out = train_supernets(
        &teacher.model,
        &teacher.spaces,
        fresh_nets(&ad),
        &teacher.data,
        &cfg.supernet,
        &ad,
        Some(&sdir),
        Some(stop),
        &mut |e| on(BlockEvent::Distill(&names, e)),
    )
    .map_err(|e| failed("supernet training", e))?;
    if !out.finished {
        return Ok(Phase::Stopped(out.state.step));
    }
    let nets: Vec<BlockSupernet> = out.nets.into_iter().map(|n| n.valid()).collect();
    nets.clone()
        .save_file(&final_nets)
        .map_err(|e| io(&final_nets, e))?;
    let mut state = out.state.clone();
    state.sha256.clear();
    state
        .seal(&sdir, &[SUPERNETS_FILE])
        .map_err(|e| io(&final_nets, e))?;
    write_json(&sdir.join(crate::train::STATE_FILE), &state)?;
    Ok(Phase::Done(Supernets {
        nets,
        seconds: out.state.elapsed_s,
    }))
}

/// `search/tables.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tables {
    pub tables: Vec<BlockTable>,
    pub seconds: f64,
}

/// Phase 2: every block's candidates scored on a fixed evaluation set (or read back).
pub fn local_search(
    cfg: &BlockConfig,
    teacher: &Teacher,
    nets: &[BlockSupernet],
    dir: &Path,
    device: &Device,
    on: &mut dyn FnMut(BlockEvent),
) -> Result<Tables, BlockError> {
    let path = dir.join(TABLES_FILE);
    if path.is_file() {
        return read_json(&path);
    }
    let t0 = Instant::now();
    let schedule = NoiseSchedule::new(cfg.supernet.beta_schedule, cfg.supernet.timesteps)
        .map_err(|e| BlockError::Config(e.to_string()))?;
    // A fixed evaluation set: its own stream, never a training step's.
    let eval_cfg = cfg.supernet.clone().with_seed(cfg.seed ^ 0x0e7a_15e7);
    let data = &teacher.data;
    let mut batcher = crate::data::Batcher::new(eval_cfg.seed, eval_cfg.batch_size, data.len);
    let mut per_block: Vec<Vec<crate::model::BlockIo>> = vec![Vec::new(); teacher.spaces.len()];
    let mut embs: Vec<Tensor<2>> = Vec::new();
    for s in 0..cfg.eval_batches as u64 {
        let x0 = data.batch(&batcher.indices(s), device);
        let (x_t, t) = step_batch(&eval_cfg, &schedule, x0, s);
        let tr = teacher.model.trace(x_t, t);
        embs.push(tr.emb);
        for (b, io) in tr.blocks.into_iter().enumerate() {
            per_block[b].push(io);
        }
    }
    let mut tables = Vec::new();
    for ((space, net), evals) in teacher.spaces.iter().zip(nets).zip(&per_block) {
        let size = space.size();
        let total = if size <= cfg.local.max_exhaustive {
            size as u64 + 1
        } else {
            (cfg.local.samples + 1) as u64
        };
        let t = score_block(
            space,
            &teacher.genome,
            |p| path_loss(net, p, evals, &embs),
            &cfg.local,
            |k| {
                on(BlockEvent::Scoring {
                    block: space.id,
                    done: k as u64,
                    total,
                })
            },
        );
        on(BlockEvent::BlockScored(&t));
        tables.push(t);
    }
    let t = Tables {
        tables,
        seconds: t0.elapsed().as_secs_f64(),
    };
    write_json(&path, &t)?;
    Ok(t)
}

/// One row of the gamma frontier.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrontierRow {
    pub gamma: f64,
    pub params: u64,
    pub macs: u64,
    pub macs_ratio: f64,
    pub params_ratio: f64,
    /// Sum over blocks of the chosen paths' losses.
    pub loss: f64,
    pub genome_hash: String,
}

/// The paths at `idx` (one per block) of the tables.
fn pick(tables: &Tables, idx: &[usize]) -> Vec<(BlockId, GenePath)> {
    tables
        .tables
        .iter()
        .zip(idx)
        .map(|(t, &i)| (t.block, t.scored[i].path.clone()))
        .collect()
}

/// The size/quality frontier over `cfg.gamma_sweep`, written to `search/frontier.json`.
pub fn frontier(
    cfg: &BlockConfig,
    teacher: &Teacher,
    tables: &Tables,
    dir: &Path,
) -> Result<Vec<FrontierRow>, BlockError> {
    let rows: Vec<FrontierRow> = cfg
        .gamma_sweep
        .iter()
        .map(|&gamma| {
            let idx = choose_all(&tables.tables, gamma);
            let g = assemble(&teacher.genome, &pick(tables, &idx));
            let c = cost(&g).expect("assembled genomes are valid");
            FrontierRow {
                gamma,
                params: c.params,
                macs: c.macs,
                macs_ratio: c.macs as f64 / teacher.cost.macs as f64,
                params_ratio: c.params as f64 / teacher.cost.params as f64,
                loss: tables
                    .tables
                    .iter()
                    .zip(&idx)
                    .map(|(t, &i)| t.scored[i].loss)
                    .sum(),
                genome_hash: g.hash(),
            }
        })
        .collect();
    write_json(&dir.join(FRONTIER_FILE), &rows)?;
    Ok(rows)
}

/// The student the search chose.
pub struct Choice {
    /// One path per block, in forward order.
    pub paths: Vec<GenePath>,
    pub genome: Genome,
    pub cost: Cost,
}

/// The chosen paths: the cheapest within `gamma` of the teacher-shaped path per block, or with
/// `budget_macs` the least summed loss under the budget. Written to `search/choice.json`.
pub fn choose(
    cfg: &BlockConfig,
    teacher: &Teacher,
    tables: &Tables,
    dir: &Path,
) -> Result<Choice, BlockError> {
    let chosen = match cfg.budget_macs {
        None => choose_all(&tables.tables, cfg.gamma),
        Some(budget) => {
            let block_macs: u64 = teacher
                .spaces
                .iter()
                .map(|s| s.cost(&s.teacher_path(), &teacher.genome).macs)
                .sum();
            let fixed = teacher.cost.macs - block_macs;
            let scored: Vec<Vec<_>> = tables.tables.iter().map(|t| t.scored.clone()).collect();
            global_budget(&scored, budget.saturating_sub(fixed)).ok_or_else(|| {
                BlockError::Config(format!(
                    "--budget-macs {budget}: no combination of the scored paths fits (the \
                     parts outside the blocks alone take {fixed} MACs)"
                ))
            })?
        }
    };
    let choice = pick(tables, &chosen);
    let genome = assemble(&teacher.genome, &choice);
    SearchSpace::for_image(genome.image)
        .validate(&genome)
        .map_err(|e| failed("the assembled student is invalid", e))?;
    let c = cost(&genome).map_err(|e| failed("the assembled student", e))?;
    write_json(
        &dir.join(CHOICE_FILE),
        &serde_json::json!({
            "mode": match cfg.budget_macs {
                None => format!("gamma {}", cfg.gamma),
                Some(b) => format!("global budget {b} MACs"),
            },
            "blocks": tables.tables.iter().zip(&chosen).map(|(t, &i)| serde_json::json!({
                "block": t.block.to_string(),
                "path": t.scored[i].path,
                "loss": t.scored[i].loss,
                "reference_loss": t.reference.loss,
                "macs": t.scored[i].cost.macs,
                "reference_macs": t.reference.cost.macs,
            })).collect::<Vec<_>>(),
            "params": c.params,
            "macs": c.macs,
        }),
    )?;
    Ok(Choice {
        paths: choice.into_iter().map(|(_, p)| p).collect(),
        genome,
        cost: c,
    })
}

/// The students a search retrains: (folder name, lambda schedule).
pub fn students(cfg: &BlockConfig) -> Vec<(&'static str, LambdaSchedule)> {
    let mut s = vec![("student", cfg.lambda)];
    if cfg.ablation {
        s.push(("student-diffusion-only", LambdaSchedule::DiffusionOnly));
    }
    s
}

/// Phase 3: retrain student `name` with `lambda` into the run directory `dir/name` (resuming
/// its checkpoints); returns the folder and the training's seconds.
#[allow(clippy::too_many_arguments)]
pub fn retrain(
    cfg: &BlockConfig,
    teacher: &Teacher,
    nets: &[BlockSupernet],
    choice: &Choice,
    (name, lambda): (&str, LambdaSchedule),
    dir: &Path,
    device_info: &DeviceInfo,
    device: &Device,
    stop: &AtomicBool,
    on: &mut dyn FnMut(BlockEvent),
) -> Result<Phase<(PathBuf, f64)>, BlockError> {
    let sdir = dir.join(name);
    let source = crate::rundir::RunSource {
        data: cfg.data.clone(),
        max_images: cfg.max_images,
        device: device_info.clone(),
    };
    RunFiles::new(cfg.retrain.clone(), &source).write(&sdir, &choice.genome)?;
    let init = sdir.join("init.bpk");
    let invalid = |e: crate::genome::GenomeErrors| failed("the student", e);
    if !init.is_file() {
        device.seed(cfg.seed);
        let fresh = Unet::new(&choice.genome, device).map_err(invalid)?;
        let m = match cfg.student_init {
            StudentInit::Fresh => fresh,
            StudentInit::Supernet => {
                student_from_supernets(fresh, &teacher.model, nets, &choice.paths)
            }
        };
        m.save_file(&init).map_err(|e| io(&init, e))?;
    }
    let ad = device.clone().autodiff();
    let model = Unet::new(&choice.genome, &ad)
        .map_err(invalid)?
        .try_load_file(&init)
        .map_err(|e| io(&init, e))?;
    let objective = JointObjective {
        teacher: teacher.model.valid(),
        schedule: lambda,
        ramp: cfg.lambda_steps,
        loss: cfg.retrain.loss_kind(),
    };
    let lambda_at = |step: u64| lambda.at(step, cfg.lambda_steps);
    let out = train_objective(
        model,
        &teacher.data,
        &cfg.retrain,
        &ad,
        TrainOptions {
            run_dir: Some(&sdir),
            resume: true,
            stop: Some(stop),
            stop_at: None,
        },
        &objective,
        &mut |event| {
            on(BlockEvent::Retrain {
                name,
                event,
                lambda_at: &lambda_at,
            })
        },
    )
    .map_err(|e| failed(format!("retraining {name}"), e))?;
    if out.status != TrainStatus::Finished {
        return Ok(Phase::Stopped(out.state.step));
    }
    Ok(Phase::Done((sdir, out.state.elapsed_s)))
}

/// What `report.json` holds for one model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelRow {
    pub name: String,
    pub run_dir: PathBuf,
    pub params: u64,
    pub macs: u64,
    /// Seconds for one DDIM sampling run of `latency_batch` images.
    pub latency_s: f64,
    pub score: Option<f64>,
    pub metric: Option<String>,
    pub train_seconds: Option<f64>,
}

/// What scores the models' samples: the extractor and its reference statistics.
pub struct Scorer<'a> {
    pub extractor: &'a dyn FeatureExtractor,
    pub reference: &'a Reference,
}

/// Phase 4: each model (name, run directory, training seconds) measured: cost, sampling
/// latency on `device`, and with a scorer its score on `cfg.score`.
pub fn measure(
    cfg: &BlockConfig,
    models: &[(String, PathBuf, Option<f64>)],
    scorer: Option<&Scorer<'_>>,
    device: &Device,
    on: &mut dyn FnMut(BlockEvent),
) -> Result<Vec<ModelRow>, BlockError> {
    let mut rows = Vec::new();
    for (name, dir, secs) in models {
        let LoadedRun {
            model,
            genome,
            files,
            ..
        } = load_denoiser(dir, Weights::Ema, device)?;
        let c = cost(&genome).map_err(|e| BlockError::Config(e.to_string()))?;
        let schedule = NoiseSchedule::new(files.config.beta_schedule, files.config.timesteps)
            .map_err(|e| BlockError::Config(e.to_string()))?;
        let latency = sampling_latency(&model, &schedule, &genome, cfg, device);
        let (score, metric) = match scorer {
            Some(s) => {
                let total = cfg.score.n as u64;
                let scored = score_denoiser(
                    &model,
                    schedule,
                    [genome.image.channels, genome.image.size, genome.image.size],
                    &cfg.score,
                    s.extractor,
                    s.reference,
                    None,
                    device,
                    &mut |k| {
                        on(BlockEvent::ScoringModel {
                            name,
                            done: k as u64,
                            total,
                        })
                    },
                )
                .map_err(|e| failed(format!("scoring {name}"), e))?;
                (Some(scored.value), Some(scored.metric.clone()))
            }
            None => (None, None),
        };
        let row = ModelRow {
            name: name.clone(),
            run_dir: dir.clone(),
            params: c.params,
            macs: c.macs,
            latency_s: latency,
            score,
            metric,
            train_seconds: *secs,
        };
        on(BlockEvent::Measured(&row));
        rows.push(row);
    }
    Ok(rows)
}

/// Wall time of one DDIM sampling run of `latency_batch` images, the fastest of three, after a
/// one-step warm-up that absorbs kernel compilation on a GPU.
fn sampling_latency(
    m: &Unet,
    schedule: &NoiseSchedule,
    g: &Genome,
    cfg: &BlockConfig,
    device: &Device,
) -> f64 {
    let shape = [g.image.channels, g.image.size, g.image.size];
    let warm = make_sampler(cfg.score.sampler, schedule.clone(), 1, 0.0);
    let _ = SamplingRun::new(warm.as_ref(), 0, 0, cfg.latency_batch, shape, device)
        .run(m, &mut |_, _| {})
        .into_data();
    let sampler = make_sampler(cfg.score.sampler, schedule.clone(), cfg.score.steps, 0.0);
    // The fastest of three runs: other work on the machine only ever adds time.
    (0..3)
        .map(|_| {
            let t0 = Instant::now();
            let _ = SamplingRun::new(sampler.as_ref(), 0, 0, cfg.latency_batch, shape, device)
                .run(m, &mut |_, _| {})
                .into_data();
            t0.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// What the report covers besides the models.
pub struct ReportInput<'a> {
    pub rows: &'a [ModelRow],
    pub frontier: &'a [FrontierRow],
    pub supernet_seconds: f64,
    pub search_seconds: f64,
    pub device: &'a str,
}

/// `report.json` and `report.md` in `dir`; returns the markdown's path.
pub fn write_report(
    cfg: &BlockConfig,
    r: &ReportInput<'_>,
    dir: &Path,
) -> Result<PathBuf, BlockError> {
    let report = serde_json::json!({
        "teacher": cfg.teacher,
        "device": r.device,
        "phases_s": {
            "supernet": r.supernet_seconds,
            "search": r.search_seconds,
            "retrain": r.rows.iter().filter_map(|r| r.train_seconds).collect::<Vec<_>>(),
        },
        "models": r.rows,
        "frontier": r.frontier,
        "score_n": cfg.score.n,
        "score_steps": cfg.score.steps,
        "latency_batch": cfg.latency_batch,
    });
    write_json(&dir.join("report.json"), &report)?;
    let md = dir.join("report.md");
    write_atomic(&md, markdown(cfg, r).as_bytes()).map_err(|e| io(&md, e))?;
    Ok(md)
}

fn markdown(cfg: &BlockConfig, r: &ReportInput<'_>) -> String {
    let t = &r.rows[0];
    let mut s = format!(
        "# Block-wise distillation search\n\nTeacher `{}` on {}; device {}.\n\n",
        cfg.teacher.display(),
        cfg.data,
        r.device
    );
    s += &format!(
        "| model | params | MACs / image | params vs teacher | MACs vs teacher | sampling latency ({} images, {} DDIM steps) | {} (N = {}) | retraining |\n|---|---|---|---|---|---|---|---|\n",
        cfg.latency_batch,
        cfg.score.steps,
        r.rows
            .iter()
            .find_map(|r| r.metric.clone())
            .unwrap_or("score".into()),
        cfg.score.n
    );
    for m in r.rows {
        s += &format!(
            "| {} | {} | {} | {:.1}% | {:.1}% | {:.2} s | {} | {} |\n",
            m.name,
            m.params,
            m.macs,
            100.0 * m.params as f64 / t.params as f64,
            100.0 * m.macs as f64 / t.macs as f64,
            m.latency_s,
            m.score.map_or("-".into(), |v| format!("{v:.3}")),
            m.train_seconds.map_or("-".into(), |v| format!("{v:.0} s")),
        );
    }
    s += &format!(
        "\nPhases: supernets {:.0} s ({} steps, batch {}), local search {:.0} s \
         ({} evaluation batches), retraining {} steps with lambda {} rising over {} steps.\n",
        r.supernet_seconds,
        cfg.supernet.steps,
        cfg.supernet.batch_size,
        r.search_seconds,
        cfg.eval_batches,
        cfg.retrain.steps,
        cfg.lambda,
        cfg.lambda_steps
    );
    s += "\n## Gamma frontier (cheapest path per block with loss <= gamma x teacher-shaped)\n\n\
          | gamma | params | MACs | MACs vs teacher | summed block loss |\n|---|---|---|---|---|\n";
    for f in r.frontier {
        s += &format!(
            "| {} | {} | {} | {:.1}% | {:.5} |\n",
            f.gamma,
            f.params,
            f.macs,
            100.0 * f.macs_ratio,
            f.loss
        );
    }
    s
}
