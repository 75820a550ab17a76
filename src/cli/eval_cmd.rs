//! `diffnas eval ...` and `diffnas weights ...`: reference statistics, FID / FD-classifier and
//! KID of runs, folders and data splits, the offline classifier, and the Inception download.

use super::progress::{bar, note};
use super::sample::SamplingArgs;
use super::user_err;
use crate::data::{DataSource, Split, read_image_folder};
use crate::device::{DeviceChoice, SelectedDevice};
use crate::eval::classifier::{ClassifierEvent, ClassifierTraining};
use crate::eval::extract::{FeatureExtractor, INCEPTION_SHA256_PREFIX};
use crate::eval::fetch::{Fetched, INCEPTION_URL, fetch};
use crate::eval::nll;
use crate::eval::reference::Reference;
use crate::eval::rfid::{KidConfig, Score, score_dataset};
pub use crate::eval::setup::ExtractorChoice;
use crate::eval::setup::{
    self, ClassifierRequest, ExtractorSpec, SetupEvent, default_inception_path, home,
};
use crate::rundir::RunFiles;
use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum EvalCmd {
    /// Compute and cache reference statistics (mean, covariance, KID rows) of a dataset split.
    Stats(StatsArgs),
    /// FID (or FD-classifier) and KID of a run's samples, a folder of images or a data split.
    ///
    /// Examples:
    ///   diffnas eval fid runs/fmnist-tiny --n 10000 --sampler ddim --steps 50
    ///   diffnas eval fid --images samples/ --ref-data cifar10:cifar-10-batches-bin
    ///   diffnas eval fid --data fashion-mnist --split test
    #[command(verbatim_doc_comment)]
    Fid(FidArgs),
    /// Train the offline feature extractor: a small CNN classifier on a labelled dataset.
    ///
    /// Its feature space gives FD-classifier and KID-classifier where the Inception weights
    /// cannot be downloaded. Never reported as FID.
    TrainClassifier(TrainClassifierArgs),
    /// Negative log-likelihood in bits per dimension: the full variational bound (IDDPM's
    /// prior term plus every L_t) of a run on a dataset split, T model evaluations per image.
    ///
    /// Example:
    ///   diffnas eval nll runs/iddpm-cifar10 --split test --n 1000
    #[command(verbatim_doc_comment)]
    Nll(NllArgs),
}

