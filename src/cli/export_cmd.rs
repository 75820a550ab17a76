//! `diffnas export RUN_DIR --out DIR`: a run's weights as a model bundle for the browser demo
//! (`model::bundle`): DIR/NAME/{model.json, genome.json, weights.bpk}, listed in DIR/index.json.

use crate::model::bundle::WeightDType;
use crate::rundir::{ExportRequest, Weights, export};
use clap::Args;
use std::path::PathBuf;

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
    #[arg(long, default_value_t = crate::rundir::defaults::EXPORT_STEPS)]
    pub default_steps: usize,
}

pub fn run(a: ExportArgs) -> anyhow::Result<i32> {
    let e = export(&ExportRequest {
        run_dir: a.run_dir,
        out: a.out,
        name: a.name,
        dtype: a.dtype,
        weights: a.weights,
        default_steps: a.default_steps,
    })?;
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
