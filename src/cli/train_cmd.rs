//! `diffnas train`.

use super::genome_cmd::load_genome;
use super::progress::{bar, note};
use super::run::RunFiles;
use super::sample::{SampleArgs, sample_run};
use super::user_err;
use crate::data::{DataSource, Split};
use crate::device::DeviceChoice;
use crate::diffusion::BetaSchedule;
use crate::model::Unet;
use crate::train::{
    LrSchedule, TrainConfig, TrainEvent, TrainOptions, TrainStatus, latest_checkpoint, train,
};
use anyhow::Context;
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
    pub data: String,
    /// Use only the first N training images.
    #[arg(long)]
    pub max_images: Option<usize>,
    /// Run directory (default: runs/<genome name>).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Continue the run in --run-dir from its newest checkpoint (its genome.json and
    /// train.json are used; --steps may extend it).
    #[arg(long)]
    pub resume: bool,
    /// auto: a hardware GPU through wgpu if present, else the CPU (flex).
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Optimizer steps. The defaults (4,000 steps of 32 images at LR 5e-4) suit the tiny
    /// preset; the DDPM recipe for ddpm-cifar10 is --steps 800000 --batch-size 128 --lr 2e-4
    /// --warmup 5000.
    #[arg(long, default_value_t = 4000)]
    pub steps: u64,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 200)]
    pub warmup: u64,
    #[arg(long, default_value = "constant")]
    pub lr_schedule: LrSchedule,
    /// Cosine floor as a fraction of --lr.
    #[arg(long, default_value_t = 0.0)]
    pub min_lr_ratio: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 1e-8)]
    pub adam_eps: f64,
    /// Global gradient-norm clip (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    #[arg(long, default_value_t = 0.9999)]
    pub ema_decay: f64,
    /// Diffusion steps T.
    #[arg(long, default_value_t = 1000)]
    pub timesteps: usize,
    #[arg(long, default_value = "linear")]
    pub beta_schedule: BetaSchedule,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Steps between checkpoints (a kill loses at most this many steps).
    #[arg(long, default_value_t = 250)]
    pub checkpoint_every: u64,
    #[arg(long, default_value_t = 50)]
    pub log_every: u64,
    /// Images in the sample grid written at the end (0: none).
    #[arg(long, default_value_t = 64)]
    pub samples: usize,
    /// DDIM steps for that grid.
    #[arg(long, default_value_t = 50)]
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
        .with_warmup_steps(a.warmup)
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
}

pub fn run(a: TrainArgs) -> anyhow::Result<i32> {
    let run_dir = a.run_dir.clone().unwrap_or_else(|| {
        let stem = std::path::Path::new(&a.genome)
            .file_stem()
            .map_or("run".into(), |s| s.to_string_lossy().into_owned());
        PathBuf::from("runs").join(stem)
    });
    let selected = super::select_device(a.device)?;
    let (genome, files) = if a.resume {
        let (genome, mut files) = RunFiles::read(&run_dir)?;
        if latest_checkpoint(&run_dir).is_none() {
            return Err(user_err(format!(
                "--resume: {} has no checkpoint to resume from",
                run_dir.display()
            )));
        }
        files.config.steps = a.steps.max(files.config.steps);
        (genome, files)
    } else {
        if run_dir.join("genome.json").exists() {
            return Err(user_err(format!(
                "{} already holds a run; pass --resume to continue it or choose another --run-dir",
                run_dir.display()
            )));
        }
        let genome = load_genome(&a.genome)?;
        let data: DataSource = a.data.parse().map_err(user_err)?;
        let cfg = config_from(&a);
        cfg.check().map_err(user_err)?;
        let files = RunFiles {
            config: cfg,
            data,
            max_images: a.max_images,
            device: selected.info.clone(),
        };
        (genome, files)
    };
    eprintln!("device: {}", selected.info);
    let data = files
        .data
        .load_for(
            Split::Train,
            files.max_images,
            genome.image.channels,
            genome.image.size,
        )
        .map_err(|e| user_err(e.to_string()))?;
    eprintln!(
        "data: {} ({} images, {}x{}x{})",
        files.data, data.len, data.channels, data.height, data.width
    );
    let cost = crate::genome::cost(&genome).map_err(|e| user_err(e.to_string()))?;
    eprintln!(
        "genome {}: {:.3} M params, {:.3} GMACs per image",
        genome.hash(),
        cost.params as f64 / 1e6,
        cost.macs as f64 / 1e9
    );
    files.write(&run_dir, &genome)?;

    let device = selected.device.clone().autodiff();
    device.seed(files.config.seed);
    let model = Unet::new(&genome, &device).map_err(|e| user_err(e.to_string()))?;

    let stop = super::progress::stop_on_ctrlc("writing a checkpoint");
    let pb = bar(files.config.steps, "train");
    let mut on_event = |e: &TrainEvent| match e {
        TrainEvent::Started { step, resumed, .. } => {
            pb.set_position(*step);
            pb.reset_eta();
            if *resumed {
                note(&pb, format!("resumed at step {step}"));
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
        TrainEvent::Checkpoint { step, path } => note(
            &pb,
            format!("checkpoint at step {step}: {}", path.display()),
        ),
    };
    let outcome = train(
        model,
        &data,
        &files.config,
        &device,
        TrainOptions {
            run_dir: Some(&run_dir),
            resume: a.resume,
            stop: Some(&stop),
            stop_at: a.stop_at,
        },
        &mut on_event,
    )
    .context("training failed")?;
    pb.finish_and_clear();
    eprintln!(
        "{} at step {} of {} ({:.1} s), last loss {}",
        match outcome.status {
            TrainStatus::Finished => "finished",
            TrainStatus::Interrupted => "stopped",
        },
        outcome.state.step,
        files.config.steps,
        outcome.state.elapsed_s,
        outcome
            .state
            .last_loss
            .map_or("n/a".into(), |l| format!("{l:.5}"))
    );
    if outcome.status == TrainStatus::Interrupted {
        eprintln!(
            "resume with: diffnas train --resume --run-dir {}",
            run_dir.display()
        );
        return Ok(130);
    }
    if a.samples > 0 {
        let out = run_dir.join("samples.png");
        sample_run(
            &SampleArgs {
                run_dir: run_dir.clone(),
                n: a.samples,
                sampling: super::sample::SamplingArgs::ddim(a.sample_steps),
                out: Some(out.clone()),
                individual: None,
                device: DeviceChoice::Flex,
            },
            &selected,
        )?;
        eprintln!("samples: {}", out.display());
    }
    Ok(0)
}
