//! Scoring generated samples: FID (or FD-classifier) and KID of a denoiser against cached
//! reference statistics, generating and extracting in batches so that no more than one batch of
//! images is ever held.
//!
//! RFID (ALGORITHMS.md section 5) is this score with the fixed proxy settings of
//! [`GenerationConfig::rfid`]: N = 5,000 samples, DDIM 50 steps (eta 0), seed 0, EMA weights.
//! Every candidate of a search gets exactly these settings, so the numbers rank; they are
//! biased upward against a 50k FID and are never mixed with FIDs at another N.

use super::ExtractorId;
use super::extract::{FeatureExtractor, FeatureSummary, ImageSource, SummaryError, summarise};
use super::reference::Reference;
use super::stats::{Frechet, Kid, StatsError, frechet_distance, kid};
use crate::diffusion::{
    Denoiser, NoiseSchedule, SamplerKind, SamplingRun, make_sampler, to_pixels,
};
use crate::precision::Precision;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

/// How samples are drawn for a score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationConfig {
    pub n: usize,
    pub sampler: SamplerKind,
    pub steps: usize,
    pub eta: f64,
    pub seed: u64,
    /// Images generated per batch.
    pub batch_size: usize,
    /// What the denoiser's convolutions and attention matmuls compute in (`crate::precision`;
    /// written only when not f32, so scores and proxies of f32 runs read as before).
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

impl GenerationConfig {
    /// The RFID proxy settings.
    pub fn rfid() -> Self {
        GenerationConfig {
            n: 5000,
            sampler: SamplerKind::Ddim,
            steps: 50,
            eta: 0.0,
            seed: 0,
            batch_size: 100,
            precision: Precision::F32,
        }
    }
}

/// KID settings: `subsets` random subsets of `subset_size` rows (FID.md: 100 x 1,000).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KidConfig {
    pub subsets: usize,
    pub subset_size: usize,
    pub seed: u64,
}

impl KidConfig {
    /// FID.md's KID: 100 subsets of 1,000 rows.
    pub const SUBSETS: usize = 100;
    pub const SUBSET_SIZE: usize = 1000;
}

impl Default for KidConfig {
    fn default() -> Self {
        KidConfig {
            subsets: Self::SUBSETS,
            subset_size: Self::SUBSET_SIZE,
            seed: 0,
        }
    }
}

/// Most feature rows of the scored images kept in memory for KID (20,000 x 2048 f32 is
/// 160 MB); beyond that, KID's subsets come from the first 20,000.
pub const KID_MAX_ROWS: usize = 20_000;

/// What the reference statistics were.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReferenceInfo {
    pub data: String,
    pub split: String,
    pub n: usize,
}

/// A score, with everything needed to reproduce or compare it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Score {
    /// `FID`, `FD-classifier`, ...
    pub metric: String,
    pub value: f64,
    /// `KID`, `KID-classifier`, ...
    pub kernel_metric: String,
    pub kid: Option<Kid>,
    pub n: usize,
    /// The generation settings, when the images were generated.
    pub generation: Option<GenerationConfig>,
    /// Where the images came from when they were not generated (a folder, a data split).
    pub images: Option<String>,
    pub extractor: ExtractorId,
    pub reference: ReferenceInfo,
    pub frechet: Frechet,
    pub seconds: f64,
    pub images_per_second: f64,
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("{0}")]
    Stats(#[from] StatsError),
    #[error("images: {0}")]
    Source(String),
    #[error("the model produced non-finite samples")]
    NonFinite,
    #[error("invalid generation settings: {0}")]
    Config(String),
}

impl<E: std::fmt::Display> From<SummaryError<E>> for ScoreError {
    fn from(e: SummaryError<E>) -> Self {
        match e {
            SummaryError::Source(s) => ScoreError::Source(s.to_string()),
            SummaryError::Stats(s) => ScoreError::Stats(s),
        }
    }
}

