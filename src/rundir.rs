//! Run directories: the files that make a trained model rebuildable from its folder alone.
//! `diffnas train` writes one, and so does every search trial (`runs/<search>/trials/<hash>/`),
//! so `sample`, `eval`, `export` and `train --resume` open either:
//!
//! - `genome.json`: the architecture, as trained;
//! - `train.json`: [`RunFiles`], the resolved training configuration, data and device;
//! - `model.bpk` / `ema.bpk` once training finished, and `checkpoints/` while it runs (see
//!   [`crate::train`]).
//!
//! What opens a run lives here too: [`load_denoiser`], [`sample`] (images, PNG grids) and
//! [`export`] (a model bundle for the browser demo).

use crate::data::DataSource;
use crate::device::DeviceInfo;
use crate::genome::Genome;
use crate::model::Unet;
use crate::model::bundle::{
    BUNDLE_FORMAT, BundleIndex, BundleManifest, FileEntry, GENOME_FILE as BUNDLE_GENOME,
    INDEX_FILE, IndexEntry, MANIFEST_FILE, WEIGHTS_FILE, WeightDType, weights_bytes,
};
use crate::train::{EMA_FILE, MODEL_FILE, TrainConfig, latest_checkpoint, write_atomic};
use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const GENOME_FILE: &str = "genome.json";
pub const RUN_FILE: &str = "train.json";

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// The folder is not a run directory (or a file of one cannot be read).
    #[error("{path}: {message}{hint}")]
    NotARun {
        path: PathBuf,
        message: String,
        hint: String,
    },
    /// A file of the run does not parse.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{dir} has no {file} and no checkpoint yet")]
    NoWeights { dir: PathBuf, file: &'static str },
    /// Settings that cannot work with this run.
    #[error("{0}")]
    Settings(String),
    /// Writing the run's files, or loading its weights, failed.
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    /// Another process writes the run.
    #[error("{0}")]
    Locked(#[from] crate::lock::LockError),
}

impl RunDirError {
    /// Whether the user pointed at the wrong thing (as opposed to a failure while reading or
    /// writing a valid run).
    pub fn is_bad_input(&self) -> bool {
        match self {
            RunDirError::Io { .. } => false,
            RunDirError::Locked(l) => l.is_bad_input(),
            _ => true,
        }
    }
}

/// The defaults of sampling, grids and exports of a run (the CLI shows these).
pub mod defaults {
    /// DDIM steps of `sample`, `eval fid` and the grid `train` writes at the end.
    pub const SAMPLE_STEPS: usize = 50;
    /// Images generated per batch.
    pub const SAMPLE_BATCH_SIZE: usize = 64;
    /// Images of `sample` and of the grid `train` writes at the end.
    pub const SAMPLES: usize = 64;
    /// DDIM steps the browser page suggests for an exported model.
    pub const EXPORT_STEPS: usize = 20;
}

/// The sample grid of a run, in its folder.
pub const GRID_FILE: &str = "samples.png";

/// `n` images of DDIM-`steps` from the EMA weights of the run in `dir`, seed 0, as a grid in
/// the run's folder ([`GRID_FILE`]); `on_images` counts generated image-steps.
pub fn write_grid(
    dir: &Path,
    n: usize,
    steps: usize,
    device: &Device,
    on_images: &mut dyn FnMut(u64),
) -> Result<PathBuf, RunDirError> {
    let g = ddim_grid(n, steps);
    let out = dir.join(GRID_FILE);
    sample(dir, Weights::Ema, &g, device, on_images)?.save_grid(&out)?;
    Ok(out)
}

/// The generation of a sample grid: `n` images, DDIM-`steps`, seed 0.
pub fn ddim_grid(n: usize, steps: usize) -> crate::eval::rfid::GenerationConfig {
    crate::eval::rfid::GenerationConfig {
        n,
        steps,
        batch_size: defaults::SAMPLE_BATCH_SIZE,
        ..crate::eval::rfid::GenerationConfig::rfid()
    }
}

/// Where a run's data came from and where it ran: what `train.json` holds beside the
/// training configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSource {
    pub data: DataSource,
    /// Images used from the training split (None: all).
    pub max_images: Option<usize>,
    /// The device the run started on.
    pub device: DeviceInfo,
}

/// `train.json`: the resolved configuration of a training run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunFiles {
    pub config: TrainConfig,
    pub data: DataSource,
    /// Images used from the training split (None: all).
    pub max_images: Option<usize>,
    /// The device the run started on.
    pub device: DeviceInfo,
}

