//! Supernet training by block-wise distillation: per batch, one teacher forward records every
//! block's inputs and outputs; every block supernet runs a uniformly drawn path on the
//! teacher's inputs; the loss of block `b` is the MSE to the teacher's outputs; one backward
//! of the summed loss, then each block's own AdamW steps on its own gradients. Checkpoints
//! hold all supernets, all optimizers and the step; a resumed run draws the same batches,
//! timesteps, noise and paths as an uninterrupted one.

use super::supernet::BlockSupernet;
use super::{BlockSpace, Path};
use crate::data::{Batcher, Dataset};
use crate::diffusion::{NoiseSchedule, timestep_tensor};
use crate::model::{BlockIo, Unet};
use crate::train::checkpoint::{self, CheckpointError, TrainState};
use crate::train::{
    LossScale, ScaledStep, TrainConfig, grad_norm, optimizer_for, step_inputs, with_grad_scale,
};
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use rand::RngExt;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::Path as FsPath;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The file holding every supernet of a checkpoint (and of the finished phase).
pub const SUPERNETS_FILE: &str = "supernets.bpk";

#[derive(Debug, thiserror::Error)]
pub enum DistillError {
    #[error("block {block}: the distillation loss became {value} at step {step}")]
    NonFinite {
        block: String,
        step: u64,
        value: f64,
    },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{0}")]
    Config(String),
}

/// A per-block loss reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistillLog {
    pub step: u64,
    /// Mean squared error per block, in forward order.
    pub losses: Vec<f64>,
    pub elapsed_s: f64,
}

/// Progress of [`train_supernets`].
#[derive(Debug, Clone, PartialEq)]
pub enum DistillEvent {
    Started {
        step: u64,
        total: u64,
    },
    Step {
        step: u64,
    },
    Log(DistillLog),
    /// What the user should hear about the checkpoint resumed from (one passed over as
    /// damaged, one without checksums).
    Note(String),
}

/// Teacher noise inputs for one step: the same (seed, step) stream as training.
pub fn step_batch(
    cfg: &TrainConfig,
    schedule: &NoiseSchedule,
    x0: Tensor<4>,
    step: u64,
) -> (Tensor<4>, Tensor<1>) {
    let device = x0.device();
    let shape = x0.dims();
    let (t, eps) = step_inputs(cfg, step, shape);
    let eps = Tensor::<4>::from_data(TensorData::new(eps, shape), &device);
    (schedule.q_sample(x0, &t, eps), timestep_tensor(&t, &device))
}

/// The path block `b` trains at `step`: uniform over its space, from the (seed, step, b) stream.
pub fn sampled_path(space: &BlockSpace, seed: u64, step: u64, b: usize) -> Path {
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(
        seed ^ 0x5eed_b10c ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ ((b as u64) << 48),
    );
    space
        .units
        .iter()
        .map(|u| u.gene(rng.random_range(0..u.len())))
        .collect()
}

/// Block-wise MSE of a supernet's outputs against a teacher's, averaged over the block's
/// targets (an encoder level has one per unit).
pub fn block_loss(outputs: &[Tensor<4>], targets: &[Tensor<4>]) -> Tensor<1> {
    let n = outputs.len() as f64;
    outputs
        .iter()
        .zip(targets)
        .map(|(o, t)| (o.clone() - t.clone()).square().mean())
        .reduce(|a, b| a + b)
        .expect("a block has at least one output")
        / n
}

/// Put a traced block's tensors on `device` (the autodiff device of the supernets).
pub fn to_device(io: &BlockIo, device: &Device) -> BlockIo {
    let m = |t: &Tensor<4>| t.clone().to_device(device).autodiff();
    BlockIo {
        id: io.id,
        input: m(&io.input),
        skips: io.skips.iter().map(m).collect(),
        outputs: io.outputs.iter().map(m).collect(),
    }
}

pub struct DistillOutcome {
    pub nets: Vec<BlockSupernet>,
    pub state: TrainState,
    pub finished: bool,
    pub log: Vec<DistillLog>,
}

