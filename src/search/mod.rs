//! Search strategies and what they share: the append-only trial log, the resolved search
//! configuration, and the loop that asks a [`Strategy`] for candidates and an [`Evaluator`]
//! for scores.
//!
//! Resumability: every line of `trials.jsonl` is one finished trial, written and flushed before
//! the next starts. Strategies propose as a pure function of (seed, log so far), so a killed
//! search resumed with `--resume` proposes the same next candidate, and the trial that was
//! running resumes from its own checkpoints. No trial is lost or run twice.

pub mod block;
pub mod config;
pub mod evolution;
pub mod executor;
pub mod fidelity;
pub mod job;
pub mod llm;
pub mod random;
pub mod rank;
pub mod report;
pub mod slurm;

use crate::genome::{Genome, SearchSpace};
use crate::trial::{Evaluator, TrialOutcome, TrialStatus};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

pub const TRIALS_FILE: &str = "trials.jsonl";
pub const CONFIG_FILE: &str = "search.json";
/// The folder of the trials' own folders, one per genome hash.
pub const TRIALS_DIR: &str = "trials";

/// One line of `trials.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    /// 0-based position in the log.
    pub index: usize,
    /// [`Genome::hash`]: the network the trial built (16 hex digits); its folder's name.
    pub hash: String,
    pub strategy: String,
    /// How the candidate came about: `random`, `mutation of <hash>`, `llm round 3`, ...
    pub origin: String,
    pub genome: Genome,
    pub outcome: TrialOutcome,
    /// Search wall-clock seconds (across resumes) when the trial finished.
    pub search_seconds: f64,
    /// Unix time when the trial finished.
    pub finished_unix: u64,
    /// Jobs the trial took, when more than one (a job vanished and it was started again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

impl TrialRecord {
    /// The score if the trial succeeded.
    pub fn score(&self) -> Option<f64> {
        (self.outcome.status == TrialStatus::Ok)
            .then_some(self.outcome.score)
            .flatten()
    }

    /// The trial's folder, relative to the search's: a run directory when the evaluator
    /// trained it.
    pub fn run_dir(&self) -> PathBuf {
        Path::new(TRIALS_DIR).join(&self.hash)
    }

    /// Whether it counts against the trial budget (it was trained or tried to be).
    pub fn counts(&self) -> bool {
        matches!(self.outcome.status, TrialStatus::Ok | TrialStatus::Failed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}:{line}: not a trial record: {message}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Strategy(String),
    /// The data a study or search needs (missing, unreadable, of the wrong shape).
    #[error("{0}")]
    Data(#[from] crate::data::DataError),
    /// A strategy's setting that cannot work.
    #[error("{0}")]
    Setting(String),
    #[error(
        "{dir} already holds a search ({CONFIG_FILE}); continue it with --resume or pick another --run-dir"
    )]
    Exists { dir: PathBuf },
    #[error("{dir}: no {CONFIG_FILE} to resume from")]
    NothingToResume { dir: PathBuf },
    #[error("{dir}: no {TRIALS_FILE} (is it a search run directory?)")]
    NothingToReport { dir: PathBuf },
    #[error(
        "--{} {given} differs from the {stored} in {}, and a resumed search keeps its settings \
         (only --trials and --max-minutes may change)",
        setting.replace('_', "-"),
        path.display()
    )]
    Changed {
        setting: String,
        given: String,
        stored: String,
        path: PathBuf,
    },
    #[error(
        "{} is a `{stored}` search, not `{given}`: resume it with `diffnas search {stored} \
         --resume`",
        path.display()
    )]
    OtherStrategy {
        given: String,
        stored: String,
        path: PathBuf,
    },
    /// A search that ended with no scored trial, and why (see [`unscored_reasons`]).
    #[error(
        "no trial of the search in {} was scored, so there is nothing to report:\n  {}",
        dir.display(),
        reasons.join("\n  ")
    )]
    NothingScored { dir: PathBuf, reasons: Vec<String> },
    /// Another process writes the directory.
    #[error("{0}")]
    Locked(#[from] crate::lock::LockError),
}

