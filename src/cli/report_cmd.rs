//! `diffnas report RUN_DIR [--compare DIR ...]`: report.md and PNG charts of a search.

use super::user_err;
use crate::search::report::{RunSummary, chart_best_so_far, chart_score_vs_macs, markdown};
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
}

pub fn run(a: ReportArgs) -> anyhow::Result<i32> {
    let mut runs = Vec::new();
    for d in std::iter::once(&a.run_dir).chain(&a.compare) {
        if !d.join(crate::search::TRIALS_FILE).is_file() {
            return Err(user_err(format!(
                "{}: no {} (is it a search run directory?)",
                d.display(),
                crate::search::TRIALS_FILE
            )));
        }
        runs.push(RunSummary::load(d).map_err(|e| user_err(e.to_string()))?);
    }
    let metrics: std::collections::BTreeSet<&str> =
        runs.iter().map(|r| r.metric.as_str()).collect();
    if metrics.len() > 1 {
        eprintln!(
            "warning: the runs use different scores ({metrics:?}); their numbers are not comparable"
        );
    }
    let out = a.out.unwrap_or_else(|| a.run_dir.clone());
    std::fs::create_dir_all(&out)?;
    let mut charts = Vec::new();
    for name in [
        "best_vs_trials.png",
        "best_vs_time.png",
        "score_vs_macs.png",
    ] {
        let p = out.join(name);
        let drawn = match name {
            "best_vs_trials.png" => chart_best_so_far(&runs, &p, false),
            "best_vs_time.png" => chart_best_so_far(&runs, &p, true),
            _ => chart_score_vs_macs(&runs, &p),
        };
        match drawn {
            Ok(()) => charts.push(name.to_string()),
            Err(e) => eprintln!("warning: chart {name} not drawn: {e}"),
        }
    }
    let md = markdown(&runs, &charts);
    let path = out.join("report.md");
    crate::train::write_atomic(&path, md.as_bytes())?;
    eprintln!("wrote {} and {} chart(s)", path.display(), charts.len());
    Ok(0)
}
