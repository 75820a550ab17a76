//! `diffnas export` and the model bundle it writes (`model::bundle`): exact f32 round trip,
//! f16 storage equal to rounding the weights, the index, and a clear error for every kind of
//! broken bundle.

use crate::common::param_values;
use burn::tensor::{Device, f16};
use diffnas::model::bundle::{BundleError, BundleIndex, BundleManifest, WeightDType, load_bundle};
use diffnas::rundir::{LoadedRun, Weights, load_denoiser};
use std::path::Path;
use std::process::{Command, Output};

const FIXTURE: &str = "tests/fixtures/fmnist-tiny";

fn export(out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffnas"))
        .args(["export", FIXTURE, "--out", out.to_str().unwrap()])
        .args(extra)
        .env("NO_COLOR", "1")
        .output()
        .expect("the binary runs")
}

struct Files {
    manifest: BundleManifest,
    manifest_text: String,
    genome: Vec<u8>,
    weights: Vec<u8>,
}

fn read(dir: &Path) -> Files {
    let manifest_text = std::fs::read_to_string(dir.join("model.json")).unwrap();
    Files {
        manifest: BundleManifest::from_json(&manifest_text).unwrap(),
        manifest_text,
        genome: std::fs::read(dir.join("genome.json")).unwrap(),
        weights: std::fs::read(dir.join("weights.bpk")).unwrap(),
    }
}

#[test]
fn export_round_trips_weights_and_lists_bundles() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("models");
    let o = export(&out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = export(&out, &["--name", "tiny-half", "--dtype", "f16"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let device = Device::flex();
    let LoadedRun {
        model: reference,
        genome,
        files,
        ..
    } = load_denoiser(Path::new(FIXTURE), Weights::Ema, &device).unwrap();
    let want = param_values(&reference);

    // f32: bit-identical weights, manifest consistent with the run.
    let f = read(&out.join("fmnist-tiny"));
    assert_eq!(f.manifest.name, "fmnist-tiny");
    assert_eq!(f.manifest.dtype, WeightDType::F32);
    assert_eq!(f.manifest.timesteps, files.config.timesteps);
    assert_eq!(f.manifest.beta_schedule, files.config.beta_schedule);
    assert_eq!(f.manifest.image, genome.image);
    assert_eq!(
        f.manifest.params,
        diffnas::genome::cost(&genome).unwrap().params
    );
    assert_eq!(f.manifest.weights.bytes, f.weights.len() as u64);
    let (unet, g) = load_bundle(&f.manifest, &f.genome, f.weights.clone(), &device).unwrap();
    assert_eq!(g, genome);
    assert_eq!(param_values(&unet), want);

    // f16: half the bytes, each weight equal to its f16 rounding, widened to f32 on load.
    let h = read(&out.join("tiny-half"));
    assert_eq!(h.manifest.dtype, WeightDType::F16);
    let ratio = h.weights.len() as f64 / f.weights.len() as f64;
    assert!(
        (0.45..0.55).contains(&ratio),
        "f16 / f32 size ratio {ratio}"
    );
    let (half, _) = load_bundle(&h.manifest, &h.genome, h.weights.clone(), &device).unwrap();
    let rounded: Vec<Vec<f32>> = want
        .iter()
        .map(|p| p.iter().map(|&v| f16::from_f32(v).to_f32()).collect())
        .collect();
    assert_eq!(param_values(&half), rounded);
    assert_ne!(
        rounded, want,
        "f16 rounding changed nothing: the test would not see a cast"
    );

    // The index lists both, sorted, with their download sizes.
    let index: BundleIndex =
        serde_json::from_str(&std::fs::read_to_string(out.join("index.json")).unwrap()).unwrap();
    let names: Vec<&str> = index.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["fmnist-tiny", "tiny-half"]);
    assert_eq!(index.models[1].manifest, "tiny-half/model.json");
    assert_eq!(
        index.models[1].bytes,
        h.manifest.genome.bytes + h.manifest.weights.bytes
    );

    // Re-exporting replaces the entry instead of duplicating it.
    assert!(export(&out, &["--name", "tiny-half"]).status.success());
    let index: BundleIndex =
        serde_json::from_str(&std::fs::read_to_string(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(index.models.len(), 2);
    assert_eq!(index.models[1].dtype, WeightDType::F32);
}

#[test]
fn broken_bundles_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("models");
    assert!(export(&out, &[]).status.success());
    let f = read(&out.join("fmnist-tiny"));
    let device = Device::flex();
    let load = |m: &BundleManifest, g: &[u8], w: Vec<u8>| match load_bundle(m, g, w, &device) {
        Ok(_) => panic!("a broken bundle loaded"),
        Err(e) => e,
    };

    // One flipped byte: same size, different hash.
    let mut w = f.weights.clone();
    let mid = w.len() / 2;
    w[mid] ^= 0x40;
    let e = load(&f.manifest, &f.genome, w);
    assert!(matches!(e, BundleError::Hash { .. }), "{e}");
    assert!(e.to_string().contains("weights.bpk: SHA-256"), "{e}");

    // Truncated download.
    let e = load(&f.manifest, &f.genome, f.weights[..1000].to_vec());
    assert!(e.to_string().contains("weights.bpk: expected"), "{e}");
    assert!(e.to_string().contains("got 1000"), "{e}");

    // Another genome (valid, hashes updated to match): the weights do not fit it.
    let mut other =
        diffnas::genome::Genome::from_json(std::str::from_utf8(&f.genome).unwrap()).unwrap();
    other.base_channels = 32;
    let other_json = other.to_json_pretty().into_bytes();
    let mut m = f.manifest.clone();
    m.genome = diffnas::model::bundle::FileEntry::of("genome.json", &other_json);
    let e = load(&m, &other_json, f.weights.clone());
    assert!(matches!(e, BundleError::Weights(_)), "{e}");
    assert!(
        e.to_string()
            .starts_with("weights.bpk does not fit the genome"),
        "{e}"
    );

    // A bundle format from a newer writer.
    let newer = f
        .manifest_text
        .replacen("\"format\": 1", "\"format\": 2", 1);
    let e = BundleManifest::from_json(&newer).unwrap_err();
    assert!(e.to_string().contains("bundle format 2"), "{e}");
    assert!(
        BundleManifest::from_json("{")
            .unwrap_err()
            .to_string()
            .contains("model.json")
    );

    // Bad CLI input: exit code 2 and the flag named.
    let o = export(&out, &["--name", "../escape"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--name \"../escape\""));
    let o = Command::new(env!("CARGO_BIN_EXE_diffnas"))
        .args(["export", "no/such/run", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no/such/run"));
}
