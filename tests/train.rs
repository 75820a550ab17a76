//! Training: exact resume (in process and after a real process kill), the NaN guard, learning
//! on real data.

use crate::common::{param_values, tiny16};
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};
use diffnas::data::{DataSource, Dataset, Split};
use diffnas::diffusion::Denoiser;
use diffnas::model::Unet;
use diffnas::train::{TrainConfig, TrainError, TrainOptions, TrainStatus, train};
use rand::RngExt;
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

/// 24 random 16x16 grayscale images.
pub fn synthetic(n: usize) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    Dataset {
        name: "synthetic".into(),
        pixels: (0..n * 256).map(|_| rng.random::<u8>()).collect(),
        labels: None,
        len: n,
        channels: 1,
        height: 16,
        width: 16,
    }
}

fn cfg() -> TrainConfig {
    TrainConfig::tiny()
        .with_steps(12)
        .with_batch_size(4)
        .with_checkpoint_every(4)
        .with_log_every(2)
        .with_warmup_steps(3)
        .with_seed(17)
}

/// The test preset without dropout (its masks come from the process-wide device RNG, which
/// tests running in parallel in this process also draw from; the dropout replay is checked by
/// the CLI kill test, where the training process is alone), initialised from `seed` without
/// that RNG for the same reason.
fn init(seed: u64) -> Unet {
    let mut g = tiny16();
    g.dropout = 0.0;
    Unet::new(&g, &Device::flex().autodiff())
        .unwrap()
        .map(&mut crate::common::Randomize::new(seed, 0.05))
}

fn run(dir: &std::path::Path, stop_at: Option<u64>, init_seed: u64) -> (Unet, Unet, TrainStatus) {
    let device = Device::flex().autodiff();
    let model = init(init_seed);
    let out = train(
        model,
        &synthetic(24),
        &cfg(),
        &device,
        TrainOptions {
            run_dir: Some(dir),
            resume: true,
            stop: None,
            stop_at,
        },
        &mut |_| {},
    )
    .unwrap();
    (out.model, out.ema, out.status)
}

#[test]
fn resume_gives_the_same_weights_as_an_uninterrupted_run() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (m_full, e_full, s) = run(a.path(), None, 1);
    assert_eq!(s, TrainStatus::Finished);
    let (_, _, s) = run(b.path(), Some(6), 1);
    assert_eq!(s, TrainStatus::Interrupted);
    // The resumed process starts from differently initialised weights: everything must come
    // from the checkpoint.
    let (m_res, e_res, s) = run(b.path(), None, 12345);
    assert_eq!(s, TrainStatus::Finished);
    assert!(
        param_values(&m_full) == param_values(&m_res),
        "model weights differ after resume"
    );
    assert!(
        param_values(&e_full) == param_values(&e_res),
        "EMA weights differ after resume"
    );
    // The log has one line per logged step, with no duplicates after the resume.
    let log = std::fs::read_to_string(b.path().join("log.jsonl")).unwrap();
    let steps: Vec<u64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, vec![2, 4, 6, 8, 10, 12]);
    // Only the newest checkpoints are kept.
    let kept = std::fs::read_dir(b.path().join("checkpoints"))
        .unwrap()
        .count();
    assert_eq!(kept, 3, "two checkpoint folders plus the `latest` pointer");
}

#[derive(Module, Debug)]
struct Exploding {
    w: Param<Tensor<1>>,
}

impl Denoiser for Exploding {
    fn predict_eps(&self, x_t: Tensor<4>, _t: Tensor<1>) -> Tensor<4> {
        // Finite for the first steps, then the weight blows up through the gradient.
        x_t * self.w.val().reshape([1, 1, 1, 1]).exp()
    }
}

