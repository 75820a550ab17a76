//! `search.json`: everything that determines a search, resolved once from what the user asked
//! for and the `--scale` defaults, written before the first trial and read back on resume.
//!
//! A resumed search keeps its configuration: only the budget (`trials`, `max_minutes`) may
//! change; any other setting the user gives must match the stored one
//! ([`SearchConfig::resume`]).

use super::evolution::{Evolution, EvolutionConfig};
use super::job::Evaluation;
use super::llm::client::{ChatClient, LlmConfig, RetryHook};
use super::llm::{LlmSearch, LlmSearchConfig, RoundHook};
use super::random::RandomSearch;
use super::{CONFIG_FILE, Limits, SearchError, Strategy, io_err};
use crate::data::{DataSource, Dataset, Split};
use crate::device::{DeviceInfo, SelectedDevice};
use crate::eval::extract::FeatureExtractor;
use crate::eval::reference::Reference;
use crate::eval::rfid::{GenerationConfig, KidConfig};
use crate::genome::{Budget, ImageSpec, SearchSpace};
use crate::trial::TrialConfig;
use crate::trial::{Evaluator, ProgressHook};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Settings a search takes without `--scale`: one source for the CLI's defaults.
pub mod defaults {
    pub const SEED: u64 = 0;
    pub const TRIAL_BATCH_SIZE: usize = 32;
    /// Regularized evolution as published: no crossover.
    pub const CROSSOVER: f64 = 0.0;
    /// Proposals in a row that were all duplicates or invalid before the search gives up.
    pub const MAX_STALE: usize = 200;
    /// Starts of a trial whose job vanished without an outcome, before it is logged as failed.
    pub const MAX_ATTEMPTS: u32 = 3;
    /// Slurm jobs a search keeps in flight unless told (`--parallel`).
    pub const SLURM_SLOTS: usize = 8;
}

/// Which evaluator scores the trials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvaluatorKind {
    /// Train each candidate briefly and score its samples (the real thing).
    Proxy,
    /// A known function of the genome, no training: for dry runs of a search's mechanics.
    Stub,
}

/// Where a search's trials run (see [`super::executor`] and [`super::slurm`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorKind {
    /// This machine: one trial at a time in the search's process, or one process per slot.
    Local,
    /// Slurm array jobs.
    Slurm,
}

/// `sbatch` arguments from one string: split at whitespace, with '...' and "..." quoting.
pub fn shell_words(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut quote, mut any) = (Vec::new(), String::new(), None, false);
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The strategy and its own settings.
#[derive(Debug, Clone, PartialEq)]
pub enum StrategyConfig {
    Random,
    Evolution(EvolutionConfig),
    /// The endpoint (no key: only the name of its environment variable) and the search's
    /// rounds and memory.
    Llm(LlmConfig, LlmSearchConfig),
}

impl StrategyConfig {
    pub fn name(&self) -> &'static str {
        match self {
            StrategyConfig::Random => "random",
            StrategyConfig::Evolution(_) => "evolution",
            StrategyConfig::Llm(..) => "llm",
        }
    }
}

/// The strategy a user asked for, before the scale fills in what they left out.
#[derive(Debug, Clone, PartialEq)]
pub enum StrategyChoice {
    Random,
    Evolution {
        population: Option<usize>,
        sample: Option<usize>,
        crossover: f64,
    },
    Llm(LlmConfig, LlmSearchConfig),
}

impl StrategyChoice {
    /// The LLM strategy: an endpoint (its base URL given) and rounds of at least one proposal.
    pub fn llm(endpoint: LlmConfig, search: LlmSearchConfig) -> Result<Self, SearchError> {
        if endpoint.base_url.trim().is_empty() {
            return Err(SearchError::Setting(
                "no LLM endpoint configured: pass --llm-base-url (or set DIFFNAS_LLM_BASE_URL) \
                 to an OpenAI-compatible server. Offline, the baselines `diffnas search random` \
                 and `diffnas search evolution` need none."
                    .into(),
            ));
        }
        if search.rounds == 0 || search.per_round == 0 {
            return Err(SearchError::Setting(
                "--rounds and --per-round must be at least 1".into(),
            ));
        }
        Ok(StrategyChoice::Llm(endpoint, search))
    }