impl SearchError {
    /// Whether the user asked for something that cannot be (as opposed to a failure).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            SearchError::Exists { .. }
                | SearchError::NothingToResume { .. }
                | SearchError::NothingToReport { .. }
                | SearchError::Changed { .. }
                | SearchError::OtherStrategy { .. }
                | SearchError::Data(_)
                | SearchError::Corrupt { .. }
                | SearchError::Setting(_)
        ) || matches!(self, SearchError::Locked(l) if l.is_bad_input())
    }
}

pub(crate) fn io_err(path: &Path, e: impl std::fmt::Display) -> SearchError {
    SearchError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// [`crate::train::checkpoint::append_jsonl`], as a search error.
pub fn append_line<T: Serialize>(path: &Path, value: &T) -> Result<(), SearchError> {
    crate::train::checkpoint::append_jsonl(path, value).map_err(|e| io_err(path, e))
}

/// The append-only trial log.
pub struct TrialLog {
    path: PathBuf,
    pub records: Vec<TrialRecord>,
}

impl TrialLog {
    /// Open (or create) `dir/trials.jsonl`. A torn last line, left by a kill during a write,
    /// is dropped (and cut from the file); a bad line anywhere else is an error.
    pub fn open(dir: &Path) -> Result<Self, SearchError> {
        let path = dir.join(TRIALS_FILE);
        let mut records = Vec::new();
        if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
            let lines: Vec<&str> = text.split_inclusive('\n').collect();
            let mut good_len = 0;
            for (i, line) in lines.iter().enumerate() {
                let complete = line.ends_with('\n');
                match serde_json::from_str::<TrialRecord>(line.trim_end()) {
                    Ok(r) if complete => {
                        records.push(r);
                        good_len += line.len();
                    }
                    Err(_) | Ok(_) if i + 1 == lines.len() && !complete => {
                        // torn write: cut it
                        let f = std::fs::OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .map_err(|e| io_err(&path, e))?;
                        f.set_len(good_len as u64).map_err(|e| io_err(&path, e))?;
                    }
                    Err(e) => {
                        return Err(SearchError::Corrupt {
                            path,
                            line: i + 1,
                            message: e.to_string(),
                        });
                    }
                    Ok(_) => unreachable!("complete lines are handled above"),
                }
            }
        }
        Ok(TrialLog { path, records })
    }

    /// Append one record and flush it to disk before returning.
    pub fn append(&mut self, r: TrialRecord) -> Result<(), SearchError> {
        append_line(&self.path, &r)?;
        self.records.push(r);
        Ok(())
    }

    pub fn contains(&self, hash: &str) -> bool {
        self.records.iter().any(|r| r.hash == hash)
    }

    /// Trials that count against the budget.
    pub fn trials(&self) -> usize {
        self.records.iter().filter(|r| r.counts()).count()
    }

    /// The best (lowest-score) successful trial.
    pub fn best(&self) -> Option<&TrialRecord> {
        self.records
            .iter()
            .filter(|r| r.score().is_some())
            .min_by(|a, b| a.score().partial_cmp(&b.score()).expect("finite scores"))
    }
}

/// The network hashes the log holds: each record's stored hash and the hash of its genome
/// (they differ for records written before [`Genome::hash`] named the network that is built;
/// their folders keep the stored name). A candidate whose hash is in it would train a network
/// again.
pub fn seen_hashes(log: &[TrialRecord]) -> std::collections::HashSet<String> {
    log.iter()
        .flat_map(|r| [r.hash.clone(), r.genome.hash()])
        .collect()
}

/// A candidate from a strategy.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub genome: Genome,
    pub origin: String,
}

/// A source of candidates. `propose` must be a pure function of its own configuration (seed
/// included) and `log`, so that a resumed search continues exactly.
pub trait Strategy {
    fn name(&self) -> String;
    /// Whether a batch of proposals must all have ended before the next is asked for (the
    /// LLM's rounds); otherwise a free slot asks at once (random search, and regularized
    /// evolution per completion as published).
    fn synchronous(&self) -> bool {
        false
    }
    fn propose(
        &mut self,
        log: &[TrialRecord],
        space: &SearchSpace,
    ) -> Result<Vec<Proposal>, SearchError>;
}

/// Budgets of a search.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Trials that train (invalid proposals do not count).
    pub max_trials: usize,
    /// Wall-clock seconds across resumes (None: no limit). Checked between trials.
    pub max_seconds: Option<f64>,
    /// Give up after this many proposals in a row that were all duplicates or invalid.
    pub max_stale: usize,
}

