//! Mixed precision (`--precision f16|bf16`) on flex: the UNet's forward and gradients against
//! f32, loss scaling's overflow skip, exact resume of an f16 run, and the per-thread scope.
//! The same against a GPU backend is in `wgpu_parity.rs`.
//!
//! Tolerances (relative L2 distance to the f32 result, `rel_l2`): f16 carries 11 significant
//! bits (unit roundoff 4.9e-4), bf16 8 (3.9e-3). Measured on the model below: f16 output
//! 1.2e-3 and weight gradients 1.6e-3 to 2.3e-3 on flex (4.6e-3 on lavapipe's WGSL), bf16
//! output 9.5e-3 and gradients 8.2e-3 to 9.7e-3. The bounds are 4x (f16 output), 4-5x (bf16)
//! and 4-9x (f16 gradients) those. Each comparison also asserts a non-zero distance, so a
//! precision that silently stayed f32 fails.

use crate::common::{Randomize, param_values, tiny16, to_vec};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use diffnas::diffusion::{NoiseSchedule, eps_loss};
use diffnas::model::Unet;
use diffnas::precision::{self, Precision};
use diffnas::train::{
    EpsObjective, LossScale, TrainConfig, TrainOptions, TrainStatus, optimizer_for, train,
    train_step_marked,
};
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

pub fn normal(shape: [usize; 4], seed: u64, device: &Device) -> Tensor<4> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..shape.iter().product())
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// ||a - r|| / ||r||.
pub fn rel_l2(a: &[f32], r: &[f32]) -> f64 {
    assert_eq!(a.len(), r.len());
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(r) {
        d += ((x - y) as f64).powi(2);
        n += (*y as f64).powi(2);
    }
    assert!(
        n > 0.0,
        "the reference is all zero: the comparison says nothing"
    );
    (d / n).sqrt()
}

/// The f32 model of the wgpu and flex tests: tiny at 16x16 with scale-shift norm, so every
/// block kind runs (attention at 4x4 and in the middle, skips, up/down-sampling).
pub fn model(device: &Device) -> Unet {
    let mut g = tiny16();
    g.scale_shift_norm = true;
    g.dropout = 0.0;
    Unet::new(&g, &device.clone().autodiff())
        .unwrap()
        .map(&mut Randomize::new(5, 0.1))
}

/// Output and three weight gradients (stem, middle attention, a decoder convolution) of one
/// eps-loss step in `p` on `device`.
pub fn forward_and_grads(m: &Unet, device: &Device, p: Precision) -> [Vec<f32>; 4] {
    let _scope = precision::scope(p);
    let device = device.clone().autodiff();
    let x = normal([4, 1, 16, 16], 1, &device);
    let target = normal([4, 1, 16, 16], 2, &device);
    let t = Tensor::<1>::from_floats([3.0f32, 250.0, 600.0, 999.0], &device);
    let y = m.forward(x, t);
    assert_eq!(
        y.dtype(),
        burn::tensor::DType::F32,
        "the output is f32 whatever the precision"
    );
    let loss = eps_loss(y.clone(), target);
    let grads = GradientsParams::from_grads(loss.backward(), m);
    let pick = |id| {
        let g = grads.get::<4>(id).expect("a gradient");
        assert_eq!(
            g.dtype(),
            burn::tensor::DType::F32,
            "gradients reach the weights as f32"
        );
        to_vec(g)
    };
    [
        to_vec(y.inner()),
        pick(m.stem.weight.id),
        pick(m.middle[0].attn.as_ref().unwrap().qkv.weight.id),
        pick(m.decoder[2].blocks[0].res.conv1.weight.id),
    ]
}

pub const NAMES: [&str; 4] = [
    "output",
    "grad stem.weight",
    "grad middle attention qkv",
    "grad decoder[2] conv1",
];

/// (output, gradient) bounds on the relative L2 distance to f32.
pub fn bounds(p: Precision) -> (f64, f64) {
    match p {
        Precision::F16 => (5e-3, 2e-2),
        Precision::Bf16 => (4e-2, 5e-2),
        Precision::F32 => (0.0, 0.0),
    }
}

