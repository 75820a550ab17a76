//! The training loop, generic over any [`Denoiser`] module: epsilon-prediction MSE, AdamW with
//! explicit eps and weight decay, warm-up + constant/cosine LR, global-norm clipping, EMA, a
//! NaN/inf guard, periodic atomic checkpoints and exact resume (ALGORITHMS.md sections 1 and 4).
//! It knows nothing of genomes: the caller builds the module.

pub mod checkpoint;
mod clip;
mod config;
mod ema;
#[cfg(feature = "gpu-kernels")]
mod gpu_optim;
mod optim;
pub mod scale;
pub use optim::{FusedAdamW, with_grad_scale};
pub use scale::{LossScale, ScaledStep};

pub use checkpoint::{CheckpointError, TrainState, write_atomic};
pub use clip::{clip_coefficient, grad_norm};
pub use config::{ChangedSetting, LrSchedule, TrainConfig, defaults};
pub use ema::ema_update;

use crate::data::{Batcher, Dataset};
use crate::diffusion::vlb::{self, LossKind};
use crate::diffusion::{Denoiser, NoiseSchedule, eps_loss, normals, timestep_tensor, training_rng};
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use rand::RngExt;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

pub use checkpoint::{EMA_FILE, MODEL_FILE, OPTIM_FILE, STATE_FILE};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(
        "the loss became {value} at or before step {step} (last finite reading: {last_finite}); \
         the run stopped without writing this state. Lower the learning rate (--lr), keep \
         gradient clipping on, or check the data"
    )]
    NonFinite {
        step: u64,
        value: f64,
        last_finite: String,
    },
    #[error("invalid training configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("dataset: {0}")]
    Data(String),
    #[error(
        "at step {step} the f16 loss scale fell to {scale:e} after {skipped} skipped steps: the \
         gradients overflow f16 even unscaled. Train in --precision bf16 or f32, or lower --lr"
    )]
    ScaleCollapsed { step: u64, scale: f64, skipped: u64 },
}

/// What the loop reports to its caller (progress bars, logs).
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    /// Training starts at `step` (non-zero after a resume) of `total`.
    Started {
        step: u64,
        total: u64,
        resumed: bool,
    },
    /// One optimizer step finished (no device sync).
    Step { step: u64 },
    /// A loss reading (a device sync) every `log_every` steps.
    Log(LogRecord),
    /// A checkpoint was written.
    Checkpoint { step: u64, path: PathBuf },
    /// Something the user should know that does not stop the run (a damaged checkpoint passed
    /// over on resume, one loaded without checksums).
    Note(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub step: u64,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub elapsed_s: f64,
    pub steps_per_s: f64,
    /// The f16 loss scale after this step (f16 runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// Steps skipped so far because a gradient overflowed f16 (f16 runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_steps: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainStatus {
    Finished,
    Interrupted,
}

pub struct TrainOutcome<M> {
    /// The trained module (on the autodiff device).
    pub model: M,
    /// The EMA weights (plain device), for sampling.
    pub ema: M,
    pub state: TrainState,
    pub status: TrainStatus,
    pub log: Vec<LogRecord>,
}

/// Options of one call of [`train`] that are not part of the configuration.
pub struct TrainOptions<'a> {
    /// Run directory for checkpoints, `log.jsonl` and the final weights (None: in memory).
    pub run_dir: Option<&'a Path>,
    /// Continue from the newest checkpoint in `run_dir` if there is one.
    pub resume: bool,
    /// Set (e.g. by Ctrl-C) to stop after the current step, with a checkpoint.
    pub stop: Option<&'a AtomicBool>,
    /// Stop (with a checkpoint) once this many steps are done, without finishing the run;
    /// used to test resumption.
    pub stop_at: Option<u64>,
}

impl Default for TrainOptions<'_> {
    fn default() -> Self {
        TrainOptions {
            run_dir: None,
            resume: true,
            stop: None,
            stop_at: None,
        }
    }
}