impl RunFiles {
    pub fn new(config: TrainConfig, source: &RunSource) -> RunFiles {
        RunFiles {
            config,
            data: source.data.clone(),
            max_images: source.max_images,
            device: source.device.clone(),
        }
    }

    /// Write `genome.json` and `train.json` into `dir` (created if needed), each atomically.
    pub fn write(&self, dir: &Path, genome: &Genome) -> Result<(), RunDirError> {
        let io = |path: &Path, e: &dyn std::fmt::Display| RunDirError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, &e))?;
        let gp = dir.join(GENOME_FILE);
        write_atomic(&gp, genome.to_json_pretty().as_bytes()).map_err(|e| io(&gp, &e))?;
        let tp = dir.join(RUN_FILE);
        let text = serde_json::to_string_pretty(self).expect("RunFiles serialises");
        write_atomic(&tp, text.as_bytes()).map_err(|e| io(&tp, &e))?;
        Ok(())
    }

    /// This run's configuration, resumed as `asked` describes: the genome, data and image
    /// count given (None: not given) must be the stored ones, and the given `fields` of
    /// `asked.config` are taken where [`TrainConfig::resumed_as`] allows it. The first setting
    /// that differs is refused.
    pub fn resumed(
        &self,
        genome: &Genome,
        asked: &ResumeRequest<'_>,
    ) -> Result<TrainConfig, crate::train::ChangedSetting> {
        let changed = |field: &str, given: String, stored: String| crate::train::ChangedSetting {
            field: field.into(),
            stored,
            given,
        };
        if let Some(g) = asked.genome
            && g.hash() != genome.hash()
        {
            return Err(changed("genome", g.hash(), genome.hash()));
        }
        if let Some(d) = asked.data
            && *d != self.data
        {
            return Err(changed("data", d.to_string(), self.data.to_string()));
        }
        if let Some(m) = asked.max_images
            && m != self.max_images
        {
            let show = |v: Option<usize>| v.map_or("all".into(), |v| v.to_string());
            return Err(changed("max_images", show(m), show(self.max_images)));
        }
        let wanted = self.config.with_fields_of(&asked.config, &asked.fields);
        self.config.resumed_as(&wanted)
    }

    /// Read a run directory's genome and configuration.
    pub fn read(dir: &Path) -> Result<(Genome, RunFiles), RunDirError> {
        let gp = dir.join(GENOME_FILE);
        let text = std::fs::read_to_string(&gp).map_err(|e| RunDirError::NotARun {
            path: gp.clone(),
            message: e.to_string(),
            hint: format!(
                " (is {} a run directory made by `diffnas train` or a search trial?)",
                dir.display()
            ),
        })?;
        let genome = Genome::from_json(&text).map_err(|e| RunDirError::Invalid {
            path: gp.clone(),
            message: e.to_string(),
        })?;
        let tp = dir.join(RUN_FILE);
        let text = std::fs::read_to_string(&tp).map_err(|e| RunDirError::NotARun {
            path: tp.clone(),
            message: e.to_string(),
            hint: old_trial_hint(dir),
        })?;
        let files = serde_json::from_str(&text).map_err(|e| RunDirError::Invalid {
            path: tp.clone(),
            message: e.to_string(),
        })?;
        Ok((genome, files))
    }
}

/// Where `diffnas train` puts a run by default: `runs/<the preset's name or the genome file's
/// stem>`.
pub fn default_dir(genome: &str) -> PathBuf {
    let stem = Path::new(genome)
        .file_stem()
        .map_or("run".into(), |s| s.to_string_lossy().into_owned());
    PathBuf::from("runs").join(stem)
}

/// Whether the run in `dir` started on the CPU: resumed there, it stays there (a GPU would give
/// other numbers).
pub fn started_on_cpu(dir: &Path) -> bool {
    RunFiles::read(dir).is_ok_and(|(_, f)| f.device.backend == "flex")
}

/// Refuses to start a run in a folder that holds one.
pub fn check_fresh(dir: &Path) -> Result<(), RunDirError> {
    if dir.join(GENOME_FILE).exists() {
        return Err(RunDirError::Settings(format!(
            "{} already holds a run; pass --resume to continue it or choose another --run-dir",
            dir.display()
        )));
    }
    Ok(())
}

