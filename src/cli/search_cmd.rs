//! `diffnas search random|evolution|llm|proxy-check|block`: architecture search with the proxy
//! evaluator (rapid-convergence training + reduced FID, or its classifier-space twin offline).
//! The configuration, its defaults and the resume rules are the library's
//! (`search::config`); this maps flags to a [`SearchRequest`] and renders progress.
//!
//! The resolved configuration goes to `RUN_DIR/search.json` before the first trial; trials are
//! appended to `RUN_DIR/trials.jsonl`; each trial's folder `RUN_DIR/trials/<hash>/` is a run
//! directory. Ctrl-C (or a kill) stops it; `--resume` continues with no trial lost or repeated.

use super::Given;
use super::eval_cmd::{ExtractorArgs, scoring};
use crate::data::DataSource;
use crate::search::config::{
    EvaluatorKind, ExecutorKind, FIXED_ON_RESUME, Scale, SearchConfig, SearchRequest,
    StrategyChoice, defaults,
};
use crate::search::executor::ExecutorRequest;
use crate::search::fidelity::{self, StudyConfig, StudyEnv, StudyEvent, run_study};
use crate::search::llm::client::LlmConfig;
use crate::search::llm::prompt::MemoryLimits;
use crate::search::llm::{LlmSearchConfig, RoundFile, defaults as llm_defaults};
use crate::search::{SearchEvent, SearchStatus, run_search_with};
use crate::trial::TrialProgress;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

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
    /// Does the proxy rank like full training? Architectures spread over a scale's space, each
    /// trained with the full schedule and with proxy variants; every proxy measure is ranked
    /// against the full score (Spearman with a bootstrap interval, Kendall, top 3, cost).
    /// Resumable (--resume).
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
    /// The winner, retrained: the best trial's genome and hand-designed baselines trained with
    /// the full schedule of `proxy-check` and scored with its full metric, side by side with
    /// their MACs (into RUN_DIR/retrain/; resumable with --resume).
    ///
    /// Example: diffnas search retrain runs/search-evolution --baseline tiny
    #[command(verbatim_doc_comment)]
    Retrain(RetrainArgs),
}

