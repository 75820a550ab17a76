//! A trial as a job: everything one trial needs, in its own folder, so that any process on any
//! machine that sees the folder can run it (`diffnas trial run TRIAL_DIR`) and the search's
//! driver only reads the result.
//!
//! - `trial.json` ([`TrialSpec`]): the genome, the space it must fit, the trial's schedule and
//!   score, the training data, the evaluator and the feature extractor (how to build it, and
//!   the identity every score of the search must have).
//! - `outcome.json` ([`TrialOutcome`]): written atomically when the trial ends, failed or not
//!   (a failure is an outcome with its reason). An interrupted trial writes none; running it
//!   again resumes from its checkpoints.
//!
//! The driver's in-process trials run the same [`Evaluation::evaluator`] code as a job does.

use super::{SearchError, io_err};
use crate::data::{DataSource, Dataset, Split};
use crate::device::SelectedDevice;
use crate::eval::ExtractorId;
use crate::eval::extract::FeatureExtractor;
use crate::eval::reference::Reference;
use crate::eval::setup::{self, ExtractorSpec, SetupEvent};
use crate::genome::{Genome, SearchSpace};
use crate::rundir::RunSource;
use crate::search::config::EvaluatorKind;
use crate::trial::{
    Evaluator, ProgressHook, ProxyEvaluator, StubEvaluator, TrialConfig, TrialOutcome, TrialStatus,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

pub const SPEC_FILE: &str = "trial.json";
pub const OUTCOME_FILE: &str = "outcome.json";
/// Locked by the process that runs the trial, for as long as it runs: how the driver tells a
/// live trial from a dead one, whatever host, path spelling or process id.
pub use crate::lock::LOCK_FILE;

/// The lock of a trial's folder, held while this process runs the trial.
pub struct TrialLock(#[allow(dead_code)] crate::lock::DirLock);

impl TrialLock {
    /// The lock of `dir`, or None when another process holds it (the trial runs there).
    pub fn try_take(dir: &Path) -> Result<Option<TrialLock>, SearchError> {
        Ok(crate::lock::DirLock::try_take(dir)?.map(TrialLock))
    }
}

/// Whether a process runs the trial in `dir` now (it holds the folder's lock).
pub fn is_running(dir: &Path) -> bool {
    crate::lock::is_held(dir)
}

/// How a search evaluates its trials: the part of its configuration every trial shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub evaluator: EvaluatorKind,
    pub space: SearchSpace,
    pub trial: TrialConfig,
    pub data: DataSource,
    pub max_images: Option<usize>,
    /// The extractor identity the search's scores have (None: not known yet); a trial scored
    /// with another one is refused.
    pub scored_with: Option<ExtractorId>,
}

impl Evaluation {
    /// The training images: the data's train split cut to `max_images`.
    pub fn load_data(&self) -> Result<Dataset, SearchError> {
        let mut d = self.data.load(Split::Train)?;
        if let Some(m) = self.max_images {
            d.truncate(m);
        }
        Ok(d)
    }

    /// The evaluator on `data` (from [`Evaluation::load_data`]), with the extractor and
    /// reference of `scoring` for the proxy.
    pub fn evaluator(
        &self,
        data: Dataset,
        scoring: Option<(Box<dyn FeatureExtractor>, Reference)>,
        selected: &SelectedDevice,
        progress: Option<ProgressHook>,
    ) -> Result<Box<dyn Evaluator>, SearchError> {
        Ok(match self.evaluator {
            EvaluatorKind::Stub => Box::new(StubEvaluator {
                space: self.space.clone(),
            }),
            EvaluatorKind::Proxy => {
                let Some((ext, reference)) = scoring else {
                    return Err(SearchError::Setting(
                        "the proxy evaluator needs a feature extractor and reference statistics"
                            .into(),
                    ));
                };
                let mut e = ProxyEvaluator::for_search(
                    self.space.clone(),
                    self.trial.clone(),
                    data,
                    ext,
                    reference,
                    self.scored_with.as_ref(),
                    selected.device.clone(),
                    RunSource {
                        data: self.data.clone(),
                        max_images: self.max_images,
                        device: selected.info.clone(),
                    },
                )
                .map_err(SearchError::Setting)?;
                e.progress = progress;
                Box::new(e)
            }
        })
    }
}

/// `trial.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialSpec {
    /// The genome as proposed (the trial applies its proxy dropout).
    pub genome: Genome,
    #[serde(flatten)]
    pub evaluation: Evaluation,
    /// How to build the feature extractor (the proxy evaluator only).
    pub extractor: Option<ExtractorSpec>,
}

