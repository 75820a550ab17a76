//! Property-based tests of every reader of outside input: genome JSON, LLM replies, IDX,
//! CIFAR-10, image folders, export bundles, checkpoint state and trial logs. No input may
//! panic; every rejection is an error value. Inputs are random bytes and, more usefully, valid
//! files with bytes flipped, cut or spliced. A fixed seed and a bounded number of cases keep CI
//! time predictable; `DIFFNAS_FUZZ_CASES=100000 cargo test --release -- fuzz::` runs longer.

use crate::common::tiny16;
use burn::module::Module;
use burn::tensor::Device;
use diffnas::genome::{Genome, ImageSpec, SearchSpace};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::collections::HashSet;

/// A runner with a fixed seed and `default` cases (or `DIFFNAS_FUZZ_CASES`).
fn runner(default: u32) -> TestRunner {
    let cases = std::env::var("DIFFNAS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    )
}

/// Edits of a valid input: flip, cut, splice random bytes.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Cut(usize),
    Insert(usize, Vec<u8>),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, b)| Edit::Flip(i, b)),
        any::<usize>().prop_map(Edit::Cut),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(i, b)| Edit::Insert(i, b)),
    ];
    proptest::collection::vec(edit, 1..4)
}

fn apply(base: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = base.to_vec();
    for e in edits {
        if v.is_empty() {
            break;
        }
        match e {
            Edit::Flip(i, b) => {
                let i = i % v.len();
                v[i] ^= b;
            }
            Edit::Cut(i) => v.truncate(i % v.len()),
            Edit::Insert(i, b) => {
                let i = i % (v.len() + 1);
                v.splice(i..i, b.iter().copied());
            }
        }
    }
    v
}

/// Valid input edited, or random bytes.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => edits().prop_map(move |e| apply(&base, &e)),
        1 => proptest::collection::vec(any::<u8>(), 0..256),
    ]
}

#[test]
fn genome_json_never_panics() {
    let base = tiny16().to_json_pretty().into_bytes();
    runner(2000)
        .run(&mutated(base), |bytes| {
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(g) = Genome::from_json(&text) {
                let _ = g.canonical_json();
                let _ = g.hash();
                if g.check().is_ok() {
                    let _ = diffnas::genome::cost(&g);
                    let _ = SearchSpace::for_image(g.image).validate(&g);
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn llm_replies_never_panic() {
    let space = SearchSpace::for_image(ImageSpec {
        channels: 1,
        size: 28,
    });
    let reply = format!(
        "Here are two candidates:\n```json\n[{}, {}]\n```\nThey trade width for depth.",
        tiny16().to_json_pretty(),
        Genome::tiny().to_json_pretty()
    );
    let seen = HashSet::new();
    runner(1000)
        .run(&mutated(reply.into_bytes()), |bytes| {
            let text = String::from_utf8_lossy(&bytes);
            let parsed = diffnas::search::llm::parse::parse_reply(&text, &space, &seen);
            // Every accepted genome is valid in the space.
            for g in &parsed.genomes {
                prop_assert!(space.validate(g).is_ok());
            }
            Ok(())
        })
        .unwrap();
}

/// A small valid IDX image file: `n` images of `h x w`.
fn idx_images(n: u32, h: u32, w: u32) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 3];
    for d in [n, h, w] {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend((0..n * h * w).map(|i| (i % 251) as u8));
    v
}

#[test]
fn idx_and_cifar_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let idx = dir.path().join("images-idx3-ubyte");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &idx_images(3, 4, 4)).unwrap();
    let gz = gz.finish().unwrap();
    let bases = [idx_images(3, 4, 4), gz];
    let cifar = dir.path().join("test_batch.bin");
    let cifar_base: Vec<u8> = (0..2 * 3073).map(|i| (i % 10) as u8).collect();
    runner(200)
        .run(
            &(
                mutated(bases[0].clone()),
                mutated(bases[1].clone()),
                mutated(cifar_base),
            ),
            |(a, b, c)| {
                for bytes in [&a, &b] {
                    std::fs::write(&idx, bytes).unwrap();
                    if let Ok((pixels, n, h, w)) = diffnas::data::read_idx_images(&idx) {
                        prop_assert_eq!(pixels.len(), n * h * w);
                    }
                    let _ = diffnas::data::read_idx_labels(&idx);
                }
                std::fs::write(&cifar, &c).unwrap();
                if let Ok(d) = diffnas::data::read_cifar10(&cifar, diffnas::data::Split::Test) {
                    prop_assert_eq!(d.pixels.len(), d.len * 3 * 32 * 32);
                }
                Ok(())
            },
        )
        .unwrap();
    // Dimensions whose product overflows are refused, not wrapped.
    let mut v = vec![0, 0, 8, 3];
    for _ in 0..3 {
        v.extend_from_slice(&u32::MAX.to_be_bytes());
    }
    std::fs::write(&idx, &v).unwrap();
    assert!(diffnas::data::read_idx_images(&idx).is_err());
}

#[test]
fn image_folders_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut png = Vec::new();
    image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * 30 + y) as u8]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    runner(300)
        .run(&mutated(png), |bytes| {
            let f = tempfile::tempdir_in(dir.path()).unwrap();
            std::fs::write(f.path().join("a.png"), &bytes).unwrap();
            let _ = diffnas::data::read_image_folder(f.path());
            Ok(())
        })
        .unwrap();
}

