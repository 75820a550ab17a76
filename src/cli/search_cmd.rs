//! `diffnas search random|evolution`: architecture search with the proxy evaluator
//! (rapid-convergence training + reduced FID, or its classifier-space twin offline).
//!
//! The resolved configuration goes to `RUN_DIR/search.json` before the first trial; trials are
//! appended to `RUN_DIR/trials.jsonl`; each trial's files live in `RUN_DIR/trials/<hash>/`.
//! Ctrl-C (or a kill) stops it; `--resume` continues with no trial lost or repeated.

use super::eval_cmd::{ExtractorArgs, cached_reference, extractor};
use super::user_err;
use crate::data::{DataSource, Split};
use crate::eval::rfid::{GenerationConfig, KidConfig};
use crate::genome::{Budget, ImageSpec, SearchSpace};
use crate::search::evolution::{Evolution, EvolutionConfig};
use crate::search::llm::client::{ChatClient, LlmConfig};
use crate::search::llm::prompt::MemoryLimits;
use crate::search::llm::{LlmSearch, LlmSearchConfig, RoundFile};
use crate::search::random::RandomSearch;
use crate::search::{CONFIG_FILE, Limits, SearchEvent, SearchStatus, Strategy, run_search};
use crate::trial::{Evaluator, ProxyEvaluator, StubEvaluator, TrialConfig, TrialProgress};
use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

