//! Trials as Slurm jobs, through Slurm's own commands: `sbatch --array` (one array per batch
//! of trials the driver starts together), `squeue` to follow them, `scancel` to stop them.
//! `sacct` is not needed. The trial folders must be on a file system the nodes share.
//!
//! `RUN_DIR/slurm/trial.sh` is the job script: array task `i` runs `diffnas trial run` on line
//! `i` of the batch's list of trial folders, its output appended to the trial's `job.log`.
//! Jobs are submitted with `--requeue`, so a preempted or failed node's job runs again and
//! resumes its trial's checkpoints. A task that ends without `outcome.json` (cancelled, out of
//! time, killed) is submitted again by the driver, up to its maximum attempts.

use super::executor::{Ended, Executor, JOB_LOG, Job, Liveness};
use super::job;
use super::{SearchError, io_err};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The folder of the job script, the batches' lists and Slurm's own output.
pub const SLURM_DIR: &str = "slurm";
pub const JOB_SCRIPT: &str = "trial.sh";

/// Task states in which a job may still write its outcome.
const ALIVE: [&str; 12] = [
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "STOPPED",
    "SIGNALING",
    "STAGE_OUT",
];

struct Task {
    hash: String,
    dir: PathBuf,
    /// `ARRAY_TASK`, e.g. `56_3`; None until its batch is submitted.
    id: Option<String>,
    /// Stopping: whether it was signalled (running) or cancelled (waiting).
    stopped: bool,
    /// Polls in a row that did not list it (a task is gone after two).
    unseen: u32,
}

/// Submits trials as Slurm array jobs; at most `slots` are in flight.
pub struct Slurm {
    exe: PathBuf,
    dir: PathBuf,
    device: String,
    args: Vec<String>,
    slots: usize,
    attempts: u32,
    tasks: Vec<Task>,
    batches: usize,
    poll: Duration,
}

impl Slurm {
    /// Trials of the search in `dir`, run by `exe` (the `diffnas` binary, on a path the nodes
    /// see) with `--device device`; `args` go to `sbatch` as they are (partition, GPUs,
    /// time, account: `--partition gpu --gres gpu:1 --time 1:00:00`).
    pub fn new(
        exe: PathBuf,
        dir: &Path,
        device: String,
        args: Vec<String>,
        slots: usize,
        max_attempts: u32,
    ) -> Result<Slurm, SearchError> {
        if let Some(a) = args.iter().find(|a| {
            let flag = a.split('=').next().unwrap_or_default();
            [
                "-M",
                "--clusters",
                "--cluster",
                "-J",
                "--job-name",
                "-a",
                "--array",
            ]
            .contains(&flag)
        }) {
            return Err(SearchError::Setting(format!(
                "--slurm-args {a}: the search names, sizes and follows its array jobs itself \
                 (on the default cluster); leave it out"
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        // One spelling of the folder, so that every driver of this search gives its jobs the
        // same name.
        let dir = std::fs::canonicalize(dir).map_err(|e| io_err(dir, e))?;
        let exe = std::path::absolute(&exe).map_err(|e| io_err(&exe, e))?;
        let batches = std::fs::read_dir(dir.join(SLURM_DIR)).map_or(0, |rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_prefix("batch-")?
                        .strip_suffix(".txt")?
                        .parse::<usize>()
                        .ok()
                })
                .map(|n| n + 1)
                .max()
                .unwrap_or(0)
        });
        Ok(Slurm {
            exe,
            dir,
            device,
            args,
            slots: slots.max(1),
            attempts: max_attempts.max(1),
            tasks: Vec::new(),
            batches,
            poll: Duration::from_secs(2),
        })
    }

    /// The job name every task of this search has (how `squeue` finds them).
    fn job_name(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.dir.to_string_lossy().as_bytes());
        let tag: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        format!("diffnas-{tag}")
    }

