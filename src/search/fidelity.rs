//! The proxy-fidelity study (`diffnas search proxy-check`): does a cheap proxy rank
//! architectures as full training does?
//!
//! Architectures are drawn from a search space and spread over its cost range (not one
//! search's survivors). Each is trained with the full schedule and scored with the full metric
//! (the ground truth), and with each proxy training; every proxy model is scored several ways
//! (Fréchet and kernel distances at several sample counts and DDIM step counts, the held-out
//! denoising loss, training-speed estimates from its loss curve). [`summarise`] ranks every
//! proxy measure against the ground truth: Spearman's rho with a bootstrap interval, Kendall's
//! tau, whether the truly best is in the proxy's top 3, and the proxy's cost per trial.
//!
//! Files in the study's folder: `study.json` (the configuration, architectures included,
//! written first), `results.jsonl` (one row per finished training of one architecture, appended
//! and flushed), `runs/<hash>/<training>/` (the trainings' run directories: a killed study
//! resumes each from its checkpoint; each is a run directory that `sample`, `eval fid` and
//! `export` open), `summary.json` and `summary.csv`.

use super::rank::{bootstrap_interval, kendall_tau, spearman};
use super::{SearchError, append_line, io_err};
use crate::data::{DataSource, Dataset};
use crate::diffusion::{NoiseSchedule, SamplerKind};
use crate::eval::ExtractorId;
use crate::eval::extract::FeatureExtractor;
use crate::eval::heldout::HeldOutSet;
use crate::eval::reference::Reference;
use crate::eval::rfid::{GenerationConfig, KidConfig, generated_features};
use crate::eval::stats::{FeatureStats, frechet_distance, kid};
use crate::genome::{Genome, SearchSpace, cost};
use crate::model::Unet;
use crate::train::{LogRecord, LrSchedule, TrainConfig, TrainEvent, TrainOptions, TrainStatus};
use crate::trial::TrialConfig;
use burn::tensor::Device;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

pub const STUDY_FILE: &str = "study.json";
pub const RESULTS_FILE: &str = "results.jsonl";
pub const SUMMARY_FILE: &str = "summary.json";
pub const SUMMARY_CSV: &str = "summary.csv";
/// One row per architecture, one column per measure (the ground truth first).
pub const TABLE_CSV: &str = "architectures.csv";

/// The name of the ground-truth training.
pub const FULL: &str = "full";

/// The study's defaults (the CLI shows these).
pub mod defaults {
    pub const ARCHITECTURES: usize = 10;
    /// Full schedule: 10x the `small` scale's 200 proxy steps.
    pub const FULL_STEPS: u64 = 2000;
    pub const FULL_SCORE_N: usize = 2000;
    pub const FULL_SCORE_STEPS: usize = 50;
    /// Samples drawn for each proxy scoring (smaller N are its first images).
    pub const PROXY_SCORE_N: usize = 1000;
    /// Valid genomes drawn before spreading the picks over their cost.
    pub const CANDIDATES: usize = 400;
    pub const SEED: u64 = 0;
    pub const BOOTSTRAP: usize = 2000;
    /// Training loss readings (for the training-speed estimates) every this many steps.
    pub const LOG_EVERY: u64 = 10;
    pub const HELDOUT_TRIPLES: usize = crate::eval::heldout::DEFAULT_TRIPLES;
}

/// One sample set drawn from a trained model: `n` images with DDIM `steps`; the Fréchet
/// distance is computed on the first `prefixes` images of it, the kernel distance on all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleSet {
    pub n: usize,
    pub steps: usize,
    pub prefixes: Vec<usize>,
}

/// One way of training every architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyTraining {
    /// `full`, or the proxy's name (`proxy-200`, `proxy-200-lr2e-4`, ...).
    pub name: String,
    pub train: TrainConfig,
    pub samples: Vec<SampleSet>,
}

/// An architecture of the study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyArch {
    pub hash: String,
    /// How it was picked: `spread 3/10 of 400 draws` or a preset's name.
    pub origin: String,
    pub params: u64,
    pub macs: u64,
    pub genome: Genome,
}

/// `study.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyConfig {
    pub data: DataSource,
    pub max_images: Option<usize>,
    pub seed: u64,
    pub space: SearchSpace,
    pub architectures: Vec<StudyArch>,
    pub trainings: Vec<StudyTraining>,
    /// Held-out denoising loss: triples from the data's test split.
    pub heldout_triples: usize,
    pub kid: KidConfig,
    /// The extractor every score used (set when the study starts).
    pub extractor: Option<ExtractorId>,
}

/// What a study is asked to be.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyRequest {
    pub data: DataSource,
    pub max_images: Option<usize>,
    pub seed: u64,
    pub space: SearchSpace,
    pub architectures: usize,
    /// Genomes always included (presets, a search's winner), before the spread picks; with
    /// no proxies and `architectures` equal to their number, the study is a retraining of
    /// them with the full schedule and metric.
    pub include: Vec<(String, Genome)>,
    pub full_steps: u64,
    pub batch_size: usize,
    /// The proxies: (name, steps, peak LR) of rapid-convergence trainings.
    pub proxies: Vec<(String, u64, f64)>,
    /// Samples of the ground truth's score and their DDIM steps.
    pub full_score_n: usize,
    pub full_score_steps: usize,
    /// Samples of each proxy score (Fréchet distances also on its first quarter and half).
    pub proxy_score_n: usize,
}

