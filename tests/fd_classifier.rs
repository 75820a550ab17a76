//! The offline feature space on real Fashion-MNIST: a classifier trained here, then
//! FD-classifier orders held-out real images < a trained model's samples < noise; and the
//! `eval` commands end to end (train-classifier, cached statistics, JSON output).
//!
//! The trained model is tests/fixtures/fmnist-tiny: the EMA weights of the foundation's main
//! job (tiny preset, 2000 steps of 32 images on Fashion-MNIST).

use crate::data::fashion_dir;
use burn::tensor::Device;
use diffnas::data::{DataSource, Split};
use diffnas::diffusion::{NoiseSchedule, SamplerKind};
use diffnas::eval::classifier::{
    ClassifierMeta, ClassifierTraining, LabelledImages, train_classifier,
};
use diffnas::eval::extract::{ClassifierExtractor, FeatureExtractor, dataset_source};
use diffnas::eval::reference::Reference;
use diffnas::eval::rfid::{GenerationConfig, KidConfig, score_denoiser, score_images};
use diffnas::rundir::{LoadedRun, Weights, load_denoiser};
use std::path::Path;
use std::process::Command;

fn fixture_run() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fmnist-tiny")
}

#[test]
fn fd_classifier_ranks_real_model_noise() {
    let Some(dir) = fashion_dir() else { return };
    let src = DataSource::FashionMnist(Some(dir));
    let train = src.load(Split::Train).unwrap();
    let test = src.load(Split::Test).unwrap();
    let (tl, vl) = (train.labels.clone().unwrap(), test.labels.clone().unwrap());
    let per = 28 * 28;
    let n_train = 10_000;
    let tr = LabelledImages {
        pixels: &train.pixels[..n_train * per],
        labels: &tl[..n_train],
        shape: [n_train, 1, 28, 28],
    };
    let te = LabelledImages {
        pixels: &test.pixels[..2000 * per],
        labels: &vl[..2000],
        shape: [2000, 1, 28, 28],
    };
    let cfg = ClassifierTraining {
        epochs: 1,
        batch_size: 100,
        lr: 2e-3,
        seed: 0,
    };
    let t0 = std::time::Instant::now();
    let (net, acc) = train_classifier(&tr, &te, 10, &cfg, &Device::flex().autodiff(), &mut |_| {});
    eprintln!(
        "classifier: {:.1}% after 1 epoch of 10k ({:.0} s)",
        100.0 * acc,
        t0.elapsed().as_secs_f64()
    );
    assert!(acc > 0.75, "test accuracy {acc}");
    let meta = ClassifierMeta {
        input: [1, 28, 28],
        classes: 10,
        data: "fashion-mnist".into(),
        train_images: n_train,
        test_accuracy: acc,
        epochs: 1,
        seed: 0,
    };
    let device = Device::flex();
    let ext = ClassifierExtractor::new(net, meta, "test-only", &device);

    // Reference: 5,000 training images (not the ones scored below).
    let n_ref = 5000;
    let mut next_ref = dataset_source(&train, 20_000);
    let sum =
        diffnas::eval::extract::summarise(&ext, n_ref, 1000, &mut next_ref, &mut |_| {}).unwrap();
    let reference = Reference::from_summary(
        sum,
        &ext.id().clone(),
        "fashion-mnist",
        "train",
        [1, 28, 28],
    );
    let n = 300;
    let kid = Some(KidConfig {
        subsets: 20,
        subset_size: 300,
        seed: 0,
    });
    let mut real = dataset_source(&test, 5000);
    let real = score_images(&ext, &reference, n, kid, &mut real, &mut |_| {}).unwrap();
    let mut noise = |s: usize, c: usize| -> Result<_, String> {
        Ok((
            diffnas::eval::synthetic::bytes(s as u64 + 1, c * per),
            [c, 1, 28, 28],
        ))
    };
    let noise = score_images(&ext, &reference, n, kid, &mut noise, &mut |_| {}).unwrap();
    let LoadedRun {
        model,
        genome,
        files,
        ..
    } = load_denoiser(&fixture_run(), Weights::Ema, &device).unwrap();
    let schedule = NoiseSchedule::new(files.config.beta_schedule, files.config.timesteps).unwrap();
    let generation = GenerationConfig {
        n,
        sampler: SamplerKind::Ddim,
        steps: 10,
        eta: 0.0,
        seed: 0,
        batch_size: 100,
        precision: diffnas::precision::Precision::F32,
    };
    let t0 = std::time::Instant::now();
    let spec = [genome.image.channels, genome.image.size, genome.image.size];
    let model_score = score_denoiser(
        &model,
        schedule,
        spec,
        &generation,
        &ext,
        &reference,
        kid,
        &device,
        &mut |_| {},
    )
    .unwrap();
    eprintln!(
        "FD-classifier at N = {n}: real test {:.3}, model {:.3} ({:.0} s), noise {:.3}; KID {:.4} / {:.4} / {:.4}",
        real.value,
        model_score.value,
        t0.elapsed().as_secs_f64(),
        noise.value,
        real.kid.as_ref().unwrap().mean,
        model_score.kid.as_ref().unwrap().mean,
        noise.kid.as_ref().unwrap().mean,
    );
    assert_eq!(model_score.metric, "FD-classifier");
    assert_eq!(model_score.generation.as_ref().unwrap().steps, 10);
    assert!(
        real.value < model_score.value,
        "real {} vs model {}",
        real.value,
        model_score.value
    );
    assert!(
        model_score.value < noise.value,
        "model {} vs noise {}",
        model_score.value,
        noise.value
    );
    let k = |s: &diffnas::eval::rfid::Score| s.kid.as_ref().unwrap().mean;
    assert!(k(&real) < k(&model_score) && k(&model_score) < k(&noise));
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn eval_commands_end_to_end() {
    let Some(dir) = fashion_dir() else { return };
    let home = tempfile::tempdir().unwrap();
    let data = format!("fashion-mnist:{}", dir.display());
    let cmd = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_diffnas"))
            .args(args)
            .env("DIFFNAS_HOME", home.path())
            .env_remove("DIFFNAS_INCEPTION")
            .output()
            .unwrap()
    };
    // Nothing to extract features with yet: a clear error, exit code 2.
    let o = cmd(&[
        "eval", "fid", "--data", &data, "--n", "100", "--device", "flex",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("weights fetch inception") && err.contains("train-classifier"),
        "{err}"
    );

    let o = cmd(&[
        "eval",
        "train-classifier",
        "--data",
        &data,
        "--epochs",
        "1",
        "--max-images",
        "3000",
        "--batch-size",
        "100",
        "--device",
        "flex",
    ]);
    let v = json(&o);
    assert!(v["meta"]["test_accuracy"].as_f64().unwrap() > 0.6, "{v}");
    assert_eq!(v["extractor"]["distance"], "FD-classifier");

    // Score the test split's first 500 against the test split's statistics (cached on first use).
    let fid = |n: &str, extra: &[&str]| {
        let mut a = vec![
            "eval",
            "fid",
            "--n",
            n,
            "--ref-split",
            "test",
            "--kid-subset-size",
            "200",
            "--kid-subsets",
            "5",
            "--device",
            "flex",
        ];
        a.extend_from_slice(extra);
        cmd(&a)
    };
    let o = fid(
        "500",
        &["--data", &data, "--split", "test", "--ref-data", &data],
    );
    let first = json(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("computing them once"));
    assert_eq!(first["metric"], "FD-classifier");
    assert_eq!(first["n"], 500);
    assert_eq!(first["reference"]["n"], 10000);
    assert!(first["value"].as_f64().unwrap() < 5.0, "{first}");
    let o = fid(
        "500",
        &["--data", &data, "--split", "test", "--ref-data", &data],
    );
    let again = json(&o);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("computing them once"));
    assert_eq!(
        first["value"], again["value"],
        "cached statistics give the same number"
    );

    // A folder of PNGs holding the same 500 test images gives the same number, and so do
    // statistics written by `eval stats` and passed with --reference.
    let pngs = home.path().join("pngs");
    std::fs::create_dir_all(&pngs).unwrap();
    let test = DataSource::FashionMnist(Some(dir.clone()))
        .load(Split::Test)
        .unwrap();
    for i in 0..500 {
        image::GrayImage::from_raw(28, 28, test.image(i).to_vec())
            .unwrap()
            .save(pngs.join(format!("{i:05}.png")))
            .unwrap();
    }
    let o = fid(
        "500",
        &["--images", pngs.to_str().unwrap(), "--ref-data", &data],
    );
    assert_eq!(json(&o)["value"], first["value"]);
    let stats = home.path().join("test-stats.safetensors");
    let o = cmd(&[
        "eval",
        "stats",
        "--data",
        &data,
        "--split",
        "test",
        "--out",
        stats.to_str().unwrap(),
        "--device",
        "flex",
    ]);
    assert_eq!(json(&o)["meta"]["n"], 10000);
    let o = fid(
        "500",
        &[
            "--data",
            &data,
            "--split",
            "test",
            "--reference",
            stats.to_str().unwrap(),
        ],
    );
    assert_eq!(json(&o)["value"], first["value"]);

    // A run directory: generated, scored, settings recorded.
    let run = fixture_run();
    let o = fid(
        "200",
        &[run.to_str().unwrap(), "--steps", "5", "--ref-data", &data],
    );
    let v = json(&o);
    assert_eq!(v["generation"]["steps"], 5);
    assert_eq!(v["generation"]["sampler"], "ddim");
    assert_eq!(v["n"], 200);
    assert!(v["value"].as_f64().unwrap() > first["value"].as_f64().unwrap());
}