    /// The strategy's name, as in `diffnas search <name>` and `search.json`.
    pub fn name(&self) -> &'static str {
        match self {
            StrategyChoice::Random => "random",
            StrategyChoice::Evolution { .. } => "evolution",
            StrategyChoice::Llm(..) => "llm",
        }
    }
}

/// `search.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SearchFile", into = "SearchFile")]
pub struct SearchConfig {
    pub strategy: StrategyConfig,
    pub seed: u64,
    pub data: DataSource,
    pub max_images: Option<usize>,
    pub evaluator: EvaluatorKind,
    pub space: SearchSpace,
    pub trial: TrialConfig,
    pub limits: Limits,
    /// The score's label (`RFD-classifier @ 500 x DDIM-10`, `stub`; older searches stored
    /// only the name) and the extractor behind it, set once the evaluator exists.
    pub metric: String,
    pub extractor: Option<crate::eval::ExtractorId>,
}

/// The file's layout (the strategy's name and one optional section per strategy), which
/// searches of every version share.
#[derive(Serialize, Deserialize)]
struct SearchFile {
    strategy: String,
    seed: u64,
    data: DataSource,
    max_images: Option<usize>,
    evaluator: EvaluatorKind,
    space: SearchSpace,
    trial: TrialConfig,
    limits: Limits,
    evolution: Option<EvolutionConfig>,
    llm_endpoint: Option<LlmConfig>,
    llm: Option<LlmSearchConfig>,
    metric: String,
    extractor: Option<crate::eval::ExtractorId>,
}

impl TryFrom<SearchFile> for SearchConfig {
    type Error = String;

    /// The strategy named by `strategy`, from its own section; a name without its section
    /// (or with another's) is an error.
    fn try_from(f: SearchFile) -> Result<SearchConfig, String> {
        let strategy = match (f.strategy.as_str(), f.evolution, f.llm_endpoint, f.llm) {
            ("random", None, None, None) => StrategyConfig::Random,
            ("evolution", Some(e), None, None) => StrategyConfig::Evolution(e),
            ("llm", None, Some(endpoint), Some(l)) => StrategyConfig::Llm(endpoint, l),
            (name @ ("random" | "evolution" | "llm"), e, le, l) => {
                let has: Vec<&str> = [
                    e.is_some().then_some("evolution"),
                    le.is_some().then_some("llm_endpoint"),
                    l.is_some().then_some("llm"),
                ]
                .into_iter()
                .flatten()
                .collect();
                let need = match name {
                    "random" => "no strategy section",
                    "evolution" => "an evolution section",
                    _ => "llm and llm_endpoint sections",
                };
                return Err(format!(
                    "strategy {name:?} needs {need}, and the file has {}",
                    if has.is_empty() {
                        "none".to_string()
                    } else {
                        has.join(" and ")
                    }
                ));
            }
            (other, ..) => {
                return Err(format!(
                    "unknown strategy {other:?}: expected random, evolution or llm"
                ));
            }
        };
        Ok(SearchConfig {
            strategy,
            seed: f.seed,
            data: f.data,
            max_images: f.max_images,
            evaluator: f.evaluator,
            space: f.space,
            trial: f.trial,
            limits: f.limits,
            metric: f.metric,
            extractor: f.extractor,
        })
    }
}

impl From<SearchConfig> for SearchFile {
    fn from(c: SearchConfig) -> SearchFile {
        let name = c.strategy.name().to_string();
        let (evolution, llm_endpoint, llm) = match c.strategy {
            StrategyConfig::Random => (None, None, None),
            StrategyConfig::Evolution(e) => (Some(e), None, None),
            StrategyConfig::Llm(endpoint, l) => (None, Some(endpoint), Some(l)),
        };
        SearchFile {
            strategy: name,
            seed: c.seed,
            data: c.data,
            max_images: c.max_images,
            evaluator: c.evaluator,
            space: c.space,
            trial: c.trial,
            limits: c.limits,
            evolution,
            llm_endpoint,
            llm,
            metric: c.metric,
            extractor: c.extractor,
        }
    }
}

