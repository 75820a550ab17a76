//! What scoring needs on disk, found or made once: diffnas's home folder, the feature
//! extractor (pytorch-fid's Inception when its weights are there, else the dataset's
//! classifier), the reference statistics cache, and the classifier itself, trained on first
//! use when the data has labels so that a search works offline on built-in defaults.

use super::classifier::{
    ClassifierEvent, ClassifierMeta, ClassifierTraining, LabelledImages, train_classifier,
};
use super::extract::{
    ClassifierExtractor, FeatureExtractor, INCEPTION_FILE, InceptionExtractor, dataset_source,
    summarise,
};
use super::reference::Reference;
use crate::data::{DataSource, Split};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The defaults of the classifier's training (`diffnas eval train-classifier`, and the
/// first-use training).
pub mod defaults {
    pub const CLASSIFIER_EPOCHS: usize = 4;
    pub const CLASSIFIER_BATCH_SIZE: usize = 128;
    pub const CLASSIFIER_LR: f64 = 1e-3;
    pub const CLASSIFIER_SEED: u64 = 0;
    /// Images kept for KID in a reference's statistics.
    pub const REFERENCE_KEEP: usize = 10_000;
    /// Images `eval fid` generates (or reads) by default.
    pub const FID_N: usize = 10_000;
    /// Connection timeout of a weights download, in seconds.
    pub const FETCH_TIMEOUT_S: u64 = 30;
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Something the user named or must provide is missing or wrong.
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Failed(String),
}

impl SetupError {
    pub fn is_bad_input(&self) -> bool {
        matches!(self, SetupError::Missing(_))
    }
}

fn missing(e: impl std::fmt::Display) -> SetupError {
    SetupError::Missing(e.to_string())
}

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

/// Where compiled GPU kernels and autotune results are kept between processes:
/// `$DIFFNAS_KERNEL_CACHE`, else `$DIFFNAS_HOME/kernel-cache`.
pub fn kernel_cache_dir() -> PathBuf {
    std::env::var_os("DIFFNAS_KERNEL_CACHE")
        .map_or_else(|| home().join("kernel-cache"), PathBuf::from)
}