#[derive(Args, Debug)]
pub struct NllArgs {
    /// Run directory written by `diffnas train` or a search trial.
    pub run_dir: PathBuf,
    /// Data [default: the run's training data].
    #[arg(long)]
    pub data: Option<DataSource>,
    #[arg(long, value_enum, default_value = "test")]
    pub split: Split,
    /// Images scored: the first N of the split.
    #[arg(long, default_value_t = nll::defaults::N)]
    pub n: usize,
    #[arg(long, default_value_t = nll::defaults::BATCH_SIZE)]
    pub batch_size: usize,
    /// Seed of the noise of every x_t.
    #[arg(long, default_value_t = nll::defaults::SEED)]
    pub seed: u64,
    /// ema (default) or the raw model weights.
    #[arg(long, value_enum, default_value = "ema")]
    pub weights: crate::rundir::Weights,
    /// Do not clip the predicted x0 to [-1, 1] (IDDPM clips by default).
    #[arg(long)]
    pub no_clip: bool,
    /// The variance of a model that does not learn it: fixed-large (its DDPM sampler's) or
    /// fixed-small.
    #[arg(long, default_value = "fixed-large")]
    pub fixed_variance: crate::diffusion::VarianceKind,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Write the JSON result here too (it is always printed on stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum WeightsCmd {
    /// Download weights (resumable; SHA-256 checked). Only `inception` exists.
    Fetch(FetchArgs),
    /// Print where weights are looked for.
    Path,
}

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// What to download: inception (pytorch-fid's FID Inception-v3, about 95 MB).
    #[arg(value_parser = ["inception"])]
    pub what: String,
    /// Source URL (a mirror, or a local server).
    #[arg(long, env = "DIFFNAS_INCEPTION_URL", default_value = INCEPTION_URL)]
    pub url: String,
    /// Destination file [default: $DIFFNAS_HOME/weights/pt_inception-2015-12-05-6726825d.pth].
    #[arg(long)]
    pub dest: Option<PathBuf>,
    /// Connection timeout in seconds.
    #[arg(long, default_value_t = setup::defaults::FETCH_TIMEOUT_S)]
    pub timeout: u64,
}

#[derive(Args, Debug, Clone)]
pub struct ExtractorArgs {
    /// Feature space.
    #[arg(long, value_enum, default_value = "auto")]
    pub extractor: ExtractorChoice,
    /// Inception weights: pytorch-fid's .pth or its converted .bpk
    /// [default: $DIFFNAS_HOME/weights/pt_inception-2015-12-05-6726825d.pth].
    #[arg(long, env = "DIFFNAS_INCEPTION")]
    pub inception: Option<PathBuf>,
    /// Classifier file [default: $DIFFNAS_HOME/classifiers/<data>.bpk].
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Images per extractor forward pass [default: 50 for Inception, 500 for the classifier].
    #[arg(long)]
    pub extract_batch: Option<usize>,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// fashion-mnist[:DIR], mnist:DIR, cifar10:PATH or folder:DIR.
    #[arg(long, default_value = "fashion-mnist")]
    pub data: DataSource,
    #[arg(long, value_enum, default_value = "train")]
    pub split: Split,
    /// Convert images to this many channels first (as a genome's image spec would).
    #[arg(long)]
    pub channels: Option<usize>,
    /// Pad/resize images to this size first.
    #[arg(long)]
    pub size: Option<usize>,
    /// Use only the first N images (with --out: the default path is the cache of the whole
    /// split, which every later score reuses).
    #[arg(long, requires = "out")]
    pub max_images: Option<usize>,
    /// Feature rows kept for KID.
    #[arg(long, default_value_t = setup::defaults::REFERENCE_KEEP)]
    pub keep: usize,
    /// Output file [default: $DIFFNAS_HOME/stats/<data>-<split>-<CxHxW>-<extractor>.safetensors].
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub ext: ExtractorArgs,
}

#[derive(Args, Debug)]
pub struct FidArgs {
    /// Run directory written by `diffnas train`: its samples are generated and scored.
    pub run_dir: Option<PathBuf>,
    /// Score a folder of images instead (PNG/JPEG).
    #[arg(long, conflicts_with = "run_dir")]
    pub images: Option<PathBuf>,
    /// Score a dataset split instead (e.g. the test split against the train statistics).
    #[arg(long, conflicts_with_all = ["run_dir", "images"])]
    pub data: Option<DataSource>,
    /// Split for --data.
    #[arg(long, value_enum, default_value = "test")]
    pub split: Split,
    /// Number of images (generated, or the first N of the folder/split).
    #[arg(long, default_value_t = setup::defaults::FID_N)]
    pub n: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Reference statistics file (from `eval stats`); default: the cached statistics of
    /// --ref-data/--ref-split, computed now if missing.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Reference data [default: the run's training data, else fashion-mnist].
    #[arg(long)]
    pub ref_data: Option<DataSource>,
    #[arg(long, value_enum, default_value = "train")]
    pub ref_split: Split,
    /// KID subsets and rows per subset (FID.md: 100 x 1,000); --kid-subsets 0 skips KID.
    #[arg(long, default_value_t = KidConfig::SUBSETS)]
    pub kid_subsets: usize,
    #[arg(long, default_value_t = KidConfig::SUBSET_SIZE)]
    pub kid_subset_size: usize,
    /// Write the JSON result here too (it is always printed on stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub ext: ExtractorArgs,
}

#[derive(Args, Debug)]
pub struct TrainClassifierArgs {
    /// A labelled dataset: fashion-mnist[:DIR], mnist:DIR or cifar10:PATH.
    #[arg(long, default_value = "fashion-mnist")]
    pub data: DataSource,
    #[arg(long, default_value_t = setup::defaults::CLASSIFIER_EPOCHS)]
    pub epochs: usize,
    #[arg(long, default_value_t = setup::defaults::CLASSIFIER_BATCH_SIZE)]
    pub batch_size: usize,
    #[arg(long, default_value_t = setup::defaults::CLASSIFIER_LR)]
    pub lr: f64,
    #[arg(long, default_value_t = setup::defaults::CLASSIFIER_SEED)]
    pub seed: u64,
    /// Use only the first N training images (quick checks).
    #[arg(long)]
    pub max_images: Option<usize>,
    /// Output [default: $DIFFNAS_HOME/classifiers/<data>.bpk].
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
}

pub fn run_eval(cmd: EvalCmd) -> anyhow::Result<i32> {
    match cmd {
        EvalCmd::Stats(a) => stats(a),
        EvalCmd::Fid(a) => fid(a),
        EvalCmd::TrainClassifier(a) => classifier_cmd(a),
        EvalCmd::Nll(a) => nll_cmd(a),
    }
    .map(|_| 0)
}

pub fn run_weights(cmd: WeightsCmd) -> anyhow::Result<i32> {
    match cmd {
        WeightsCmd::Path => {
            println!("inception: {}", default_inception_path().display());
            println!("classifiers: {}", home().join("classifiers").display());
            println!("statistics: {}", home().join("stats").display());
            Ok(0)
        }
        WeightsCmd::Fetch(a) => {
            let dest = a.dest.unwrap_or_else(default_inception_path);
            let pb = indicatif::ProgressBar::new(0);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} eta {eta}",
                )
                .expect("static template"),
            );
            let timeout = Duration::from_secs(a.timeout);
            eprintln!("{} -> {}", a.url, dest.display());
            let fetched = fetch(
                &a.url,
                &dest,
                INCEPTION_SHA256_PREFIX,
                timeout,
                &mut |k, n| {
                    if let Some(t) = n {
                        pb.set_length(t);
                    }
                    pb.set_position(k);
                },
            );
            pb.finish_and_clear();
            match fetched? {
                Fetched::AlreadyThere(sha) => {
                    println!("{} is already there (SHA-256 {sha})", dest.display())
                }
                Fetched::Downloaded(sha) => println!("saved {} (SHA-256 {sha})", dest.display()),
            }
            Ok(0)
        }
    }
}