/// The size of search that the defaults describe (`--scale`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scale {
    /// `small` on a CPU device, `standard` on a GPU.
    Auto,
    /// Tiny genomes and short trials: a search of 8 trials takes about 11 minutes on a
    /// 2-core CPU (5 of them training the offline classifier on first use).
    Small,
    /// The search the defaults of ALGORITHMS.md describe, for a GPU.
    Standard,
}

/// The values `--scale` stands for; explicit settings override each one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleDefaults {
    pub trials: usize,
    pub max_params: u64,
    pub max_macs: u64,
    pub trial_steps: u64,
    pub trial_lr: f64,
    pub score_n: usize,
    pub score_steps: usize,
    pub population: usize,
    pub sample: usize,
}

impl Scale {
    /// The defaults for this scale on a device; `auto` looks at the device's type.
    pub fn defaults(self, device: &DeviceInfo) -> ScaleDefaults {
        let small = match self {
            Scale::Small => true,
            Scale::Standard => false,
            Scale::Auto => device.device_type == "Cpu",
        };
        if small {
            ScaleDefaults {
                trials: 8,
                max_params: 1_000_000,
                max_macs: 40_000_000,
                // The proxy study (examples/proxy-study): of the measures it compared, 400
                // steps at LR 1e-3 scored with 250 samples of DDIM-10 ranked 10 architectures
                // closest to a 2,000-step training (Spearman 0.88 over 9, against 0.38 for
                // the 200 steps and 500 samples before); 500 or 1,000 samples ranked the same
                // at more cost. 200 steps at 2e-4 leave the loss near 0.2.
                trial_steps: 400,
                trial_lr: 1e-3,
                score_n: 250,
                score_steps: 10,
                population: 4,
                sample: 2,
            }
        } else {
            let e = EvolutionConfig::default();
            ScaleDefaults {
                trials: 24,
                max_params: 4_000_000,
                max_macs: 200_000_000,
                trial_steps: 300,
                trial_lr: 2e-4,
                score_n: 1000,
                score_steps: 20,
                population: e.population,
                sample: e.sample,
            }
        }
    }
}

/// What the user asked for; `None` takes the scale's default.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    pub strategy: StrategyChoice,
    pub scale: Scale,
    pub seed: u64,
    pub data: DataSource,
    pub max_images: Option<usize>,
    pub evaluator: EvaluatorKind,
    pub trials: Option<usize>,
    pub max_minutes: Option<f64>,
    pub max_params: Option<u64>,
    pub max_macs: Option<u64>,
    pub trial_steps: Option<u64>,
    pub trial_batch_size: usize,
    pub trial_lr: Option<f64>,
    pub score_n: Option<usize>,
    pub score_steps: Option<usize>,
    /// The trials' loss (None: simple); hybrid makes every genome learn its variance.
    pub loss: Option<crate::diffusion::LossKind>,
    /// What the trials' convolutions and attention matmuls compute in, training and scoring.
    pub precision: crate::precision::Precision,
}

impl SearchRequest {
    /// A random search on `data` at `scale` with every other setting at its default.
    pub fn defaults(scale: Scale, data: DataSource) -> SearchRequest {
        SearchRequest {
            strategy: StrategyChoice::Random,
            scale,
            seed: defaults::SEED,
            data,
            max_images: None,
            evaluator: EvaluatorKind::Proxy,
            trials: None,
            max_minutes: None,
            max_params: None,
            max_macs: None,
            trial_steps: None,
            trial_batch_size: defaults::TRIAL_BATCH_SIZE,
            trial_lr: None,
            score_n: None,
            score_steps: None,
            loss: None,
            precision: crate::precision::Precision::F32,
        }
    }
}