    /// `RUN_DIR/slurm/trial.sh`, written if missing or different.
    fn job_script(&self) -> Result<PathBuf, SearchError> {
        let d = self.dir.join(SLURM_DIR);
        std::fs::create_dir_all(&d).map_err(|e| io_err(&d, e))?;
        let p = d.join(JOB_SCRIPT);
        let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let text = format!(
            "#!/usr/bin/env bash\n\
             # diffnas: one search trial per array task; argument 1 lists the trial folders.\n\
             set -euo pipefail\n\
             dir=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" \"$1\")\n\
             echo \"slurm job ${{SLURM_JOB_ID}} (array ${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}) on $(hostname)\" >> \"$dir/{JOB_LOG}\"\n\
             exec {} trial run \"$dir\" --device {} >> \"$dir/{JOB_LOG}\" 2>&1\n",
            quote(&self.exe.to_string_lossy()),
            quote(&self.device)
        );
        if std::fs::read_to_string(&p).ok().as_deref() != Some(text.as_str()) {
            crate::train::write_atomic(&p, text.as_bytes()).map_err(|e| io_err(&p, e))?;
        }
        Ok(p)
    }

    /// Every task of this search Slurm knows: (`ARRAY_TASK` id, state). None when `squeue`
    /// could not answer (the controller is busy or down): nothing is concluded then.
    fn states(&self) -> Option<Vec<(String, String)>> {
        let out = Command::new("squeue")
            .args([
                "-h",
                "-r",
                "--all",
                "-t",
                "all",
                "-o",
                "%i %T",
                "-n",
                &self.job_name(),
            ])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        Some(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| {
                    let (id, state) = l.trim().split_once(' ')?;
                    Some((id.to_string(), state.trim().to_string()))
                })
                .collect(),
        )
    }
}

/// `slurm ID` -> `ID`.
fn task_id(job: &str) -> Option<&str> {
    job.strip_prefix("slurm ")
}

impl Executor for Slurm {
    fn slots(&self) -> usize {
        self.slots
    }

    fn external(&self) -> bool {
        true
    }

    fn max_attempts(&self) -> u32 {
        self.attempts
    }

    fn start(&mut self, job: &Job, _stop: &AtomicBool) -> Result<Option<String>, SearchError> {
        let dir = std::path::absolute(job.dir).map_err(|e| io_err(job.dir, e))?;
        self.tasks.push(Task {
            hash: job.hash.into(),
            dir,
            id: None,
            stopped: false,
            unseen: 0,
        });
        Ok(None)
    }