impl StudyRequest {
    /// The proxy trainings of a study around a scale's default (`steps` at `lr`): half and
    /// twice the steps, and the default steps at a 5x lower LR.
    pub fn proxies_around(steps: u64, lr: f64) -> Vec<(String, u64, f64)> {
        vec![
            (format!("proxy-{steps}"), steps, lr),
            (format!("proxy-{}", steps / 2), steps / 2, lr),
            (format!("proxy-{}", steps * 2), steps * 2, lr),
            (format!("proxy-{steps}-lr{:e}", lr / 5.0), steps, lr / 5.0),
        ]
    }
}

/// `k` genomes spread over the cost (MACs) range of `candidates` valid draws from `space`,
/// cheapest first, with dropout 0 (as the proxy trains them). Deterministic in `seed`.
pub fn spread_architectures(
    space: &SearchSpace,
    k: usize,
    candidates: usize,
    seed: u64,
) -> Vec<StudyArch> {
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(seed ^ 0xf1de_0000_0000_0000);
    let mut pool: Vec<StudyArch> = Vec::new();
    for _ in 0..candidates {
        let Some(mut g) = space.random(&mut rng, 10_000) else {
            continue;
        };
        g.dropout = 0.0;
        let hash = g.hash();
        if pool.iter().any(|a| a.hash == hash) {
            continue;
        }
        let c = cost(&g).expect("a valid genome has a cost");
        pool.push(StudyArch {
            hash,
            origin: String::new(),
            params: c.params,
            macs: c.macs,
            genome: g,
        });
    }
    pool.sort_by_key(|a| (a.macs, a.hash.clone()));
    let n = pool.len();
    let k = k.min(n);
    (0..k)
        .map(|i| {
            let j = if k == 1 { n / 2 } else { i * (n - 1) / (k - 1) };
            let mut a = pool[j].clone();
            a.origin = format!("spread {}/{k} of {n} draws (MACs rank {})", i + 1, j + 1);
            a
        })
        .collect()
}

impl StudyConfig {
    /// A fresh study.
    pub fn new(r: &StudyRequest) -> Result<StudyConfig, SearchError> {
        let mut architectures: Vec<StudyArch> = Vec::new();
        for (name, g) in &r.include {
            let mut g = g.clone();
            g.dropout = 0.0;
            if architectures.iter().any(|a| a.hash == g.hash()) {
                continue;
            }
            // Included genomes may lie outside the space's budget (a hand-designed baseline
            // beside the search's winner); they must be buildable for its images.
            if g.image != r.space.image {
                return Err(SearchError::Setting(format!(
                    "{name} is for {}x{}x{} images; the study's are {}x{}x{}",
                    g.image.channels,
                    g.image.size,
                    g.image.size,
                    r.space.image.channels,
                    r.space.image.size,
                    r.space.image.size
                )));
            }
            let c = cost(&g).map_err(|e| SearchError::Setting(format!("{name}: {e}")))?;
            architectures.push(StudyArch {
                hash: g.hash(),
                origin: name.clone(),
                params: c.params,
                macs: c.macs,
                genome: g,
            });
        }
        let want = r.architectures.saturating_sub(architectures.len());
        for a in spread_architectures(
            &r.space,
            want + architectures.len(),
            defaults::CANDIDATES,
            r.seed,
        ) {
            if architectures.len() >= r.architectures {
                break;
            }
            if !architectures.iter().any(|b| b.hash == a.hash) {
                architectures.push(a);
            }
        }
        if !r.proxies.is_empty() && architectures.len() < 3 {
            return Err(SearchError::Setting(format!(
                "the space gave {} architecture(s); a rank study needs at least 3",
                architectures.len()
            )));
        }
        let pn = r.proxy_score_n;
        let proxy_set = |prefixes: Vec<usize>, steps| SampleSet {
            n: pn,
            steps,
            prefixes,
        };
        let mut trainings = Vec::new();
        for (i, (name, steps, lr)) in r.proxies.iter().enumerate() {
            let mut t = TrialConfig::rapid(*steps, r.batch_size).train.with_lr(*lr);
            t.log_every = defaults::LOG_EVERY.min(steps / 20).max(1);
            t.seed = r.seed;
            let mut samples = vec![proxy_set(vec![pn / 4, pn / 2, pn], 10)];
            if i == 0 {
                // The default proxy also at twice the sampling steps.
                samples.push(proxy_set(vec![pn / 2, pn], 20));
            }
            trainings.push(StudyTraining {
                name: name.clone(),
                train: t,
                samples,
            });
        }
        let full = TrainConfig::new()
            .with_steps(r.full_steps)
            .with_batch_size(r.batch_size)
            .with_lr_schedule(LrSchedule::Cosine)
            .with_warmup_steps((r.full_steps / 20).max(1))
            .with_checkpoint_every((r.full_steps / 8).max(1))
            .with_keep_checkpoints(1)
            .with_log_every(defaults::LOG_EVERY)
            .with_seed(r.seed);
        trainings.push(StudyTraining {
            name: FULL.into(),
            train: full,
            samples: vec![SampleSet {
                n: r.full_score_n,
                steps: r.full_score_steps,
                prefixes: vec![r.full_score_n / 2, r.full_score_n],
            }],
        });
        Ok(StudyConfig {
            data: r.data.clone(),
            max_images: r.max_images,
            seed: r.seed,
            space: r.space.clone(),
            architectures,
            trainings,
            heldout_triples: defaults::HELDOUT_TRIPLES,
            kid: KidConfig {
                subsets: 50,
                subset_size: r.proxy_score_n,
                seed: 0,
            },
            extractor: None,
        })
    }

    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STUDY_FILE)
    }

    /// The stored study of `dir`, if any.
    pub fn read(dir: &Path) -> Result<Option<StudyConfig>, SearchError> {
        let p = Self::path(dir);
        if !p.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).map_err(|e| io_err(&p, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| SearchError::Corrupt {
                path: p,
                line: e.line(),
                message: e.to_string(),
            })
    }

    pub fn write(&self, dir: &Path) -> Result<(), SearchError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let p = Self::path(dir);
        let text = serde_json::to_string_pretty(self).expect("serialises");
        crate::train::write_atomic(&p, text.as_bytes()).map_err(|e| io_err(&p, e))
    }

    /// The full training (the ground truth).
    pub fn full(&self) -> &StudyTraining {
        self.trainings
            .iter()
            .find(|t| t.name == FULL)
            .expect("a study has a full training")
    }

    /// Units of work: (architecture, training), proxies before the full training of each.
    pub fn units(&self) -> Vec<(&StudyArch, &StudyTraining)> {
        self.architectures
            .iter()
            .flat_map(|a| self.trainings.iter().map(move |t| (a, t)))
            .collect()
    }
}

