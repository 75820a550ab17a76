//! `diffnas trial run TRIAL_DIR`: one search trial as a job (see `search::job`).

use crate::device::DeviceChoice;
use crate::search::job::{OUTCOME_FILE, run_trial};
use crate::trial::TrialStatus;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum TrialCmd {
    /// Run the trial whose trial.json is in TRIAL_DIR and write its outcome.json (a failed
    /// trial is an outcome too); run again after a stop, it resumes from its checkpoints.
    Run(TrialRunArgs),
}

#[derive(Args, Debug)]
pub struct TrialRunArgs {
    /// A trial's folder (runs/<search>/trials/<hash>).
    pub trial_dir: PathBuf,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
}

pub fn run(cmd: TrialCmd) -> anyhow::Result<i32> {
    let TrialCmd::Run(a) = cmd;
    let selected = super::select_device(a.device)?;
    eprintln!("device: {}", selected.info);
    let stop = super::progress::stop_on_ctrlc("stopping the trial at a checkpoint");
    let bar = super::search_cmd::trial_bar();
    let outcome = run_trial(&a.trial_dir, &selected, &stop, Some(bar), &mut |_| {})?;
    if outcome.status == TrialStatus::Interrupted {
        eprintln!("stopped; run it again to resume");
        return Ok(130);
    }
    let what = match (outcome.score, &outcome.reason) {
        (Some(s), _) => format!("{} {s:.4}", outcome.metric),
        (None, r) => format!("{:?}: {}", outcome.status, r.as_deref().unwrap_or("")),
    };
    eprintln!("{what} -> {}", a.trial_dir.join(OUTCOME_FILE).display());
    Ok(0)
}
