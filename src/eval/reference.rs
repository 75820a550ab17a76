//! Cached reference statistics of a dataset split: (mu, sigma) in f64, a slice of the feature
//! rows (for KID), and what they were computed from, in one safetensors file.
//!
//! The file's metadata holds the extractor's identity; loading checks it against the extractor
//! in use, so a number is never computed against statistics of another feature space.

use super::ExtractorId;
use super::extract::FeatureSummary;
use super::stats::FeatureStats;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What the statistics describe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceMeta {
    pub extractor: ExtractorId,
    /// Data source as given on the command line (`fashion-mnist`, `cifar10:PATH`, ...).
    pub data: String,
    pub split: String,
    /// Images as fed to the extractor: `[channels, height, width]`.
    pub image: [usize; 3],
    pub n: usize,
    /// Feature rows stored for KID.
    pub kept: usize,
    pub seconds: f64,
    pub created_by: String,
}

#[derive(Debug, Clone)]
pub struct Reference {
    pub meta: ReferenceMeta,
    pub stats: FeatureStats,
    pub features: Vec<f32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: not a diffnas statistics file: {message}")]
    Format { path: PathBuf, message: String },
    #[error(
        "{path}: statistics were computed with {found}, but this evaluation uses {expected}; \
         recompute them with `diffnas eval stats` (or delete the file)"
    )]
    Extractor {
        path: PathBuf,
        found: Box<ExtractorId>,
        expected: Box<ExtractorId>,
    },
}

fn le_bytes<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}

impl Reference {
    /// Statistics of a dataset split from its feature summary.
    pub fn from_summary(
        summary: FeatureSummary,
        extractor: &ExtractorId,
        data: &str,
        split: &str,
        image: [usize; 3],
    ) -> Self {
        Reference {
            meta: ReferenceMeta {
                extractor: extractor.clone(),
                data: data.into(),
                split: split.into(),
                image,
                n: summary.stats.n,
                kept: summary.kept.len() / extractor.dim.max(1),
                seconds: summary.seconds,
                created_by: format!("diffnas {}", env!("CARGO_PKG_VERSION")),
            },
            stats: summary.stats,
            features: summary.kept,
        }
    }

    /// The cache file name for these inputs.
    pub fn file_name(data: &str, split: &str, image: [usize; 3], id: &ExtractorId) -> String {
        let clean: String = data
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!(
            "{clean}-{split}-{}x{}x{}-{}.safetensors",
            image[0],
            image[1],
            image[2],
            id.slug()
        )
    }

    /// Write atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), ReferenceError> {
        let io = |e: &dyn std::fmt::Display| ReferenceError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let d = self.stats.dim;
        let mu = le_bytes(&self.stats.mu, f64::to_le_bytes);
        let sigma = le_bytes(&self.stats.sigma, f64::to_le_bytes);
        let feats = le_bytes(&self.features, f32::to_le_bytes);
        let rows = self.features.len() / d.max(1);
        let views = vec![
            (
                "mu",
                TensorView::new(Dtype::F64, vec![d], &mu).map_err(|e| io(&e))?,
            ),
            (
                "sigma",
                TensorView::new(Dtype::F64, vec![d, d], &sigma).map_err(|e| io(&e))?,
            ),
            (
                "features",
                TensorView::new(Dtype::F32, vec![rows, d], &feats).map_err(|e| io(&e))?,
            ),
        ];
        let mut info = HashMap::new();
        info.insert(
            "diffnas".to_string(),
            serde_json::to_string(&self.meta).expect("meta serialises"),
        );
        let bytes = safetensors::tensor::serialize(views, Some(info)).map_err(|e| io(&e))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io(&e))?;
        }
        let tmp = path.with_extension("safetensors.tmp");
        std::fs::write(&tmp, bytes).map_err(|e| io(&e))?;
        std::fs::rename(&tmp, path).map_err(|e| io(&e))?;
        super::extract::write_sidecar(path).map_err(|e| io(&e))?;
        Ok(())
    }

    /// Read a statistics file; with `expected`, refuse one made by another extractor.
    pub fn load(path: &Path, expected: Option<&ExtractorId>) -> Result<Self, ReferenceError> {
        let fmt = |m: String| ReferenceError::Format {
            path: path.to_path_buf(),
            message: m,
        };
        super::extract::check_sidecar(path).map_err(fmt)?;
        let bytes = std::fs::read(path).map_err(|e| ReferenceError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| fmt(e.to_string()))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| fmt(e.to_string()))?;
        let meta: ReferenceMeta = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("diffnas"))
            .ok_or_else(|| fmt("no `diffnas` metadata".into()))
            .and_then(|s| serde_json::from_str(s).map_err(|e| fmt(e.to_string())))?;
        if let Some(exp) = expected
            && *exp != meta.extractor
        {
            return Err(ReferenceError::Extractor {
                path: path.to_path_buf(),
                found: Box::new(meta.extractor),
                expected: Box::new(exp.clone()),
            });
        }
        let d = meta.extractor.dim;
        let get = |name: &str, dtype: Dtype, shape: Vec<usize>| {
            let t = st.tensor(name).map_err(|e| fmt(e.to_string()))?;
            if t.dtype() != dtype || t.shape() != shape.as_slice() {
                return Err(fmt(format!(
                    "`{name}` is {:?} {:?}, expected {dtype:?} {shape:?}",
                    t.dtype(),
                    t.shape()
                )));
            }
            Ok(t.data().to_vec())
        };
        let f64s = |b: Vec<u8>| -> Vec<f64> {
            b.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        };
        let mu = f64s(get("mu", Dtype::F64, vec![d])?);
        let sigma = f64s(get("sigma", Dtype::F64, vec![d, d])?);
        let features: Vec<f32> = get("features", Dtype::F32, vec![meta.kept, d])?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Ok(Reference {
            stats: FeatureStats {
                n: meta.n,
                dim: d,
                mu,
                sigma,
            },
            meta,
            features,
        })
    }
}
