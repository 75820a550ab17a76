//! A model bundle: what a consumer without the run directory (the browser) needs to rebuild and
//! sample a trained UNet. Written by `diffnas export`, read by the `web` crate.
//!
//! A bundle is a folder holding `genome.json`, `weights.bpk` (the EMA weights as burnpack bytes,
//! f32 or f16) and `model.json`, the [`BundleManifest`]: format version, sizes and SHA-256 of both
//! files, the noise schedule, the image shape and the model's cost. Several bundles side by side
//! are listed in an `index.json` ([`BundleIndex`]). Nothing here touches the file system, so the
//! same checks run natively and in the browser.

use super::Unet;
use crate::diffusion::BetaSchedule;
use crate::genome::{Genome, ImageSpec};
use burn::module::{Module, ModuleMapper, Param};
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The bundle format this build writes and reads.
pub const BUNDLE_FORMAT: u32 = 1;
pub const MANIFEST_FILE: &str = "model.json";
pub const GENOME_FILE: &str = "genome.json";
pub const WEIGHTS_FILE: &str = "weights.bpk";
/// The list of bundles in an export folder.
pub const INDEX_FILE: &str = "index.json";

/// How the weights are stored. Computation is always f32: f16 weights are widened on load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDType {
    F32,
    F16,
}

impl std::str::FromStr for WeightDType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(WeightDType::F32),
            "f16" => Ok(WeightDType::F16),
            other => Err(format!(
                "unknown weight dtype {other:?}: expected f32 or f16"
            )),
        }
    }
}

/// One file of a bundle, with what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the bundle folder.
    pub file: String,
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the file's bytes.
    pub sha256: String,
}

impl FileEntry {
    pub fn of(file: &str, bytes: &[u8]) -> FileEntry {
        FileEntry {
            file: file.to_string(),
            bytes: bytes.len() as u64,
            sha256: sha256_hex(bytes),
        }
    }

    /// Check `bytes` against this entry: size first (the usual symptom of a truncated download),
    /// then the hash.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), BundleError> {
        if bytes.len() as u64 != self.bytes {
            return Err(BundleError::Size {
                file: self.file.clone(),
                expected: self.bytes,
                found: bytes.len() as u64,
            });
        }
        let found = sha256_hex(bytes);
        if found != self.sha256 {
            return Err(BundleError::Hash {
                file: self.file.clone(),
                expected: self.sha256.clone(),
                found,
            });
        }
        Ok(())
    }
}

/// `model.json`: everything needed to fetch, check and sample a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleManifest {
    /// [`BUNDLE_FORMAT`] of the writer.
    pub format: u32,
    /// Display name (also the bundle's folder name in an export).
    pub name: String,
    pub genome: FileEntry,
    pub weights: FileEntry,
    pub dtype: WeightDType,
    /// The training noise schedule (samplers respace it).
    pub beta_schedule: BetaSchedule,
    pub timesteps: usize,
    pub image: ImageSpec,
    /// Parameters and MACs per image of one forward pass (the cost model's counts).
    pub params: u64,
    pub macs: u64,
    /// Where the weights came from (run directory, weights file, training step).
    pub source: String,
    /// A sensible number of DDIM steps for a first look.
    pub default_steps: usize,
}

impl BundleManifest {
    pub fn from_json(text: &str) -> Result<BundleManifest, BundleError> {
        let m: BundleManifest = serde_json::from_str(text)
            .map_err(|e| BundleError::Manifest(format!("{MANIFEST_FILE}: {e}")))?;
        if m.format != BUNDLE_FORMAT {
            return Err(BundleError::Format {
                found: m.format,
                supported: BUNDLE_FORMAT,
            });
        }
        if m.timesteps < 2 {
            return Err(BundleError::Manifest(format!(
                "{MANIFEST_FILE}: timesteps {} is below 2",
                m.timesteps
            )));
        }
        Ok(m)
    }
}

/// One line of `index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub name: String,
    /// Path of the bundle's `model.json`, relative to the index.
    pub manifest: String,
    pub image: ImageSpec,
    pub params: u64,
    /// Download size (genome + weights).
    pub bytes: u64,
    pub dtype: WeightDType,
}

/// `index.json`: the bundles of an export folder, the list the browser page offers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BundleIndex {
    pub models: Vec<IndexEntry>,
}