/// What happened during a search, for progress output.
pub enum SearchEvent<'a> {
    Started {
        done: usize,
        max_trials: usize,
    },
    TrialStarted {
        index: usize,
        hash: &'a str,
        origin: &'a str,
    },
    TrialDone(&'a TrialRecord),
    Skipped {
        hash: &'a str,
        why: &'a str,
    },
    /// A trial an earlier driver started still runs; this one follows it.
    Adopted {
        hash: &'a str,
        job: &'a str,
    },
    /// A trial's job vanished without an outcome; it was started again.
    Retried {
        hash: &'a str,
        attempt: u32,
        why: &'a str,
    },
}

/// Why a search loop returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SearchStatus {
    Finished,
    TimeUp,
    Exhausted,
    Interrupted,
}

/// Run `strategy` with `evaluator` in `dir` until the limits are reached, one trial at a time
/// in this process ([`run_search_with`] with [`executor::InProcess`] and no trial specs).
pub fn run_search(
    dir: &Path,
    space: &SearchSpace,
    limits: &Limits,
    strategy: &mut dyn Strategy,
    evaluator: &mut dyn Evaluator,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(SearchEvent),
) -> Result<(SearchStatus, TrialLog), SearchError> {
    let mut exec = executor::InProcess::new(evaluator, config::defaults::MAX_ATTEMPTS);
    run_search_with(
        dir, space, limits, strategy, &mut exec, None, stop, on_event,
    )
}

/// A trial started and not logged yet.
struct Pending {
    hash: String,
    origin: String,
    genome: Genome,
    attempt: u32,
    /// Its job's name, once it has one.
    job: Option<String>,
}

impl Pending {
    /// A stand-in log record, so that strategies proposing while it runs neither propose it
    /// again nor draw the same random numbers twice. Never written.
    fn placeholder(&self, index: usize) -> TrialRecord {
        TrialRecord {
            index,
            hash: self.hash.clone(),
            strategy: String::new(),
            origin: self.origin.clone(),
            genome: self.genome.clone(),
            outcome: TrialOutcome::rejected(TrialStatus::Interrupted, "", "running".into()),
            search_seconds: 0.0,
            finished_unix: 0,
            attempts: None,
        }
    }
}

/// A trial an earlier driver dispatched and did not log.
struct Recovered {
    trial: Pending,
    job: String,
    /// Its job stopped at a checkpoint when that search was stopped.
    stopped: bool,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The spec every trial of a search shares: how it is evaluated, and its extractor.
pub type SpecTemplate<'a> = (
    &'a job::Evaluation,
    Option<&'a crate::eval::setup::ExtractorSpec>,
);