fn optimizer(cfg: &TrainConfig) -> ModuleOptimizer {
    ModuleOptimizer::from(optim::FusedAdamW::new(
        cfg.beta1 as f32,
        cfg.beta2 as f32,
        cfg.adam_eps as f32,
        cfg.weight_decay as f32,
    ))
}

/// One step's host-side randomness: timesteps and noise, from the (seed, step) stream.
pub fn step_inputs(cfg: &TrainConfig, step: u64, shape: [usize; 4]) -> (Vec<usize>, Vec<f32>) {
    let (t, eps, _) = drawn_inputs(cfg, step, shape, None);
    (t, eps)
}

/// [`step_inputs`], with the timesteps drawn by `importance` when given (and their weights).
fn drawn_inputs(
    cfg: &TrainConfig,
    step: u64,
    shape: [usize; 4],
    importance: Option<&vlb::ImportanceSampler>,
) -> (Vec<usize>, Vec<f32>, Option<Vec<f64>>) {
    let mut rng = training_rng(cfg.seed, step);
    let (t, w) = match importance {
        Some(sampler) => {
            let u: Vec<f64> = (0..shape[0]).map(|_| rng.random::<f64>()).collect();
            let (t, w) = sampler.draw(&u);
            (t, Some(w))
        }
        None => (
            (0..shape[0])
                .map(|_| rng.random_range(0..cfg.timesteps))
                .collect(),
            None,
        ),
    };
    let eps = normals(&mut rng, shape.iter().product());
    (t, eps, w)
}

/// Seed of the device RNG (dropout) for one step.
fn device_seed(seed: u64, step: u64) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ step.wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

fn save_checkpoint<M: Module>(
    run_dir: &Path,
    model: &M,
    ema: &M,
    optim: &ModuleOptimizer,
    state: &TrainState,
    keep: usize,
) -> Result<PathBuf, CheckpointError> {
    let tmp = checkpoint::begin(run_dir, state.step)?;
    let rec = |e: burn::store::RecordError, f: &str| checkpoint::io_err(&tmp.join(f), e);
    model
        .clone()
        .save_file(tmp.join(MODEL_FILE))
        .map_err(|e| rec(e, MODEL_FILE))?;
    ema.clone()
        .save_file(tmp.join(EMA_FILE))
        .map_err(|e| rec(e, EMA_FILE))?;
    optim
        .save(tmp.join(OPTIM_FILE))
        .map_err(|e| rec(e, OPTIM_FILE))?;
    let mut state = state.clone();
    state.sha256.clear();
    state.seal(&tmp, &[MODEL_FILE, EMA_FILE, OPTIM_FILE])?;
    let json = serde_json::to_vec_pretty(&state).expect("state serialises");
    std::fs::write(tmp.join(STATE_FILE), json).map_err(|e| checkpoint::io_err(&tmp, e))?;
    checkpoint::publish(run_dir, &tmp, state.step, keep)
}

/// Load model, EMA and optimizer from a checkpoint folder into freshly built modules.
pub fn load_checkpoint<M: Module>(
    dir: &Path,
    model: M,
    ema: M,
    optim: ModuleOptimizer,
) -> Result<(M, M, ModuleOptimizer, TrainState), CheckpointError> {
    let bad = |f: &str, e: burn::store::RecordError| CheckpointError::Invalid {
        path: dir.join(f),
        message: e.to_string(),
    };
    let state = checkpoint::read_state(dir)?;
    state.verify(dir)?;
    let model = model
        .try_load_file(dir.join(MODEL_FILE))
        .map_err(|e| bad(MODEL_FILE, e))?;
    let ema = ema
        .try_load_file(dir.join(EMA_FILE))
        .map_err(|e| bad(EMA_FILE, e))?;
    let optim = optim
        .load(dir.join(OPTIM_FILE))
        .map_err(|e| bad(OPTIM_FILE, e))?;
    Ok((model, ema, optim, state))
}

