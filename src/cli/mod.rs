//! Command line: clap arguments -> validated configuration -> library calls. `anyhow` lives only
//! here and in `main.rs`.

mod bench;
pub mod block_cmd;
pub mod eval_cmd;
pub mod export_cmd;
mod genome_cmd;
mod progress;
pub mod report_cmd;
mod sample;
pub mod search_cmd;
mod train_cmd;
mod trial_cmd;

pub use bench::BenchArgs;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

/// Search for better diffusion-model architectures on any GPU.
///
/// Every command runs on a hardware GPU through wgpu (Vulkan, Metal, DX12) when one exists, and
/// on the CPU otherwise; pick with --device.
#[derive(Parser, Debug)]
#[command(name = "diffnas", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a UNet denoiser (DDPM epsilon loss, or IDDPM L_hybrid with a learned variance) into
    /// a run directory; resumable.
    Train(train_cmd::TrainArgs),
    /// Sample images from a trained run directory (PNG grid and/or one PNG per image).
    Sample(sample::SampleArgs),
    /// Print a preset, validate a genome JSON file, or show what a genome costs.
    #[command(subcommand)]
    Genome(genome_cmd::GenomeCmd),
    /// List the GPU adapters wgpu can see and what --device auto picks.
    Devices,
    /// Measure training and sampling throughput for a genome, batch size and device (JSON).
    Bench(BenchArgs),
    /// Metrics: FID / FD-classifier and KID, reference statistics, the offline classifier.
    #[command(subcommand)]
    Eval(eval_cmd::EvalCmd),
    /// Architecture search (LLM-guided, regularized evolution, random) with rapid-convergence
    /// trials ranked by reduced FID (reduced FD-classifier offline); resumable.
    #[command(subcommand)]
    Search(Box<search_cmd::SearchCmd>),
    /// One search trial as a job: what `--parallel`, `--devices` and Slurm run.
    #[command(subcommand)]
    Trial(trial_cmd::TrialCmd),
    /// Write report.md and PNG charts of a search (optionally overlaying other searches).
    Report(report_cmd::ReportArgs),
    /// Write a run's weights as a model bundle for the browser demo (web/): genome, weights
    /// (f32 or f16), schedule and a manifest with sizes and SHA-256.
    Export(export_cmd::ExportArgs),
    /// Download the Inception weights for FID, or show where weights are looked for.
    #[command(subcommand)]
    Weights(eval_cmd::WeightsCmd),
}

/// Exit codes: 0 success, 1 runtime failure, 2 bad input (arguments, files, genomes),
/// 130 interrupted (the run can be resumed).
pub fn main() -> i32 {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|c| (c, m)));
    let (cli, matches) = match parsed {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    crate::device::quiet_headless_probe();
    crate::integrity::set_sink(|m| eprintln!("warning: {m}"));
    let autotune_log = match crate::eval::setup::autotune_log() {
        Ok(log) => log,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    #[cfg(feature = "kernel-cache")]
    crate::device::configure_kernels(
        &crate::eval::setup::kernel_cache_dir(),
        autotune_log.as_deref(),
    );
    #[cfg(not(feature = "kernel-cache"))]
    let _ = autotune_log;
    // How every convolution and GroupNorm in this process runs (`bench --conv/--norm`
    // override them).
    if let Err(e) = crate::model::algorithms_from_env() {
        eprintln!("error: {e}");
        return 2;
    }
    match crate::cpu::run_in_pool(|| dispatch(cli, Given::of(&matches))) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            exit_code(&e)
        }
    }
}

/// An error and its causes, as `anyhow`'s `{:#}` prints them, but without a cause whose text
/// the message already holds (typed errors often print their source themselves).
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for c in e.chain() {
        let text = c.to_string();
        if out.is_empty() {
            out = text;
        } else if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
    }
    out
}

/// The exit code of a failed command, from the type of its error (the table above): bad input
/// is 2, anything else 1.
fn exit_code(e: &anyhow::Error) -> i32 {
    let bad_input = e.chain().any(|c| {
        c.downcast_ref::<UserError>().is_some()
            || c.downcast_ref::<crate::rundir::RunDirError>()
                .is_some_and(|r| r.is_bad_input())
            || c.downcast_ref::<crate::search::block::pipeline::BlockError>()
                .is_some_and(|b| b.is_bad_input())
            || c.downcast_ref::<crate::search::SearchError>()
                .is_some_and(|s| s.is_bad_input())
            || c.downcast_ref::<crate::eval::setup::SetupError>()
                .is_some_and(|s| s.is_bad_input())
            || c.downcast_ref::<crate::eval::fetch::FetchError>()
                .is_some_and(|f| f.is_bad_input())
            || c.is::<crate::data::DataError>()
            || c.is::<crate::genome::GenomeErrors>()
            || c.is::<crate::genome::GenomeLoadError>()
            || c.is::<crate::bench::BenchError>()
    });
    if bad_input { 2 } else { 1 }
}

/// An error in what the user gave us (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UserError(pub String);

pub(crate) fn user_err(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UserError(msg.into()))
}

/// Which flags of the command the user gave (on the command line or through an environment
/// variable), as opposed to clap's defaults: a resumed run refuses the ones that would change
/// it.
#[derive(Debug, Clone, Default)]
pub struct Given(Option<ArgMatches>);

impl Given {
    /// The innermost subcommand's flags.
    fn of(m: &ArgMatches) -> Given {
        let mut m = m;
        while let Some((_, sub)) = m.subcommand() {
            m = sub;
        }
        Given(Some(m.clone()))
    }

    /// Whether argument `id` (its field name) was given.
    pub fn has(&self, id: &str) -> bool {
        self.0.as_ref().is_some_and(|m| {
            m.try_contains_id(id).unwrap_or(false)
                && matches!(
                    m.value_source(id),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                )
        })
    }
}

fn dispatch(cli: Cli, given: Given) -> anyhow::Result<i32> {
    match cli.command {
        Command::Train(a) => train_cmd::run(a, &given),
        Command::Sample(a) => sample::run(a).map(|_| 0),
        Command::Genome(c) => genome_cmd::run(c),
        Command::Devices => {
            print!("{}", crate::device::describe()?);
            Ok(0)
        }
        Command::Bench(a) => bench::run_cli(a).map(|_| 0),
        Command::Eval(c) => eval_cmd::run_eval(c),
        Command::Search(c) => search_cmd::run(*c, &given),
        Command::Report(a) => report_cmd::run(a),
        Command::Trial(c) => trial_cmd::run(c),
        Command::Weights(c) => eval_cmd::run_weights(c),
        Command::Export(a) => export_cmd::run(a),
    }
}

/// [`crate::device::select`], plus: when the CPU is chosen, make flex Burn's default device as
/// well, so nothing that uses the default device (optimizer-state loading does) starts a GPU
/// runtime behind the user's back.
pub(crate) fn select_device(
    choice: crate::device::DeviceChoice,
) -> anyhow::Result<crate::device::SelectedDevice> {
    // A device this build or machine cannot have is a bad flag (exit 2), not a failure.
    let d = crate::device::select(choice).map_err(|e| match e.is_bad_input() {
        true => user_err(e.to_string()),
        false => anyhow::Error::new(e),
    })?;
    if d.info.backend == "flex" && std::env::var_os("BURN_DEVICE").is_none() {
        // SAFETY: called on the main thread before this process starts any thread of its own.
        unsafe { std::env::set_var("BURN_DEVICE", "flex") };
    }
    Ok(d)
}
