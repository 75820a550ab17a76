//! Where a search's trials run. The driver ([`super::run_search_with`]) is the one writer of
//! `trials.jsonl`; an executor starts trials and says when they end.
//!
//! - [`InProcess`]: one trial at a time in this process, with the driver's evaluator (the
//!   default, and bit-reproducible: strategies see the same log in the same order every run).
//! - [`Processes`]: one child process (`diffnas trial run DIR --device D`) per slot, e.g. one
//!   per GPU. Trials end in the order they finish, so which trial sees which log depends on
//!   timing: a parallel search is resumable and loses or repeats no trial, but it is not
//!   reproducible run to run.
//!
//! Executors whose trials run outside this process are [`Executor::external`]: the driver
//! records in `dispatch.jsonl` which trial went to which job and attempt, so that a driver
//! that was killed (its jobs run on) picks their outcomes up on `--resume`, waits for live
//! ones and starts dead ones again.

use super::job::{self, OUTCOME_FILE};
use super::{SearchError, io_err};
use crate::genome::Genome;
use crate::trial::{Evaluator, TrialOutcome, TrialStatus};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub const DISPATCH_FILE: &str = "dispatch.jsonl";

/// Where a search's trials are to run, as asked (`--executor`, `--parallel`, `--devices`,
/// `--device`, `--slurm-args`, `--max-attempts`).
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutorRequest {
    pub kind: super::config::ExecutorKind,
    /// Trials at once: local processes on `device`, or Slurm tasks in flight.
    pub parallel: Option<usize>,
    /// One local process per entry.
    pub devices: Vec<crate::device::DeviceChoice>,
    /// The device of each trial.
    pub device: crate::device::DeviceChoice,
    pub slurm_args: Option<String>,
    pub max_attempts: u32,
}

impl ExecutorRequest {
    /// The executor for the search in `dir`: in this process with `evaluator` unless trials
    /// are to run in parallel or on Slurm; child processes run `exe` (the `diffnas` binary).
    pub fn build<'a>(
        &self,
        dir: &Path,
        exe: PathBuf,
        evaluator: &'a mut dyn Evaluator,
    ) -> Result<Box<dyn Executor + 'a>, SearchError> {
        use super::config::{ExecutorKind, defaults, shell_words};
        if self.slurm_args.is_some() && self.kind != ExecutorKind::Slurm {
            return Err(SearchError::Setting(
                "--slurm-args goes with --executor slurm".into(),
            ));
        }
        if !self.devices.is_empty() && self.kind == ExecutorKind::Slurm {
            return Err(SearchError::Setting(
                "--devices is for local trial processes; on Slurm, --slurm-args asks for GPUs \
                 (e.g. \"--gres gpu:1\") and --device auto takes the job's"
                    .into(),
            ));
        }
        let devices: Vec<String> = match (self.parallel, &self.devices[..]) {
            (Some(n), _) => vec![self.device.to_string(); n.max(1)],
            (None, d) => d.iter().map(|d| d.to_string()).collect(),
        };
        Ok(match self.kind {
            ExecutorKind::Slurm => Box::new(super::slurm::Slurm::new(
                exe,
                dir,
                self.device.to_string(),
                shell_words(self.slurm_args.as_deref().unwrap_or_default()),
                self.parallel.unwrap_or(defaults::SLURM_SLOTS),
                self.max_attempts,
            )?),
            ExecutorKind::Local if devices.is_empty() => {
                Box::new(InProcess::new(evaluator, self.max_attempts))
            }
            ExecutorKind::Local => Box::new(Processes::new(exe, devices, self.max_attempts)),
        })
    }
}
/// What a trial's job prints, in its folder.
pub const JOB_LOG: &str = "job.log";

/// One line of `dispatch.jsonl`: a trial handed to a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dispatch {
    pub hash: String,
    /// The strategy's account of the candidate (for its log record).
    pub origin: String,
    /// 1 for the first job of the trial, 2 for the one started after it vanished, ...
    pub attempt: u32,
    /// The executor's name for the job (`pid 1234 on wgpu:0`, `slurm 56_3`).
    pub job: String,
    pub unix: u64,
    /// The job stopped at a checkpoint because the search was stopped (not lost): resumed,
    /// the trial starts again at the same attempt.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
}