/// A distance of one sample set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyScore {
    /// `FD-classifier`, `KID-classifier`, `FID`, ...
    pub metric: String,
    pub n: usize,
    pub steps: usize,
    pub value: f64,
    /// Seconds to sample and extract these `n` images (a prefix's share of its set's time).
    pub seconds: f64,
}

/// One line of `results.jsonl`: one training of one architecture and its measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyRow {
    pub hash: String,
    pub training: String,
    pub ok: bool,
    pub reason: Option<String>,
    pub steps: u64,
    pub train_seconds: f64,
    pub final_loss: Option<f64>,
    /// Training-speed estimate (Ru et al. 2021): mean of the logged training losses.
    pub tse: Option<f64>,
    /// The same over the last quarter of the steps.
    pub tse_late: Option<f64>,
    pub heldout_eps_mse: Option<f64>,
    pub heldout_seconds: f64,
    pub scores: Vec<StudyScore>,
}

/// Progress of a study.
pub enum StudyEvent<'a> {
    Started {
        done: usize,
        total: usize,
    },
    UnitStarted {
        index: usize,
        total: usize,
        arch: &'a StudyArch,
        training: &'a str,
        steps: u64,
    },
    Train {
        done: u64,
        total: u64,
    },
    Sample {
        done: usize,
        total: usize,
    },
    UnitDone(&'a StudyRow),
}

/// What scoring needs, shared by every unit.
pub struct StudyEnv<'a> {
    pub train: &'a Dataset,
    pub heldout: &'a HeldOutSet,
    pub extractor: &'a dyn FeatureExtractor,
    pub reference: &'a Reference,
    pub device: &'a Device,
    /// Where the training images came from and the device: every unit's folder gets a
    /// `genome.json` and `train.json` and is a run directory (`sample`, `eval`, `export`).
    pub source: &'a crate::rundir::RunSource,
}

/// The rows in `dir/results.jsonl`, the last one of each (architecture, training) (a failed
/// unit retried on resume appends another); a torn last line is skipped.
pub fn read_rows(dir: &Path) -> Vec<StudyRow> {
    let mut rows: Vec<StudyRow> = Vec::new();
    let text = std::fs::read_to_string(dir.join(RESULTS_FILE)).unwrap_or_default();
    for r in text
        .lines()
        .filter_map(|l| serde_json::from_str::<StudyRow>(l).ok())
    {
        rows.retain(|x| !(x.hash == r.hash && x.training == r.training));
        rows.push(r);
    }
    rows
}

/// Cut a torn last line (a kill during a write) so that the next row starts on its own.
fn cut_torn_tail(path: &Path) -> Result<(), SearchError> {
    let Ok(text) = std::fs::read(path) else {
        return Ok(());
    };
    if text.is_empty() || text.ends_with(b"\n") {
        return Ok(());
    }
    let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    f.set_len(keep as u64).map_err(|e| io_err(path, e))
}

/// Run every unit of `cfg` not yet in `dir/results.jsonl`. `stop` ends it at the next
/// checkpoint; run it again to continue.
pub fn run_study(
    dir: &Path,
    cfg: &StudyConfig,
    env: &StudyEnv<'_>,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(StudyEvent),
) -> Result<Vec<StudyRow>, SearchError> {
    let _lock = crate::lock::DirLock::take(dir)?;
    let mut rows = read_rows(dir);
    let units = cfg.units();
    // A unit that failed (a device error, a full disk, a diverged run) is tried again.
    let done = |rows: &[StudyRow], a: &StudyArch, t: &StudyTraining| {
        rows.iter()
            .any(|r| r.ok && r.hash == a.hash && r.training == t.name)
    };
    let total = units.len();
    on_event(StudyEvent::Started {
        done: units.iter().filter(|(a, t)| done(&rows, a, t)).count(),
        total,
    });
    let results = dir.join(RESULTS_FILE);
    cut_torn_tail(&results)?;
    for (index, (arch, training)) in units.into_iter().enumerate() {
        if done(&rows, arch, training) {
            continue;
        }
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        on_event(StudyEvent::UnitStarted {
            index,
            total,
            arch,
            training: &training.name,
            steps: training.train.steps,
        });
        let run_dir = dir.join("runs").join(&arch.hash).join(&training.name);
        let Some(row) = run_unit(&run_dir, arch, training, cfg, env, stop, on_event)? else {
            break;
        };
        append_line(&results, &row)?;
        on_event(StudyEvent::UnitDone(&row));
        if row.ok {
            let _ = std::fs::remove_dir_all(run_dir.join("checkpoints"));
        }
        rows.retain(|x| !(x.hash == row.hash && x.training == row.training));
        rows.push(row);
    }
    Ok(rows)
}

