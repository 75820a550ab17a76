//! IDDPM's variational bound and learned variance against closed forms and the independent
//! numpy implementation of `tests/fixtures/make_vlb_fixture.py` (its stored outputs), the
//! learned-variance sampler at its end points, and the bound of a model whose predictions are
//! exact.

use crate::common::{Randomize, max_abs_diff, param_values, to_vec};
use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use diffnas::data::{DataSource, Dataset, Split};
use diffnas::diffusion::vlb::{
    self, ImportanceSampler, LossKind, TimestepSampling, discretized_gaussian_log_likelihood,
    learned_log_variance, normal_kl,
};
use diffnas::diffusion::{
    BetaSchedule, Ddpm, Denoiser, NoiseSchedule, Prediction, Sampler, SamplingRun, VarianceKind,
};
use diffnas::eval::nll::{NllConfig, nll};
use diffnas::model::Unet;
use diffnas::train::{TrainConfig, TrainOptions, train};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/vlb_reference.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("the fixture is JSON")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

fn tensor(v: &[f32], shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

fn flat(v: &[f32], device: &Device) -> Tensor<4> {
    tensor(v, [1, 1, 1, v.len()], device)
}

/// Elementwise `|a - b| <= tol * max(1, |b|)`.
fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * y.abs().max(1.0),
            "{what}[{i}]: {x} vs reference {y}"
        );
    }
}

#[test]
fn gaussian_kl_and_the_decoder_match_closed_forms_and_the_numpy_reference() {
    let device = Device::flex();
    let f = fixture();
    // Closed forms: KL of a Gaussian to itself is 0; KL(N(0,1) || N(1,1)) = 1/2;
    // KL(N(0,1) || N(0,e^2)) = (-1 + 2 + e^-2) / 2.
    let z = flat(&[0.0, 0.0, 0.0], &device);
    let kl = to_vec(normal_kl(
        z.clone(),
        z.clone(),
        flat(&[0.0, 1.0, 0.0], &device),
        flat(&[0.0, 0.0, 2.0], &device),
    ));
    let e2 = (-2.0f32).exp();
    assert_close(&kl, &[0.0, 0.5, (1.0 + e2) / 2.0], 1e-6, "closed-form KL");
    let k = &f["kl"];
    let ours = to_vec(normal_kl(
        flat(&floats(&k["mean1"]), &device),
        flat(&floats(&k["logvar1"]), &device),
        flat(&floats(&k["mean2"]), &device),
        flat(&floats(&k["logvar2"]), &device),
    ));
    assert_close(&ours, &floats(&k["nats"]), 2e-5, "KL vs numpy");

    let d = &f["decoder"];
    let x = floats(&d["x"]);
    let ours = to_vec(discretized_gaussian_log_likelihood(
        flat(&x, &device),
        flat(&floats(&d["means"]), &device),
        flat(&floats(&d["log_scales"]), &device),
    ));
    // In f32 a bin far in the tail is the difference of two CDF values near 1 (as in the
    // reference code, which runs in f32 too): below e^-10 the log keeps three digits.
    let reference = floats(&d["loglik_tanh"]);
    for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
        let tol = if *b > -10.0 { 2e-4 } else { 2e-3 };
        assert!(
            (a - b).abs() <= tol * b.abs().max(1.0),
            "decoder vs numpy [{i}]: {a} vs {b}"
        );
    }
    // The tanh CDF stays near the exact one wherever a bin holds some mass (in the far tail
    // the approximation's relative error grows, as it does in the reference code).
    let exact = floats(&d["loglik_exact"]);
    for (a, b) in reference.iter().zip(&exact).filter(|(_, b)| **b > -5.0) {
        assert!((a - b).abs() < 0.01, "tanh vs erf CDF: {a} vs {b} nats");
    }
    // Edge bins extend to infinity: a sharp Gaussian on -1 or +1 puts all mass there.
    let edge = to_vec(discretized_gaussian_log_likelihood(
        flat(&[-1.0, 1.0], &device),
        flat(&[-1.0, 1.0], &device),
        flat(&[-9.0, -9.0], &device),
    ));
    assert_close(&edge, &[0.0, 0.0], 1e-5, "edge bins");
}

