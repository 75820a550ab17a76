//! `diffnas eval ...` and `diffnas weights ...`: reference statistics, FID / FD-classifier and
//! KID of runs, folders and data splits, the offline classifier, and the Inception download.

use super::progress::{bar, note};
use super::sample::SamplingArgs;
use super::user_err;
use crate::data::{DataSource, Dataset, Split, read_image_folder};
use crate::device::{DeviceChoice, SelectedDevice};
use crate::diffusion::NoiseSchedule;
use crate::eval::classifier::{
    ClassifierEvent, ClassifierMeta, ClassifierTraining, LabelledImages, train_classifier,
};
use crate::eval::extract::{
    ClassifierExtractor, FeatureExtractor, INCEPTION_FILE, INCEPTION_SHA256_PREFIX,
    InceptionExtractor, dataset_source, summarise,
};
use crate::eval::fetch::{INCEPTION_URL, download};
use crate::eval::reference::Reference;
use crate::eval::rfid::{GenerationConfig, KidConfig, Score, score_denoiser, score_images};
use crate::rundir::{LoadedRun, RunFiles, load_denoiser};
use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Where diffnas keeps downloaded weights, classifiers and statistics: `$DIFFNAS_HOME`, else
/// `$XDG_CACHE_HOME/diffnas`, else `~/.cache/diffnas`.
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("DIFFNAS_HOME") {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(x).join("diffnas");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("diffnas")
}

/// Default location of pytorch-fid's Inception weights.
pub fn default_inception_path() -> PathBuf {
    home().join("weights").join(INCEPTION_FILE)
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Default location of a dataset's classifier.
pub fn default_classifier_path(data: &DataSource) -> PathBuf {
    home()
        .join("classifiers")
        .join(format!("{}.bpk", slug(&data.to_string())))
}

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
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExtractorChoice {
    /// Inception when its weights are found, else the dataset's classifier.
    Auto,
    /// pytorch-fid's Inception-v3: FID.
    Inception,
    /// The dataset's classifier (`eval train-classifier`): FD-classifier.
    Classifier,
    /// Inception with formula weights, for testing and benchmarks only: FD-synthetic.
    Synthetic,
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
    pub split: SplitArg,
    /// Convert images to this many channels first (as a genome's image spec would).
    #[arg(long)]
    pub channels: Option<usize>,
    /// Pad/resize images to this size first.
    #[arg(long)]
    pub size: Option<usize>,
    /// Use only the first N images.
    #[arg(long)]
    pub max_images: Option<usize>,
    /// Feature rows kept for KID.
    #[arg(long, default_value_t = 10_000)]
    pub keep: usize,
    /// Output file [default: $DIFFNAS_HOME/stats/<data>-<split>-<CxHxW>-<extractor>.safetensors].
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub ext: ExtractorArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    Train,
    Test,
}

impl SplitArg {
    fn split(self) -> Split {
        match self {
            SplitArg::Train => Split::Train,
            SplitArg::Test => Split::Test,
        }
    }
    fn name(self) -> &'static str {
        match self {
            SplitArg::Train => "train",
            SplitArg::Test => "test",
        }
    }
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
    pub split: SplitArg,
    /// Number of images (generated, or the first N of the folder/split).
    #[arg(long, default_value_t = 10_000)]
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
    pub ref_split: SplitArg,
    /// KID subsets and rows per subset (FID.md: 100 x 1,000); --kid-subsets 0 skips KID.
    #[arg(long, default_value_t = 100)]
    pub kid_subsets: usize,
    #[arg(long, default_value_t = 1000)]
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
    #[arg(long, default_value_t = 4)]
    pub epochs: usize,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
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
            if dest.is_file() {
                let sha = crate::eval::extract::sha256_file(&dest)?;
                if sha.starts_with(INCEPTION_SHA256_PREFIX) {
                    println!("{} is already there (SHA-256 {sha})", dest.display());
                    return Ok(0);
                }
                return Err(user_err(format!(
                    "{} exists but its SHA-256 {sha} does not start with {INCEPTION_SHA256_PREFIX}; \
                     remove it and fetch again",
                    dest.display()
                )));
            }
            eprintln!("downloading {} -> {}", a.url, dest.display());
            let pb = indicatif::ProgressBar::new(0);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} eta {eta}",
                )
                .expect("static template"),
            );
            let sha = download(
                &a.url,
                &dest,
                INCEPTION_SHA256_PREFIX,
                Duration::from_secs(a.timeout),
                &mut |done, total| {
                    if let Some(t) = total {
                        pb.set_length(t);
                    }
                    pb.set_position(done);
                },
            );
            pb.finish_and_clear();
            let sha = sha?;
            println!("saved {} (SHA-256 {sha})", dest.display());
            Ok(0)
        }
    }
}