/// The settings of a [`SearchRequest`] that a resume may not change, by name (the CLI's
/// argument ids).
pub const FIXED_ON_RESUME: [&str; 16] = [
    "loss",
    "precision",
    "data",
    "max_images",
    "seed",
    "evaluator",
    "max_params",
    "max_macs",
    "trial_steps",
    "trial_batch_size",
    "trial_lr",
    "score_n",
    "score_steps",
    "population",
    "sample",
    "crossover",
];

impl SearchConfig {
    /// A fresh search for images of `image` on `device`.
    pub fn new(r: &SearchRequest, image: ImageSpec, device: &DeviceInfo) -> SearchConfig {
        let d = r.scale.defaults(device);
        let mut space = SearchSpace::for_image(image).with_budget(Budget {
            max_params: Some(r.max_params.unwrap_or(d.max_params)),
            max_macs: Some(r.max_macs.unwrap_or(d.max_macs)),
            min_params: None,
        });
        let mut trial =
            TrialConfig::rapid(r.trial_steps.unwrap_or(d.trial_steps), r.trial_batch_size);
        trial.train.lr = r.trial_lr.unwrap_or(d.trial_lr);
        trial.train.seed = r.seed;
        let loss = r.loss.unwrap_or_default();
        trial.train.loss = Some(loss);
        space.learn_sigma = loss == crate::diffusion::LossKind::Hybrid;
        if let Some(p) = trial.proxy_dropout {
            // Trials train with the proxy dropout whatever the genome says, so genomes that
            // differ only in dropout would score the same: dropout is not searched (set it
            // for the full training of the winner).
            space.dropouts = vec![p];
        }
        let score_n = r.score_n.unwrap_or(d.score_n);
        trial.score = GenerationConfig {
            n: score_n,
            steps: r.score_steps.unwrap_or(d.score_steps),
            precision: r.precision,
            ..GenerationConfig::rfid()
        };
        // Written only when not f32, so the search.json of an f32 search reads as before.
        trial.train.precision = (!r.precision.is_f32()).then_some(r.precision);
        trial.kid = Some(KidConfig {
            subset_size: score_n.min(1000),
            ..KidConfig::default()
        });
        let strategy = match &r.strategy {
            StrategyChoice::Random => StrategyConfig::Random,
            StrategyChoice::Evolution {
                population,
                sample,
                crossover,
            } => StrategyConfig::Evolution(EvolutionConfig {
                population: population.unwrap_or(d.population),
                sample: sample.unwrap_or(d.sample),
                crossover: *crossover,
            }),
            StrategyChoice::Llm(e, l) => StrategyConfig::Llm(e.clone(), l.clone()),
        };
        let trials = match &strategy {
            StrategyConfig::Llm(_, l) => r.trials.unwrap_or(l.rounds * l.per_round),
            _ => r.trials.unwrap_or(d.trials),
        };
        SearchConfig {
            strategy,
            seed: r.seed,
            data: r.data.clone(),
            max_images: r.max_images,
            evaluator: r.evaluator,
            space,
            trial,
            limits: Limits {
                max_trials: trials,
                max_seconds: r.max_minutes.map(|m| m * 60.0),
                max_stale: defaults::MAX_STALE,
            },
            metric: String::new(),
            extractor: None,
        }
    }

    /// The proxy the trials are scored with: the trial settings and the extractor (None for a
    /// stub evaluator, or before the extractor is known). The one place it is computed.
    pub fn proxy(&self) -> Option<crate::trial::Proxy> {
        match self.evaluator {
            EvaluatorKind::Stub => None,
            EvaluatorKind::Proxy => self.extractor.as_ref().map(|e| self.trial.proxy(e)),
        }
    }

    /// Name the score (once the evaluator is built), in the configuration and in the LLM's
    /// prompt.
    pub fn set_metric(&mut self, metric: String) {
        if let StrategyConfig::Llm(_, l) = &mut self.strategy {
            l.metric = metric.clone();
        }
        self.metric = metric;
    }

