//! Metrics: feature extractors, statistics in f64, Fréchet distance, KID, RFID, cached
//! reference statistics.
//!
//! Two feature spaces, never confused in output:
//! - [`inception`]: pytorch-fid's Inception-v3 (pool_3, 2048-d). A Fréchet distance in this
//!   space with the pretrained weights is **FID**, comparable with pytorch-fid's numbers.
//! - [`classifier`]: a small CNN trained on the dataset's labels (128-d). Its distance is
//!   **FD-classifier**; it makes the search measurable where the Inception weights cannot be
//!   downloaded.
//!
//! The networks build everywhere (wasm included); statistics, files and downloads need `cli`.

pub mod classifier;
pub mod inception;
pub mod synthetic;

#[cfg(feature = "cli")]
pub mod extract;
#[cfg(feature = "cli")]
pub mod fetch;
#[cfg(feature = "cli")]
pub mod heldout;
#[cfg(feature = "cli")]
pub mod nll;
#[cfg(feature = "cli")]
pub mod reference;
#[cfg(feature = "cli")]
pub mod rfid;
#[cfg(feature = "cli")]
pub mod setup;
#[cfg(feature = "cli")]
pub mod stats;

use serde::{Deserialize, Serialize};

/// Which network produced a set of features, and with which weights. Part of every cached
/// statistics file and every metrics JSON; two feature sets are comparable only when their
/// identities are equal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtractorId {
    /// `pytorch-fid-inception-v3`, `synthetic-inception-v3` or `classifier`.
    pub kind: String,
    /// Weights identity: a SHA-256 prefix of the weights file, or `splitmix`.
    pub weights: String,
    pub dim: usize,
    /// Name of the Fréchet distance in this space: `FID`, `FD-classifier` or `FD-synthetic`.
    pub distance: String,
    /// Name of the kernel distance in this space: `KID`, `KID-classifier` or `KID-synthetic`.
    pub kernel_distance: String,
}

impl ExtractorId {
    pub fn inception(sha256: &str) -> Self {
        ExtractorId {
            kind: "pytorch-fid-inception-v3".into(),
            weights: sha256.chars().take(16).collect(),
            dim: inception::FEATURE_DIM,
            distance: "FID".into(),
            kernel_distance: "KID".into(),
        }
    }

    pub fn synthetic_inception() -> Self {
        ExtractorId {
            kind: "synthetic-inception-v3".into(),
            weights: "splitmix".into(),
            dim: inception::FEATURE_DIM,
            distance: "FD-synthetic".into(),
            kernel_distance: "KID-synthetic".into(),
        }
    }

    pub fn classifier(sha256: &str) -> Self {
        ExtractorId {
            kind: "classifier".into(),
            weights: sha256.chars().take(16).collect(),
            dim: classifier::FEATURE_DIM,
            distance: "FD-classifier".into(),
            kernel_distance: "KID-classifier".into(),
        }
    }

    /// A short file-name-safe label.
    pub fn slug(&self) -> String {
        format!("{}-{}", self.kind, self.weights)
    }
}

impl std::fmt::Display for ExtractorId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (weights {}, {}-d)",
            self.kind, self.weights, self.dim
        )
    }
}
