//! Schedules against independently computed values, sampler determinism and closed forms.

use crate::common::{max_abs_diff, to_vec};
use burn::tensor::{Device, Distribution, Tensor};
use diffnas::diffusion::{
    BetaSchedule, Ddim, Ddpm, Denoiser, NoiseSchedule, Sampler, SamplingRun, ScheduleError,
    respaced_timesteps,
};

fn close(a: f64, b: f64, rel: f64) {
    assert!((a - b).abs() <= rel * b.abs().max(1e-300), "{a} vs {b}");
}

#[test]
fn linear_schedule_matches_reference_values() {
    // Reference values computed independently in Python (float64, the IDDPM formula).
    let s = NoiseSchedule::new(BetaSchedule::Linear, 1000).unwrap();
    close(s.betas[0], 1e-4, 1e-12);
    close(s.betas[999], 0.02, 1e-12);
    close(s.betas[499], 0.01004004004004004, 1e-12);
    close(s.alphas_cumprod[0], 0.9999, 1e-12);
    close(s.alphas_cumprod[1], 0.9997800920720721, 1e-12);
    close(s.alphas_cumprod[499], 0.07858724288177821, 1e-10);
    close(s.alphas_cumprod[999], 4.0358297653756754e-05, 1e-9);
    close(s.posterior_variance[1], 5.4531876613021935e-05, 1e-10);
    assert_eq!(s.posterior_variance[0], 0.0);
    // T = 4000 keeps DDPM's endpoints scaled by 1000 / T.
    let s = NoiseSchedule::new(BetaSchedule::Linear, 4000).unwrap();
    close(s.betas[0], 2.5e-5, 1e-12);
    close(s.alphas_cumprod[1999], 0.07894487332460011, 1e-9);
    close(s.alphas_cumprod[3999], 4.246652275802247e-05, 1e-8);
}

#[test]
fn cosine_schedule_matches_reference_values() {
    let s = NoiseSchedule::new(BetaSchedule::Cosine, 1000).unwrap();
    close(s.betas[0], 4.128422482196914e-05, 1e-9);
    close(s.betas[999], 0.999, 1e-12);
    close(s.alphas_cumprod[499], 0.4938435904406382, 1e-10);
    close(s.alphas_cumprod[999], 2.4287669070348567e-09, 1e-7);
    close(s.posterior_variance[1], 2.178949614569182e-05, 1e-8);
}

#[test]
fn schedule_invariants_are_enforced() {
    assert_eq!(
        NoiseSchedule::new(BetaSchedule::Linear, 1).unwrap_err(),
        ScheduleError::TooFewSteps(1)
    );
    assert!(matches!(
        NoiseSchedule::from_betas(BetaSchedule::Linear, vec![0.1, 1.5]),
        Err(ScheduleError::BetaOutOfRange { index: 1, .. })
    ));
    assert!(matches!(
        NoiseSchedule::from_betas(BetaSchedule::Linear, vec![0.1, 0.0]),
        Err(ScheduleError::BetaOutOfRange { index: 1, .. })
    ));
    for kind in [BetaSchedule::Linear, BetaSchedule::Cosine] {
        let s = NoiseSchedule::new(kind, 1000).unwrap();
        assert!(s.alphas_cumprod.windows(2).all(|w| w[1] < w[0]));
        assert!(s.betas.iter().all(|&b| b > 0.0 && b <= 0.999));
    }
}

#[test]
fn respacing() {
    assert_eq!(respaced_timesteps(1000, 1), vec![999]);
    assert_eq!(respaced_timesteps(1000, 2), vec![999, 0]);
    let t = respaced_timesteps(1000, 50);
    assert_eq!(t.len(), 50);
    assert_eq!((t[0], t[49]), (999, 0));
    assert!(t.windows(2).all(|w| w[0] > w[1]));
    assert_eq!(respaced_timesteps(10, 100).len(), 10);
}

/// Returns the true noise of `x_t` for a known `x0`: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar).
struct Oracle {
    x0: Tensor<4>,
    schedule: NoiseSchedule,
}

impl Denoiser for Oracle {
    fn predict_eps(&self, x_t: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        let t = to_vec(t)[0] as usize;
        let ab = self.schedule.alphas_cumprod[t];
        (x_t - self.x0.clone() * ab.sqrt()) / (1.0 - ab).sqrt()
    }
}

