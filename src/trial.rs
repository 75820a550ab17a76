//! One search trial: genome -> budget check -> build -> rapid-convergence training -> sample ->
//! score (RFID, or its classifier-space twin when the Inception weights are absent). The one
//! module that joins model, train, diffusion, eval and data.
//!
//! With a [`RunSource`], the trial's folder is a run directory like `diffnas train`'s: its
//! `genome.json` is the genome as trained (proxy dropout applied) and its `train.json` the
//! trial's configuration.
//!
//! A trial that fails (invalid or over-budget genome, non-finite loss, a panic such as a device
//! out of memory) returns a failed outcome with its reason; the search goes on.

use crate::data::Dataset;
use crate::diffusion::NoiseSchedule;
use crate::diffusion::SamplerKind;
use crate::eval::ExtractorId;
use crate::eval::extract::FeatureExtractor;
use crate::eval::reference::Reference;
use crate::eval::rfid::{GenerationConfig, KidConfig, score_denoiser};
use crate::genome::{Genome, SearchSpace, cost};
use crate::model::Unet;
use crate::rundir::{RunFiles, RunSource};
use crate::train::{LrSchedule, TrainConfig, TrainError, TrainOptions, TrainStatus, train};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// The trial's schedule and scoring (ALGORITHMS.md sections 4 and 5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialConfig {
    /// Rapid-convergence training: linear warm-up, cosine decay to `min_lr_ratio`, EMA with
    /// warm-up, a fixed step budget.
    pub train: TrainConfig,
    /// Dropout used during the proxy run instead of the genome's (None: the genome's).
    pub proxy_dropout: Option<f64>,
    /// How the score's samples are drawn (RFID: 5,000, DDIM 50).
    pub score: GenerationConfig,
    /// KID alongside (None: skipped).
    pub kid: Option<KidConfig>,
}

impl TrialConfig {
    /// The rapid-convergence proxy: `steps` of batch `batch_size`, peak LR 2e-4 (configurable),
    /// warm-up 5% of the steps, cosine to 10% of the peak, EMA 0.999 with warm-up.
    pub fn rapid(steps: u64, batch_size: usize) -> Self {
        TrialConfig {
            train: TrainConfig::new()
                .with_steps(steps)
                .with_batch_size(batch_size)
                .with_lr(2e-4)
                .with_warmup_steps((steps / 20).max(1))
                .with_lr_schedule(LrSchedule::Cosine)
                .with_min_lr_ratio(0.1)
                .with_ema_decay(0.999)
                .with_ema_warmup(true)
                .with_checkpoint_every((steps / 4).max(1))
                .with_keep_checkpoints(1)
                .with_log_every(50),
            proxy_dropout: Some(0.0),
            score: GenerationConfig::rfid(),
            kid: Some(KidConfig::default()),
        }
    }

    /// The proxy these settings score with `extractor`'s features.
    pub fn proxy(&self, extractor: &ExtractorId) -> Proxy {
        Proxy {
            metric: Proxy::metric_for(extractor),
            extractor: extractor.clone(),
            n: self.score.n,
            sampler: self.score.sampler,
            sampling_steps: self.score.steps,
            train_steps: self.train.steps,
            batch_size: self.train.batch_size,
            lr: self.train.lr,
        }
    }
}

/// What a trial's score measures: the distance and its feature space, how many samples of
/// which sampler at how many steps, after which training. Two scores rank against each other
/// only when their proxies are equal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proxy {
    /// `RFID` (Inception features) or `R` + the extractor's distance (`RFD-classifier`): a
    /// reduced score is never mistaken for a full one.
    pub metric: String,
    pub extractor: ExtractorId,
    pub n: usize,
    pub sampler: SamplerKind,
    pub sampling_steps: usize,
    pub train_steps: u64,
    pub batch_size: usize,
    pub lr: f64,
}

impl Proxy {
    /// The Inception features' width: below this many samples their covariance is singular.
    pub const INCEPTION_MIN_N: usize = 2048;

    /// The score's name for a feature space: `RFID` for Inception features, else `R` + the
    /// distance (`RFD-classifier`).
    pub fn metric_for(ext: &ExtractorId) -> String {
        if ext.distance == "FID" {
            "RFID".into()
        } else {
            format!("R{}", ext.distance)
        }
    }