/// Train the run in `dir` on `device` (an autodiff device): write its `genome.json` and
/// `train.json`, load its data, then train from scratch or, with `resume`, from its newest
/// checkpoint. `on_ready(data, cost)` is told once the data is loaded.
#[allow(clippy::too_many_arguments)]
pub fn train_run(
    dir: &Path,
    genome: &Genome,
    files: &RunFiles,
    resume: bool,
    device: &Device,
    stop: &std::sync::atomic::AtomicBool,
    stop_at: Option<u64>,
    on_ready: &mut dyn FnMut(&crate::data::Dataset, &crate::genome::Cost),
    on_event: &mut dyn FnMut(&crate::train::TrainEvent),
) -> Result<crate::train::TrainOutcome<Unet>, RunDirError> {
    if resume && latest_checkpoint(dir).is_none() {
        return Err(RunDirError::Settings(format!(
            "--resume: {} has no checkpoint to resume from",
            dir.display()
        )));
    }
    let _lock = crate::lock::DirLock::take(dir)?;
    files.config.check().map_err(RunDirError::Settings)?;
    files
        .config
        .check_genome(genome)
        .map_err(RunDirError::Settings)?;
    let data = files
        .data
        .load_for(
            crate::data::Split::Train,
            files.max_images,
            genome.image.channels,
            genome.image.size,
        )
        .map_err(|e| RunDirError::Settings(e.to_string()))?;
    let invalid = |e: crate::genome::GenomeErrors| RunDirError::Invalid {
        path: dir.join(GENOME_FILE),
        message: e.to_string(),
    };
    let cost = crate::genome::cost(genome).map_err(invalid)?;
    on_ready(&data, &cost);
    files.write(dir, genome)?;
    if resume {
        // Training on past the final weights (a larger --steps): they are stale from now on,
        // and a stop before the new end must leave the newest checkpoint as the run's weights.
        let at = latest_checkpoint(dir)
            .and_then(|ck| crate::train::checkpoint::read_state(&ck).ok())
            .map_or(0, |s| s.step);
        if at < files.config.steps {
            for f in [MODEL_FILE, EMA_FILE, crate::train::STATE_FILE] {
                let _ = std::fs::remove_file(dir.join(f));
            }
        }
    }
    device.seed(files.config.seed);
    let model = Unet::new(genome, device).map_err(invalid)?;
    let opts = crate::train::TrainOptions {
        run_dir: Some(dir),
        resume,
        stop: Some(stop),
        stop_at,
    };
    crate::train::train(model, &data, &files.config, device, opts, on_event).map_err(|e| {
        RunDirError::Io {
            path: dir.to_path_buf(),
            message: format!("training failed: {e}"),
        }
    })
}

/// What to do with a trial directory of a search made before trials were complete runs (a
/// genome and weights, no `train.json`).
fn old_trial_hint(dir: &Path) -> String {
    let in_search = dir
        .parent()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n == crate::search::TRIALS_DIR)
        })
        .and_then(Path::parent)
        .is_some_and(|s| s.join(crate::search::CONFIG_FILE).is_file());
    if in_search {
        format!(
            " ({} is a trial of a search made by an older diffnas, whose trials kept no \
             train.json: retrain it as a run with `diffnas train --genome {}`)",
            dir.display(),
            dir.join(GENOME_FILE).display()
        )
    } else {
        String::new()
    }
}

/// What a resume was asked for (see [`RunFiles::resumed`]).
pub struct ResumeRequest<'a> {
    pub genome: Option<&'a Genome>,
    pub data: Option<&'a DataSource>,
    pub max_images: Option<Option<usize>>,
    /// The configuration the flags describe, and the fields (as in `train.json`) the user
    /// gave.
    pub config: TrainConfig,
    pub fields: Vec<&'a str>,
}

/// Which weights of a run to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Weights {
    Ema,
    Model,
}

/// The weights file of a run: the final one if training finished, else the newest checkpoint's.
pub fn weights_path(dir: &Path, which: Weights) -> Result<PathBuf, RunDirError> {
    let file = match which {
        Weights::Ema => EMA_FILE,
        Weights::Model => MODEL_FILE,
    };
    let fin = dir.join(file);
    if fin.is_file() {
        return Ok(fin);
    }
    match latest_checkpoint(dir) {
        Some(ck) => Ok(ck.join(file)),
        None => Err(RunDirError::NoWeights {
            dir: dir.to_path_buf(),
            file,
        }),
    }
}

/// A run's UNet on `device` with its weights loaded.
pub struct LoadedRun {
    pub model: Unet,
    pub genome: Genome,
    pub files: RunFiles,
    /// The weights file that was loaded.
    pub weights: PathBuf,
}

