//! `diffnas export RUN_DIR --out DIR`: a run's weights as a model bundle for the browser demo
//! (`model::bundle`): DIR/NAME/{model.json, genome.json, weights.bpk}, listed in DIR/index.json.

use super::user_err;
use crate::device::flex;
use crate::genome::cost;
use crate::model::bundle::{
    BUNDLE_FORMAT, BundleIndex, BundleManifest, FileEntry, GENOME_FILE, INDEX_FILE, IndexEntry,
    MANIFEST_FILE, WEIGHTS_FILE, WeightDType, weights_bytes,
};
use crate::rundir::{LoadedRun, RunFiles, Weights, load_denoiser};
use crate::train::write_atomic;
use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// Run directory: written by `diffnas train`, a search trial (RUN/trials/HASH) or a
    /// block-search student.
    pub run_dir: PathBuf,
    /// Export folder (for the demo: web/models). The bundle goes to OUT/NAME/ and OUT/index.json
    /// lists every bundle in OUT.
    #[arg(long)]
    pub out: PathBuf,
    /// Bundle name (letters, digits, '.', '_', '-'); default: the run directory's name.
    #[arg(long)]
    pub name: Option<String>,
    /// Store weights as f32, or as f16 to halve the download (widened to f32 on load, so
    /// sampling still computes in f32; images differ from f32 weights by rounding only).
    #[arg(long, default_value = "f32")]
    pub dtype: WeightDType,
    /// ema (default) or the raw model weights.
    #[arg(long, value_enum, default_value = "ema")]
    pub weights: Weights,
    /// DDIM steps the page suggests for this model.
    #[arg(long, default_value_t = 20)]
    pub default_steps: usize,
}

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

pub fn run(a: ExportArgs) -> anyhow::Result<i32> {
    let e = export(&a)?;
    let m = &e.manifest;
    println!(
        "exported {} ({} params, {:.1} M MACs/image) to {}: genome {} B, weights {} B ({:?}), sha256 {}",
        m.name,
        m.params,
        m.macs as f64 / 1e6,
        e.dir.display(),
        m.genome.bytes,
        m.weights.bytes,
        m.dtype,
        &m.weights.sha256[..16],
    );
    Ok(0)
}

/// Write the bundle of `a.run_dir` and update the folder's index.
pub fn export(a: &ExportArgs) -> anyhow::Result<Exported> {
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
        return Err(user_err(format!(
            "--name {name:?}: use letters, digits, '.', '_' and '-' only (it becomes a folder and a URL path)"
        )));
    }
    if a.default_steps == 0 {
        return Err(user_err("--default-steps must be at least 1"));
    }
    let (genome, files) = RunFiles::read(&a.run_dir)?;
    if a.default_steps > files.config.timesteps {
        return Err(user_err(format!(
            "--default-steps {} exceeds the run's {} training timesteps",
            a.default_steps, files.config.timesteps
        )));
    }
    // Weights are read on the CPU: exporting never needs a GPU.
    let device = flex().device;
    let LoadedRun {
        model: unet,
        weights: weights_path,
        ..
    } = load_denoiser(&a.run_dir, a.weights, &device)?;
    let weights = weights_bytes(unet, a.dtype)?;
    let genome_json = genome.to_json_pretty();
    let c = cost(&genome).map_err(|e| user_err(format!("invalid genome: {e}")))?;
    let manifest = BundleManifest {
        format: BUNDLE_FORMAT,
        name: name.clone(),
        genome: FileEntry::of(GENOME_FILE, genome_json.as_bytes()),
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
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(&dir.join(GENOME_FILE), genome_json.as_bytes())?;
    write_atomic(&dir.join(WEIGHTS_FILE), &weights)?;
    // The manifest last: a bundle with a manifest is complete.
    write_atomic(
        &dir.join(MANIFEST_FILE),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    update_index(&a.out, &manifest)?;
    Ok(Exported { dir, manifest })
}

fn update_index(out: &Path, m: &BundleManifest) -> anyhow::Result<()> {
    let path = out.join(INDEX_FILE);
    let mut index: BundleIndex = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            user_err(format!(
                "{}: {e} (not an index written by `diffnas export`; move it away)",
                path.display()
            ))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BundleIndex::default(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    index.upsert(IndexEntry {
        name: m.name.clone(),
        manifest: format!("{}/{MANIFEST_FILE}", m.name),
        image: m.image,
        params: m.params,
        bytes: m.genome.bytes + m.weights.bytes,
        dtype: m.dtype,
    });
    write_atomic(&path, serde_json::to_string_pretty(&index)?.as_bytes())?;
    Ok(())
}