#[test]
fn nan_guard_stops_the_run_with_a_clear_message() {
    let device = Device::flex().autodiff();
    let model = Exploding {
        w: Param::from_tensor(Tensor::from_floats([80.0], &device)),
    };
    let dir = tempfile::tempdir().unwrap();
    let err = train(
        model,
        &synthetic(8),
        &cfg().with_grad_clip(0.0),
        &device,
        TrainOptions {
            run_dir: Some(dir.path()),
            ..TrainOptions::default()
        },
        &mut |_| {},
    )
    .err()
    .expect("the loss overflows");
    assert!(matches!(err, TrainError::NonFinite { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("the loss became") && msg.contains("--lr"),
        "{msg}"
    );
    // Nothing non-finite was published as a checkpoint.
    assert!(diffnas::train::latest_checkpoint(dir.path()).is_none());
}

#[test]
fn bad_configuration_names_the_field() {
    let device = Device::flex().autodiff();
    let model = Unet::new(&tiny16(), &device).unwrap();
    let err = train(
        model,
        &synthetic(8),
        &cfg().with_lr(0.0),
        &device,
        TrainOptions::default(),
        &mut |_| {},
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("train.lr: 0 must be in (0, 1]"), "{err}");
}

#[test]
fn loss_goes_down_on_real_fashion_mnist() {
    let Ok(mut data) = DataSource::FashionMnist(None).load(Split::Train) else {
        assert!(
            std::env::var_os("DIFFNAS_SKIP_FASHION_MNIST").is_some(),
            "Fashion-MNIST is missing (apt-get install dataset-fashion-mnist)"
        );
        return;
    };
    data.truncate(512);
    let data = data.to_spec(1, 16).unwrap();
    let device = Device::flex().autodiff();
    device.seed(0);
    let model = Unet::new(&tiny16(), &device).unwrap();
    let cfg = TrainConfig::tiny()
        .with_steps(80)
        .with_batch_size(16)
        .with_lr(2e-3)
        .with_warmup_steps(10)
        .with_log_every(1);
    let out = train(
        model,
        &data,
        &cfg,
        &device,
        TrainOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let first = out.log.first().unwrap().loss;
    let last = out.log.last().unwrap().loss;
    // At initialisation the output conv is zero, so the loss is E[eps^2] = 1.
    assert!((0.8..1.2).contains(&first), "first loss {first}");
    assert!(last < 0.5 * first, "loss {first} -> {last}");
}

#[test]
fn fused_adamw_ema_and_clip_give_burns_numbers_on_the_cpu() {
    use burn::optim::Optimizer;
    use burn::tensor::{Distribution, TensorData};
    let device = Device::flex();
    device.seed(5);
    let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
    for wd in [0.0f32, 0.01] {
        let (ours, burn) = crate::common::adamw_pair(b1, b2, eps, wd);
        let p0 = Tensor::<2>::random([37, 129], Distribution::Normal(0.0, 1.0), &device);
        let (mut p_ours, mut p_burn) = (p0.clone(), p0);
        let (mut s_ours, mut s_burn) = (None, None);
        for step in 0..4 {
            let g = Tensor::<2>::random([37, 129], Distribution::Normal(0.0, 0.1), &device);
            let lr = 1e-3 * (step + 1) as f64;
            (p_ours, s_ours) = ours.step(lr, p_ours, g.clone(), s_ours);
            (p_burn, s_burn) = burn.step(lr, p_burn, g, s_burn);
            let (a, b) = (s_ours.as_ref().unwrap(), s_burn.as_ref().unwrap());
            assert_eq!(a.momentum.time, b.momentum.time);
            for (what, x, y) in [
                ("weights", &p_ours, &p_burn),
                ("first moment", &a.momentum.moment_1, &b.momentum.moment_1),
                ("second moment", &a.momentum.moment_2, &b.momentum.moment_2),
            ] {
                assert_eq!(
                    to_bits(x),
                    to_bits(y),
                    "weight decay {wd}, step {step}: {what} differ from Burn's AdamW"
                );
            }
        }
    }
    // EMA: the same formula, in place.
    let e = Tensor::<1>::random([1000], Distribution::Normal(0.0, 1.0), &device);
    let p = Tensor::<1>::random([1000], Distribution::Normal(0.0, 1.0), &device);
    let d = 0.9999;
    let reference = e.clone() * d + p.clone() * (1.0 - d);
    assert_eq!(to_bits(&diffnas::cpu::ema(e, p, d)), to_bits(&reference));
    // Clip's squared norm (the order of the sum differs) and scaling (the same product).
    let g = Tensor::<1>::random([100_003], Distribution::Normal(0.0, 1.0), &device);
    let ours = diffnas::cpu::sum_squares(g.clone()).into_scalar::<f32>() as f64;
    let want: f64 = to_vec(&g).iter().map(|&v| (v as f64) * (v as f64)).sum();
    assert!(
        (ours - want).abs() <= 1e-6 * want,
        "sum of squares {ours} vs {want}"
    );
    let c = Tensor::<1>::from_data(TensorData::new(vec![0.37f32], [1]), &device);
    let reference = g.clone() * c.clone();
    assert_eq!(to_bits(&diffnas::cpu::scale(g, c)), to_bits(&reference));
}

fn to_vec<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    crate::common::to_vec(t.clone())
}

fn to_bits<const D: usize>(t: &Tensor<D>) -> Vec<u32> {
    to_vec(t).into_iter().map(f32::to_bits).collect()
}

#[test]
fn damaged_checkpoints_are_caught_and_resume_falls_back_to_an_intact_one() {
    use diffnas::train::checkpoint::{all_newest_first, read_state};
    use diffnas::train::{EMA_FILE, MODEL_FILE, OPTIM_FILE};
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (m_full, _, _) = run(a.path(), None, 1);
    // Stopped at step 8: checkpoints at 4 and 8.
    run(b.path(), Some(8), 1);
    let cks = all_newest_first(b.path());
    assert_eq!(cks.len(), 2);
    // Every weights file of a checkpoint is sealed in its state file, and a flipped bit
    // anywhere (start, middle, end) is caught naming the file and both hashes.
    let newest = &cks[0];
    let state = read_state(newest).unwrap();
    for f in [MODEL_FILE, EMA_FILE, OPTIM_FILE] {
        assert_eq!(state.sha256[f].len(), 64, "{f}");
        let len = std::fs::metadata(newest.join(f)).unwrap().len() as i64;
        for off in [0, len / 2, -1] {
            let copy = tempfile::tempdir().unwrap();
            for g in [MODEL_FILE, EMA_FILE, OPTIM_FILE, diffnas::train::STATE_FILE] {
                std::fs::copy(newest.join(g), copy.path().join(g)).unwrap();
            }
            crate::common::flip(&copy.path().join(f), off);
            let s = read_state(copy.path()).unwrap();
            let e = s.verify(copy.path()).unwrap_err().to_string();
            assert!(
                e.contains(f) && e.contains("damaged") && e.contains(&state.sha256[f]),
                "{f} at {off}: {e}"
            );
        }
    }
    // The newest checkpoint damaged: the resume passes over it (keeping it) and continues
    // from step 4, ending with the weights of the uninterrupted run.
    crate::common::flip(&newest.join(MODEL_FILE), 1000);
    let mut notes = Vec::new();
    let out = train(
        init(12345),
        &synthetic(24),
        &cfg(),
        &Device::flex().autodiff(),
        TrainOptions {
            run_dir: Some(b.path()),
            resume: true,
            stop: None,
            stop_at: None,
        },
        &mut |e| {
            if let diffnas::train::TrainEvent::Note(n) = e {
                notes.push(n.clone());
            }
        },
    )
    .unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("damaged") && n.contains(MODEL_FILE)),
        "{notes:?}"
    );
    assert!(
        notes.iter().any(|n| n.contains("resuming from")),
        "{notes:?}"
    );
    assert!(
        newest.with_extension("damaged").join(MODEL_FILE).is_file(),
        "the damaged checkpoint is kept"
    );
    assert!(param_values(&out.model) == param_values(&m_full));
    // The finished run's final weights are sealed too: a damaged one does not load.
    let ema = b.path().join(EMA_FILE);
    crate::common::flip(&ema, -5);
    let state = read_state(b.path()).unwrap();
    let e = state.verify(b.path()).unwrap_err().to_string();
    assert!(e.contains(EMA_FILE) && e.contains("damaged"), "{e}");
}

