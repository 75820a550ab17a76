//! `diffnas bench`: flags -> [`crate::bench::BenchConfig`]; the measurements are the
//! library's.

use super::genome_cmd::load_genome;
use super::user_err;
use crate::bench::{BenchConfig, ExtractKind, defaults, run_bench};
use crate::device::DeviceChoice;
use crate::model::conv::ConvAlgorithm;
use crate::model::norm::NormAlgorithm;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Genome: a preset or a JSON file.
    #[arg(long, default_value = "tiny")]
    pub genome: String,
    #[arg(long, default_value_t = defaults::BATCH_SIZE)]
    pub batch_size: usize,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Timed training steps (0 skips training).
    #[arg(long, default_value_t = defaults::TRAIN_STEPS)]
    pub train_steps: u64,
    /// Timed denoiser evaluations for sampling (0 skips sampling).
    #[arg(long, default_value_t = defaults::SAMPLE_EVALS)]
    pub sample_evals: usize,
    /// Images pushed through a metric feature extractor (0 skips it). The Inception uses the
    /// formula weights: the same arithmetic as the pretrained file, with no download.
    #[arg(long, default_value_t = 0)]
    pub extract_images: usize,
    /// Which extractor --extract-images measures: inception or classifier.
    #[arg(long, value_enum, default_value = "inception")]
    pub extractor: ExtractKind,
    /// Untimed warm-up steps before each measurement.
    #[arg(long, default_value_t = defaults::WARMUP)]
    pub warmup: u64,
    /// Also break a training step into phases (inputs, forward, backward, clip, optimizer, EMA)
    /// and sampling into the denoiser and the sampler update, timing each phase between device
    /// syncs over --train-steps steps. The syncs stop kernel fusion across phase boundaries, so
    /// the phases add up to a little more than an unprofiled step.
    #[arg(long)]
    pub profile: bool,
    /// Also train this many steps (after the timed ones) recording the device allocator's and
    /// the process's memory every 5% of them: the peak and whether memory keeps growing.
    #[arg(long, default_value_t = 0)]
    pub memory_steps: u64,
    /// Also measure the device's peak f32 FLOP rate (fused multiply-add probe) and report each
    /// rate as a fraction of it, with the ceilings beside it: Burn's matmul on one square
    /// product in --precision (4096 on a GPU, 512 on a CPU adapter), copy bandwidth and the
    /// cost of a kernel launch. GPU backends only; takes a few seconds.
    #[arg(long)]
    pub peak: bool,
    /// How convolutions run: `im2col` (ours: on GPU devices an im2col kernel + matmul, on the
    /// CPU im2col + GEMM with our own gradients), `gemm` (the same lowering as plain tensor
    /// ops), `direct` (Burn's conv2d) or `auto` (im2col).
    #[arg(long, default_value = "auto", value_parser = ConvAlgorithm::NAMES)]
    pub conv: String,
    /// How GroupNorm (+ SiLU) runs: `fused` (our fused kernels, on the CPU and on GPU devices)
    /// or `burn` (Burn's ops everywhere).
    #[arg(long, default_value = "fused", value_parser = NormAlgorithm::NAMES)]
    pub norm: String,
    /// What convolutions and attention matmuls compute in: f32, f16 (with dynamic loss scaling
    /// in training) or bf16; weights, optimizer state, GroupNorm, softmax and the loss stay f32.
    #[arg(long, default_value_t = crate::precision::Precision::default())]
    pub precision: crate::precision::Precision,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl BenchArgs {
    fn config(&self) -> anyhow::Result<BenchConfig> {
        Ok(BenchConfig {
            genome: load_genome(&self.genome)?,
            name: self.genome.clone(),
            batch_size: self.batch_size,
            train_steps: self.train_steps,
            sample_evals: self.sample_evals,
            extract_images: self.extract_images,
            extractor: self.extractor,
            warmup: self.warmup,
            profile: self.profile,
            memory_steps: self.memory_steps,
            peak: self.peak,
            conv: self.conv.parse::<ConvAlgorithm>().map_err(user_err)?,
            norm: self.norm.parse::<NormAlgorithm>().map_err(user_err)?,
            precision: self.precision,
        })
    }
}

pub fn run_cli(a: BenchArgs) -> anyhow::Result<()> {
    let selected = super::select_device(a.device)?;
    eprintln!("device: {}", selected.info);
    let report = run_bench(&a.config()?, &selected)?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(p) = &a.json {
        std::fs::write(p, &json)?;
    }
    println!("{json}");
    Ok(())
}