#[derive(Subcommand, Debug)]
pub enum SearchCmd {
    /// Random search: uniform draws from the space within the budget (a baseline).
    Random(SearchArgs),
    /// Regularized evolution: mutate the best of S sampled from the P most recent trials.
    Evolution(EvolutionArgs),
    /// LLM-guided search: a chat model proposes genomes from the space, the budget and the
    /// search memory (needs an OpenAI-compatible endpoint; offline, use random or evolution).
    ///
    /// Example (any OpenAI-compatible server):
    ///   OPENAI_API_KEY=... diffnas search llm --llm-base-url https://api.openai.com/v1 --llm-model gpt-4o
    #[command(verbatim_doc_comment)]
    Llm(LlmArgs),
    /// Does the proxy rank correctly? Re-train N of a search's architectures (spread over its
    /// ranking) with a longer schedule and report Spearman's rho between the two scores.
    ProxyCheck(ProxyCheckArgs),
    /// Block-wise distillation search: from a trained teacher, block supernets, a per-block
    /// local search for the cheapest path within gamma of the teacher's, and retraining with
    /// the dynamic joint loss.
    ///
    /// Example (a teacher trained with `diffnas train --run-dir runs/fmnist-tiny`):
    ///   diffnas search block --teacher runs/fmnist-tiny --ablation
    ///   diffnas search block --teacher runs/fmnist-tiny --reuse runs/block-fmnist-tiny \
    ///     --run-dir runs/block-g1.5 --gamma 1.5
    #[command(verbatim_doc_comment)]
    Block(super::block_cmd::BlockArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ProxyCheckArgs {
    /// A search run directory.
    pub run_dir: PathBuf,
    /// Architectures to re-train, spread evenly over the proxy ranking.
    #[arg(long, default_value_t = 6)]
    pub architectures: usize,
    /// Training steps of the longer runs (warm-up and checkpoints scale with it).
    #[arg(long, default_value_t = 2000)]
    pub steps: u64,
    #[command(flatten)]
    pub ext: ExtractorArgs,
}

/// One line of `proxy-check/results.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyCheckRow {
    pub hash: String,
    pub proxy_score: f64,
    pub long_score: Option<f64>,
    pub long_seconds: f64,
    pub proxy_seconds: f64,
    pub reason: Option<String>,
}

fn proxy_check(a: ProxyCheckArgs) -> anyhow::Result<i32> {
    let selected = super::select_device(a.ext.device)?;
    eprintln!("device: {}", selected.info);
    let mut cfg = read_config(&a.run_dir)?;
    let log = crate::search::TrialLog::open(&a.run_dir).map_err(|e| user_err(e.to_string()))?;
    let mut scored: Vec<&crate::search::TrialRecord> =
        log.records.iter().filter(|r| r.score().is_some()).collect();
    scored.sort_by(|x, y| x.score().partial_cmp(&y.score()).expect("finite"));
    let k = a.architectures.min(scored.len());
    if k < 2 {
        return Err(user_err(format!(
            "{}: {} scored trial(s); a rank correlation needs at least 2",
            a.run_dir.display(),
            scored.len()
        )));
    }
    let picks: Vec<&crate::search::TrialRecord> = (0..k)
        .map(|i| scored[i * (scored.len() - 1) / (k - 1)])
        .collect();
    let proxy_steps = cfg.trial.train.steps;
    let t = &mut cfg.trial.train;
    t.steps = a.steps;
    t.warmup_steps = (a.steps / 20).max(1);
    t.checkpoint_every = (a.steps / 4).max(1);
    let mut data = cfg
        .data
        .load(Split::Train)
        .map_err(|e| user_err(e.to_string()))?;
    if let Some(m) = cfg.max_images {
        data.truncate(m);
    }
    let mut evaluator = build_evaluator(&mut cfg, data, &a.ext, &selected)?;
    let out = a.run_dir.join("proxy-check");
    std::fs::create_dir_all(&out)?;
    let rows_path = out.join("results.jsonl");
    let mut rows: Vec<ProxyCheckRow> = std::fs::read_to_string(&rows_path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let stop = AtomicBool::new(false);
    for (i, r) in picks.iter().enumerate() {
        if rows.iter().any(|x| x.hash == r.hash) {
            continue;
        }
        eprintln!(
            "[{}/{k}] {} (proxy {} {:.4}): {} steps ...",
            i + 1,
            r.hash,
            cfg.metric,
            r.score().unwrap_or(f64::NAN),
            a.steps
        );
        let o = evaluator.evaluate(&r.genome, Some(&out.join(&r.hash)), &stop);
        let row = ProxyCheckRow {
            hash: r.hash.clone(),
            proxy_score: r.score().unwrap_or(f64::NAN),
            long_score: o.score,
            long_seconds: o.seconds,
            proxy_seconds: r.outcome.seconds,
            reason: o.reason,
        };
        eprintln!(
            "  -> {} after {:.0} s (proxy trial took {:.0} s)",
            row.long_score
                .map_or("failed".into(), |s| format!("{s:.4}")),
            row.long_seconds,
            row.proxy_seconds
        );
        let mut line = serde_json::to_string(&row)?;
        line.push('\n');
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&rows_path)?
            .write_all(line.as_bytes())?;
        rows.push(row);
    }
    let pairs: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r.proxy_score, r.long_score?)))
        .collect();
    let (p, l): (Vec<f64>, Vec<f64>) = pairs.iter().copied().unzip();
    let rho = crate::search::rank::spearman(&p, &l);
    let summary = serde_json::json!({
        "metric": cfg.metric,
        "proxy_steps": proxy_steps,
        "long_steps": a.steps,
        "architectures": pairs.len(),
        "spearman_rho": rho,
        "rows": rows,
    });
    let text = serde_json::to_string_pretty(&summary)?;
    crate::train::write_atomic(&out.join("summary.json"), text.as_bytes())?;
    eprintln!(
        "Spearman rho between proxy ({proxy_steps} steps) and long ({} steps) {}: {}",
        a.steps,
        cfg.metric,
        rho.map_or("undefined".into(), |r| format!("{r:.3}"))
    );
    println!("{text}");
    Ok(0)
}