impl ExtractorArgs {
    /// The library's description of the extractor the flags ask for.
    pub fn spec(&self) -> ExtractorSpec {
        ExtractorSpec {
            choice: self.extractor,
            inception: self.inception.clone(),
            classifier: self.classifier.clone(),
            batch: self.extract_batch,
        }
    }
}

/// Build the extractor for `data` (used to find its classifier) per the flags.
pub fn extractor(
    a: &ExtractorArgs,
    data: &DataSource,
    selected: &SelectedDevice,
) -> anyhow::Result<Box<dyn FeatureExtractor>> {
    let ext = setup::extractor(&a.spec(), data, &selected.device)?;
    eprintln!("features: {}", ext.id());
    Ok(ext)
}

/// Renders the progress of scoring's setup: one bar at a time.
#[derive(Default)]
struct SetupProgress {
    bar: Option<indicatif::ProgressBar>,
}

impl SetupProgress {
    fn event(&mut self, e: SetupEvent) {
        match e {
            SetupEvent::Features { done, total } => {
                let pb = self.bar.get_or_insert_with(|| bar(total, "features"));
                pb.set_position(done);
            }
            SetupEvent::ReferenceCached(p) => eprintln!("reference: {}", p.display()),
            SetupEvent::ComputingReference(p) => eprintln!(
                "reference statistics not cached yet; computing them once -> {}",
                p.display()
            ),
            SetupEvent::TrainingClassifier { steps } => {
                self.bar = Some(bar(steps, "classifier"));
            }
            SetupEvent::Classifier(e) => {
                let Some(pb) = &self.bar else { return };
                match e {
                    ClassifierEvent::Step { step, loss, .. } => {
                        pb.set_position(*step as u64);
                        pb.set_message(format!("loss {loss:.4}"));
                    }
                    ClassifierEvent::Epoch {
                        epoch,
                        test_accuracy,
                    } => note(
                        pb,
                        format!("epoch {epoch}: test accuracy {:.2}%", 100.0 * test_accuracy),
                    ),
                }
            }
        }
    }
}

impl Drop for SetupProgress {
    fn drop(&mut self) {
        if let Some(pb) = self.bar.take() {
            pb.finish_and_clear();
        }
    }
}

