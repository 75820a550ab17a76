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
