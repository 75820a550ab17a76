//! Metrics: the FID Inception against pytorch-fid (features within 1e-5 of the largest on flex;
//! measured 6e-7) (fixture from tests/fixtures/make_fid_fixture.py),
//! strict weight loading, Fréchet distance and KID against closed forms and scipy/numpy values,
//! the statistics cache, and the resumable, verified download against a local HTTP server.

use crate::common::max_abs_diff;
use burn::tensor::Device;
use diffnas::eval::ExtractorId;
use diffnas::eval::extract::{FeatureExtractor, InceptionExtractor};
use diffnas::eval::inception::{FidInception, Problem, TensorMap, WeightsError, expected_tensors};
use diffnas::eval::reference::{Reference, ReferenceError, ReferenceMeta};
use diffnas::eval::stats::{FeatureStats, StatsAccumulator, frechet_distance, kid, kid_first_rows};
use diffnas::eval::synthetic;
use serde::Deserialize;
use std::path::Path;

#[derive(Deserialize)]
pub struct ParityImage {
    pub name: String,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub seed: u64,
}

#[derive(Deserialize)]
pub struct Resized {
    pub sum: f64,
    pub first: Vec<f64>,
}

#[derive(Deserialize)]
pub struct Parity {
    pub images: Vec<ParityImage>,
    pub tensors: Vec<(String, Vec<usize>)>,
    pub resized: Vec<Resized>,
    pub features: Vec<Vec<f32>>,
}

pub fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn parity() -> Parity {
    serde_json::from_slice(&std::fs::read(fixture("fid_parity.json")).unwrap()).unwrap()
}

pub fn image(im: &ParityImage) -> (Vec<u8>, [usize; 4]) {
    let n = im.channels * im.height * im.width;
    (
        synthetic::bytes(im.seed, n),
        [1, im.channels, im.height, im.width],
    )
}

/// Compare features with pytorch-fid's: max |diff| <= tol * max |reference| per image.
/// Returns the largest relative difference seen.
pub fn check_features(ext: &dyn FeatureExtractor, p: &Parity, which: &[usize], tol: f32) -> f32 {
    let mut worst = 0.0f32;
    for &i in which {
        let (px, shape) = image(&p.images[i]);
        let got = ext.extract(&px, shape);
        let want = &p.features[i];
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = max_abs_diff(&got, want);
        eprintln!(
            "{}: max |diff| {d:.3e}, max |ref| {scale:.3e}, relative {:.2e}",
            p.images[i].name,
            d / scale
        );
        assert!(scale > 0.1, "reference features are degenerate");
        assert!(
            d <= tol * scale,
            "{}: features differ from pytorch-fid by {d} (max {scale})",
            p.images[i].name
        );
        worst = worst.max(d / scale);
    }
    worst
}

#[test]
fn inception_tensors_match_pytorch_fid_state_dict() {
    let p = parity();
    let theirs: Vec<(String, Vec<usize>)> = p
        .tensors
        .into_iter()
        .filter(|(n, _)| !diffnas::eval::inception::ignorable(n))
        .collect();
    let mut ours = expected_tensors();
    let mut theirs = theirs;
    ours.sort();
    theirs.sort();
    assert_eq!(ours.len(), 470);
    assert_eq!(ours, theirs);
}

#[test]
fn preprocessing_matches_pytorch_interpolate() {
    let p = parity();
    let device = Device::flex();
    for (im, want) in p.images.iter().zip(&p.resized) {
        let (px, shape) = image(im);
        let x = diffnas::eval::extract::unit_tensor(&px, shape, &device);
        let x = FidInception::preprocess(x);
        assert_eq!(x.dims(), [1, 3, 299, 299]);
        let v = crate::common::to_vec(x);
        let sum: f64 = v.iter().map(|&x| x as f64).sum();
        assert!(
            (sum - want.sum).abs() <= 1e-4 * v.len() as f64 * 1e-3 + 1e-3 * want.sum.abs(),
            "{}: sum {sum} vs {}",
            im.name,
            want.sum
        );
        for (a, b) in v.iter().zip(&want.first) {
            assert!((*a as f64 - b).abs() < 1e-5, "{}: {a} vs {b}", im.name);
        }
    }
}

#[test]
fn inception_features_match_pytorch_fid_on_flex() {
    let p = parity();
    let ext = InceptionExtractor::synthetic(&Device::flex());
    let worst = check_features(&ext, &p, &(0..p.images.len()).collect::<Vec<_>>(), 1e-5);
    eprintln!("flex vs pytorch-fid: worst relative difference {worst:.2e}");
}

