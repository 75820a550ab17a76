//! `diffnas bench`: training and sampling throughput of a genome on a device, optionally
//! broken into phases, with a memory trace, a feature-extractor rate and the device's peak
//! FLOP rate. One JSON report ([`BenchReport`]); `examples/bench/side_by_side.py` reads it.

use crate::device::{DeviceInfo, SelectedDevice};
use crate::diffusion::{NoiseSchedule, SamplerKind, SamplingRun, make_sampler};
use crate::genome::{Genome, cost};
use crate::model::Unet;
use crate::model::conv::{ConvAlgorithm, set_conv_algorithm};
use crate::model::norm::{NormAlgorithm, set_norm_algorithm};
use crate::precision::Precision;
use crate::train::{
    EpsObjective, HybridObjective, StepPhase, TrainConfig, optimizer_for, train_step_marked,
};
use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// The defaults of a benchmark (`diffnas bench` shows them in its help).
pub mod defaults {
    pub const BATCH_SIZE: usize = 8;
    pub const TRAIN_STEPS: u64 = 10;
    pub const SAMPLE_EVALS: usize = 10;
    pub const WARMUP: u64 = 2;
}

/// A setting the benchmark cannot honour.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BenchError(pub String);

/// Which metric extractor `extract_images` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExtractKind {
    Inception,
    Classifier,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub genome: Genome,
    /// How the genome was named (a preset or a file), for the report.
    pub name: String,
    pub batch_size: usize,
    /// Timed training steps (0 skips training).
    pub train_steps: u64,
    /// Timed denoiser evaluations for sampling (0 skips sampling).
    pub sample_evals: usize,
    /// Images pushed through a metric feature extractor (0 skips it).
    pub extract_images: usize,
    pub extractor: ExtractKind,
    /// Untimed warm-up steps before each measurement.
    pub warmup: u64,
    /// Also time each phase of a step between device syncs.
    pub profile: bool,
    /// Also train this many steps recording memory every 5% of them.
    pub memory_steps: u64,
    /// Also measure the device's peak f32 FLOP rate, its matmul rate in `precision`, copy
    /// bandwidth and launch cost.
    pub peak: bool,
    pub conv: ConvAlgorithm,
    pub norm: NormAlgorithm,
    /// What convolutions and attention matmuls compute in (f16 trains with loss scaling).
    pub precision: Precision,
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

/// Seconds spent in each phase of the profiled steps (between device syncs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseTime {
    pub phase: String,
    pub seconds: f64,
    /// Share of the profiled total.
    pub fraction: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileReport {
    /// Training steps profiled.
    pub train_steps: u64,
    pub train: Vec<PhaseTime>,
    /// Sampling: the denoiser's forward passes and the sampler's update, over the same number
    /// of evaluations as the throughput measurement.
    pub sample: Vec<PhaseTime>,
}

/// One memory reading during a long training run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemorySample {
    pub step: u64,
    /// Bytes the device allocator has handed out / holds (None where the backend has no pool).
    pub device_bytes_in_use: Option<u64>,
    pub device_bytes_reserved: Option<u64>,
    /// Resident set size of the process (Linux), which is where a CPU backend's tensors live.
    pub process_rss_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryReport {
    pub steps: u64,
    pub samples: Vec<MemorySample>,
    pub peak_device_bytes_reserved: Option<u64>,
    /// Peak resident set size of the process over its whole life (Linux `VmHWM`, or the
    /// largest reading if that is higher).
    pub peak_process_rss_bytes: Option<u64>,
    /// Reserved device bytes at the last reading minus at the second (after the first 5% of
    /// steps, when every buffer size has been seen once).
    pub device_growth_bytes: Option<i64>,
    pub rss_growth_bytes: Option<i64>,
}