/// The newest dispatch of each trial in `dir`'s `dispatch.jsonl`, in the order of first
/// dispatch (a torn last line, from a driver killed mid-write, is skipped).
pub fn read_dispatches(dir: &Path) -> Result<Vec<Dispatch>, SearchError> {
    let p = dir.join(DISPATCH_FILE);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&p, e)),
    };
    let mut out: Vec<Dispatch> = Vec::new();
    let mut good = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let d: Dispatch = match serde_json::from_str(line.trim_end()) {
            Ok(d) if line.ends_with('\n') => d,
            Ok(_) | Err(_) if !line.ends_with('\n') => {
                // A torn last line (a driver killed mid-write): cut, so the next line starts
                // clean.
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map_err(|e| io_err(&p, e))?;
                f.set_len(good as u64).map_err(|e| io_err(&p, e))?;
                break;
            }
            Ok(_) => unreachable!("complete lines are handled above"),
            Err(e) => {
                return Err(SearchError::Corrupt {
                    path: p,
                    line: i + 1,
                    message: e.to_string(),
                });
            }
        };
        good += line.len();
        match out.iter_mut().find(|o| o.hash == d.hash) {
            Some(o) => *o = d,
            None => out.push(d),
        }
    }
    Ok(out)
}

/// A trial to start: its hash, its folder (holding `trial.json`), its genome.
pub struct Job<'a> {
    pub hash: &'a str,
    pub dir: &'a Path,
    pub genome: &'a Genome,
}

/// What [`Executor::adopt`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The job runs (or waits in a queue); this executor follows it now.
    Adopted,
    /// The job is gone.
    Gone,
    /// This executor cannot follow that kind of job (a Slurm task, seen from a local search).
    Foreign,
}

/// How a started trial ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    /// It wrote its outcome (ok or failed).
    Outcome(String, Box<TrialOutcome>),
    /// It stopped at a checkpoint because the search was asked to stop; `--resume` runs it on.
    Stopped(String),
    /// Its job ended without an outcome although nothing asked it to stop (killed, preempted,
    /// out of memory): why, as far as the executor can tell.
    Lost(String, String),
}

/// Runs trials for the driver.
pub trait Executor {
    /// Trials it runs at once.
    fn slots(&self) -> usize;
    /// Whether trials run outside this process (then the driver keeps `dispatch.jsonl`).
    fn external(&self) -> bool;
    /// Start a trial in a free slot; returns the job's name, or None when the trial is
    /// submitted (and named) by the next [`Executor::flush`].
    fn start(&mut self, job: &Job, stop: &AtomicBool) -> Result<Option<String>, SearchError>;
    /// Submit the trials started since the last flush (as one batch, where the executor
    /// batches): each one's hash and job name.
    fn flush(&mut self) -> Result<Vec<(String, String)>, SearchError> {
        Ok(Vec::new())
    }
    /// Take over a trial an earlier driver started (`job` as [`Executor::start`] named it), if
    /// it still runs.
    fn adopt(&mut self, hash: &str, dir: &Path, job: &str) -> Liveness;
    /// Block until at least one running trial has ended (or, once `stop` is set, until all
    /// have); every trial that ended.
    fn wait(&mut self, stop: &AtomicBool) -> Result<Vec<Ended>, SearchError>;
    /// Starts of one trial before it is logged as failed.
    fn max_attempts(&self) -> u32 {
        super::config::defaults::MAX_ATTEMPTS
    }
}

/// One trial at a time, in this process, with `evaluator`. A trial whose process an earlier
/// parallel driver started, and which still runs, is waited for rather than run twice.
pub struct InProcess<'a> {
    evaluator: &'a mut dyn Evaluator,
    next: Option<(String, PathBuf, Genome)>,
    adopted: Option<(String, PathBuf, Option<u32>)>,
    attempts: u32,
}