/// Train and measure one unit; None when stopped.
fn run_unit(
    run_dir: &Path,
    arch: &StudyArch,
    training: &StudyTraining,
    cfg: &StudyConfig,
    env: &StudyEnv<'_>,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(StudyEvent),
) -> Result<Option<StudyRow>, SearchError> {
    std::fs::create_dir_all(run_dir).map_err(|e| io_err(run_dir, e))?;
    crate::rundir::RunFiles::new(training.train.clone(), env.source)
        .write(run_dir, &arch.genome)
        .map_err(|e| io_err(run_dir, e))?;
    let mut row = StudyRow {
        hash: arch.hash.clone(),
        training: training.name.clone(),
        ok: false,
        reason: None,
        steps: training.train.steps,
        train_seconds: 0.0,
        final_loss: None,
        tse: None,
        tse_late: None,
        heldout_eps_mse: None,
        heldout_seconds: 0.0,
        scores: Vec::new(),
    };
    let ad = env.device.clone().autodiff();
    ad.seed(training.train.seed);
    let model = Unet::new(&arch.genome, &ad).map_err(|e| SearchError::Setting(e.to_string()))?;
    let opts = TrainOptions {
        run_dir: Some(run_dir),
        resume: true,
        stop: Some(stop),
        stop_at: None,
    };
    let total = training.train.steps;
    let out = crate::train::train(model, env.train, &training.train, &ad, opts, &mut |e| {
        if let TrainEvent::Step { step } = e {
            on_event(StudyEvent::Train { done: *step, total });
        }
    });
    let out = match out {
        Ok(o) if o.status == TrainStatus::Interrupted => return Ok(None),
        Ok(o) => o,
        Err(e) => {
            row.reason = Some(e.to_string());
            return Ok(Some(row));
        }
    };
    row.train_seconds = out.state.elapsed_s;
    row.final_loss = out.state.last_loss;
    (row.tse, row.tse_late) = speed_estimates(&out.log, total);
    let schedule = NoiseSchedule::new(training.train.beta_schedule, training.train.timesteps)
        .map_err(|e| SearchError::Setting(e.to_string()))?;
    let t0 = Instant::now();
    row.heldout_eps_mse = Some(env.heldout.eps_mse(&out.ema, &schedule, env.device, 128));
    row.heldout_seconds = t0.elapsed().as_secs_f64();
    let spec = [
        arch.genome.image.channels,
        arch.genome.image.size,
        arch.genome.image.size,
    ];
    for set in &training.samples {
        match score_set(&out.ema, &schedule, spec, set, cfg.kid, env, on_event) {
            Ok(mut s) => row.scores.append(&mut s),
            Err(e) => {
                row.reason = Some(format!("scoring {} x DDIM-{}: {e}", set.n, set.steps));
                return Ok(Some(row));
            }
        }
    }
    row.ok = true;
    Ok(Some(row))
}

/// The mean logged loss over the run and over its last quarter.
fn speed_estimates(log: &[LogRecord], total: u64) -> (Option<f64>, Option<f64>) {
    let mean = |it: Vec<f64>| (!it.is_empty()).then(|| it.iter().sum::<f64>() / it.len() as f64);
    let all = mean(log.iter().map(|r| r.loss).collect());
    let late = mean(
        log.iter()
            .filter(|r| r.step * 4 > total * 3)
            .map(|r| r.loss)
            .collect(),
    );
    (all, late)
}

fn score_set(
    model: &Unet,
    schedule: &NoiseSchedule,
    spec: [usize; 3],
    set: &SampleSet,
    kid_cfg: KidConfig,
    env: &StudyEnv<'_>,
    on_event: &mut dyn FnMut(StudyEvent),
) -> Result<Vec<StudyScore>, String> {
    let gen_cfg = GenerationConfig {
        n: set.n,
        sampler: SamplerKind::Ddim,
        steps: set.steps,
        eta: 0.0,
        seed: 0,
        batch_size: 100,
        precision: crate::precision::Precision::F32,
    };
    let t0 = Instant::now();
    let total = set.n;
    let summary = generated_features(
        model,
        schedule.clone(),
        spec,
        &gen_cfg,
        env.extractor,
        set.n,
        env.device,
        &mut |k| on_event(StudyEvent::Sample { done: k, total }),
    )
    .map_err(|e| e.to_string())?;
    let seconds = t0.elapsed().as_secs_f64();
    let id = env.extractor.id();
    let dim = id.dim;
    let mut out = Vec::new();
    for &m in &set.prefixes {
        let m = m.min(set.n);
        let stats = FeatureStats::of(&summary.kept[..m * dim], dim).map_err(|e| e.to_string())?;
        let fd = frechet_distance(&stats, &env.reference.stats).map_err(|e| e.to_string())?;
        out.push(StudyScore {
            metric: id.distance.clone(),
            n: m,
            steps: set.steps,
            value: fd.value,
            seconds: seconds * m as f64 / set.n as f64,
        });
    }
    let k = kid(
        &summary.kept,
        &env.reference.features,
        dim,
        kid_cfg.subsets,
        kid_cfg.subset_size,
        kid_cfg.seed,
    )
    .map_err(|e| e.to_string())?;
    out.push(StudyScore {
        metric: id.kernel_distance.clone(),
        n: set.n,
        steps: set.steps,
        value: k.mean,
        seconds,
    });
    Ok(out)
}