pub fn compare(what: &str, p: Precision, got: &[Vec<f32>; 4], reference: &[Vec<f32>; 4]) {
    let (out_tol, grad_tol) = bounds(p);
    for (i, name) in NAMES.iter().enumerate() {
        let e = rel_l2(&got[i], &reference[i]);
        let tol = if i == 0 { out_tol } else { grad_tol };
        eprintln!("{what} {p} {name}: relative L2 {e:.2e} (bound {tol:.0e})");
        assert!(
            e > 0.0,
            "{what} {p} {name}: identical to f32, so nothing ran in {p}"
        );
        assert!(
            e <= tol,
            "{what} {p} {name}: relative L2 {e:.3e} > {tol:.0e}"
        );
    }
}

#[test]
fn f16_and_bf16_unet_match_f32_on_flex_forward_and_gradients() {
    let flex = Device::flex();
    let m = model(&flex);
    let reference = forward_and_grads(&m, &flex, Precision::F32);
    for p in [Precision::F16, Precision::Bf16] {
        compare("flex", p, &forward_and_grads(&m, &flex, p), &reference);
    }
    // Inference (no autodiff graph) in f16: the same output within the same bound.
    let infer = |p| {
        let _scope = precision::scope(p);
        let m = m.valid();
        let x = normal([4, 1, 16, 16], 1, &flex);
        to_vec(m.forward(
            x,
            Tensor::<1>::from_floats([3.0f32, 250.0, 600.0, 999.0], &flex),
        ))
    };
    let e = rel_l2(&infer(Precision::F16), &infer(Precision::F32));
    assert!(
        e > 0.0 && e <= bounds(Precision::F16).0,
        "f16 inference: {e:.3e}"
    );
}

#[test]
fn precision_is_per_thread_scoped_and_nests() {
    assert_eq!(precision::current(), Precision::F32);
    {
        let _a = precision::scope(Precision::F16);
        assert_eq!(precision::current(), Precision::F16);
        std::thread::spawn(|| assert_eq!(precision::current(), Precision::F32))
            .join()
            .unwrap();
        {
            let _b = precision::scope(Precision::Bf16);
            assert_eq!(precision::current(), Precision::Bf16);
        }
        assert_eq!(precision::current(), Precision::F16);
    }
    assert_eq!(precision::current(), Precision::F32);
    assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
    let e = "fp16".parse::<Precision>().unwrap_err();
    assert!(
        e.contains("\"fp16\"") && e.contains("f32, f16, bf16"),
        "{e}"
    );
    // flex computes both 16-bit types.
    for p in Precision::ALL {
        p.check(&Device::flex()).unwrap();
    }
}

#[test]
fn loss_scale_halves_on_overflow_and_doubles_after_clean_steps() {
    let mut s = LossScale::default();
    assert_eq!(s.scale, 65536.0);
    assert_eq!(
        s.update(false),
        diffnas::train::ScaledStep::Skipped { scale: 65536.0 }
    );
    assert_eq!((s.scale, s.skipped_steps, s.clean_steps), (32768.0, 1, 0));
    for _ in 0..1999 {
        assert_eq!(s.update(true), diffnas::train::ScaledStep::Taken);
    }
    assert_eq!(s.scale, 32768.0);
    s.update(true);
    assert_eq!((s.scale, s.clean_steps), (65536.0, 0));
    assert!(!s.collapsed());
}