/// Build the extractor for `data` (used to find its classifier) per the flags.
pub fn extractor(
    a: &ExtractorArgs,
    data: &DataSource,
    selected: &SelectedDevice,
) -> anyhow::Result<Box<dyn FeatureExtractor>> {
    let device = &selected.device;
    let inception = a.inception.clone().unwrap_or_else(default_inception_path);
    let converted = inception.with_extension("bpk");
    let classifier = a
        .classifier
        .clone()
        .unwrap_or_else(|| default_classifier_path(data));
    let have_inception = inception.is_file() || converted.is_file();
    let choice = match a.extractor {
        ExtractorChoice::Auto if have_inception => ExtractorChoice::Inception,
        ExtractorChoice::Auto if classifier.is_file() => ExtractorChoice::Classifier,
        ExtractorChoice::Auto => {
            return Err(user_err(format!(
                "no feature extractor: neither the Inception weights ({}) nor a classifier for \
                 {data} ({}) exist.\n  Run `diffnas weights fetch inception` (FID), or \
                 `diffnas eval train-classifier --data {data}` (FD-classifier, works offline).",
                inception.display(),
                classifier.display()
            )));
        }
        c => c,
    };
    let ext: Box<dyn FeatureExtractor> = match choice {
        ExtractorChoice::Inception => {
            let path = if inception.is_file() {
                inception
            } else if converted.is_file() {
                converted
            } else {
                return Err(user_err(format!(
                    "{}: no such file; run `diffnas weights fetch inception` or pass --inception",
                    inception.display()
                )));
            };
            let e = InceptionExtractor::load(&path, device).map_err(|e| user_err(e.to_string()))?;
            Box::new(match a.extract_batch {
                Some(b) => e.with_batch_size(b),
                None => e,
            })
        }
        ExtractorChoice::Classifier => {
            Box::new(ClassifierExtractor::load(&classifier, device).map_err(|e| {
                user_err(format!(
                    "{e}\n  (train one with `diffnas eval train-classifier --data {data}`)"
                ))
            })?)
        }
        ExtractorChoice::Synthetic => {
            let e = InceptionExtractor::synthetic(device);
            Box::new(match a.extract_batch {
                Some(b) => e.with_batch_size(b),
                None => e,
            })
        }
        ExtractorChoice::Auto => unreachable!("resolved above"),
    };
    eprintln!("features: {}", ext.id());
    Ok(ext)
}

fn load_split(data: &DataSource, split: Split) -> anyhow::Result<Dataset> {
    data.load(split).map_err(|e| user_err(e.to_string()))
}