/// Check a weights file against the SHA-256 that the state file beside it recorded (files
/// written before checksums existed have none: they pass, with a warning).
fn verify_weights(weights: &Path) -> Result<(), RunDirError> {
    let (Some(folder), Some(name)) = (weights.parent(), weights.file_name()) else {
        return Ok(());
    };
    let recorded = crate::train::checkpoint::read_state(folder)
        .ok()
        .and_then(|s| s.sha256.get(&*name.to_string_lossy()).cloned());
    let Some(expected) = recorded else {
        crate::integrity::unchecked(weights);
        return Ok(());
    };
    let found = crate::train::checkpoint::file_sha256(weights).map_err(|e| io_at(weights, e))?;
    if found != expected {
        return Err(RunDirError::Invalid {
            path: weights.to_path_buf(),
            message: format!(
                "damaged: its SHA-256 is {found}, and {} beside it recorded {expected}",
                crate::train::STATE_FILE
            ),
        });
    }
    Ok(())
}

impl LoadedRun {
    /// The noise schedule the run trained with (`dir` names its `train.json` in errors).
    pub fn schedule(&self, dir: &Path) -> Result<crate::diffusion::NoiseSchedule, RunDirError> {
        let c = &self.files.config;
        crate::diffusion::NoiseSchedule::new(c.beta_schedule, c.timesteps).map_err(|e| {
            RunDirError::Invalid {
                path: dir.join(RUN_FILE),
                message: e.to_string(),
            }
        })
    }
}

/// Build a run's UNet on `device` and load its weights (checked against their recorded
/// SHA-256).
pub fn load_denoiser(
    dir: &Path,
    which: Weights,
    device: &Device,
) -> Result<LoadedRun, RunDirError> {
    let (genome, files) = RunFiles::read(dir)?;
    let model = Unet::new(&genome, device).map_err(|e| RunDirError::Invalid {
        path: dir.join(GENOME_FILE),
        message: format!("invalid genome:\n{e}"),
    })?;
    let weights = weights_path(dir, which)?;
    verify_weights(&weights)?;
    let model = model.try_load_file(&weights).map_err(|e| RunDirError::Io {
        path: weights.clone(),
        message: e.to_string(),
    })?;
    Ok(LoadedRun {
        model,
        genome,
        files,
        weights,
    })
}

/// Score `g.n` images drawn from the run in `dir` against `reference` with `ext` (and KID with
/// `kid`); `on_images(k)` is told as images are scored. The score names the run and weights.
#[allow(clippy::too_many_arguments)]
pub fn score_run(
    dir: &Path,
    which: Weights,
    g: &crate::eval::rfid::GenerationConfig,
    ext: &dyn crate::eval::extract::FeatureExtractor,
    reference: &crate::eval::reference::Reference,
    kid: Option<crate::eval::rfid::KidConfig>,
    device: &Device,
    on_images: &mut dyn FnMut(usize),
) -> Result<crate::eval::rfid::Score, RunDirError> {
    let run = load_denoiser(dir, which, device)?;
    let schedule = run.schedule(dir)?;
    let image = run.genome.image;
    let mut s = crate::eval::rfid::score_denoiser(
        &run.model,
        schedule,
        [image.channels, image.size, image.size],
        g,
        ext,
        reference,
        kid,
        device,
        on_images,
    )
    .map_err(|e| RunDirError::Io {
        path: run.weights.clone(),
        message: format!("scoring: {e}"),
    })?;
    s.images = Some(format!(
        "{} ({which:?} weights: {})",
        dir.display(),
        run.weights.display()
    ));
    Ok(s)
}