/// `sum(a * (w - c)^2)` over a rank-2 and a rank-1 parameter: gradients in closed form.
#[derive(Module, Debug)]
struct Quadratic {
    w: Param<Tensor<2>>,
    b: Param<Tensor<1>>,
}

const QUAD_W: [usize; 2] = [3, 4];
const QUAD_B: usize = 5;

/// Curvature and centre of each of the 17 coordinates (w first, then b), and the start.
fn quadratic_terms() -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let n = QUAD_W[0] * QUAD_W[1] + QUAD_B;
    let a = (0..n).map(|i| 0.5 + (i % 7) as f64 * 0.75).collect();
    let c = (0..n).map(|i| ((i * 5) % 11) as f64 * 0.6 - 3.0).collect();
    let w0 = (0..n).map(|i| ((i * 3) % 13) as f64 * 0.4 - 2.5).collect();
    (a, c, w0)
}

struct QuadraticLoss;

impl diffnas::train::Objective<Quadratic> for QuadraticLoss {
    fn loss(&self, m: &Quadratic, batch: diffnas::train::StepBatch<'_>) -> Tensor<1> {
        let device = batch.x0.device();
        let (a, c, _) = quadratic_terms();
        let k = QUAD_W[0] * QUAD_W[1];
        let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let t2 = |v: &[f64]| Tensor::<2>::from_data(TensorData::new(f(v), QUAD_W), &device);
        let t1 = |v: &[f64]| Tensor::<1>::from_data(TensorData::new(f(v), [QUAD_B]), &device);
        let lw = (m.w.val() - t2(&c[..k])).square() * t2(&a[..k]);
        let lb = (m.b.val() - t1(&c[k..])).square() * t1(&a[k..]);
        lw.sum() + lb.sum()
    }
}