/// The driver of a search: asks `strategy` for candidates, hands them to `exec` (as many at
/// once as it has slots; a [`Strategy::synchronous`] strategy's next batch waits for the last
/// one), and is the one writer of `trials.jsonl`. With `spec`, each trial's folder gets its
/// `trial.json`, so that a job anywhere can run it. With an [`executor::Executor::external`]
/// executor, `dispatch.jsonl` records every job. Trials an earlier driver dispatched and did
/// not log are logged from their outcome, followed while their job runs, or started again
/// when it is gone (up to [`executor::Executor::max_attempts`], then logged as failed), before
/// any new candidate.
#[allow(clippy::too_many_arguments)]
pub fn run_search_with(
    dir: &Path,
    space: &SearchSpace,
    limits: &Limits,
    strategy: &mut dyn Strategy,
    exec: &mut dyn executor::Executor,
    spec: Option<SpecTemplate>,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(SearchEvent),
) -> Result<(SearchStatus, TrialLog), SearchError> {
    let _lock = crate::lock::DirLock::take(dir)?;
    let mut d = Driver {
        dir,
        log: TrialLog::open(dir)?,
        t0: Instant::now(),
        base: 0.0,
        stale: 0,
        pending: Vec::new(),
        restart: Default::default(),
        strategy: strategy.name(),
        spec,
    };
    d.base = d.log.records.last().map_or(0.0, |r| r.search_seconds);
    on_event(SearchEvent::Started {
        done: d.log.trials(),
        max_trials: limits.max_trials,
    });
    let mut seen = seen_hashes(&d.log.records);
    d.recover(&mut seen, on_event)?;
    let mut queue: std::collections::VecDeque<Proposal> = Default::default();
    // Why the search has no new candidate, once it has none: the strategy proposed nothing,
    // or too many proposals in a row were duplicates or invalid.
    let mut exhausted = false;
    let mut stopped = false;
    loop {
        // First the trials an earlier driver left, whatever the budget (they count in it).
        while !stop.load(Ordering::SeqCst) && d.pending.len() < exec.slots() {
            let Some(r) = d.restart.pop_front() else {
                break;
            };
            d.resume_one(exec, r, stop, on_event)?;
        }
        // Then new candidates into the free slots.
        let mut wait_first = false;
        while d.restart.is_empty() && !exhausted && !wait_first && d.pending.len() < exec.slots() {
            if d.log.trials() + d.pending.len() >= limits.max_trials
                || limits.max_seconds.is_some_and(|m| d.elapsed() >= m)
                || stop.load(Ordering::SeqCst)
            {
                break;
            }
            let Some(p) = queue.pop_front() else {
                if strategy.synchronous() && !d.pending.is_empty() {
                    break;
                }
                let n = d.log.records.len();
                let mut view = d.log.records.clone();
                view.extend(
                    d.pending
                        .iter()
                        .enumerate()
                        .map(|(i, p)| p.placeholder(n + i)),
                );
                let proposals = strategy.propose(&view, space)?;
                // With trials in flight, nothing new may come until one of them ends.
                match (proposals.is_empty(), d.pending.is_empty()) {
                    (true, true) => exhausted = true,
                    (true, false) => wait_first = true,
                    _ => queue.extend(proposals),
                }
                continue;
            };
            // The search's loss decides whether a network learns its variance, whatever a
            // proposal (an LLM's reply) says.
            let mut p = p;
            p.genome.learn_sigma = space.learn_sigma;
            let hash = p.genome.hash();
            if seen.contains(&hash) {
                if d.pending.iter().any(|x| x.hash == hash) {
                    // The strategy sees the same log until a running trial ends.
                    wait_first = true;
                    continue;
                }
                on_event(SearchEvent::Skipped {
                    hash: &hash,
                    why: "duplicate of an evaluated genome",
                });
                d.stale += 1;
                exhausted = d.stale >= limits.max_stale;
                continue;
            }
            on_event(SearchEvent::TrialStarted {
                index: d.log.records.len() + d.pending.len(),
                hash: &hash,
                origin: &p.origin,
            });
            seen.insert(hash.clone());
            let mut pending = Pending {
                hash,
                origin: p.origin,
                genome: p.genome,
                attempt: 1,
                job: None,
            };
            d.start(exec, &mut pending, stop)?;
            d.pending.push(pending);
        }
        d.flush(exec)?;
        if d.pending.is_empty() && (d.restart.is_empty() || stop.load(Ordering::SeqCst)) {
            // The order of the sequential loop this replaces.
            let status = if stopped {
                SearchStatus::Interrupted
            } else if d.stale >= limits.max_stale {
                SearchStatus::Exhausted
            } else if d.log.trials() >= limits.max_trials {
                SearchStatus::Finished
            } else if limits.max_seconds.is_some_and(|m| d.elapsed() >= m) {
                SearchStatus::TimeUp
            } else if stop.load(Ordering::SeqCst) {
                SearchStatus::Interrupted
            } else {
                SearchStatus::Exhausted
            };
            return Ok((status, d.log));
        }
        for e in exec.wait(stop)? {
            match e {
                executor::Ended::Stopped(h) => {
                    d.stopped(exec, &h)?;
                    stopped = true;
                }
                executor::Ended::Outcome(h, outcome) => d.finish(&h, *outcome, on_event)?,
                executor::Ended::Lost(h, why) if stop.load(Ordering::SeqCst) => {
                    let _ = why;
                    d.stopped(exec, &h)?;
                    stopped = true;
                }
                executor::Ended::Lost(h, why) => d.lost(exec, &h, why, stop, on_event)?,
            }
        }
        exhausted = exhausted || d.stale >= limits.max_stale;
    }
}

