//! Feature extractors behind one trait, and streaming extraction into statistics.
//!
//! Images travel as 8-bit `[n, c, h, w]` batches, exactly what a PNG holds, so that generated
//! samples are scored the way pytorch-fid scores saved PNGs. Batches are extracted one at a time
//! and folded into a [`StatsAccumulator`]; only the features kept for KID stay in memory.

use super::ExtractorId;
use super::classifier::{Classifier, ClassifierMeta};
use super::inception::{FidInception, TensorMap, WeightsError};
use super::stats::{FeatureStats, StatsAccumulator, StatsError};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// SHA-256 prefix of pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`.
pub const INCEPTION_SHA256_PREFIX: &str = "6726825d";
/// File name of the pytorch-fid weights.
pub const INCEPTION_FILE: &str = "pt_inception-2015-12-05-6726825d.pth";

/// A network that maps 8-bit images to feature vectors.
pub trait FeatureExtractor {
    fn id(&self) -> &ExtractorId;
    /// Images per forward pass.
    fn batch_size(&self) -> usize;
    /// Features (`n x dim`, row-major) of `pixels` shaped `[n, c, h, w]`.
    fn extract(&self, pixels: &[u8], shape: [usize; 4]) -> Vec<f32>;
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 features")
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
}

/// `<file>.sha256`: the SHA-256 (hex) of a weights file diffnas wrote, checked on load.
pub fn sidecar_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

/// Record `file`'s SHA-256 beside it.
pub fn write_sidecar(file: &Path) -> std::io::Result<String> {
    let sha = sha256_file(file)?;
    std::fs::write(sidecar_path(file), format!("{sha}\n"))?;
    Ok(sha)
}

/// Check `file` against its sidecar: Ok(Some(sha)) when it matches, Ok(None) when there is
/// no sidecar (a file from before them), and an error naming the file and both hashes when it
/// does not match.
pub fn check_sidecar(file: &Path) -> Result<Option<String>, String> {
    let Ok(text) = std::fs::read_to_string(sidecar_path(file)) else {
        crate::integrity::unchecked(file);
        return Ok(None);
    };
    let expected = text.trim();
    let found = sha256_file(file).map_err(|e| e.to_string())?;
    if found != expected {
        return Err(format!(
            "damaged: its SHA-256 is {found}, and {} recorded {expected}",
            sidecar_path(file).display()
        ));
    }
    Ok(Some(found))
}

/// The FID Inception on a device.
pub struct InceptionExtractor {
    net: FidInception,
    device: Device,
    id: ExtractorId,
    batch: usize,
}

/// What the converted (Burn-format) Inception file was made from.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ConvertedMeta {
    pub source: String,
    pub source_sha256: String,
    pub extractor: ExtractorId,
}

impl InceptionExtractor {
    pub fn new(net: FidInception, id: ExtractorId, device: &Device) -> Self {
        InceptionExtractor {
            net,
            device: device.clone(),
            id,
            batch: 50,
        }
    }