/// The newest complete checkpoint folder of a run, if any.
pub fn latest_checkpoint(run_dir: &Path) -> Option<PathBuf> {
    checkpoint::latest(run_dir)
}

fn read_log(path: &Path, upto: u64) -> Vec<LogRecord> {
    std::fs::read_to_string(path)
        .map(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str::<LogRecord>(l).ok())
                .filter(|r| r.step <= upto)
                .collect()
        })
        .unwrap_or_default()
}

fn write_log(path: &Path, log: &[LogRecord]) -> Result<(), CheckpointError> {
    let mut s = String::new();
    for r in log {
        s.push_str(&serde_json::to_string(r).expect("log record serialises"));
        s.push('\n');
    }
    write_atomic(path, s.as_bytes())
}

/// The optimizer of a run's configuration (AdamW with explicit eps and weight decay).
pub fn optimizer_for(cfg: &TrainConfig) -> ModuleOptimizer {
    optimizer(cfg)
}

/// One training step's batch as an [`Objective`] sees it: the clean images, their noisy
/// versions at the drawn timesteps, the noise, and the schedule that made them.
pub struct StepBatch<'a> {
    pub x0: Tensor<4>,
    pub x_t: Tensor<4>,
    /// The timesteps as the float tensor a [`Denoiser`] takes.
    pub t: Tensor<1>,
    /// The same timesteps on the host.
    pub timesteps: &'a [usize],
    pub eps: Tensor<4>,
    pub schedule: &'a NoiseSchedule,
    pub step: u64,
    /// Per-sample loss weights of importance-sampled timesteps (`[B]`); None: uniform.
    pub weights: Option<Tensor<1>>,
}

/// What a training step minimises, given the noisy batch, its timesteps and the noise.
pub trait Objective<M> {
    /// The scalar loss of `model` at `batch.step` (on the autodiff device).
    fn loss(&self, model: &M, batch: StepBatch<'_>) -> Tensor<1>;

    /// The loss and, for an objective whose timesteps may be importance-sampled, the
    /// per-sample terms `L_t` (detached, `[B]`) the sampler records.
    fn loss_and_terms(&self, model: &M, batch: StepBatch<'_>) -> (Tensor<1>, Option<Tensor<1>>) {
        (self.loss(model, batch), None)
    }
}

/// The DDPM objective: MSE between the true and the predicted noise (`L_simple`).
pub struct EpsObjective;

impl<M: Denoiser> Objective<M> for EpsObjective {
    fn loss(&self, model: &M, b: StepBatch<'_>) -> Tensor<1> {
        eps_loss(model.predict_eps(b.x_t, b.t), b.eps)
    }
}

/// IDDPM's `L_hybrid` (eq. 16) for a model that learns its variance, timesteps uniform.
pub struct HybridObjective;

impl<M: Denoiser> Objective<M> for HybridObjective {
    fn loss(&self, model: &M, b: StepBatch<'_>) -> Tensor<1> {
        self.loss_and_terms(model, b).0
    }

    fn loss_and_terms(&self, model: &M, b: StepBatch<'_>) -> (Tensor<1>, Option<Tensor<1>>) {
        let pred = model.predict(b.x_t.clone(), b.t);
        let variance = pred
            .variance
            .expect("check_genome: L_hybrid trains a model with a learned variance");
        let (loss, terms) = vlb::hybrid_loss(
            b.schedule,
            b.x0,
            b.x_t,
            b.timesteps,
            b.eps,
            pred.eps,
            variance,
            b.weights,
        );
        (loss, Some(terms))
    }
}

/// The parts of a training step, in order, as [`train_step_marked`] reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepPhase {
    /// Host-side draw of t and eps, their upload, q_sample.
    Inputs,
    /// The denoiser's forward pass and the loss.
    Forward,
    /// Backpropagation to parameter gradients.
    Backward,
    /// Global gradient norm and clipping.
    Clip,
    /// The AdamW update.
    Optimizer,
    /// The EMA update.
    Ema,
}