/// How well one proxy measure ranks the architectures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fidelity {
    /// e.g. `proxy-200 FD-classifier @ 500 x DDIM-10`.
    pub measure: String,
    pub training: String,
    /// `FD-classifier`, `KID-classifier`, `heldout-eps-MSE`, `TSE`, `TSE-late`.
    pub metric: String,
    pub n: Option<usize>,
    pub ddim_steps: Option<usize>,
    pub architectures: usize,
    pub spearman: Option<f64>,
    /// Bootstrap 90% interval of Spearman's rho (architectures resampled).
    pub spearman_lo: Option<f64>,
    pub spearman_hi: Option<f64>,
    pub kendall_tau: Option<f64>,
    /// Whether the full schedule's best architecture is among the proxy's 3 best.
    pub best_in_top3: bool,
    /// Mean seconds per architecture: its training plus this measurement.
    pub seconds_per_trial: f64,
    /// `seconds_per_trial` as a fraction of the ground truth's.
    pub cost_vs_full: f64,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudySummary {
    pub ground_truth: String,
    pub architectures: usize,
    /// Ground-truth seconds per architecture.
    pub full_seconds: f64,
    /// Every proxy measure, best Spearman first.
    pub measures: Vec<Fidelity>,
    /// The full training's other measures against the ground truth (a smaller N of the same
    /// samples, the kernel distance, the held-out loss): how noisy the truth is, and whether
    /// a cheaper measure of a fully trained model would do.
    #[serde(default)]
    pub ground_truth_checks: Vec<Fidelity>,
}

impl StudySummary {
    /// The `top` best measures, one line each: Spearman's rho with its interval, Kendall's
    /// tau, and the cost per architecture.
    pub fn best_lines(&self, top: usize) -> String {
        let f = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.2}"));
        let mut out = format!(
            "{} architecture(s) against {}; best measures (Spearman rho [90% bootstrap], tau, \
             cost):\n",
            self.architectures, self.ground_truth
        );
        for m in self.measures.iter().take(top) {
            out += &format!(
                "  {:<48} {} [{}, {}]  tau {}  {:.0} s/trial ({:.0}% of full)\n",
                m.measure,
                f(m.spearman),
                f(m.spearman_lo),
                f(m.spearman_hi),
                f(m.kendall_tau),
                m.seconds_per_trial,
                100.0 * m.cost_vs_full
            );
        }
        out
    }
}

/// Every measure a row offers: (name, training, metric, n, ddim steps, value, seconds).
type Measure = (
    String,
    String,
    String,
    Option<usize>,
    Option<usize>,
    f64,
    f64,
);

/// Per architecture: (the measure's value, the ground truth's, the measure's seconds, whether
/// it is the truly best architecture).
type Points = Vec<(f64, f64, f64, bool)>;

fn measures(r: &StudyRow) -> Vec<Measure> {
    let mut out = Vec::new();
    let t = &r.training;
    for s in &r.scores {
        out.push((
            format!("{t} {} @ {} x DDIM-{}", s.metric, s.n, s.steps),
            t.clone(),
            s.metric.clone(),
            Some(s.n),
            Some(s.steps),
            s.value,
            r.train_seconds + s.seconds,
        ));
    }
    if let Some(v) = r.heldout_eps_mse {
        out.push((
            format!("{t} heldout-eps-MSE"),
            t.clone(),
            "heldout-eps-MSE".into(),
            None,
            None,
            v,
            r.train_seconds + r.heldout_seconds,
        ));
    }
    for (name, v) in [("TSE", r.tse), ("TSE-late", r.tse_late)] {
        if let Some(v) = v {
            out.push((
                format!("{t} {name}"),
                t.clone(),
                name.into(),
                None,
                None,
                v,
                r.train_seconds,
            ));
        }
    }
    out
}

/// Rank every measure of `rows` against the ground truth: the full training's first
/// Fréchet score at its largest N.
pub fn summarise(cfg: &StudyConfig, rows: &[StudyRow]) -> Option<StudySummary> {
    let full = cfg.full();
    let truth_of = |r: &StudyRow| {
        r.scores
            .iter()
            .filter(|s| s.metric.starts_with("F"))
            .max_by_key(|s| s.n)
            .map(|s| {
                (
                    s.value,
                    r.train_seconds + s.seconds,
                    s.metric.clone(),
                    s.n,
                    s.steps,
                )
            })
    };
    let truth: Vec<(String, f64, f64)> = rows
        .iter()
        .filter(|r| r.training == FULL && r.ok)
        .filter_map(|r| truth_of(r).map(|(v, s, ..)| (r.hash.clone(), v, s)))
        .collect();
    let name = rows
        .iter()
        .find(|r| r.training == FULL && r.ok)
        .and_then(truth_of)
        .map(|(_, _, m, n, k)| {
            format!("{FULL} ({} steps) {m} @ {n} x DDIM-{k}", full.train.steps)
        })?;
    let true_best = truth
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|t| t.0.clone());
    let full_seconds = truth.iter().map(|t| t.2).sum::<f64>() / truth.len().max(1) as f64;
    let rank = |proxies: bool| -> Vec<Fidelity> {
        let mut by_measure: std::collections::BTreeMap<String, (Measure, Points)> =
            Default::default();
        for r in rows
            .iter()
            .filter(|r| r.ok && (r.training != FULL) == proxies)
        {
            let Some((_, tv, _)) = truth.iter().find(|t| t.0 == r.hash) else {
                continue;
            };
            for m in measures(r) {
                let e = by_measure
                    .entry(m.0.clone())
                    .or_insert((m.clone(), Vec::new()));
                e.1.push((
                    m.5,
                    *tv,
                    m.6,
                    r.hash == *true_best.as_ref().expect("a truth"),
                ));
            }
        }
        let mut out: Vec<Fidelity> = by_measure
            .into_values()
            // The ground truth itself (equal to the truth everywhere) is not ranked.
            .filter(|(m, pts)| m.1 != FULL || !pts.iter().all(|x| x.0 == x.1))
            .map(|(m, pts)| fidelity(m, &pts, full_seconds, cfg.seed))
            .collect();
        out.sort_by(|a, b| {
            b.spearman
                .unwrap_or(-2.0)
                .partial_cmp(&a.spearman.unwrap_or(-2.0))
                .expect("finite")
        });
        out
    };
    Some(StudySummary {
        ground_truth: name,
        architectures: truth.len(),
        full_seconds,
        measures: rank(true),
        ground_truth_checks: rank(false),
    })
}

