//! `diffnas train`.

use super::Given;
use super::genome_cmd::load_genome;
use super::progress::{bar, note};
use super::user_err;
use crate::device::DeviceChoice;
use crate::diffusion::BetaSchedule;
use crate::diffusion::vlb::{LossKind, TimestepSampling};
use crate::rundir::{self, RunFiles};
use crate::train::{LrSchedule, TrainConfig, TrainEvent, TrainStatus, defaults};
use clap::Args;
use std::path::PathBuf;

/// Train a UNet on a dataset. Checkpoints go to RUN_DIR/checkpoints every --checkpoint-every
/// steps; Ctrl-C writes one and exits 130; `--resume` continues exactly where it stopped.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Genome: a preset name (tiny, fmnist-small, ddpm-cifar10, iddpm-cifar10) or a JSON file.
    #[arg(long, default_value = "tiny")]
    pub genome: String,
    /// Dataset: fashion-mnist[:DIR], mnist:DIR, cifar10:PATH or folder:DIR. Images are padded
    /// or resized to the genome's image size.
    #[arg(long, default_value = "fashion-mnist")]
    pub data: crate::data::DataSource,
    /// Use only the first N training images.
    #[arg(long)]
    pub max_images: Option<usize>,
    /// Run directory (default: runs/<genome name>).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Continue the run in --run-dir from its newest checkpoint, with its own genome.json and
    /// train.json: only --steps (to extend it), --checkpoint-every, --log-every and the
    /// options of the final sample grid may be given; any other setting is refused.
    #[arg(long)]
    pub resume: bool,
    /// auto: a hardware GPU through wgpu if present, else the CPU (flex). A resumed run that
    /// started on the CPU stays there unless this is given.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Optimizer steps. The defaults (4,000 steps of 32 images at LR 5e-4) suit the tiny
    /// preset; the DDPM recipe for ddpm-cifar10 is --steps 800000 --batch-size 128 --lr 2e-4
    /// --warmup 5000.
    #[arg(long, default_value_t = defaults::STEPS)]
    pub steps: u64,
    #[arg(long, default_value_t = defaults::BATCH_SIZE)]
    pub batch_size: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = defaults::LR)]
    pub lr: f64,
    /// Linear warm-up steps.
    #[arg(long = "warmup", visible_alias = "warmup-steps", default_value_t = defaults::WARMUP_STEPS)]
    pub warmup_steps: u64,
    #[arg(long, default_value_t = defaults::LR_SCHEDULE)]
    pub lr_schedule: LrSchedule,
    /// Cosine floor as a fraction of --lr.
    #[arg(long, default_value_t = defaults::MIN_LR_RATIO)]
    pub min_lr_ratio: f64,
    #[arg(long, default_value_t = defaults::WEIGHT_DECAY)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = defaults::ADAM_EPS)]
    pub adam_eps: f64,
    /// Global gradient-norm clip (0: off).
    #[arg(long, default_value_t = defaults::GRAD_CLIP)]
    pub grad_clip: f64,
    #[arg(long, default_value_t = defaults::EMA_DECAY)]
    pub ema_decay: f64,
    /// Diffusion steps T (a learned-variance genome such as iddpm-cifar10 defaults to IDDPM's
    /// 4000).
    #[arg(long, default_value_t = defaults::TIMESTEPS)]
    pub timesteps: usize,
    /// linear or cosine (a learned-variance genome defaults to cosine).
    #[arg(long, default_value_t = defaults::BETA_SCHEDULE)]
    pub beta_schedule: BetaSchedule,
    /// simple (epsilon MSE, fixed variances) or hybrid (IDDPM's L_simple + 0.001 L_vlb with a
    /// learned variance, which hybrid adds to the genome). Default: hybrid for a genome with
    /// learn_sigma (iddpm-cifar10), else simple.
    #[arg(long)]
    pub loss: Option<LossKind>,
    /// Timesteps of the hybrid loss: uniform, or importance (IDDPM section 3.3).
    #[arg(long, default_value = "uniform")]
    pub timestep_sampling: TimestepSampling,
    /// What convolutions and attention matmuls compute in: f32, f16 (with dynamic loss
    /// scaling; skipped overflow steps are reported) or bf16. Weights, optimizer state,
    /// GroupNorm, softmax and the loss stay f32, and so do the checkpoints.
    #[arg(long, default_value_t = crate::precision::Precision::default())]
    pub precision: crate::precision::Precision,
    #[arg(long, default_value_t = defaults::SEED)]
    pub seed: u64,
    /// Steps between checkpoints (a kill loses at most this many steps).
    #[arg(long, default_value_t = defaults::CHECKPOINT_EVERY)]
    pub checkpoint_every: u64,
    #[arg(long, default_value_t = defaults::LOG_EVERY)]
    pub log_every: u64,
    /// Images in the sample grid written at the end (0: none).
    #[arg(long, default_value_t = rundir::defaults::SAMPLES)]
    pub samples: usize,
    /// DDIM steps for that grid.
    #[arg(long, default_value_t = rundir::defaults::SAMPLE_STEPS)]
    pub sample_steps: usize,
    /// Stop after this many steps with a checkpoint, as if interrupted (for testing resume).
    #[arg(long, hide = true)]
    pub stop_at: Option<u64>,
}