impl StepPhase {
    pub const ALL: [StepPhase; 6] = [
        StepPhase::Inputs,
        StepPhase::Forward,
        StepPhase::Backward,
        StepPhase::Clip,
        StepPhase::Optimizer,
        StepPhase::Ema,
    ];
}

/// One optimizer step on the clean batch `x0` (on the autodiff device): draw timesteps and noise
/// from the (seed, step) stream, the objective's loss ([`EpsObjective`] for DDPM), backward,
/// global-norm clip, AdamW, EMA update, calling `mark(phase)` after each phase has been issued
/// (the benchmark's profiler syncs the device there; pass a no-op and nothing waits). Returns
/// the new model and EMA, the loss and the pre-clip gradient norm as device tensors (reading
/// them is the caller's choice, since each read is a sync). Computes in the calling thread's
/// precision ([`crate::precision::scope`]); with `scaler` (f16) the loss is scaled and a step
/// whose gradients overflow is skipped (one host read of the gradient norm per step).
#[allow(clippy::too_many_arguments)]
pub fn train_step_marked<M: Module>(
    model: M,
    ema: M,
    optim: &mut ModuleOptimizer,
    cfg: &TrainConfig,
    schedule: &NoiseSchedule,
    x0: Tensor<4>,
    step: u64,
    objective: &dyn Objective<M>,
    scaler: Option<&mut LossScale>,
    mark: &mut dyn FnMut(StepPhase),
) -> (M, M, Tensor<1>, Option<Tensor<1>>) {
    let s = step_core(
        model, ema, optim, cfg, schedule, x0, step, objective, None, scaler, mark,
    );
    (s.model, s.ema, s.loss, s.grad_norm)
}

/// What [`step_core`] returns.
struct StepOut<M> {
    model: M,
    ema: M,
    loss: Tensor<1>,
    grad_norm: Option<Tensor<1>>,
    timesteps: Vec<usize>,
    terms: Option<Tensor<1>>,
    /// The loss scale at which this step's gradients overflowed (the step was skipped).
    skipped_at: Option<f64>,
}