/// The state of [`run_search_with`].
struct Driver<'a> {
    dir: &'a Path,
    log: TrialLog,
    t0: Instant,
    /// Search seconds before this run (from the log).
    base: f64,
    stale: usize,
    pending: Vec<Pending>,
    /// Trials an earlier driver dispatched, to follow or start again before new candidates.
    restart: std::collections::VecDeque<Recovered>,
    strategy: String,
    spec: Option<SpecTemplate<'a>>,
}

impl Driver<'_> {
    fn elapsed(&self) -> f64 {
        self.base + self.t0.elapsed().as_secs_f64()
    }

    fn trial_dir(&self, hash: &str) -> PathBuf {
        self.dir.join(TRIALS_DIR).join(hash)
    }

    /// Start `p` (its folder, genome and spec written first), recording the job when it runs
    /// outside this process.
    fn start(
        &mut self,
        exec: &mut dyn executor::Executor,
        p: &mut Pending,
        stop: &AtomicBool,
    ) -> Result<(), SearchError> {
        let tdir = self.trial_dir(&p.hash);
        std::fs::create_dir_all(&tdir).map_err(|e| io_err(&tdir, e))?;
        std::fs::write(tdir.join("genome.json"), p.genome.to_json_pretty())
            .map_err(|e| io_err(&tdir, e))?;
        if let Some((evaluation, extractor)) = self.spec {
            job::TrialSpec {
                genome: p.genome.clone(),
                evaluation: evaluation.clone(),
                extractor: extractor.cloned(),
            }
            .write(&tdir)?;
        }
        let name = exec.start(
            &executor::Job {
                hash: &p.hash,
                dir: &tdir,
                genome: &p.genome,
            },
            stop,
        )?;
        if let Some(name) = name {
            self.dispatched(exec, p, name, false)?;
        }
        Ok(())
    }

    /// Record in `dispatch.jsonl` (for external executors) that `p` went to job `name`, or
    /// that its job stopped at a checkpoint.
    fn dispatched(
        &self,
        exec: &dyn executor::Executor,
        p: &mut Pending,
        name: String,
        stopped: bool,
    ) -> Result<(), SearchError> {
        p.job = Some(name.clone());
        if !exec.external() {
            return Ok(());
        }
        append_line(
            &self.dir.join(executor::DISPATCH_FILE),
            &executor::Dispatch {
                hash: p.hash.clone(),
                origin: p.origin.clone(),
                attempt: p.attempt,
                job: name,
                unix: unix_now(),
                stopped,
            },
        )
    }

    /// [`executor::Executor::flush`], with every submitted job recorded.
    fn flush(&mut self, exec: &mut dyn executor::Executor) -> Result<(), SearchError> {
        for (hash, name) in exec.flush()? {
            if let Some(i) = self.pending.iter().position(|p| p.hash == hash) {
                let mut p = self.pending.remove(i);
                self.dispatched(exec, &mut p, name, false)?;
                self.pending.insert(i, p);
            }
        }
        Ok(())
    }

    /// Pending trial `hash` stopped at a checkpoint: recorded, so that `--resume` starts it
    /// again at the same attempt.
    fn stopped(&mut self, exec: &dyn executor::Executor, hash: &str) -> Result<(), SearchError> {
        let Some(i) = self.pending.iter().position(|p| p.hash == hash) else {
            return Ok(());
        };
        let mut p = self.pending.remove(i);
        let name = p.job.clone().unwrap_or_default();
        self.dispatched(exec, &mut p, name, true)
    }

    /// Log the outcome of pending trial `hash`.
    fn finish(
        &mut self,
        hash: &str,
        outcome: TrialOutcome,
        on_event: &mut dyn FnMut(SearchEvent),
    ) -> Result<(), SearchError> {
        let Some(i) = self.pending.iter().position(|p| p.hash == hash) else {
            return Ok(());
        };
        let p = self.pending.remove(i);
        self.stale = if outcome.status == TrialStatus::Invalid {
            self.stale + 1
        } else {
            0
        };
        let rec = TrialRecord {
            index: self.log.records.len(),
            hash: p.hash.clone(),
            strategy: self.strategy.clone(),
            origin: p.origin,
            genome: p.genome,
            outcome,
            search_seconds: self.elapsed(),
            finished_unix: unix_now(),
            attempts: (p.attempt > 1).then_some(p.attempt),
        };
        let best_before = self.log.best().map(|b| b.hash.clone());
        self.log.append(rec)?;
        // A finished trial keeps its final weights. Its last checkpoint (optimizer state
        // included) stays only while it is the best trial, so that the winner can be trained
        // further with `train --resume --steps N`; the others' go.
        let best_now = self.log.best().map(|b| b.hash.clone());
        for h in [Some(p.hash), best_before] {
            if let Some(h) = h
                && Some(&h) != best_now.as_ref()
            {
                let _ = std::fs::remove_dir_all(self.trial_dir(&h).join("checkpoints"));
            }
        }
        on_event(SearchEvent::TrialDone(
            self.log.records.last().expect("just added"),
        ));
        Ok(())
    }

    /// Log pending trial `hash` as failed, after its attempts.
    fn fail(
        &mut self,
        hash: &str,
        why: &str,
        on_event: &mut dyn FnMut(SearchEvent),
    ) -> Result<(), SearchError> {
        let Some(p) = self.pending.iter().find(|p| p.hash == hash) else {
            return Ok(());
        };
        let mut o = TrialOutcome::rejected(
            TrialStatus::Failed,
            "",
            format!("{why} (after {} attempt(s))", p.attempt),
        );
        if let Ok(c) = crate::genome::cost(&p.genome) {
            o.params = Some(c.params);
            o.macs = Some(c.macs);
        }
        self.finish(hash, o, on_event)
    }

    /// Pending trial `hash` lost its job: start it again, or log it as failed once it has had
    /// all its attempts.
    fn lost(
        &mut self,
        exec: &mut dyn executor::Executor,
        hash: &str,
        why: String,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(SearchEvent),
    ) -> Result<(), SearchError> {
        let Some(i) = self.pending.iter().position(|p| p.hash == hash) else {
            return Ok(());
        };
        // An outcome written after its job was judged gone (a shared file system's caches).
        if let Some(o) = job::read_outcome(&self.trial_dir(hash))? {
            return self.finish(hash, o, on_event);
        }
        if self.pending[i].attempt >= exec.max_attempts() {
            return self.fail(hash, &why, on_event);
        }
        let mut p = self.pending.remove(i);
        p.attempt += 1;
        on_event(SearchEvent::Retried {
            hash,
            attempt: p.attempt,
            why: &why,
        });
        self.start(exec, &mut p, stop)?;
        self.pending.push(p);
        Ok(())
    }

    /// Trials an earlier driver dispatched and did not log: those with an outcome are logged
    /// now, the others queued for [`Driver::resume_one`].
    fn recover(
        &mut self,
        seen: &mut std::collections::HashSet<String>,
        on_event: &mut dyn FnMut(SearchEvent),
    ) -> Result<(), SearchError> {
        let logged = seen_hashes(&self.log.records);
        for dsp in executor::read_dispatches(self.dir)? {
            if logged.contains(&dsp.hash) {
                continue;
            }
            let tdir = self.trial_dir(&dsp.hash);
            let genome = match job::TrialSpec::read(&tdir) {
                Ok(s) => s.genome,
                Err(_) => {
                    let text = std::fs::read_to_string(tdir.join("genome.json"))
                        .map_err(|e| io_err(&tdir, e))?;
                    Genome::from_json(&text).map_err(|e| io_err(&tdir, e))?
                }
            };
            seen.insert(dsp.hash.clone());
            let p = Pending {
                hash: dsp.hash.clone(),
                origin: dsp.origin.clone(),
                genome,
                attempt: dsp.attempt,
                job: Some(dsp.job.clone()),
            };
            if let Some(o) = job::read_outcome(&tdir)? {
                self.pending.push(p);
                self.finish(&dsp.hash, o, on_event)?;
            } else {
                self.restart.push_back(Recovered {
                    trial: p,
                    job: dsp.job,
                    stopped: dsp.stopped,
                });
            }
        }
        Ok(())
    }

    /// A recovered trial, into a free slot: logged if its outcome has come meanwhile, followed
    /// while its job runs, else started again: at the same attempt when it had been stopped,
    /// else with its next one (or logged as failed once it has had them all). A job this
    /// executor cannot follow (a Slurm task, resumed locally) is refused while it may run.
    fn resume_one(
        &mut self,
        exec: &mut dyn executor::Executor,
        r: Recovered,
        stop: &AtomicBool,
        on_event: &mut dyn FnMut(SearchEvent),
    ) -> Result<(), SearchError> {
        let Recovered {
            trial: mut p,
            job: job_name,
            stopped,
        } = r;
        let tdir = self.trial_dir(&p.hash);
        let hash = p.hash.clone();
        if let Some(o) = job::read_outcome(&tdir)? {
            self.pending.push(p);
            return self.finish(&hash, o, on_event);
        }
        match exec.adopt(&hash, &tdir, &job_name) {
            executor::Liveness::Adopted => {
                on_event(SearchEvent::Adopted {
                    hash: &hash,
                    job: &job_name,
                });
                self.pending.push(p);
                return Ok(());
            }
            executor::Liveness::Foreign => {
                return Err(SearchError::Setting(format!(
                    "trial {hash} may still run as {job_name}, which this executor cannot \
                     follow: resume with the executor that started it (e.g. --executor slurm)"
                )));
            }
            executor::Liveness::Gone => {}
        }
        if let Some(o) = job::read_outcome(&tdir)? {
            self.pending.push(p);
            return self.finish(&hash, o, on_event);
        }
        if !stopped {
            let why = format!("its job ({job_name}) is gone");
            if p.attempt >= exec.max_attempts() {
                self.pending.push(p);
                return self.fail(&hash, &why, on_event);
            }
            p.attempt += 1;
            on_event(SearchEvent::Retried {
                hash: &hash,
                attempt: p.attempt,
                why: &why,
            });
        }
        self.start(exec, &mut p, stop)?;
        self.pending.push(p);
        Ok(())
    }
}