/// The device's measured peak.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeakReport {
    /// f32 fused multiply-add throughput, 2 FLOPs per FMA.
    pub f32_gflops: f64,
    /// Burn's autotuned matmul on one `n x n` by `n x n` product in the run's precision
    /// (GFLOP/s, `2 n^3` FLOPs per product): what convolutions that run as im2col + matmul can
    /// reach at best. Absent in reports written before it.
    #[serde(default)]
    pub matmul_gflops: Option<f64>,
    #[serde(default)]
    pub matmul_n: Option<usize>,
    /// Device-to-device copy bandwidth (GB/s, bytes read plus bytes written), the ceiling of
    /// memory-bound kernels.
    #[serde(default)]
    pub copy_gbps: Option<f64>,
    /// The cost of one kernel launch (microseconds), what bounds a chain of small kernels.
    #[serde(default)]
    pub launch_us: Option<f64>,
    /// Achieved training / sampling rate as a fraction of it.
    pub train_fraction: Option<f64>,
    pub sample_fraction: Option<f64>,
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
    /// The convolution algorithm asked for (`--conv`).
    #[serde(default)]
    pub conv: String,
    /// The GroupNorm algorithm asked for (`--norm`).
    #[serde(default)]
    pub norm: String,
    /// The compute precision (`--precision`; absent in reports written before it: f32).
    #[serde(default)]
    pub precision: Precision,
    /// f16 training: the loss scale after the timed steps, and the steps skipped for overflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<crate::train::LossScale>,
    /// Threads of the CPU pool (flex and our CPU kernels).
    #[serde(default)]
    pub cpu_threads: usize,
    pub train: Option<TrainBench>,
    pub sample: Option<SampleBench>,
    pub extract: Option<ExtractBench>,
    /// Bytes the device allocator held at the end (None where the backend does not report it).
    pub device_bytes_reserved: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfileReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak: Option<PeakReport>,
}

fn sync(t: Tensor<1>) -> f32 {
    t.into_scalar::<f32>()
}

/// A model, its EMA and optimizer on the autodiff device, stepping on one fixed batch. The
/// model and EMA move through each step as in `train::train` (a copy kept here would turn the
/// CPU kernels' in-place updates into copies).
struct Trainer {
    model: Option<Unet>,
    ema: Option<Unet>,
    optim: burn::optim::ModuleOptimizer,
    cfg: TrainConfig,
    schedule: NoiseSchedule,
    x0: Tensor<4>,
    step: u64,
    /// f16 only.
    scaler: Option<crate::train::LossScale>,
}

impl Trainer {
    fn new(g: &Genome, a: &BenchConfig, device: &Device) -> Trainer {
        let ad = device.clone().autodiff();
        ad.seed(0);
        let model = Unet::new(g, &ad).expect("a genome with a cost builds");
        let ema = model.valid();
        let cfg = TrainConfig::new()
            .with_batch_size(a.batch_size)
            .with_warmup_steps(1)
            .with_steps(u64::MAX);
        let optim = optimizer_for(&cfg);
        let schedule =
            NoiseSchedule::new(cfg.beta_schedule, cfg.timesteps).expect("default schedule");
        let [c, s] = [g.image.channels, g.image.size];
        let x0 = Tensor::random(
            [a.batch_size, c, s, s],
            Distribution::Uniform(-1.0, 1.0),
            &ad,
        );
        Trainer {
            model: Some(model),
            ema: Some(ema),
            optim,
            cfg,
            schedule,
            x0,
            step: 0,
            scaler: a
                .precision
                .scales_loss()
                .then(crate::train::LossScale::default),
        }
    }

    /// Issue one step; `mark` is called after each phase.
    fn step(&mut self, mark: &mut dyn FnMut(StepPhase)) -> Tensor<1> {
        // A learned-variance genome trains with L_hybrid, and is timed so.
        let objective: &dyn crate::train::Objective<Unet> =
            if self.model.as_ref().is_some_and(|m| m.learn_sigma) {
                &HybridObjective
            } else {
                &EpsObjective
            };
        let (m, e, loss, _) = train_step_marked(
            self.model
                .take()
                .expect("the model is back after every step"),
            self.ema.take().expect("the EMA is back after every step"),
            &mut self.optim,
            &self.cfg,
            &self.schedule,
            self.x0.clone(),
            self.step,
            objective,
            self.scaler.as_mut(),
            mark,
        );
        (self.model, self.ema) = (Some(m), Some(e));
        self.step += 1;
        loss
    }