    /// e.g. `RFD-classifier @ 500 x DDIM-10`: the label of every record, table and chart.
    pub fn label(&self) -> String {
        let sampler = match self.sampler {
            SamplerKind::Ddim => "DDIM",
            SamplerKind::Ddpm => "DDPM",
        };
        format!(
            "{} @ {} x {sampler}-{}",
            self.metric, self.n, self.sampling_steps
        )
    }

    /// The label with the training it follows and the features' identity.
    pub fn describe(&self) -> String {
        format!(
            "{} after {} training steps (batch {}, peak LR {:e}); features: {}",
            self.label(),
            self.train_steps,
            self.batch_size,
            self.lr,
            self.extractor
        )
    }

    /// What a reader of the score should know: an Inception score from fewer than 2,048
    /// samples.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.extractor.distance == "FID" && self.n < Self::INCEPTION_MIN_N {
            w.push(format!(
                "{} from {} samples, fewer than the Inception features' {} dimensions: their \
                 covariance is singular and the value carries a large N-dependent bias; it \
                 ranks trials scored the same way and is not an FID",
                self.metric,
                self.n,
                Self::INCEPTION_MIN_N
            ));
        }
        w
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialStatus {
    Ok,
    /// The genome was rejected before training (validation or budget).
    Invalid,
    /// Training or scoring failed.
    Failed,
    /// Stopped by the user; the trial is re-run (resuming its checkpoint) on `--resume`.
    Interrupted,
}

/// What a trial produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialOutcome {
    pub status: TrialStatus,
    /// The score (lower is better); None unless `status` is ok.
    pub score: Option<f64>,
    /// Name of the score: `RFID`, `RFD-classifier`, ...
    pub metric: String,
    pub kid: Option<f64>,
    pub params: Option<u64>,
    pub macs: Option<u64>,
    pub final_loss: Option<f64>,
    pub train_seconds: f64,
    pub score_seconds: f64,
    pub seconds: f64,
    pub reason: Option<String>,
    /// How the score was made (None: a stub score, or a record from before proxies were
    /// recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Proxy>,
    /// What a reader of the score should know (e.g. an Inception score from few samples).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl TrialOutcome {
    pub fn rejected(status: TrialStatus, metric: &str, reason: String) -> Self {
        TrialOutcome {
            status,
            score: None,
            metric: metric.into(),
            kid: None,
            params: None,
            macs: None,
            final_loss: None,
            train_seconds: 0.0,
            score_seconds: 0.0,
            seconds: 0.0,
            reason: Some(reason),
            proxy: None,
            warnings: Vec::new(),
        }
    }
}

/// Scores genomes. Search strategies see only this.
pub trait Evaluator {
    /// The score's label, e.g. `RFD-classifier @ 500 x DDIM-10` ([`Proxy::label`]), or
    /// `stub`.
    fn metric(&self) -> String;
    /// Evaluate `genome`; `dir` (when given) holds the trial's files and checkpoints, so that an
    /// interrupted trial resumes. `stop` asks for an early, resumable stop.
    fn evaluate(&mut self, genome: &Genome, dir: Option<&Path>, stop: &AtomicBool) -> TrialOutcome;
}

/// Where a trial is: training step `done` of `total`, or scoring image `done` of `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrialProgress {
    Train { done: u64, total: u64 },
    Score { done: u64, total: u64 },
}

/// Told about a running trial's progress.
pub type ProgressHook = Box<dyn FnMut(TrialProgress)>;

/// The real evaluator: trains on `data` and scores against `reference` with `extractor`.
pub struct ProxyEvaluator {
    pub space: SearchSpace,
    pub data: Dataset,
    pub cfg: TrialConfig,
    pub extractor: Box<dyn FeatureExtractor>,
    pub reference: Reference,
    pub device: Device,
    /// Where the training data came from and the device's description: with them, every
    /// trial's folder gets a `train.json` and is a complete run directory (`sample`, `eval`,
    /// `export` and `train --resume` open it). None: trials keep only their weights.
    pub source: Option<RunSource>,
    pub progress: Option<ProgressHook>,
}

