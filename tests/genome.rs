//! Genome: validation with paths, canonical form, search-space operators, cost model.

use crate::common::tiny16;
use diffnas::genome::{Budget, Genome, ImageSpec, SearchSpace, cost};
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

#[test]
fn presets_are_valid_in_their_default_space() {
    for name in Genome::PRESETS {
        let g = Genome::preset(name).unwrap();
        g.check().unwrap_or_else(|e| panic!("{name}: {e}"));
        // A learned-variance preset (iddpm-cifar10) belongs to the space of a hybrid-loss search.
        let mut space = SearchSpace::for_image(g.image);
        space.learn_sigma = g.learn_sigma;
        space.validate(&g).unwrap_or_else(|e| panic!("{name}: {e}"));
        space.learn_sigma = !g.learn_sigma;
        let e = space.validate(&g).unwrap_err().to_string();
        assert!(e.contains("learn_sigma"), "{name}: {e}");
    }
}

#[test]
fn learn_sigma_is_part_of_the_network_and_absent_from_old_genomes() {
    let g = tiny16();
    assert!(!g.to_json_pretty().contains("learn_sigma"));
    let mut l = g.clone();
    l.learn_sigma = true;
    assert_ne!(g.hash(), l.hash(), "a learned variance builds another head");
    let back = Genome::from_json(&l.to_json_pretty()).unwrap();
    assert_eq!(back, l);
    // The head's output channels double, and the cost model counts them.
    let (a, b) = (cost(&g).unwrap(), cost(&l).unwrap());
    let head_in = g.layout().unwrap().head_channels as u64;
    assert_eq!(b.params - a.params, head_in * 9 + 1);
}

#[test]
fn reference_parameter_counts() {
    // The DDPM CIFAR-10 UNet has 35,746,307 parameters (Ho et al. 2020; counted on the official
    // TensorFlow model and its PyTorch ports).
    assert_eq!(cost(&Genome::ddpm_cifar10()).unwrap().params, 35_746_307);
    // IDDPM CIFAR-10 (3 blocks, attention at 16 and 8, scale-shift): about 52.5 M.
    let iddpm = cost(&Genome::iddpm_cifar10()).unwrap().params as f64 / 1e6;
    assert!((52.0..53.0).contains(&iddpm), "iddpm {iddpm} M");
    // The DDPM model costs about 6.1 GMACs per 32x32 image.
    let macs = cost(&Genome::ddpm_cifar10()).unwrap().macs as f64 / 1e9;
    assert!((5.9..6.3).contains(&macs), "ddpm {macs} GMACs");
    let tiny = cost(&Genome::tiny()).unwrap().params;
    assert!(
        (100_000..1_000_000).contains(&tiny),
        "tiny has {tiny} params"
    );
}

#[test]
fn validation_names_the_path_and_the_allowed_values() {
    let mut g = Genome::ddpm_cifar10();
    g.encoder[2].channel_mult = 7;
    g.encoder[1].res_blocks[0].kernels[1] = 4;
    let err = SearchSpace::for_image(g.image)
        .validate(&g)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("encoder[2].channel_mult: 7 is not one of [1, 2, 3, 4]"),
        "{err}"
    );
    assert!(err.contains("encoder[1].res_blocks[0].kernels[1]"), "{err}");

    let mut g = Genome::tiny();
    g.decoder[0].res_blocks.pop();
    let err = g.check().unwrap_err().to_string();
    assert!(
        err.contains("decoder[0].res_blocks: has 1 blocks but must have 2"),
        "{err}"
    );

    let mut g = Genome::tiny();
    g.attention.resolutions = vec![5];
    let err = g.check().unwrap_err().to_string();
    assert!(
        err.contains("attention.resolutions[0]: 5 is not a level resolution"),
        "{err}"
    );

    let mut g = Genome::tiny();
    g.base_channels = 20;
    let err = g.check().unwrap_err().to_string();
    assert!(
        err.contains("base_channels: 20 is not a multiple of norm_groups = 8"),
        "{err}"
    );

    let space = SearchSpace::for_image(Genome::ddpm_cifar10().image).with_budget(Budget {
        max_params: Some(1_000_000),
        ..Budget::default()
    });
    let err = space
        .validate(&Genome::ddpm_cifar10())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("35746307 parameters exceed the budget max_params = 1000000"),
        "{err}"
    );
}

#[test]
fn json_errors_carry_the_field_path() {
    let mut v: serde_json::Value = serde_json::to_value(Genome::tiny()).unwrap();
    v["encoder"][1]["channel_mult"] = serde_json::json!("two");
    let err = Genome::from_json(&v.to_string()).unwrap_err();
    assert_eq!(err.path, "encoder[1].channel_mult");
    v["encoder"][1]["channel_mult"] = serde_json::json!(2);
    v["encoder"][1]["res_blocks"][0]["kernel"] = serde_json::json!(3);
    let err = Genome::from_json(&v.to_string()).unwrap_err();
    assert!(err.path.starts_with("encoder[1].res_blocks[0]"), "{err}");
    assert!(err.message.contains("unknown field `kernel`"), "{err}");
}