fn config_from(a: &TrainArgs) -> TrainConfig {
    TrainConfig::new()
        .with_steps(a.steps)
        .with_batch_size(a.batch_size)
        .with_lr(a.lr)
        .with_warmup_steps(a.warmup_steps)
        .with_lr_schedule(a.lr_schedule)
        .with_min_lr_ratio(a.min_lr_ratio)
        .with_weight_decay(a.weight_decay)
        .with_adam_eps(a.adam_eps)
        .with_grad_clip(a.grad_clip)
        .with_ema_decay(a.ema_decay)
        .with_timesteps(a.timesteps)
        .with_beta_schedule(a.beta_schedule)
        .with_seed(a.seed)
        .with_checkpoint_every(a.checkpoint_every)
        .with_log_every(a.log_every)
        .with_loss(a.loss)
        .with_timestep_sampling(Some(a.timestep_sampling))
        .with_precision(Some(a.precision))
}

/// A fresh run's configuration and network ([`TrainConfig::fresh_run`]).
fn fresh_config(
    a: &TrainArgs,
    given: &Given,
    genome: &crate::genome::Genome,
) -> anyhow::Result<(TrainConfig, crate::genome::Genome)> {
    let fields = TrainConfig::fields();
    let given_fields: Vec<&str> = fields
        .iter()
        .map(String::as_str)
        .filter(|f| given.has(f))
        .collect();
    TrainConfig::fresh_run(genome, &config_from(a), &given_fields).map_err(user_err)
}

/// A resumed run's configuration: the stored one, with the flags the user gave applied where
/// [`TrainConfig::resumed_as`] allows it; any other given flag that differs is refused, with
/// the stored value named.
fn resumed_config(
    a: &TrainArgs,
    given: &Given,
    dir: &std::path::Path,
    genome: &crate::genome::Genome,
    files: &RunFiles,
) -> anyhow::Result<TrainConfig> {
    let asked_genome = given
        .has("genome")
        .then(|| load_genome(&a.genome))
        .transpose()?;
    let fields = TrainConfig::fields();
    let request = rundir::ResumeRequest {
        genome: asked_genome.as_ref(),
        data: given.has("data").then_some(&a.data),
        max_images: given.has("max_images").then_some(a.max_images),
        config: config_from(a),
        fields: fields
            .iter()
            .map(String::as_str)
            .filter(|f| given.has(f))
            .collect(),
    };
    files
        .resumed(genome, &request)
        .map_err(|c| user_err(format!("{}: {c}", dir.join(rundir::RUN_FILE).display())))
}

