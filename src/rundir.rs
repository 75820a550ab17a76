//! Run directories: the files that make a trained model rebuildable from its folder alone.
//! `diffnas train` writes one, and so does every search trial (`runs/<search>/trials/<hash>/`),
//! so `sample`, `eval`, `export` and `train --resume` open either:
//!
//! - `genome.json`: the architecture, as trained;
//! - `train.json`: [`RunFiles`], the resolved training configuration, data and device;
//! - `model.bpk` / `ema.bpk` once training finished, and `checkpoints/` while it runs (see
//!   [`crate::train`]).

use crate::data::DataSource;
use crate::device::DeviceInfo;
use crate::genome::Genome;
use crate::model::Unet;
use crate::train::{EMA_FILE, MODEL_FILE, TrainConfig, latest_checkpoint, write_atomic};
use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const GENOME_FILE: &str = "genome.json";
pub const RUN_FILE: &str = "train.json";

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// The folder is not a run directory (or a file of one cannot be read).
    #[error("{path}: {message}{hint}")]
    NotARun {
        path: PathBuf,
        message: String,
        hint: String,
    },
    /// A file of the run does not parse.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{dir} has no {file} and no checkpoint yet")]
    NoWeights { dir: PathBuf, file: &'static str },
    /// Writing the run's files, or loading its weights, failed.
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
}

impl RunDirError {
    /// Whether the user pointed at the wrong thing (as opposed to a failure while reading or
    /// writing a valid run).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, RunDirError::Io { .. })
    }
}

/// Where a run's data came from and where it ran: what `train.json` holds beside the
/// training configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSource {
    pub data: DataSource,
    /// Images used from the training split (None: all).
    pub max_images: Option<usize>,
    /// The device the run started on.
    pub device: DeviceInfo,
}

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
    pub fn new(config: TrainConfig, source: &RunSource) -> RunFiles {
        RunFiles {
            config,
            data: source.data.clone(),
            max_images: source.max_images,
            device: source.device.clone(),
        }
    }

    /// Write `genome.json` and `train.json` into `dir` (created if needed), each atomically.
    pub fn write(&self, dir: &Path, genome: &Genome) -> Result<(), RunDirError> {
        let io = |path: &Path, e: &dyn std::fmt::Display| RunDirError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, &e))?;
        let gp = dir.join(GENOME_FILE);
        write_atomic(&gp, genome.to_json_pretty().as_bytes()).map_err(|e| io(&gp, &e))?;
        let tp = dir.join(RUN_FILE);
        let text = serde_json::to_string_pretty(self).expect("RunFiles serialises");
        write_atomic(&tp, text.as_bytes()).map_err(|e| io(&tp, &e))?;
        Ok(())
    }

    /// Read a run directory's genome and configuration.
    pub fn read(dir: &Path) -> Result<(Genome, RunFiles), RunDirError> {
        let gp = dir.join(GENOME_FILE);
        let text = std::fs::read_to_string(&gp).map_err(|e| RunDirError::NotARun {
            path: gp.clone(),
            message: e.to_string(),
            hint: format!(
                " (is {} a run directory made by `diffnas train` or a search trial?)",
                dir.display()
            ),
        })?;
        let genome = Genome::from_json(&text).map_err(|e| RunDirError::Invalid {
            path: gp.clone(),
            message: e.to_string(),
        })?;
        let tp = dir.join(RUN_FILE);
        let text = std::fs::read_to_string(&tp).map_err(|e| RunDirError::NotARun {
            path: tp.clone(),
            message: e.to_string(),
            hint: old_trial_hint(dir),
        })?;
        let files = serde_json::from_str(&text).map_err(|e| RunDirError::Invalid {
            path: tp.clone(),
            message: e.to_string(),
        })?;
        Ok((genome, files))
    }
}

/// What to do with a trial directory of a search made before trials were complete runs (a
/// genome and weights, no `train.json`).
fn old_trial_hint(dir: &Path) -> String {
    let in_search = dir
        .parent()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n == crate::search::TRIALS_DIR)
        })
        .and_then(Path::parent)
        .is_some_and(|s| s.join(crate::search::CONFIG_FILE).is_file());
    if in_search {
        format!(
            " ({} is a trial of a search made by an older diffnas, whose trials kept no \
             train.json: retrain it as a run with `diffnas train --genome {}`)",
            dir.display(),
            dir.join(GENOME_FILE).display()
        )
    } else {
        String::new()
    }
}

/// Which weights of a run to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Weights {
    Ema,
    Model,
}

/// The weights file of a run: the final one if training finished, else the newest checkpoint's.
pub fn weights_path(dir: &Path, which: Weights) -> Result<PathBuf, RunDirError> {
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
        None => Err(RunDirError::NoWeights {
            dir: dir.to_path_buf(),
            file,
        }),
    }
}

/// A run's UNet on `device` with its weights loaded.
pub struct LoadedRun {
    pub model: Unet,
    pub genome: Genome,
    pub files: RunFiles,
    /// The weights file that was loaded.
    pub weights: PathBuf,
}

/// Build a run's UNet on `device` and load its weights.
pub fn load_denoiser(
    dir: &Path,
    which: Weights,
    device: &Device,
) -> Result<LoadedRun, RunDirError> {
    let (genome, files) = RunFiles::read(dir)?;
    let model = Unet::new(&genome, device).map_err(|e| RunDirError::Invalid {
        path: dir.join(GENOME_FILE),
        message: format!("invalid genome:\n{e}"),
    })?;
    let weights = weights_path(dir, which)?;
    let model = model.try_load_file(&weights).map_err(|e| RunDirError::Io {
        path: weights.clone(),
        message: e.to_string(),
    })?;
    Ok(LoadedRun {
        model,
        genome,
        files,
        weights,
    })
}
