//! `diffnas sample`: images from a run directory's weights, in batches, as a PNG grid and/or
//! one PNG per image. Image `i` of seed `s` is the same whatever the batch size.

use super::progress::bar;
use super::user_err;
use crate::device::{DeviceChoice, SelectedDevice};
use crate::diffusion::{NoiseSchedule, SamplerKind, SamplingRun, make_sampler, to_pixels};
use crate::rundir::{LoadedRun, Weights, load_denoiser};
use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};

/// How images are drawn from a run: shared by `sample` and `eval fid`.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// ddim (deterministic with --eta 0) or ddpm (ancestral).
    #[arg(long, default_value = "ddim")]
    pub sampler: SamplerKind,
    /// Denoising steps (respaced evenly over the training timesteps).
    #[arg(long, default_value_t = 50)]
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
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
}

impl SamplingArgs {
    /// DDIM-`steps` from the EMA weights, seed 0.
    pub fn ddim(steps: usize) -> Self {
        SamplingArgs {
            sampler: SamplerKind::Ddim,
            steps,
            eta: 0.0,
            seed: 0,
            weights: Weights::Ema,
            batch_size: 64,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct SampleArgs {
    /// Run directory: written by `diffnas train` or a search trial (RUN/trials/HASH).
    pub run_dir: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 64)]
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

/// Sample per `a` on an already selected device (its `device` field is ignored). Returns the
/// grid path if one was written.
pub fn sample_run(a: &SampleArgs, selected: &SelectedDevice) -> anyhow::Result<Option<PathBuf>> {
    let sa = &a.sampling;
    if a.n == 0 || sa.batch_size == 0 || sa.steps == 0 {
        return Err(user_err("--n, --batch-size and --steps must be at least 1"));
    }
    let device = &selected.device;
    let LoadedRun {
        model,
        genome,
        files,
        ..
    } = load_denoiser(&a.run_dir, sa.weights, device)?;
    let schedule = NoiseSchedule::new(files.config.beta_schedule, files.config.timesteps)
        .map_err(|e| user_err(e.to_string()))?;
    if sa.steps > files.config.timesteps {
        return Err(user_err(format!(
            "--steps {} exceeds the {} training timesteps",
            sa.steps, files.config.timesteps
        )));
    }
    let sampler = make_sampler(sa.sampler, schedule, sa.steps, sa.eta);
    let shape = [genome.image.channels, genome.image.size, genome.image.size];
    let pb = bar((a.n * sampler.timesteps().len()) as u64, "sample");
    let mut pixels = Vec::with_capacity(a.n * shape.iter().product::<usize>());
    let mut first = 0;
    while first < a.n {
        let count = sa.batch_size.min(a.n - first);
        let run = SamplingRun::new(
            sampler.as_ref(),
            sa.seed,
            first as u64,
            count,
            shape,
            device,
        );
        let x = run.run(&model, &mut |_, _| pb.inc(count as u64));
        let data = x
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading samples: {e:?}"))?;
        pixels.extend(to_pixels(&data));
        first += count;
    }
    pb.finish_and_clear();
    let [c, h, w] = shape;
    if let Some(dir) = &a.individual {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let per = c * h * w;
        for i in 0..a.n {
            let p = dir.join(format!("{:06}.png", i));
            save_png(&p, &pixels[i * per..(i + 1) * per], 1, c, h, w, 1)?;
        }
    }
    let grid = match (&a.out, &a.individual) {
        (Some(p), _) => Some(p.clone()),
        (None, None) => Some(a.run_dir.join("samples.png")),
        (None, Some(_)) => None,
    };
    if let Some(p) = &grid {
        let cols = (a.n as f64).sqrt().ceil() as usize;
        save_png(p, &pixels, a.n, c, h, w, cols)?;
    }
    Ok(grid)
}

/// Write `n` CHW images as a grid of `cols` columns with a 2-pixel border.
pub fn save_png(
    path: &Path,
    pixels: &[u8],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    cols: usize,
) -> anyhow::Result<()> {
    let cols = cols.max(1);
    let rows = n.div_ceil(cols);
    let pad = if n > 1 { 2 } else { 0 };
    let (gw, gh) = (cols * (w + pad) + pad, rows * (h + pad) + pad);
    let mut rgb = vec![0u8; gw * gh * 3];
    let per = c * h * w;
    for i in 0..n {
        let (r0, c0) = ((i / cols) * (h + pad) + pad, (i % cols) * (w + pad) + pad);
        let img = &pixels[i * per..(i + 1) * per];
        for y in 0..h {
            for x in 0..w {
                for ch in 0..3 {
                    let src = if c == 1 { 0 } else { ch.min(c - 1) };
                    rgb[((r0 + y) * gw + c0 + x) * 3 + ch] = img[src * h * w + y * w + x];
                }
            }
        }
    }
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)?;
    }
    if c == 1 {
        let gray: Vec<u8> = rgb.chunks_exact(3).map(|p| p[0]).collect();
        image::GrayImage::from_raw(gw as u32, gh as u32, gray)
            .expect("buffer has gw * gh pixels")
            .save(path)
    } else {
        image::RgbImage::from_raw(gw as u32, gh as u32, rgb)
            .expect("buffer has gw * gh * 3 bytes")
            .save(path)
    }
    .with_context(|| format!("writing {}", path.display()))
}