pub fn run(a: TrainArgs, given: &Given) -> anyhow::Result<i32> {
    let run_dir = a
        .run_dir
        .clone()
        .unwrap_or_else(|| rundir::default_dir(&a.genome));
    // A resumed run stays on the CPU it started on unless --device says otherwise.
    let cpu = a.resume && !given.has("device") && rundir::started_on_cpu(&run_dir);
    let choice = if cpu { DeviceChoice::Flex } else { a.device };
    let selected = super::select_device(choice)?;
    let (genome, files) = if a.resume {
        let (genome, mut files) = RunFiles::read(&run_dir)?;
        files.config = resumed_config(&a, given, &run_dir, &genome, &files)?;
        (genome, files)
    } else {
        rundir::check_fresh(&run_dir)?;
        let (config, genome) = fresh_config(&a, given, &load_genome(&a.genome)?)?;
        let files = RunFiles {
            config,
            data: a.data.clone(),
            max_images: a.max_images,
            device: selected.info.clone(),
        };
        (genome, files)
    };
    eprintln!("device: {}", selected.info);
    let stop = super::progress::stop_on_ctrlc("writing a checkpoint");
    let pb = bar(files.config.steps, "train");
    let outcome = rundir::train_run(
        &run_dir,
        &genome,
        &files,
        a.resume,
        &selected.device.clone().autodiff(),
        &stop,
        a.stop_at,
        &mut |data, cost| {
            note(
                &pb,
                format!(
                    "data: {} ({} images, {}x{}x{})\ngenome {}: {:.3} M params, {:.3} GMACs per image",
                    files.data,
                    data.len,
                    data.channels,
                    data.height,
                    data.width,
                    genome.hash(),
                    cost.params as f64 / 1e6,
                    cost.macs as f64 / 1e9
                ),
            )
        },
        &mut |e| render(&pb, e),
    )?;
    pb.finish_and_clear();
    let state = &outcome.state;
    eprintln!(
        "{} at step {} of {} ({:.1} s), last loss {}",
        match outcome.status {
            TrainStatus::Finished => "finished",
            TrainStatus::Interrupted => "stopped",
        },
        state.step,
        files.config.steps,
        state.elapsed_s,
        state.last_loss.map_or("n/a".into(), |l| format!("{l:.5}"))
    );
    if outcome.status == TrainStatus::Interrupted {
        eprintln!(
            "resume with: diffnas train --resume --run-dir {}",
            run_dir.display()
        );
        return Ok(130);
    }
    if a.samples > 0 {
        let g = rundir::ddim_grid(a.samples, a.sample_steps);
        let pb = bar(rundir::Samples::work(&g), "sample");
        let out = rundir::write_grid(&run_dir, g.n, g.steps, &selected.device, &mut |k| pb.inc(k))?;
        pb.finish_and_clear();
        eprintln!("samples: {}", out.display());
    }
    Ok(0)
}

/// A training event on the progress bar (and as a log line when the bar is hidden).
fn render(pb: &indicatif::ProgressBar, e: &TrainEvent) {
    match e {
        TrainEvent::Started { step, resumed, .. } => {
            pb.set_position(*step);
            pb.reset_eta();
            if *resumed {
                note(pb, format!("resumed at step {step}"));
            }
        }
        TrainEvent::Step { step } => pb.set_position(*step),
        TrainEvent::Log(r) => {
            pb.set_message(format!(
                "loss {:.4} lr {:.2e} |g| {:.3}",
                r.loss, r.lr, r.grad_norm
            ));
            if pb.is_hidden() {
                eprintln!(
                    "step {} loss {:.5} grad_norm {:.3} lr {:.3e} {:.2} steps/s",
                    r.step, r.loss, r.grad_norm, r.lr, r.steps_per_s
                );
            }
        }
        TrainEvent::Checkpoint { step, path } => {
            note(pb, format!("checkpoint at step {step}: {}", path.display()))
        }
        TrainEvent::Note(n) => note(pb, n.clone()),
    }
}
