//! The `diffnas` binary: exit codes and messages, and a real kill-and-resume of `train`.

use crate::common::{param_values, tiny16};
use burn::tensor::Device;
use diffnas::cli::load_denoiser;
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
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(latest_step(&b) < 40, "killed before the end");

    // A second run into the same folder without --resume refuses.
    let o = run(&train_args(gs, &data, b.to_str().unwrap()));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));

    let o = run(&[
        "train",
        "--resume",
        "--device",
        "flex",
        "--run-dir",
        b.to_str().unwrap(),
        "--steps",
        "40",
        "--samples",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resumed at step"), "{}", stderr(&o));

    let device = Device::flex();
    for w in [diffnas::cli::Weights::Model, diffnas::cli::Weights::Ema] {
        let (ma, ..) = load_denoiser(&a, w, &device).unwrap();
        let (mb, ..) = load_denoiser(&b, w, &device).unwrap();
        assert!(
            param_values(&ma) == param_values(&mb),
            "{w:?} weights differ"
        );
    }

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