/// The negative log-likelihood (bits per dimension) of the run in `dir` on the first
/// `cfg.n` images of `split` of its training data (or `data`); `progress(done, total)` counts
/// model evaluations.
pub fn nll_run(
    dir: &Path,
    which: Weights,
    data: Option<&crate::data::DataSource>,
    split: crate::data::Split,
    cfg: &crate::eval::nll::NllConfig,
    device: &Device,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(crate::eval::nll::Nll, RunSourceNote), RunDirError> {
    let run = load_denoiser(dir, which, device)?;
    let schedule = run.schedule(dir)?;
    let source = data.unwrap_or(&run.files.data).clone();
    let image = run.genome.image;
    let images = source
        .load_for(split, Some(cfg.n), image.channels, image.size)
        .map_err(|e| RunDirError::Settings(e.to_string()))?;
    let nll = crate::eval::nll::nll(&run.model, &schedule, &images, cfg, device, progress);
    Ok((
        nll,
        RunSourceNote {
            data: format!("{source} ({})", split.name()),
            weights: run.weights,
        },
    ))
}

/// What a metric of a run was computed on.
#[derive(Debug, Clone, Serialize)]
pub struct RunSourceNote {
    pub data: String,
    pub weights: PathBuf,
}

/// Images drawn from a run: `n` CHW images of `shape`, 8 bits per channel.
pub struct Samples {
    pub pixels: Vec<u8>,
    pub n: usize,
    pub shape: [usize; 3],
}

/// Draw `g.n` images from the run in `dir` with its `which` weights on `device`, in batches of
/// `g.batch_size`. Image `i` of seed `g.seed` is the same whatever the batch size.
/// `on_images(k)` is told after each denoising step of a batch of `k` images.
pub fn sample(
    dir: &Path,
    which: Weights,
    g: &crate::eval::rfid::GenerationConfig,
    device: &Device,
    on_images: &mut dyn FnMut(u64),
) -> Result<Samples, RunDirError> {
    use crate::diffusion::{NoiseSchedule, SamplingRun, make_sampler, to_pixels};
    let bad = |message: String| RunDirError::Invalid {
        path: dir.join(RUN_FILE),
        message,
    };
    if g.n == 0 || g.batch_size == 0 || g.steps == 0 {
        return Err(RunDirError::Settings(
            "the number of images, the batch size and the steps must be at least 1".into(),
        ));
    }
    let LoadedRun {
        model,
        genome,
        files,
        ..
    } = load_denoiser(dir, which, device)?;
    let schedule = NoiseSchedule::new(files.config.beta_schedule, files.config.timesteps)
        .map_err(|e| bad(e.to_string()))?;
    if g.steps > files.config.timesteps {
        return Err(RunDirError::Settings(format!(
            "{} sampling steps exceed the run's {} training timesteps",
            g.steps, files.config.timesteps
        )));
    }
    g.precision.check(device).map_err(RunDirError::Settings)?;
    let _precision = crate::precision::scope(g.precision);
    let sampler = make_sampler(g.sampler, schedule, g.steps, g.eta);
    let shape = [genome.image.channels, genome.image.size, genome.image.size];
    let mut pixels = Vec::with_capacity(g.n * shape.iter().product::<usize>());
    let mut first = 0;
    while first < g.n {
        let count = g.batch_size.min(g.n - first);
        let run = SamplingRun::new(sampler.as_ref(), g.seed, first as u64, count, shape, device);
        let x = run.run(&model, &mut |_, _| on_images(count as u64));
        let data = x
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| RunDirError::Io {
                path: dir.to_path_buf(),
                message: format!("reading samples: {e:?}"),
            })?;
        pixels.extend(to_pixels(&data));
        first += count;
    }
    Ok(Samples {
        pixels,
        n: g.n,
        shape,
    })
}

impl Samples {
    /// Denoising steps times images: the length of a progress bar over [`sample`].
    pub fn work(g: &crate::eval::rfid::GenerationConfig) -> u64 {
        (g.n * g.steps) as u64
    }

    /// One PNG per image, `000000.png` onwards, into `dir`.
    pub fn save_each(&self, dir: &Path) -> Result<(), RunDirError> {
        std::fs::create_dir_all(dir).map_err(|e| RunDirError::Io {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let per: usize = self.shape.iter().product();
        for i in 0..self.n {
            let p = dir.join(format!("{i:06}.png"));
            save_png(&p, &self.pixels[i * per..][..per], 1, self.shape, 1)?;
        }
        Ok(())
    }

    /// All images as one grid PNG, as square as it gets.
    pub fn save_grid(&self, path: &Path) -> Result<(), RunDirError> {
        let cols = (self.n as f64).sqrt().ceil() as usize;
        save_png(path, &self.pixels, self.n, self.shape, cols)
    }
}

/// Write `n` CHW images of `[c, h, w]` as a grid of `cols` columns with a 2-pixel border.
pub fn save_png(
    path: &Path,
    pixels: &[u8],
    n: usize,
    [c, h, w]: [usize; 3],
    cols: usize,
) -> Result<(), RunDirError> {
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
    let io = |e: &dyn std::fmt::Display| RunDirError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| io(&e))?;
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
    .map_err(|e| io(&e))
}

// Bundles: a run's weights for the browser demo (`model::bundle`):
// OUT/NAME/{model.json, genome.json, weights.bpk}, listed in OUT/index.json.

/// What `export` wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub dir: PathBuf,
    pub manifest: BundleManifest,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// How to export a run as a bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportRequest {
    pub run_dir: PathBuf,
    /// The folder of bundles (for the demo: `web/models`).
    pub out: PathBuf,
    /// The bundle's name (None: the run directory's name).
    pub name: Option<String>,
    pub dtype: WeightDType,
    pub weights: Weights,
    /// DDIM steps the page suggests for this model.
    pub default_steps: usize,
}