/// Compute the statistics of a dataset split with `ext`, at image spec `[c, h, w]`.
pub fn compute_reference(
    ext: &dyn FeatureExtractor,
    data: &DataSource,
    split: SplitArg,
    spec: Option<[usize; 2]>,
    max_images: Option<usize>,
    keep: usize,
) -> anyhow::Result<Reference> {
    let mut d = load_split(data, split.split())?;
    if let Some([c, s]) = spec {
        d = d.to_spec(c, s).map_err(|e| user_err(e.to_string()))?;
    }
    if let Some(m) = max_images {
        d.truncate(m);
    }
    let pb = bar(d.len as u64, "features");
    let mut next = dataset_source(&d, 0);
    let s = summarise(ext, d.len, keep, &mut next, &mut |k| {
        pb.set_position(k as u64)
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    pb.finish_and_clear();
    Ok(Reference::from_summary(
        s,
        ext.id(),
        &data.to_string(),
        split.name(),
        [d.channels, d.height, d.width],
    ))
}

fn stats(a: StatsArgs) -> anyhow::Result<()> {
    let selected = super::select_device(a.ext.device)?;
    eprintln!("device: {}", selected.info);
    let ext = extractor(&a.ext, &a.data, &selected)?;
    let spec = match (a.channels, a.size) {
        (None, None) => None,
        (c, s) => {
            let d = load_split(&a.data, a.split.split())?;
            Some([c.unwrap_or(d.channels), s.unwrap_or(d.height)])
        }
    };
    let r = compute_reference(ext.as_ref(), &a.data, a.split, spec, a.max_images, a.keep)?;
    let out = a.out.unwrap_or_else(|| {
        home().join("stats").join(Reference::file_name(
            &r.meta.data,
            &r.meta.split,
            r.meta.image,
            &r.meta.extractor,
        ))
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

/// The reference for (data, split, spec, extractor): the cached file, else computed and cached.
pub fn cached_reference(
    ext: &dyn FeatureExtractor,
    data: &DataSource,
    split: SplitArg,
    spec: [usize; 3],
) -> anyhow::Result<Reference> {
    let path = home().join("stats").join(Reference::file_name(
        &data.to_string(),
        split.name(),
        spec,
        ext.id(),
    ));
    if path.is_file() {
        eprintln!("reference: {}", path.display());
        return Ok(Reference::load(&path, Some(ext.id()))?);
    }
    eprintln!(
        "reference statistics for {data} ({}) not cached yet; computing them once -> {}",
        split.name(),
        path.display()
    );
    let r = compute_reference(ext, data, split, Some([spec[0], spec[1]]), None, 10_000)?;
    r.save(&path)?;
    Ok(r)
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
    let score: Score = if let Some(dir) = &a.run_dir {
        let (genome, files) = run.expect("read above");
        let spec = [genome.image.channels, genome.image.size, genome.image.size];
        let reference = match &a.reference {
            Some(p) => Reference::load(p, Some(ext.id()))?,
            None => cached_reference(ext.as_ref(), &ref_data, a.ref_split, spec)?,
        };
        let LoadedRun {
            model,
            weights: wpath,
            ..
        } = load_denoiser(dir, a.sampling.weights, &selected.device)?;
        eprintln!("model: {}", wpath.display());
        let schedule = NoiseSchedule::new(files.config.beta_schedule, files.config.timesteps)
            .map_err(|e| user_err(e.to_string()))?;
        let cfg = GenerationConfig {
            n: a.n,
            sampler: a.sampling.sampler,
            steps: a.sampling.steps,
            eta: a.sampling.eta,
            seed: a.sampling.seed,
            batch_size: a.sampling.batch_size,
        };
        let pb = bar(a.n as u64, "generate+score");
        let s = score_denoiser(
            &model,
            schedule,
            spec,
            &cfg,
            ext.as_ref(),
            &reference,
            kid_cfg,
            &selected.device,
            &mut |k| pb.set_position(k as u64),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        pb.finish_and_clear();
        let mut s = s;
        s.images = Some(format!(
            "{} ({:?} weights)",
            dir.display(),
            a.sampling.weights
        ));
        s
    } else {
        let (d, what) = if let Some(dir) = &a.images {
            let d = read_image_folder(dir).map_err(|e| user_err(e.to_string()))?;
            (d, dir.display().to_string())
        } else if let Some(data) = &a.data {
            let d = load_split(data, a.split.split())?;
            (d, format!("{data} ({})", a.split.name()))
        } else {
            return Err(user_err(
                "nothing to score: give a RUN_DIR, --images DIR or --data SOURCE",
            ));
        };
        let mut d = d;
        d.truncate(a.n);
        let spec = [d.channels, d.height, d.width];
        let reference = match &a.reference {
            Some(p) => Reference::load(p, Some(ext.id()))?,
            None => cached_reference(ext.as_ref(), &ref_data, a.ref_split, spec)?,
        };
        if reference.meta.image != spec {
            eprintln!(
                "warning: images are {:?} but the reference was computed at {:?}",
                spec, reference.meta.image
            );
        }
        let pb = bar(d.len as u64, "features");
        let mut next = dataset_source(&d, 0);
        let mut s = score_images(
            ext.as_ref(),
            &reference,
            d.len,
            kid_cfg,
            &mut next,
            &mut |k| pb.set_position(k as u64),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        pb.finish_and_clear();
        s.images = Some(what);
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

/// With `--extractor auto` and neither the Inception weights nor a classifier for `data` on
/// disk, train the classifier now (once) when `data` has labels, so that a search works
/// offline on built-in defaults. Does nothing otherwise.
pub fn ensure_extractor(a: &ExtractorArgs, data: &DataSource) -> anyhow::Result<()> {
    let inception = a.inception.clone().unwrap_or_else(default_inception_path);
    let classifier = a
        .classifier
        .clone()
        .unwrap_or_else(|| default_classifier_path(data));
    if a.extractor != ExtractorChoice::Auto
        || inception.is_file()
        || inception.with_extension("bpk").is_file()
        || classifier.is_file()
    {
        return Ok(());
    }
    let labelled = data
        .load(Split::Test)
        .map(|d| d.labels.is_some())
        .unwrap_or(false);
    if !labelled {
        return Ok(());
    }
    eprintln!(
        "no Inception weights ({}) and no classifier for {data}: training the classifier once \
         (scores will be FD-classifier; `diffnas weights fetch inception` gives FID)",
        inception.display()
    );
    classifier_cmd(TrainClassifierArgs {
        data: data.clone(),
        epochs: 4,
        batch_size: 128,
        lr: 1e-3,
        seed: 0,
        max_images: None,
        out: Some(classifier),
        device: a.device,
    })
}

fn classifier_cmd(a: TrainClassifierArgs) -> anyhow::Result<()> {
    let selected = super::select_device(a.device)?;
    eprintln!("device: {}", selected.info);
    let mut train = load_split(&a.data, Split::Train)?;
    let test = load_split(&a.data, Split::Test)?;
    let (Some(train_labels), Some(test_labels)) = (train.labels.clone(), test.labels.clone())
    else {
        return Err(user_err(format!(
            "{}: the dataset has no labels; a classifier needs a labelled dataset",
            a.data
        )));
    };
    if let Some(m) = a.max_images {
        train.truncate(m);
    }
    let classes = train_labels
        .iter()
        .chain(&test_labels)
        .max()
        .map_or(0, |m| *m as usize + 1);
    let (c, h, w) = (train.channels, train.height, train.width);
    // The network pools twice: pad to a multiple of 4 (28 -> 28, 30 -> 32).
    let side = h.max(w).div_ceil(4) * 4;
    let (train, test) = if (h, w) != (side, side) {
        (
            train
                .to_spec(c, side)
                .map_err(|e| user_err(e.to_string()))?,
            test.to_spec(c, side).map_err(|e| user_err(e.to_string()))?,
        )
    } else {
        (train, test)
    };
    let cfg = ClassifierTraining {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        seed: a.seed,
    };
    if cfg.epochs == 0 || cfg.batch_size == 0 || cfg.batch_size > train.len {
        return Err(user_err(format!(
            "--epochs must be at least 1 and --batch-size between 1 and {} (the training images)",
            train.len
        )));
    }
    let tl = &train_labels[..train.len];
    let tr = LabelledImages {
        pixels: &train.pixels,
        labels: tl,
        shape: [train.len, c, side, side],
    };
    let te = LabelledImages {
        pixels: &test.pixels,
        labels: &test_labels,
        shape: [test.len, c, side, side],
    };
    let t0 = std::time::Instant::now();
    let ad = selected.device.clone().autodiff();
    let pb = bar(
        ((train.len / cfg.batch_size) * cfg.epochs) as u64,
        "classifier",
    );
    let (net, acc) = train_classifier(&tr, &te, classes, &cfg, &ad, &mut |e| match e {
        ClassifierEvent::Step { step, loss, .. } => {
            pb.set_position(*step as u64);
            pb.set_message(format!("loss {loss:.4}"));
        }
        ClassifierEvent::Epoch {
            epoch,
            test_accuracy,
        } => note(
            &pb,
            format!("epoch {epoch}: test accuracy {:.2}%", 100.0 * test_accuracy),
        ),
    });
    pb.finish_and_clear();
    let out = a.out.unwrap_or_else(|| default_classifier_path(&a.data));
    let meta = ClassifierMeta {
        input: [c, side, side],
        classes,
        data: a.data.to_string(),
        train_images: train.len,
        test_accuracy: acc,
        epochs: cfg.epochs,
        seed: cfg.seed,
    };
    let net = burn::module::Module::valid(&net);
    let ext = ClassifierExtractor::save(net, meta.clone(), &out, &selected.device)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!(
        "test accuracy {:.2}% after {} epochs in {:.0} s; saved {}",
        100.0 * acc,
        cfg.epochs,
        t0.elapsed().as_secs_f64(),
        out.display()
    );
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "path": out, "meta": meta, "extractor": ext.id(),
        }))?
    );
    Ok(())
}
