//! `diffnas report`: a search's trials as `report.md` (table, best genome, Pareto front of
//! score vs MACs) and PNG charts (best-so-far vs trials and vs wall time, score vs MACs), with
//! several runs overlaid (LLM vs random vs evolution) when more than one is given.

use super::{TrialLog, TrialRecord};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One search run as the report sees it.
pub struct RunSummary {
    pub name: String,
    pub dir: PathBuf,
    pub metric: String,
    pub records: Vec<TrialRecord>,
}

impl RunSummary {
    pub fn load(dir: &Path) -> Result<Self, super::SearchError> {
        let log = TrialLog::open(dir)?;
        let cfg: Option<serde_json::Value> = std::fs::read(dir.join(super::CONFIG_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let metric = cfg
            .as_ref()
            .and_then(|c| c["metric"].as_str().map(str::to_string))
            .or_else(|| log.records.first().map(|r| r.outcome.metric.clone()))
            .unwrap_or_else(|| "score".into());
        let strategy = cfg
            .as_ref()
            .and_then(|c| c["strategy"].as_str().map(str::to_string))
            .unwrap_or_default();
        let base = dir.file_name().map_or_else(
            || dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let name = if strategy.is_empty() || base.contains(&strategy) {
            base
        } else {
            format!("{base} ({strategy})")
        };
        Ok(RunSummary {
            name,
            dir: dir.to_path_buf(),
            metric,
            records: log.records,
        })
    }

    /// (trial number counted from 1, search minutes, best score so far) after each scored trial.
    pub fn best_so_far(&self) -> Vec<(usize, f64, f64)> {
        let mut best = f64::INFINITY;
        let mut n = 0;
        let mut out = Vec::new();
        for r in &self.records {
            if r.counts() {
                n += 1;
            }
            if let Some(s) = r.score() {
                best = best.min(s);
                out.push((n, r.search_seconds / 60.0, best));
            }
        }
        out
    }

    pub fn best(&self) -> Option<&TrialRecord> {
        self.records
            .iter()
            .filter(|r| r.score().is_some())
            .min_by(|a, b| a.score().partial_cmp(&b.score()).expect("finite"))
    }
}

/// Trials not dominated in (score, MACs): no other trial is at least as good in both and
/// better in one. Sorted by MACs.
pub fn pareto_front(records: &[TrialRecord]) -> Vec<&TrialRecord> {
    let pts: Vec<(&TrialRecord, f64, u64)> = records
        .iter()
        .filter_map(|r| Some((r, r.score()?, r.outcome.macs?)))
        .collect();
    let mut front: Vec<&TrialRecord> = pts
        .iter()
        .filter(|(_, s, m)| {
            !pts.iter()
                .any(|(_, s2, m2)| s2 <= s && m2 <= m && (s2 < s || m2 < m))
        })
        .map(|(r, _, _)| *r)
        .collect();
    front.sort_by_key(|r| r.outcome.macs);
    front
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.prec$}"))
}

/// The Markdown report of `runs[0]`, with a comparison table when there are several.
pub fn markdown(runs: &[RunSummary], charts: &[String]) -> String {
    let main = &runs[0];
    let m = &main.metric;
    let mut s = String::new();
    let _ = writeln!(s, "# Search report: {}\n", main.name);
    let scored = main.records.iter().filter(|r| r.score().is_some()).count();
    let counted = main.records.iter().filter(|r| r.counts()).count();
    let wall = main.records.last().map_or(0.0, |r| r.search_seconds);
    let _ = writeln!(
        s,
        "{counted} trials ({scored} scored, {} failed, {} rejected before training) in {:.1} min; \
         score: **{m}** (lower is better).\n",
        main.records
            .iter()
            .filter(|r| r.outcome.status == crate::trial::TrialStatus::Failed)
            .count(),
        main.records.len() - counted,
        wall / 60.0
    );
    if runs.len() > 1 {
        let _ = writeln!(s, "## Runs compared\n");
        let _ = writeln!(s, "| run | trials | best {m} | at trial | at minute |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        for r in runs {
            let bsf = r.best_so_far();
            let best = bsf.last().map(|x| x.2);
            let first_best = best.and_then(|b| bsf.iter().find(|x| x.2 == b));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                r.name,
                r.records.iter().filter(|x| x.counts()).count(),
                fmt_opt(best, 4),
                first_best.map_or("-".into(), |x| x.0.to_string()),
                fmt_opt(first_best.map(|x| x.1), 1),
            );
        }
        let _ = writeln!(s);
    }
    if !charts.is_empty() {
        let _ = writeln!(s, "## Charts\n");
        for c in charts {
            let _ = writeln!(s, "![{c}]({c})\n");
        }
    }
    if let Some(b) = main.best() {
        let _ = writeln!(
            s,
            "## Best genome\n\nTrial {} [`{}`], {m} {:.4}, {:.3} M parameters, {:.3} GMACs per image \
             ({}).\n\n```json\n{}\n```\n",
            b.index,
            b.hash,
            b.score().unwrap_or(f64::NAN),
            b.outcome.params.unwrap_or(0) as f64 / 1e6,
            b.outcome.macs.unwrap_or(0) as f64 / 1e9,
            b.origin,
            b.genome.to_json_pretty().trim_end()
        );
        if main
            .dir
            .join(b.run_dir())
            .join(crate::rundir::RUN_FILE)
            .is_file()
        {
            let d = main.dir.join(b.run_dir());
            let _ = writeln!(
                s,
                "Its run directory is `{0}`: `diffnas sample {0}`, `diffnas eval fid {0}` \
                 and `diffnas export {0}` open it, and `diffnas train --resume --run-dir {0} \
                 --steps N` trains it further.\n",
                d.display()
            );
        }
    }
    let front = pareto_front(&main.records);
    if !front.is_empty() {
        let _ = writeln!(s, "## Pareto front ({m} vs MACs)\n");
        let _ = writeln!(s, "| trial | hash | {m} | GMACs | M params |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        for r in front {
            let _ = writeln!(
                s,
                "| {} | `{}` | {:.4} | {:.3} | {:.3} |",
                r.index,
                r.hash,
                r.score().unwrap_or(f64::NAN),
                r.outcome.macs.unwrap_or(0) as f64 / 1e9,
                r.outcome.params.unwrap_or(0) as f64 / 1e6
            );
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "## All trials\n");
    let _ = writeln!(
        s,
        "| # | hash | origin | status | {m} | M params | GMACs | seconds | note |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for r in &main.records {
        let o = &r.outcome;
        let note = o
            .reason
            .as_deref()
            .unwrap_or("")
            .replace('|', "/")
            .replace('\n', " ");
        let note: String = note.chars().take(80).collect();
        let _ = writeln!(
            s,
            "| {} | `{}` | {} | {:?} | {} | {} | {} | {:.0} | {} |",
            r.index,
            r.hash,
            r.origin,
            o.status,
            fmt_opt(r.score(), 4),
            fmt_opt(o.params.map(|p| p as f64 / 1e6), 3),
            fmt_opt(o.macs.map(|p| p as f64 / 1e9), 3),
            o.seconds,
            note
        );
    }
    s
}

type ChartResult = Result<(), Box<dyn std::error::Error>>;
type Root<'b> = DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>;
type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Caption, axes and grid.
fn frame<'a, 'b>(
    root: &'a Root<'b>,
    caption: String,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    x_desc: &str,
    y_desc: &str,
) -> Result<Chart<'a, 'b>, Box<dyn std::error::Error>> {
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()?;
    Ok(chart)
}

/// Legend, then write the file.
fn finish<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, root: &Root<'b>) -> ChartResult {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn range(vals: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let lo = vals.clone().fold(f64::INFINITY, f64::min);
    let hi = vals.fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - pad, hi + pad)
}