/// Write the bundle of `a.run_dir` into `a.out/NAME/` and update the folder's index. The
/// weights are read on the CPU: exporting never needs a GPU.
pub fn export(a: &ExportRequest) -> Result<Exported, RunDirError> {
    let name = match &a.name {
        Some(n) => n.clone(),
        None => a
            .run_dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into()),
    };
    if !valid_name(&name) {
        return Err(RunDirError::Settings(format!(
            "--name {name:?}: use letters, digits, '.', '_' and '-' only (it becomes a folder and a URL path)"
        )));
    }
    if a.default_steps == 0 {
        return Err(RunDirError::Settings(
            "--default-steps must be at least 1".into(),
        ));
    }
    let (genome, files) = RunFiles::read(&a.run_dir)?;
    if a.default_steps > files.config.timesteps {
        return Err(RunDirError::Settings(format!(
            "--default-steps {} exceeds the run's {} training timesteps",
            a.default_steps, files.config.timesteps
        )));
    }
    let device = crate::device::flex().device;
    let LoadedRun {
        model: unet,
        weights: weights_path,
        ..
    } = load_denoiser(&a.run_dir, a.weights, &device)?;
    let weights = weights_bytes(unet, a.dtype).map_err(|e| RunDirError::Io {
        path: weights_path.clone(),
        message: e.to_string(),
    })?;
    let genome_json = genome.to_json_pretty();
    let c = crate::genome::cost(&genome).map_err(|e| RunDirError::Invalid {
        path: a.run_dir.join(GENOME_FILE),
        message: e.to_string(),
    })?;
    let manifest = BundleManifest {
        format: BUNDLE_FORMAT,
        name: name.clone(),
        genome: FileEntry::of(BUNDLE_GENOME, genome_json.as_bytes()),
        weights: FileEntry::of(WEIGHTS_FILE, &weights),
        dtype: a.dtype,
        beta_schedule: files.config.beta_schedule,
        timesteps: files.config.timesteps,
        image: genome.image,
        params: c.params,
        macs: c.macs,
        source: weights_path.display().to_string(),
        default_steps: a.default_steps,
    };
    let dir = a.out.join(&name);
    std::fs::create_dir_all(&dir).map_err(|e| io_at(&dir, e))?;
    let write = |p: PathBuf, bytes: &[u8]| write_atomic(&p, bytes).map_err(|e| io_at(&p, e));
    write(dir.join(BUNDLE_GENOME), genome_json.as_bytes())?;
    write(dir.join(WEIGHTS_FILE), &weights)?;
    // The manifest last: a bundle with a manifest is complete.
    let text = serde_json::to_string_pretty(&manifest).expect("serialises");
    write(dir.join(MANIFEST_FILE), text.as_bytes())?;
    update_index(&a.out, &manifest)?;
    Ok(Exported { dir, manifest })
}

fn io_at(path: &Path, e: impl std::fmt::Display) -> RunDirError {
    RunDirError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn update_index(out: &Path, m: &BundleManifest) -> Result<(), RunDirError> {
    let path = out.join(INDEX_FILE);
    let mut index: BundleIndex = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| RunDirError::Invalid {
            path: path.clone(),
            message: format!("{e} (not an index written by `diffnas export`; move it away)"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BundleIndex::default(),
        Err(e) => return Err(io_at(&path, e)),
    };
    index.upsert(IndexEntry {
        name: m.name.clone(),
        manifest: format!("{}/{MANIFEST_FILE}", m.name),
        image: m.image,
        params: m.params,
        bytes: m.genome.bytes + m.weights.bytes,
        dtype: m.dtype,
    });
    let text = serde_json::to_string_pretty(&index).expect("serialises");
    write_atomic(&path, text.as_bytes()).map_err(|e| io_at(&path, e))
}
