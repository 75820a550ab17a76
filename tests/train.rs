//! Training: exact resume (in process and after a real process kill), the NaN guard, learning
//! on real data.

use crate::common::{param_values, tiny16};
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
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