/// Best-so-far score against trials (`by_time` false) or wall-clock minutes (true).
pub fn chart_best_so_far(runs: &[RunSummary], path: &Path, by_time: bool) -> ChartResult {
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    let series: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|r| {
            r.best_so_far()
                .into_iter()
                .map(|(n, t, b)| (if by_time { t } else { n as f64 }, b))
                .collect()
        })
        .collect();
    let all = series.iter().flatten();
    let (x0, x1) = range(all.clone().map(|p| p.0));
    let (y0, y1) = range(all.map(|p| p.1));
    let metric = &runs[0].metric;
    let mut chart = frame(
        &root,
        format!("best {metric} so far"),
        x0.min(0.0)..x1,
        y0..y1,
        if by_time {
            "wall-clock minutes"
        } else {
            "trials"
        },
        metric,
    )?;
    for (i, (run, pts)) in runs.iter().zip(&series).enumerate() {
        let color = Palette99::pick(i).to_rgba();
        // A step line: the best holds until the next improvement.
        let mut steps = Vec::new();
        for (j, p) in pts.iter().enumerate() {
            if j > 0 {
                steps.push((p.0, pts[j - 1].1));
            }
            steps.push(*p);
        }
        chart
            .draw_series(LineSeries::new(steps, color.stroke_width(2)))?
            .label(run.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    finish(&mut chart, &root)
}

/// Score against MACs for every scored trial, with the Pareto front of the first run.
pub fn chart_score_vs_macs(runs: &[RunSummary], path: &Path) -> ChartResult {
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    let pts: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|r| {
            r.records
                .iter()
                .filter_map(|t| Some((t.outcome.macs? as f64 / 1e6, t.score()?)))
                .collect()
        })
        .collect();
    let all = pts.iter().flatten();
    let (x0, x1) = range(all.clone().map(|p| p.0));
    let (y0, y1) = range(all.map(|p| p.1));
    let metric = &runs[0].metric;
    let mut chart = frame(
        &root,
        format!("{metric} vs cost"),
        x0..x1,
        y0..y1,
        "MMACs per image",
        metric,
    )?;
    for (i, (run, p)) in runs.iter().zip(&pts).enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(p.iter().map(|q| Circle::new(*q, 4, color.filled())))?
            .label(run.name.clone())
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
    }
    let front: Vec<(f64, f64)> = pareto_front(&runs[0].records)
        .iter()
        .filter_map(|r| Some((r.outcome.macs? as f64 / 1e6, r.score()?)))
        .collect();
    chart
        .draw_series(LineSeries::new(front, BLACK.stroke_width(1)))?
        .label(format!("Pareto front ({})", runs[0].name))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    finish(&mut chart, &root)
}