    pub fn with_batch_size(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// The formula weights: for tests and benchmarks; its distances are `FD-synthetic`.
    pub fn synthetic(device: &Device) -> Self {
        let net = FidInception::from_tensors(&TensorMap::synthetic(), device)
            .expect("synthetic weights match the network");
        Self::new(net, ExtractorId::synthetic_inception(), device)
    }

    /// Identity of a weights file from its SHA-256: `FID` only for pytorch-fid's own file.
    pub fn id_for(sha256: &str) -> ExtractorId {
        let mut id = ExtractorId::inception(sha256);
        if !sha256.starts_with(INCEPTION_SHA256_PREFIX) {
            id.kind = "inception-v3-custom-weights".into();
            id.distance = "FD-inception-custom".into();
            id.kernel_distance = "KID-inception-custom".into();
        }
        id
    }

    /// Load from pytorch-fid's `.pth` (checked strictly, then converted once to a `.bpk` beside
    /// it for fast loading) or from such a converted `.bpk`.
    pub fn load(path: &Path, device: &Device) -> Result<Self, WeightsError> {
        let read_err = |m: String| WeightsError::Read {
            origin: path.display().to_string(),
            message: m,
        };
        if path.extension().is_some_and(|e| e == "bpk") {
            let meta_path = meta_path(path);
            let meta: ConvertedMeta = std::fs::read(&meta_path)
                .map_err(|e| read_err(format!("{}: {e}", meta_path.display())))
                .and_then(|b| {
                    serde_json::from_slice(&b)
                        .map_err(|e| read_err(format!("{}: {e}", meta_path.display())))
                })?;
            check_sidecar(path).map_err(read_err)?;
            let net = FidInception::zeros(device)
                .try_load_file(path)
                .map_err(|e| read_err(e.to_string()))?;
            return Ok(Self::new(net, meta.extractor, device));
        }
        let sha = sha256_file(path).map_err(|e| read_err(e.to_string()))?;
        let id = Self::id_for(&sha);
        let converted = path.with_extension("bpk");
        if let Ok(b) = std::fs::read(meta_path(&converted))
            && let Ok(meta) = serde_json::from_slice::<ConvertedMeta>(&b)
            && meta.source_sha256 == sha
            // A damaged conversion is made again.
            && check_sidecar(&converted).is_ok()
            && let Ok(net) = FidInception::zeros(device).try_load_file(&converted)
        {
            return Ok(Self::new(net, id, device));
        }
        let tensors = TensorMap::from_pytorch(path)?;
        let net = FidInception::from_tensors(&tensors, device)?;
        // Best effort: a read-only folder only costs the next run the conversion again.
        let meta = ConvertedMeta {
            source: path.display().to_string(),
            source_sha256: sha,
            extractor: id.clone(),
        };
        if net.clone().save_file(&converted).is_ok() {
            let _ = write_sidecar(&converted);
            let _ = std::fs::write(
                meta_path(&converted),
                serde_json::to_vec_pretty(&meta).expect("meta serialises"),
            );
        }
        Ok(Self::new(net, id, device))
    }

    pub fn network(&self) -> &FidInception {
        &self.net
    }
}

/// `x.bpk` -> `x.bpk.json`.
pub fn meta_path(bpk: &Path) -> PathBuf {
    let mut s = bpk.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

/// u8 `[n, c, h, w]` -> f32 in [0, 1] on `device`.
pub fn unit_tensor(pixels: &[u8], shape: [usize; 4], device: &Device) -> Tensor<4> {
    let v: Vec<f32> = pixels.iter().map(|&p| p as f32 / 255.0).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

impl FeatureExtractor for InceptionExtractor {
    fn id(&self) -> &ExtractorId {
        &self.id
    }
    fn batch_size(&self) -> usize {
        self.batch
    }
    fn extract(&self, pixels: &[u8], shape: [usize; 4]) -> Vec<f32> {
        let x = FidInception::preprocess(unit_tensor(pixels, shape, &self.device));
        host(self.net.forward(x))
    }
}

/// The classifier feature space.
pub struct ClassifierExtractor {
    net: Classifier,
    pub meta: ClassifierMeta,
    device: Device,
    id: ExtractorId,
}

impl ClassifierExtractor {
    pub fn new(net: Classifier, meta: ClassifierMeta, sha256: &str, device: &Device) -> Self {
        ClassifierExtractor {
            net,
            meta,
            device: device.clone(),
            id: ExtractorId::classifier(sha256),
        }
    }

    /// Load `classifier.bpk` and its `classifier.bpk.json`.
    pub fn load(path: &Path, device: &Device) -> Result<Self, WeightsError> {
        let err = |p: &Path, m: String| WeightsError::Read {
            origin: p.display().to_string(),
            message: m,
        };
        let mp = meta_path(path);
        let bytes = std::fs::read(&mp).map_err(|e| err(&mp, e.to_string()))?;
        let meta: ClassifierMeta =
            serde_json::from_slice(&bytes).map_err(|e| err(&mp, e.to_string()))?;
        let sha = match check_sidecar(path).map_err(|m| err(path, m))? {
            Some(sha) => sha,
            None => sha256_file(path).map_err(|e| err(path, e.to_string()))?,
        };
        let net = Classifier::new(meta.input, meta.classes, device)
            .try_load_file(path)
            .map_err(|e| err(path, e.to_string()))?;
        Ok(Self::new(net, meta, &sha, device))
    }

    /// Save the classifier and its metadata; returns the extractor for the saved file.
    pub fn save(
        net: Classifier,
        meta: ClassifierMeta,
        path: &Path,
        device: &Device,
    ) -> Result<Self, WeightsError> {
        let err = |p: &Path, m: String| WeightsError::Read {
            origin: p.display().to_string(),
            message: m,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(dir, e.to_string()))?;
        }
        net.clone()
            .save_file(path)
            .map_err(|e| err(path, e.to_string()))?;
        let mp = meta_path(path);
        std::fs::write(&mp, serde_json::to_vec_pretty(&meta).expect("serialises"))
            .map_err(|e| err(&mp, e.to_string()))?;
        let sha = write_sidecar(path).map_err(|e| err(path, e.to_string()))?;
        Ok(Self::new(net, meta, &sha, device))
    }
}

impl FeatureExtractor for ClassifierExtractor {
    fn id(&self) -> &ExtractorId {
        &self.id
    }
    fn batch_size(&self) -> usize {
        500
    }
    fn extract(&self, pixels: &[u8], shape: [usize; 4]) -> Vec<f32> {
        let x = self.net.prepare(pixels, shape, &self.device);
        host(self.net.features(x))
    }
}

/// A batch of 8-bit images and its `[n, c, h, w]` shape.
pub type ImageBatch = (Vec<u8>, [usize; 4]);

/// Supplies images: `next(start, count)` returns images `start .. start + count`.
pub type ImageSource<'a, E> = dyn FnMut(usize, usize) -> Result<ImageBatch, E> + 'a;

/// Images `start .. start + count` of a dataset (`first` onwards), as an [`ImageSource`].
pub fn dataset_source(
    d: &crate::data::Dataset,
    first: usize,
) -> impl FnMut(usize, usize) -> Result<ImageBatch, String> + '_ {
    move |start, count| {
        let per = d.channels * d.height * d.width;
        let (start, end) = (first + start, (first + start + count).min(d.len));
        Ok((
            d.pixels[start * per..end * per].to_vec(),
            [end - start, d.channels, d.height, d.width],
        ))
    }
}

/// Statistics of a stream of images plus the first `keep` feature rows (for KID).
pub struct FeatureSummary {
    pub stats: FeatureStats,
    pub kept: Vec<f32>,
    pub seconds: f64,
}

/// Extract features of `total` images supplied in batches by `next(start, count)` (which
/// returns u8 pixels and their shape), folding them into statistics. `on_done(k)` reports
/// the number of images processed so far.
pub fn summarise<E>(
    ext: &dyn FeatureExtractor,
    total: usize,
    keep: usize,
    next: &mut ImageSource<'_, E>,
    on_done: &mut dyn FnMut(usize),
) -> Result<FeatureSummary, SummaryError<E>> {
    let t0 = std::time::Instant::now();
    let dim = ext.id().dim;
    let mut acc = StatsAccumulator::new(dim);
    let mut kept = Vec::new();
    let mut done = 0;
    while done < total {
        let count = ext.batch_size().min(total - done);
        let (pixels, shape) = next(done, count).map_err(SummaryError::Source)?;
        let f = ext.extract(&pixels, shape);
        let rows = f.len() / dim;
        if rows == 0 {
            break;
        }
        if f.iter().any(|x| !x.is_finite()) {
            return Err(SummaryError::Stats(StatsError::NonFinite(
                "extracted features",
            )));
        }
        let room = keep.saturating_sub(kept.len() / dim).min(rows);
        kept.extend_from_slice(&f[..room * dim]);
        acc.push(&f);
        done += rows;
        on_done(done);
    }
    Ok(FeatureSummary {
        stats: acc.finish().map_err(SummaryError::Stats)?,
        kept,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum SummaryError<E> {
    #[error("{0}")]
    Source(E),
    #[error("{0}")]
    Stats(StatsError),
}