impl TrialSpec {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(SPEC_FILE)
    }

    /// Write `trial.json` into `dir` (created if needed), atomically.
    pub fn write(&self, dir: &Path) -> Result<(), SearchError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let p = TrialSpec::path(dir);
        let text = serde_json::to_string_pretty(self).expect("serialises");
        crate::train::write_atomic(&p, text.as_bytes()).map_err(|e| io_err(&p, e))
    }

    /// The `trial.json` of `dir`.
    pub fn read(dir: &Path) -> Result<TrialSpec, SearchError> {
        let p = TrialSpec::path(dir);
        let text = std::fs::read_to_string(&p).map_err(|e| {
            io_err(
                &p,
                format!("{e} (is {} a search's trial folder?)", dir.display()),
            )
        })?;
        serde_json::from_str(&text).map_err(|e| SearchError::Corrupt {
            path: p.clone(),
            line: e.line(),
            message: e.to_string(),
        })
    }

    /// The evaluator this trial runs with on `selected`: its data loaded, its extractor built
    /// and the reference statistics taken from the cache (computed there if missing; a search's
    /// driver fills the cache before it hands trials out).
    pub fn evaluator(
        &self,
        selected: &SelectedDevice,
        progress: Option<ProgressHook>,
        on_setup: &mut dyn FnMut(SetupEvent),
    ) -> Result<Box<dyn Evaluator>, SearchError> {
        let ev = &self.evaluation;
        if ev.evaluator == EvaluatorKind::Stub {
            return Ok(Box::new(StubEvaluator {
                space: ev.space.clone(),
            }));
        }
        let data = ev.load_data()?;
        let scoring = match (&ev.evaluator, &self.extractor) {
            (EvaluatorKind::Stub, _) => None,
            (EvaluatorKind::Proxy, None) => {
                return Err(SearchError::Setting(format!(
                    "a proxy trial needs an extractor; {SPEC_FILE} has none"
                )));
            }
            (EvaluatorKind::Proxy, Some(spec)) => {
                let setup_err = |e: setup::SetupError| SearchError::Setting(e.to_string());
                let ext = setup::extractor(spec, &ev.data, &selected.device).map_err(setup_err)?;
                let image = ev.space.image;
                let shape = [image.channels, image.size, image.size];
                let reference =
                    setup::cached_reference(ext.as_ref(), &ev.data, Split::Train, shape, on_setup)
                        .map_err(setup_err)?;
                Some((ext, reference))
            }
        };
        ev.evaluator(data, scoring, selected, progress)
    }
}

/// The `outcome.json` of `dir`, if the trial there has ended.
pub fn read_outcome(dir: &Path) -> Result<Option<TrialOutcome>, SearchError> {
    let p = dir.join(OUTCOME_FILE);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&p, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| SearchError::Corrupt {
            path: p.clone(),
            line: e.line(),
            message: e.to_string(),
        })
}

/// Write `outcome.json` into `dir`, atomically.
pub fn write_outcome(dir: &Path, outcome: &TrialOutcome) -> Result<(), SearchError> {
    let p = dir.join(OUTCOME_FILE);
    let text = serde_json::to_string_pretty(outcome).expect("serialises");
    crate::train::write_atomic(&p, text.as_bytes()).map_err(|e| io_err(&p, e))
}

/// Runs `evaluator` on the trial whose spec is in `dir` and writes its outcome, unless it was
/// interrupted (then the folder's checkpoints resume it next time). The folder's lock is held
/// throughout; a trial that has ended already returns its outcome.
pub fn evaluate_in(
    dir: &Path,
    genome: &Genome,
    evaluator: &mut dyn Evaluator,
    stop: &AtomicBool,
) -> Result<TrialOutcome, SearchError> {
    // A process that runs this trial already (one a killed search started) is waited for:
    // its outcome is this one's.
    let _lock = loop {
        if let Some(lock) = TrialLock::try_take(dir)? {
            break lock;
        }
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(TrialOutcome::rejected(
                TrialStatus::Interrupted,
                &evaluator.metric(),
                "stopped while another process ran the trial".into(),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    if let Some(o) = read_outcome(dir)? {
        return Ok(o);
    }
    let outcome = evaluator.evaluate(genome, Some(dir), stop);
    if outcome.status != TrialStatus::Interrupted {
        write_outcome(dir, &outcome)?;
    }
    Ok(outcome)
}

/// `diffnas trial run DIR`: the trial in `dir` on `selected`. A trial that has ended already
/// returns its outcome without running again.
pub fn run_trial(
    dir: &Path,
    selected: &SelectedDevice,
    stop: &AtomicBool,
    progress: Option<ProgressHook>,
    on_setup: &mut dyn FnMut(SetupEvent),
) -> Result<TrialOutcome, SearchError> {
    if let Some(o) = read_outcome(dir)? {
        return Ok(o);
    }
    let spec = TrialSpec::read(dir)?;
    let mut evaluator = spec.evaluator(selected, progress, on_setup)?;
    evaluate_in(dir, &spec.genome, evaluator.as_mut(), stop)
}