impl<'a> InProcess<'a> {
    pub fn new(evaluator: &'a mut dyn Evaluator, max_attempts: u32) -> Self {
        InProcess {
            evaluator,
            next: None,
            adopted: None,
            attempts: max_attempts.max(1),
        }
    }
}

/// The process id in a job name `pid N ...`.
fn job_pid(job: &str) -> Option<u32> {
    job.strip_prefix("pid ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// SIGINT to process `pid` (it stops its trial at a checkpoint).
fn interrupt(pid: u32) {
    // SAFETY: a plain signal; the caller checked that `pid` runs one of this search's trials.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
}

/// Waits for the adopted trial in `dir` (its process `pid`, when known) to end: its outcome,
/// lost, or stopped (passing the stop on).
fn wait_adopted(
    hash: String,
    dir: &Path,
    pid: Option<u32>,
    stop: &AtomicBool,
) -> Result<Ended, SearchError> {
    let mut interrupted = false;
    while job::is_running(dir) {
        if stop.load(Ordering::SeqCst) && !interrupted {
            pid.into_iter().for_each(interrupt);
            interrupted = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(match job::read_outcome(dir)? {
        Some(o) => Ended::Outcome(hash, Box::new(o)),
        None if interrupted => Ended::Stopped(hash),
        None => Ended::Lost(hash, format!("its job ended without {OUTCOME_FILE}")),
    })
}

impl Executor for InProcess<'_> {
    fn slots(&self) -> usize {
        1
    }

    fn external(&self) -> bool {
        false
    }

    fn max_attempts(&self) -> u32 {
        self.attempts
    }

    fn start(&mut self, job: &Job, _stop: &AtomicBool) -> Result<Option<String>, SearchError> {
        self.next = Some((job.hash.into(), job.dir.into(), job.genome.clone()));
        Ok(Some("in process".into()))
    }

    fn adopt(&mut self, hash: &str, dir: &Path, job: &str) -> Liveness {
        if job::is_running(dir) {
            self.adopted = Some((hash.into(), dir.into(), job_pid(job)));
            return Liveness::Adopted;
        }
        Liveness::Gone
    }

    fn wait(&mut self, stop: &AtomicBool) -> Result<Vec<Ended>, SearchError> {
        if let Some((hash, dir, pid)) = self.adopted.take() {
            return Ok(vec![wait_adopted(hash, &dir, pid, stop)?]);
        }
        let Some((hash, dir, genome)) = self.next.take() else {
            return Ok(Vec::new());
        };
        let outcome = job::evaluate_in(&dir, &genome, self.evaluator, stop)?;
        Ok(vec![match outcome.status {
            TrialStatus::Interrupted => Ended::Stopped(hash),
            _ => Ended::Outcome(hash, Box::new(outcome)),
        }])
    }
}

/// A running child of [`Processes`]: one we started, or one an earlier driver started (its
/// process id, when its job name has it).
enum Child {
    Ours(std::process::Child),
    Adopted(Option<u32>),
}

struct Running {
    hash: String,
    dir: PathBuf,
    child: Child,
    interrupted: bool,
}

/// One child process per slot: `diffnas trial run DIR --device D`, with `D` the slot's
/// device. Each child has its own process group, so a Ctrl-C (or a hang-up) of the search's
/// terminal reaches only the search, which passes the stop on as one SIGINT per trial (each
/// stops at a checkpoint); a search that is killed leaves its trials running.
pub struct Processes {
    exe: PathBuf,
    devices: Vec<String>,
    running: Vec<Option<Running>>,
    attempts: u32,
    poll: Duration,
}

impl Processes {
    /// Children of `exe` (the `diffnas` binary), one per entry of `devices` (a `--device`
    /// value each; the same value twice runs two trials on that device), each trial started
    /// up to `max_attempts` times.
    pub fn new(exe: PathBuf, devices: Vec<String>, max_attempts: u32) -> Processes {
        let running = devices.iter().map(|_| None).collect();
        Processes {
            exe,
            devices,
            running,
            attempts: max_attempts.max(1),
            poll: Duration::from_millis(100),
        }
    }

    /// A free slot, preferring one on `device`.
    fn free_slot(&self, device: Option<&str>) -> Option<usize> {
        let free = |i: &usize| self.running[*i].is_none();
        (0..self.devices.len())
            .filter(free)
            .find(|&i| Some(self.devices[i].as_str()) == device)
            .or_else(|| (0..self.devices.len()).find(free))
    }
}

impl Executor for Processes {
    fn slots(&self) -> usize {
        self.devices.len()
    }

    fn external(&self) -> bool {
        true
    }

    fn max_attempts(&self) -> u32 {
        self.attempts
    }

    fn start(&mut self, job: &Job, _stop: &AtomicBool) -> Result<Option<String>, SearchError> {
        use std::os::unix::process::CommandExt;
        let slot = self
            .free_slot(None)
            .ok_or_else(|| SearchError::Strategy("no free slot to start a trial in".into()))?;
        let dir = std::path::absolute(job.dir).map_err(|e| io_err(job.dir, e))?;
        let log_path = dir.join(JOB_LOG);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io_err(&log_path, e))?;
        let err = log.try_clone().map_err(|e| io_err(&log_path, e))?;
        let child = std::process::Command::new(&self.exe)
            .args(["trial", "run"])
            .arg(&dir)
            .args(["--device", &self.devices[slot]])
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| io_err(&self.exe, format!("starting a trial: {e}")))?;
        let name = format!("pid {} on {}", child.id(), self.devices[slot]);
        self.running[slot] = Some(Running {
            hash: job.hash.into(),
            dir,
            child: Child::Ours(child),
            interrupted: false,
        });
        Ok(Some(name))
    }

    fn adopt(&mut self, hash: &str, dir: &Path, job: &str) -> Liveness {
        if job.starts_with("slurm ") {
            return Liveness::Foreign;
        }
        if !job::is_running(dir) {
            return Liveness::Gone;
        }
        let device = job.split_once(" on ").map(|(_, d)| d);
        let Some(slot) = self.free_slot(device) else {
            return Liveness::Foreign;
        };
        self.running[slot] = Some(Running {
            hash: hash.into(),
            dir: dir.into(),
            child: Child::Adopted(job_pid(job)),
            interrupted: false,
        });
        Liveness::Adopted
    }

    fn wait(&mut self, stop: &AtomicBool) -> Result<Vec<Ended>, SearchError> {
        let mut ended = Vec::new();
        loop {
            let stopping = stop.load(Ordering::SeqCst);
            for slot in self.running.iter_mut() {
                let Some(r) = slot else { continue };
                let status = match &mut r.child {
                    Child::Ours(c) => match c.try_wait() {
                        Ok(Some(s)) => Some(format!("{s}")),
                        Ok(None) => None,
                        Err(e) => Some(format!("cannot wait for it: {e}")),
                    },
                    Child::Adopted(_) => {
                        (!job::is_running(&r.dir)).then(|| "it is gone".to_string())
                    }
                };
                if status.is_none() && stopping && !r.interrupted {
                    match &r.child {
                        Child::Ours(c) => interrupt(c.id()),
                        Child::Adopted(pid) => pid.iter().copied().for_each(interrupt),
                    }
                    r.interrupted = true;
                }
                let Some(status) = status else { continue };
                let r = slot.take().expect("checked above");
                ended.push(match job::read_outcome(&r.dir)? {
                    Some(o) => Ended::Outcome(r.hash, Box::new(o)),
                    None if r.interrupted || stopping => Ended::Stopped(r.hash),
                    None => {
                        let tail = std::fs::read_to_string(r.dir.join(JOB_LOG))
                            .ok()
                            .and_then(|t| t.lines().last().map(str::to_string))
                            .unwrap_or_default();
                        Ended::Lost(
                            r.hash,
                            format!(
                                "its job ended ({status}) without {OUTCOME_FILE}; last line of \
                                 {JOB_LOG}: {tail:?}"
                            ),
                        )
                    }
                });
            }
            // Once stopping, every child is waited for: each stops at a checkpoint.
            let idle = self.running.iter().all(Option::is_none);
            if idle || (!ended.is_empty() && !stopping) {
                return Ok(ended);
            }
            std::thread::sleep(self.poll);
        }
    }
}