#[test]
fn canonical_json_and_hash() {
    let g = Genome::tiny();
    let back = Genome::from_json(&g.to_json_pretty()).unwrap();
    assert_eq!(back, g);
    assert_eq!(back.hash(), g.hash());
    assert_eq!(g.hash().len(), 16);
    // Attention resolutions are a set: order does not change the network or the hash.
    let mut a = Genome::iddpm_cifar10();
    let mut b = a.clone();
    a.attention.resolutions = vec![16, 8];
    b.attention.resolutions = vec![8, 16];
    assert_eq!(a.hash(), b.hash());
    // A real change does.
    b.encoder[0].res_blocks[0].hidden_mult = 0.75;
    assert_ne!(a.hash(), b.hash());
    // Canonical JSON has sorted keys and no whitespace.
    let c = g.canonical_json();
    assert!(c.starts_with("{\"attention\":"), "{c}");
    assert!(!c.contains(' '));
}

#[test]
fn the_hash_names_the_network_that_is_built() {
    // tiny: base 24, groups 8. At 24 channels, 0.5 and 0.75 both build 16 hidden channels
    // (1.5 and 2.25 groups round to 2); at 48, they build 24 and 40.
    let g = Genome::tiny();
    let mut a = g.clone();
    let mut b = g.clone();
    assert_eq!(a.encoder[0].channel_mult * a.base_channels, 24);
    a.encoder[0].res_blocks[0].hidden_mult = 0.5;
    b.encoder[0].res_blocks[0].hidden_mult = 0.75;
    let la = a.layout().unwrap();
    let lb = b.layout().unwrap();
    assert_eq!(la, lb, "the same network");
    assert_eq!(a.hash(), b.hash());
    // At 48 channels (level 1) the two differ, and so do the hashes.
    let (mut c, mut d) = (g.clone(), g.clone());
    assert_eq!(c.encoder[1].channel_mult * c.base_channels, 48);
    c.encoder[1].res_blocks[0].hidden_mult = 0.5;
    d.encoder[1].res_blocks[0].hidden_mult = 0.75;
    assert_ne!(c.layout().unwrap(), d.layout().unwrap());
    assert_ne!(c.hash(), d.hash());
    // With head_channels set, `heads` builds nothing.
    let mut e = g.clone();
    e.attention.head_channels = Some(12);
    let mut e2 = e.clone();
    e2.attention.heads = 1;
    assert_eq!(e.hash(), e2.hash());
    // One it has does.
    let mut f = g.clone();
    f.attention.resolutions.push(14);
    assert_ne!(f.hash(), g.hash());
    // Heads, dropout and the timestep width are part of the network.
    for change in [
        |x: &mut Genome| x.attention.heads = 2,
        |x: &mut Genome| x.dropout = 0.1,
        |x: &mut Genome| x.time_embed_mult = 2,
    ] {
        let mut h = g.clone();
        change(&mut h);
        assert_ne!(h.hash(), g.hash());
    }
    // A genome whose blocks already say the width they build keeps its hash (the standard
    // 1.0 everywhere): hashes of such genomes are the same as before hashes were canonical.
    assert_eq!(g.canonical(), g);
}

fn small_space() -> SearchSpace {
    let mut s = SearchSpace::for_image(ImageSpec {
        channels: 1,
        size: 16,
    });
    s.base_channels = vec![16, 32];
    s
}

#[test]
fn random_and_mutate_stay_valid() {
    let space = small_space();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut hashes = std::collections::HashSet::new();
    for _ in 0..100 {
        let g = space.random(&mut rng, 1000).expect("a valid genome");
        space.validate(&g).unwrap();
        hashes.insert(g.hash());
        let m = space.mutate(&g, &mut rng, 100).expect("a mutation");
        space.validate(&m).unwrap();
        assert_ne!(m.hash(), g.hash());
        let other = space.random(&mut rng, 1000).unwrap();
        let child = space.crossover(&g, &other, &mut rng, 20);
        space.validate(&child).unwrap();
    }
    assert!(hashes.len() > 90, "random genomes should rarely repeat");
}

#[test]
fn random_respects_the_budget() {
    let space = small_space().with_budget(Budget {
        max_params: Some(300_000),
        ..Budget::default()
    });
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for _ in 0..20 {
        let g = space.random(&mut rng, 5000).expect("budget is reachable");
        assert!(cost(&g).unwrap().params <= 300_000);
    }
    let impossible = small_space().with_budget(Budget {
        max_params: Some(10),
        ..Budget::default()
    });
    assert!(impossible.random(&mut rng, 50).is_none());
}

#[test]
fn tiny16_is_small() {
    let c = cost(&tiny16()).unwrap();
    assert!(c.params < 1_000_000 && c.macs > 0);
}

/// A mutation always changes the network: never heads alone where there is no attention, never
/// dropout when the space fixes it (as a proxy search does).
#[test]
fn mutations_are_never_no_ops() {
    let mut space = SearchSpace::for_image(ImageSpec {
        channels: 1,
        size: 28,
    });
    space.dropouts = vec![0.0];
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut parent = space.random(&mut rng, 100_000).unwrap();
    parent.attention.resolutions.clear();
    parent.dropout = 0.0;
    space.validate(&parent).unwrap();
    for _ in 0..500 {
        let mut child = space.mutate(&parent, &mut rng, 200).unwrap();
        assert_eq!(child.dropout, 0.0);
        child.attention.heads = parent.attention.heads;
        child.attention.head_channels = parent.attention.head_channels;
        assert_ne!(
            child.canonical_json(),
            parent.canonical_json(),
            "a heads-only change"
        );
    }
}