#[test]
fn bundles_checkpoint_states_and_trial_logs_never_panic() {
    use diffnas::model::bundle::{BundleManifest, FileEntry, load_bundle, weights_bytes};
    let device = Device::flex();
    let genome = tiny16();
    let unet = diffnas::model::Unet::new(&genome, &device).unwrap();
    let weights = weights_bytes(unet.clone(), diffnas::model::bundle::WeightDType::F16).unwrap();
    let genome_json = genome.to_json_pretty().into_bytes();
    // A manifest as `export` writes it, through its own parser.
    let manifest_text = serde_json::to_string(&BundleManifest {
        format: diffnas::model::bundle::BUNDLE_FORMAT,
        name: "m".into(),
        genome: FileEntry::of("genome.json", &genome_json),
        weights: FileEntry::of("weights.bpk", &weights),
        dtype: diffnas::model::bundle::WeightDType::F16,
        beta_schedule: diffnas::diffusion::BetaSchedule::Linear,
        timesteps: 1000,
        image: genome.image,
        params: unet.num_params() as u64,
        macs: 1,
        source: "fuzz".into(),
        default_steps: 20,
    })
    .unwrap();
    let manifest = BundleManifest::from_json(&manifest_text);
    let dir = tempfile::tempdir().unwrap();
    let state = serde_json::to_vec(&diffnas::train::TrainState::start(3)).unwrap();
    runner(200)
        .run(
            &(
                mutated(manifest_text.clone().into_bytes()),
                mutated(weights.clone()),
                mutated(state),
                mutated(b"{\"hash\":\"ab\",\"genome\":{}}\n{\"x\":1}\n".to_vec()),
            ),
            |(m, w, s, log)| {
                let _ = BundleManifest::from_json(&String::from_utf8_lossy(&m));
                // Damaged weights reach the decoder when the manifest is made to match them.
                if let Ok(good) = &manifest {
                    let mut matching = good.clone();
                    matching.weights = FileEntry::of("weights.bpk", &w);
                    let _ = load_bundle(&matching, &genome_json, w.clone(), &device);
                    let _ = load_bundle(good, &genome_json, w, &device);
                }
                std::fs::write(dir.path().join(diffnas::train::STATE_FILE), &s).unwrap();
                if let Ok(st) = diffnas::train::checkpoint::read_state(dir.path()) {
                    let _ = st.verify(dir.path());
                }
                let sdir = tempfile::tempdir_in(dir.path()).unwrap();
                std::fs::write(sdir.path().join("trials.jsonl"), &log).unwrap();
                let _ = diffnas::search::TrialLog::open(sdir.path());
                Ok(())
            },
        )
        .unwrap();
    assert!(manifest.is_ok(), "the base manifest parses: {manifest:?}");
}