#[allow(clippy::too_many_arguments)]
fn step_core<M: Module>(
    model: M,
    ema: M,
    optim: &mut ModuleOptimizer,
    cfg: &TrainConfig,
    schedule: &NoiseSchedule,
    x0: Tensor<4>,
    step: u64,
    objective: &dyn Objective<M>,
    importance: Option<&vlb::ImportanceSampler>,
    scaler: Option<&mut LossScale>,
    mark: &mut dyn FnMut(StepPhase),
) -> StepOut<M> {
    let device = x0.device();
    let shape = x0.dims();
    let (t, eps, weights) = drawn_inputs(cfg, step, shape, importance);
    let weights = weights.map(|w| {
        let w: Vec<f32> = w.iter().map(|&v| v as f32).collect();
        Tensor::<1>::from_data(TensorData::new(w, [shape[0]]), &device)
    });
    let eps = Tensor::<4>::from_data(TensorData::new(eps, shape), &device);
    device.seed(device_seed(cfg.seed, step));
    let x_t = schedule.q_sample(x0.clone(), &t, eps.clone());
    mark(StepPhase::Inputs);
    let batch = StepBatch {
        x0,
        x_t,
        t: timestep_tensor(&t, &device),
        timesteps: &t,
        eps,
        schedule,
        step,
        weights,
    };
    let (loss, terms) = objective.loss_and_terms(&model, batch);
    mark(StepPhase::Forward);
    // The gradients, the multiplier the optimizer applies to them as it reads them (clip, f16
    // unscale) and the pre-clip norm, or no gradients for a step an f16 overflow skips.
    let (grads, coef, norm, skipped_at) = match scaler {
        None => {
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            mark(StepPhase::Backward);
            let norm = grad_norm(&model, &grads);
            let coef = match &norm {
                Some(n) if cfg.grad_clip > 0.0 => Some(clip_coefficient(n, cfg.grad_clip)),
                _ => None,
            };
            (Some(grads), coef, norm, None)
        }
        Some(scaler) => {
            // Backward of loss * s; the optimizer unscales and clips in the same read.
            let s = scaler.scale;
            let grads = GradientsParams::from_grads(loss.clone().mul_scalar(s).backward(), &model);
            mark(StepPhase::Backward);
            let scaled_norm = grad_norm(&model, &grads);
            // The one host read of an f16 step: whether to take it.
            let scaled = scaled_norm
                .clone()
                .map_or(0.0, |n| n.into_scalar::<f32>() as f64);
            match scaler.update(scaled.is_finite()) {
                ScaledStep::Skipped { scale } => (None, None, None, Some(scale)),
                ScaledStep::Taken => {
                    let clip = if cfg.grad_clip > 0.0 {
                        (cfg.grad_clip / (scaled / s + 1e-6)).min(1.0)
                    } else {
                        1.0
                    };
                    let coef = Tensor::<1>::from_data(
                        TensorData::new(vec![(clip / s) as f32], [1]),
                        &device.clone().inner(),
                    );
                    (
                        Some(grads),
                        Some(coef),
                        scaled_norm.map(|n| n.div_scalar(s)),
                        None,
                    )
                }
            }
        }
    };
    let (model, ema) = match grads {
        Some(grads) => {
            mark(StepPhase::Clip);
            let lr = cfg.lr_at(step);
            let model = optim::with_grad_scale(coef, || optim.step(lr, model, grads));
            mark(StepPhase::Optimizer);
            let ema = ema_update(ema, &model, cfg.ema_decay_at(step));
            mark(StepPhase::Ema);
            (model, ema)
        }
        None => (model, ema),
    };
    StepOut {
        model,
        ema,
        loss: loss.inner(),
        grad_norm: norm,
        timesteps: t,
        terms: terms.map(|x| x.inner()),
        skipped_at,
    }
}