/// [`setup::cached_reference`] with its progress rendered.
pub fn cached_reference(
    ext: &dyn FeatureExtractor,
    data: &DataSource,
    split: Split,
    spec: [usize; 3],
) -> anyhow::Result<Reference> {
    let mut p = SetupProgress::default();
    Ok(setup::cached_reference(ext, data, split, spec, &mut |e| {
        p.event(e)
    })?)
}

fn stats(a: StatsArgs) -> anyhow::Result<()> {
    let selected = super::select_device(a.ext.device)?;
    eprintln!("device: {}", selected.info);
    let ext = extractor(&a.ext, &a.data, &selected)?;
    let spec = match (a.channels, a.size) {
        (None, None) => None,
        (c, s) => {
            let d = a.data.load(a.split)?;
            Some([c.unwrap_or(d.channels), s.unwrap_or(d.height)])
        }
    };
    let mut p = SetupProgress::default();
    let r = setup::compute_reference(
        ext.as_ref(),
        &a.data,
        a.split,
        spec,
        a.max_images,
        a.keep,
        &mut |e| p.event(e),
    )?;
    drop(p);
    let out = a.out.unwrap_or_else(|| {
        setup::reference_path(&a.data, a.split, r.meta.image, &r.meta.extractor)
    });
    r.save(&out)?;
    eprintln!(
        "{} images in {:.1} s ({:.1} images/s)",
        r.meta.n,
        r.meta.seconds,
        r.meta.n as f64 / r.meta.seconds.max(1e-9)
    );
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "path": out, "meta": r.meta,
        }))?
    );
    Ok(())
}