fn save(
    dir: &FsPath,
    nets: &[BlockSupernet],
    optims: &[ModuleOptimizer],
    state: &TrainState,
    keep: usize,
) -> Result<(), CheckpointError> {
    let tmp = checkpoint::begin(dir, state.step)?;
    nets.to_vec()
        .save_file(tmp.join(SUPERNETS_FILE))
        .map_err(|e| checkpoint::io_err(&tmp.join(SUPERNETS_FILE), e))?;
    for (b, o) in optims.iter().enumerate() {
        let p = tmp.join(format!("optim-{b}.bpk"));
        o.save(&p).map_err(|e| checkpoint::io_err(&p, e))?;
    }
    let mut state = state.clone();
    state.sha256.clear();
    let files: Vec<String> = std::iter::once(SUPERNETS_FILE.to_string())
        .chain((0..optims.len()).map(|b| format!("optim-{b}.bpk")))
        .collect();
    let names: Vec<&str> = files.iter().map(String::as_str).collect();
    state.seal(&tmp, &names)?;
    let json = serde_json::to_vec_pretty(&state).expect("state serialises");
    checkpoint::write_atomic(&tmp.join(checkpoint::STATE_FILE), &json)?;
    checkpoint::publish(dir, &tmp, state.step, keep)?;
    Ok(())
}