#[derive(Args, Debug, Clone)]
pub struct LlmArgs {
    #[command(flatten)]
    pub common: SearchArgs,
    /// OpenAI-compatible base URL (the part before /chat/completions).
    #[arg(long, env = "DIFFNAS_LLM_BASE_URL")]
    pub llm_base_url: Option<String>,
    #[arg(long, env = "DIFFNAS_LLM_MODEL", default_value = "gpt-4o")]
    pub llm_model: String,
    /// Environment variable holding the API key (the key is never written or printed).
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub llm_api_key_env: String,
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    #[arg(long, default_value_t = 4096)]
    pub max_tokens: usize,
    /// Seconds per request.
    #[arg(long, default_value_t = 120.0)]
    pub llm_timeout: f64,
    /// Retries on 429, 5xx and timeouts (exponential backoff from --llm-backoff seconds).
    #[arg(long, default_value_t = 4)]
    pub llm_retries: usize,
    #[arg(long, default_value_t = 2.0)]
    pub llm_backoff: f64,
    /// Rounds R of K proposals each.
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    #[arg(long, default_value_t = 2)]
    pub per_round: usize,
    /// Search memory in the prompt: the best N trials plus the M most recent.
    #[arg(long, default_value_t = 20)]
    pub memory_top: usize,
    #[arg(long, default_value_t = 10)]
    pub memory_recent: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvaluatorKind {
    /// Train each candidate briefly and score its samples (the real thing).
    Proxy,
    /// A known function of the genome, no training: for dry runs of a search's mechanics.
    Stub,
}

#[derive(Args, Debug, Clone)]
pub struct SearchArgs {
    /// Run directory [default: runs/search-<strategy>].
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Continue a stopped search; its search.json is used (only --trials and --max-minutes
    /// may be changed).
    #[arg(long)]
    pub resume: bool,
    /// fashion-mnist[:DIR], mnist:DIR, cifar10:PATH or folder:DIR.
    #[arg(long, default_value = "fashion-mnist")]
    pub data: DataSource,
    /// How big a search the defaults describe: `small` fits a laptop CPU (a trial takes minutes),
    /// `standard` a GPU. `auto` picks `small` when the device is a CPU (flex, or a software
    /// wgpu adapter), else `standard`. Every value it sets can be given on its own.
    #[arg(long, value_enum, default_value = "auto")]
    pub scale: Scale,
    /// Trials that train (proposals rejected before training do not count) [default: 8 small,
    /// 24 standard].
    #[arg(long)]
    pub trials: Option<usize>,
    /// Wall-clock budget across resumes, checked between trials.
    #[arg(long)]
    pub max_minutes: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value = "proxy")]
    pub evaluator: EvaluatorKind,
    /// Largest genome allowed, in parameters [default: 1,000,000 small, 4,000,000 standard].
    #[arg(long)]
    pub max_params: Option<u64>,
    /// Largest genome allowed, in multiply-accumulates per image [default: 40M small, 200M
    /// standard].
    #[arg(long)]
    pub max_macs: Option<u64>,
    /// Training steps of each trial (rapid convergence: warm-up + cosine, EMA warm-up)
    /// [default: 200 small, 300 standard].
    #[arg(long)]
    pub trial_steps: Option<u64>,
    #[arg(long, default_value_t = 32)]
    pub trial_batch_size: usize,
    /// Peak learning rate of each trial [default: 1e-3 small (200 steps at 2e-4 leave the
    /// loss near 0.2), 2e-4 standard].
    #[arg(long)]
    pub trial_lr: Option<f64>,
    /// Samples scored per trial (RFID uses 5,000; fewer is faster and noisier, never compare
    /// scores made with different numbers) [default: 500 small, 1000 standard].
    #[arg(long)]
    pub score_n: Option<usize>,
    /// DDIM steps of the scoring samples [default: 10 small, 20 standard].
    #[arg(long)]
    pub score_steps: Option<usize>,
    /// Use only the first N training images.
    #[arg(long)]
    pub max_images: Option<usize>,
    #[command(flatten)]
    pub ext: ExtractorArgs,
}

#[derive(Args, Debug, Clone)]
pub struct EvolutionArgs {
    #[command(flatten)]
    pub common: SearchArgs,
    /// Population: the P most recent successful trials (older ones age out); the first P
    /// trials are random [default: 4 small, 8 standard].
    #[arg(long)]
    pub population: Option<usize>,
    /// Tournament size: the best of S trials drawn from the population is mutated [default: 2
    /// small, 3 standard].
    #[arg(long)]
    pub sample: Option<usize>,
    /// Probability of crossing the winner with a second tournament's before mutating.
    #[arg(long, default_value_t = 0.0)]
    pub crossover: f64,
}

/// `search.json`: everything that determines the search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchConfig {
    pub strategy: String,
    pub seed: u64,
    pub data: DataSource,
    pub max_images: Option<usize>,
    pub evaluator: EvaluatorKind,
    pub space: SearchSpace,
    pub trial: TrialConfig,
    pub limits: Limits,
    pub evolution: Option<EvolutionConfig>,
    /// The LLM endpoint (no key: only the name of its environment variable).
    pub llm_endpoint: Option<LlmConfig>,
    pub llm: Option<LlmSearchConfig>,
    /// The score's name (`RFID`, `RFD-classifier`, `stub`) and the extractor behind it.
    pub metric: String,
    pub extractor: Option<crate::eval::ExtractorId>,
}