/// One measure's fidelity from its points.
fn fidelity(m: Measure, pts: &Points, full_seconds: f64, seed: u64) -> Fidelity {
    let (p, g): (Vec<f64>, Vec<f64>) = pts.iter().map(|x| (x.0, x.1)).unzip();
    let (lo, hi) = bootstrap_interval(&p, &g, defaults::BOOTSTRAP, 0.90, seed)
        .map_or((None, None), |(a, b)| (Some(a), Some(b)));
    let secs = pts.iter().map(|x| x.2).sum::<f64>() / pts.len() as f64;
    Fidelity {
        measure: m.0,
        training: m.1,
        metric: m.2,
        n: m.3,
        ddim_steps: m.4,
        architectures: pts.len(),
        spearman: spearman(&p, &g),
        spearman_lo: lo,
        spearman_hi: hi,
        kendall_tau: kendall_tau(&p, &g),
        best_in_top3: best_in_top(&p, pts.iter().map(|x| x.3), 3),
        seconds_per_trial: secs,
        cost_vs_full: secs / full_seconds.max(1e-9),
    }
}

/// Whether the study's truly best architecture (flagged in `is_best`) is among the `k`
/// lowest `proxy` values; false when it has no value for this measure.
fn best_in_top(proxy: &[f64], is_best: impl Iterator<Item = bool>, k: usize) -> bool {
    let Some(best) = is_best.enumerate().find(|x| x.1).map(|x| x.0) else {
        return false;
    };
    let mut order: Vec<usize> = (0..proxy.len()).collect();
    order.sort_by(|&a, &b| proxy[a].total_cmp(&proxy[b]));
    order.iter().take(k).any(|&i| i == best)
}

/// Rank what the study in `dir` has measured ([`summarise`]) and write `summary.json`,
/// `summary.csv` and `architectures.csv`; None while no architecture has its full training.
pub fn write_results(
    dir: &Path,
    cfg: &StudyConfig,
    rows: &[StudyRow],
) -> Result<Option<StudySummary>, SearchError> {
    let Some(summary) = summarise(cfg, rows) else {
        return Ok(None);
    };
    write_summary(dir, &summary)?;
    write_table(dir, cfg, rows)?;
    Ok(Some(summary))
}

/// Write `summary.json` and `summary.csv`.
pub fn write_summary(dir: &Path, s: &StudySummary) -> Result<(), SearchError> {
    let p = dir.join(SUMMARY_FILE);
    let text = serde_json::to_string_pretty(s).expect("serialises");
    crate::train::write_atomic(&p, text.as_bytes()).map_err(|e| io_err(&p, e))?;
    let mut csv = String::from(
        "measure,training,metric,n,ddim_steps,architectures,spearman,spearman_lo90,spearman_hi90,kendall_tau,best_in_top3,seconds_per_trial,cost_vs_full\n",
    );
    let o = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.4}"));
    let u = |v: Option<usize>| v.map_or(String::new(), |x| x.to_string());
    for m in s.measures.iter().chain(&s.ground_truth_checks) {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{:.1},{:.4}\n",
            m.measure,
            m.training,
            m.metric,
            u(m.n),
            u(m.ddim_steps),
            m.architectures,
            o(m.spearman),
            o(m.spearman_lo),
            o(m.spearman_hi),
            o(m.kendall_tau),
            m.best_in_top3,
            m.seconds_per_trial,
            m.cost_vs_full
        ));
    }
    let p = dir.join(SUMMARY_CSV);
    crate::train::write_atomic(&p, csv.as_bytes()).map_err(|e| io_err(&p, e))
}

/// The folder of a search's retraining (`diffnas search retrain`), inside the search's.
pub const RETRAIN_DIR: &str = "retrain";

/// One row of a retraining's table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrainRow {
    pub name: String,
    pub hash: String,
    pub params: u64,
    pub macs: u64,
    /// The full metric (`FD-classifier @ 2000 x DDIM-50`), None when the training failed.
    pub score: Option<f64>,
    pub metric: String,
    pub heldout_eps_mse: Option<f64>,
    pub train_seconds: f64,
    pub run_dir: PathBuf,
    pub reason: Option<String>,
}

/// The retraining's rows, in the order of `cfg.architectures`, for those that are done.
pub fn retrain_rows(dir: &Path, cfg: &StudyConfig, rows: &[StudyRow]) -> Vec<RetrainRow> {
    let full = cfg.full();
    let want = full.samples.first();
    cfg.architectures
        .iter()
        .filter_map(|a| {
            let r = rows
                .iter()
                .find(|r| r.hash == a.hash && r.training == FULL)?;
            let s = r.scores.iter().find(|s| {
                s.metric.starts_with('F') && want.is_some_and(|w| s.n == w.n && s.steps == w.steps)
            });
            Some(RetrainRow {
                name: a.origin.clone(),
                hash: a.hash.clone(),
                params: a.params,
                macs: a.macs,
                score: s.map(|s| s.value),
                metric: s.map_or_else(String::new, |s| {
                    format!("{} @ {} x DDIM-{}", s.metric, s.n, s.steps)
                }),
                heldout_eps_mse: r.heldout_eps_mse,
                train_seconds: r.train_seconds,
                run_dir: dir.join("runs").join(&a.hash).join(FULL),
                reason: r.reason.clone(),
            })
        })
        .collect()
}