/// What [`write_report`] wrote.
pub struct Written {
    pub markdown: PathBuf,
    /// The charts drawn, by file name.
    pub charts: Vec<String>,
    /// Charts that could not be drawn, with why, and other things the reader should know.
    pub warnings: Vec<String>,
}

/// `report.md` and the PNG charts of the search in `dir` (others in `compare` overlaid) into
/// `out`.
pub fn write_report(
    dir: &Path,
    compare: &[PathBuf],
    out: &Path,
) -> Result<Written, super::SearchError> {
    let mut runs = Vec::new();
    for d in std::iter::once(&dir.to_path_buf()).chain(compare) {
        if !d.join(super::TRIALS_FILE).is_file() {
            return Err(super::SearchError::NothingToReport {
                dir: d.to_path_buf(),
            });
        }
        runs.push(RunSummary::load(d)?);
    }
    let mut warnings = Vec::new();
    let metrics: std::collections::BTreeSet<&str> =
        runs.iter().map(|r| r.metric.as_str()).collect();
    if metrics.len() > 1 {
        warnings.push(format!(
            "the runs use different scores ({metrics:?}); their numbers are not comparable"
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| super::io_err(out, e))?;
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
            Err(e) => warnings.push(format!("chart {name} not drawn: {e}")),
        }
    }
    let md = markdown(&runs, &charts);
    let path = out.join("report.md");
    crate::train::write_atomic(&path, md.as_bytes()).map_err(|e| super::io_err(&path, e))?;
    Ok(Written {
        markdown: path,
        charts,
        warnings,
    })
}