#[test]
fn the_learned_variance_spans_beta_tilde_to_beta() {
    let device = Device::flex();
    let s = NoiseSchedule::new(BetaSchedule::Cosine, 100).unwrap();
    for t in [0usize, 1, 50, 99] {
        let min = s.posterior_log_variance_clipped[t];
        let max = s.betas[t].ln();
        let col = |v: f64| Tensor::<4>::full([1, 1, 1, 1], v, &device);
        let at = |raw: f32| {
            to_vec(learned_log_variance(
                flat(&[raw], &device),
                col(min),
                col(max),
            ))[0] as f64
        };
        assert!(
            (at(-1.0) - min).abs() < 1e-5,
            "t={t}: -1 gives log beta_tilde"
        );
        assert!((at(1.0) - max).abs() < 1e-5, "t={t}: +1 gives log beta");
        assert!(
            (at(0.0) - (min + max) / 2.0).abs() < 1e-5,
            "t={t}: 0 the geometric mean"
        );
    }
    // t = 0's beta_tilde is 0: the clipped log-variance takes t = 1's.
    assert_eq!(s.posterior_variance[0], 0.0);
    assert_eq!(
        s.posterior_log_variance_clipped[0],
        s.posterior_variance[1].ln()
    );
}

#[test]
fn vlb_terms_prior_and_hybrid_loss_match_the_numpy_reference() {
    let device = Device::flex();
    let f = fixture();
    let v = &f["vlb"];
    let t_total = v["timesteps"].as_u64().unwrap() as usize;
    let s = NoiseSchedule::new(BetaSchedule::Cosine, t_total).unwrap();
    let clipped: Vec<f32> = s
        .posterior_log_variance_clipped
        .iter()
        .map(|&x| x as f32)
        .collect();
    assert_close(
        &clipped,
        &floats(&v["posterior_log_variance_clipped"]),
        1e-6,
        "clipped log-variance",
    );
    let sh: Vec<usize> = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let shape = [sh[0], sh[1], sh[2], sh[3]];
    let t: Vec<usize> = v["t"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let get = |k: &str| tensor(&floats(&v[k]), shape, &device);
    let terms = to_vec(vlb::vlb_terms(
        &s,
        get("x0"),
        get("x_t"),
        &t,
        get("eps_pred"),
        get("raw_variance"),
        false,
    ));
    assert_close(&terms, &floats(&v["terms_bits"]), 1e-3, "L_t in bits/dim");
    let prior = to_vec(vlb::prior_bits(&s, get("x0")));
    assert_close(&prior, &floats(&v["prior_bits"]), 1e-3, "prior term");
    let (loss, vb) = vlb::hybrid_loss(
        &s,
        get("x0"),
        get("x_t"),
        &t,
        get("eps"),
        get("eps_pred"),
        get("raw_variance"),
        None,
    );
    assert_close(
        &to_vec(vb),
        &floats(&v["terms_bits"]),
        1e-3,
        "hybrid's terms",
    );
    let want = v["hybrid"].as_f64().unwrap() as f32;
    assert_close(&to_vec(loss), &[want], 1e-4, "L_hybrid");
}

/// Knows `x0`: predicts the true noise of any `x_t`, and the true posterior variance
/// (raw output -1, beta_tilde).
struct Exact {
    x0: Tensor<4>,
    schedule: NoiseSchedule,
}

impl Denoiser for Exact {
    fn predict_eps(&self, x_t: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        self.predict(x_t, t).eps
    }
    fn predict(&self, x_t: Tensor<4>, t: Tensor<1>) -> Prediction {
        let t = to_vec(t)[0] as usize;
        let ab = self.schedule.alphas_cumprod[t];
        let eps = (x_t - self.x0.clone() * ab.sqrt()) / (1.0 - ab).sqrt();
        Prediction {
            variance: Some(eps.ones_like().neg()),
            eps,
        }
    }
}

/// Standard normal CDF by the same tanh approximation, in f64.
fn cdf(x: f64) -> f64 {
    0.5 * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
}

#[test]
fn the_bound_of_an_exact_model_is_its_prior_and_decoder_terms() {
    // Every L_t with t > 0 is a KL between identical Gaussians (0). At t = 0 the posterior
    // mean is x0 itself (c1 = 1, c2 = 0), so the decoder term is the mass of x0's own bin
    // under N(x0, beta_tilde_1): a closed form, as is the prior term.
    let device = Device::flex();
    let s = NoiseSchedule::new(BetaSchedule::Cosine, 40).unwrap();
    let pixels: Vec<f32> = (0..2 * 16)
        .map(|i| ((i * 37) % 256) as f32 / 127.5 - 1.0)
        .collect();
    let x0 = tensor(&pixels, [2, 1, 4, 4], &device);
    let model = Exact {
        x0: x0.clone(),
        schedule: s.clone(),
    };
    let mut calls = 0;
    let bpd = to_vec(vlb::bits_per_dim(
        &s,
        x0.clone(),
        &mut |x_t, t, _| {
            let p = model.predict(x_t, t);
            (p.eps, p.variance.unwrap())
        },
        &mut |_| Tensor::random([2, 1, 4, 4], Distribution::Normal(0.0, 1.0), &device),
        false,
        &mut |_, _| calls += 1,
    ));
    assert_eq!(calls, 40);
    let sigma = s.posterior_variance[1].sqrt();
    let a = s.alphas_cumprod[39];
    for (b, got) in bpd.iter().enumerate() {
        let img = &pixels[b * 16..(b + 1) * 16];
        let decoder: f64 = img
            .iter()
            .map(|&x| {
                let x = x as f64;
                let up = cdf(1.0 / 255.0 / sigma);
                let p = if !(-0.999..=0.999).contains(&x) {
                    up
                } else {
                    up - cdf(-1.0 / 255.0 / sigma)
                };
                -p.max(1e-12).ln()
            })
            .sum::<f64>()
            / 16.0;
        let prior: f64 = img
            .iter()
            .map(|&x| {
                let (m, lv) = (a.sqrt() * x as f64, (1.0 - a).ln());
                0.5 * (-1.0 - lv + lv.exp() + m * m)
            })
            .sum::<f64>()
            / 16.0;
        let want = (decoder + prior) / std::f64::consts::LN_2;
        assert!(
            ((*got as f64) - want).abs() < 1e-3 * want.max(1.0),
            "image {b}: {got} bits/dim vs {want}"
        );
    }
}

#[test]
fn ddpm_with_a_learned_variance_uses_it() {
    // Raw output -1 is the posterior variance (fixed-small), +1 the beta (fixed-large), of the
    // respaced process: the same step as those samplers with the same noise.
    let device = Device::flex();
    let s = NoiseSchedule::new(BetaSchedule::Linear, 1000).unwrap();
    let x_t = Tensor::<4>::random([2, 1, 4, 4], Distribution::Normal(0.0, 1.0), &device);
    let eps = Tensor::<4>::random([2, 1, 4, 4], Distribution::Normal(0.0, 1.0), &device);
    let z = Tensor::<4>::random([2, 1, 4, 4], Distribution::Normal(0.0, 1.0), &device);
    for (raw, kind) in [
        (-1.0, VarianceKind::FixedSmall),
        (1.0, VarianceKind::FixedLarge),
    ] {
        let mut fixed = Ddpm::new(s.clone());
        fixed.set_timesteps(25);
        fixed.variance = kind;
        let want = to_vec(fixed.step(eps.clone(), 3, x_t.clone(), Some(z.clone())));
        let learned = Ddpm::new(s.clone());
        let mut learned = learned;
        learned.set_timesteps(25);
        let pred = Prediction {
            eps: eps.clone(),
            variance: Some(eps.ones_like() * raw),
        };
        let got = to_vec(learned.step_predicted(pred, 3, x_t.clone(), Some(z.clone())));
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-5, "raw {raw}: {d}");
    }
}

