//! Search strategies and the trial log, on the stub evaluator (a known function of the genome):
//! evolution beats random at equal budget, a stopped search resumes to exactly the log of an
//! uninterrupted one, duplicates are never evaluated, a torn last line is dropped.

use diffnas::genome::{ImageSpec, SearchSpace};
use diffnas::search::evolution::{Evolution, EvolutionConfig};
use diffnas::search::random::RandomSearch;
use diffnas::search::{Limits, SearchStatus, Strategy, TrialLog, TrialRecord, run_search};
use diffnas::trial::StubEvaluator;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::AtomicBool;

fn space() -> SearchSpace {
    SearchSpace::for_image(ImageSpec {
        channels: 1,
        size: 28,
    })
}

fn limits(n: usize) -> Limits {
    Limits {
        max_trials: n,
        max_seconds: None,
        max_stale: 100,
    }
}

fn search(dir: &Path, strategy: &mut dyn Strategy, n: usize) -> (SearchStatus, Vec<TrialRecord>) {
    let mut ev = StubEvaluator { space: space() };
    let (status, log) = run_search(
        dir,
        &space(),
        &limits(n),
        strategy,
        &mut ev,
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    (status, log.records)
}

fn best(r: &[TrialRecord]) -> f64 {
    r.iter()
        .filter_map(|r| r.score())
        .fold(f64::INFINITY, f64::min)
}

#[test]
fn evolution_beats_random_on_the_stub() {
    let (mut evo_sum, mut rnd_sum, mut wins) = (0.0, 0.0, 0);
    let seeds = 0..6u64;
    for seed in seeds.clone() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let (_, r) = search(d1.path(), &mut RandomSearch::new(seed), 60);
        let mut evo = Evolution::new(seed, EvolutionConfig::default()).unwrap();
        let (_, e) = search(d2.path(), &mut evo, 60);
        assert_eq!(r.iter().filter(|t| t.counts()).count(), 60);
        assert_eq!(e.iter().filter(|t| t.counts()).count(), 60);
        let (br, be) = (best(&r), best(&e));
        eprintln!("seed {seed}: best random {br:.3}, best evolution {be:.3}");
        rnd_sum += br;
        evo_sum += be;
        wins += usize::from(be < br);
    }
    let n = seeds.count() as f64;
    eprintln!(
        "mean best: random {:.3}, evolution {:.3}",
        rnd_sum / n,
        evo_sum / n
    );
    assert!(evo_sum < rnd_sum, "evolution {evo_sum} vs random {rnd_sum}");
    assert!(wins >= 4, "evolution won only {wins} of 6 seeds");
}

#[test]
fn stopped_search_resumes_to_the_same_log() {
    for make in [
        (|| Box::new(RandomSearch::new(3)) as Box<dyn Strategy>) as fn() -> Box<dyn Strategy>,
        || Box::new(Evolution::new(3, EvolutionConfig::default()).unwrap()),
    ] {
        let full = tempfile::tempdir().unwrap();
        let (status, all) = search(full.path(), make().as_mut(), 20);
        assert_eq!(status, SearchStatus::Finished);
        let part = tempfile::tempdir().unwrap();
        let (_, first) = search(part.path(), make().as_mut(), 7);
        assert_eq!(first.len(), 7);
        // A fresh strategy object continues from the log alone.
        let (_, resumed) = search(part.path(), make().as_mut(), 20);
        let strip = |v: &[TrialRecord]| {
            v.iter()
                .map(|r| (r.index, r.hash.clone(), r.origin.clone(), r.outcome.score))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&resumed), strip(&all));
        let hashes: HashSet<_> = resumed.iter().map(|r| &r.hash).collect();
        assert_eq!(hashes.len(), resumed.len(), "a genome was evaluated twice");
        // The file holds exactly the records, in order.
        let reread = TrialLog::open(part.path()).unwrap().records;
        assert_eq!(reread, resumed);
    }
}

#[test]
fn torn_last_line_is_dropped_and_bad_lines_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (_, recs) = search(dir.path(), &mut RandomSearch::new(1), 3);
    let path = dir.path().join("trials.jsonl");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{good}{{\"index\": 3, \"hash\": \"ab")).unwrap();
    let log = TrialLog::open(dir.path()).unwrap();
    assert_eq!(log.records, recs);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        good,
        "the torn line is cut"
    );
    std::fs::write(&path, format!("not json\n{good}")).unwrap();
    let err = TrialLog::open(dir.path()).err().unwrap().to_string();
    assert!(err.contains("trials.jsonl:1"), "{err}");
}

#[test]
fn evolution_knobs_are_checked() {
    let bad = |p, s, c| {
        Evolution::new(
            0,
            EvolutionConfig {
                population: p,
                sample: s,
                crossover: c,
            },
        )
        .is_err()
    };
    assert!(bad(1, 1, 0.0));
    assert!(bad(4, 5, 0.0));
    assert!(bad(4, 0, 0.0));
    assert!(bad(4, 2, 1.5));
    assert!(!bad(4, 2, 0.5));
}

/// Write the first `n_train` / `n_test` images of the real Fashion-MNIST as raw IDX files, so
/// that CLI tests run the real pipeline (classifier, statistics, trials) in seconds.
pub fn small_fashion_mnist(dir: &Path, n_train: usize, n_test: usize) -> Option<String> {
    use diffnas::data::{DataSource, Split};
    let src = crate::data::fashion_dir()?;
    let src = DataSource::FashionMnist(Some(src));
    for (split, prefix, n) in [
        (Split::Train, "train", n_train),
        (Split::Test, "t10k", n_test),
    ] {
        let d = src.load(split).unwrap();
        let mut img = 2051u32.to_be_bytes().to_vec();
        for v in [n as u32, 28, 28] {
            img.extend(v.to_be_bytes());
        }
        img.extend(&d.pixels[..n * 784]);
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), img).unwrap();
        let mut lab = 2049u32.to_be_bytes().to_vec();
        lab.extend((n as u32).to_be_bytes());
        lab.extend(&d.labels.as_ref().unwrap()[..n]);
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), lab).unwrap();
    }
    Some(format!("mnist:{}", dir.display()))
}