fn mismatch(e: WeightsError) -> Vec<Problem> {
    match e {
        WeightsError::Mismatch { problems, .. } => problems,
        other => panic!("expected a mismatch, got {other}"),
    }
}

#[test]
fn strict_loading_names_missing_and_misshaped_tensors() {
    // A real torch.save file: the first layer with formula values, a reshaped second layer.
    let part = TensorMap::from_pytorch(&fixture("inception_part.pth")).unwrap();
    let (shape, w) = &part.tensors["Conv2d_1a_3x3.conv.weight"];
    assert_eq!(shape, &vec![32, 3, 3, 3]);
    assert_eq!(
        w,
        &synthetic::inception_tensor("Conv2d_1a_3x3.conv.weight", shape)
    );
    let problems = mismatch(part.check().unwrap_err());
    assert!(problems.contains(&Problem::Shape {
        name: "Conv2d_2a_3x3.conv.weight".into(),
        expected: vec![32, 32, 3, 3],
        found: vec![32, 32, 3, 2],
    }));
    assert!(problems.contains(&Problem::Missing(
        "Mixed_7c.branch_pool.bn.running_var".into()
    )));
    assert!(
        !problems
            .iter()
            .any(|p| matches!(p, Problem::Missing(n) if n.starts_with("Conv2d_1a_3x3")))
    );
    // The extractor refuses it, and the message names the tensors.
    let err = InceptionExtractor::load(&fixture("inception_part.pth"), &Device::flex())
        .err()
        .expect("partial weights must fail")
        .to_string();
    assert!(err.contains("Conv2d_2a_3x3.conv.weight"), "{err}");
    assert!(err.contains("[32, 32, 3, 2]"), "{err}");

    // In memory: one tensor removed, one reshaped, one stray; fc.* is allowed.
    let mut w = TensorMap::synthetic();
    assert!(w.check().is_ok());
    w.tensors
        .insert("fc.weight".into(), (vec![1008, 2048], vec![]));
    assert!(w.check().is_ok());
    w.tensors.remove("Mixed_6c.branch7x7_2.bn.bias");
    let v = w
        .tensors
        .remove("Mixed_5b.branch_pool.conv.weight")
        .unwrap();
    w.tensors.insert(
        "Mixed_5b.branch_pool.conv.weight".into(),
        (vec![32, 192, 1, 2], v.1),
    );
    w.tensors
        .insert("Mixed_8a.conv.weight".into(), (vec![1], vec![0.0]));
    let problems = mismatch(FidInception::from_tensors(&w, &Device::flex()).unwrap_err());
    assert_eq!(
        problems,
        vec![
            Problem::Shape {
                name: "Mixed_5b.branch_pool.conv.weight".into(),
                expected: vec![32, 192, 1, 1],
                found: vec![32, 192, 1, 2],
            },
            Problem::Missing("Mixed_6c.branch7x7_2.bn.bias".into()),
            Problem::Unexpected("Mixed_8a.conv.weight".into()),
        ]
    );
}

