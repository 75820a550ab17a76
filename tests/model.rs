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
