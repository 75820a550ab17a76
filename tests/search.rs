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