/// Compare a feature summary with the reference: Fréchet distance and KID.
pub fn compare(
    summary: &FeatureSummary,
    ext: &ExtractorId,
    reference: &Reference,
    kid_cfg: Option<KidConfig>,
) -> Result<(Frechet, Option<Kid>), StatsError> {
    let fd = frechet_distance(&summary.stats, &reference.stats)?;
    let kid = match kid_cfg {
        Some(k) if summary.kept.len() >= 2 * ext.dim && reference.features.len() >= 2 * ext.dim => {
            Some(kid(
                &summary.kept,
                &reference.features,
                ext.dim,
                k.subsets,
                k.subset_size,
                k.seed,
            )?)
        }
        _ => None,
    };
    Ok((fd, kid))
}

/// Score images from any source (`next(start, count)` -> u8 pixels and shape).
pub fn score_images<E: std::fmt::Display>(
    ext: &dyn FeatureExtractor,
    reference: &Reference,
    n: usize,
    kid_cfg: Option<KidConfig>,
    next: &mut ImageSource<'_, E>,
    on_done: &mut dyn FnMut(usize),
) -> Result<Score, ScoreError> {
    let t0 = std::time::Instant::now();
    // KID draws its subsets from all scored images (up to KID_MAX_ROWS), not from a prefix.
    let keep = kid_cfg.map_or(0, |_| n.min(KID_MAX_ROWS));
    let summary = summarise(ext, n, keep, next, on_done)?;
    score_summary(&summary, ext, reference, kid_cfg, t0)
}

/// The score of dataset `d`'s images (a folder or a split), described as `what`; warns when
/// they are not the shape the reference was computed at.
pub fn score_dataset(
    ext: &dyn FeatureExtractor,
    reference: &Reference,
    d: &crate::data::Dataset,
    what: String,
    kid_cfg: Option<KidConfig>,
    on_done: &mut dyn FnMut(usize),
) -> Result<Score, ScoreError> {
    let mut next = super::extract::dataset_source(d, 0);
    let mut s = score_images(ext, reference, d.len, kid_cfg, &mut next, on_done)?;
    let spec = [d.channels, d.height, d.width];
    if reference.meta.image != spec {
        s.warnings.push(format!(
            "images are {spec:?} but the reference was computed at {:?}",
            reference.meta.image
        ));
    }
    s.images = Some(what);
    Ok(s)
}

/// The score of extracted features (`t0`: when the work started, for its timing).
fn score_summary(
    summary: &FeatureSummary,
    ext: &dyn FeatureExtractor,
    reference: &Reference,
    kid_cfg: Option<KidConfig>,
    t0: std::time::Instant,
) -> Result<Score, ScoreError> {
    let (frechet, kid) = compare(summary, ext.id(), reference, kid_cfg)?;
    let seconds = t0.elapsed().as_secs_f64();
    let mut warnings = frechet.warnings.clone();
    if let Some(k) = &kid
        && k.subset_size < kid_cfg.map_or(0, |c| c.subset_size)
    {
        warnings.push(format!(
            "KID subsets have {} rows (fewer images than the requested subset size)",
            k.subset_size
        ));
    }
    Ok(Score {
        metric: ext.id().distance.clone(),
        value: frechet.value,
        kernel_metric: ext.id().kernel_distance.clone(),
        kid,
        n: summary.stats.n,
        generation: None,
        images: None,
        extractor: ext.id().clone(),
        reference: ReferenceInfo {
            data: reference.meta.data.clone(),
            split: reference.meta.split.clone(),
            n: reference.meta.n,
        },
        frechet,
        seconds,
        images_per_second: summary.stats.n as f64 / summary.seconds.max(1e-9),
        warnings,
    })
}