impl ProxyEvaluator {
    /// The evaluator of a search over `space`: `data` (its training images) fitted to the
    /// space's image size, trials trained per `cfg` and scored with `extractor` against
    /// `reference`. A search scored before with another extractor (`scored_with`) refuses:
    /// its scores would not compare.
    #[allow(clippy::too_many_arguments)]
    pub fn for_search(
        space: SearchSpace,
        cfg: TrialConfig,
        data: Dataset,
        extractor: Box<dyn FeatureExtractor>,
        reference: Reference,
        scored_with: Option<&crate::eval::ExtractorId>,
        device: Device,
        source: RunSource,
    ) -> Result<ProxyEvaluator, String> {
        if let Some(id) = scored_with
            && id != extractor.id()
        {
            return Err(format!(
                "this search was scored with {id}; now {} would be used. Pass the same \
                 --extractor/--inception/--classifier as when it started",
                extractor.id()
            ));
        }
        let data = data
            .to_spec(space.image.channels, space.image.size)
            .map_err(|e| e.to_string())?;
        Ok(ProxyEvaluator {
            space,
            data,
            cfg,
            extractor,
            reference,
            device,
            source: Some(source),
            progress: None,
        })
    }

    /// The proxy every trial of this evaluator is scored with.
    pub fn proxy(&self) -> Proxy {
        self.cfg.proxy(self.extractor.id())
    }

    fn run(
        &mut self,
        genome: &Genome,
        dir: Option<&Path>,
        stop: &AtomicBool,
    ) -> Result<TrialOutcome, (TrialStatus, String)> {
        let metric = self.proxy().metric;
        let t0 = Instant::now();
        self.space
            .validate(genome)
            .map_err(|e| (TrialStatus::Invalid, e.to_string()))?;
        let c = cost(genome).map_err(|e| (TrialStatus::Invalid, e.to_string()))?;
        let mut g = self
            .cfg
            .train
            .genome_for(genome)
            .map_err(|e| (TrialStatus::Invalid, e))?;
        if let Some(p) = self.cfg.proxy_dropout {
            g.dropout = p;
        }
        if let (Some(dir), Some(source)) = (dir, &self.source) {
            RunFiles::new(self.cfg.train.clone(), source)
                .write(dir, &g)
                .map_err(|e| (TrialStatus::Failed, e.to_string()))?;
        }
        let ad = self.device.clone().autodiff();
        ad.seed(self.cfg.train.seed);
        let model = Unet::new(&g, &ad).map_err(|e| (TrialStatus::Invalid, e.to_string()))?;
        let opts = TrainOptions {
            run_dir: dir,
            resume: true,
            stop: Some(stop),
            stop_at: None,
        };
        let total = self.cfg.train.steps;
        let mut progress = self.progress.take();
        let mut on_train = |e: &crate::train::TrainEvent| {
            if let (Some(p), crate::train::TrainEvent::Step { step }) = (progress.as_mut(), e) {
                p(TrialProgress::Train { done: *step, total });
            }
        };
        let trained = train(model, &self.data, &self.cfg.train, &ad, opts, &mut on_train);
        self.progress = progress;
        let out = trained.map_err(|e| match e {
            TrainError::Config(m) => (TrialStatus::Invalid, m),
            other => (TrialStatus::Failed, other.to_string()),
        })?;
        if out.status == TrainStatus::Interrupted {
            return Err((TrialStatus::Interrupted, "stopped by the user".into()));
        }
        let train_seconds = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let schedule = NoiseSchedule::new(self.cfg.train.beta_schedule, self.cfg.train.timesteps)
            .map_err(|e| (TrialStatus::Failed, e.to_string()))?;
        let spec = [g.image.channels, g.image.size, g.image.size];
        let n = self.cfg.score.n as u64;
        let mut progress = self.progress.take();
        let scored = score_denoiser(
            &out.ema,
            schedule,
            spec,
            &self.cfg.score,
            self.extractor.as_ref(),
            &self.reference,
            self.cfg.kid,
            &self.device,
            &mut |k| {
                if let Some(p) = progress.as_mut() {
                    p(TrialProgress::Score {
                        done: k as u64,
                        total: n,
                    });
                }
            },
        );
        self.progress = progress;
        let score = scored.map_err(|e| (TrialStatus::Failed, format!("scoring: {e}")))?;
        let proxy = self.proxy();
        let mut warnings = proxy.warnings();
        warnings.extend(score.warnings);
        Ok(TrialOutcome {
            status: TrialStatus::Ok,
            score: Some(score.value),
            metric,
            kid: score.kid.map(|k| k.mean),
            params: Some(c.params),
            macs: Some(c.macs),
            final_loss: out.state.last_loss,
            train_seconds,
            score_seconds: t1.elapsed().as_secs_f64(),
            seconds: t0.elapsed().as_secs_f64(),
            reason: None,
            proxy: Some(proxy),
            warnings,
        })
    }
}