#[test]
fn importance_sampling_is_uniform_until_warm_then_follows_the_terms() {
    let mut s = ImportanceSampler::new(4);
    assert_eq!(s.probabilities(), vec![0.25; 4]);
    for _ in 0..ImportanceSampler::HISTORY {
        s.record(&[0, 1, 2], &[1.0, 2.0, 3.0]);
    }
    assert!(!s.warmed_up(), "t = 3 has no history yet");
    for _ in 0..ImportanceSampler::HISTORY + 3 {
        s.record(&[3], &[4.0]);
    }
    assert!(s.warmed_up());
    assert_eq!(s.history[3].len(), ImportanceSampler::HISTORY);
    let p = s.probabilities();
    let u = ImportanceSampler::UNIFORM_PROB;
    for (t, want) in [(0usize, 0.1), (1, 0.2), (2, 0.3), (3, 0.4)] {
        let want = want * (1.0 - u) + u / 4.0;
        assert!((p[t] - want).abs() < 1e-12, "p[{t}] = {} vs {want}", p[t]);
    }
    // Draws follow the CDF; each weight is 1 / (T p_t), so E[w L_t] over p is the mean of L_t.
    let (t, w) = s.draw(&[0.0, 0.05, 0.15, 0.5, 0.99]);
    assert_eq!(t, vec![0, 0, 1, 2, 3]);
    for (ti, wi) in t.iter().zip(&w) {
        assert!((wi - 1.0 / (4.0 * p[*ti])).abs() < 1e-12);
    }
}