/// Train one supernet per block of `spaces` against `teacher` (plain device, frozen) on
/// `data`. `nets` are the initial supernets on the autodiff `device`. With `dir`, checkpoints
/// go to `dir/checkpoints` and a later call resumes from the newest one.
#[allow(clippy::too_many_arguments)]
pub fn train_supernets(
    teacher: &Unet,
    spaces: &[BlockSpace],
    mut nets: Vec<BlockSupernet>,
    data: &Dataset,
    cfg: &TrainConfig,
    device: &Device,
    dir: Option<&FsPath>,
    stop: Option<&AtomicBool>,
    on_event: &mut dyn FnMut(&DistillEvent),
) -> Result<DistillOutcome, DistillError> {
    cfg.check().map_err(DistillError::Config)?;
    let precision = cfg.precision();
    precision.check(device).map_err(DistillError::Config)?;
    // Teacher and supernets in the run's precision; f16 scales the summed loss.
    let _precision = crate::precision::scope(precision);
    let schedule = NoiseSchedule::new(cfg.beta_schedule, cfg.timesteps)
        .map_err(|e| DistillError::Config(e.to_string()))?;
    let plain = device.clone().without_autodiff();
    let mut optims: Vec<ModuleOptimizer> = nets.iter().map(|_| optimizer_for(cfg)).collect();
    let mut state = TrainState::start(cfg.seed);
    let mut log: Vec<DistillLog> = Vec::new();
    let log_path = dir.map(|d| d.join("distill-log.jsonl"));
    let mut notes = Vec::new();
    // Every file checked against the SHA-256 its state recorded before any is loaded; a
    // damaged newest checkpoint is passed over for the newest intact one.
    let resume_from = match dir {
        Some(d) => checkpoint::newest_intact(d, &mut notes)?,
        None => None,
    };
    for n in notes {
        on_event(&DistillEvent::Note(n));
    }
    if let Some(ck) = resume_from {
        let bad = |f: &str, e: burn::store::RecordError| CheckpointError::Invalid {
            path: ck.join(f),
            message: e.to_string(),
        };
        nets = nets
            .try_load_file(ck.join(SUPERNETS_FILE))
            .map_err(|e| bad(SUPERNETS_FILE, e))?;
        for (b, o) in optims.iter_mut().enumerate() {
            let f = format!("optim-{b}.bpk");
            *o = std::mem::replace(o, optimizer_for(cfg))
                .load(ck.join(&f))
                .map_err(|e| bad(&f, e))?;
        }
        state = checkpoint::read_state(&ck)?;
        if let Some(p) = &log_path {
            log = std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<DistillLog>(l).ok())
                .filter(|r| r.step <= state.step)
                .collect();
        }
    }
    if let (Some(d), Some(p)) = (dir, &log_path) {
        std::fs::create_dir_all(d).map_err(|e| checkpoint::io_err(d, e))?;
        let text: String = log
            .iter()
            .map(|r| serde_json::to_string(r).expect("serialises") + "\n")
            .collect();
        checkpoint::write_atomic(p, text.as_bytes())?;
    }
    if precision.scales_loss() && state.loss_scale.is_none() {
        state.loss_scale = Some(LossScale::default());
    }
    on_event(&DistillEvent::Started {
        step: state.step,
        total: cfg.steps,
    });
    let teacher = teacher.valid();
    let mut batcher = Batcher::new(cfg.seed, cfg.batch_size, data.len);
    let start = Instant::now();
    let base = state.elapsed_s;
    let mut finished = true;
    while state.step < cfg.steps {
        let step = state.step;
        let x0 = data.batch(&batcher.indices(step), &plain);
        let (x_t, t) = step_batch(cfg, &schedule, x0, step);
        let trace = teacher.trace(x_t, t);
        let emb = trace.emb.to_device(device).autodiff();
        let mut losses = Vec::with_capacity(nets.len());
        for (b, (net, io)) in nets.iter().zip(&trace.blocks).enumerate() {
            let io = to_device(io, device);
            let path = sampled_path(&spaces[b], cfg.seed, step, b);
            let out = net.forward(&path, io.input, &io.skips, emb.clone());
            losses.push(block_loss(&out, &io.outputs));
        }
        let total = losses
            .iter()
            .cloned()
            .reduce(|a, b| a + b)
            .expect("at least one block");
        let scale = state.loss_scale.as_ref().map(|l| l.scale);
        let mut grads = match scale {
            Some(s) => total.mul_scalar(s).backward(),
            None => total.backward(),
        };
        let lr = cfg.lr_at(step);
        let block_grads: Vec<GradientsParams> = nets
            .iter()
            .map(|net| GradientsParams::from_module(&mut grads, net))
            .collect();
        // f16: one host read of the scaled gradients' norm decides whether the step is taken;
        // the optimizer unscales the gradients as it reads them.
        let mut coef = None;
        let taken = match (state.loss_scale.as_mut(), scale) {
            (Some(ls), Some(s)) => {
                let squares = nets
                    .iter()
                    .zip(&block_grads)
                    .filter_map(|(net, g)| grad_norm(net, g))
                    .map(|n| n.clone() * n)
                    .reduce(|a, b| a + b);
                let finite = squares.is_none_or(|q| q.into_scalar::<f32>().is_finite());
                if let ScaledStep::Skipped { scale } = ls.update(finite) {
                    if ls.collapsed() {
                        return Err(DistillError::Config(format!(
                            "at step {} the f16 loss scale fell to {:e} after {} skipped steps: \
                             the gradients overflow f16 even unscaled; use --precision bf16 or f32",
                            step + 1,
                            ls.scale,
                            ls.skipped_steps
                        )));
                    }
                    on_event(&DistillEvent::Note(format!(
                        "step {}: a gradient overflowed f16 at loss scale {scale}; the step was \
                         skipped and the scale is now {}",
                        step + 1,
                        ls.scale
                    )));
                } else {
                    coef = Some(Tensor::<1>::from_data(
                        TensorData::new(vec![(1.0 / s) as f32], [1]),
                        &device.clone().without_autodiff(),
                    ));
                }
                finite
            }
            _ => true,
        };
        if taken {
            nets = nets
                .into_iter()
                .zip(optims.iter_mut())
                .zip(block_grads)
                .map(|((net, o), g)| with_grad_scale(coef.clone(), || o.step(lr, net, g)))
                .collect();
        }
        state.step = step + 1;
        on_event(&DistillEvent::Step { step: state.step });
        let last = state.step == cfg.steps;
        let stop_now = stop.is_some_and(|s| s.load(Ordering::SeqCst));
        let ck = cfg.checkpoint_every > 0 && state.step.is_multiple_of(cfg.checkpoint_every);
        if state.step.is_multiple_of(cfg.log_every) || last || stop_now || ck {
            let values: Vec<f64> = losses
                .into_iter()
                .map(|l| l.inner().into_scalar::<f32>() as f64)
                .collect();
            if let Some(b) = values.iter().position(|v| !v.is_finite()) {
                return Err(DistillError::NonFinite {
                    block: trace.blocks[b].id.to_string(),
                    step: state.step,
                    value: values[b],
                });
            }
            state.last_loss = Some(values.iter().sum());
            let rec = DistillLog {
                step: state.step,
                losses: values,
                elapsed_s: base + start.elapsed().as_secs_f64(),
            };
            if let Some(p) = &log_path {
                checkpoint::append_jsonl(p, &rec)?;
            }
            on_event(&DistillEvent::Log(rec.clone()));
            log.push(rec);
        }
        if let Some(d) = dir
            && (ck || last || stop_now)
        {
            state.elapsed_s = base + start.elapsed().as_secs_f64();
            save(d, &nets, &optims, &state, cfg.keep_checkpoints)?;
        }
        if stop_now && !last {
            finished = false;
            break;
        }
    }
    state.elapsed_s = base + start.elapsed().as_secs_f64();
    Ok(DistillOutcome {
        nets,
        state,
        finished,
        log,
    })
}
