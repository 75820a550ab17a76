//! `diffnas report RUN_DIR [--compare DIR ...]`: report.md and PNG charts of a search.

use crate::search::report::write_report;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The search's run directory.
    pub run_dir: PathBuf,
    /// Other searches to overlay on the charts and compare in a table (e.g. random and
    /// evolution next to an LLM search on the same evaluator).
    #[arg(long)]
    pub compare: Vec<PathBuf>,
    /// Where to write report.md and the charts [default: RUN_DIR].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A score to reach: the comparison gives the trials and minutes each run needed.
    #[arg(long)]
    pub target: Option<f64>,
}

pub fn run(a: ReportArgs) -> anyhow::Result<i32> {
    let out = a.out.unwrap_or_else(|| a.run_dir.clone());
    let w = write_report(&a.run_dir, &a.compare, &out, a.target)?;
    for warning in &w.warnings {
        eprintln!("warning: {warning}");
    }
    eprintln!(
        "wrote {} and {} chart(s)",
        w.markdown.display(),
        w.charts.len()
    );
    Ok(0)
}