fn nll_cmd(a: NllArgs) -> anyhow::Result<()> {
    if a.n == 0 || a.batch_size == 0 {
        return Err(user_err("--n and --batch-size must be at least 1"));
    }
    let selected = super::select_device(a.device)?;
    eprintln!("device: {}", selected.info);
    let cfg = nll::NllConfig {
        n: a.n,
        batch_size: a.batch_size,
        seed: a.seed,
        clip_denoised: !a.no_clip,
        fixed_variance: a.fixed_variance,
    };
    let pb = bar(0, "nll");
    let (result, on) = crate::rundir::nll_run(
        &a.run_dir,
        a.weights,
        a.data.as_ref(),
        a.split,
        &cfg,
        &selected.device,
        &mut |done, total| {
            pb.set_length(total);
            pb.set_position(done)
        },
    )?;
    pb.finish_and_clear();
    eprintln!(
        "NLL {:.4} bits/dim over {} images of {} (T = {}, {} variance)",
        result.bits_per_dim, result.images, on.data, result.timesteps, result.variance
    );
    let json = serde_json::to_string_pretty(&serde_json::json!({ "nll": result, "on": on }))?;
    if let Some(p) = &a.out {
        crate::train::write_atomic(p, json.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    println!("{json}");
    Ok(())
}

fn fid(a: FidArgs) -> anyhow::Result<()> {
    if a.n < 2 {
        return Err(user_err("--n must be at least 2"));
    }
    let selected = super::select_device(a.ext.device)?;
    eprintln!("device: {}", selected.info);
    let kid_cfg = (a.kid_subsets > 0).then_some(KidConfig {
        subsets: a.kid_subsets,
        subset_size: a.kid_subset_size,
        seed: a.sampling.seed,
    });
    let run = match &a.run_dir {
        Some(dir) => Some(RunFiles::read(dir)?),
        None => None,
    };
    let ref_data = a
        .ref_data
        .clone()
        .or_else(|| run.as_ref().map(|(_, f)| f.data.clone()))
        .or_else(|| a.data.clone())
        .unwrap_or(DataSource::FashionMnist(None));
    let ext = extractor(&a.ext, &ref_data, &selected)?;
    let reference = |spec| match &a.reference {
        Some(p) => Ok(Reference::load(p, Some(ext.id()))?),
        None => cached_reference(ext.as_ref(), &ref_data, a.ref_split, spec),
    };
    let score: Score = if let Some(dir) = &a.run_dir {
        let (genome, _) = run.expect("read above");
        let reference = reference([genome.image.channels, genome.image.size, genome.image.size])?;
        let pb = bar(a.n as u64, "generate+score");
        let s = crate::rundir::score_run(
            dir,
            a.sampling.weights,
            &a.sampling.generation(a.n),
            ext.as_ref(),
            &reference,
            kid_cfg,
            &selected.device,
            &mut |k| pb.set_position(k as u64),
        )?;
        pb.finish_and_clear();
        s
    } else {
        let (d, what) = if let Some(dir) = &a.images {
            let d = read_image_folder(dir)?;
            (d, dir.display().to_string())
        } else if let Some(data) = &a.data {
            let d = data.load(a.split)?;
            (d, format!("{data} ({})", a.split.name()))
        } else {
            return Err(user_err(
                "nothing to score: give a RUN_DIR, --images DIR or --data SOURCE",
            ));
        };
        let mut d = d;
        d.truncate(a.n);
        let reference = reference([d.channels, d.height, d.width])?;
        let pb = bar(d.len as u64, "features");
        let s = score_dataset(ext.as_ref(), &reference, &d, what, kid_cfg, &mut |k| {
            pb.set_position(k as u64)
        })?;
        pb.finish_and_clear();
        s
    };
    for w in &score.warnings {
        eprintln!("warning: {w}");
    }
    let kid = score
        .kid
        .as_ref()
        .map(|k| format!(", {} {:.6} ± {:.6}", score.kernel_metric, k.mean, k.std))
        .unwrap_or_default();
    eprintln!(
        "{} {:.4}{kid} (N = {}, {:.1} s, {:.1} images/s)",
        score.metric, score.value, score.n, score.seconds, score.images_per_second
    );
    let json = serde_json::to_string_pretty(&score)?;
    if let Some(p) = &a.out {
        crate::train::write_atomic(p, json.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    println!("{json}");
    Ok(())
}

/// What scores images of `image`'s shape from `data`: the extractor the flags ask for (the
/// dataset's classifier trained on first use) and `data`'s cached training-split statistics.
pub fn scoring(
    a: &ExtractorArgs,
    data: &DataSource,
    image: crate::genome::ImageSpec,
    selected: &SelectedDevice,
) -> anyhow::Result<(Box<dyn FeatureExtractor>, Reference)> {
    ensure_extractor(a, data)?;
    let ext = extractor(a, data, selected)?;
    let spec = [image.channels, image.size, image.size];
    let reference = cached_reference(ext.as_ref(), data, Split::Train, spec)?;
    Ok((ext, reference))
}

/// [`setup::ensure_extractor`]: train the dataset's classifier on first use, saying why.
fn ensure_extractor(a: &ExtractorArgs, data: &DataSource) -> anyhow::Result<()> {
    let spec = a.spec();
    let mut p = SetupProgress::default();
    let mut said = false;
    let selected = super::select_device(a.device)?;
    let trained = setup::ensure_extractor(&spec, data, &selected.device, &mut |e| {
        if !said && matches!(e, SetupEvent::TrainingClassifier { .. }) {
            said = true;
            eprintln!(
                "no Inception weights and no classifier for {data}: training the classifier \
                 once (scores will be FD-classifier; `diffnas weights fetch inception` gives FID)"
            );
        }
        p.event(e)
    })?;
    drop(p);
    if let Some(t) = trained {
        eprintln!(
            "test accuracy {:.2}%; saved {}",
            100.0 * t.meta.test_accuracy,
            t.path.display()
        );
    }
    Ok(())
}

fn classifier_cmd(a: TrainClassifierArgs) -> anyhow::Result<()> {
    let selected = super::select_device(a.device)?;
    eprintln!("device: {}", selected.info);
    let request = ClassifierRequest {
        data: a.data.clone(),
        training: ClassifierTraining {
            epochs: a.epochs,
            batch_size: a.batch_size,
            lr: a.lr,
            seed: a.seed,
        },
        max_images: a.max_images,
        out: a.out.clone(),
    };
    let t0 = std::time::Instant::now();
    let mut p = SetupProgress::default();
    let t = setup::train_dataset_classifier(&request, &selected.device, &mut |e| p.event(e))?;
    drop(p);
    eprintln!(
        "test accuracy {:.2}% after {} epochs in {:.0} s; saved {}",
        100.0 * t.meta.test_accuracy,
        t.meta.epochs,
        t0.elapsed().as_secs_f64(),
        t.path.display()
    );
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "path": t.path, "meta": t.meta, "extractor": t.extractor.id(),
        }))?
    );
    Ok(())
}
