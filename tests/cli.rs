//! The `diffnas` binary: exit codes and messages, and a real kill-and-resume of `train`.

use crate::common::{param_values, tiny16};
use burn::tensor::Device;
use diffnas::rundir::{Weights, load_denoiser};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn diffnas() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_diffnas"));
    c.env("NO_COLOR", "1");
    c
}

fn run(args: &[&str]) -> Output {
    diffnas().args(args).output().expect("the binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn genome_commands() {
    let o = run(&["genome", "show", "tiny"]);
    assert!(o.status.success());
    let g = diffnas::genome::Genome::from_json(&String::from_utf8_lossy(&o.stdout)).unwrap();
    assert_eq!(g, diffnas::genome::Genome::tiny());

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    let mut v = serde_json::to_value(diffnas::genome::Genome::tiny()).unwrap();
    v["encoder"][1]["channel_mult"] = serde_json::json!(7);
    std::fs::write(&bad, v.to_string()).unwrap();
    let o = run(&["genome", "validate", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("encoder[1].channel_mult: 7 is not one of [1, 2, 3, 4]"),
        "{}",
        stderr(&o)
    );

    std::fs::write(&bad, r#"{"image": {"channels": 1, "size": "big"}}"#).unwrap();
    let o = run(&["genome", "validate", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("image.size"), "{}", stderr(&o));

    std::fs::write(&bad, "{ not json").unwrap();
    let o = run(&["genome", "cost", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));

    let o = run(&["genome", "cost", "ddpm-cifar10"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("params: 35746307"));

    let o = run(&["train", "--genome", "no-such-preset", "--device", "flex"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("neither a preset"), "{}", stderr(&o));
    let o = run(&["train", "--data", "mnist", "--device", "flex"]);
    assert_eq!(o.status.code(), Some(2));

    // DIFFNAS_CONV is checked before any command runs, and a bad value is named.
    let o = diffnas()
        .env("DIFFNAS_CONV", "winograd")
        .args(["genome", "cost", "tiny"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("DIFFNAS_CONV") && stderr(&o).contains("\"winograd\""),
        "{}",
        stderr(&o)
    );
    let o = diffnas()
        .env("DIFFNAS_CONV", "direct")
        .args(["genome", "cost", "tiny"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `--device wgpu:N` runs on adapter N of `diffnas devices` (here the Vulkan software
/// adapter, whichever index it has); an index past the list, or a malformed one, is a bad flag
/// (exit 2) that says what exists.
#[cfg(feature = "wgpu")]
#[test]
fn device_by_adapter_index() {
    let o = diffnas().arg("devices").output().unwrap();
    let listing = String::from_utf8_lossy(&o.stdout).to_string();
    let (index, name) = listing
        .lines()
        .find_map(|l| {
            let (i, rest) = l.strip_prefix('[')?.split_once("] ")?;
            rest.contains("Vulkan")
                .then(|| (i.to_string(), rest.to_string()))
        })
        .unwrap_or_else(|| panic!("no Vulkan adapter listed:\n{listing}"));
    let count = listing.lines().filter(|l| l.starts_with('[')).count();
    // Under each adapter, what it offers for 16-bit compute (lavapipe: shader-f16, no
    // cooperative matrices).
    let caps = listing
        .lines()
        .skip_while(|l| !l.ends_with(&name))
        .nth(1)
        .unwrap_or_default();
    assert!(
        caps.trim_start().starts_with("shader-f16 ") && caps.contains("; cooperative matrix: "),
        "{listing}"
    );
    if name.contains("llvmpipe") {
        assert_eq!(
            caps.trim(),
            "shader-f16 yes; cooperative matrix: none",
            "{listing}"
        );
    }
    // And whether this build can use them at all (this test's build is the default: WGSL).
    assert!(
        listing
            .lines()
            .any(|l| l == diffnas::device::kernel_language()
                && l.starts_with("kernels: WGSL on every adapter")),
        "{listing}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.png");
    let run = |device: &str| {
        diffnas()
            .args([
                "sample",
                "tests/fixtures/fmnist-tiny",
                "--n",
                "2",
                "--steps",
                "2",
            ])
            .args(["--out", out.to_str().unwrap(), "--device", device])
            .output()
            .unwrap()
    };
    let o = run(&format!("wgpu:{index}"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("device: {name}")) && stderr(&o).contains("Vulkan"),
        "{}",
        stderr(&o)
    );
    assert!(out.is_file());
    let o = run(&format!("wgpu:{}", count + 5));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "--device wgpu:{}: this machine has {count} wgpu adapter(s)",
            count + 5
        )),
        "{}",
        stderr(&o)
    );
    let o = run("wgpu:first");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("wgpu:N"), "{}", stderr(&o));
}

/// On a machine with no desktop session, listing the adapters prints no libwayland noise
/// (Mesa's Vulkan device-select layer asks the compositor, and none can exist).
/// `bench --peak` on wgpu reports the FMA peak and the ceilings beside it, each physically
/// possible: f32 matmul cannot beat the f32 FMA rate by much (no tensor cores in f32), so a
/// timer that stopped before the products ran would show as a rate far above it.
#[cfg(feature = "wgpu")]
#[test]
fn bench_peak_reports_matmul_copy_and_launch_ceilings() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("peak.json");
    // A fresh home, so that the matmul probe is tuned here and its decision logged.
    let autotune_log = dir.path().join("autotune.log");
    let o = diffnas()
        .env("DIFFNAS_HOME", dir.path().join("home"))
        .env("DIFFNAS_AUTOTUNE_LOG", &autotune_log)
        .args([
            "bench",
            "--device",
            "wgpu",
            "--train-steps",
            "0",
            "--sample-evals",
            "0",
            "--peak",
            "--json",
            json.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let peak = &r["peak"];
    let num = |k: &str| {
        peak[k]
            .as_f64()
            .unwrap_or_else(|| panic!("peak.{k} missing: {r}"))
    };
    let (fma, matmul) = (num("f32_gflops"), num("matmul_gflops"));
    assert!(fma > 0.0 && matmul > 0.0, "{r}");
    assert!(
        matmul < 1.5 * fma,
        "matmul {matmul} GFLOP/s above the FMA peak {fma}: {r}"
    );
    let cpu = r["device"]["device_type"].as_str().unwrap() == "Cpu";
    assert_eq!(num("matmul_n"), if cpu { 512.0 } else { 4096.0 }, "{r}");
    assert!(num("copy_gbps") > 0.0 && num("launch_us") > 0.0, "{r}");
    // A log path that cannot be written (under a regular file) is refused before any work,
    // naming it.
    let bad = json.join("a.log");
    let o = diffnas()
        .env("DIFFNAS_AUTOTUNE_LOG", &bad)
        .args(["devices"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let named = format!("DIFFNAS_AUTOTUNE_LOG={}: cannot write it", bad.display());
    assert!(stderr(&o).contains(&named), "{}", stderr(&o));
    // DIFFNAS_AUTOTUNE_LOG: the probe's product was tuned, and the log names the winner.
    let n = num("matmul_n") as usize;
    let log = std::fs::read_to_string(&autotune_log).expect("DIFFNAS_AUTOTUNE_LOG written");
    let shape = format!("m: {n}, n: {n}, k: {n},");
    assert!(
        log.lines().any(|l| l.starts_with("Fastest result ")
            && l.contains("MatmulAutotuneKey")
            && l.contains(&shape)),
        "no decision for the {n}^3 matmul in the autotune log:\n{log}"
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn headless_adapter_probe_is_quiet() {
    let o = diffnas()
        .arg("devices")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("NODEVICE_SELECT")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // The Vulkan loader ran (lavapipe at least), so its layers did too.
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Vulkan"),
        "no Vulkan adapter listed (is mesa-vulkan-drivers installed?):\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(!stderr(&o).contains("XDG_RUNTIME_DIR"), "{}", stderr(&o));
}

/// A folder of 16x16 grayscale PNGs.
fn image_folder(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        image::GrayImage::from_fn(16, 16, |x, y| {
            image::Luma([((x * 16 + y * 3 + i as u32 * 37) % 256) as u8])
        })
        .save(dir.join(format!("{i:03}.png")))
        .unwrap();
    }
}

fn train_args<'a>(genome: &'a str, data: &'a str, run_dir: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--device",
        "flex",
        "--genome",
        genome,
        "--data",
        data,
        "--run-dir",
        run_dir,
        "--steps",
        "40",
        "--batch-size",
        "4",
        "--warmup",
        "5",
        "--lr",
        "1e-3",
        "--checkpoint-every",
        "5",
        "--log-every",
        "5",
        "--samples",
        "0",
        "--seed",
        "3",
        // A schedule that depends on the total steps: a resume that changed them would show.
        "--lr-schedule",
        "cosine",
        "--min-lr-ratio",
        "0.1",
    ]
}

fn latest_step(run_dir: &Path) -> u64 {
    std::fs::read_to_string(run_dir.join("checkpoints/latest"))
        .ok()
        .and_then(|s| s.trim().strip_prefix("step-")?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn killed_training_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("images");
    image_folder(&data_dir, 12);
    let genome = dir.path().join("g.json");
    let mut g = tiny16();
    g.dropout = 0.1;
    std::fs::write(&genome, g.to_json_pretty()).unwrap();
    let data = format!("folder:{}", data_dir.display());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let gs = genome.to_str().unwrap();

    let o = run(&train_args(gs, &data, a.to_str().unwrap()));
    assert!(o.status.success(), "{}", stderr(&o));

    // Start the same run, kill it (SIGKILL, no chance to clean up) once a checkpoint exists.
    let mut child = diffnas()
        .args(train_args(gs, &data, b.to_str().unwrap()))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while latest_step(&b) < 10 {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("training ended before it could be killed: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // While it runs, a second process on the same folder is refused, naming the holder.
    let o = run(&["train", "--resume", "--run-dir", b.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let pid = format!("pid {}", child.id());
    assert!(
        stderr(&o).contains("in use by another diffnas process") && stderr(&o).contains(&pid),
        "{}",
        stderr(&o)
    );
    assert!(diffnas::lock::is_held(&b));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(latest_step(&b) < 40, "killed before the end");
    // SIGKILL leaves no stale lock.
    assert!(!diffnas::lock::is_held(&b));

    // A second run into the same folder without --resume refuses.
    let o = run(&train_args(gs, &data, b.to_str().unwrap()));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));

    // A resume keeps the run's settings: a flag that would change them is refused, naming
    // the stored value, and so are fewer steps than stored.
    let b_dir = b.to_str().unwrap();
    let o = run(&["train", "--resume", "--run-dir", b_dir, "--lr", "0.01"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--lr 0.01 differs from the 0.001 stored"),
        "{}",
        stderr(&o)
    );
    let o = run(&["train", "--resume", "--run-dir", b_dir, "--steps", "30"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--steps 30 differs"), "{}", stderr(&o));

    // Resumed with nothing but --resume and the folder (and no sample grid): the same run,
    // its own 40 steps and cosine schedule, not the flags' defaults.
    let o = run(&["train", "--resume", "--run-dir", b_dir, "--samples", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resumed at step"), "{}", stderr(&o));
    assert!(stderr(&o).contains("at step 40 of 40"), "{}", stderr(&o));

    let device = Device::flex();
    for w in [Weights::Model, Weights::Ema] {
        let ma = load_denoiser(&a, w, &device).unwrap().model;
        let mb = load_denoiser(&b, w, &device).unwrap().model;
        assert!(
            param_values(&ma) == param_values(&mb),
            "{w:?} weights differ"
        );
    }

    // A run from before checksums (its state file without them) still samples, with a
    // warning naming the weights file; a sealed run gives none.
    let old = dir.path().join("old-run");
    std::fs::create_dir_all(&old).unwrap();
    for f in ["genome.json", "train.json", "model.bpk", "ema.bpk"] {
        std::fs::copy(a.join(f), old.join(f)).unwrap();
    }
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("state.json")).unwrap()).unwrap();
    assert!(state["sha256"]["ema.bpk"].is_string());
    state.as_object_mut().unwrap().remove("sha256");
    std::fs::write(old.join("state.json"), state.to_string()).unwrap();
    let old_grid = dir.path().join("old.png");
    let sample = |run_dir: &std::path::Path| {
        run(&[
            "sample",
            run_dir.to_str().unwrap(),
            "--device",
            "flex",
            "--n",
            "1",
            "--steps",
            "2",
            "--out",
            old_grid.to_str().unwrap(),
        ])
    };
    let o = sample(&old);
    assert!(o.status.success(), "{}", stderr(&o));
    let warning = format!("warning: {}: no checksum", old.join("ema.bpk").display());
    assert!(stderr(&o).contains(&warning), "{}", stderr(&o));
    let o = sample(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));

    // Sampling from the run writes a grid and individual images, deterministic per seed.
    let grid = dir.path().join("grid.png");
    let each = dir.path().join("each");
    let o = run(&[
        "sample",
        a.to_str().unwrap(),
        "--device",
        "flex",
        "--n",
        "6",
        "--steps",
        "5",
        "--out",
        grid.to_str().unwrap(),
        "--individual",
        each.to_str().unwrap(),
        "--batch-size",
        "4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let img = image::open(&grid).unwrap();
    assert_eq!((img.width(), img.height()), (3 * 18 + 2, 2 * 18 + 2));
    let one = std::fs::read(each.join("000005.png")).unwrap();
    let again = dir.path().join("again");
    let o = run(&[
        "sample",
        a.to_str().unwrap(),
        "--device",
        "flex",
        "--n",
        "6",
        "--steps",
        "5",
        "--individual",
        again.to_str().unwrap(),
        "--batch-size",
        "6",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        one,
        std::fs::read(again.join("000005.png")).unwrap(),
        "batch size must not change images"
    );
}

/// `diffnas bench` with the phase profile and the memory trace on flex, `genome cost --json`,
/// and the flags a build or a backend cannot honour.
#[test]
fn bench_profiles_phases_traces_memory_and_refuses_what_it_cannot_measure() {
    let dir = tempfile::tempdir().unwrap();
    let genome = dir.path().join("g.json");
    std::fs::write(&genome, tiny16().to_json_pretty()).unwrap();
    let g = genome.to_str().unwrap();

    let o = run(&["genome", "cost", "ddpm-cifar10", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ddpm = diffnas::genome::Genome::preset("ddpm-cifar10").unwrap();
    assert_eq!(c["params"], 35_746_307);
    assert_eq!(c["macs"], diffnas::genome::cost(&ddpm).unwrap().macs);
    assert_eq!(c["hash"], ddpm.hash());
    assert_eq!(
        diffnas::genome::Genome::from_json(&c["genome"].to_string()).unwrap(),
        ddpm
    );

    let out = dir.path().join("bench.json");
    let o = run(&[
        "bench",
        "--genome",
        g,
        "--batch-size",
        "2",
        "--device",
        "flex",
        "--train-steps",
        "2",
        "--sample-evals",
        "2",
        "--warmup",
        "1",
        "--profile",
        "--memory-steps",
        "20",
        "--json",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(
        r["params"],
        diffnas::genome::cost(&tiny16()).unwrap().params
    );
    assert!(r["train"]["images_per_s"].as_f64().unwrap() > 0.0);
    assert!(r["sample"]["image_steps_per_s"].as_f64().unwrap() > 0.0);

    let phases = r["profile"]["train"].as_array().unwrap();
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["inputs", "forward", "backward", "clip", "optimizer", "ema"]
    );
    let share: f64 = phases.iter().map(|p| p["fraction"].as_f64().unwrap()).sum();
    assert!((share - 1.0).abs() < 1e-9, "phase shares sum to {share}");
    for p in phases {
        assert!(p["seconds"].as_f64().unwrap() >= 0.0, "{p}");
    }
    // The network's passes are real work on every backend.
    assert!(phases[1]["seconds"].as_f64().unwrap() > 0.0);
    assert!(phases[2]["seconds"].as_f64().unwrap() > 0.0);
    let sample = r["profile"]["sample"].as_array().unwrap();
    assert_eq!(sample[0]["phase"], "denoiser");
    assert!(sample[0]["seconds"].as_f64().unwrap() > 0.0);

    let mem = &r["memory"];
    assert_eq!(mem["steps"], 20);
    let samples = mem["samples"].as_array().unwrap();
    // A reading before the first step and one every 5% of the steps.
    let steps: Vec<u64> = samples
        .iter()
        .map(|s| s["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (0..=20).collect::<Vec<u64>>());
    if cfg!(target_os = "linux") {
        let rss: Vec<u64> = samples
            .iter()
            .map(|s| s["process_rss_bytes"].as_u64().unwrap())
            .collect();
        assert!(rss.iter().all(|&b| b > 0));
        let peak = mem["peak_process_rss_bytes"].as_u64().unwrap();
        assert!(peak >= *rss.iter().max().unwrap());
        assert_eq!(
            mem["rss_growth_bytes"].as_i64().unwrap(),
            rss[20] as i64 - rss[1] as i64
        );
    }
    // flex has no device allocator to read.
    assert!(samples[0]["device_bytes_reserved"].is_null());

    let o = run(&[
        "bench",
        "--genome",
        g,
        "--device",
        "flex",
        "--train-steps",
        "0",
        "--sample-evals",
        "1",
        "--peak",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--peak: the flex backend has no peak-throughput probe"));

    if !cfg!(feature = "cuda") {
        let o = run(&["bench", "--genome", g, "--device", "cuda"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("--features cuda"), "{}", stderr(&o));
    }
    let o = run(&["bench", "--genome", g, "--device", "tpu"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("expected auto, wgpu, wgpu:N"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_directory_another_process_writes_is_refused_by_search_and_block_search() {
    let dir = tempfile::tempdir().unwrap();
    let held = dir.path().join("held");
    // This test process holds the lock, as a running search would.
    let _lock = diffnas::lock::DirLock::take(&held).unwrap();
    let h = held.to_str().unwrap();
    let mine = format!("pid {}", std::process::id());
    for args in [
        vec![
            "search",
            "random",
            "--evaluator",
            "stub",
            "--trials",
            "1",
            "--run-dir",
            h,
            "--device",
            "flex",
        ],
        vec![
            "search",
            "block",
            "--teacher",
            "tests/fixtures/fmnist-tiny",
            "--run-dir",
            h,
            "--device",
            "flex",
        ],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("in use by another diffnas process") && stderr(&o).contains(&mine),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    // Read-only commands take no lock.
    let o = run(&["report", h]);
    assert!(!stderr(&o).contains("in use"), "{}", stderr(&o));
}

/// A tmpfs of `mib` MiB at `dir`, unmounted on drop (root, as the Slurm tests).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: usize) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount runs");
        assert!(
            o.status.success(),
            "mounting a tmpfs needs root (as CI has): {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_training_with_a_clear_error_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("images");
    image_folder(&data_dir, 12);
    let genome = dir.path().join("g.json");
    std::fs::write(&genome, tiny16().to_json_pretty()).unwrap();
    let data = format!("folder:{}", data_dir.display());
    // Room for one checkpoint of tiny16 (model, EMA, optimizer: about 10 MB), not two.
    let mount = dir.path().join("small");
    let _fs = Tmpfs::mount(&mount, 16);
    let run_dir = mount.join("run");
    let o = run(&train_args(
        genome.to_str().unwrap(),
        &data,
        run_dir.to_str().unwrap(),
    ));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("No space left on device") && e.contains("checkpoints"),
        "{e}"
    );
    // The last published checkpoint is intact and resumable.
    let latest = diffnas::train::latest_checkpoint(&run_dir).expect("a checkpoint");
    assert_eq!(latest_step(&run_dir), 5);
    let state = diffnas::train::checkpoint::read_state(&latest).unwrap();
    assert!(state.verify(&latest).unwrap(), "checked and intact");
    // A read-only file system: refused the same way, the checkpoint still intact.
    let o = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&mount)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["train", "--resume", "--run-dir", run_dir.to_str().unwrap()]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("Read-only file system"),
        "{}",
        stderr(&o)
    );
    assert!(state.verify(&latest).unwrap());
}

/// `--precision f16` through the CLI: `train` runs with loss scaling and writes the precision
/// and the scale into its run (train.json, log.jsonl), a resume that asks for another
/// precision is refused naming both, `sample` and `bench` take the flag, and an unknown value
/// is a bad flag.
#[test]
fn precision_flag_trains_samples_and_benches_in_f16() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("images");
    image_folder(&data_dir, 8);
    let genome = dir.path().join("g.json");
    let mut g = tiny16();
    g.dropout = 0.0;
    std::fs::write(&genome, g.to_json_pretty()).unwrap();
    let data = format!("folder:{}", data_dir.display());
    let run_dir = dir.path().join("r");
    let rd = run_dir.to_str().unwrap();
    let mut args = train_args(genome.to_str().unwrap(), &data, rd);
    args.extend(["--precision", "f16", "--stop-at", "10"]);
    let o = run(&args);
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let train_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("train.json")).unwrap()).unwrap();
    assert_eq!(train_json["config"]["precision"], "f16", "{train_json}");
    let log = std::fs::read_to_string(run_dir.join("log.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert!(last["loss_scale"].as_f64().unwrap() > 0.0, "{last}");

    let o = run(&["train", "--resume", "--run-dir", rd, "--precision", "f32"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--precision f32 differs from the f16 stored"),
        "{}",
        stderr(&o)
    );
    let o = run(&["train", "--resume", "--run-dir", rd, "--samples", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("at step 40 of 40"), "{}", stderr(&o));

    let out = dir.path().join("s.png");
    let o = run(&[
        "sample",
        rd,
        "--n",
        "2",
        "--steps",
        "2",
        "--device",
        "flex",
        "--precision",
        "bf16",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.is_file());

    let json = dir.path().join("bench.json");
    let o = run(&[
        "bench",
        "--genome",
        genome.to_str().unwrap(),
        "--batch-size",
        "2",
        "--device",
        "flex",
        "--train-steps",
        "2",
        "--sample-evals",
        "1",
        "--warmup",
        "1",
        "--precision",
        "f16",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["precision"], "f16", "{r}");
    assert!(r["loss_scale"]["scale"].as_f64().unwrap() > 0.0, "{r}");

    let o = run(&["sample", rd, "--device", "flex", "--precision", "fp8"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("fp8"), "{}", stderr(&o));
}
