//! Checkpoints: `checkpoints/step-NNNNNNNNN/` holding model, EMA and optimizer weights plus
//! `state.json`, written into a `.tmp` folder and renamed into place, then published through the
//! `checkpoints/latest` pointer (replaced atomically). A kill at any moment leaves the previous
//! checkpoint intact.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything besides weights that a resumed run needs. All randomness of step `s` is derived
/// from `(seed, s)` (ChaCha8 streams), so the RNG state is the seed plus the step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: u64,
    pub seed: u64,
    /// How the RNG state is represented (for readers of the file).
    pub rng: String,
    /// Wall-clock seconds spent training so far, across resumes.
    pub elapsed_s: f64,
    /// Last loss read from the device.
    pub last_loss: Option<f64>,
    /// The history of `L_hybrid`'s importance-sampled timesteps, when the run draws them so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub importance: Option<crate::diffusion::vlb::ImportanceSampler>,
    /// The loss scale of an f16 run (absent in f32 and bf16 runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<super::LossScale>,
    /// SHA-256 (hex) of each weights file beside this state file, checked on load. Absent in
    /// files written before checksums existed (they load unchecked).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sha256: std::collections::BTreeMap<String, String>,
}

impl TrainState {
    /// The state before the first step of a run seeded with `seed`.
    pub fn start(seed: u64) -> Self {
        TrainState {
            step: 0,
            seed,
            rng: "chacha8: step s draws from stream s of the seed".into(),
            elapsed_s: 0.0,
            last_loss: None,
            importance: None,
            loss_scale: None,
            sha256: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// A file whose bytes are not the ones its state file recorded.
    #[error(
        "{path}: damaged: its SHA-256 is {found}, and {STATE_FILE} beside it recorded {expected}"
    )]
    Damaged {
        path: PathBuf,
        expected: String,
        found: String,
    },
}