impl Evaluator for ProxyEvaluator {
    fn metric(&self) -> String {
        self.proxy().label()
    }

    fn evaluate(&mut self, genome: &Genome, dir: Option<&Path>, stop: &AtomicBool) -> TrialOutcome {
        let t0 = Instant::now();
        let metric = self.proxy().metric;
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(genome, dir, stop)));
        let (status, reason) = match result {
            Ok(Ok(outcome)) => return outcome,
            Ok(Err(e)) => e,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                (TrialStatus::Failed, format!("panicked: {msg}"))
            }
        };
        let mut o = TrialOutcome::rejected(status, &metric, reason);
        if let Ok(c) = cost(genome) {
            o.params = Some(c.params);
            o.macs = Some(c.macs);
        }
        o.seconds = t0.elapsed().as_secs_f64();
        o
    }
}

/// A known, cheap function of the genome standing in for training: for strategy tests and
/// dry runs of a search (`--evaluator stub`). Lower is better; its optimum is a 3-level UNet with
/// multipliers (1, 2, 2), two standard ResBlocks per level, 64 base channels, attention at one
/// resolution and scale-shift norm. Scores are reported as `stub`, never as a distance.
pub struct StubEvaluator {
    pub space: SearchSpace,
}

impl StubEvaluator {
    pub fn score(g: &Genome) -> f64 {
        let target = [1usize, 2, 2, 2];
        let mut s = (g.encoder.len() as f64 - 3.0).abs();
        for (l, level) in g.encoder.iter().enumerate() {
            s += (level.channel_mult as f64 - target[l.min(3)] as f64).abs() * 0.5;
            s += (level.res_blocks.len() as f64 - 2.0).abs() * 0.5;
        }
        let blocks = g
            .encoder
            .iter()
            .flat_map(|l| &l.res_blocks)
            .chain(&g.middle.res_blocks)
            .chain(g.decoder.iter().flat_map(|l| &l.res_blocks));
        for b in blocks {
            s += b.kernels.iter().filter(|&&k| k != 3).count() as f64 * 0.2;
            s += (b.hidden_mult - 1.0).abs() * 0.4;
        }
        s += (g.base_channels as f64 / 64.0).log2().abs();
        s += (g.attention.resolutions.len() as f64 - 1.0).abs() * 0.3;
        s += if g.scale_shift_norm { 0.0 } else { 0.25 };
        s + g.dropout
    }
}

impl Evaluator for StubEvaluator {
    fn metric(&self) -> String {
        "stub".into()
    }

    fn evaluate(
        &mut self,
        genome: &Genome,
        _dir: Option<&Path>,
        _stop: &AtomicBool,
    ) -> TrialOutcome {
        if let Err(e) = self.space.validate(genome) {
            return TrialOutcome::rejected(TrialStatus::Invalid, "stub", e.to_string());
        }
        let c = cost(genome).expect("validated");
        TrialOutcome {
            status: TrialStatus::Ok,
            score: Some(Self::score(genome)),
            metric: "stub".into(),
            kid: None,
            params: Some(c.params),
            macs: Some(c.macs),
            final_loss: None,
            train_seconds: 0.0,
            score_seconds: 0.0,
            seconds: 0.0,
            reason: None,
            proxy: None,
            warnings: Vec::new(),
        }
    }
}
