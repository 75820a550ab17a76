//! Run directories: the files that make a trained model rebuildable from its folder alone
//! (genome.json, train.json, weights).

use crate::data::DataSource;
use crate::device::DeviceInfo;
use crate::genome::Genome;
use crate::model::Unet;
use crate::train::{EMA_FILE, MODEL_FILE, TrainConfig, latest_checkpoint, write_atomic};
use anyhow::Context;
use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `train.json`: the resolved configuration of a training run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunFiles {
    pub config: TrainConfig,
    pub data: DataSource,
    /// Images used from the training split (None: all).
    pub max_images: Option<usize>,
    /// The device the run started on.
    pub device: DeviceInfo,
}

impl RunFiles {
    pub fn write(&self, dir: &Path, genome: &Genome) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_atomic(&dir.join("genome.json"), genome.to_json_pretty().as_bytes())?;
        write_atomic(
            &dir.join("train.json"),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )?;
        Ok(())
    }

    pub fn read(dir: &Path) -> anyhow::Result<(Genome, RunFiles)> {
        let gp = dir.join("genome.json");
        let text = std::fs::read_to_string(&gp).map_err(|e| {
            super::user_err(format!(
                "{}: {e} (is {} a run directory made by `diffnas train`?)",
                gp.display(),
                dir.display()
            ))
        })?;
        let genome = Genome::from_json(&text)
            .map_err(|e| super::user_err(format!("{}: {e}", gp.display())))?;
        let tp = dir.join("train.json");
        let text = std::fs::read_to_string(&tp)
            .map_err(|e| super::user_err(format!("{}: {e}", tp.display())))?;
        let files: RunFiles = serde_json::from_str(&text)
            .map_err(|e| super::user_err(format!("{}: {e}", tp.display())))?;
        Ok((genome, files))
    }
}

/// Which weights of a run to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Weights {
    Ema,
    Model,
}

/// The weights file of a run: the final one if training finished, else the newest checkpoint's.
pub fn weights_path(dir: &Path, which: Weights) -> anyhow::Result<PathBuf> {
    let file = match which {
        Weights::Ema => EMA_FILE,
        Weights::Model => MODEL_FILE,
    };
    let fin = dir.join(file);
    if fin.is_file() {
        return Ok(fin);
    }
    match latest_checkpoint(dir) {
        Some(ck) => Ok(ck.join(file)),
        None => Err(super::user_err(format!(
            "{} has no {file} and no checkpoint yet",
            dir.display()
        ))),
    }
}

/// Build a run's UNet on `device` and load its weights.
pub fn load_denoiser(
    dir: &Path,
    which: Weights,
    device: &Device,
) -> anyhow::Result<(Unet, Genome, RunFiles, PathBuf)> {
    let (genome, files) = RunFiles::read(dir)?;
    let model = Unet::new(&genome, device).map_err(|e| {
        super::user_err(format!(
            "{}: invalid genome:\n{e}",
            dir.join("genome.json").display()
        ))
    })?;
    let path = weights_path(dir, which)?;
    let model = model
        .try_load_file(&path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((model, genome, files, path))
}