fn learned16() -> diffnas::genome::Genome {
    let mut g = crate::common::tiny16();
    g.learn_sigma = true;
    // Dropout masks come from the process-wide device RNG that parallel tests share.
    g.dropout = 0.0;
    g
}

fn hybrid_cfg(timesteps: usize) -> TrainConfig {
    TrainConfig::tiny()
        .with_steps(60)
        .with_batch_size(16)
        .with_lr(2e-3)
        .with_warmup_steps(10)
        .with_log_every(1)
        .with_timesteps(timesteps)
        .with_beta_schedule(BetaSchedule::Cosine)
        .with_loss(Some(LossKind::Hybrid))
        .with_seed(3)
}

fn fmnist16(split: Split, n: usize) -> Dataset {
    let mut d = DataSource::FashionMnist(None)
        .load(split)
        .expect("Fashion-MNIST (apt-get install dataset-fashion-mnist)");
    d.truncate(n);
    d.to_spec(1, 16).unwrap()
}

#[test]
fn l_hybrid_training_lowers_loss_and_nll_and_samples_with_its_variance() {
    let device = Device::flex().autodiff();
    let (train_data, test) = (fmnist16(Split::Train, 512), fmnist16(Split::Test, 16));
    let cfg = hybrid_cfg(100);
    let schedule = NoiseSchedule::new(cfg.beta_schedule, cfg.timesteps).unwrap();
    device.seed(5);
    let model = Unet::new(&learned16(), &device).unwrap();
    let nll_cfg = NllConfig {
        n: 16,
        batch_size: 16,
        ..NllConfig::default()
    };
    let plain = device.clone().inner();
    let before = nll(
        &model.valid(),
        &schedule,
        &test,
        &nll_cfg,
        &plain,
        &mut |_, _| {},
    );
    assert_eq!(before.variance, "learned");
    let out = train(
        model,
        &train_data,
        &cfg,
        &device,
        TrainOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let (first, last) = (out.log[0].loss, out.log.last().unwrap().loss);
    assert!(last < 0.6 * first, "L_hybrid {first} -> {last}");
    let after = nll(
        &out.model.valid(),
        &schedule,
        &test,
        &nll_cfg,
        &plain,
        &mut |_, _| {},
    );
    assert!(
        after.bits_per_dim < before.bits_per_dim - 0.5,
        "NLL {} -> {} bits/dim",
        before.bits_per_dim,
        after.bits_per_dim
    );
    // Sampling draws with the model's own variance: DDPM with the learned variance differs
    // from DDPM with a fixed one, from the same noise.
    let model = out.model.valid();
    let mut ddpm = Ddpm::new(schedule.clone());
    ddpm.set_timesteps(20);
    let run = SamplingRun::new(&ddpm as &dyn Sampler, 0, 0, 4, [1, 16, 16], &plain);
    let learned = to_vec(run.run(&model, &mut |_, _| {}));
    assert!(learned.iter().all(|v| v.is_finite()));
    struct Fixed<'a>(&'a Unet);
    impl Denoiser for Fixed<'_> {
        fn predict_eps(&self, x: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
            self.0.predict_eps(x, t)
        }
    }
    let run = SamplingRun::new(&ddpm as &dyn Sampler, 0, 0, 4, [1, 16, 16], &plain);
    let fixed = to_vec(run.run(&Fixed(&model), &mut |_, _| {}));
    assert!(
        max_abs_diff(&learned, &fixed) > 1e-3,
        "the variance is unused"
    );
}