/// A step whose scaled gradients overflow f16 changes nothing but the scale; the next one at a
/// sane scale trains.
#[test]
fn an_f16_step_that_overflows_is_skipped_and_the_scale_halved() {
    let flex = Device::flex();
    let _scope = precision::scope(Precision::F16);
    let device = flex.clone().autodiff();
    let model = model(&flex);
    let ema = model.valid();
    let before = param_values(&model);
    let cfg = TrainConfig::tiny()
        .with_batch_size(2)
        .with_precision(Some(Precision::F16));
    let mut optim = optimizer_for(&cfg);
    let schedule = NoiseSchedule::new(cfg.beta_schedule, cfg.timesteps).unwrap();
    let x0 = normal([2, 1, 16, 16], 3, &device).clamp(-1.0, 1.0);
    // 2^60 times the loss: every f16 gradient is inf.
    let mut scaler = LossScale {
        scale: 2f64.powi(60),
        ..LossScale::default()
    };
    let (model, ema, _, norm) = train_step_marked(
        model,
        ema,
        &mut optim,
        &cfg,
        &schedule,
        x0.clone(),
        0,
        &EpsObjective,
        Some(&mut scaler),
        &mut |_| {},
    );
    assert!(norm.is_none(), "a skipped step reports no gradient norm");
    assert_eq!(scaler.skipped_steps, 1);
    assert_eq!(scaler.scale, 2f64.powi(59));
    assert!(
        param_values(&model) == before,
        "the skipped step changed the weights"
    );
    // At the default scale the same batch trains, and the norm is the unscaled one.
    let mut scaler = LossScale::default();
    let (model, _, _, norm) = train_step_marked(
        model,
        ema,
        &mut optim,
        &cfg,
        &schedule,
        x0,
        0,
        &EpsObjective,
        Some(&mut scaler),
        &mut |_| {},
    );
    assert_eq!(scaler.skipped_steps, 0);
    let norm = norm.expect("a norm").into_scalar::<f32>();
    assert!(
        norm.is_finite() && norm > 0.0 && norm < 1e3,
        "unscaled gradient norm {norm}"
    );
    assert!(param_values(&model) != before, "the step did not train");
}

fn f16_run(dir: &std::path::Path, stop_at: Option<u64>, init_seed: u64) -> (Unet, TrainStatus) {
    let mut g = tiny16();
    g.dropout = 0.0;
    let model = Unet::new(&g, &Device::flex().autodiff())
        .unwrap()
        .map(&mut Randomize::new(init_seed, 0.05));
    let cfg = TrainConfig::tiny()
        .with_steps(8)
        .with_batch_size(4)
        .with_checkpoint_every(4)
        .with_log_every(2)
        .with_warmup_steps(2)
        .with_seed(3)
        .with_precision(Some(Precision::F16));
    let out = train(
        model,
        &crate::train::synthetic(16),
        &cfg,
        &Device::flex().autodiff(),
        TrainOptions {
            run_dir: Some(dir),
            resume: true,
            stop: None,
            stop_at,
        },
        &mut |_| {},
    )
    .unwrap();
    (out.model, out.status)
}

#[test]
fn an_f16_run_resumes_to_the_same_weights_and_keeps_f32_checkpoints() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (full, s) = f16_run(a.path(), None, 1);
    assert_eq!(s, TrainStatus::Finished);
    assert_eq!(f16_run(b.path(), Some(4), 1).1, TrainStatus::Interrupted);
    let checkpoint = diffnas::train::latest_checkpoint(b.path()).expect("a checkpoint");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(checkpoint.join(diffnas::train::STATE_FILE)).unwrap(),
    )
    .unwrap();
    assert_eq!(state["loss_scale"]["scale"], 65536.0, "{state}");
    let (resumed, s) = f16_run(b.path(), None, 999);
    assert_eq!(s, TrainStatus::Finished);
    assert!(
        param_values(&full) == param_values(&resumed),
        "an f16 run resumed to other weights"
    );
    // The log records the scale; the weights on disk are f32.
    let log = std::fs::read_to_string(b.path().join("log.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["loss_scale"], 65536.0, "{last}");
    assert_eq!(last["skipped_steps"], 0, "{last}");
    let loaded = Unet::new(&tiny16(), &Device::flex())
        .unwrap()
        .try_load_file(checkpoint.join(diffnas::train::MODEL_FILE))
        .expect("the checkpoint loads into an f32 model");
    assert_eq!(loaded.stem.weight.val().dtype(), burn::tensor::DType::F32);
}