/// The size of search that the defaults describe (`--scale`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scale {
    /// `small` on a CPU device, `standard` on a GPU.
    Auto,
    /// Tiny genomes and short trials: a search of 8 trials takes about 11 minutes on a
    /// 2-core CPU (5 of them training the offline classifier on first use).
    Small,
    /// The search the defaults of ALGORITHMS.md describe, for a GPU.
    Standard,
}

/// The values `--scale` stands for; explicit flags override each one.
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
    pub fn defaults(self, device: &crate::device::DeviceInfo) -> ScaleDefaults {
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
                trial_steps: 200,
                trial_lr: 1e-3,
                score_n: 500,
                score_steps: 10,
                population: 4,
                sample: 2,
            }
        } else {
            ScaleDefaults {
                trials: 24,
                max_params: 4_000_000,
                max_macs: 200_000_000,
                trial_steps: 300,
                trial_lr: 2e-4,
                score_n: 1000,
                score_steps: 20,
                population: 8,
                sample: 3,
            }
        }
    }
}

/// Which strategy, with its own settings (evolution's P and S default by `--scale`).
pub enum StrategySpec {
    Random,
    Evolution {
        population: Option<usize>,
        sample: Option<usize>,
        crossover: f64,
    },
    Llm(LlmConfig, LlmSearchConfig),
}

pub fn run(cmd: SearchCmd, given: &super::Given) -> anyhow::Result<i32> {
    let (common, spec) = match cmd {
        SearchCmd::ProxyCheck(a) => return proxy_check(a),
        SearchCmd::Block(a) => return super::block_cmd::run(a, given),
        SearchCmd::Random(a) => (a, StrategySpec::Random),
        SearchCmd::Evolution(e) => (
            e.common,
            StrategySpec::Evolution {
                population: e.population,
                sample: e.sample,
                crossover: e.crossover,
            },
        ),
        SearchCmd::Llm(l) => {
            let Some(base_url) = l.llm_base_url.clone() else {
                return Err(user_err(
                    "no LLM endpoint configured: pass --llm-base-url (or set DIFFNAS_LLM_BASE_URL) \
                     to an OpenAI-compatible server. Offline, the baselines `diffnas search random` \
                     and `diffnas search evolution` need none.",
                ));
            };
            if l.rounds == 0 || l.per_round == 0 {
                return Err(user_err("--rounds and --per-round must be at least 1"));
            }
            let endpoint = LlmConfig {
                base_url,
                model: l.llm_model.clone(),
                temperature: l.temperature,
                max_tokens: l.max_tokens,
                timeout_s: l.llm_timeout,
                api_key_env: l.llm_api_key_env.clone(),
                max_retries: l.llm_retries,
                backoff_s: l.llm_backoff,
            };
            let search = LlmSearchConfig {
                rounds: l.rounds,
                per_round: l.per_round,
                memory: MemoryLimits {
                    top: l.memory_top,
                    recent: l.memory_recent,
                    ..MemoryLimits::default()
                },
                dataset: l.common.data.to_string(),
                metric: String::new(),
            };
            let mut common = l.common;
            common.trials = common.trials.or(Some(l.rounds * l.per_round));
            (common, StrategySpec::Llm(endpoint, search))
        }
    };
    let name = match spec {
        StrategySpec::Random => "random",
        StrategySpec::Evolution { .. } => "evolution",
        StrategySpec::Llm(..) => "llm",
    };
    let dir = common
        .run_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/search-{name}")));
    search(&dir, name, &common, spec, given)
}

fn read_config(dir: &Path) -> anyhow::Result<SearchConfig> {
    let p = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&p)
        .map_err(|e| user_err(format!("{}: {e} (nothing to resume)", p.display())))?;
    serde_json::from_str(&text).map_err(|e| user_err(format!("{}: {e}", p.display())))
}