/// SHA-256 of a file, hex.
pub fn file_sha256(path: &Path) -> Result<String, CheckpointError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| io_err(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl TrainState {
    /// Record the SHA-256 of `files` (names in `dir`).
    pub fn seal(&mut self, dir: &Path, files: &[&str]) -> Result<(), CheckpointError> {
        for f in files {
            self.sha256
                .insert(f.to_string(), file_sha256(&dir.join(f))?);
        }
        Ok(())
    }

    /// Check every file this state recorded in `dir` against its SHA-256. Returns whether
    /// there was anything to check (false: a state from before checksums).
    pub fn verify(&self, dir: &Path) -> Result<bool, CheckpointError> {
        for (f, expected) in &self.sha256 {
            let path = dir.join(f);
            let found = file_sha256(&path)?;
            if &found != expected {
                return Err(CheckpointError::Damaged {
                    path,
                    expected: expected.clone(),
                    found,
                });
            }
        }
        Ok(!self.sha256.is_empty())
    }
}

/// The newest checkpoint of `dir` whose files match their checksums: `latest` first, then the
/// others newest first. A damaged one is passed over (and kept on disk) with a note; none
/// intact among several is an error naming the newest's damage.
pub fn newest_intact(
    dir: &Path,
    notes: &mut Vec<String>,
) -> Result<Option<PathBuf>, CheckpointError> {
    let mut candidates: Vec<PathBuf> = latest(dir).into_iter().collect();
    for c in all_newest_first(dir) {
        if !candidates.contains(&c) {
            candidates.push(c);
        }
    }
    let mut first_damage = None;
    for ck in &candidates {
        match read_state(ck).and_then(|s| s.verify(ck)) {
            Ok(checked) => {
                if !checked {
                    notes.push(format!(
                        "{}: no checksums (written before diffnas recorded them): loaded unchecked",
                        ck.display()
                    ));
                }
                if first_damage.is_some() {
                    notes.push(format!("resuming from {}", ck.display()));
                }
                return Ok(Some(ck.clone()));
            }
            Err(e) => {
                // Kept, out of the way: the run writes this step again.
                let aside = ck.with_extension("damaged");
                let kept = match std::fs::rename(ck, &aside) {
                    Ok(()) => format!("moved to {}", aside.display()),
                    Err(_) => "left in place".into(),
                };
                notes.push(format!("{e}; passed over ({kept})"));
                first_damage.get_or_insert(e);
            }
        }
    }
    match first_damage {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

pub(crate) fn io_err(path: &Path, e: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

pub const MODEL_FILE: &str = "model.bpk";
pub const EMA_FILE: &str = "ema.bpk";
pub const OPTIM_FILE: &str = "optim.bpk";
pub const STATE_FILE: &str = "state.json";

pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:09}")
}

/// Write `bytes` to `path` atomically (temporary file in the same folder, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, bytes).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

/// Append `value` as one JSON line to `path` (created if needed) and flush it to disk before
/// returning: a kill leaves at most a torn last line, which the readers drop. The one writer of
/// every `.jsonl` file (training and distillation logs, the trial log, proxy-check rows).
pub fn append_jsonl<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), CheckpointError> {
    use std::io::Write as _;
    let mut line = serde_json::to_string(value).expect("serialises");
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    f.write_all(line.as_bytes())
        .and_then(|_| f.sync_data())
        .map_err(|e| io_err(path, e))
}

/// Create the folder for a new checkpoint (as `.tmp`); the caller fills it and calls
/// [`publish`].
pub fn begin(run_dir: &Path, step: u64) -> Result<PathBuf, CheckpointError> {
    let dir = checkpoints_dir(run_dir).join(format!("{}.tmp", step_dir_name(step)));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    Ok(dir)
}

/// Rename the finished `.tmp` folder into place, point `latest` at it, prune old ones.
pub fn publish(
    run_dir: &Path,
    tmp: &Path,
    step: u64,
    keep: usize,
) -> Result<PathBuf, CheckpointError> {
    let root = checkpoints_dir(run_dir);
    let name = step_dir_name(step);
    let dir = root.join(&name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    }
    std::fs::rename(tmp, &dir).map_err(|e| io_err(&dir, e))?;
    write_atomic(&root.join("latest"), name.as_bytes())?;
    let mut all = complete_checkpoints(run_dir);
    all.sort();
    let keep = keep.max(1);
    if all.len() > keep {
        for (_, old) in &all[..all.len() - keep] {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(dir)
}

/// A step folder is complete once it holds its state file: every writer fills a `.tmp`
/// folder, writes the state last and only then renames the folder into place. (Checking for
/// the training loop's own weight files would make other writers' checkpoints, e.g. the
/// block supernets', look incomplete: never resumed, never pruned.)
fn is_complete(dir: &Path) -> bool {
    dir.join(STATE_FILE).is_file()
}

/// Every complete checkpoint of a run, newest first.
pub fn all_newest_first(run_dir: &Path) -> Vec<PathBuf> {
    let mut all = complete_checkpoints(run_dir);
    all.sort_by_key(|(s, _)| std::cmp::Reverse(*s));
    all.into_iter().map(|(_, p)| p).collect()
}

/// `(step, dir)` of every complete checkpoint.
fn complete_checkpoints(run_dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(checkpoints_dir(run_dir)) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
            let p = e.path();
            is_complete(&p).then_some((step, p))
        })
        .collect()
}

/// The newest complete checkpoint: the one `latest` names, or (if that pointer is missing or
/// names something incomplete) the highest complete step folder.
pub fn latest(run_dir: &Path) -> Option<PathBuf> {
    let root = checkpoints_dir(run_dir);
    if let Ok(name) = std::fs::read_to_string(root.join("latest")) {
        let dir = root.join(name.trim());
        if is_complete(&dir) {
            return Some(dir);
        }
    }
    complete_checkpoints(run_dir)
        .into_iter()
        .max_by_key(|(s, _)| *s)
        .map(|(_, p)| p)
}

pub fn read_state(dir: &Path) -> Result<TrainState, CheckpointError> {
    let p = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&p).map_err(|e| io_err(&p, e))?;
    serde_json::from_str(&text).map_err(|e| CheckpointError::Invalid {
        path: p,
        message: e.to_string(),
    })
}
