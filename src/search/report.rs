//! `diffnas report`: a search's trials as `report.md` (table, best genome, Pareto front of
//! score vs MACs) and PNG charts (best-so-far vs trials and vs wall time, score vs MACs), with
//! several runs overlaid (LLM vs random vs evolution) when more than one is given.

use super::{TrialLog, TrialRecord};
use crate::trial::Proxy;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One search run as the report sees it.
pub struct RunSummary {
    pub name: String,
    pub dir: PathBuf,
    /// The score's label ([`Proxy::label`], or the stored name of the score).
    pub metric: String,
    /// How the scores were made (None for a stub evaluator).
    pub proxy: Option<Proxy>,
    /// `random`, `evolution`, `llm` (empty when unknown): runs of one strategy with other
    /// seeds are summarised together.
    pub strategy: String,
    pub records: Vec<TrialRecord>,
}

impl RunSummary {
    pub fn load(dir: &Path) -> Result<Self, super::SearchError> {
        let log = TrialLog::open(dir)?;
        let cfg: Option<serde_json::Value> = std::fs::read(dir.join(super::CONFIG_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        // The proxy from the search's configuration, else from its first scored trial.
        let proxy = super::config::SearchConfig::read(dir)
            .ok()
            .and_then(|c| c.proxy())
            .or_else(|| log.records.iter().find_map(|r| r.outcome.proxy.clone()));
        let metric = proxy
            .as_ref()
            .map(Proxy::label)
            .or_else(|| {
                cfg.as_ref()
                    .and_then(|c| c["metric"].as_str().map(str::to_string))
            })
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
            proxy,
            strategy,
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

    /// The best score after `trials` counted trials (None before the first scored one).
    pub fn best_after(&self, trials: usize) -> Option<f64> {
        self.best_so_far()
            .into_iter()
            .take_while(|x| x.0 <= trials)
            .last()
            .map(|x| x.2)
    }

    /// The first (trial, minute) at which the best score reached `target` or better.
    pub fn reached(&self, target: f64) -> Option<(usize, f64)> {
        self.best_so_far()
            .into_iter()
            .find(|x| x.2 <= target)
            .map(|x| (x.0, x.1))
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

/// Runs of one strategy (other seeds), in the order first met.
pub fn by_strategy(runs: &[RunSummary]) -> Vec<(String, Vec<&RunSummary>)> {
    let mut out: Vec<(String, Vec<&RunSummary>)> = Vec::new();
    for r in runs {
        let key = if r.strategy.is_empty() {
            r.name.clone()
        } else {
            r.strategy.clone()
        };
        match out.iter_mut().find(|g| g.0 == key) {
            Some(g) => g.1.push(r),
            None => out.push((key, vec![r])),
        }
    }
    out
}

/// The median of `v` (None when empty).
fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// (trial, median, min, max) per counted trial.
pub type Spread = Vec<(usize, f64, f64, f64)>;

/// Per strategy and counted trial, up to the shortest run's last: (trial, median, min, max)
/// of the best score so far over the runs, from the first trial at which every run has one.
pub fn spread(group: &[&RunSummary]) -> Spread {
    // Only where every run has a score: the median of a changing set of runs could rise.
    let shortest = group
        .iter()
        .map(|r| r.records.iter().filter(|x| x.counts()).count())
        .min()
        .unwrap_or(0);
    (1..=shortest)
        .filter_map(|t| {
            let mut v: Vec<f64> = group.iter().filter_map(|r| r.best_after(t)).collect();
            if v.len() < group.len() {
                return None;
            }
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            median(&mut v).map(|m| (t, m, lo, hi))
        })
        .collect()
}

/// The strategies' table: seeds, final best (median and range), and trials and minutes to
/// reach `target` per seed.
fn strategies_table(s: &mut String, runs: &[RunSummary], target: Option<f64>) {
    let m = &runs[0].metric;
    let _ = writeln!(s, "## Strategies over seeds\n");
    let _ = match target {
        Some(t) => writeln!(
            s,
            "| strategy | seeds | final best {m}: median [min, max] | trials to reach {t}: median (per seed) | minutes to reach {t}: median |"
        ),
        None => writeln!(
            s,
            "| strategy | seeds | final best {m}: median [min, max] |"
        ),
    };
    let _ = writeln!(
        s,
        "{}",
        if target.is_some() {
            "|---|---|---|---|---|"
        } else {
            "|---|---|---|"
        }
    );
    for (name, group) in by_strategy(runs) {
        let mut finals: Vec<f64> = group
            .iter()
            .filter_map(|r| r.best_so_far().last().map(|x| x.2))
            .collect();
        let lo = finals.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = finals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let med = median(&mut finals);
        let best = med.map_or("-".into(), |m| format!("{m:.4} [{lo:.4}, {hi:.4}]"));
        let Some(t) = target else {
            let _ = writeln!(s, "| {name} | {} | {best} |", group.len());
            continue;
        };
        let reached: Vec<Option<(usize, f64)>> = group.iter().map(|r| r.reached(t)).collect();
        let per_seed: Vec<String> = reached
            .iter()
            .map(|x| x.map_or("not reached".into(), |(n, _)| n.to_string()))
            .collect();
        // A seed that never reached the target counts as more trials than any that did.
        let mut trials: Vec<f64> = reached
            .iter()
            .map(|x| x.map_or(f64::INFINITY, |(n, _)| n as f64))
            .collect();
        let mut minutes: Vec<f64> = reached
            .iter()
            .map(|x| x.map_or(f64::INFINITY, |(_, m)| m))
            .collect();
        let fmt = |v: Option<f64>, p: usize| match v {
            Some(x) if x.is_finite() => format!("{x:.p$}"),
            Some(_) => "not reached".into(),
            None => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {name} | {} | {best} | {} ({}) | {} |",
            group.len(),
            fmt(median(&mut trials), 1),
            per_seed.join(", "),
            fmt(median(&mut minutes), 1)
        );
    }
    let _ = writeln!(s);
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.prec$}"))
}

/// The Markdown report of `runs[0]`, with a comparison table when there are several.
pub fn markdown(runs: &[RunSummary], charts: &[String], target: Option<f64>) -> String {
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
    if let Some(p) = &main.proxy {
        let _ = writeln!(s, "Proxy: {}.\n", p.describe());
    }
    let notes: std::collections::BTreeSet<&str> = main
        .records
        .iter()
        .flat_map(|r| r.outcome.warnings.iter().map(String::as_str))
        .collect();
    for w in notes {
        let _ = writeln!(s, "> warning: {w}\n");
    }
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
    if runs.len() > 1 || target.is_some() {
        strategies_table(&mut s, runs, target);
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

/// Best-so-far against trials per strategy: the median over its seeds as a line, the range
/// (min to max) as a band.
pub fn chart_spread(runs: &[RunSummary], path: &Path) -> ChartResult {
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    let groups = by_strategy(runs);
    let series: Vec<(String, usize, Spread)> = groups
        .iter()
        .map(|(n, g)| (n.clone(), g.len(), spread(g)))
        .collect();
    let all = series.iter().flat_map(|s| &s.2);
    let (x0, x1) = range(all.clone().map(|p| p.0 as f64));
    let (y0, y1) = range(all.flat_map(|p| [p.2, p.3]));
    let metric = &runs[0].metric;
    let mut chart = frame(
        &root,
        format!("best {metric} so far over seeds"),
        x0.min(0.0)..x1,
        y0..y1,
        "trials",
        metric,
    )?;
    for (i, (name, seeds, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let mut band: Vec<(f64, f64)> = pts.iter().map(|p| (p.0 as f64, p.3)).collect();
        band.extend(pts.iter().rev().map(|p| (p.0 as f64, p.2)));
        chart.draw_series(std::iter::once(Polygon::new(
            band,
            color.mix(0.18).filled(),
        )))?;
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0 as f64, p.1)),
                color.stroke_width(2),
            ))?
            .label(format!("{name} (median of {seeds} seed(s), band: min-max)"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
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

/// Refuse to put runs side by side whose scores were made differently: another metric,
/// sample count, sampler, step count, extractor or trial training.
pub fn check_comparable(runs: &[RunSummary]) -> Result<(), super::SearchError> {
    let first = &runs[0];
    for r in &runs[1..] {
        let same = match (&first.proxy, &r.proxy) {
            (Some(a), Some(b)) => a == b,
            (None, None) => first.metric == r.metric,
            _ => false,
        };
        if !same {
            let what = |x: &RunSummary| {
                x.proxy
                    .as_ref()
                    .map_or_else(|| x.metric.clone(), Proxy::describe)
            };
            return Err(super::SearchError::Setting(format!(
                "{} and {} were scored differently, so their scores do not rank against each \
                 other:\n  {}: {}\n  {}: {}",
                first.dir.display(),
                r.dir.display(),
                first.dir.display(),
                what(first),
                r.dir.display(),
                what(r)
            )));
        }
    }
    Ok(())
}

/// `report.md` and the PNG charts of the search in `dir` (others in `compare` overlaid) into
/// `out`.
/// With `target`, the comparison gives the trials and minutes each run took to reach it.
pub fn write_report(
    dir: &Path,
    compare: &[PathBuf],
    out: &Path,
    target: Option<f64>,
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
    check_comparable(&runs)?;
    let mut warnings = Vec::new();
    std::fs::create_dir_all(out).map_err(|e| super::io_err(out, e))?;
    let mut charts = Vec::new();
    let mut names = vec![
        "best_vs_trials.png",
        "best_vs_time.png",
        "score_vs_macs.png",
    ];
    if runs.len() > 1 {
        names.push("best_vs_trials_over_seeds.png");
    }
    for name in names {
        let p = out.join(name);
        let drawn = match name {
            "best_vs_trials.png" => chart_best_so_far(&runs, &p, false),
            "best_vs_time.png" => chart_best_so_far(&runs, &p, true),
            "best_vs_trials_over_seeds.png" => chart_spread(&runs, &p),
            _ => chart_score_vs_macs(&runs, &p),
        };
        match drawn {
            Ok(()) => charts.push(name.to_string()),
            Err(e) => warnings.push(format!("chart {name} not drawn: {e}")),
        }
    }
    let md = markdown(&runs, &charts, target);
    let path = out.join("report.md");
    crate::train::write_atomic(&path, md.as_bytes()).map_err(|e| super::io_err(&path, e))?;
    Ok(Written {
        markdown: path,
        charts,
        warnings,
    })
}