/// The whole formula state dict as a real .pth (written by the fixture script with
/// `--save-pth`): loads strictly, converts to Burn's format, and both give the reference
/// features. Needs the file, so it runs where DIFFNAS_FORMULA_PTH points at one.
#[test]
fn formula_pth_loads_converts_and_matches() {
    let Some(pth) = std::env::var_os("DIFFNAS_FORMULA_PTH") else {
        eprintln!("DIFFNAS_FORMULA_PTH not set: skipping the full-checkpoint round trip");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("formula.pth");
    std::fs::copy(&pth, &local).unwrap();
    let p = parity();
    let device = Device::flex();
    let ext = InceptionExtractor::load(&local, &device).unwrap();
    assert_eq!(ext.id().kind, "inception-v3-custom-weights");
    check_features(&ext, &p, &[0], 1e-5);
    let bpk = local.with_extension("bpk");
    assert!(bpk.is_file(), "the .pth is converted once");
    let again = InceptionExtractor::load(&bpk, &device).unwrap();
    assert_eq!(again.id(), ext.id());
    check_features(&again, &p, &[1], 1e-5);
}

fn stats_from_diag(mu: &[f64], var: &[f64], n: usize) -> FeatureStats {
    let d = mu.len();
    let mut sigma = vec![0.0; d * d];
    for i in 0..d {
        sigma[i * d + i] = var[i];
    }
    FeatureStats {
        n,
        dim: d,
        mu: mu.to_vec(),
        sigma,
    }
}

#[test]
fn frechet_closed_forms() {
    // Identical statistics: 0.
    let x: Vec<f32> = synthetic::unit(7, 400 * 16)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let s = FeatureStats::of(&x, 16).unwrap();
    let f = frechet_distance(&s, &s).unwrap();
    assert!(f.value.abs() < 1e-10, "{}", f.value);
    // Diagonal covariances: |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2.
    let d = 64;
    let mu1: Vec<f64> = (0..d).map(|i| i as f64 * 0.1).collect();
    let mu2: Vec<f64> = (0..d).map(|i| 1.0 - i as f64 * 0.05).collect();
    let a: Vec<f64> = (0..d).map(|i| 0.5 + i as f64).collect();
    let b: Vec<f64> = (0..d).map(|i| 2.0 + (i as f64).sqrt()).collect();
    let want: f64 = mu1
        .iter()
        .zip(&mu2)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        + a.iter()
            .zip(&b)
            .map(|(x, y)| (x.sqrt() - y.sqrt()).powi(2))
            .sum::<f64>();
    let got = frechet_distance(
        &stats_from_diag(&mu1, &a, 5000),
        &stats_from_diag(&mu2, &b, 5000),
    )
    .unwrap();
    assert!(
        (got.value - want).abs() < 1e-9 * want,
        "{} vs {want}",
        got.value
    );
    assert!(got.warnings.is_empty());
    // Fewer samples than dimensions: still computed, with a warning.
    let few = frechet_distance(
        &stats_from_diag(&mu1, &a, 10),
        &stats_from_diag(&mu2, &b, 5000),
    )
    .unwrap();
    assert_eq!(few.warnings.len(), 1);
    // Mismatched dimensions and non-finite input are errors.
    assert!(frechet_distance(&s, &stats_from_diag(&mu1, &a, 10)).is_err());
    let mut bad = s.clone();
    bad.sigma[3] = f64::NAN;
    assert!(frechet_distance(&bad, &s).is_err());
}

#[derive(Deserialize)]
struct FrechetRef {
    n: usize,
    d: usize,
    kid_m: usize,
    frechet: f64,
    kid_full: f64,
    trace_s1: f64,
}

#[test]
fn frechet_2048_matches_scipy_and_kid_matches_numpy() {
    let r: FrechetRef =
        serde_json::from_slice(&std::fs::read(fixture("frechet_ref.json")).unwrap()).unwrap();
    let (n, d) = (r.n, r.d);
    let x = synthetic::unit(synthetic::fnv1a64("frechet-x"), n * d);
    let y: Vec<f32> = synthetic::unit(synthetic::fnv1a64("frechet-y"), n * d)
        .into_iter()
        .map(|v| (0.8 * v + 0.05) as f32)
        .collect();
    let mix = synthetic::unit(synthetic::fnv1a64("frechet-mix"), d * d);
    let s = 1.0 / (d as f64).sqrt();
    let xm = faer::Mat::from_fn(n, d, |i, j| x[i * d + j]);
    let mm = faer::Mat::from_fn(d, d, |i, j| mix[i * d + j] * s);
    let xmix = &xm * &mm;
    let x: Vec<f32> = (0..n * d)
        .map(|k| (xm[(k / d, k % d)] + xmix[(k / d, k % d)] * 0.5) as f32)
        .collect();
    // Streamed in uneven batches, as extraction does.
    let mut acc = StatsAccumulator::new(d);
    for rows in x.chunks(333 * d) {
        acc.push(rows);
    }
    let sx = acc.finish().unwrap();
    let sy = FeatureStats::of(&y, d).unwrap();
    let tr: f64 = (0..d).map(|i| sx.sigma[i * d + i]).sum();
    assert!(
        (tr - r.trace_s1).abs() < 1e-9 * r.trace_s1,
        "{tr} vs {}",
        r.trace_s1
    );
    let t0 = std::time::Instant::now();
    let f = frechet_distance(&sx, &sy).unwrap();
    eprintln!(
        "2048-d Fréchet: {:.9} (scipy {:.9}), {:.2e} relative, {:.1} s",
        f.value,
        r.frechet,
        (f.value - r.frechet).abs() / r.frechet,
        t0.elapsed().as_secs_f64()
    );
    assert!((f.value - r.frechet).abs() < 1e-8 * r.frechet);
    let k = kid_first_rows(&x, &y, d, r.kid_m);
    assert!(
        (k - r.kid_full).abs() < 1e-9 * r.kid_full.abs().max(1e-3),
        "{k} vs {}",
        r.kid_full
    );
    // The subset estimator: same sets give ~0, different sets give about the full value.
    let same = kid(&x, &x, d, 5, 200, 1).unwrap();
    assert!(same.mean.abs() < 0.2 * r.kid_full, "{}", same.mean);
    let diff = kid(&x, &y, d, 5, 200, 1).unwrap();
    assert!(
        (diff.mean - r.kid_full).abs() < 0.5 * r.kid_full,
        "{}",
        diff.mean
    );
}

#[test]
fn reference_file_round_trips_and_refuses_another_extractor() {
    let dir = tempfile::tempdir().unwrap();
    let d = 8;
    let feats: Vec<f32> = synthetic::unit(3, 50 * d)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let stats = FeatureStats::of(&feats, d).unwrap();
    let mut id = ExtractorId::classifier("abcdef0123456789ffff");
    id.dim = d;
    let r = Reference {
        meta: ReferenceMeta {
            extractor: id.clone(),
            data: "fashion-mnist".into(),
            split: "train".into(),
            image: [1, 28, 28],
            n: 50,
            kept: 20,
            seconds: 1.0,
            created_by: "test".into(),
        },
        stats: stats.clone(),
        features: feats[..20 * d].to_vec(),
    };
    let name = Reference::file_name("fashion-mnist:/x y", "train", [1, 28, 28], &id);
    assert!(!name.contains('/') && !name.contains(' '), "{name}");
    let path = dir.path().join(name);
    r.save(&path).unwrap();
    let back = Reference::load(&path, Some(&id)).unwrap();
    assert_eq!(back.stats, stats);
    assert_eq!(back.features, r.features);
    assert_eq!(back.meta, r.meta);
    let other = ExtractorId::inception("6726825d00");
    match Reference::load(&path, Some(&other)) {
        Err(ReferenceError::Extractor { found, .. }) => assert_eq!(*found, id),
        other => panic!("expected an extractor mismatch, got {other:?}"),
    }
    // A flipped byte anywhere (in the middle the features sit, which the format cannot see)
    // is caught by the SHA-256 recorded beside the file.
    flips_are_caught(&path, || {
        Reference::load(&path, None)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    std::fs::write(&path, b"not a statistics file").unwrap();
    assert!(matches!(
        Reference::load(&path, None),
        Err(ReferenceError::Format { .. })
    ));
    // A file from before the sidecars loads, with a warning naming it.
    r.save(&path).unwrap();
    assert!(!diffnas::integrity::unchecked_files().contains(&path));
    std::fs::remove_file(diffnas::eval::extract::sidecar_path(&path)).unwrap();
    assert!(Reference::load(&path, Some(&id)).is_ok());
    assert!(diffnas::integrity::unchecked_files().contains(&path));
}

#[test]
fn a_damaged_classifier_file_is_refused() {
    use diffnas::eval::classifier::{Classifier, ClassifierMeta};
    use diffnas::eval::extract::ClassifierExtractor;
    let device = burn::tensor::Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.bpk");
    let meta = ClassifierMeta {
        input: [1, 28, 28],
        classes: 10,
        data: "fashion-mnist".into(),
        train_images: 0,
        test_accuracy: 0.0,
        epochs: 0,
        seed: 0,
    };
    ClassifierExtractor::save(
        Classifier::new([1, 28, 28], 10, &device),
        meta,
        &path,
        &device,
    )
    .unwrap();
    assert!(ClassifierExtractor::load(&path, &device).is_ok());
    flips_are_caught(&path, || {
        ClassifierExtractor::load(&path, &device)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}

/// One flipped byte at the start, in the middle and at the end of `path` (each alone, the file
/// restored between) makes `load` refuse it as damaged, naming the file; intact, it loads.
fn flips_are_caught(path: &std::path::Path, load: impl Fn() -> Result<(), String>) {
    let good = std::fs::read(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    for at in [0, good.len() as i64 / 2, -1] {
        crate::common::flip(path, at);
        let e = load().expect_err("a flipped byte is refused");
        assert!(
            e.contains("damaged") && e.contains(&name),
            "offset {at}: {e}"
        );
        std::fs::write(path, &good).unwrap();
    }
    load().unwrap();
}

#[test]
fn a_damaged_inception_conversion_is_refused() {
    use burn::module::Module;
    use diffnas::eval::extract::{ConvertedMeta, meta_path, write_sidecar};
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let bpk = dir.path().join("pt_inception.bpk");
    let ext = InceptionExtractor::synthetic(&device);
    ext.network().clone().save_file(&bpk).unwrap();
    write_sidecar(&bpk).unwrap();
    let meta = ConvertedMeta {
        source: "formula".into(),
        source_sha256: "0".repeat(64),
        extractor: ext.id().clone(),
    };
    std::fs::write(meta_path(&bpk), serde_json::to_vec(&meta).unwrap()).unwrap();
    flips_are_caught(&bpk, || {
        InceptionExtractor::load(&bpk, &device)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}