/// A real search process killed (SIGKILL) in the middle of a trial's training, then resumed:
/// every trial appears once, the trials finished before the kill are unchanged, and the
/// interrupted trial resumed from its checkpoint.
#[test]
fn killed_search_resumes_with_every_trial_once() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let Some(data) = small_fashion_mnist(&data_dir, 1000, 500) else {
        return;
    };
    let home = work.path().join("home");
    let bin = env!("CARGO_BIN_EXE_diffnas");
    let run = |args: &[&str]| {
        Command::new(bin)
            .args(args)
            .env("DIFFNAS_HOME", &home)
            .env_remove("DIFFNAS_INCEPTION")
            .output()
            .unwrap()
    };
    small_classifier(&home, &data);
    let dir = work.path().join("search");
    let args = [
        "search",
        "evolution",
        "--run-dir",
        dir.to_str().unwrap(),
        "--data",
        &data,
        "--trials",
        "3",
        "--population",
        "2",
        "--sample",
        "2",
        "--trial-steps",
        "40",
        "--trial-batch-size",
        "8",
        "--score-n",
        "40",
        "--score-steps",
        "3",
        "--max-params",
        "400000",
        "--max-macs",
        "60000000",
        "--device",
        "flex",
    ];
    let mut child = Command::new(bin)
        .args(args)
        .env("DIFFNAS_HOME", &home)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until one trial is logged and the next has written a checkpoint, then kill.
    let log = dir.join("trials.jsonl");
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "the search made no progress"
        );
        let logged = std::fs::read_to_string(&log).map_or(0, |s| s.lines().count());
        let ck = std::fs::read_dir(dir.join("trials"))
            .ok()
            .is_some_and(|rd| {
                rd.flatten().any(|e| {
                    e.path().join("checkpoints").join("latest").exists()
                        && !std::fs::read_to_string(&log)
                            .unwrap_or_default()
                            .contains(&*e.file_name().to_string_lossy())
                })
            });
        if logged >= 1 && ck {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = TrialLog::open(&dir).unwrap().records;
    assert!(
        !before.is_empty() && before.len() < 3,
        "{} trials before the kill",
        before.len()
    );
    // Resumed with nothing but --resume and the folder (and the device, as the first run's):
    // the stored search (its data, its budget, its trial schedule), not the flags' defaults.
    let o = run(&[
        "search",
        "evolution",
        "--resume",
        "--run-dir",
        dir.to_str().unwrap(),
        "--device",
        "flex",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{}/3 trials done", before.len())),
        "{err}"
    );
    let after = TrialLog::open(&dir).unwrap().records;
    assert_eq!(after.len(), 3);
    assert_eq!(&after[..before.len()], &before[..]);
    let hashes: HashSet<_> = after.iter().map(|r| &r.hash).collect();
    assert_eq!(hashes.len(), 3);
    for (i, r) in after.iter().enumerate() {
        assert_eq!(r.index, i);
        assert!(r.score().is_some(), "trial {i}: {:?}", r.outcome);
        assert_eq!(r.outcome.metric, "RFD-classifier");
        let p = r
            .outcome
            .proxy
            .as_ref()
            .expect("the record names its proxy");
        assert_eq!(p.label(), "RFD-classifier @ 40 x DDIM-3");
        assert_eq!((p.train_steps, p.batch_size), (40, 8));
    }
    // The search configuration was written before the first trial and still describes it.
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("search.json")).unwrap()).unwrap();
    assert_eq!(cfg["strategy"], "evolution");
    assert_eq!(cfg["trial"]["train"]["steps"], 40);
    assert_eq!(cfg["metric"], "RFD-classifier @ 40 x DDIM-3");
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        report.contains("**RFD-classifier @ 40 x DDIM-3**")
            && report.contains("Proxy: RFD-classifier @ 40 x DDIM-3 after 40 training steps"),
        "{report}"
    );

    // The same search, never interrupted, ends with the same trials and the same scores.
    let whole = work.path().join("whole");
    let mut uninterrupted = args.to_vec();
    uninterrupted[3] = whole.to_str().unwrap();
    let o = run(&uninterrupted);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let same: Vec<_> = TrialLog::open(&whole)
        .unwrap()
        .records
        .into_iter()
        .map(|r| (r.hash.clone(), r.score(), r.outcome.final_loss))
        .collect();
    let resumed: Vec<_> = after
        .iter()
        .map(|r| (r.hash.clone(), r.score(), r.outcome.final_loss))
        .collect();
    assert_eq!(resumed, same, "kill and resume changed the search");

    // Runs scored the same way compare; a run scored with more samples is refused, both
    // proxies named.
    let o = run(&[
        "report",
        dir.to_str().unwrap(),
        "--compare",
        whole.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let other = work.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(whole.join("trials.jsonl"), other.join("trials.jsonl")).unwrap();
    let mut cfg2: serde_json::Value =
        serde_json::from_slice(&std::fs::read(whole.join("search.json")).unwrap()).unwrap();
    cfg2["trial"]["score"]["n"] = 80.into();
    std::fs::write(other.join("search.json"), cfg2.to_string()).unwrap();
    let o = run(&[
        "report",
        dir.to_str().unwrap(),
        "--compare",
        other.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("scored differently")
            && err.contains("RFD-classifier @ 40 x DDIM-3")
            && err.contains("RFD-classifier @ 80 x DDIM-3"),
        "{err}"
    );

    // Every trial folder is a run directory; the best keeps its last checkpoint so that it
    // can be trained further, the others only their weights.
    let best = after
        .iter()
        .min_by(|a, b| a.score().partial_cmp(&b.score()).unwrap())
        .unwrap();
    for r in &after {
        let t = dir.join(r.run_dir());
        assert!(t.join("train.json").is_file() && t.join("ema.bpk").is_file());
        assert_eq!(
            t.join("checkpoints").exists(),
            r.hash == best.hash,
            "trial {}",
            r.hash
        );
    }
    let best_dir = dir.join(best.run_dir());
    let bd = best_dir.to_str().unwrap();
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        report.contains(&format!("Its run directory is `{bd}`")),
        "{report}"
    );
    let grid = work.path().join("best.png");
    let o = run(&[
        "sample",
        bd,
        "--n",
        "4",
        "--steps",
        "3",
        "--device",
        "flex",
        "--out",
        grid.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(grid.is_file());
    let models = work.path().join("models");
    let o = run(&["export", bd, "--out", models.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Trained further and stopped before the new end: the stale final weights are gone, so
    // the run's weights are its newest checkpoint's.
    let further = |extra: &[&str]| {
        let mut args = vec!["train", "--resume", "--run-dir", bd, "--steps", "50"];
        args.extend_from_slice(&["--samples", "0"]);
        args.extend_from_slice(extra);
        run(&args)
    };
    let o = further(&["--stop-at", "45"]);
    assert_eq!(
        o.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!best_dir.join("ema.bpk").exists());
    let o = further(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("resumed at step 45") && err.contains("at step 50 of 50"),
        "{err}"
    );
    assert!(best_dir.join("ema.bpk").is_file());

    // A trial folder of a search made by an older version (no train.json) says what to do.
    let old = after.iter().find(|r| r.hash != best.hash).unwrap();
    let od = dir.join(old.run_dir());
    std::fs::remove_file(od.join("train.json")).unwrap();
    let o = run(&["sample", od.to_str().unwrap(), "--device", "flex"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("made by an older diffnas") && err.contains("diffnas train --genome"),
        "{err}"
    );
}

#[test]
fn report_has_table_pareto_front_and_charts() {
    use diffnas::search::report::{RunSummary, pareto_front};
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let mut evo = Evolution::new(2, EvolutionConfig::default()).unwrap();
    search(a.path(), &mut evo, 25);
    search(b.path(), &mut RandomSearch::new(2), 25);
    let run = RunSummary::load(a.path()).unwrap();
    // The front is non-dominated, and every other scored trial is dominated by a front member.
    let front = pareto_front(&run.records);
    assert!(!front.is_empty());
    for r in run.records.iter().filter(|r| r.score().is_some()) {
        let (s, m) = (r.score().unwrap(), r.outcome.macs.unwrap());
        let on_front = front.iter().any(|f| f.index == r.index);
        let dominated = front.iter().any(|f| {
            let (fs, fm) = (f.score().unwrap(), f.outcome.macs.unwrap());
            fs <= s && fm <= m && (fs < s || fm < m)
        });
        assert!(
            on_front != dominated,
            "trial {} is both or neither",
            r.index
        );
    }
    let bsf = run.best_so_far();
    assert_eq!(bsf.len(), 25);
    assert!(
        bsf.windows(2).all(|w| w[1].2 <= w[0].2),
        "best-so-far never rises"
    );
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_diffnas"))
        .args([
            "report",
            a.path().to_str().unwrap(),
            "--compare",
            b.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(a.path().join("report.md")).unwrap();
    assert!(
        md.contains("## Pareto front")
            && md.contains("## Runs compared")
            && md.contains("## Best genome")
    );
    assert!(md.matches("| `").count() >= 25);
    for png in [
        "best_vs_trials.png",
        "best_vs_time.png",
        "score_vs_macs.png",
    ] {
        let bytes = std::fs::read(a.path().join(png)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{png}");
        assert!(md.contains(png));
    }
}

#[test]
fn spearman_matches_scipy() {
    use diffnas::search::rank::{ranks, spearman};
    assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
    // Values from scipy.stats.spearmanr.
    let r = spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5.0, 6.0, 7.0, 8.0, 7.0]).unwrap();
    assert!((r - 0.8207826816681233).abs() < 1e-12, "{r}");
    let r = spearman(
        &[3.1, 0.2, 5.5, 2.2, 9.0, 4.4],
        &[10.0, 3.0, 30.0, 3.0, 50.0, 20.0],
    )
    .unwrap();
    assert!((r - 0.9856107606091623).abs() < 1e-12, "{r}");
    assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
    assert_eq!(spearman(&[1.0, 2.0], &[5.0, 5.0]), None);
}

/// Real Fashion-MNIST (`fashion-mnist:DIR`) and a `DIFFNAS_HOME` under `work` holding its
/// classifier, trained for one epoch on the first `images` images.
fn home_with_classifier(work: &Path, images: usize) -> (String, std::path::PathBuf) {
    let data = format!(
        "fashion-mnist:{}",
        diffnas::data::DataSource::fashion_mnist_dirs()
            .into_iter()
            .find(|d| d.join("train-images-idx3-ubyte.gz").is_file())
            .expect("Fashion-MNIST (Debian's dataset-fashion-mnist) is installed")
            .display()
    );
    let home = work.join("home");
    let n = images.to_string();
    let o = run_in(
        &home,
        &[
            "eval",
            "train-classifier",
            "--data",
            &data,
            "--epochs",
            "1",
            "--batch-size",
            "50",
            "--max-images",
            &n,
            "--device",
            "flex",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (data, home)
}

/// The binary with `home` as its `DIFFNAS_HOME`.
/// One epoch of the offline classifier on `data`, into `home` (a slice of Fashion-MNIST
/// trains in seconds).
pub fn small_classifier(home: &Path, data: &str) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_diffnas"))
        .args(["eval", "train-classifier", "--data", data, "--epochs", "1"])
        .args(["--batch-size", "50", "--device", "flex"])
        .env("DIFFNAS_HOME", home)
        .env_remove("DIFFNAS_INCEPTION")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn run_in(home: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_diffnas"))
        .args(args)
        .env("DIFFNAS_HOME", home)
        .output()
        .unwrap()
}

/// A study row's values that do not depend on timing: hash, training, held-out loss, scores.
type StudyValues = (
    String,
    String,
    Option<f64>,
    Vec<(String, usize, usize, f64)>,
);

fn study_values(dir: &Path) -> Vec<StudyValues> {
    let mut rows: Vec<_> = diffnas::search::fidelity::read_rows(dir)
        .into_iter()
        .map(|r| {
            let scores = r
                .scores
                .iter()
                .map(|s| (s.metric.clone(), s.n, s.steps, s.value))
                .collect();
            (r.hash, r.training, r.heldout_eps_mse, scores)
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    rows
}

#[test]
fn proxy_study_resumes_after_a_kill_to_the_uninterrupted_result() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let work = tempfile::tempdir().unwrap();
    let (data, home) = home_with_classifier(work.path(), 2000);
    let bin = env!("CARGO_BIN_EXE_diffnas");
    let run = |args: &[&str]| run_in(&home, args);
    let study = |dir: &Path| -> Vec<String> {
        [
            "search",
            "proxy-check",
            "--run-dir",
            dir.to_str().unwrap(),
            "--data",
            &data,
            "--max-images",
            "500",
            "--architectures",
            "3",
            "--full-steps",
            "24",
            "--proxy-steps",
            "6",
            "--proxy-score-n",
            "24",
            "--full-score-n",
            "32",
            "--full-score-steps",
            "4",
            "--batch-size",
            "8",
            "--device",
            "flex",
        ]
        .map(String::from)
        .to_vec()
    };
    let whole = work.path().join("whole");
    let o = run(&study(&whole).iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(whole.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["architectures"], 3);
    let measures = summary["measures"].as_array().unwrap();
    for m in [
        "proxy-6 FD-classifier @ 12 x DDIM-10",
        "proxy-6 KID-classifier @ 24 x DDIM-20",
        "proxy-12 heldout-eps-MSE",
        "proxy-3 TSE",
        "proxy-6-lr2e-4 TSE-late",
    ] {
        assert!(
            measures.iter().any(|x| x["measure"] == m),
            "{m} missing from {measures:?}"
        );
    }
    // The full training's other measures are checks of the truth, not proxies; the ground
    // truth is not ranked against itself.
    let checks = summary["ground_truth_checks"].as_array().unwrap();
    assert!(!measures.iter().any(|x| x["training"] == "full"));
    assert!(
        checks
            .iter()
            .any(|x| x["measure"] == "full FD-classifier @ 16 x DDIM-4")
    );
    assert!(
        !checks
            .iter()
            .any(|x| x["measure"] == "full FD-classifier @ 32 x DDIM-4")
    );
    let csv = std::fs::read_to_string(whole.join("summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), measures.len() + checks.len() + 1);
    // One row per architecture, the ground truth's column first.
    let table = std::fs::read_to_string(whole.join("architectures.csv")).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[0].starts_with("hash,params,macs,full "),
        "{}",
        lines[0]
    );
    assert!(lines[1..].iter().all(|l| !l.contains(",,")), "{table}");
    // The summary alone (no training, no device): the same ranking.
    std::fs::remove_file(whole.join("summary.json")).unwrap();
    let o = run(&[
        "search",
        "proxy-check",
        "--summary",
        "--run-dir",
        whole.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("15/15 trainings done"),
        "{err}"
    );
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(whole.join("summary.json")).unwrap()).unwrap();
    assert_eq!(again["measures"], summary["measures"]);
    // Asked again without --resume: refused; with --resume and another setting: refused.
    let o = run(&study(&whole).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(2));
    let o = run(&[
        "search",
        "proxy-check",
        "--resume",
        "--run-dir",
        whole.to_str().unwrap(),
        "--full-steps",
        "30",
        "--device",
        "flex",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--full-steps"), "{err}");

    // Killed once two trainings are recorded and a third has a checkpoint, then resumed.
    let dir = work.path().join("killed");
    let mut child = Command::new(bin)
        .args(study(&dir))
        .env("DIFFNAS_HOME", &home)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < Duration::from_secs(600), "no progress");
        let rows = diffnas::search::fidelity::read_rows(&dir).len();
        let ck = std::fs::read_dir(dir.join("runs")).ok().is_some_and(|rd| {
            rd.flatten().any(|a| {
                std::fs::read_dir(a.path()).ok().is_some_and(|t| {
                    t.flatten()
                        .any(|u| u.path().join("checkpoints").join("latest").exists())
                })
            })
        });
        if rows >= 2 && ck {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = diffnas::search::fidelity::read_rows(&dir).len();
    assert!(before < 15, "{before} rows before the kill");
    let o = run(&[
        "search",
        "proxy-check",
        "--resume",
        "--run-dir",
        dir.to_str().unwrap(),
        "--device",
        "flex",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("{before}/15 trainings done")),
        "{err}"
    );
    assert_eq!(study_values(&dir), study_values(&whole));
}

#[test]
fn scale_sets_the_defaults_and_a_resume_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_diffnas");
    let run = |d: &Path, extra: &[&str]| {
        let a = ["search", "evolution", "--run-dir", d.to_str().unwrap()];
        let b = ["--evaluator", "stub", "--device", "flex"];
        std::process::Command::new(bin)
            .args([&a[..], &b[..], extra].concat())
            .output()
            .unwrap()
    };
    let config = |d: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(d.join("search.json")).unwrap()).unwrap()
    };
    // flex is a CPU: `auto` means `small`.
    let small = dir.path().join("small");
    let o = run(&small, &["--trials", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = config(&small);
    assert_eq!(c["space"]["budget"]["max_macs"], 40_000_000);
    assert_eq!(c["space"]["budget"]["max_params"], 1_000_000);
    assert_eq!(c["trial"]["train"]["steps"], 400);
    assert_eq!(c["trial"]["train"]["lr"], 0.001);
    assert_eq!(c["trial"]["score"]["n"], 250);
    assert_eq!(c["trial"]["score"]["steps"], 10);
    assert_eq!(c["evolution"]["population"], 4);
    // Trials override dropout, so the search does not vary it.
    assert_eq!(c["space"]["dropouts"], serde_json::json!([0.0]));
    assert_eq!(c["evolution"]["sample"], 2);
    // `standard`, with one value given on its own.
    let standard = dir.path().join("standard");
    let o = run(
        &standard,
        &[
            "--scale",
            "standard",
            "--max-macs",
            "90000000",
            "--sample",
            "5",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = config(&standard);
    assert_eq!(c["space"]["budget"]["max_macs"], 90_000_000);
    assert_eq!(c["space"]["budget"]["max_params"], 4_000_000);
    assert_eq!(c["trial"]["train"]["steps"], 300);
    assert_eq!(c["limits"]["max_trials"], 24);
    assert_eq!(c["evolution"]["population"], 8);
    assert_eq!(c["evolution"]["sample"], 5);
    // A resume may repeat a setting but not change it; --trials may grow.
    let o = run(&small, &["--resume", "--max-macs", "5"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--max-macs 5 differs from the 40000000"),
        "{err}"
    );
    let o = run(
        &small,
        &["--resume", "--max-macs", "40000000", "--trials", "3"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(TrialLog::open(&small).unwrap().records.len(), 3);
}

/// Rejection sampling must still find genomes when the budget admits only a small corner of
/// the space (the `--scale small` budget at 28x28).
#[test]
fn random_search_finds_genomes_in_a_tight_budget() {
    use diffnas::genome::Budget;
    use rand::SeedableRng;
    let space = SearchSpace::for_image(ImageSpec {
        channels: 1,
        size: 28,
    })
    .with_budget(Budget {
        max_params: Some(1_000_000),
        max_macs: Some(40_000_000),
        min_params: None,
    });
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(1);
    let draws = 20_000;
    let accepted = (0..draws)
        .filter(|_| space.random(&mut rng, 1).is_some())
        .count();
    eprintln!("acceptance: {accepted} of {draws}");
    assert!(
        accepted > 0 && accepted < draws / 20,
        "{accepted} of {draws}"
    );
    for seed in 0..30 {
        let p = RandomSearch::new(seed).propose(&[], &space).unwrap();
        assert_eq!(p.len(), 1);
        space.validate(&p[0].genome).unwrap();
    }
}

/// The search configuration as library calls: the scale's defaults, the file's layout, and the
/// resume check (only the budget may change; a given setting must match the stored one).
#[test]
fn search_config_resume_check() {
    use diffnas::data::DataSource;
    use diffnas::genome::ImageSpec;
    use diffnas::search::SearchError;
    use diffnas::search::config::{
        EvaluatorKind, Scale, SearchConfig, SearchRequest, StrategyChoice, StrategyConfig,
    };
    let cpu = diffnas::device::flex().info;
    let request = SearchRequest {
        strategy: StrategyChoice::Evolution {
            population: None,
            sample: Some(3),
            crossover: 0.0,
        },
        scale: Scale::Auto,
        seed: 4,
        data: DataSource::FashionMnist(None),
        max_images: None,
        evaluator: EvaluatorKind::Stub,
        trials: None,
        max_minutes: None,
        max_params: None,
        max_macs: Some(30_000_000),
        trial_steps: None,
        trial_batch_size: 16,
        trial_lr: None,
        score_n: None,
        score_steps: None,
        loss: None,
        precision: diffnas::precision::Precision::F32,
    };
    let image = ImageSpec {
        channels: 1,
        size: 28,
    };
    let cfg = SearchConfig::new(&request, image, &cpu);
    // `auto` on a CPU is the small scale; given settings win over it.
    let small = Scale::Small.defaults(&cpu);
    assert_eq!(cfg.limits.max_trials, small.trials);
    assert_eq!(cfg.trial.train.steps, small.trial_steps);
    assert_eq!(cfg.space.budget.max_macs, Some(30_000_000));
    assert_eq!(cfg.trial.train.batch_size, 16);
    assert_eq!(
        cfg.strategy,
        StrategyConfig::Evolution(diffnas::search::evolution::EvolutionConfig {
            population: small.population,
            sample: 3,
            crossover: 0.0,
        })
    );

    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    assert!(matches!(
        SearchConfig::read(dir),
        Err(SearchError::NothingToResume { .. })
    ));
    SearchConfig::check_fresh(dir).unwrap();
    cfg.write(dir).unwrap();
    let e = SearchConfig::check_fresh(dir).unwrap_err();
    assert!(matches!(e, SearchError::Exists { .. }) && e.is_bad_input());
    // The file keeps the layout every version reads: the strategy's name and its section.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("search.json")).unwrap()).unwrap();
    assert_eq!(json["strategy"], "evolution");
    assert_eq!(json["evolution"]["sample"], 3);
    assert_eq!(SearchConfig::read(dir).unwrap(), cfg);

    // Resumed with another budget: taken. With a changed setting not given: the stored one.
    let mut more = request.clone();
    more.trials = Some(20);
    more.trial_steps = Some(999);
    let resumed = SearchConfig::resume(dir, &more, &[], &cpu).unwrap();
    assert_eq!(resumed.limits.max_trials, 20);
    assert_eq!(resumed.trial.train.steps, cfg.trial.train.steps);
    // Given and equal: fine. Given and different: refused, naming both values and the file.
    let same = SearchConfig::resume(dir, &request, &["seed", "max_macs"], &cpu).unwrap();
    assert_eq!(same, cfg);
    let e = SearchConfig::resume(dir, &more, &["trial_steps"], &cpu).unwrap_err();
    let msg = e.to_string();
    assert!(e.is_bad_input(), "{msg}");
    assert!(
        msg.contains(&format!(
            "--trial-steps 999 differs from the {}",
            small.trial_steps
        )) && msg.contains("search.json"),
        "{msg}"
    );
    let mut bigger = request.clone();
    bigger.strategy = StrategyChoice::Evolution {
        population: Some(9),
        sample: Some(3),
        crossover: 0.0,
    };
    let e = SearchConfig::resume(dir, &bigger, &["population"], &cpu).unwrap_err();
    assert!(
        e.to_string().contains(&format!(
            "--population 9 differs from the {}",
            small.population
        )),
        "{e}"
    );
    let mut other = request.clone();
    other.strategy = StrategyChoice::Random;
    let e = SearchConfig::resume(dir, &other, &[], &cpu).unwrap_err();
    assert!(
        e.to_string().contains(
            "is a `evolution` search, not `random`: resume it with `diffnas search \
             evolution --resume`"
        ),
        "{e}"
    );
    // A search.json whose strategy name lacks its section (or has another's) is refused.
    let p = dir.join("search.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    v["strategy"] = "random".into();
    std::fs::write(&p, v.to_string()).unwrap();
    let e = SearchConfig::read(dir).unwrap_err();
    assert!(
        e.to_string()
            .contains("strategy \"random\" needs no strategy section, and the file has evolution"),
        "{e}"
    );
    v["strategy"] = "annealing".into();
    std::fs::write(&p, v.to_string()).unwrap();
    let e = SearchConfig::read(dir).unwrap_err();
    assert!(
        e.to_string().contains("unknown strategy \"annealing\""),
        "{e}"
    );

    // --loss hybrid: every genome of the space learns its variance and every trial trains
    // with L_hybrid; a resume may not change the loss.
    use diffnas::diffusion::LossKind;
    use rand::SeedableRng;
    let hybrid = SearchRequest {
        loss: Some(LossKind::Hybrid),
        ..request.clone()
    };
    let h = SearchConfig::new(&hybrid, image, &cpu);
    assert!(h.space.learn_sigma);
    assert_eq!(h.trial.train.loss_kind(), LossKind::Hybrid);
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(3);
    let mut unbounded = h.space.clone();
    unbounded.budget = Default::default();
    let g = unbounded.random(&mut rng, 1000).unwrap();
    assert!(g.learn_sigma);
    unbounded.validate(&g).unwrap();
    assert!(!cfg.space.learn_sigma && cfg.trial.train.loss_kind() == LossKind::Simple);
    let hdir = work.path().join("hybrid");
    h.write(&hdir).unwrap();
    let e = SearchConfig::resume(&hdir, &request, &["loss"], &cpu).unwrap_err();
    assert!(e.to_string().contains("loss"), "{e}");

    // --precision reaches the trials' training and scoring, is written only when not f32 (an
    // f32 search.json reads as before), and a resume may not change it.
    use diffnas::precision::Precision;
    assert_eq!(cfg.trial.train.precision, None);
    let half = SearchRequest {
        precision: Precision::F16,
        ..request.clone()
    };
    let f = SearchConfig::new(&half, image, &cpu);
    assert_eq!(f.trial.train.precision(), Precision::F16);
    assert_eq!(f.trial.score.precision, Precision::F16);
    let fdir = work.path().join("f16");
    f.write(&fdir).unwrap();
    let e = SearchConfig::resume(&fdir, &request, &["precision"], &cpu).unwrap_err();
    assert!(
        e.to_string().contains("precision") && e.to_string().contains("f16"),
        "{e}"
    );
    SearchConfig::resume(&fdir, &half, &["precision"], &cpu).unwrap();
}

/// `SearchConfig::prepare` as a library call: a fresh search takes the data's image shape and
/// cuts the data to `max_images`; non-square images are refused; a resumed search loads the
/// stored data, not the request's.
#[test]
fn search_config_prepare_loads_the_data() {
    use diffnas::data::DataSource;
    use diffnas::search::SearchError;
    use diffnas::search::config::{Scale, SearchConfig, SearchRequest, StrategyChoice};
    let cpu = diffnas::device::flex().info;
    let work = tempfile::tempdir().unwrap();
    let folder = |name: &str, w: u32, h: u32| {
        let d = work.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..5u32 {
            image::GrayImage::from_fn(w, h, |x, y| {
                image::Luma([((x * 7 + y + i * 40) % 256) as u8])
            })
            .save(d.join(format!("{i}.png")))
            .unwrap();
        }
        DataSource::Folder(d)
    };
    let (square, wide) = (folder("square", 16, 16), folder("wide", 16, 12));
    let mut request = SearchRequest::defaults(Scale::Small, square.clone());
    request.strategy = StrategyChoice::Random;
    request.max_images = Some(3);
    let dir = work.path().join("search");
    let (cfg, data) = SearchConfig::prepare(&dir, &request, false, &[], &cpu).unwrap();
    assert_eq!((cfg.space.image.channels, cfg.space.image.size), (1, 16));
    assert_eq!(data.len, 3);
    cfg.write(&dir).unwrap();
    // A resumed search keeps its data whatever the request says.
    let mut other = request.clone();
    other.data = wide.clone();
    let (resumed, data) = SearchConfig::prepare(&dir, &other, true, &[], &cpu).unwrap();
    assert_eq!((resumed.data.clone(), data.len), (square, 3));
    let e = SearchConfig::prepare(&dir, &other, true, &["data"], &cpu).unwrap_err();
    assert!(e.is_bad_input() && e.to_string().contains("--data"), "{e}");
    // Fresh: a folder that holds a search, and non-square images, are refused.
    let e = SearchConfig::prepare(&dir, &request, false, &[], &cpu).unwrap_err();
    assert!(matches!(e, SearchError::Exists { .. }), "{e}");
    let e = SearchConfig::prepare(&work.path().join("w"), &other, false, &[], &cpu).unwrap_err();
    assert!(e.is_bad_input(), "{e}");
    assert!(
        e.to_string()
            .contains("images are 12x16; the search space needs square images"),
        "{e}"
    );
}

#[test]
fn kendall_and_the_bootstrap_interval() {
    use diffnas::search::rank::{bootstrap_interval, kendall_tau, spearman};
    // scipy.stats.kendalltau (tau-b).
    let t = kendall_tau(&[1.0, 2.0, 3.0, 4.0, 5.0], &[3.0, 1.0, 2.0, 5.0, 4.0]).unwrap();
    assert!((t - 0.4).abs() < 1e-12, "{t}");
    let t = kendall_tau(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]).unwrap();
    assert!((t - 0.9128709291752769).abs() < 1e-12, "{t}");
    assert_eq!(kendall_tau(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
    assert_eq!(kendall_tau(&[1.0, 2.0], &[5.0, 5.0]), None);
    let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
    let b = [2.0, 1.0, 4.0, 3.0, 6.0, 5.0, 8.0, 7.0, 10.0, 9.0];
    let rho = spearman(&a, &b).unwrap();
    let (lo, hi) = bootstrap_interval(&a, &b, 1000, 0.9, 0).unwrap();
    assert!(
        lo <= rho && rho <= hi && lo > 0.5 && hi <= 1.0,
        "{lo} {rho} {hi}"
    );
    assert_eq!(bootstrap_interval(&a, &b, 1000, 0.9, 0), Some((lo, hi)));
    // A perfect ranking stays perfect in every resample.
    assert_eq!(bootstrap_interval(&a, &a, 200, 0.9, 1), Some((1.0, 1.0)));
    assert_eq!(bootstrap_interval(&a[..2], &b[..2], 200, 0.9, 1), None);
}

#[test]
fn a_log_written_before_canonical_hashes_resumes_without_training_twice() {
    use diffnas::search::seen_hashes;
    let dir = tempfile::tempdir().unwrap();
    // The first trial of a random search, as an older version logged it: under a hash of
    // the old scheme (its folder's name).
    let (_, first) = search(dir.path(), &mut RandomSearch::new(4), 1);
    let mut old = first[0].clone();
    old.hash = "00000000000000ab".into();
    let text = serde_json::to_string(&old).unwrap() + "\n";
    let fresh = tempfile::tempdir().unwrap();
    std::fs::write(fresh.path().join("trials.jsonl"), text).unwrap();
    let log = TrialLog::open(fresh.path()).unwrap();
    assert_eq!(log.records[0].hash, "00000000000000ab");
    assert_eq!(
        log.records[0].run_dir(),
        Path::new("trials").join("00000000000000ab"),
        "its folder keeps the stored name"
    );
    let seen = seen_hashes(&log.records);
    assert!(seen.contains("00000000000000ab") && seen.contains(&old.genome.hash()));
    // Resumed to 6 trials: the old record stays first, and no network trains twice.
    let (_, all) = search(fresh.path(), &mut RandomSearch::new(4), 6);
    assert_eq!(all.len(), 6);
    assert_eq!(all[0], old);
    let networks: HashSet<String> = all.iter().map(|r| r.genome.hash()).collect();
    assert_eq!(networks.len(), 6);
}

#[test]
fn compare_over_seeds_gives_the_spread_and_the_trials_to_reach_a_score() {
    use diffnas::search::report::{RunSummary, by_strategy, spread};
    let root = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    for seed in 0..3 {
        let e = root.path().join(format!("evolution-{seed}"));
        let mut evo = Evolution::new(seed, EvolutionConfig::default()).unwrap();
        search(&e, &mut evo, 20);
        std::fs::write(e.join("search.json"), r#"{"strategy": "evolution"}"#).unwrap();
        let r = root.path().join(format!("random-{seed}"));
        search(&r, &mut RandomSearch::new(seed), 20);
        std::fs::write(r.join("search.json"), r#"{"strategy": "random"}"#).unwrap();
        dirs.extend([e, r]);
    }
    let runs: Vec<RunSummary> = dirs.iter().map(|d| RunSummary::load(d).unwrap()).collect();
    let groups = by_strategy(&runs);
    assert_eq!(
        groups
            .iter()
            .map(|g| (g.0.as_str(), g.1.len()))
            .collect::<Vec<_>>(),
        [("evolution", 3), ("random", 3)]
    );
    // The spread at trial t is the median, min and max of the seeds' best after t trials.
    let s = spread(&groups[1].1);
    assert_eq!(s.len(), 20);
    for &(t, med, lo, hi) in &s {
        let mut v: Vec<f64> = groups[1]
            .1
            .iter()
            .map(|r| r.best_after(t).unwrap())
            .collect();
        v.sort_by(f64::total_cmp);
        assert_eq!((lo, med, hi), (v[0], v[1], v[2]), "trial {t}");
    }
    // The score every seed of both reaches; the trials to reach it, per seed.
    let target = runs
        .iter()
        .map(|r| r.best_so_far().last().unwrap().2)
        .fold(f64::NEG_INFINITY, f64::max);
    let per_seed: Vec<String> = groups[0]
        .1
        .iter()
        .map(|r| r.reached(target).unwrap().0.to_string())
        .collect();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_diffnas"))
        .arg("report")
        .arg(&dirs[0])
        .args(
            dirs[1..]
                .iter()
                .flat_map(|d| [std::ffi::OsStr::new("--compare"), d.as_os_str()]),
        )
        .args(["--target", &target.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(dirs[0].join("report.md")).unwrap();
    assert!(md.contains("## Strategies over seeds"), "{md}");
    let row = md
        .lines()
        .find(|l| l.starts_with("| evolution | 3 |"))
        .unwrap_or_else(|| panic!("{md}"));
    assert!(row.contains(&format!("({})", per_seed.join(", "))), "{row}");
    let png = std::fs::read(dirs[0].join("best_vs_trials_over_seeds.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn the_winner_is_retrained_beside_a_baseline() {
    let work = tempfile::tempdir().unwrap();
    let (data, home) = home_with_classifier(work.path(), 1000);
    let run = |args: &[&str]| run_in(&home, args);
    let s = work.path().join("s");
    let sd = s.to_str().unwrap();
    let o = run(&[
        "search",
        "random",
        "--evaluator",
        "stub",
        "--trials",
        "3",
        "--scale",
        "small",
        "--data",
        &data,
        "--max-images",
        "500",
        "--run-dir",
        sd,
        "--device",
        "flex",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let best = TrialLog::open(&s).unwrap().best().unwrap().clone();
    let retrain = |extra: &[&str]| {
        let mut a = vec!["search", "retrain", sd, "--device", "flex"];
        a.extend_from_slice(extra);
        run(&a)
    };
    let o = retrain(&["--steps", "8", "--score-n", "16", "--score-steps", "2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let rows: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.join("retrain/retrain.json")).unwrap()).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["hash"], best.genome.hash());
    assert_eq!(rows[1]["name"], "tiny");
    let tiny = diffnas::genome::cost(&diffnas::genome::Genome::tiny()).unwrap();
    assert_eq!(rows[1]["macs"], tiny.macs);
    for r in rows {
        assert!(r["score"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["metric"], "FD-classifier @ 16 x DDIM-2");
        // Each retrained model is a run directory.
        let d = r["run_dir"].as_str().unwrap();
        let o = run(&["sample", d, "--n", "2", "--steps", "2", "--device", "flex"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let md = std::fs::read_to_string(s.join("retrain/retrain.md")).unwrap();
    assert!(
        md.contains("| tiny | `") && md.contains("8 steps of batch 32"),
        "{md}"
    );
    // Asked again: it says to resume; resumed, nothing is retrained.
    assert_eq!(retrain(&[]).status.code(), Some(2));
    let o = retrain(&["--resume"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("2/2 trainings done"),
        "{err}"
    );
}

/// A trial as a job: `trial.json` round-trips; `diffnas trial run` writes `outcome.json` for a
/// good trial and for one that fails (an invalid genome is an outcome with its reason), and a
/// second run returns the stored outcome; a folder without a spec is a clear error.
#[test]
fn a_trial_runs_as_a_job_from_its_spec() {
    use diffnas::search::config::EvaluatorKind;
    use diffnas::search::job::{Evaluation, OUTCOME_FILE, TrialSpec, read_outcome};
    use diffnas::trial::{TrialConfig, TrialStatus};
    let work = tempfile::tempdir().unwrap();
    let evaluation = Evaluation {
        evaluator: EvaluatorKind::Stub,
        space: space(),
        trial: TrialConfig::rapid(10, 4),
        data: diffnas::data::DataSource::FashionMnist(None),
        max_images: Some(10),
        scored_with: None,
    };
    let mut rng = diffnas::search::strategy_rng(3, 0, 0);
    let genome = space().random(&mut rng, 100).unwrap();
    let spec = TrialSpec {
        genome: genome.clone(),
        evaluation: evaluation.clone(),
        extractor: None,
    };
    let good = work.path().join("good");
    spec.write(&good).unwrap();
    assert_eq!(TrialSpec::read(&good).unwrap(), spec);
    let o = run_in(
        work.path(),
        &["trial", "run", good.to_str().unwrap(), "--device", "flex"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let outcome = read_outcome(&good).unwrap().expect("outcome.json written");
    assert_eq!(outcome.status, TrialStatus::Ok);
    assert_eq!(outcome.score, Some(StubEvaluator::score(&genome)));
    let o = run_in(
        work.path(),
        &["trial", "run", good.to_str().unwrap(), "--device", "flex"],
    );
    assert!(o.status.success());
    assert_eq!(read_outcome(&good).unwrap().unwrap(), outcome);

    let mut bad = genome.clone();
    bad.base_channels = 7;
    let failing = work.path().join("bad");
    TrialSpec {
        genome: bad,
        evaluation,
        extractor: None,
    }
    .write(&failing)
    .unwrap();
    let o = run_in(
        work.path(),
        &[
            "trial",
            "run",
            failing.to_str().unwrap(),
            "--device",
            "flex",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let outcome = read_outcome(&failing).unwrap().unwrap();
    assert_eq!(outcome.status, TrialStatus::Invalid);
    assert!(outcome.reason.unwrap().contains("base_channels"));

    let empty = work.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = run_in(
        work.path(),
        &["trial", "run", empty.to_str().unwrap(), "--device", "flex"],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("trial.json") && err.contains("a search's trial folder"),
        "{err}"
    );
    assert!(!empty.join(OUTCOME_FILE).exists());
}

/// `--parallel 2`: two trial processes at a time. One is SIGKILLed mid-trial (the driver
/// starts it again, its record counts 2 attempts), then the driver itself is SIGKILLed with
/// trials in flight (they run on) and resumed: every trial is logged exactly once and scored,
/// and `dispatch.jsonl` holds every job with its attempt.
#[test]
fn a_parallel_search_survives_a_killed_trial_and_a_killed_driver() {
    use diffnas::search::executor::read_dispatches;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let data = small_fashion_mnist(&data_dir, 600, 100).expect("Fashion-MNIST");
    let home = work.path().join("home");
    small_classifier(&home, &data);
    let dir = work.path().join("search");
    let d = dir.to_str().unwrap();
    let args = [
        "search",
        "random",
        "--run-dir",
        d,
        "--data",
        &data,
        "--trials",
        "5",
        "--parallel",
        "2",
        "--trial-steps",
        "60",
        "--trial-batch-size",
        "8",
        "--score-n",
        "20",
        "--score-steps",
        "2",
        "--max-params",
        "300000",
        "--max-macs",
        "40000000",
        "--device",
        "flex",
    ];
    let spawn = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_diffnas"))
            .args(args)
            .env("DIFFNAS_HOME", &home)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let logged = || TrialLog::open(&dir).map_or(0, |l| l.records.len());
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let t0 = Instant::now();
        while !done() {
            assert!(
                t0.elapsed() < Duration::from_secs(600),
                "waited too long for {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let pid_of = |job: &str| -> i32 { job.split_whitespace().nth(1).unwrap().parse().unwrap() };
    let mut driver = spawn(&args);
    // Two trials in flight, one of them past its first checkpoint: kill that one's process.
    let running = || {
        let logged: HashSet<String> = TrialLog::open(&dir)
            .map(|l| l.records.into_iter().map(|r| r.hash).collect())
            .unwrap_or_default();
        read_dispatches(&dir)
            .unwrap()
            .into_iter()
            .filter(|x| !logged.contains(&x.hash))
            .collect::<Vec<_>>()
    };
    wait_for("a checkpointed trial", &|| {
        running().iter().any(|x| {
            dir.join("trials")
                .join(&x.hash)
                .join("checkpoints/latest")
                .exists()
        })
    });
    let victim = running()
        .into_iter()
        .find(|x| {
            dir.join("trials")
                .join(&x.hash)
                .join("checkpoints/latest")
                .exists()
        })
        .unwrap();
    // SAFETY: a signal to a process this test's search started.
    unsafe { libc::kill(pid_of(&victim.job), libc::SIGKILL) };
    wait_for("the killed trial's second attempt", &|| {
        read_dispatches(&dir)
            .unwrap()
            .iter()
            .any(|x| x.hash == victim.hash && x.attempt == 2)
    });
    // The driver goes, with trials in flight.
    wait_for("trials in flight", &|| !running().is_empty());
    driver.kill().unwrap();
    driver.wait().unwrap();
    let before = logged();
    assert!(
        before < 5,
        "{before} trials logged before the driver was killed"
    );

    let resume = [
        "search",
        "random",
        "--resume",
        "--run-dir",
        d,
        "--parallel",
        "2",
    ];
    // Resumed, it follows the trials still running; then Ctrl-C (SIGINT to the search only):
    // every running trial stops at a checkpoint, recorded as stopped, and the search exits 130.
    let mut driver = spawn(&[&resume[..], &["--device", "flex"]].concat());
    wait_for("a trial running under the resumed search", &|| {
        logged() > before || !running().is_empty()
    });
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: a signal to the search process this test started.
    unsafe { libc::kill(driver.id() as i32, libc::SIGINT) };
    let status = driver.wait().unwrap();
    let stopped: Vec<_> = read_dispatches(&dir)
        .unwrap()
        .into_iter()
        .filter(|x| x.stopped)
        .collect();
    if status.code() == Some(130) {
        assert!(
            !stopped.is_empty(),
            "a stopped search recorded no stopped trial"
        );
    } else {
        // The search ended before the signal reached it.
        assert!(status.success(), "{status:?}");
    }
    let o = run_in(&home, &[&resume[..], &["--device", "flex"]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let records = TrialLog::open(&dir).unwrap().records;
    // A stopped trial starts again at the attempt it had: stopping is not a failure.
    for x in &stopped {
        let r = records.iter().find(|r| r.hash == x.hash).unwrap();
        assert_eq!(r.attempts.unwrap_or(1), x.attempt, "{}", x.hash);
    }
    assert_eq!(records.len(), 5);
    let hashes: HashSet<_> = records.iter().map(|r| r.hash.clone()).collect();
    assert_eq!(hashes.len(), 5, "a trial was logged twice");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.index, i);
        assert!(r.score().is_some(), "trial {i}: {:?}", r.outcome);
    }
    let killed = records.iter().find(|r| r.hash == victim.hash).unwrap();
    assert!(killed.attempts >= Some(2), "{:?}", killed.attempts);
    let dispatched = read_dispatches(&dir).unwrap();
    assert_eq!(
        dispatched
            .iter()
            .map(|x| x.hash.clone())
            .collect::<HashSet<_>>(),
        hashes
    );
    for r in &records {
        let x = dispatched.iter().find(|x| x.hash == r.hash).unwrap();
        assert_eq!(Some(x.attempt).filter(|&a| a > 1), r.attempts, "{}", r.hash);
        assert!(
            dir.join("trials")
                .join(&r.hash)
                .join("outcome.json")
                .is_file()
        );
    }
}

/// Under Slurm, `--device auto` takes the GPU the job was given: the only hardware adapter a
/// constrained job sees, else the one of that index on the first graphics API listing one.
/// `--slurm-args` splits like a shell.
#[test]
fn slurm_gpu_maps_to_an_adapter_and_sbatch_args_split() {
    use diffnas::device::{DeviceInfo, slurm_adapter};
    use diffnas::search::config::shell_words;
    let a = |name: &str, api: &str, kind: &str| DeviceInfo {
        backend: "wgpu".into(),
        name: name.into(),
        api: Some(api.into()),
        device_type: kind.into(),
        driver: None,
    };
    let list = vec![
        a("llvmpipe", "Vulkan", "Cpu"),
        a("gpu0", "Vulkan", "DiscreteGpu"),
        a("gpu1", "Vulkan", "DiscreteGpu"),
        a("gpu0", "Gl", "DiscreteGpu"),
    ];
    assert_eq!(slurm_adapter(&list, "1"), Some(2));
    assert_eq!(slurm_adapter(&list, "0,1"), Some(1));
    assert_eq!(slurm_adapter(&list, "5"), None);
    assert_eq!(slurm_adapter(&list, ""), None);
    // A job constrained to its GPU sees one, whatever its index on the node.
    assert_eq!(slurm_adapter(&list[..2], "3"), Some(1));
    assert_eq!(slurm_adapter(&list[..1], "0"), None);
    assert_eq!(
        shell_words(r#"--partition gpu  --gres=gpu:1 --comment "two words" -J 'a b' ''"#),
        [
            "--partition",
            "gpu",
            "--gres=gpu:1",
            "--comment",
            "two words",
            "-J",
            "a b",
            ""
        ]
    );
}