/// Three training steps (`train_step_marked`) with an active global-norm clip against the same
/// steps in f64 by hand: gradient `2a(w - c)`, one norm over both parameters,
/// `min(1, clip / (norm + 1e-6))`, AdamW with weight decay, the EMA. The epsilon is large next
/// to the clipped gradients, so the update depends on the clip (Adam alone is scale-free); the
/// test checks that an unclipped step would land far outside its tolerance.
pub fn clipped_steps_match_closed_form(device: &Device) {
    use diffnas::diffusion::{BetaSchedule, NoiseSchedule};
    let cfg = TrainConfig::tiny()
        .with_lr(0.05)
        .with_warmup_steps(2)
        .with_grad_clip(1.0)
        .with_adam_eps(0.05)
        .with_weight_decay(0.1)
        .with_ema_decay(0.9);
    let (a, c, w0) = quadratic_terms();
    let k = QUAD_W[0] * QUAD_W[1];
    let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let mut model = Quadratic {
        w: Param::from_tensor(Tensor::from_data(
            TensorData::new(f(&w0[..k]), QUAD_W),
            device,
        )),
        b: Param::from_tensor(Tensor::from_data(
            TensorData::new(f(&w0[k..]), [QUAD_B]),
            device,
        )),
    };
    let mut ema = model.valid();
    let mut optim = diffnas::train::optimizer_for(&cfg);
    let schedule = NoiseSchedule::new(BetaSchedule::Linear, cfg.timesteps).unwrap();
    let x0 = Tensor::<4>::zeros([2, 1, 4, 4], device);

    // The reference, and the same steps without the clip (to show the clip matters here).
    let reference = |clip: bool| {
        let (b1, b2, eps, wd) = (cfg.beta1, cfg.beta2, cfg.adam_eps, cfg.weight_decay);
        let (mut w, mut e) = (w0.clone(), w0.clone());
        let (mut m1, mut m2) = (vec![0.0; w.len()], vec![0.0; w.len()]);
        let mut norms = vec![];
        for step in 0..3u64 {
            let g: Vec<f64> = (0..w.len()).map(|i| 2.0 * a[i] * (w[i] - c[i])).collect();
            let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
            norms.push(norm);
            let coef = if clip {
                (cfg.grad_clip / (norm + 1e-6)).min(1.0)
            } else {
                1.0
            };
            let t = (step + 1) as i32;
            let lr = cfg.lr_at(step);
            for i in 0..w.len() {
                let gi = g[i] * coef;
                m1[i] = b1 * m1[i] + (1.0 - b1) * gi;
                m2[i] = b2 * m2[i] + (1.0 - b2) * gi * gi;
                let delta =
                    (m1[i] / (1.0 - b1.powi(t))) / ((m2[i] / (1.0 - b2.powi(t))).sqrt() + eps);
                w[i] = w[i] * (1.0 - lr * wd) - lr * delta;
            }
            let d = cfg.ema_decay_at(step);
            for i in 0..w.len() {
                e[i] = d * e[i] + (1.0 - d) * w[i];
            }
        }
        (w, e, norms)
    };
    let (want_w, want_e, want_norms) = reference(true);
    let (free_w, _, _) = reference(false);

    for step in 0..3u64 {
        let (m, e, _, norm) = diffnas::train::train_step_marked(
            model,
            ema,
            &mut optim,
            &cfg,
            &schedule,
            x0.clone(),
            step,
            &QuadraticLoss,
            None,
            &mut |_| {},
        );
        (model, ema) = (m, e);
        let norm = norm.expect("gradients").into_scalar::<f32>() as f64;
        let want = want_norms[step as usize];
        assert!(
            (norm - want).abs() <= 1e-5 * want,
            "step {step}: gradient norm {norm}, closed form {want}"
        );
        assert!(want > 3.0 * cfg.grad_clip, "the clip must be active");
    }
    let got = |m: &Quadratic| -> Vec<f64> {
        let mut v = crate::common::to_vec(m.w.val());
        v.extend(crate::common::to_vec(m.b.val()));
        v.into_iter().map(f64::from).collect()
    };
    let diff = |x: &[f64], y: &[f64]| {
        x.iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max)
    };
    let tol = 2e-5 * want_w.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let (w, e) = (got(&model), got(&ema));
    assert!(
        diff(&w, &want_w) <= tol,
        "weights {} from the closed form (tolerance {tol})",
        diff(&w, &want_w)
    );
    assert!(
        diff(&e, &want_e) <= tol,
        "EMA {} from the closed form (tolerance {tol})",
        diff(&e, &want_e)
    );
    assert!(
        diff(&free_w, &want_w) > 100.0 * tol,
        "unclipped steps land {} from clipped ones: the test cannot tell them apart",
        diff(&free_w, &want_w)
    );
}

#[test]
fn clipped_training_steps_match_the_closed_form() {
    clipped_steps_match_closed_form(&Device::flex().autodiff());
}