    /// The stored configuration of the search in `dir`.
    pub fn read(dir: &Path) -> Result<SearchConfig, SearchError> {
        let p = dir.join(CONFIG_FILE);
        if !p.is_file() {
            return Err(SearchError::NothingToResume {
                dir: dir.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(&p).map_err(|e| io_err(&p, e))?;
        serde_json::from_str(&text).map_err(|e| SearchError::Corrupt {
            path: p.clone(),
            line: e.line(),
            message: e.to_string(),
        })
    }

    /// Refuses to start a search in a folder that holds one.
    pub fn check_fresh(dir: &Path) -> Result<(), SearchError> {
        if dir.join(CONFIG_FILE).exists() {
            return Err(SearchError::Exists {
                dir: dir.to_path_buf(),
            });
        }
        Ok(())
    }

    /// The search to run in `dir` and its training data, cut to `max_images`: the stored
    /// search when `resume` (with the stored data, whatever `r` says; the settings named in
    /// `given` checked as [`SearchConfig::resume`] does), else a new one for the images of
    /// `r.data`, which must be square.
    pub fn prepare(
        dir: &Path,
        r: &SearchRequest,
        resume: bool,
        given: &[&str],
        device: &DeviceInfo,
    ) -> Result<(SearchConfig, Dataset), SearchError> {
        let (c, mut data) = if resume {
            let c = SearchConfig::resume(dir, r, given, device)?;
            let data = c.data.load(Split::Train)?;
            (c, data)
        } else {
            SearchConfig::check_fresh(dir)?;
            let data = r.data.load(Split::Train)?;
            if data.height != data.width {
                return Err(SearchError::Setting(format!(
                    "{}: images are {}x{}; the search space needs square images",
                    r.data, data.height, data.width
                )));
            }
            let image = ImageSpec {
                channels: data.channels,
                size: data.height,
            };
            (SearchConfig::new(r, image, device), data)
        };
        if let Some(m) = c.max_images {
            data.truncate(m);
        }
        Ok((c, data))
    }

    /// How this search evaluates its trials (what each trial's spec shares).
    pub fn evaluation(&self) -> Evaluation {
        Evaluation {
            evaluator: self.evaluator,
            space: self.space.clone(),
            trial: self.trial.clone(),
            data: self.data.clone(),
            max_images: self.max_images,
            scored_with: self.extractor.clone(),
        }
    }

    /// The evaluator this search asks for, on `data` (from [`SearchConfig::prepare`]), with
    /// the extractor and reference of `scoring` for the proxy; records the extractor's
    /// identity and the metric's label. A resumed search refuses another extractor than the
    /// one it was scored with.
    pub fn evaluator(
        &mut self,
        data: Dataset,
        scoring: Option<(Box<dyn FeatureExtractor>, Reference)>,
        selected: &SelectedDevice,
        progress: Option<ProgressHook>,
    ) -> Result<Box<dyn Evaluator>, SearchError> {
        let id = scoring.as_ref().map(|(e, _)| e.id().clone());
        let evaluator = self
            .evaluation()
            .evaluator(data, scoring, selected, progress)?;
        if id.is_some() {
            self.extractor = id;
        }
        self.set_metric(evaluator.metric());
        Ok(evaluator)
    }

    /// Write `search.json` into `dir` (created if needed).
    pub fn write(&self, dir: &Path) -> Result<(), SearchError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let p = dir.join(CONFIG_FILE);
        let text = serde_json::to_string_pretty(self).expect("serialises");
        crate::train::write_atomic(&p, text.as_bytes()).map_err(|e| io_err(&p, e))
    }

    /// The search in `dir`, resumed: its stored configuration with the budget of `r` applied
    /// (`trials`, `max_minutes`). Every setting named in `given` (of [`FIXED_ON_RESUME`]) must
    /// match the stored one, and the strategy must be the same.
    pub fn resume(
        dir: &Path,
        r: &SearchRequest,
        given: &[&str],
        device: &DeviceInfo,
    ) -> Result<SearchConfig, SearchError> {
        let mut c = SearchConfig::read(dir)?;
        let wanted = r.strategy.name();
        if c.strategy.name() != wanted {
            return Err(SearchError::OtherStrategy {
                given: wanted.into(),
                stored: c.strategy.name().into(),
                path: dir.join(CONFIG_FILE),
            });
        }
        // What the request would have made, compared setting by setting with what is stored.
        let asked = SearchConfig::new(r, c.space.image, device);
        let show = |v: Option<u64>| v.map_or("none".into(), |v| v.to_string());
        let evolution = |c: &SearchConfig| match &c.strategy {
            StrategyConfig::Evolution(e) => Some(*e),
            _ => None,
        };
        let (evo_asked, evo_stored) = (evolution(&asked), evolution(&c));
        let knob = |f: fn(&EvolutionConfig) -> String| {
            (
                evo_asked.as_ref().map_or("none".into(), f),
                evo_stored.as_ref().map_or("none".into(), f),
            )
        };
        for &name in given {
            let (given, stored) = match name {
                "data" => (asked.data.to_string(), c.data.to_string()),
                "max_images" => (
                    show(asked.max_images.map(|v| v as u64)),
                    show(c.max_images.map(|v| v as u64)),
                ),
                "population" => knob(|e| e.population.to_string()),
                "sample" => knob(|e| e.sample.to_string()),
                "crossover" => knob(|e| e.crossover.to_string()),
                "seed" => (asked.seed.to_string(), c.seed.to_string()),
                "evaluator" => (
                    format!("{:?}", asked.evaluator),
                    format!("{:?}", c.evaluator),
                ),
                "max_params" => (
                    show(asked.space.budget.max_params),
                    show(c.space.budget.max_params),
                ),
                "max_macs" => (
                    show(asked.space.budget.max_macs),
                    show(c.space.budget.max_macs),
                ),
                "trial_steps" => (
                    asked.trial.train.steps.to_string(),
                    c.trial.train.steps.to_string(),
                ),
                "trial_batch_size" => (
                    asked.trial.train.batch_size.to_string(),
                    c.trial.train.batch_size.to_string(),
                ),
                "trial_lr" => (
                    asked.trial.train.lr.to_string(),
                    c.trial.train.lr.to_string(),
                ),
                "score_n" => (asked.trial.score.n.to_string(), c.trial.score.n.to_string()),
                "loss" => (
                    asked.trial.train.loss_kind().to_string(),
                    c.trial.train.loss_kind().to_string(),
                ),
                "score_steps" => (
                    asked.trial.score.steps.to_string(),
                    c.trial.score.steps.to_string(),
                ),
                "precision" => (
                    asked.trial.train.precision().to_string(),
                    c.trial.train.precision().to_string(),
                ),
                _ => continue,
            };
            if given != stored {
                return Err(SearchError::Changed {
                    setting: name.into(),
                    given,
                    stored,
                    path: dir.join(CONFIG_FILE),
                });
            }
        }
        if let Some(t) = r.trials {
            c.limits.max_trials = t;
        }
        if let Some(m) = r.max_minutes {
            c.limits.max_seconds = Some(m * 60.0);
        }
        Ok(c)
    }

    /// The strategy, ready to propose. An LLM search talks to its endpoint through a
    /// [`ChatClient`], telling `on_retry` about failed requests and `on_round` about each
    /// round's proposals; it keeps its rounds in `dir`.
    pub fn strategy(
        &self,
        dir: &Path,
        on_retry: Option<RetryHook>,
        on_round: Option<RoundHook>,
    ) -> Result<Box<dyn Strategy>, SearchError> {
        Ok(match &self.strategy {
            StrategyConfig::Random => Box::new(RandomSearch::new(self.seed)),
            StrategyConfig::Evolution(e) => Box::new(
                Evolution::new(self.seed, *e).map_err(|e| SearchError::Setting(e.to_string()))?,
            ),
            StrategyConfig::Llm(endpoint, l) => {
                let mut client = ChatClient::new(endpoint.clone())
                    .map_err(|e| SearchError::Strategy(e.to_string()))?;
                client.on_retry = on_retry;
                Box::new(LlmSearch {
                    chat: Box::new(client),
                    cfg: l.clone(),
                    dir: dir.to_path_buf(),
                    on_round,
                })
            }
        })
    }
}