/// Where to append one line per GPU autotune decision (which kernel candidate won for which
/// operation and shape): `$DIFFNAS_AUTOTUNE_LOG`, else nowhere. The file and its folders are
/// created (or the file opened for appending) here, so that a path that cannot be written is an
/// error naming it rather than a log that silently never appears.
pub fn autotune_log() -> Result<Option<PathBuf>, String> {
    let Some(path) = std::env::var_os("DIFFNAS_AUTOTUNE_LOG").filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let path = PathBuf::from(path);
    let cannot = |e: std::io::Error| {
        format!(
            "DIFFNAS_AUTOTUNE_LOG={}: cannot write it: {e}",
            path.display()
        )
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(cannot)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(cannot)?;
    Ok(Some(path))
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

/// Where a reference's statistics are cached.
pub fn reference_path(
    data: &DataSource,
    split: Split,
    spec: [usize; 3],
    ext: &super::ExtractorId,
) -> PathBuf {
    home().join("stats").join(Reference::file_name(
        &data.to_string(),
        split.name(),
        spec,
        ext,
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// Which feature extractor, and where its weights are (None: the defaults in [`home`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtractorSpec {
    pub choice: ExtractorChoice,
    pub inception: Option<PathBuf>,
    pub classifier: Option<PathBuf>,
    /// Images per forward pass (None: the extractor's own default).
    pub batch: Option<usize>,
}

impl ExtractorSpec {
    fn inception_path(&self) -> PathBuf {
        self.inception
            .clone()
            .unwrap_or_else(default_inception_path)
    }

    fn classifier_path(&self, data: &DataSource) -> PathBuf {
        self.classifier
            .clone()
            .unwrap_or_else(|| default_classifier_path(data))
    }

    /// Whether `auto` finds an extractor on disk for `data`.
    fn found(&self, data: &DataSource) -> bool {
        let inception = self.inception_path();
        inception.is_file()
            || inception.with_extension("bpk").is_file()
            || self.classifier_path(data).is_file()
    }
}

/// Build the extractor for `data` (used to find its classifier).
pub fn extractor(
    spec: &ExtractorSpec,
    data: &DataSource,
    device: &Device,
) -> Result<Box<dyn FeatureExtractor>, SetupError> {
    let inception = spec.inception_path();
    let converted = inception.with_extension("bpk");
    let classifier = spec.classifier_path(data);
    let have_inception = inception.is_file() || converted.is_file();
    let choice = match spec.choice {
        ExtractorChoice::Auto if have_inception => ExtractorChoice::Inception,
        ExtractorChoice::Auto if classifier.is_file() => ExtractorChoice::Classifier,
        ExtractorChoice::Auto => {
            return Err(missing(format!(
                "no feature extractor: neither the Inception weights ({}) nor a classifier for \
                 {data} ({}) exist.\n  Run `diffnas weights fetch inception` (FID), or \
                 `diffnas eval train-classifier --data {data}` (FD-classifier, works offline).",
                inception.display(),
                classifier.display()
            )));
        }
        c => c,
    };
    let batched = |e: InceptionExtractor| match spec.batch {
        Some(b) => e.with_batch_size(b),
        None => e,
    };
    Ok(match choice {
        ExtractorChoice::Inception => {
            let path = [inception.clone(), converted]
                .into_iter()
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    missing(format!(
                        "{}: no such file; run `diffnas weights fetch inception` or pass --inception",
                        inception.display()
                    ))
                })?;
            Box::new(batched(
                InceptionExtractor::load(&path, device).map_err(missing)?,
            ))
        }
        ExtractorChoice::Classifier => {
            Box::new(ClassifierExtractor::load(&classifier, device).map_err(|e| {
                missing(format!(
                    "{e}\n  (train one with `diffnas eval train-classifier --data {data}`)"
                ))
            })?)
        }
        ExtractorChoice::Synthetic => Box::new(batched(InceptionExtractor::synthetic(device))),
        ExtractorChoice::Auto => unreachable!("resolved above"),
    })
}

/// What happened while setting scoring up, for progress output.
pub enum SetupEvent<'a> {
    /// Feature extraction for reference statistics: `done` of `total` images.
    Features {
        done: u64,
        total: u64,
    },
    /// The reference came from this cache file.
    ReferenceCached(&'a Path),
    /// The reference is not cached: computing it once, into this file.
    ComputingReference(&'a Path),
    /// No extractor on disk: training the dataset's classifier now (steps in all).
    TrainingClassifier {
        steps: u64,
    },
    Classifier(&'a ClassifierEvent),
}

/// The statistics of a split of `data` with `ext`, at image spec `[c, s]` (None: the data's
/// own), of its first `max_images` images, keeping `keep` features for KID.
pub fn compute_reference(
    ext: &dyn FeatureExtractor,
    data: &DataSource,
    split: Split,
    spec: Option<[usize; 2]>,
    max_images: Option<usize>,
    keep: usize,
    on: &mut dyn FnMut(SetupEvent),
) -> Result<Reference, SetupError> {
    let mut d = data.load(split).map_err(missing)?;
    if let Some([c, s]) = spec {
        d = d.to_spec(c, s).map_err(missing)?;
    }
    if let Some(m) = max_images {
        d.truncate(m);
    }
    let total = d.len as u64;
    let mut next = dataset_source(&d, 0);
    let s = summarise(ext, d.len, keep, &mut next, &mut |k| {
        on(SetupEvent::Features {
            done: k as u64,
            total,
        })
    })
    .map_err(|e| SetupError::Failed(e.to_string()))?;
    Ok(Reference::from_summary(
        s,
        ext.id(),
        &data.to_string(),
        split.name(),
        [d.channels, d.height, d.width],
    ))
}

/// The reference for (data, split, spec, extractor): the cached file, else computed and cached.
pub fn cached_reference(
    ext: &dyn FeatureExtractor,
    data: &DataSource,
    split: Split,
    spec: [usize; 3],
    on: &mut dyn FnMut(SetupEvent),
) -> Result<Reference, SetupError> {
    let path = reference_path(data, split, spec, ext.id());
    if path.is_file() {
        on(SetupEvent::ReferenceCached(&path));
        return Reference::load(&path, Some(ext.id())).map_err(missing);
    }
    on(SetupEvent::ComputingReference(&path));
    let r = compute_reference(
        ext,
        data,
        split,
        Some([spec[0], spec[1]]),
        None,
        defaults::REFERENCE_KEEP,
        on,
    )?;
    r.save(&path)
        .map_err(|e| SetupError::Failed(format!("{}: {e}", path.display())))?;
    Ok(r)
}

/// How to train a dataset's classifier.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierRequest {
    pub data: DataSource,
    pub training: ClassifierTraining,
    /// Use only the first N training images.
    pub max_images: Option<usize>,
    /// Where to save it (None: [`default_classifier_path`]).
    pub out: Option<PathBuf>,
}

impl ClassifierRequest {
    /// The defaults, for `data`.
    pub fn new(data: DataSource) -> ClassifierRequest {
        ClassifierRequest {
            data,
            training: ClassifierTraining {
                epochs: defaults::CLASSIFIER_EPOCHS,
                batch_size: defaults::CLASSIFIER_BATCH_SIZE,
                lr: defaults::CLASSIFIER_LR,
                seed: defaults::CLASSIFIER_SEED,
            },
            max_images: None,
            out: None,
        }
    }
}

/// A trained classifier, saved.
pub struct TrainedClassifier {
    pub extractor: ClassifierExtractor,
    pub meta: ClassifierMeta,
    pub path: PathBuf,
}

/// Train the classifier of a labelled dataset on `device` and save it.
pub fn train_dataset_classifier(
    r: &ClassifierRequest,
    device: &Device,
    on: &mut dyn FnMut(SetupEvent),
) -> Result<TrainedClassifier, SetupError> {
    let mut train = r.data.load(Split::Train).map_err(missing)?;
    let test = r.data.load(Split::Test).map_err(missing)?;
    let (Some(train_labels), Some(test_labels)) = (train.labels.clone(), test.labels.clone())
    else {
        return Err(missing(format!(
            "{}: the dataset has no labels; a classifier needs a labelled dataset",
            r.data
        )));
    };
    if let Some(m) = r.max_images {
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
            train.to_spec(c, side).map_err(missing)?,
            test.to_spec(c, side).map_err(missing)?,
        )
    } else {
        (train, test)
    };
    let cfg = &r.training;
    if cfg.epochs == 0 || cfg.batch_size == 0 || cfg.batch_size > train.len {
        return Err(missing(format!(
            "epochs {} must be at least 1 and the batch size {} between 1 and {} (the training \
             images)",
            cfg.epochs, cfg.batch_size, train.len
        )));
    }
    let tr = LabelledImages {
        pixels: &train.pixels,
        labels: &train_labels[..train.len],
        shape: [train.len, c, side, side],
    };
    let te = LabelledImages {
        pixels: &test.pixels,
        labels: &test_labels,
        shape: [test.len, c, side, side],
    };
    on(SetupEvent::TrainingClassifier {
        steps: ((train.len / cfg.batch_size) * cfg.epochs) as u64,
    });
    let ad = device.clone().autodiff();
    let (net, acc) = train_classifier(&tr, &te, classes, cfg, &ad, &mut |e| {
        on(SetupEvent::Classifier(e))
    });
    let path = r
        .out
        .clone()
        .unwrap_or_else(|| default_classifier_path(&r.data));
    let meta = ClassifierMeta {
        input: [c, side, side],
        classes,
        data: r.data.to_string(),
        train_images: train.len,
        test_accuracy: acc,
        epochs: cfg.epochs,
        seed: cfg.seed,
    };
    let net = burn::module::Module::valid(&net);
    let extractor = ClassifierExtractor::save(net, meta.clone(), &path, device)
        .map_err(|e| SetupError::Failed(e.to_string()))?;
    Ok(TrainedClassifier {
        extractor,
        meta,
        path,
    })
}

/// With `auto` and neither the Inception weights nor a classifier for `data` on disk, train
/// the classifier now (once) when `data` has labels. Returns it when it trained one.
pub fn ensure_extractor(
    spec: &ExtractorSpec,
    data: &DataSource,
    device: &Device,
    on: &mut dyn FnMut(SetupEvent),
) -> Result<Option<TrainedClassifier>, SetupError> {
    if spec.choice != ExtractorChoice::Auto || spec.found(data) {
        return Ok(None);
    }
    let labelled = data
        .load(Split::Test)
        .map(|d| d.labels.is_some())
        .unwrap_or(false);
    if !labelled {
        return Ok(None);
    }
    let mut r = ClassifierRequest::new(data.clone());
    r.out = Some(spec.classifier_path(data));
    train_dataset_classifier(&r, device, on).map(Some)
}