/// Generate `cfg.n` samples from `model` and extract their features: the statistics of all
/// of them and the first `keep` feature rows. `on_done(k)` reports images done.
#[allow(clippy::too_many_arguments)]
pub fn generated_features<D: Denoiser + ?Sized>(
    model: &D,
    schedule: NoiseSchedule,
    image_shape: [usize; 3],
    cfg: &GenerationConfig,
    ext: &dyn FeatureExtractor,
    keep: usize,
    device: &Device,
    on_done: &mut dyn FnMut(usize),
) -> Result<FeatureSummary, ScoreError> {
    if cfg.n < 2 || cfg.steps == 0 || cfg.batch_size == 0 {
        return Err(ScoreError::Config(format!(
            "n = {} (at least 2), steps = {} and batch size = {} (at least 1)",
            cfg.n, cfg.steps, cfg.batch_size
        )));
    }
    if cfg.steps > schedule.num_timesteps() {
        return Err(ScoreError::Config(format!(
            "{} sampling steps exceed the {} training timesteps",
            cfg.steps,
            schedule.num_timesteps()
        )));
    }
    cfg.precision.check(device).map_err(ScoreError::Config)?;
    let sampler = make_sampler(cfg.sampler, schedule, cfg.steps, cfg.eta);
    let [c, h, w] = image_shape;
    let mut next = |start: usize, count: usize| -> Result<(Vec<u8>, [usize; 4]), ScoreError> {
        let mut pixels = Vec::with_capacity(count * c * h * w);
        let mut first = start;
        while first < start + count {
            let k = cfg.batch_size.min(start + count - first);
            let run = SamplingRun::new(
                sampler.as_ref(),
                cfg.seed,
                first as u64,
                k,
                image_shape,
                device,
            );
            // The denoiser in the configured precision; the extractor that follows in f32.
            let x = {
                let _precision = crate::precision::scope(cfg.precision);
                run.run(model, &mut |_, _| {})
            };
            let v = x
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| ScoreError::Source(format!("{e:?}")))?;
            if v.iter().any(|x| !x.is_finite()) {
                return Err(ScoreError::NonFinite);
            }
            pixels.extend(to_pixels(&v));
            first += k;
        }
        Ok((pixels, [count, c, h, w]))
    };
    Ok(summarise(ext, cfg.n, keep, &mut next, on_done)?)
}

/// Generate `cfg.n` samples from `model` and score them. `on_done(k)` reports images scored.
#[allow(clippy::too_many_arguments)]
pub fn score_denoiser<D: Denoiser + ?Sized>(
    model: &D,
    schedule: NoiseSchedule,
    image_shape: [usize; 3],
    cfg: &GenerationConfig,
    ext: &dyn FeatureExtractor,
    reference: &Reference,
    kid_cfg: Option<KidConfig>,
    device: &Device,
    on_done: &mut dyn FnMut(usize),
) -> Result<Score, ScoreError> {
    let t0 = std::time::Instant::now();
    let keep = kid_cfg.map_or(0, |_| cfg.n.min(KID_MAX_ROWS));
    let summary = generated_features(
        model,
        schedule,
        image_shape,
        cfg,
        ext,
        keep,
        device,
        on_done,
    )?;
    let mut score = score_summary(&summary, ext, reference, kid_cfg, t0)?;
    score.generation = Some(cfg.clone());
    Ok(score)
}

/// RFID: [`score_denoiser`] with the fixed proxy settings of [`GenerationConfig::rfid`]
/// (N = 5,000, DDIM 50, eta 0, seed 0) and KID over 100 subsets of 1,000. What a search's
/// trial evaluator calls on a candidate's EMA weights.
pub fn rfid<D: Denoiser + ?Sized>(
    model: &D,
    schedule: NoiseSchedule,
    image_shape: [usize; 3],
    ext: &dyn FeatureExtractor,
    reference: &Reference,
    device: &Device,
    on_done: &mut dyn FnMut(usize),
) -> Result<Score, ScoreError> {
    score_denoiser(
        model,
        schedule,
        image_shape,
        &GenerationConfig::rfid(),
        ext,
        reference,
        Some(KidConfig::default()),
        device,
        on_done,
    )
}