/// Train `model` (built on the autodiff device `device`) on `data`.
pub fn train<M>(
    model: M,
    data: &Dataset,
    cfg: &TrainConfig,
    device: &Device,
    opts: TrainOptions<'_>,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainOutcome<M>, TrainError>
where
    M: Module + Denoiser,
{
    match cfg.loss_kind() {
        LossKind::Simple => {
            train_objective(model, data, cfg, device, opts, &EpsObjective, on_event)
        }
        LossKind::Hybrid => {
            train_objective(model, data, cfg, device, opts, &HybridObjective, on_event)
        }
    }
}

/// Where a run starts: fresh, or its newest checkpoint (weights, EMA, optimizer, state, log).
struct Restored<M: Module> {
    model: M,
    ema: M,
    optim: ModuleOptimizer,
    state: TrainState,
    log: Vec<LogRecord>,
    resumed: bool,
    /// What the user should hear about the checkpoint chosen.
    notes: Vec<String>,
}

fn restore<M: Module>(
    model: M,
    cfg: &TrainConfig,
    opts: &TrainOptions<'_>,
) -> Result<Restored<M>, TrainError> {
    let ema = model.valid();
    let optim = optimizer(cfg);
    let mut notes = Vec::new();
    if let (Some(dir), true) = (opts.run_dir, opts.resume)
        && let Some(ck) = checkpoint::newest_intact(dir, &mut notes)?
    {
        let (model, ema, optim, state) = load_checkpoint(&ck, model, ema, optim)?;
        if state.seed != cfg.seed {
            return Err(TrainError::Config(format!(
                "{}: the checkpoint was trained with seed {} but the configuration says {}",
                ck.display(),
                state.seed,
                cfg.seed
            )));
        }
        let log = read_log(&dir.join("log.jsonl"), state.step);
        return Ok(Restored {
            model,
            ema,
            optim,
            state,
            log,
            resumed: true,
            notes,
        });
    }
    Ok(Restored {
        model,
        ema,
        optim,
        state: TrainState::start(cfg.seed),
        log: Vec::new(),
        resumed: false,
        notes,
    })
}

/// A finished run's final weights and state, beside its checkpoints.
fn save_final<M: Module>(
    dir: &Path,
    model: &M,
    ema: &M,
    state: &TrainState,
) -> Result<(), TrainError> {
    let rec = |e: burn::store::RecordError, f: &str| checkpoint::io_err(&dir.join(f), e);
    model
        .clone()
        .save_file(dir.join(MODEL_FILE))
        .map_err(|e| rec(e, MODEL_FILE))?;
    ema.clone()
        .save_file(dir.join(EMA_FILE))
        .map_err(|e| rec(e, EMA_FILE))?;
    let mut state = state.clone();
    state.sha256.clear();
    state.seal(dir, &[MODEL_FILE, EMA_FILE])?;
    write_atomic(
        &dir.join(STATE_FILE),
        &serde_json::to_vec_pretty(&state).expect("state serialises"),
    )?;
    Ok(())
}

/// [`train`] with any [`Objective`] (checkpoints, EMA, logs and resume unchanged).
pub fn train_objective<M: Module>(
    model: M,
    data: &Dataset,
    cfg: &TrainConfig,
    device: &Device,
    opts: TrainOptions<'_>,
    objective: &dyn Objective<M>,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainOutcome<M>, TrainError> {
    cfg.check().map_err(TrainError::Config)?;
    let precision = cfg.precision();
    precision.check(device).map_err(TrainError::Config)?;
    let _precision = crate::precision::scope(precision);
    if data.len == 0 {
        return Err(TrainError::Data(format!("{} has no images", data.name)));
    }
    let schedule = NoiseSchedule::new(cfg.beta_schedule, cfg.timesteps)
        .map_err(|e| TrainError::Config(e.to_string()))?;
    let Restored {
        mut model,
        mut ema,
        mut optim,
        mut state,
        mut log,
        resumed,
        notes,
    } = restore(model, cfg, &opts)?;
    for n in notes {
        on_event(&TrainEvent::Note(n));
    }
    if let Some(dir) = opts.run_dir {
        std::fs::create_dir_all(dir).map_err(|e| checkpoint::io_err(dir, e))?;
        write_log(&dir.join("log.jsonl"), &log)?;
    }
    if precision.scales_loss() && state.loss_scale.is_none() {
        state.loss_scale = Some(LossScale::default());
    }
    if cfg.timesteps_drawn() == vlb::TimestepSampling::Importance && state.importance.is_none() {
        state.importance = Some(vlb::ImportanceSampler::new(cfg.timesteps));
    }
    on_event(&TrainEvent::Started {
        step: state.step,
        total: cfg.steps,
        resumed,
    });

    let mut batcher = Batcher::new(cfg.seed, cfg.batch_size, data.len);
    let start = Instant::now();
    let base_elapsed = state.elapsed_s;
    let mut window = (Instant::now(), state.step);
    let mut last_finite = state
        .last_loss
        .map_or("none".to_string(), |l| format!("{l:.6}"));
    let mut status = TrainStatus::Finished;
    let stop_at = opts.stop_at.unwrap_or(cfg.steps).min(cfg.steps);

    let log_file = opts.run_dir.map(|d| d.join("log.jsonl"));

    while state.step < stop_at {
        let step = state.step;
        let lr = cfg.lr_at(step);
        let x0 = data.batch(&batcher.indices(step), device);
        let out = step_core(
            model,
            ema,
            &mut optim,
            cfg,
            &schedule,
            x0,
            step,
            objective,
            state.importance.as_ref(),
            state.loss_scale.as_mut(),
            &mut |_| {},
        );
        (model, ema) = (out.model, out.ema);
        if let (Some(at), Some(ls)) = (out.skipped_at, &state.loss_scale) {
            if ls.collapsed() {
                return Err(TrainError::ScaleCollapsed {
                    step: step + 1,
                    scale: ls.scale,
                    skipped: ls.skipped_steps,
                });
            }
            on_event(&TrainEvent::Note(format!(
                "step {}: a gradient overflowed f16 at loss scale {at}; the step was skipped and \
                 the scale is now {}",
                step + 1,
                ls.scale
            )));
        }
        let (loss, norm) = (out.loss, out.grad_norm);
        if let (Some(sampler), Some(terms)) = (state.importance.as_mut(), out.terms) {
            // The sampler's history needs this step's terms before the next draw: a sync.
            let terms: Vec<f32> = terms
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("f32 terms");
            sampler.record(&out.timesteps, &terms);
        }
        state.step = step + 1;
        on_event(&TrainEvent::Step { step: state.step });

        let log_now = state.step.is_multiple_of(cfg.log_every) || state.step == stop_at;
        if log_now {
            // Reading the loss is a device sync: only every `log_every` steps.
            let s = state.step;
            let value = loss.clone().into_scalar::<f32>() as f64;
            let gn = norm.map_or(f64::NAN, |n| n.into_scalar::<f32>() as f64);
            if !value.is_finite() || gn.is_infinite() {
                return Err(TrainError::NonFinite {
                    step: s,
                    value,
                    last_finite,
                });
            }
            last_finite = format!("{value:.6} at step {s}");
            state.last_loss = Some(value);
            let now = Instant::now();
            let rate = (s - window.1) as f64 / now.duration_since(window.0).as_secs_f64().max(1e-9);
            window = (now, s);
            let rec = LogRecord {
                step: s,
                loss: value,
                grad_norm: gn,
                lr,
                elapsed_s: base_elapsed + start.elapsed().as_secs_f64(),
                steps_per_s: rate,
                loss_scale: state.loss_scale.as_ref().map(|l| l.scale),
                skipped_steps: state.loss_scale.as_ref().map(|l| l.skipped_steps),
            };
            if let Some(p) = &log_file {
                checkpoint::append_jsonl(p, &rec)?;
            }
            on_event(&TrainEvent::Log(rec.clone()));
            log.push(rec);
        }

        let stop_requested = opts.stop.is_some_and(|s| s.load(Ordering::SeqCst));
        let at_checkpoint =
            cfg.checkpoint_every > 0 && state.step.is_multiple_of(cfg.checkpoint_every);
        let last = state.step == stop_at;
        if let Some(dir) = opts.run_dir
            && (at_checkpoint || last || stop_requested)
        {
            if !log_now {
                // Never publish a checkpoint whose weights were not checked for NaN.
                let value = loss.into_scalar::<f32>() as f64;
                if !value.is_finite() {
                    return Err(TrainError::NonFinite {
                        step: state.step,
                        value,
                        last_finite,
                    });
                }
                state.last_loss = Some(value);
            }
            state.elapsed_s = base_elapsed + start.elapsed().as_secs_f64();
            let path = save_checkpoint(dir, &model, &ema, &optim, &state, cfg.keep_checkpoints)?;
            on_event(&TrainEvent::Checkpoint {
                step: state.step,
                path,
            });
        }
        if stop_requested {
            status = TrainStatus::Interrupted;
            break;
        }
    }
    if state.step < cfg.steps && status == TrainStatus::Finished {
        status = TrainStatus::Interrupted;
    }
    state.elapsed_s = base_elapsed + start.elapsed().as_secs_f64();
    if let (Some(dir), TrainStatus::Finished) = (opts.run_dir, status) {
        save_final(dir, &model, &ema, &state)?;
    }
    Ok(TrainOutcome {
        model,
        ema,
        state,
        status,
        log,
    })
}
