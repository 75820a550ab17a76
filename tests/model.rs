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

/// The im2col + matmul convolution (the GPU default) against Burn's own `conv2d` on flex:
/// outputs and the gradients of input, weights and bias, over kernel sizes, strides and
/// paddings the UNets use (and a valid, unpadded one).
#[test]
fn gemm_convolution_matches_burn_conv2d_forward_and_gradients() {
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use diffnas::model::conv::conv2d_gemm;
    let device = Device::flex().autodiff();
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
        let x = Tensor::<4>::random([2, cin, h, w], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let wt = Tensor::<4>::random([cout, cin, k, k], Distribution::Normal(0.0, 0.5), &device)
            .require_grad();
        let b = Tensor::<1>::random([cout], Distribution::Normal(0.0, 1.0), &device).require_grad();
        // A fixed random cotangent, so every output element's gradient path is exercised.
        let ct_dims = {
            let o = |d: usize| (d + 2 * p - k) / s + 1;
            [2, cout, o(h), o(w)]
        };
        let ct = Tensor::<4>::random(ct_dims, Distribution::Normal(0.0, 1.0), &device);
        let reference = conv2d(
            x.clone(),
            wt.clone(),
            Some(b.clone()),
            ConvOptions::new([s, s], [p, p], [1, 1], 1),
        );
        let ours = conv2d_gemm(
            x.clone(),
            wt.clone(),
            Some(b.clone()),
            [s, s],
            [(p, p), (p, p)],
        );
        assert_eq!(ours.dims(), reference.dims(), "case {n}: shape");
        let close = |a: Vec<f32>, r: Vec<f32>, what: &str| {
            let scale = r.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let d = crate::common::max_abs_diff(&a, &r);
            assert!(
                d <= 1e-5 * scale,
                "case {n} {what}: max diff {d} of scale {scale}"
            );
        };
        close(
            to_vec(ours.clone().inner()),
            to_vec(reference.clone().inner()),
            "output",
        );
        let g_ref = (reference * ct.clone()).sum().backward();
        let g_ours = (ours * ct).sum().backward();
        close(
            to_vec(x.grad(&g_ours).unwrap()),
            to_vec(x.grad(&g_ref).unwrap()),
            "input grad",
        );
        close(
            to_vec(wt.grad(&g_ours).unwrap()),
            to_vec(wt.grad(&g_ref).unwrap()),
            "weight grad",
        );
        close(
            to_vec(b.grad(&g_ours).unwrap()),
            to_vec(b.grad(&g_ref).unwrap()),
            "bias grad",
        );
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
