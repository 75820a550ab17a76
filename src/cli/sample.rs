//! `diffnas sample`: images from a run directory's weights, in batches, as a PNG grid and/or
//! one PNG per image. Image `i` of seed `s` is the same whatever the batch size.

use super::progress::bar;
use crate::device::{DeviceChoice, SelectedDevice};
use crate::diffusion::SamplerKind;
use crate::eval::rfid::GenerationConfig;
use crate::rundir::{self, Samples, Weights};
use clap::Args;
use std::path::PathBuf;

/// How images are drawn from a run: shared by `sample` and `eval fid`.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// ddim (deterministic with --eta 0) or ddpm (ancestral).
    #[arg(long, default_value = "ddim")]
    pub sampler: SamplerKind,
    /// Denoising steps (respaced evenly over the training timesteps).
    #[arg(long, default_value_t = rundir::defaults::SAMPLE_STEPS)]
    pub steps: usize,
    /// DDIM eta (0: deterministic; 1: DDPM-like noise).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Image i of a seed is the same whatever the batch size.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// ema (default) or the raw model weights.
    #[arg(long, value_enum, default_value = "ema")]
    pub weights: Weights,
    /// Images generated per batch.
    #[arg(long, default_value_t = rundir::defaults::SAMPLE_BATCH_SIZE)]
    pub batch_size: usize,
    /// What the denoiser's convolutions and attention matmuls compute in: f32, f16 or bf16
    /// (where the device has it; GroupNorm, softmax and the sampler stay f32).
    #[arg(long, default_value_t = crate::precision::Precision::default())]
    pub precision: crate::precision::Precision,
}

#[derive(Args, Debug, Clone)]
pub struct SampleArgs {
    /// Run directory: written by `diffnas train` or a search trial (RUN/trials/HASH).
    pub run_dir: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = rundir::defaults::SAMPLES)]
    pub n: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Grid PNG (default: RUN_DIR/samples.png unless --individual is given).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write one PNG per image into this folder.
    #[arg(long)]
    pub individual: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
}

pub fn run(a: SampleArgs) -> anyhow::Result<()> {
    let selected = super::select_device(a.device)?;
    eprintln!("device: {}", selected.info);
    let out = sample_run(&a, &selected)?;
    if let Some(p) = out {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

impl SamplingArgs {
    /// The library's sampling settings for `n` images.
    pub fn generation(&self, n: usize) -> GenerationConfig {
        GenerationConfig {
            n,
            sampler: self.sampler,
            steps: self.steps,
            eta: self.eta,
            seed: self.seed,
            batch_size: self.batch_size,
            precision: self.precision,
        }
    }
}

/// Sample per `a` on an already selected device (its `device` field is ignored). Returns the
/// grid path if one was written.
pub fn sample_run(a: &SampleArgs, selected: &SelectedDevice) -> anyhow::Result<Option<PathBuf>> {
    let g = a.sampling.generation(a.n);
    let pb = bar(Samples::work(&g), "sample");
    let samples = rundir::sample(
        &a.run_dir,
        a.sampling.weights,
        &g,
        &selected.device,
        &mut |k| pb.inc(k),
    )?;
    pb.finish_and_clear();
    if let Some(dir) = &a.individual {
        samples.save_each(dir)?;
    }
    let grid = match (&a.out, &a.individual) {
        (Some(p), _) => Some(p.clone()),
        (None, None) => Some(a.run_dir.join(rundir::GRID_FILE)),
        (None, Some(_)) => None,
    };
    if let Some(p) = &grid {
        samples.save_grid(p)?;
    }
    Ok(grid)
}