    fn flush(&mut self) -> Result<Vec<(String, String)>, SearchError> {
        let new: Vec<usize> = (0..self.tasks.len())
            .filter(|&i| self.tasks[i].id.is_none())
            .collect();
        if new.is_empty() {
            return Ok(Vec::new());
        }
        let script = self.job_script()?;
        let list = self
            .dir
            .join(SLURM_DIR)
            .join(format!("batch-{:04}.txt", self.batches));
        let lines: String = new
            .iter()
            .map(|&i| format!("{}\n", self.tasks[i].dir.display()))
            .collect();
        crate::train::write_atomic(&list, lines.as_bytes()).map_err(|e| io_err(&list, e))?;
        self.batches += 1;
        let output = self.dir.join(SLURM_DIR).join("%A_%a.out");
        // The user's arguments first: what follows is how the search finds its tasks, and
        // sbatch takes the last of a repeated option.
        let out = Command::new("sbatch")
            .args(&self.args)
            .arg("--parsable")
            .arg(format!("--array=0-{}", new.len() - 1))
            .args([
                "--job-name",
                &self.job_name(),
                "--requeue",
                "--open-mode=append",
            ])
            .arg(format!("--output={}", output.display()))
            .arg(&script)
            .arg(&list)
            .output()
            .map_err(|e| io_err(Path::new("sbatch"), format!("cannot run sbatch: {e}")))?;
        if !out.status.success() {
            return Err(SearchError::Setting(format!(
                "sbatch refused the trials ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        // `--parsable` prints `JOBID` or `JOBID;CLUSTER`.
        let text = String::from_utf8_lossy(&out.stdout);
        let array = text
            .trim()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string();
        let mut named = Vec::new();
        for (k, &i) in new.iter().enumerate() {
            let id = format!("{array}_{k}");
            named.push((self.tasks[i].hash.clone(), format!("slurm {id}")));
            self.tasks[i].id = Some(id);
        }
        Ok(named)
    }

    fn adopt(&mut self, hash: &str, dir: &Path, job: &str) -> Liveness {
        let Some(id) = task_id(job) else {
            return if job::is_running(dir) {
                Liveness::Foreign
            } else {
                Liveness::Gone
            };
        };
        // Unless squeue says the task is over, it is followed (an unanswered squeue is asked
        // again by `wait`).
        let over = self.states().is_some_and(|s| {
            !s.iter()
                .any(|(i, st)| i == id && ALIVE.contains(&st.as_str()))
        });
        if over && !job::is_running(dir) {
            return Liveness::Gone;
        }
        self.tasks.push(Task {
            hash: hash.into(),
            dir: dir.into(),
            id: Some(id.into()),
            stopped: false,
            unseen: 0,
        });
        Liveness::Adopted
    }

    fn wait(&mut self, stop: &AtomicBool) -> Result<Vec<Ended>, SearchError> {
        let mut ended = Vec::new();
        loop {
            let stopping = stop.load(Ordering::SeqCst);
            if let Some(states) = self.states() {
                let mut i = 0;
                while i < self.tasks.len() {
                    let Some(id) = self.tasks[i].id.clone() else {
                        i += 1;
                        continue;
                    };
                    let state = states
                        .iter()
                        .find(|(x, _)| *x == id)
                        .map(|(_, s)| s.clone());
                    let t = &mut self.tasks[i];
                    t.unseen = if state.is_some() { 0 } else { t.unseen + 1 };
                    let alive = match state.as_deref() {
                        Some(s) => ALIVE.contains(&s),
                        None => t.unseen < 2,
                    };
                    if alive {
                        if stopping && !t.stopped {
                            // Waiting tasks go; running ones stop at a checkpoint. A task still
                            // being set up is asked again on the next poll.
                            match state.as_deref() {
                                Some("PENDING" | "REQUEUED" | "REQUEUE_HOLD") => {
                                    scancel(&[&id]);
                                    t.stopped = true;
                                }
                                Some("RUNNING") => {
                                    scancel(&["--batch", "--signal=INT", &id]);
                                    t.stopped = true;
                                }
                                _ => {}
                            }
                        }
                        i += 1;
                        continue;
                    }
                    let t = self.tasks.remove(i);
                    let state = state.unwrap_or_else(|| "gone from squeue".into());
                    ended.push(match job::read_outcome(&t.dir)? {
                        Some(o) => Ended::Outcome(t.hash, Box::new(o)),
                        None if stopping || t.stopped => Ended::Stopped(t.hash),
                        None => {
                            let tail = std::fs::read_to_string(t.dir.join(JOB_LOG))
                                .ok()
                                .and_then(|x| x.lines().last().map(str::to_string))
                                .unwrap_or_default();
                            Ended::Lost(
                                t.hash,
                                format!(
                                    "its Slurm job {id} ended ({state}) without {}; last line \
                                     of {JOB_LOG}: {tail:?}",
                                    job::OUTCOME_FILE
                                ),
                            )
                        }
                    });
                }
            }
            let idle = self.tasks.iter().all(|t| t.id.is_none());
            if idle || (!ended.is_empty() && !stopping) {
                return Ok(ended);
            }
            std::thread::sleep(self.poll);
        }
    }
}

fn scancel(args: &[&str]) {
    let _ = Command::new("scancel")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}
