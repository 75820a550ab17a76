//! Trials as Slurm array jobs on a real one-node Slurm (`tests/slurm/cluster.sh`: Debian's
//! slurm-wlm and munge, bound to 127.0.0.1). Needs root and the packages (`.ci/setup`
//! installs them); without them the tests fail.

use diffnas::search::TrialLog;
use diffnas::search::executor::read_dispatches;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running test cluster, stopped when dropped.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slurm/cluster.sh");
        let (a, b) = (free_port(), free_port());
        let o = Command::new("bash")
            .arg(&script)
            .args([
                "start",
                dir.to_str().unwrap(),
                &a.to_string(),
                &b.to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "no test Slurm cluster: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Cluster {
            dir: dir.into(),
            conf: dir.join("slurm.conf"),
        }
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Jobs first, so that the node is not left with trials of a finished test.
        let _ = self.cmd("scancel").args(["--user", "root"]).status();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slurm/cluster.sh");
        let _ = Command::new("bash")
            .arg(script)
            .args(["stop", self.dir.to_str().unwrap()])
            .status();
    }
}

fn diffnas(cluster: &Cluster, home: &Path) -> Command {
    let mut c = cluster.cmd(env!("CARGO_BIN_EXE_diffnas"));
    c.env("DIFFNAS_HOME", home);
    c
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn wait_for(what: &str, done: &mut dyn FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "waited too long for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A 6-trial random search (stub evaluator) as held array jobs: one task is cancelled before
/// it runs (the driver submits it again: 2 attempts), the driver is SIGKILLed with jobs in
/// the queue and resumed. Every trial is logged exactly once, and `dispatch.jsonl` has every
/// job with its attempt. Then a real proxy trial on a slice of Fashion-MNIST runs as a job.
#[test]
fn a_search_runs_its_trials_as_slurm_jobs() {
    let work = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(&work.path().join("slurm"));
    let home = work.path().join("home");
    let dir = work.path().join("search");
    let d = dir.to_str().unwrap();
    let search = |resume: bool| {
        let mut args = vec!["search", "random", "--run-dir", d, "--device", "flex"];
        if resume {
            args.push("--resume");
        } else {
            args.extend(["--evaluator", "stub", "--trials", "6"]);
        }
        args.extend([
            "--executor",
            "slurm",
            "--parallel",
            "2",
            "--slurm-args",
            "--hold",
        ]);
        let mut c = diffnas(&cluster, &home);
        c.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
        c
    };
    let release = |upto: &mut HashSet<String>| {
        for x in read_dispatches(&dir).unwrap() {
            let id = x.job.strip_prefix("slurm ").unwrap().to_string();
            if upto.insert(id.clone()) {
                let _ = cluster.cmd("scontrol").args(["release", &id]).output();
            }
        }
    };
    let mut driver = search(false).spawn().unwrap();
    // The first batch waits, held: cancel one of its tasks, then let the rest run.
    wait_for("the first jobs", &mut || {
        read_dispatches(&dir).is_ok_and(|d| d.len() == 2)
    });
    let first = read_dispatches(&dir).unwrap();
    let victim = first[0].clone();
    let id = victim.job.strip_prefix("slurm ").unwrap();
    ok(&cluster.cmd("scancel").arg(id).output().unwrap());
    let mut released = HashSet::from([id.to_string()]);
    wait_for("the cancelled trial's second attempt", &mut || {
        release(&mut released);
        read_dispatches(&dir)
            .unwrap()
            .iter()
            .any(|x| x.hash == victim.hash && x.attempt == 2)
    });
    // Kill the driver once some trials are logged and others are still queued.
    wait_for("three trials logged", &mut || {
        release(&mut released);
        TrialLog::open(&dir).is_ok_and(|l| l.records.len() >= 3)
    });
    driver.kill().unwrap();
    driver.wait().unwrap();
    let before = TrialLog::open(&dir).unwrap().records.len();
    assert!(before < 6, "{before} trials before the driver was killed");

    let resumed = search(true).spawn().unwrap();
    let pid = resumed.id();
    let releaser = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let mut released = released.clone();
            while Path::new(&format!("/proc/{pid}")).exists()
                && TrialLog::open(&dir).map_or(0, |l| l.records.len()) < 6
            {
                release(&mut released);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let o = resumed.wait_with_output().unwrap();
        h.join().unwrap();
        o
    });
    ok(&releaser);
    let records = TrialLog::open(&dir).unwrap().records;
    assert_eq!(records.len(), 6);
    let hashes: HashSet<_> = records.iter().map(|r| r.hash.clone()).collect();
    assert_eq!(hashes.len(), 6, "a trial was logged twice");
    let cancelled = records.iter().find(|r| r.hash == victim.hash).unwrap();
    assert_eq!(cancelled.attempts, Some(2));
    assert!(cancelled.score().is_some());
    let dispatched = read_dispatches(&dir).unwrap();
    for r in &records {
        assert!(r.score().is_some(), "{:?}", r.outcome);
        let x = dispatched.iter().find(|x| x.hash == r.hash).unwrap();
        assert!(x.job.starts_with("slurm "), "{}", x.job);
        assert_eq!(Some(x.attempt).filter(|&a| a > 1), r.attempts);
    }
    assert!(dir.join("slurm/trial.sh").is_file());

    // A real trial: rapid-convergence training and a reduced score, as a Slurm job.
    let data_dir = work.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let data = crate::search::small_fashion_mnist(&data_dir, 300, 50).expect("Fashion-MNIST");
    crate::search::small_classifier(&home, &data);
    let real = work.path().join("real");
    let o = diffnas(&cluster, &home)
        .args([
            "search",
            "random",
            "--run-dir",
            real.to_str().unwrap(),
            "--data",
            &data,
        ])
        .args([
            "--trials",
            "1",
            "--trial-steps",
            "20",
            "--trial-batch-size",
            "8",
        ])
        .args([
            "--score-n",
            "16",
            "--score-steps",
            "2",
            "--max-params",
            "300000",
        ])
        .args(["--executor", "slurm", "--device", "flex"])
        .output()
        .unwrap();
    ok(&o);
    let r = &TrialLog::open(&real).unwrap().records[0];
    assert!(r.score().is_some(), "{:?}", r.outcome);
    assert_eq!(r.outcome.metric, "RFD-classifier");
    let log = std::fs::read_to_string(real.join(r.run_dir()).join("job.log")).unwrap();
    assert!(log.contains("slurm job "), "{log}");
}