/// `retrain.md`: the winner beside the baselines, one row each.
pub fn retrain_markdown(cfg: &StudyConfig, rows: &[RetrainRow]) -> String {
    use std::fmt::Write as _;
    let full = cfg.full();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Retrained with the full schedule\n\n{} steps of batch {} (cosine from LR {:e}, \
         warm-up {}, EMA {}), scored on {} samples with DDIM {}; held-out eps-MSE on {} test \
         triples.\n",
        full.train.steps,
        full.train.batch_size,
        full.train.lr,
        full.train.warmup_steps,
        full.train.ema_decay,
        full.samples.first().map_or(0, |x| x.n),
        full.samples.first().map_or(0, |x| x.steps),
        cfg.heldout_triples
    );
    let metric = rows
        .iter()
        .find(|r| !r.metric.is_empty())
        .map_or("score", |r| r.metric.as_str());
    let _ = writeln!(
        s,
        "| genome | hash | M params | M MACs | {metric} | held-out eps-MSE | training s |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | `{}` | {:.3} | {:.1} | {} | {} | {:.0} |",
            r.name,
            r.hash,
            r.params as f64 / 1e6,
            r.macs as f64 / 1e6,
            r.score.map_or_else(
                || format!("failed: {}", r.reason.as_deref().unwrap_or("?")),
                |v| format!("{v:.2}")
            ),
            r.heldout_eps_mse.map_or("-".into(), |v| format!("{v:.4}")),
            r.train_seconds
        );
    }
    s
}

/// What `proxy-check` is asked for; `None` takes the scale's default.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyAsk {
    pub data: DataSource,
    pub max_images: Option<usize>,
    pub scale: super::config::Scale,
    pub architectures: usize,
    pub full_steps: u64,
    pub seed: u64,
    pub batch_size: usize,
    pub proxy_steps: Option<u64>,
    pub proxy_lr: Option<f64>,
    pub proxy_score_n: usize,
    pub full_score_n: usize,
    pub full_score_steps: usize,
}

/// The settings of [`StudyAsk`] (by field name) a resumed study may not be given.
pub const FIXED_ON_RESUME: [&str; 12] = [
    "data",
    "max_images",
    "scale",
    "architectures",
    "full_steps",
    "seed",
    "batch_size",
    "proxy_steps",
    "proxy_lr",
    "proxy_score_n",
    "full_score_n",
    "full_score_steps",
];

/// The settings of a retraining ([`StudyConfig::retraining`]) a resumed one may not be given.
pub const RETRAIN_FIXED_ON_RESUME: [&str; 4] = ["baseline", "steps", "score_n", "score_steps"];

impl StudyConfig {
    /// Where the study's training data came from, and the device it runs on.
    pub fn source(&self, device: &crate::device::DeviceInfo) -> crate::rundir::RunSource {
        crate::rundir::RunSource {
            data: self.data.clone(),
            max_images: self.max_images,
            device: device.clone(),
        }
    }

    /// The study in `dir`, which must hold one.
    pub fn existing(dir: &Path) -> Result<StudyConfig, SearchError> {
        StudyConfig::read(dir)?.ok_or_else(|| {
            SearchError::Setting(format!(
                "{}: no {STUDY_FILE} (is it a study's folder?)",
                dir.display()
            ))
        })
    }

    /// Records the extractor the study's scores use; a study that started with another one
    /// refuses it (its scores would not compare).
    pub fn bind_extractor(&mut self, id: &ExtractorId) -> Result<(), SearchError> {
        match &self.extractor {
            Some(stored) if stored != id => Err(SearchError::Setting(format!(
                "this study was scored with {stored}; now {id} would be used. Pass the same \
                 --extractor/--inception/--classifier as when it started"
            ))),
            _ => {
                self.extractor = Some(id.clone());
                Ok(())
            }
        }
    }

    /// The study of `dir`: with `resume`, the stored one (refusing `given`, the first setting
    /// given explicitly, since a resumed study keeps its own); else a fresh one from `make`,
    /// refused where a study already is.
    pub fn open(
        dir: &Path,
        resume: bool,
        given: Option<&str>,
        make: impl FnOnce() -> Result<StudyConfig, SearchError>,
    ) -> Result<StudyConfig, SearchError> {
        match (resume, StudyConfig::read(dir)?) {
            (true, Some(c)) => match given {
                Some(f) => Err(SearchError::Setting(format!(
                    "--{} was given, but a resumed study keeps the settings in {}",
                    f.replace('_', "-"),
                    StudyConfig::path(dir).display()
                ))),
                None => Ok(c),
            },
            (true, None) => Err(SearchError::Setting(format!(
                "{}: no {STUDY_FILE} to resume from",
                dir.display()
            ))),
            (false, Some(_)) => Err(SearchError::Setting(format!(
                "{} already holds a study ({STUDY_FILE}); continue it with --resume or pick \
                 another --run-dir",
                dir.display()
            ))),
            (false, None) => make(),
        }
    }

