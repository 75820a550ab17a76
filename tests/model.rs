//! The UNet builder: parameter count equals the cost model, shapes, load/save.

use crate::common::{tiny16, to_vec};
use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use diffnas::diffusion::Denoiser;
use diffnas::genome::{Genome, ImageSpec, SearchSpace, cost};
use diffnas::model::Unet;
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

#[test]
fn cost_model_matches_built_parameter_count_for_presets() {
    let device = Device::flex();
    for name in Genome::PRESETS {
        let g = Genome::preset(name).unwrap();
        // num_params does not initialise lazy parameters, so the big presets are cheap.
        let built = Unet::new(&g, &device).unwrap().num_params() as u64;
        assert_eq!(built, cost(&g).unwrap().params, "{name}");
    }
}

#[test]
fn a_learned_variance_genome_predicts_eps_and_its_variance() {
    let device = Device::flex();
    let mut g = tiny16();
    g.learn_sigma = true;
    let model = Unet::new(&g, &device)
        .unwrap()
        .map(&mut crate::common::Randomize::new(2, 0.05));
    assert_eq!(model.num_params() as u64, cost(&g).unwrap().params);
    let x = Tensor::<4>::random([2, 1, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    let t = Tensor::<1>::from_floats([3.0, 700.0], &device);
    let raw = model.forward(x.clone(), t.clone());
    assert_eq!(raw.dims(), [2, 2, 16, 16]);
    let p = model.predict(x.clone(), t.clone());
    let v = p.variance.expect("a learned variance");
    assert_eq!(to_vec(p.eps), to_vec(raw.clone().narrow(1, 0, 1)));
    assert_eq!(to_vec(v), to_vec(raw.narrow(1, 1, 1)));
    assert_eq!(model.predict_eps(x, t).dims(), [2, 1, 16, 16]);
}

#[test]
fn random_genomes_build_match_cost_and_keep_the_input_shape() {
    let device = Device::flex();
    let mut space = SearchSpace::for_image(ImageSpec {
        channels: 3,
        size: 16,
    });
    space.base_channels = vec![16, 32];
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for i in 0..50 {
        let g = space.random(&mut rng, 1000).unwrap();
        let model = Unet::new(&g, &device).unwrap();
        assert_eq!(
            model.num_params() as u64,
            cost(&g).unwrap().params,
            "genome {i}: {}",
            g.canonical_json()
        );
        let x = Tensor::<4>::random([2, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
        let t = Tensor::<1>::from_floats([3.0, 700.0], &device);
        let y = model.predict_eps(x, t);
        assert_eq!(y.dims(), [2, 3, 16, 16], "genome {i}");
        let v = to_vec(y);
        assert!(
            v.iter().all(|x| x.is_finite()),
            "genome {i}: non-finite output"
        );
    }
}

#[test]
fn save_and_load_round_trip() {
    let device = Device::flex();
    let g = tiny16();
    let a = Unet::new(&g, &device)
        .unwrap()
        .map(&mut crate::common::Randomize::new(1, 0.05));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.bpk");
    a.clone().save_file(&p).unwrap();
    let b = Unet::new(&g, &device).unwrap().try_load_file(&p).unwrap();
    let x = Tensor::<4>::random([2, 1, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    let t = Tensor::<1>::from_floats([10.0, 500.0], &device);
    let ya = to_vec(a.forward(x.clone(), t.clone()));
    let yb = to_vec(b.forward(x, t));
    assert_eq!(ya, yb);
    // Loading weights of another genome fails and names the problem.
    let other = Unet::new(&Genome::tiny(), &device).unwrap();
    let err = Unet::new(&Genome::fmnist_small(), &device)
        .unwrap()
        .try_load_file(&p)
        .err();
    assert!(err.is_some());
    drop(other);
}

/// The convolution's lowerings against Burn's own `conv2d` on flex: outputs and the gradients of
/// input, weights and bias, over kernel sizes, strides and paddings the UNets use (and a valid,
/// unpadded one). `gemm` is the tensor-op im2col; `im2col` is the backend-extension op whose
/// autodiff node (one node, Burn's gradients) is what GPU training runs; on flex its forward is
/// Burn's, so this checks the node's wiring: every gradient reaches its own input.
#[test]
fn convolution_lowerings_match_burn_conv2d_forward_and_gradients() {
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use diffnas::model::conv::conv2d_gemm;
    let device = Device::flex().autodiff();
    type Conv = fn(Tensor<4>, Tensor<4>, Tensor<1>, usize, usize) -> Tensor<4>;
    // Without a GPU runtime (a CPU-only build) the kernel's extension op does not exist.
    #[cfg_attr(not(feature = "gpu-kernels"), allow(unused_mut))]
    let mut lowerings: Vec<(&str, Conv)> = vec![("gemm", |x, w, b, s, p| {
        conv2d_gemm(x, w, Some(b), [s, s], [(p, p), (p, p)])
    })];
    #[cfg(feature = "gpu-kernels")]
    lowerings.push(("im2col", |x, w, b, s, p| {
        diffnas::model::im2col::conv2d(x, w, Some(b), ConvOptions::new([s, s], [p, p], [1, 1], 1))
    }));
    // (cin, cout, k, stride, padding, h, w)
    let cases = [
        (3, 5, 3, 1, 1, 7, 6),
        (4, 6, 1, 1, 0, 5, 5),
        (4, 6, 5, 1, 2, 6, 6),
        (3, 4, 3, 2, 1, 7, 8),
        (2, 3, 1, 2, 0, 6, 6),
        (5, 2, 3, 1, 0, 6, 5),
    ];
    for (n, &(cin, cout, k, s, p, h, w)) in cases.iter().enumerate() {
        let x = Tensor::<4>::random([2, cin, h, w], Distribution::Normal(0.0, 1.0), &device);
        let wt = Tensor::<4>::random([cout, cin, k, k], Distribution::Normal(0.0, 0.5), &device);
        let b = Tensor::<1>::random([cout], Distribution::Normal(0.0, 1.0), &device);
        // A fixed random cotangent, so every output element's gradient path is exercised.
        let o = |d: usize| (d + 2 * p - k) / s + 1;
        let ct = Tensor::<4>::random(
            [2, cout, o(h), o(w)],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        // Output and the three gradients of `conv`.
        let run = |conv: Conv| {
            let (x, wt, b) = (
                x.clone().require_grad(),
                wt.clone().require_grad(),
                b.clone().require_grad(),
            );
            let y = conv(x.clone(), wt.clone(), b.clone(), s, p);
            let g = (y.clone() * ct.clone()).sum().backward();
            [
                to_vec(y.inner()),
                to_vec(x.grad(&g).unwrap()),
                to_vec(wt.grad(&g).unwrap()),
                to_vec(b.grad(&g).unwrap()),
            ]
        };
        let reference =
            run(|x, w, b, s, p| conv2d(x, w, Some(b), ConvOptions::new([s, s], [p, p], [1, 1], 1)));
        for &(name, conv) in &lowerings {
            let ours = run(conv);
            for (what, (a, r)) in ["output", "input grad", "weight grad", "bias grad"]
                .iter()
                .zip(ours.iter().zip(&reference))
            {
                assert_eq!(a.len(), r.len(), "case {n} {name} {what}: size");
                let scale = r.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                let d = crate::common::max_abs_diff(a, r);
                assert!(
                    d <= 1e-5 * scale,
                    "case {n} {name} {what}: max diff {d} of scale {scale}"
                );
            }
        }
    }
}

#[test]
fn conv_algorithm_names_parse_and_unknown_ones_are_named_in_the_error() {
    use diffnas::model::conv::ConvAlgorithm;
    for name in ConvAlgorithm::NAMES {
        assert_eq!(name.parse::<ConvAlgorithm>().unwrap().name(), name);
    }
    let e = "winograd".parse::<ConvAlgorithm>().unwrap_err();
    assert!(e.contains("\"winograd\"") && e.contains("gemm"), "{e}");
}

/// Largest |a - r| relative to the largest |r| (at least 1e-6).
fn rel_diff(a: &[f32], r: &[f32]) -> f32 {
    let scale = r.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    crate::common::max_abs_diff(a, r) / scale
}

#[test]
fn cpu_convolution_matches_burn_conv2d_forward_and_all_gradients() {
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use diffnas::cpu;
    let device = Device::flex().autodiff();
    device.seed(7);
    // (batch, cin, cout, kernel [kh, kw], stride [sh, sw], dilation [dh, dw],
    //  padding [(t, b), (l, r)], h, w, bias); bias: 0 none, 1 per channel, 2 per image.
    #[allow(clippy::type_complexity)]
    let cases: &[(
        usize,
        usize,
        usize,
        [usize; 2],
        [usize; 2],
        [usize; 2],
        [(usize, usize); 2],
        usize,
        usize,
        u8,
    )] = &[
        (2, 3, 5, [3, 3], [1, 1], [1, 1], [(1, 1), (1, 1)], 7, 6, 1),
        (2, 4, 6, [1, 1], [1, 1], [1, 1], [(0, 0), (0, 0)], 5, 5, 1),
        (3, 4, 6, [5, 5], [1, 1], [1, 1], [(2, 2), (2, 2)], 9, 7, 2),
        (2, 3, 4, [3, 3], [2, 2], [1, 1], [(1, 1), (1, 1)], 7, 8, 1),
        (2, 2, 3, [1, 1], [2, 2], [1, 1], [(0, 0), (0, 0)], 6, 6, 0),
        (2, 5, 2, [3, 3], [1, 1], [1, 1], [(0, 0), (0, 0)], 6, 5, 1),
        (2, 3, 4, [3, 3], [2, 2], [1, 1], [(0, 1), (1, 0)], 8, 9, 1),
        (2, 2, 3, [3, 3], [1, 1], [2, 2], [(2, 2), (2, 2)], 7, 7, 2),
        (2, 3, 3, [5, 5], [2, 2], [1, 1], [(2, 2), (2, 2)], 5, 5, 1),
        // Every size different along the two axes: a swap of height and width anywhere fails.
        (2, 3, 4, [3, 1], [2, 1], [1, 1], [(1, 1), (0, 0)], 9, 6, 1),
        (2, 2, 3, [1, 5], [1, 2], [2, 1], [(0, 1), (2, 1)], 5, 11, 2),
        (1, 3, 2, [5, 3], [1, 2], [1, 2], [(2, 1), (1, 2)], 8, 7, 0),
        // One image: the forward pass splits the image's rows over threads.
        (1, 3, 4, [3, 3], [1, 1], [1, 1], [(1, 1), (1, 1)], 11, 5, 1),
        // More images than weight-gradient chunks: chunks of two images.
        (11, 2, 3, [3, 3], [1, 1], [1, 1], [(1, 1), (1, 1)], 5, 6, 2),
        (2, 4, 3, [1, 1], [1, 1], [1, 1], [(1, 1), (1, 1)], 4, 4, 1),
        // A large weight over few pixels: its gradient is summed row-major, not transposed.
        (
            2,
            64,
            512,
            [3, 3],
            [1, 1],
            [1, 1],
            [(1, 1), (1, 1)],
            4,
            4,
            1,
        ),
    ];
    for (n, &(batch, cin, cout, k, s, d, pad, h, w, bias)) in cases.iter().enumerate() {
        let x = Tensor::<4>::random([batch, cin, h, w], Distribution::Normal(0.0, 1.0), &device);
        let wt = Tensor::<4>::random(
            [cout, cin, k[0], k[1]],
            Distribution::Normal(0.0, 0.5),
            &device,
        );
        let bc = Tensor::<1>::random([cout], Distribution::Normal(0.0, 1.0), &device);
        let bi = Tensor::<2>::random([batch, cout], Distribution::Normal(0.0, 1.0), &device);
        let options = ConvOptions::new_with_padding(s, pad, d, 1);
        let oh = (h + pad[0].0 + pad[0].1 - d[0] * (k[0] - 1) - 1) / s[0] + 1;
        let ow = (w + pad[1].0 + pad[1].1 - d[1] * (k[1] - 1) - 1) / s[1] + 1;
        // A fixed random cotangent, so every output element's gradient path is exercised.
        let ct = Tensor::<4>::random(
            [batch, cout, oh, ow],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        // `frozen_input`: the input needs no gradient (the first layer), so only the weight's
        // and the bias's are computed.
        let run = |ours: bool, strided: bool, frozen_input: bool| {
            let (x, wt, bc, bi) = (
                if frozen_input {
                    x.clone()
                } else {
                    x.clone().require_grad()
                },
                wt.clone().require_grad(),
                bc.clone().require_grad(),
                bi.clone().require_grad(),
            );
            // The same values as a strided view, as a permuted activation arrives.
            let xin = if strided {
                (x.clone().swap_dims(2, 3) * 1.0).swap_dims(2, 3)
            } else {
                x.clone()
            };
            let y = match (ours, bias) {
                (true, 0) => cpu::conv2d(xin, wt.clone(), None, options.clone()),
                (true, 1) => cpu::conv2d(xin, wt.clone(), Some(bc.clone()), options.clone()),
                (true, _) => cpu::conv2d_image_bias(xin, wt.clone(), bi.clone(), options.clone()),
                (false, 0) => conv2d(xin, wt.clone(), None, options.clone()),
                (false, 1) => conv2d(xin, wt.clone(), Some(bc.clone()), options.clone()),
                (false, _) => {
                    conv2d(xin, wt.clone(), None, options.clone())
                        + bi.clone().reshape([batch, cout, 1, 1])
                }
            };
            let g = (y.clone() * ct.clone()).sum().backward();
            let mut out = vec![
                to_vec(y.inner()),
                if frozen_input {
                    assert!(
                        x.grad(&g).is_none(),
                        "case {n}: a gradient for a frozen input"
                    );
                    Vec::new()
                } else {
                    to_vec(x.grad(&g).expect("input grad"))
                },
                to_vec(wt.grad(&g).expect("weight grad")),
            ];
            match bias {
                1 => out.push(to_vec(bc.grad(&g).expect("bias grad"))),
                2 => out.push(to_vec(bi.grad(&g).expect("image bias grad"))),
                _ => {}
            }
            out
        };
        let reference = run(false, false, false);
        for (strided, frozen_input) in [(false, false), (true, false), (false, true)] {
            let ours = run(true, strided, frozen_input);
            for (what, (a, r)) in ["output", "input grad", "weight grad", "bias grad"]
                .iter()
                .zip(ours.iter().zip(&reference))
            {
                if frozen_input && *what == "input grad" {
                    continue;
                }
                assert_eq!(a.len(), r.len(), "case {n} {what}: size");
                let e = rel_diff(a, r);
                assert!(
                    e <= 2e-6,
                    "case {n} (strided {strided}, frozen input {frozen_input}) {what}: \
                     relative error {e}"
                );
            }
        }
    }
}

#[test]
fn cpu_convolution_rejects_a_kernel_larger_than_the_padded_input() {
    use diffnas::cpu::conv::ConvGeometry;
    let e = ConvGeometry::new([1, 2, 3, 3], [4, 2, 5, 5], [1, 1], [1, 1], [(0, 0), (0, 0)])
        .unwrap_err();
    assert!(e.contains("does not fit"), "{e}");
    let e = ConvGeometry::new([1, 2, 3, 3], [4, 3, 1, 1], [1, 1], [1, 1], [(0, 0), (0, 0)])
        .unwrap_err();
    assert!(
        e.contains("expects 3 input channels") && e.contains("has 2"),
        "{e}"
    );
}

#[test]
fn cpu_kernels_give_the_same_bits_on_any_number_of_threads() {
    use diffnas::cpu::conv::{self, Bias, ConvGeometry, Wanted};
    use diffnas::cpu::norm::{self, NormGeometry};
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut vals = |n: usize| -> Vec<f32> {
        use rand::RngExt;
        (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
    };
    let g = ConvGeometry::new(
        [13, 6, 9, 9],
        [8, 6, 3, 3],
        [1, 1],
        [1, 1],
        [(1, 1), (1, 1)],
    )
    .unwrap();
    let (x, w, b) = (vals(13 * 6 * 81), vals(8 * 6 * 9), vals(8));
    let dy = vals(13 * 8 * 81);
    let ng = NormGeometry::new([13, 8, 9, 9], 4).unwrap();
    let (sc, sh) = (vals(13 * 8), vals(13 * 8));
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let y = conv::forward(&g, &x, &w, Bias::Channel(&b));
            let gr = conv::backward(
                &g,
                &x,
                &w,
                &dy,
                Wanted {
                    x: true,
                    weight: true,
                    bias: true,
                },
            );
            let (n, stats) = norm::forward(&ng, &y, &sc, &sh, 1e-5, true);
            let (dx, ds, dt) = norm::backward(&ng, &y, &sc, &sh, &stats, &dy, true);
            [
                y,
                gr.x.unwrap(),
                gr.weight.unwrap(),
                gr.bias.unwrap(),
                n,
                dx,
                ds,
                dt,
            ]
        })
    };
    // Gradients of a convolution whose sums are long (k = 576 terms, more than the GEMM sums in
    // one block) over few pixels: the batch splits into chunks by shape, not by thread count.
    let g2 = ConvGeometry::new(
        [5, 64, 6, 6],
        [16, 64, 3, 3],
        [1, 1],
        [1, 1],
        [(1, 1), (1, 1)],
    )
    .unwrap();
    let (x2, w2, dy2) = (vals(5 * 64 * 36), vals(16 * 64 * 9), vals(5 * 16 * 36));
    let run2 = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let all = Wanted {
                x: true,
                weight: true,
                bias: true,
            };
            let gr = conv::backward(&g2, &x2, &w2, &dy2, all);
            [gr.x.unwrap(), gr.weight.unwrap(), gr.bias.unwrap()]
        })
    };
    let (one, one2) = (run(1), run2(1));
    for threads in [2, 3, 8] {
        assert!(run(threads) == one, "{threads} threads differ from one");
        assert!(
            run2(threads) == one2,
            "{threads} threads differ from one (long sums)"
        );
    }
}

#[test]
fn cpu_group_norm_matches_burn_forward_and_all_gradients() {
    use burn::nn::GroupNormConfig;
    use burn::tensor::activation::silu;
    use diffnas::cpu;
    use diffnas::model::norm::{NormAlgorithm, group_norm_act};
    let device = Device::flex().autodiff();
    device.seed(11);
    // (batch, channels, groups, h, w)
    for (n, &(b, c, groups, h, w)) in [
        (2, 8, 4, 5, 3),
        (3, 8, 2, 1, 1),
        (1, 12, 1, 7, 9),
        (2, 4, 4, 16, 16),
    ]
    .iter()
    .enumerate()
    {
        let mut norm = GroupNormConfig::new(groups, c).init(&device);
        norm.gamma = norm.gamma.map(|p| {
            p.map(|_| Tensor::random([c], Distribution::Normal(1.0, 0.5), &device).require_grad())
        });
        norm.beta = norm.beta.map(|p| {
            p.map(|_| Tensor::random([c], Distribution::Normal(0.0, 0.5), &device).require_grad())
        });
        // Mean and spread away from 0 and 1, so that the normalisation matters.
        let x = Tensor::<4>::random([b, c, h, w], Distribution::Normal(3.0, 2.0), &device);
        let s = Tensor::<2>::random([b, c], Distribution::Normal(0.0, 0.5), &device);
        let t = Tensor::<2>::random([b, c], Distribution::Normal(0.0, 0.5), &device);
        let ct = Tensor::<4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device);
        for modulated in [false, true] {
            for act in [false, true] {
                let run = |algorithm: NormAlgorithm| {
                    let (x, s, t) = (
                        x.clone().require_grad(),
                        s.clone().require_grad(),
                        t.clone().require_grad(),
                    );
                    let m = modulated.then(|| (s.clone(), t.clone()));
                    let y = match algorithm {
                        NormAlgorithm::Fused => {
                            assert!(cpu::group_norm_supported(&x));
                            group_norm_act(&norm, x.clone(), m, act)
                        }
                        NormAlgorithm::Burn => {
                            // Burn's own ops, independently of the process-wide setting.
                            let h = norm.forward(x.clone());
                            let h = match m {
                                Some((s, t)) => {
                                    h * (s.reshape([b, c, 1, 1]) + 1.0) + t.reshape([b, c, 1, 1])
                                }
                                None => h,
                            };
                            if act { silu(h) } else { h }
                        }
                    };
                    let g = (y.clone() * ct.clone()).sum().backward();
                    let gamma = norm.gamma.as_ref().unwrap().val();
                    let beta = norm.beta.as_ref().unwrap().val();
                    let mut out = vec![
                        to_vec(y.inner()),
                        to_vec(x.grad(&g).expect("input grad")),
                        to_vec(gamma.grad(&g).expect("gamma grad")),
                        to_vec(beta.grad(&g).expect("beta grad")),
                    ];
                    if modulated {
                        out.push(to_vec(s.grad(&g).expect("scale grad")));
                        out.push(to_vec(t.grad(&g).expect("shift grad")));
                    }
                    out
                };
                let (ours, reference) = (run(NormAlgorithm::Fused), run(NormAlgorithm::Burn));
                for (what, (a, r)) in [
                    "output",
                    "input grad",
                    "gamma grad",
                    "beta grad",
                    "scale grad",
                    "shift grad",
                ]
                .iter()
                .zip(ours.iter().zip(&reference))
                {
                    let e = rel_diff(a, r);
                    assert!(
                        e <= 2e-5,
                        "case {n} (scale-shift {modulated}, silu {act}) {what}: relative error {e}"
                    );
                }
            }
        }
    }
}

#[test]
fn fast_exp_and_silu_match_the_standard_library() {
    use diffnas::cpu::math::{exp, silu, silu_grad};
    let mut worst = 0.0f64;
    for i in -86_999..=87_999 {
        let x = i as f32 * 1e-3;
        let r = (x as f64).exp();
        worst = worst.max(((exp(x) as f64 - r) / r).abs());
    }
    assert!(worst < 3e-7, "exp: worst relative error {worst}");
    assert!(exp(f32::NAN).is_nan());
    assert!(exp(-1e4) >= 0.0 && exp(-1e4) < 1e-37 && exp(1e4).is_finite());
    for i in -2000..=2000 {
        let x = i as f32 * 0.01;
        let s = 1.0 / (1.0 + (-(x as f64)).exp());
        let (fs, fg) = (x as f64 * s, s * (1.0 + x as f64 * (1.0 - s)));
        assert!(
            (silu(x) as f64 - fs).abs() <= 1e-6 * fs.abs().max(1.0),
            "silu({x})"
        );
        assert!((silu_grad(x) as f64 - fg).abs() <= 1e-6, "silu'({x})");
    }
    assert!(silu(f32::NAN).is_nan() && silu_grad(f32::NAN).is_nan());
}

#[test]
fn cpu_softmax_matches_burn_forward_and_gradient() {
    use burn::tensor::activation::softmax;
    let device = Device::flex().autodiff();
    device.seed(13);
    // Rows of 1, 7, 49 and 196 (not multiples of the vector width), large scores included.
    for (n, &(rows, len, spread)) in [(6, 1, 1.0), (10, 7, 3.0), (8, 49, 30.0), (4, 196, 1.0)]
        .iter()
        .enumerate()
    {
        let x = Tensor::<4>::random(
            [2, rows / 2, len, len.max(1)],
            Distribution::Normal(0.0, spread),
            &device,
        )
        .narrow(2, 0, 1);
        let ct = Tensor::<4>::random(x.dims(), Distribution::Normal(0.0, 1.0), &device);
        let scale = 0.37;
        let run = |ours: bool| {
            let x = x.clone().require_grad();
            let y = if ours {
                assert!(diffnas::cpu::supported(&x));
                diffnas::cpu::softmax(x.clone(), scale)
            } else {
                softmax(x.clone() * scale, 3)
            };
            let g = (y.clone() * ct.clone()).sum().backward();
            [to_vec(y.inner()), to_vec(x.grad(&g).expect("input grad"))]
        };
        let (ours, reference) = (run(true), run(false));
        for (what, (a, r)) in ["output", "input grad"]
            .iter()
            .zip(ours.iter().zip(&reference))
        {
            let e = rel_diff(a, r);
            assert!(e <= 1e-5, "case {n} {what}: relative error {e}");
        }
        // Rows sum to one.
        for row in ours[0].chunks(len.max(1)) {
            let s: f32 = row.iter().sum();
            assert!((s - 1.0).abs() < 1e-5, "case {n}: a row sums to {s}");
        }
    }
}
