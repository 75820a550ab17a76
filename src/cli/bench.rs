//! `diffnas bench`: the benchmark harness every performance number of the project comes from.
//! Training throughput runs the real training step (`train::train_step`: loss, backward,
//! global-norm clip, AdamW, EMA) on synthetic batches; sampling throughput runs DDIM steps of
//! the denoiser without autodiff. Warm-up steps (kernel compilation, autotune) are timed
//! separately and excluded from the rates.

use super::genome_cmd::load_genome;
use super::user_err;
use crate::device::{DeviceChoice, DeviceInfo, SelectedDevice};
use crate::diffusion::{NoiseSchedule, SamplerKind, SamplingRun, make_sampler};
use crate::genome::{Genome, cost};
use crate::model::Unet;
use crate::train::{EpsObjective, TrainConfig, optimizer_for, train_step};
use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Genome: a preset or a JSON file.
    #[arg(long, default_value = "tiny")]
    pub genome: String,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Timed training steps (0 skips training).
    #[arg(long, default_value_t = 10)]
    pub train_steps: u64,
    /// Timed denoiser evaluations for sampling (0 skips sampling).
    #[arg(long, default_value_t = 10)]
    pub sample_evals: usize,
    /// Images pushed through a metric feature extractor (0 skips it). The Inception uses the
    /// formula weights: the same arithmetic as the pretrained file, with no download.
    #[arg(long, default_value_t = 0)]
    pub extract_images: usize,
    /// Which extractor --extract-images measures: inception or classifier.
    #[arg(long, default_value = "inception", value_parser = ["inception", "classifier"])]
    pub extractor: String,
    /// Untimed warm-up steps before each measurement.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainBench {
    pub steps: u64,
    pub seconds: f64,
    pub steps_per_s: f64,
    pub images_per_s: f64,
    /// Wall time of the warm-up steps (includes kernel compilation and autotune).
    pub warmup_seconds: f64,
    /// Forward + backward taken as 3x the forward MACs, 2 FLOPs per MAC.
    pub achieved_gflops: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SampleBench {
    /// Denoiser evaluations (DDIM steps) timed.
    pub evals: usize,
    pub seconds: f64,
    /// Images advanced by one denoising step per second.
    pub image_steps_per_s: f64,
    /// Complete images per second with a 50-step sampler.
    pub images_per_s_50_steps: f64,
    pub warmup_seconds: f64,
    pub achieved_gflops: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtractBench {
    pub extractor: String,
    /// Input images `[channels, height, width]` (the genome's; Inception resizes to 299).
    pub input: [usize; 3],
    pub batch_size: usize,
    pub images: usize,
    pub seconds: f64,
    pub images_per_s: f64,
    /// One untimed batch (kernel compilation, autotune).
    pub warmup_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub tool: String,
    pub version: String,
    pub genome: String,
    pub genome_hash: String,
    pub params: u64,
    pub macs_per_image: u64,
    pub batch_size: usize,
    pub device: DeviceInfo,
    pub train: Option<TrainBench>,
    pub sample: Option<SampleBench>,
    pub extract: Option<ExtractBench>,
    /// Bytes the device allocator held at the end (None where the backend does not report it).
    pub device_bytes_reserved: Option<u64>,
}

fn sync(t: Tensor<1>) -> f32 {
    t.into_scalar::<f32>()
}

fn bench_train(g: &Genome, a: &BenchArgs, device: &Device, macs: u64) -> TrainBench {
    let ad = device.clone().autodiff();
    ad.seed(0);
    let mut model = Unet::new(g, &ad).expect("genome checked by load_genome");
    let mut ema = model.valid();
    let cfg = TrainConfig::new()
        .with_batch_size(a.batch_size)
        .with_warmup_steps(1)
        .with_steps(a.warmup + a.train_steps);
    let mut optim = optimizer_for(&cfg);
    let schedule = NoiseSchedule::new(cfg.beta_schedule, cfg.timesteps).expect("default schedule");
    let [c, s] = [g.image.channels, g.image.size];
    let x0: Tensor<4> = Tensor::random(
        [a.batch_size, c, s, s],
        Distribution::Uniform(-1.0, 1.0),
        &ad,
    );
    let mut run = |n: u64, offset: u64| {
        let t0 = Instant::now();
        let mut last = None;
        for i in 0..n {
            let (m, e, loss, _) = train_step(
                model.clone(),
                ema.clone(),
                &mut optim,
                &cfg,
                &schedule,
                x0.clone(),
                offset + i,
                &EpsObjective,
            );
            (model, ema) = (m, e);
            last = Some(loss);
        }
        if let Some(l) = last {
            sync(l);
        }
        t0.elapsed().as_secs_f64()
    };
    let warmup_seconds = run(a.warmup, 0);
    let seconds = run(a.train_steps, a.warmup);
    let sps = a.train_steps as f64 / seconds;
    TrainBench {
        steps: a.train_steps,
        seconds,
        steps_per_s: sps,
        images_per_s: sps * a.batch_size as f64,
        warmup_seconds,
        achieved_gflops: sps * a.batch_size as f64 * macs as f64 * 3.0 * 2.0 / 1e9,
    }
}

fn bench_sample(g: &Genome, a: &BenchArgs, device: &Device, macs: u64) -> SampleBench {
    device.seed(0);
    let model = Unet::new(g, device).expect("genome checked by load_genome");
    let schedule =
        NoiseSchedule::new(crate::diffusion::BetaSchedule::Linear, 1000).expect("default schedule");
    let shape = [g.image.channels, g.image.size, g.image.size];
    let timed = |evals: usize| {
        let sampler = make_sampler(SamplerKind::Ddim, schedule.clone(), evals.max(1), 0.0);
        let t0 = Instant::now();
        let run = SamplingRun::new(sampler.as_ref(), 0, 0, a.batch_size, shape, device);
        let x = run.run(&model, &mut |_, _| {});
        sync(x.sum());
        t0.elapsed().as_secs_f64()
    };
    let warmup_seconds = if a.warmup > 0 {
        timed(a.warmup as usize)
    } else {
        0.0
    };
    let seconds = timed(a.sample_evals);
    let rate = (a.sample_evals * a.batch_size) as f64 / seconds;
    SampleBench {
        evals: a.sample_evals,
        seconds,
        image_steps_per_s: rate,
        images_per_s_50_steps: rate / 50.0,
        warmup_seconds,
        achieved_gflops: rate * macs as f64 * 2.0 / 1e9,
    }
}

fn bench_extract(g: &Genome, a: &BenchArgs, device: &Device) -> ExtractBench {
    use crate::eval::classifier::Classifier;
    use crate::eval::extract::{ClassifierExtractor, FeatureExtractor, InceptionExtractor};
    let input = [g.image.channels, g.image.size, g.image.size];
    let ext: Box<dyn FeatureExtractor> = if a.extractor == "classifier" {
        let side = g.image.size.div_ceil(4) * 4;
        let net = Classifier::new([g.image.channels, side, side], 10, device);
        let meta = crate::eval::classifier::ClassifierMeta {
            input: net.input(),
            classes: 10,
            data: "untrained".into(),
            train_images: 0,
            test_accuracy: 0.0,
            epochs: 0,
            seed: 0,
        };
        Box::new(ClassifierExtractor::new(net, meta, "untrained", device))
    } else {
        Box::new(InceptionExtractor::synthetic(device).with_batch_size(a.batch_size))
    };
    let b = a.batch_size;
    let pixels = crate::eval::synthetic::bytes(1, b * input.iter().product::<usize>());
    let shape = [b, input[0], input[1], input[2]];
    let t0 = Instant::now();
    let _ = ext.extract(&pixels, shape);
    let warmup_seconds = t0.elapsed().as_secs_f64();
    let batches = a.extract_images.div_ceil(b);
    let t0 = Instant::now();
    for _ in 0..batches {
        let _ = ext.extract(&pixels, shape);
    }
    let seconds = t0.elapsed().as_secs_f64();
    ExtractBench {
        extractor: ext.id().kind.clone(),
        input,
        batch_size: b,
        images: batches * b,
        seconds,
        images_per_s: (batches * b) as f64 / seconds,
        warmup_seconds,
    }
}

/// Run the benchmark on an already selected device.
pub fn run_bench(a: &BenchArgs, selected: &SelectedDevice) -> anyhow::Result<BenchReport> {
    if a.batch_size == 0 {
        return Err(user_err("--batch-size must be at least 1"));
    }
    let g = load_genome(&a.genome)?;
    let c = cost(&g).map_err(|e| user_err(e.to_string()))?;
    let device = &selected.device;
    let train = (a.train_steps > 0).then(|| bench_train(&g, a, device, c.macs));
    let sample = (a.sample_evals > 0).then(|| bench_sample(&g, a, device, c.macs));
    let extract = (a.extract_images > 0).then(|| bench_extract(&g, a, device));
    Ok(BenchReport {
        tool: "diffnas".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        genome: a.genome.clone(),
        genome_hash: g.hash(),
        params: c.params,
        macs_per_image: c.macs,
        batch_size: a.batch_size,
        device: selected.info.clone(),
        train,
        sample,
        extract,
        device_bytes_reserved: device.memory_pool_usage().map(|u| u.bytes_reserved),
    })
}

pub fn run_cli(a: BenchArgs) -> anyhow::Result<()> {
    let selected = super::select_device(a.device)?;
    eprintln!("device: {}", selected.info);
    let report = run_bench(&a, &selected)?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(p) = &a.json {
        std::fs::write(p, &json)?;
    }
    println!("{json}");
    Ok(())
}