    /// A study of the space and the proxy a search at `a.scale` would have on `device`.
    pub fn for_scale(
        a: &StudyAsk,
        device: &crate::device::DeviceInfo,
    ) -> Result<StudyConfig, SearchError> {
        let data = a.data.load(crate::data::Split::Train)?;
        let image = crate::genome::ImageSpec {
            channels: data.channels,
            size: data.height,
        };
        let r = super::config::SearchRequest {
            trial_batch_size: a.batch_size,
            ..super::config::SearchRequest::defaults(a.scale, a.data.clone())
        };
        let search = super::config::SearchConfig::new(&r, image, device);
        let t = &search.trial.train;
        StudyConfig::new(&StudyRequest {
            data: a.data.clone(),
            max_images: a.max_images,
            seed: a.seed,
            space: search.space.clone(),
            architectures: a.architectures,
            include: Vec::new(),
            full_steps: a.full_steps,
            batch_size: a.batch_size,
            proxies: StudyRequest::proxies_around(
                a.proxy_steps.unwrap_or(t.steps),
                a.proxy_lr.unwrap_or(t.lr),
            ),
            full_score_n: a.full_score_n,
            full_score_steps: a.full_score_steps,
            proxy_score_n: a.proxy_score_n,
        })
    }
    /// The retraining of the search in `search_dir`: its best scored trial and the
    /// `baselines` (preset names or genome files), trained for `steps` with the search's
    /// data, seed and batch and scored with `n` samples of DDIM-`ddim`.
    pub fn retraining(
        search_dir: &Path,
        baselines: &[String],
        steps: u64,
        n: usize,
        ddim: usize,
    ) -> Result<StudyConfig, SearchError> {
        let search = super::config::SearchConfig::read(search_dir)?;
        let log = super::TrialLog::open(search_dir)?;
        let Some(best) = log.best() else {
            return Err(SearchError::Setting(format!(
                "{}: no scored trial to retrain",
                search_dir.display()
            )));
        };
        let mut include = vec![(
            format!("search best (trial {})", best.index),
            best.genome.clone(),
        )];
        for b in baselines {
            let g =
                Genome::load(b).map_err(|e| SearchError::Setting(format!("--baseline: {e}")))?;
            include.push((b.clone(), g));
        }
        StudyConfig::new(&StudyRequest {
            data: search.data.clone(),
            max_images: search.max_images,
            seed: search.seed,
            space: search.space.clone(),
            architectures: include.len(),
            include,
            full_steps: steps,
            batch_size: search.trial.train.batch_size,
            proxies: Vec::new(),
            full_score_n: n,
            full_score_steps: ddim,
            proxy_score_n: n,
        })
    }

    /// The training images (cut to `max_images`, fitted to the space's images) and the
    /// held-out set (from the test split; an image folder has none and is refused).
    pub fn load_data(&self) -> Result<(Dataset, HeldOutSet), SearchError> {
        use crate::data::Split;
        if matches!(self.data, DataSource::Folder(_)) {
            return Err(SearchError::Setting(format!(
                "--data {}: an image folder has no test split for the held-out loss; use a \
                 dataset with one (fashion-mnist, mnist, cifar10)",
                self.data
            )));
        }
        let image = self.space.image;
        let mut train = self.data.load(Split::Train)?;
        if let Some(m) = self.max_images {
            train.truncate(m);
        }
        let train = train.to_spec(image.channels, image.size)?;
        let test = self
            .data
            .load(Split::Test)?
            .to_spec(image.channels, image.size)?;
        let heldout = HeldOutSet::new(
            &test,
            self.heldout_triples,
            self.full().train.timesteps,
            self.seed,
        );
        Ok((train, heldout))
    }
}

/// Write a retraining's `retrain.md` and `retrain.json` into `dir`; returns the Markdown.
pub fn write_retrain(
    dir: &Path,
    cfg: &StudyConfig,
    rows: &[RetrainRow],
) -> Result<String, SearchError> {
    let md = retrain_markdown(cfg, rows);
    let p = dir.join("retrain.md");
    crate::train::write_atomic(&p, md.as_bytes()).map_err(|e| io_err(&p, e))?;
    let j = dir.join("retrain.json");
    let text = serde_json::to_string_pretty(rows).expect("serialises");
    crate::train::write_atomic(&j, text.as_bytes()).map_err(|e| io_err(&j, e))?;
    Ok(md)
}

/// Write `architectures.csv`: per architecture (cheapest first) its hash, parameters, MACs and
/// every measure's value, the full training's first; empty where a unit is not done.
pub fn write_table(dir: &Path, cfg: &StudyConfig, rows: &[StudyRow]) -> Result<(), SearchError> {
    let mut names: Vec<String> = Vec::new();
    let mut cells: std::collections::HashMap<(String, String), f64> = Default::default();
    for r in rows.iter().filter(|r| r.ok) {
        for m in measures(r) {
            if !names.contains(&m.0) {
                names.push(m.0.clone());
            }
            cells.insert((r.hash.clone(), m.0), m.5);
        }
    }
    names.sort_by_key(|n| (!n.starts_with(FULL), n.clone()));
    let mut csv = format!("hash,params,macs,{}\n", names.join(","));
    for a in &cfg.architectures {
        let vals: Vec<String> = names
            .iter()
            .map(|n| {
                cells
                    .get(&(a.hash.clone(), n.clone()))
                    .map_or(String::new(), |v| format!("{v:.6}"))
            })
            .collect();
        csv.push_str(&format!(
            "{},{},{},{}\n",
            a.hash,
            a.params,
            a.macs,
            vals.join(",")
        ));
    }
    let p = dir.join(TABLE_CSV);
    crate::train::write_atomic(&p, csv.as_bytes()).map_err(|e| io_err(&p, e))
}