    /// Wall seconds of `n` steps, ending with one read of the last loss.
    fn timed(&mut self, n: u64) -> f64 {
        let t0 = Instant::now();
        let mut last = None;
        for _ in 0..n {
            last = Some(self.step(&mut |_| {}));
        }
        if let Some(l) = last {
            sync(l);
        }
        t0.elapsed().as_secs_f64()
    }
}

fn bench_train(t: &mut Trainer, a: &BenchConfig, macs: u64) -> TrainBench {
    let warmup_seconds = t.timed(a.warmup);
    let seconds = t.timed(a.train_steps);
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

fn phase_times(names: &[&str], seconds: &[f64]) -> Vec<PhaseTime> {
    let total: f64 = seconds.iter().sum::<f64>().max(1e-12);
    names
        .iter()
        .zip(seconds)
        .map(|(n, s)| PhaseTime {
            phase: n.to_string(),
            seconds: *s,
            fraction: s / total,
        })
        .collect()
}

/// Phase times of `steps` training steps, each phase ended by a device sync.
fn profile_train(t: &mut Trainer, device: &Device, steps: u64) -> Vec<PhaseTime> {
    let mut acc = [0.0f64; StepPhase::ALL.len()];
    device.sync().expect("device sync");
    for _ in 0..steps {
        let mut last = Instant::now();
        t.step(&mut |p| {
            device.sync().expect("device sync");
            let i = StepPhase::ALL
                .iter()
                .position(|q| *q == p)
                .expect("a phase");
            acc[i] += last.elapsed().as_secs_f64();
            last = Instant::now();
        });
    }
    let names: Vec<String> = StepPhase::ALL
        .iter()
        .map(|p| {
            serde_json::to_value(p)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        })
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    phase_times(&names, &acc)
}

fn rss() -> (Option<u64>, Option<u64>) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn memory_trace(t: &mut Trainer, device: &Device, steps: u64) -> MemoryReport {
    let every = (steps / 20).max(1);
    let mut samples = Vec::new();
    let mut read = |step: u64| {
        device.sync().expect("device sync");
        let usage = device.memory_pool_usage();
        samples.push(MemorySample {
            step,
            device_bytes_in_use: usage.as_ref().map(|u| u.bytes_in_use),
            device_bytes_reserved: usage.as_ref().map(|u| u.bytes_reserved),
            process_rss_bytes: rss().0,
        });
    };
    read(0);
    for i in 1..=steps {
        t.step(&mut |_| {});
        if i % every == 0 || i == steps {
            read(i);
        }
    }
    let growth = |f: &dyn Fn(&MemorySample) -> Option<u64>| {
        let first = samples.get(1).and_then(f)?;
        let last = samples.last().and_then(f)?;
        Some(last as i64 - first as i64)
    };
    MemoryReport {
        steps,
        peak_device_bytes_reserved: samples.iter().filter_map(|s| s.device_bytes_reserved).max(),
        // The kernel updates VmHWM lazily, so it can trail a VmRSS reading taken just before.
        peak_process_rss_bytes: rss()
            .1
            .max(samples.iter().filter_map(|s| s.process_rss_bytes).max()),
        device_growth_bytes: growth(&|s| s.device_bytes_reserved),
        rss_growth_bytes: growth(&|s| s.process_rss_bytes),
        samples,
    }
}

/// The device's f32 FMA peak in GFLOP/s (None on backends without the probe, such as flex).
#[cfg(feature = "gpu-kernels")]
fn measure_peak(device: &Device) -> Option<f64> {
    use burn::tensor::{ThroughputKey, ThroughputMode};
    // The launch probe's element type is f32 (cubecl's default for non-compute modes), which
    // spares this crate a direct dependency on cubecl's IR types.
    let f32 = ThroughputKey {
        mode: ThroughputMode::Launch,
    }
    .dtype();
    let key = ThroughputKey {
        mode: ThroughputMode::ComputeDirect { dtype: f32 },
    };
    let stat = device.performance_stats(&[key]).into_iter().next()?;
    stat.value.ok().map(|v| v.ops_per_s() / 1e9)
}

/// A build without a GPU runtime (CPU-only: `--no-default-features --features cli`) has no
/// probe to run.
#[cfg(not(feature = "gpu-kernels"))]
fn measure_peak(_device: &Device) -> Option<f64> {
    None
}

/// Copy bandwidth (GB/s) and launch cost (microseconds) from CubeCL's probes.
#[cfg(feature = "gpu-kernels")]
fn measure_memory_and_launch(device: &Device) -> (Option<f64>, Option<f64>) {
    use burn::tensor::{MemoryAccess, ThroughputKey, ThroughputMode};
    let copy = ThroughputKey {
        mode: ThroughputMode::memory(MemoryAccess::Copy),
    };
    let launch = ThroughputKey {
        mode: ThroughputMode::Launch,
    };
    let stats = device.performance_stats(&[copy, launch]);
    let value = |i: usize| stats.get(i).and_then(|s| s.value.ok());
    (
        value(0).map(|v| v.bytes_per_s(&copy) / 1e9),
        value(1).map(|v| v.duration_per_op().as_secs_f64() * 1e6),
    )
}

#[cfg(not(feature = "gpu-kernels"))]
fn measure_memory_and_launch(_device: &Device) -> (Option<f64>, Option<f64>) {
    (None, None)
}

/// The side of the square matmul probe: large enough to fill a GPU, small enough that a CPU
/// posing as one (a software rasteriser) finishes in seconds.
pub fn matmul_probe_size(info: &DeviceInfo) -> usize {
    if info.device_type.eq_ignore_ascii_case("cpu") {
        512
    } else {
        4096
    }
}

/// Burn's matmul on `n x n` by `n x n` random operands in `precision` (cast to 16 bits as the
/// convolutions are), GFLOP/s over ten products after two warm-ups (which run autotune). Each
/// product multiplies the previous one (`b` scaled by `1/sqrt(n)` keeps the values near unit
/// size, so f16 does not overflow) and the last is summed, so no product can be skipped or cut
/// short by lazy execution.
fn measure_matmul(device: &Device, precision: Precision, n: usize) -> f64 {
    let operand = |scale: f64| {
        let t = Tensor::<2>::random([n, n], Distribution::Normal(0.0, scale), device);
        match precision.compute_dtype() {
            Some(dt) => t.cast(dt),
            None => t,
        }
    };
    let (a, b) = (operand(1.0), operand(1.0 / (n as f64).sqrt()));
    let chain = |k: usize| {
        let mut c = a.clone();
        for _ in 0..k {
            c = c.matmul(b.clone());
        }
        c.sum().into_scalar::<f32>()
    };
    chain(2);
    const REPEATS: usize = 10;
    let t0 = Instant::now();
    chain(REPEATS);
    let secs = t0.elapsed().as_secs_f64();
    2.0 * (n as f64).powi(3) * REPEATS as f64 / secs / 1e9
}

fn bench_sample(
    g: &Genome,
    a: &BenchConfig,
    device: &Device,
    macs: u64,
) -> (SampleBench, Vec<PhaseTime>) {
    device.seed(0);
    let model = Unet::new(g, device).expect("a genome with a cost builds");
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
    let phases = if a.profile {
        // The same evaluations with the denoiser alone; the rest of a sampling run is the
        // sampler's update (and the initial noise).
        let x = Tensor::<4>::random(
            [a.batch_size, shape[0], shape[1], shape[2]],
            Distribution::Normal(0.0, 1.0),
            device,
        );
        let t = Tensor::<1>::full([a.batch_size], 500.0, device);
        sync(x.clone().sum());
        let t0 = Instant::now();
        let mut acc = x.clone().sum();
        for _ in 0..a.sample_evals {
            acc = acc + model.forward(x.clone(), t.clone()).sum();
        }
        sync(acc);
        let denoiser = t0.elapsed().as_secs_f64();
        phase_times(
            &["denoiser", "sampler"],
            &[denoiser, (seconds - denoiser).max(0.0)],
        )
    } else {
        Vec::new()
    };
    let bench = SampleBench {
        evals: a.sample_evals,
        seconds,
        image_steps_per_s: rate,
        images_per_s_50_steps: rate / 50.0,
        warmup_seconds,
        achieved_gflops: rate * macs as f64 * 2.0 / 1e9,
    };
    (bench, phases)
}

fn bench_extract(g: &Genome, a: &BenchConfig, device: &Device) -> ExtractBench {
    use crate::eval::classifier::Classifier;
    use crate::eval::extract::{ClassifierExtractor, FeatureExtractor, InceptionExtractor};
    let input = [g.image.channels, g.image.size, g.image.size];
    let ext: Box<dyn FeatureExtractor> = if a.extractor == ExtractKind::Classifier {
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
/// Measure `a` on `selected`. It sets the process's convolution and GroupNorm algorithms to
/// the configuration's.
pub fn run_bench(a: &BenchConfig, selected: &SelectedDevice) -> Result<BenchReport, BenchError> {
    if a.batch_size == 0 {
        return Err(BenchError("the batch size must be at least 1".into()));
    }
    let g = &a.genome;
    let c = cost(g).map_err(|e| BenchError(e.to_string()))?;
    let (conv, norm) = (a.conv, a.norm);
    set_conv_algorithm(conv);
    set_norm_algorithm(norm);
    let device = &selected.device;
    a.precision.check(device).map_err(BenchError)?;
    let _precision = crate::precision::scope(a.precision);
    // First, so that a backend without the probe fails before minutes of benchmarking.
    let peak_gflops = if a.peak {
        Some(measure_peak(device).ok_or_else(|| {
            BenchError(format!(
                "--peak: the {} backend has no peak-throughput probe",
                selected.info.backend
            ))
        })?)
    } else {
        None
    };
    let needs_trainer = a.train_steps > 0 || a.memory_steps > 0;
    let mut trainer = needs_trainer.then(|| Trainer::new(g, a, device));
    let train = match (&mut trainer, a.train_steps > 0) {
        (Some(t), true) => Some(bench_train(t, a, c.macs)),
        _ => None,
    };
    let train_phases = match (&mut trainer, a.profile && a.train_steps > 0) {
        (Some(t), true) => profile_train(t, device, a.train_steps),
        _ => Vec::new(),
    };
    let memory = match (&mut trainer, a.memory_steps > 0) {
        (Some(t), true) => Some(memory_trace(t, device, a.memory_steps)),
        _ => None,
    };
    let loss_scale = trainer.and_then(|t| t.scaler);
    let (sample, sample_phases) = if a.sample_evals > 0 {
        let (s, p) = bench_sample(g, a, device, c.macs);
        (Some(s), p)
    } else {
        (None, Vec::new())
    };
    let extract = (a.extract_images > 0).then(|| bench_extract(g, a, device));
    // The benchmark's memory, read before the probes allocate their buffers; the probes run
    // after the benchmark, so that its autotune and allocations are not theirs.
    let device_bytes_reserved = device.memory_pool_usage().map(|u| u.bytes_reserved);
    let probes = peak_gflops.map(|_| {
        let n = matmul_probe_size(&selected.info);
        let (copy, launch) = measure_memory_and_launch(device);
        (measure_matmul(device, a.precision, n), n, copy, launch)
    });
    let peak = peak_gflops
        .zip(probes)
        .map(|(p, (mm, n, copy, launch))| PeakReport {
            f32_gflops: p,
            matmul_gflops: Some(mm),
            matmul_n: Some(n),
            copy_gbps: copy,
            launch_us: launch,
            train_fraction: train.as_ref().map(|t| t.achieved_gflops / p),
            sample_fraction: sample.as_ref().map(|s| s.achieved_gflops / p),
        });
    Ok(BenchReport {
        tool: "diffnas".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        genome: a.name.clone(),
        genome_hash: g.hash(),
        params: c.params,
        macs_per_image: c.macs,
        batch_size: a.batch_size,
        device: selected.info.clone(),
        conv: conv.name().into(),
        norm: norm.name().into(),
        precision: a.precision,
        loss_scale,
        cpu_threads: rayon::current_num_threads(),
        train,
        sample,
        extract,
        device_bytes_reserved,
        profile: a.profile.then_some(ProfileReport {
            train_steps: if train_phases.is_empty() {
                0
            } else {
                a.train_steps
            },
            train: train_phases,
            sample: sample_phases,
        }),
        memory,
        peak,
    })
}