/// Why a search has no scored trial, for its error message: the trials that ran and failed
/// (by status, with their distinct reasons) and the candidates rejected before they became
/// trials (by kind), each with how often it happened, most frequent first. Empty when some
/// trial was scored.
pub fn unscored_reasons(records: &[TrialRecord], rejected: &[llm::parse::Rejected]) -> Vec<String> {
    use std::collections::BTreeMap;
    if records.iter().any(|r| r.score().is_some()) {
        return Vec::new();
    }
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut trials: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in records {
        let reason = r.outcome.reason.as_deref().unwrap_or("no reason given");
        let first = reason.lines().next().unwrap_or_default().to_string();
        let status = format!("{:?}", r.outcome.status).to_lowercase();
        *trials.entry((status, first)).or_default() += 1;
    }
    for ((status, reason), n) in trials {
        out.push((n, format!("{n} trial(s) {status}: {reason}")));
    }
    let mut kinds: BTreeMap<llm::parse::RejectKind, (usize, &str)> = BTreeMap::new();
    for r in rejected {
        let e = kinds.entry(r.kind).or_insert((0, r.error.as_str()));
        e.0 += 1;
    }
    for (kind, (n, example)) in kinds {
        out.push((
            n,
            format!(
                "{n} LLM proposal(s) rejected as {} (e.g. {example})",
                kind.describe()
            ),
        ));
    }
    if out.is_empty() {
        out.push((0, "the strategy proposed no candidate".into()));
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.0));
    out.into_iter().map(|(_, s)| s).collect()
}

/// Fails with [`SearchError::NothingScored`] when no trial of the search in `dir` (of
/// `strategy`, whose log is `records`) was scored: the trials' failures and, for the LLM, its
/// rejected proposals, counted by reason.
pub fn check_scored(
    dir: &Path,
    strategy: &config::StrategyConfig,
    records: &[TrialRecord],
) -> Result<(), SearchError> {
    let rejected = match strategy {
        config::StrategyConfig::Llm(..) => llm::rejections(dir)?,
        _ => Vec::new(),
    };
    let reasons = unscored_reasons(records, &rejected);
    if reasons.is_empty() {
        return Ok(());
    }
    Err(SearchError::NothingScored {
        dir: dir.to_path_buf(),
        reasons,
    })
}

/// A seeded RNG for the `k`-th draw of a strategy after `n` log records: resuming replays it.
pub fn strategy_rng(seed: u64, n: usize, k: u64) -> rand::rngs::ChaCha8Rng {
    use rand::SeedableRng;
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(seed ^ 0x5ea4_c400_0000_0000);
    rng.set_stream(((n as u64) << 16) | k);
    rng
}