fn search(
    dir: &Path,
    name: &str,
    a: &SearchArgs,
    spec: StrategySpec,
    given: &super::Given,
) -> anyhow::Result<i32> {
    let selected = super::select_device(a.ext.device)?;
    eprintln!("device: {}", selected.info);
    let cfg_path = dir.join(CONFIG_FILE);
    if !a.resume && cfg_path.exists() {
        return Err(user_err(format!(
            "{} already holds a search; continue it with --resume or pick another --run-dir",
            dir.display()
        )));
    }
    let d = a.scale.defaults(&selected.info);
    let (mut cfg, mut data) = if a.resume {
        let mut c = read_config(dir)?;
        // Flags that would change the search, given anyway: each must match what is stored.
        let stored_in = dir.join(CONFIG_FILE);
        let same = [
            ("data", a.data.to_string(), c.data.to_string()),
            ("seed", a.seed.to_string(), c.seed.to_string()),
            (
                "evaluator",
                format!("{:?}", a.evaluator),
                format!("{:?}", c.evaluator),
            ),
            (
                "trial_batch_size",
                a.trial_batch_size.to_string(),
                c.trial.train.batch_size.to_string(),
            ),
            (
                "max_images",
                format!("{:?}", a.max_images),
                format!("{:?}", c.max_images),
            ),
        ];
        for (id, asked, stored) in same {
            if given.has(id) && asked != stored {
                return Err(user_err(format!(
                    "--{} {asked} differs from the {stored} in {}, and a resumed search keeps its \
                     settings (only --trials and --max-minutes may change)",
                    id.replace('_', "-"),
                    stored_in.display()
                )));
            }
        }
        let fixed = [
            ("--max-params", a.max_params, c.space.budget.max_params),
            ("--max-macs", a.max_macs, c.space.budget.max_macs),
            ("--trial-steps", a.trial_steps, Some(c.trial.train.steps)),
            (
                "--score-n",
                a.score_n.map(|v| v as u64),
                Some(c.trial.score.n as u64),
            ),
            (
                "--score-steps",
                a.score_steps.map(|v| v as u64),
                Some(c.trial.score.steps as u64),
            ),
        ];
        for (flag, given, stored) in fixed {
            if given.is_some() && given != stored {
                return Err(user_err(format!(
                    "{flag} {} differs from the {} in {}, and a resumed search keeps its \
                     settings (only --trials and --max-minutes may change)",
                    given.unwrap_or_default(),
                    stored.map_or("none".into(), |v| v.to_string()),
                    dir.join(CONFIG_FILE).display()
                )));
            }
        }
        if let Some(lr) = a.trial_lr
            && lr != c.trial.train.lr
        {
            return Err(user_err(format!(
                "--trial-lr {lr} differs from the {} in {}, and a resumed search keeps its \
                 settings (only --trials and --max-minutes may change)",
                c.trial.train.lr,
                dir.join(CONFIG_FILE).display()
            )));
        }
        if c.strategy != name {
            return Err(user_err(format!(
                "{} holds a {} search, not {name}",
                dir.display(),
                c.strategy
            )));
        }
        if let Some(t) = a.trials {
            c.limits.max_trials = t;
        }
        if let Some(m) = a.max_minutes {
            c.limits.max_seconds = Some(m * 60.0);
        }
        // The stored search's data, whatever --data's default says.
        let data = c
            .data
            .load(Split::Train)
            .map_err(|e| user_err(e.to_string()))?;
        (c, data)
    } else {
        let data = a
            .data
            .load(Split::Train)
            .map_err(|e| user_err(e.to_string()))?;
        if data.height != data.width {
            return Err(user_err(format!(
                "{}: images are {}x{}; the search space needs square images",
                a.data, data.height, data.width
            )));
        }
        let image = ImageSpec {
            channels: data.channels,
            size: data.height,
        };
        let mut space = SearchSpace::for_image(image).with_budget(Budget {
            max_params: Some(a.max_params.unwrap_or(d.max_params)),
            max_macs: Some(a.max_macs.unwrap_or(d.max_macs)),
            min_params: None,
        });
        let mut trial =
            TrialConfig::rapid(a.trial_steps.unwrap_or(d.trial_steps), a.trial_batch_size);
        trial.train.lr = a.trial_lr.unwrap_or(d.trial_lr);
        trial.train.seed = a.seed;
        if let Some(p) = trial.proxy_dropout {
            // Trials train with the proxy dropout whatever the genome says, so genomes that
            // differ only in dropout would score the same: dropout is not searched (set it
            // for the full training of the winner).
            space.dropouts = vec![p];
        }
        let score_n = a.score_n.unwrap_or(d.score_n);
        trial.score = GenerationConfig {
            n: score_n,
            steps: a.score_steps.unwrap_or(d.score_steps),
            ..GenerationConfig::rfid()
        };
        trial.kid = Some(KidConfig {
            subset_size: score_n.min(1000),
            ..KidConfig::default()
        });
        let cfg = SearchConfig {
            strategy: name.into(),
            seed: a.seed,
            data: a.data.clone(),
            max_images: a.max_images,
            evaluator: a.evaluator,
            space,
            trial,
            limits: Limits {
                max_trials: a.trials.unwrap_or(d.trials),
                max_seconds: a.max_minutes.map(|m| m * 60.0),
                max_stale: 200,
            },
            evolution: match &spec {
                StrategySpec::Evolution {
                    population,
                    sample,
                    crossover,
                } => Some(EvolutionConfig {
                    population: population.unwrap_or(d.population),
                    sample: sample.unwrap_or(d.sample),
                    crossover: *crossover,
                }),
                _ => None,
            },
            llm_endpoint: match &spec {
                StrategySpec::Llm(e, _) => Some(e.clone()),
                _ => None,
            },
            llm: match &spec {
                StrategySpec::Llm(_, l) => Some(l.clone()),
                _ => None,
            },
            metric: String::new(),
            extractor: None,
        };
        (cfg, data)
    };
    if let Some(m) = cfg.max_images {
        data.truncate(m);
    }
    let mut evaluator = build_evaluator(&mut cfg, data, &a.ext, &selected)?;
    cfg.metric = evaluator.metric();
    if let Some(l) = &mut cfg.llm {
        l.metric = cfg.metric.clone();
    }
    std::fs::create_dir_all(dir).map_err(|e| user_err(format!("{}: {e}", dir.display())))?;
    crate::train::write_atomic(&cfg_path, serde_json::to_string_pretty(&cfg)?.as_bytes())?;
    let mut strategy: Box<dyn Strategy> = match (&cfg.evolution, &cfg.llm_endpoint, &cfg.llm) {
        (Some(e), _, _) => {
            Box::new(Evolution::new(cfg.seed, *e).map_err(|e| user_err(e.to_string()))?)
        }
        (None, Some(endpoint), Some(l)) => {
            let mut client =
                ChatClient::new(endpoint.clone()).map_err(|e| user_err(e.to_string()))?;
            client.on_retry = Some(Box::new(|attempt, wait, why: &str| {
                eprintln!("  LLM request failed ({why}); retry {attempt} in {wait:.1} s")
            }));
            eprintln!(
                "LLM: {} at {} ({} rounds x {})",
                endpoint.model, endpoint.base_url, l.rounds, l.per_round
            );
            Box::new(LlmSearch {
                chat: Box::new(client),
                cfg: l.clone(),
                dir: dir.to_path_buf(),
                on_round: Some(Box::new(|rf: &RoundFile| {
                    eprintln!(
                        "LLM round {}: {} proposal(s), {} rejected",
                        rf.round,
                        rf.proposals.len(),
                        rf.rejected.len()
                    );
                    for r in &rf.rejected {
                        eprintln!("  rejected: {}", r.error);
                    }
                })),
            })
        }
        _ => Box::new(RandomSearch::new(cfg.seed)),
    };
    let stop = super::progress::stop_on_ctrlc("stopping the current trial at a checkpoint");
    let metric = cfg.metric.clone();
    let max = cfg.limits.max_trials;
    let mut on_event = |e: SearchEvent| match e {
        SearchEvent::Started { done, max_trials } => {
            eprintln!(
                "{name} search in {}: {done}/{max_trials} trials done",
                dir.display()
            )
        }
        SearchEvent::TrialStarted {
            index,
            hash,
            origin,
        } => eprintln!("trial {index} [{hash}] {origin} ..."),
        SearchEvent::Skipped { hash, why } => eprintln!("  skipped {hash}: {why}"),
        SearchEvent::TrialDone(r) => {
            let o = &r.outcome;
            let what = match o.score {
                Some(s) => format!("{metric} {s:.4}"),
                None => format!(
                    "{:?}: {}",
                    o.status,
                    o.reason.as_deref().unwrap_or("no reason given")
                ),
            };
            eprintln!(
                "  -> {what} | {:.2} M params, {:.3} GMACs | {:.0} s (trial {}/{max})",
                o.params.unwrap_or(0) as f64 / 1e6,
                o.macs.unwrap_or(0) as f64 / 1e9,
                o.seconds,
                r.index + 1
            );
        }
    };
    let (status, log) = run_search(
        dir,
        &cfg.space,
        &cfg.limits,
        strategy.as_mut(),
        evaluator.as_mut(),
        &stop,
        &mut on_event,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(b) = log.best() {
        eprintln!(
            "best: [{}] {metric} {:.4} ({:.2} M params), run directory {}",
            b.hash,
            b.score().unwrap_or(f64::NAN),
            b.outcome.params.unwrap_or(0) as f64 / 1e6,
            dir.join(b.run_dir()).display()
        );
    }
    if status != SearchStatus::Interrupted {
        let rejected = match cfg.llm {
            Some(_) => crate::search::llm::rejections(dir)?,
            None => Vec::new(),
        };
        let reasons = crate::search::unscored_reasons(&log.records, &rejected);
        if !reasons.is_empty() {
            return Err(anyhow::anyhow!(
                "no trial of the search in {} was scored, so there is nothing to report:\n  {}",
                dir.display(),
                reasons.join("\n  ")
            ));
        }
    }
    let report = super::report_cmd::ReportArgs {
        run_dir: dir.to_path_buf(),
        compare: Vec::new(),
        out: None,
    };
    if let Err(e) = super::report_cmd::run(report) {
        eprintln!("warning: report not written: {e:#}");
    }
    match status {
        SearchStatus::Interrupted => {
            eprintln!("stopped; continue with --resume");
            Ok(130)
        }
        SearchStatus::Exhausted => {
            eprintln!(
                "stopped: the strategy has no new candidate (rounds done, or the space is exhausted)"
            );
            Ok(0)
        }
        SearchStatus::Finished | SearchStatus::TimeUp => Ok(0),
    }
}

/// The evaluator a search configuration asks for (training data already loaded and cut to
/// `max_images`); fills in the configuration's extractor identity.
pub fn build_evaluator(
    cfg: &mut SearchConfig,
    data: crate::data::Dataset,
    ext_args: &ExtractorArgs,
    selected: &crate::device::SelectedDevice,
) -> anyhow::Result<Box<dyn Evaluator>> {
    Ok(match cfg.evaluator {
        EvaluatorKind::Stub => Box::new(StubEvaluator {
            space: cfg.space.clone(),
        }),
        EvaluatorKind::Proxy => {
            super::eval_cmd::ensure_extractor(ext_args, &cfg.data)?;
            let ext = extractor(ext_args, &cfg.data, selected)?;
            if let Some(id) = &cfg.extractor
                && id != ext.id()
            {
                return Err(user_err(format!(
                    "this search was scored with {id}; now {} would be used. Pass the same \
                 --extractor/--inception/--classifier as when it started",
                    ext.id()
                )));
            }
            let spec = [
                cfg.space.image.channels,
                cfg.space.image.size,
                cfg.space.image.size,
            ];
            let reference = cached_reference(
                ext.as_ref(),
                &cfg.data,
                super::eval_cmd::SplitArg::Train,
                spec,
            )?;
            let data = data
                .to_spec(spec[0], spec[1])
                .map_err(|e| user_err(e.to_string()))?;
            cfg.extractor = Some(ext.id().clone());
            let pb = super::progress::bar(0, "trial");
            let hook: crate::trial::ProgressHook = Box::new(move |p| {
                let (what, done, total) = match p {
                    TrialProgress::Train { done, total } => ("train", done, total),
                    TrialProgress::Score { done, total } => ("score", done, total),
                };
                if pb.length() != Some(total) || pb.message() != what {
                    pb.set_length(total);
                    pb.set_message(what);
                    pb.reset_eta();
                }
                pb.set_position(done);
                if done >= total && what == "score" {
                    pb.finish_and_clear();
                    pb.reset();
                }
            });
            Box::new(ProxyEvaluator {
                space: cfg.space.clone(),
                data,
                cfg: cfg.trial.clone(),
                extractor: ext,
                reference,
                device: selected.device.clone(),
                source: Some(crate::rundir::RunSource {
                    data: cfg.data.clone(),
                    max_images: cfg.max_images,
                    device: selected.info.clone(),
                }),
                progress: Some(hook),
            })
        }
    })
}