fn hybrid_run(
    dir: &std::path::Path,
    stop_at: Option<u64>,
    model: Unet,
    sampling: TimestepSampling,
) -> Vec<Vec<f32>> {
    let device = Device::flex().autodiff();
    let cfg = hybrid_cfg(10)
        .with_steps(40)
        .with_batch_size(8)
        .with_checkpoint_every(10)
        .with_log_every(5)
        .with_timestep_sampling(Some(sampling));
    let out = train(
        model,
        &crate::train::synthetic(24),
        &cfg,
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
    param_values(&out.model)
}

#[test]
fn l_hybrid_resumes_exactly_with_uniform_and_importance_sampled_timesteps() {
    // One initialisation for both runs (the process-wide device RNG is shared with tests
    // running beside this one, so it is not reseeded per run).
    let device = Device::flex().autodiff();
    let init = Unet::new(&learned16(), &device)
        .unwrap()
        .map(&mut Randomize::new(21, 0.05));
    for sampling in [TimestepSampling::Uniform, TimestepSampling::Importance] {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let full = hybrid_run(a.path(), None, init.clone(), sampling);
        hybrid_run(b.path(), Some(20), init.clone(), sampling);
        // The resumed process starts from other weights: all must come from the checkpoint,
        // the importance sampler's history included.
        let other = init.clone().map(&mut Randomize::new(22, 0.05));
        let resumed = hybrid_run(b.path(), None, other, sampling);
        assert!(full == resumed, "{sampling}: weights differ after resume");
    }
    let a = tempfile::tempdir().unwrap();
    hybrid_run(a.path(), None, init, TimestepSampling::Importance);
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(a.path().join(diffnas::train::STATE_FILE)).unwrap(),
    )
    .unwrap();
    let history = state["importance"]["history"]
        .as_array()
        .expect("the sampler's state");
    assert_eq!(history.len(), 10);
    assert!(
        history
            .iter()
            .all(|h| h.as_array().unwrap().len() == ImportanceSampler::HISTORY),
        "320 draws over 10 timesteps fill every history: the sampler is warm"
    );
}

fn diffnas(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_diffnas"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("the binary runs")
}

#[test]
fn cli_hybrid_training_nll_and_export_of_a_learned_variance_model() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let run_s = run.to_str().unwrap();
    let ok = |o: &std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    // simple on a learned-variance genome is refused, naming the flag.
    let o = diffnas(&[
        "train",
        "--genome",
        "iddpm-cifar10",
        "--loss",
        "simple",
        "--run-dir",
        run_s,
        "--device",
        "flex",
        "--data",
        "fashion-mnist",
    ]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("--loss simple") && e.contains("learn_sigma"),
        "{e}"
    );
    // --loss hybrid gives tiny its learned variance.
    let o = diffnas(&[
        "train",
        "--genome",
        "tiny",
        "--loss",
        "hybrid",
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--timesteps",
        "20",
        "--beta-schedule",
        "cosine",
        "--max-images",
        "64",
        "--samples",
        "0",
        "--run-dir",
        run_s,
        "--device",
        "flex",
    ]);
    ok(&o);
    let (genome, files) = diffnas::rundir::RunFiles::read(&run).unwrap();
    assert!(genome.learn_sigma);
    assert_eq!(files.config.loss_kind(), LossKind::Hybrid);
    let o = diffnas(&[
        "eval",
        "nll",
        run_s,
        "--n",
        "4",
        "--batch-size",
        "2",
        "--device",
        "flex",
    ]);
    ok(&o);
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["nll"]["variance"], "learned");
    assert_eq!(out["nll"]["images"], 4);
    assert_eq!(out["nll"]["timesteps"], 20);
    let bpd = out["nll"]["bits_per_dim"].as_f64().unwrap();
    assert!(bpd.is_finite() && bpd > 0.0, "{bpd}");
    // The bundle carries the learned head.
    let models = tmp.path().join("models");
    ok(&diffnas(&[
        "export",
        run_s,
        "--out",
        models.to_str().unwrap(),
        "--name",
        "m",
    ]));
    let dir = models.join("m");
    let manifest = diffnas::model::bundle::BundleManifest::from_json(
        &std::fs::read_to_string(dir.join("model.json")).unwrap(),
    )
    .unwrap();
    let device = Device::flex();
    let (unet, g) = diffnas::model::bundle::load_bundle(
        &manifest,
        &std::fs::read(dir.join("genome.json")).unwrap(),
        std::fs::read(dir.join("weights.bpk")).unwrap(),
        &device,
    )
    .unwrap();
    assert!(g.learn_sigma && unet.learn_sigma);
    let run = diffnas::rundir::load_denoiser(&run, diffnas::rundir::Weights::Ema, &device).unwrap();
    assert_eq!(param_values(&unet), param_values(&run.model));
}