#[test]
fn one_ddim_step_with_the_true_noise_recovers_x0() {
    let device = Device::flex();
    let schedule = NoiseSchedule::new(BetaSchedule::Linear, 1000).unwrap();
    let x0 = Tensor::<4>::random([3, 1, 8, 8], Distribution::Uniform(-0.9, 0.9), &device);
    let eps = Tensor::<4>::random([3, 1, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    let oracle = Oracle {
        x0: x0.clone(),
        schedule: schedule.clone(),
    };
    for t in [999usize, 500, 10] {
        let x_t = schedule.q_sample(x0.clone(), &[t, t, t], eps.clone());
        // A one-step sampler over the schedule truncated at t starts exactly at t.
        let e = oracle.predict_eps(x_t.clone(), Tensor::from_floats([t as f32; 3], &device));
        let mut single = Ddim::new(
            NoiseSchedule::from_betas(BetaSchedule::Linear, schedule.betas[..=t].to_vec()).unwrap(),
            0.0,
        );
        single.clip_denoised = false;
        single.set_timesteps(1);
        let x = single.step(e, 0, x_t, None);
        let d = max_abs_diff(&to_vec(x), &to_vec(x0.clone()));
        assert!(d < 2e-3, "t = {t}: max |x - x0| = {d}");
    }
    // And a full 20-step deterministic DDIM run with the oracle lands on x0.
    let mut ddim = Ddim::new(schedule.clone(), 0.0);
    ddim.set_timesteps(20);
    let run = SamplingRun::new(&ddim as &dyn Sampler, 0, 0, 3, [1, 8, 8], &device);
    let x = run.run(&oracle, &mut |_, _| {});
    let d = max_abs_diff(&to_vec(x), &to_vec(x0.clone()));
    assert!(d < 1e-3, "20-step DDIM: {d}");
    // One DDPM step at T=1 respacing is the posterior mean with abar_prev = 1, i.e. x0.
    let mut ddpm = Ddpm::new(schedule.clone());
    ddpm.set_timesteps(1);
    let x_t = schedule.q_sample(x0.clone(), &[999, 999, 999], eps);
    let e = oracle.predict_eps(x_t.clone(), Tensor::from_floats([999.0; 3], &device));
    let x = ddpm.step(e, 0, x_t, None);
    let d = max_abs_diff(&to_vec(x), &to_vec(x0));
    assert!(d < 2e-3, "DDPM one step: {d}");
}

/// A fixed, input-dependent "denoiser" for determinism tests.
struct Shrink;
impl Denoiser for Shrink {
    fn predict_eps(&self, x_t: Tensor<4>, _t: Tensor<1>) -> Tensor<4> {
        x_t * 0.5
    }
}

fn sample(sampler: &dyn Sampler, seed: u64, first: u64, count: usize) -> Vec<f32> {
    let device = Device::flex();
    let run = SamplingRun::new(sampler, seed, first, count, [1, 4, 4], &device);
    to_vec(run.run(&Shrink, &mut |_, _| {}))
}

#[test]
fn samplers_are_deterministic_under_a_seed_and_batch_independent() {
    let schedule = NoiseSchedule::new(BetaSchedule::Linear, 1000).unwrap();
    let mut ddpm = Ddpm::new(schedule.clone());
    ddpm.set_timesteps(25);
    let mut ddim = Ddim::new(schedule.clone(), 0.0);
    ddim.set_timesteps(25);
    let mut ddim_eta = Ddim::new(schedule, 1.0);
    ddim_eta.set_timesteps(25);
    for s in [&ddpm as &dyn Sampler, &ddim, &ddim_eta] {
        let a = sample(s, 42, 0, 4);
        assert_eq!(a, sample(s, 42, 0, 4), "same seed, same images");
        assert_ne!(a, sample(s, 43, 0, 4), "another seed, other images");
        assert_eq!(a.len(), 4 * 16);
        // Image 2 of the run is the same whether sampled in a batch of 4 or alone.
        let alone = sample(s, 42, 2, 1);
        assert_eq!(&a[2 * 16..3 * 16], &alone[..]);
    }
    assert!(!ddim.needs_noise(0) && ddim_eta.needs_noise(0) && !ddim_eta.needs_noise(24));
    assert!(ddpm.needs_noise(0) && !ddpm.needs_noise(24));
}