#[derive(Args, Debug, Clone)]
pub struct RetrainArgs {
    /// A search run directory.
    pub run_dir: PathBuf,
    /// Continue a stopped retraining.
    #[arg(long)]
    pub resume: bool,
    /// Hand-designed genomes trained the same way (preset names or JSON files).
    #[arg(long, default_values_t = [String::from("tiny")])]
    pub baseline: Vec<String>,
    /// Steps of the full schedule.
    #[arg(long, default_value_t = fidelity::defaults::FULL_STEPS)]
    pub steps: u64,
    /// Samples of the full score.
    #[arg(long, default_value_t = fidelity::defaults::FULL_SCORE_N)]
    pub score_n: usize,
    /// DDIM steps of the full score.
    #[arg(long, default_value_t = fidelity::defaults::FULL_SCORE_STEPS)]
    pub score_steps: usize,
    #[command(flatten)]
    pub ext: ExtractorArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ProxyCheckArgs {
    /// The study's folder.
    #[arg(long, default_value = "runs/proxy-check")]
    pub run_dir: PathBuf,
    /// Continue a stopped study (its study.json is used; no other study flag may be given).
    #[arg(long)]
    pub resume: bool,
    /// Only rank what the study in --run-dir has measured so far (no training; safe while
    /// it runs in another process).
    #[arg(long, conflicts_with = "resume")]
    pub summary: bool,
    /// fashion-mnist[:DIR], mnist:DIR, cifar10:PATH or folder:DIR.
    #[arg(long, default_value = "fashion-mnist")]
    pub data: DataSource,
    /// Use only the first N training images.
    #[arg(long)]
    pub max_images: Option<usize>,
    /// The space and the proxy under study are those of a search at this scale.
    #[arg(long, value_enum, default_value = "auto")]
    pub scale: Scale,
    /// Architectures, spread over the space's cost range.
    #[arg(long, default_value_t = fidelity::defaults::ARCHITECTURES)]
    pub architectures: usize,
    /// Steps of the full schedule (the ground truth).
    #[arg(long, default_value_t = fidelity::defaults::FULL_STEPS)]
    pub full_steps: u64,
    #[arg(long, default_value_t = fidelity::defaults::SEED)]
    pub seed: u64,
    #[arg(long, default_value_t = defaults::TRIAL_BATCH_SIZE)]
    pub batch_size: usize,
    /// Steps of the default proxy (the others are half, twice, and it at a 5x lower LR)
    /// [default: the scale's trial steps].
    #[arg(long)]
    pub proxy_steps: Option<u64>,
    /// Peak LR of the default proxy [default: the scale's trial LR].
    #[arg(long)]
    pub proxy_lr: Option<f64>,
    /// Samples of each proxy score.
    #[arg(long, default_value_t = fidelity::defaults::PROXY_SCORE_N)]
    pub proxy_score_n: usize,
    /// Samples of the full score.
    #[arg(long, default_value_t = fidelity::defaults::FULL_SCORE_N)]
    pub full_score_n: usize,
    /// DDIM steps of the full score.
    #[arg(long, default_value_t = fidelity::defaults::FULL_SCORE_STEPS)]
    pub full_score_steps: usize,
    #[command(flatten)]
    pub ext: ExtractorArgs,
}

#[derive(Args, Debug, Clone)]
pub struct LlmArgs {
    #[command(flatten)]
    pub common: SearchArgs,
    /// OpenAI-compatible base URL (the part before /chat/completions).
    #[arg(long, env = "DIFFNAS_LLM_BASE_URL")]
    pub llm_base_url: Option<String>,
    #[arg(long, env = "DIFFNAS_LLM_MODEL", default_value = llm_defaults::MODEL)]
    pub llm_model: String,
    /// Environment variable holding the API key (the key is never written or printed).
    #[arg(long, default_value = llm_defaults::API_KEY_ENV)]
    pub llm_api_key_env: String,
    #[arg(long, default_value_t = llm_defaults::TEMPERATURE)]
    pub temperature: f64,
    #[arg(long, default_value_t = llm_defaults::MAX_TOKENS)]
    pub max_tokens: usize,
    /// Seconds per request.
    #[arg(long, default_value_t = llm_defaults::TIMEOUT_S)]
    pub llm_timeout: f64,
    /// Retries on 429, 5xx and timeouts (exponential backoff from --llm-backoff seconds).
    #[arg(long, default_value_t = llm_defaults::RETRIES)]
    pub llm_retries: usize,
    #[arg(long, default_value_t = llm_defaults::BACKOFF_S)]
    pub llm_backoff: f64,
    /// Rounds R of K proposals each.
    #[arg(long, default_value_t = llm_defaults::ROUNDS)]
    pub rounds: usize,
    #[arg(long, default_value_t = llm_defaults::PER_ROUND)]
    pub per_round: usize,
    /// Search memory in the prompt: the best N trials plus the M most recent.
    #[arg(long, default_value_t = llm_defaults::MEMORY_TOP)]
    pub memory_top: usize,
    #[arg(long, default_value_t = llm_defaults::MEMORY_RECENT)]
    pub memory_recent: usize,
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
    #[arg(long, default_value_t = defaults::SEED)]
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
    /// [default: 400 small, 300 standard].
    #[arg(long)]
    pub trial_steps: Option<u64>,
    #[arg(long, default_value_t = defaults::TRIAL_BATCH_SIZE)]
    pub trial_batch_size: usize,
    /// Peak learning rate of each trial [default: 1e-3 small (200 steps at 2e-4 leave the
    /// loss near 0.2), 2e-4 standard].
    #[arg(long)]
    pub trial_lr: Option<f64>,
    /// Samples scored per trial (RFID uses 5,000; fewer is faster and noisier, never compare
    /// scores made with different numbers) [default: 250 small, 1000 standard].
    #[arg(long)]
    pub score_n: Option<usize>,
    /// DDIM steps of the scoring samples [default: 10 small, 20 standard].
    #[arg(long)]
    pub score_steps: Option<usize>,
    /// The trials' loss: simple, or hybrid (IDDPM's L_hybrid; every genome then learns its
    /// variance) [default: simple].
    #[arg(long)]
    pub loss: Option<crate::diffusion::LossKind>,
    /// What the trials' convolutions and attention matmuls compute in, in training and in
    /// scoring: f32, f16 (with dynamic loss scaling) or bf16, where the device has it.
    #[arg(long, default_value_t = crate::precision::Precision::default())]
    pub precision: crate::precision::Precision,
    /// Use only the first N training images.
    #[arg(long)]
    pub max_images: Option<usize>,
    /// Run N trials at once, each in its own process on --device (trials then end in the
    /// order they finish: resumable, not reproducible run to run); with --executor slurm, the
    /// jobs in flight [default there: 8].
    #[arg(long, conflicts_with = "devices")]
    pub parallel: Option<usize>,
    /// Where trials run: `local` (this machine) or `slurm` (array jobs through sbatch; the
    /// run directory must be on a file system the nodes share).
    #[arg(long, value_enum, default_value = "local")]
    pub executor: ExecutorKind,
    /// Passed to sbatch as they are, e.g. "--partition gpu --gres gpu:1 --time 1:00:00".
    #[arg(long, allow_hyphen_values = true)]
    pub slurm_args: Option<String>,
    /// One trial process per device, e.g. wgpu:0,wgpu:1 (a device twice runs two there).
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<crate::device::DeviceChoice>,
    /// Starts of a trial whose process vanished without an outcome before it is logged as
    /// failed.
    #[arg(long, default_value_t = defaults::MAX_ATTEMPTS)]
    pub max_attempts: u32,
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
    #[arg(long, default_value_t = defaults::CROSSOVER)]
    pub crossover: f64,
}

fn run_proxy_check(a: ProxyCheckArgs, given: &Given) -> anyhow::Result<i32> {
    let dir = &a.run_dir;
    if a.summary {
        let cfg = StudyConfig::existing(dir)?;
        let rows = fidelity::read_rows(dir);
        return print_summary(dir, &cfg, &rows, false);
    }
    let selected = super::select_device(a.ext.device)?;
    eprintln!("device: {}", selected.info);
    let given_flag = fidelity::FIXED_ON_RESUME
        .iter()
        .copied()
        .find(|f| given.has(f));
    let ask = fidelity::StudyAsk {
        data: a.data.clone(),
        max_images: a.max_images,
        scale: a.scale,
        architectures: a.architectures,
        full_steps: a.full_steps,
        seed: a.seed,
        batch_size: a.batch_size,
        proxy_steps: a.proxy_steps,
        proxy_lr: a.proxy_lr,
        proxy_score_n: a.proxy_score_n,
        full_score_n: a.full_score_n,
        full_score_steps: a.full_score_steps,
    };
    let cfg = StudyConfig::open(dir, a.resume, given_flag, || {
        StudyConfig::for_scale(&ask, &selected.info)
    })?;
    let (cfg, rows, stopped) = run_study_cli(dir, cfg, &a.ext, &selected)?;
    print_summary(dir, &cfg, &rows, stopped)
}

/// Rank the rows, write summary.json and summary.csv, print the best measures.
fn print_summary(
    dir: &Path,
    cfg: &StudyConfig,
    rows: &[fidelity::StudyRow],
    stopped: bool,
) -> anyhow::Result<i32> {
    let done = rows.iter().filter(|r| r.ok).count();
    eprintln!(
        "{}: {done}/{} trainings done",
        dir.display(),
        cfg.units().len()
    );
    let Some(summary) = fidelity::write_results(dir, cfg, rows)? else {
        eprintln!("no architecture has its full training yet; continue with --resume");
        return Ok(if stopped { 130 } else { 0 });
    };
    eprint!("{}", summary.best_lines(8));
    eprintln!("summary: {}", dir.join(fidelity::SUMMARY_CSV).display());
    if stopped {
        eprintln!("stopped; continue with --resume");
        return Ok(130);
    }
    Ok(0)
}

fn run_retrain(a: RetrainArgs, given: &Given) -> anyhow::Result<i32> {
    let selected = super::select_device(a.ext.device)?;
    eprintln!("device: {}", selected.info);
    let dir = a.run_dir.join(fidelity::RETRAIN_DIR);
    let given_flag = fidelity::RETRAIN_FIXED_ON_RESUME
        .iter()
        .copied()
        .find(|f| given.has(f));
    let cfg = StudyConfig::open(&dir, a.resume, given_flag, || {
        StudyConfig::retraining(&a.run_dir, &a.baseline, a.steps, a.score_n, a.score_steps)
    })?;
    let (cfg, rows, stopped) = run_study_cli(&dir, cfg, &a.ext, &selected)?;
    let table = fidelity::retrain_rows(&dir, &cfg, &rows);
    eprint!("{}", fidelity::write_retrain(&dir, &cfg, &table)?);
    eprintln!("table: {}", dir.join("retrain.md").display());
    if stopped || table.len() < cfg.architectures.len() {
        eprintln!("stopped; continue with --resume");
        return Ok(130);
    }
    Ok(0)
}

/// Load what a study's units need, run those not done with progress, and return the stored
/// configuration, every row, and whether Ctrl-C stopped it.
fn run_study_cli(
    dir: &Path,
    mut cfg: StudyConfig,
    ext_args: &ExtractorArgs,
    selected: &crate::device::SelectedDevice,
) -> anyhow::Result<(StudyConfig, Vec<fidelity::StudyRow>, bool)> {
    let (train, heldout) = cfg.load_data()?;
    let (ext, reference) = scoring(ext_args, &cfg.data, cfg.space.image, selected)?;
    cfg.bind_extractor(ext.id())?;
    cfg.write(dir)?;
    let source = cfg.source(&selected.info);
    let env = StudyEnv {
        source: &source,
        train: &train,
        heldout: &heldout,
        extractor: ext.as_ref(),
        reference: &reference,
        device: &selected.device,
    };
    let stop = super::progress::stop_on_ctrlc("stopping the study at a checkpoint");
    let mut bar: Option<indicatif::ProgressBar> = None;
    let rows = run_study(dir, &cfg, &env, &stop, &mut |e| match e {
        StudyEvent::Started { done, total } => {
            eprintln!("{}: {done}/{total} trainings done", dir.display())
        }
        StudyEvent::UnitStarted {
            index,
            total,
            arch,
            training,
            steps,
        } => {
            eprintln!(
                "[{}/{total}] {} ({:.2} M params, {:.1} M MACs) {training}: {steps} steps",
                index + 1,
                arch.hash,
                arch.params as f64 / 1e6,
                arch.macs as f64 / 1e6
            );
            bar = Some(super::progress::bar(steps, "train"));
        }
        StudyEvent::Train { done, .. } => {
            if let Some(b) = &bar {
                b.set_position(done)
            }
        }
        StudyEvent::Sample { done, total } => {
            let b = bar.get_or_insert_with(|| super::progress::bar(total as u64, "sample"));
            if b.length() != Some(total as u64) || done as u64 <= b.position() {
                b.finish_and_clear();
                *b = super::progress::bar(total as u64, "sample");
            }
            b.set_position(done as u64);
        }
        StudyEvent::UnitDone(row) => {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
            let what = row.scores.first().map_or("no score".into(), |s| {
                format!("{} {:.3} @ {} x DDIM-{}", s.metric, s.value, s.n, s.steps)
            });
            match (&row.reason, row.heldout_eps_mse) {
                (Some(r), _) => eprintln!("  -> failed: {r}"),
                (None, h) => eprintln!(
                    "  -> {what}, held-out eps-MSE {:.4}, {:.0} s training",
                    h.unwrap_or(f64::NAN),
                    row.train_seconds
                ),
            }
        }
    })?;
    if let Some(b) = bar.take() {
        b.finish_and_clear();
    }
    let stopped = stop.load(std::sync::atomic::Ordering::SeqCst);
    Ok((cfg, rows, stopped))
}

/// The request the flags describe.
fn request(a: &SearchArgs, strategy: StrategyChoice) -> SearchRequest {
    SearchRequest {
        strategy,
        scale: a.scale,
        seed: a.seed,
        data: a.data.clone(),
        max_images: a.max_images,
        evaluator: a.evaluator,
        trials: a.trials,
        max_minutes: a.max_minutes,
        max_params: a.max_params,
        max_macs: a.max_macs,
        trial_steps: a.trial_steps,
        trial_batch_size: a.trial_batch_size,
        trial_lr: a.trial_lr,
        score_n: a.score_n,
        score_steps: a.score_steps,
        loss: a.loss,
        precision: a.precision,
    }
}

/// The LLM strategy the flags describe.
fn llm_choice(l: &LlmArgs) -> anyhow::Result<StrategyChoice> {
    let endpoint = LlmConfig {
        base_url: l.llm_base_url.clone().unwrap_or_default(),
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
    Ok(StrategyChoice::llm(endpoint, search)?)
}

pub fn run(cmd: SearchCmd, given: &Given) -> anyhow::Result<i32> {
    let (common, choice) = match cmd {
        SearchCmd::ProxyCheck(a) => return run_proxy_check(a, given),
        SearchCmd::Retrain(a) => return run_retrain(a, given),
        SearchCmd::Block(a) => return super::block_cmd::run(a, given),
        SearchCmd::Random(a) => (a, StrategyChoice::Random),
        SearchCmd::Evolution(e) => (
            e.common,
            StrategyChoice::Evolution {
                population: e.population,
                sample: e.sample,
                crossover: e.crossover,
            },
        ),
        SearchCmd::Llm(l) => {
            let choice = llm_choice(&l)?;
            (l.common, choice)
        }
    };
    search(&request(&common, choice), &common, given)
}

fn search(r: &SearchRequest, a: &SearchArgs, given: &Given) -> anyhow::Result<i32> {
    let selected = super::select_device(a.ext.device)?;
    eprintln!("device: {}", selected.info);
    let name = r.strategy.name();
    let dir = a
        .run_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/search-{name}")));
    let named: Vec<&str> = FIXED_ON_RESUME
        .iter()
        .copied()
        .filter(|id| given.has(id))
        .collect();
    let (mut cfg, data) = SearchConfig::prepare(&dir, r, a.resume, &named, &selected.info)?;
    let scoring = (cfg.evaluator == EvaluatorKind::Proxy)
        .then(|| scoring(&a.ext, &cfg.data, cfg.space.image, &selected))
        .transpose()?;
    let mut evaluator = cfg.evaluator(data, scoring, &selected, Some(trial_bar()))?;
    if let crate::search::config::StrategyConfig::Llm(endpoint, l) = &cfg.strategy {
        eprintln!(
            "LLM: {} at {} ({} rounds x {})",
            endpoint.model, endpoint.base_url, l.rounds, l.per_round
        );
    }
    let mut strategy = cfg.strategy(
        &dir,
        Some(Box::new(|attempt, wait, why: &str| {
            eprintln!("  LLM request failed ({why}); retry {attempt} in {wait:.1} s")
        })),
        Some(Box::new(|rf: &RoundFile| {
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
    )?;
    cfg.write(&dir)?;
    let stop = super::progress::stop_on_ctrlc("stopping the running trials at a checkpoint");
    let metric = cfg.metric.clone();
    let max = cfg.limits.max_trials;
    let mut on_event = |e: SearchEvent| render(e, name, &dir, &metric, max);
    let mut exec = ExecutorRequest {
        kind: a.executor,
        parallel: a.parallel,
        devices: a.devices.clone(),
        device: a.ext.device,
        slurm_args: a.slurm_args.clone(),
        max_attempts: a.max_attempts,
    }
    .build(&dir, std::env::current_exe()?, evaluator.as_mut())?;
    let (evaluation, ext_spec) = (cfg.evaluation(), a.ext.spec());
    let (status, log) = run_search_with(
        &dir,
        &cfg.space,
        &cfg.limits,
        strategy.as_mut(),
        exec.as_mut(),
        Some((&evaluation, Some(&ext_spec))),
        &stop,
        &mut on_event,
    )?;
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
        crate::search::check_scored(&dir, &cfg.strategy, &log.records)?;
    }
    match crate::search::report::write_report(&dir, &[], &dir, None) {
        Ok(w) => {
            for warning in &w.warnings {
                eprintln!("warning: {warning}");
            }
            eprintln!("report: {}", w.markdown.display());
        }
        Err(e) => eprintln!("warning: report not written: {e}"),
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

/// One line of progress per search event.
fn render(e: SearchEvent, name: &str, dir: &Path, metric: &str, max: usize) {
    match e {
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
        SearchEvent::Adopted { hash, job } => {
            eprintln!("  [{hash}] still runs as {job}; following it")
        }
        SearchEvent::Retried { hash, attempt, why } => {
            eprintln!("  [{hash}] {why}; attempt {attempt}")
        }
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
    }
}

/// One progress bar for the running trial: its training steps, then its scored images.
pub(crate) fn trial_bar() -> crate::trial::ProgressHook {
    let pb = super::progress::bar(0, "trial");
    Box::new(move |p| {
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
    })
}