impl BundleIndex {
    /// Add `entry`, replacing a bundle of the same name; keeps names sorted.
    pub fn upsert(&mut self, entry: IndexEntry) {
        self.models.retain(|m| m.name != entry.name);
        self.models.push(entry);
        self.models.sort_by(|a, b| a.name.cmp(&b.name));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(
        "model.json has bundle format {found}; this build reads format {supported} (re-export the model with this version of diffnas)"
    )]
    Format { found: u32, supported: u32 },
    #[error("{0}")]
    Manifest(String),
    #[error("{file}: expected {expected} bytes, got {found} (truncated or wrong file?)")]
    Size {
        file: String,
        expected: u64,
        found: u64,
    },
    #[error("{file}: SHA-256 is {found}, the manifest says {expected} (corrupted or wrong file)")]
    Hash {
        file: String,
        expected: String,
        found: String,
    },
    #[error("genome.json: {0}")]
    Genome(String),
    #[error("genome.json describes {genome:?} images but model.json says {manifest:?}")]
    ImageMismatch {
        genome: ImageSpec,
        manifest: ImageSpec,
    },
    #[error("weights.bpk does not fit the genome: {0}")]
    Weights(String),
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Casts every float parameter to a dtype (used to store weights as f16).
struct CastParams(DType);

impl ModuleMapper for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        param.map(|t| t.cast(dtype))
    }
}

/// The burnpack bytes of `unet`'s parameters, stored as `dtype`.
pub fn weights_bytes(unet: Unet, dtype: WeightDType) -> Result<Vec<u8>, BundleError> {
    let unet = match dtype {
        WeightDType::F32 => unet,
        WeightDType::F16 => unet.map(&mut CastParams(DType::F16)),
    };
    let bytes = unet
        .into_record()
        .into_bytes()
        .map_err(|e| BundleError::Weights(format!("serialising: {e}")))?;
    Ok(bytes.to_vec())
}

/// Check a bundle's files against its manifest and build its UNet on `device`, with f32 weights.
/// Every failure names the file and what was wrong with it.
pub fn load_bundle(
    manifest: &BundleManifest,
    genome_json: &[u8],
    weights: Vec<u8>,
    device: &Device,
) -> Result<(Unet, Genome), BundleError> {
    manifest.genome.verify(genome_json)?;
    manifest.weights.verify(&weights)?;
    let text = std::str::from_utf8(genome_json).map_err(|e| BundleError::Genome(format!("{e}")))?;
    let genome = Genome::from_json(text).map_err(|e| BundleError::Genome(e.to_string()))?;
    if genome.image != manifest.image {
        return Err(BundleError::ImageMismatch {
            genome: genome.image,
            manifest: manifest.image,
        });
    }
    let unet = Unet::new(&genome, device).map_err(|e| BundleError::Genome(e.to_string()))?;
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(weights))
        .map_err(|e| BundleError::Weights(e.to_string()))?
        .cast_to_module_dtype();
    let unet = unet
        .try_load_record(record)
        .map_err(|e| BundleError::Weights(summarize(&e.to_string())))?;
    Ok((unet, genome))
}

/// Burn lists every mismatched tensor; a page or terminal needs the first few and a count.
fn summarize(message: &str) -> String {
    const SHOWN: usize = 3;
    let Some(start) = message.find('[') else {
        return message.to_string();
    };
    let items: Vec<&str> = message[start + 1..]
        .trim_end_matches(']')
        .split("\", \"")
        .map(|s| s.trim_matches('"'))
        .collect();
    if items.len() <= SHOWN {
        return message.to_string();
    }
    let head = message[..start].trim_end();
    format!(
        "{head} {}; and {} more",
        items[..SHOWN].join("; "),
        items.len() - SHOWN
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_record_errors_are_summarized() {
        let long = r#"Record validation error: Apply errors: ["a: shape mismatch", "b: x", "c: y", "d: z", "e: w"]"#;
        assert_eq!(
            super::summarize(long),
            "Record validation error: Apply errors: a: shape mismatch; b: x; c: y; and 2 more"
        );
        let short = r#"Apply errors: ["a: x"]"#;
        assert_eq!(super::summarize(short), short);
        assert_eq!(super::summarize("no list"), "no list");
    }
}
