//! Block-wise distillation search: the block view, supernets, local search, assembly, lambda.

use crate::common::{Randomize, max_abs_diff, tiny16, to_vec};
use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use diffnas::genome::{Genome, ResBlockGene, SearchSpace, cost};
use diffnas::model::{BlockId, Unet};
use diffnas::search::block::local::{Scored, choose, global_budget, pareto};
use diffnas::search::block::retrain::LambdaSchedule;
use diffnas::search::block::supernet::BlockSupernet;
use diffnas::search::block::{BlockSpace, PathCost, assemble, block_spaces};

const KERNELS: [usize; 3] = [1, 3, 5];
const MULTS: [f64; 4] = [0.5, 0.75, 1.0, 1.25];

/// tiny16 with varied genes (a non-default kernel pair, a narrow and a wide block) and
/// optionally scale-shift norm, so that the teacher path is not every unit's first choice.
fn teacher_genome(scale_shift: bool) -> Genome {
    let mut g = tiny16();
    g.scale_shift_norm = scale_shift;
    g.encoder[0].res_blocks[0] = ResBlockGene {
        kernels: [5, 1],
        hidden_mult: 0.75,
    };
    g.middle.res_blocks[1].hidden_mult = 1.25;
    let last = g.decoder.len() - 1;
    g.decoder[last].res_blocks[0].kernels = [1, 3];
    g
}

fn random_teacher(g: &Genome, seed: u64, device: &Device) -> Unet {
    Unet::new(g, device)
        .unwrap()
        .map(&mut Randomize::new(seed, 0.1))
}

fn inputs(g: &Genome, b: usize, device: &Device) -> (Tensor<4>, Tensor<1>) {
    let s = g.image.size;
    let x = Tensor::random(
        [b, g.image.channels, s, s],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let t = Tensor::from_floats([3.0, 250.0, 999.0][..b].to_vec().as_slice(), device);
    (x, t)
}

#[test]
fn trace_matches_forward_and_blocks_rerun_exactly() {
    let device = Device::flex();
    let g = teacher_genome(false);
    let teacher = random_teacher(&g, 1, &device);
    let (x, t) = inputs(&g, 3, &device);
    let tr = teacher.trace(x.clone(), t.clone());
    assert_eq!(to_vec(tr.eps.clone()), to_vec(teacher.forward(x, t)));
    let ids = teacher.block_ids();
    assert_eq!(ids.len(), 2 * g.encoder.len() + 1);
    assert_eq!(tr.blocks.iter().map(|b| b.id).collect::<Vec<_>>(), ids);
    for io in &tr.blocks {
        let out = teacher.forward_block(io.id, io.input.clone(), &io.skips, tr.emb.clone());
        let n = match io.id {
            BlockId::Encoder(l) => g.encoder[l].res_blocks.len(),
            _ => 1,
        };
        assert_eq!(out.len(), n, "{}", io.id);
        assert_eq!(
            io.skips.len(),
            match io.id {
                BlockId::Decoder(d) => g.decoder[d].res_blocks.len(),
                _ => 0,
            }
        );
        for (a, b) in out.into_iter().zip(&io.outputs) {
            assert_eq!(to_vec(a), to_vec(b.clone()), "{}", io.id);
        }
    }
}

#[test]
fn teacher_path_with_teacher_weights_reproduces_every_block() {
    let device = Device::flex();
    for scale_shift in [false, true] {
        let g = teacher_genome(scale_shift);
        let teacher = random_teacher(&g, 2, &device);
        let spaces = block_spaces(&g, &KERNELS, &MULTS).unwrap();
        let (x, t) = inputs(&g, 2, &device);
        let tr = teacher.trace(x, t);
        for (space, io) in spaces.iter().zip(&tr.blocks) {
            let net = BlockSupernet::new(&g, space, &device).load_teacher(&teacher);
            let out = net.forward(
                &space.teacher_path(),
                io.input.clone(),
                &io.skips,
                tr.emb.clone(),
            );
            for (a, b) in out.into_iter().zip(&io.outputs) {
                let (a, b) = (to_vec(a), to_vec(b.clone()));
                let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = max_abs_diff(&a, &b);
                assert!(
                    d <= 1e-6 * scale,
                    "{} (scale-shift {scale_shift}): max difference {d} of {scale}",
                    io.id
                );
            }
            // Another path gives something else: the copy did not leak into every path.
            let other: Vec<ResBlockGene> = space.units.iter().map(|u| u.gene(0)).collect();
            assert_ne!(other, space.teacher_path());
            let o = net.forward(&other, io.input.clone(), &io.skips, tr.emb.clone());
            assert!(max_abs_diff(&to_vec(o[0].clone()), &to_vec(io.outputs[0].clone())) > 1e-4);
        }
    }
}

#[test]
fn every_candidate_has_the_teachers_output_shape() {
    let device = Device::flex();
    let g = teacher_genome(true);
    let teacher = random_teacher(&g, 3, &device);
    let spaces = block_spaces(&g, &KERNELS, &MULTS).unwrap();
    let (x, t) = inputs(&g, 1, &device);
    let tr = teacher.trace(x, t);
    for (space, io) in spaces.iter().zip(&tr.blocks) {
        let net = BlockSupernet::new(&g, space, &device);
        // Every choice of every unit at least once (the other units at choice 0).
        for u in 0..space.units.len() {
            for i in 0..space.units[u].len() {
                let mut path: Vec<ResBlockGene> = space.units.iter().map(|u| u.gene(0)).collect();
                path[u] = space.units[u].gene(i);
                let out = net.forward(&path, io.input.clone(), &io.skips, tr.emb.clone());
                assert_eq!(out.len(), io.outputs.len());
                for (a, b) in out.iter().zip(&io.outputs) {
                    assert_eq!(a.dims(), b.dims(), "{} path {path:?}", io.id);
                }
            }
        }
    }
}

#[test]
fn narrow_paths_leave_unused_slices_with_zero_gradient() {
    let device = Device::flex().autodiff();
    let g = teacher_genome(true);
    let spaces = block_spaces(&g, &KERNELS, &MULTS).unwrap();
    let space = &spaces[0];
    let net = BlockSupernet::new(&g, space, &device).map(&mut Randomize::new(4, 0.1));
    let u = &space.units[0];
    let (w, mult) = u.widths[0];
    let wmax = u.max_width();
    assert!(w < wmax);
    let path = vec![
        ResBlockGene {
            kernels: [3, 5],
            hidden_mult: mult,
        };
        space.units.len()
    ];
    let s = u.teacher;
    let x = Tensor::<4>::random(
        [2, s.in_channels, s.resolution, s.resolution],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let temb = g.base_channels * g.time_embed_mult;
    let emb = Tensor::<2>::random([2, temb], Distribution::Normal(0.0, 1.0), &device);
    let out = net.forward(&path, x, &[], emb);
    let loss = out
        .into_iter()
        .map(|o| o.powf_scalar(2.0).sum())
        .reduce(|a, b| a + b)
        .unwrap();
    let grads = loss.backward();
    let res = &net.units[0].res;
    let k3 = res.kernels.iter().position(|&k| k == 3).unwrap();
    let k5 = res.kernels.iter().position(|&k| k == 5).unwrap();
    let g1 = res.conv1[k3].weight.grad(&grads).unwrap();
    let g2 = res.conv2[k5].weight.grad(&grads).unwrap();
    let ge = res.emb.weight.grad(&grads).unwrap();
    let nonzero = |t: Tensor<4>| to_vec(t).iter().any(|v| *v != 0.0);
    let zero = |v: Vec<f32>| v.iter().all(|v| *v == 0.0);
    let k = 3;
    assert!(nonzero(g1.clone().slice([
        0..w,
        0..s.in_channels,
        0..k,
        0..k
    ])));
    assert!(zero(to_vec(g1.slice([
        w..wmax,
        0..s.in_channels,
        0..k,
        0..k
    ]))));
    assert!(nonzero(g2.clone().slice([
        0..s.out_channels,
        0..w,
        0..5,
        0..5
    ])));
    assert!(zero(to_vec(g2.slice([
        0..s.out_channels,
        w..wmax,
        0..5,
        0..5
    ]))));
    // Scale-shift projection: scales [0, w) and shifts [wmax, wmax + w) are used.
    assert!(
        to_vec(ge.clone().slice([0..temb, 0..w]))
            .iter()
            .any(|v| *v != 0.0)
    );
    assert!(zero(to_vec(ge.clone().slice([0..temb, w..wmax]))));
    assert!(
        to_vec(ge.clone().slice([0..temb, wmax..wmax + w]))
            .iter()
            .any(|v| *v != 0.0)
    );
    assert!(zero(to_vec(ge.slice([0..temb, wmax + w..2 * wmax]))));
    // Kernels and widths the path did not take get no gradient at all.
    let k1 = res.kernels.iter().position(|&k| k == 1).unwrap();
    assert!(res.conv1[k1].weight.grad(&grads).is_none());
    assert!(res.norm2[1].gamma.as_ref().unwrap().grad(&grads).is_none());
}

fn entry(macs: u64, params: u64, loss: f64) -> Scored {
    Scored {
        path: Vec::new(),
        loss,
        cost: PathCost { params, macs },
    }
}

#[test]
fn local_search_picks_the_cheapest_feasible_candidate() {
    let t = vec![
        entry(100, 10, 1.00), // 0: the reference
        entry(60, 6, 1.20),   // 1
        entry(50, 5, 1.30),   // 2
        entry(60, 7, 1.05),   // 3: same MACs as 1, lower loss
        entry(80, 8, 0.90),   // 4
        entry(60, 5, 1.05),   // 5: ties 3 on MACs and loss, fewer params
        entry(50, 4, 1.30),   // 6: ties 2 on MACs and loss, fewer params
    ];
    assert_eq!(choose(&t, 1.0, 1.0), Some(4));
    assert_eq!(choose(&t, 1.0, 0.9), Some(4)); // the boundary counts as feasible
    assert_eq!(choose(&t, 1.0, 0.89), None);
    assert_eq!(choose(&t, 1.0, 1.1), Some(5));
    assert_eq!(choose(&t, 1.0, 1.25), Some(5));
    assert_eq!(choose(&t, 1.0, 1.3), Some(6));
    assert_eq!(choose(&t, 1.0, 100.0), Some(6));
    // Complete ties: the earlier entry.
    let u = vec![entry(10, 1, 0.5), entry(10, 1, 0.5)];
    assert_eq!(choose(&u, 1.0, 1.0), Some(0));
    // The Pareto front, cheapest first.
    assert_eq!(pareto(&t), vec![2, 3, 4]);
}

#[test]
fn global_budget_is_exact_against_brute_force() {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(7);
    for case in 0..20 {
        let tables: Vec<Vec<Scored>> = (0..3)
            .map(|_| {
                (0..6)
                    .map(|_| entry(rng.random_range(1..50), 1, rng.random_range(0.0..1.0)))
                    .collect()
            })
            .collect();
        let budget = rng.random_range(20..120);
        let mut best: Option<(f64, Vec<usize>)> = None;
        for a in 0..6 {
            for b in 0..6 {
                for c in 0..6 {
                    let pick = [a, b, c];
                    let macs: u64 = (0..3).map(|i| tables[i][pick[i]].cost.macs).sum();
                    let loss: f64 = (0..3).map(|i| tables[i][pick[i]].loss).sum();
                    if macs <= budget && best.as_ref().is_none_or(|(l, _)| loss < *l) {
                        best = Some((loss, pick.to_vec()));
                    }
                }
            }
        }
        let got = global_budget(&tables, budget);
        match (&best, &got) {
            (None, None) => {}
            (Some((l, _)), Some(p)) => {
                let loss: f64 = (0..3).map(|i| tables[i][p[i]].loss).sum();
                let macs: u64 = (0..3).map(|i| tables[i][p[i]].cost.macs).sum();
                assert!((loss - l).abs() < 1e-12, "case {case}: {loss} vs {l}");
                assert!(macs <= budget);
            }
            _ => panic!("case {case}: brute force {best:?}, merge {got:?}"),
        }
    }
}

#[test]
fn assembled_student_validates_and_costs_what_the_blocks_say() {
    use rand::{RngExt, SeedableRng};
    let g = teacher_genome(false);
    let spaces = block_spaces(&g, &KERNELS, &MULTS).unwrap();
    let space_rules = SearchSpace::for_image(g.image);
    let teacher_cost = cost(&g).unwrap();
    let teacher_blocks: Vec<PathCost> = spaces
        .iter()
        .map(|s| s.cost(&s.teacher_path(), &g))
        .collect();
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(11);
    for _ in 0..20 {
        let choice: Vec<(BlockId, Vec<ResBlockGene>)> = spaces
            .iter()
            .map(|s: &BlockSpace| (s.id, s.path(rng.random_range(0..s.size()))))
            .collect();
        let student = assemble(&g, &choice);
        space_rules.validate(&student).unwrap();
        let c = cost(&student).unwrap();
        let mut macs = teacher_cost.macs;
        let mut params = teacher_cost.params;
        for ((s, (_, p)), t) in spaces.iter().zip(&choice).zip(&teacher_blocks) {
            let pc = s.cost(p, &g);
            macs = macs - t.macs + pc.macs;
            params = params - t.params + pc.params;
        }
        assert_eq!((c.macs, c.params), (macs, params));
        let built = Unet::new(&student, &Device::flex()).unwrap();
        assert_eq!(built.num_params() as u64, c.params);
    }
    // The teacher's own choice assembles to the teacher.
    let same: Vec<_> = spaces.iter().map(|s| (s.id, s.teacher_path())).collect();
    assert_eq!(assemble(&g, &same), g);
}

#[test]
fn lambda_schedules_at_their_boundaries() {
    let s = 100;
    let l = LambdaSchedule::Linear;
    assert_eq!(
        (l.at(0, s), l.at(50, s), l.at(100, s), l.at(500, s)),
        (0.0, 0.5, 1.0, 1.0)
    );
    let c = LambdaSchedule::Cosine;
    assert_eq!(c.at(0, s), 0.0);
    assert!((c.at(50, s) - 0.5).abs() < 1e-12);
    assert!((c.at(100, s) - 1.0).abs() < 1e-12);
    assert!(
        c.at(25, s) < l.at(25, s),
        "cosine starts slower than linear"
    );
    let st = LambdaSchedule::Step;
    assert_eq!((st.at(0, s), st.at(99, s), st.at(100, s)), (0.0, 0.0, 1.0));
    assert_eq!(LambdaSchedule::Static(0.3).at(0, s), 0.3);
    assert_eq!(LambdaSchedule::Static(0.3).at(1000, s), 0.3);
    assert_eq!(LambdaSchedule::DiffusionOnly.at(0, s), 1.0);
    // A zero-length ramp is diffusion from the start.
    assert_eq!(l.at(0, 0), 1.0);
    assert_eq!(st.at(0, 0), 1.0);
    for text in ["linear", "cosine", "step", "static:0.25", "diffusion-only"] {
        assert_eq!(LambdaSchedule::parse(text).unwrap().to_string(), text);
    }
    assert!(
        LambdaSchedule::parse("static:1.5")
            .unwrap_err()
            .contains("[0, 1]")
    );
    assert!(
        LambdaSchedule::parse("exp")
            .unwrap_err()
            .contains("expected linear")
    );
}

#[test]
fn student_from_supernets_runs_the_chosen_paths() {
    use diffnas::search::block::retrain::student_from_supernets;
    let device = Device::flex();
    for scale_shift in [false, true] {
        let g = teacher_genome(scale_shift);
        let teacher = random_teacher(&g, 5, &device);
        let spaces = block_spaces(&g, &KERNELS, &MULTS).unwrap();
        // Supernets holding the teacher, then trained-looking noise everywhere else.
        let nets: Vec<BlockSupernet> = spaces
            .iter()
            .enumerate()
            .map(|(i, s)| {
                BlockSupernet::new(&g, s, &device)
                    .map(&mut Randomize::new(10 + i as u64, 0.1))
                    .load_teacher(&teacher)
            })
            .collect();
        let (x, t) = inputs(&g, 2, &device);
        // The teacher's paths give back the teacher.
        let same: Vec<_> = spaces.iter().map(|s| s.teacher_path()).collect();
        let s0 = student_from_supernets(Unet::new(&g, &device).unwrap(), &teacher, &nets, &same);
        let d = max_abs_diff(
            &to_vec(s0.forward(x.clone(), t.clone())),
            &to_vec(teacher.forward(x.clone(), t.clone())),
        );
        assert!(d < 1e-5, "teacher path round trip: {d}");
        // Other paths: each student block computes what its supernet computes on that path.
        let paths: Vec<_> = spaces.iter().map(|s| s.path(s.size() / 3)).collect();
        let choice: Vec<_> = spaces
            .iter()
            .zip(&paths)
            .map(|(s, p)| (s.id, p.clone()))
            .collect();
        let sg = assemble(&g, &choice);
        let student =
            student_from_supernets(Unet::new(&sg, &device).unwrap(), &teacher, &nets, &paths);
        let tr = teacher.trace(x, t);
        for ((net, path), io) in nets.iter().zip(&paths).zip(&tr.blocks) {
            let a = net.forward(path, io.input.clone(), &io.skips, tr.emb.clone());
            let b = student.forward_block(
                io.id,
                io.input.clone(),
                &io.skips,
                student.embed(Tensor::from_floats([3.0, 250.0].as_slice(), &device)),
            );
            for (a, b) in a.into_iter().zip(b) {
                let d = max_abs_diff(&to_vec(a), &to_vec(b));
                assert!(d < 1e-5, "{}: {d}", io.id);
            }
        }
    }
}

fn noise_dataset(n: usize, size: usize) -> diffnas::data::Dataset {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(3);
    diffnas::data::Dataset {
        name: "noise".into(),
        pixels: (0..n * size * size)
            .map(|_| rng.random_range(0..=255u8))
            .collect(),
        labels: None,
        len: n,
        channels: 1,
        height: size,
        width: size,
    }
}

#[test]
fn supernet_training_resumes_exactly_past_a_damaged_checkpoint() {
    use diffnas::search::block::distill::{DistillEvent, SUPERNETS_FILE, train_supernets};
    use diffnas::train::TrainConfig;
    use std::sync::atomic::{AtomicBool, Ordering};
    let device = Device::flex().autodiff();
    let g = teacher_genome(false);
    let teacher = random_teacher(&g, 6, &Device::flex());
    let spaces = block_spaces(&g, &KERNELS, &MULTS).unwrap();
    let init: Vec<BlockSupernet> = spaces
        .iter()
        .map(|s| BlockSupernet::new(&g, s, &device))
        .collect();
    let data = noise_dataset(32, 16);
    let cfg = TrainConfig::new()
        .with_steps(8)
        .with_batch_size(4)
        .with_lr(1e-3)
        .with_warmup_steps(1)
        .with_checkpoint_every(4)
        .with_log_every(1);
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    let full = train_supernets(
        &teacher,
        &spaces,
        init.clone(),
        &data,
        &cfg,
        &device,
        Some(&a),
        None,
        &mut |_| {},
    )
    .unwrap();
    assert!(full.finished);
    assert_eq!(full.log.len(), 8);
    assert_eq!(full.log[0].losses.len(), spaces.len());
    // Stopped after step 5 (checkpoints at 4 and, at the stop, 5); the newest is then
    // damaged, and the resumed run passes over it to step 4 and ends where the full run did.
    let stop = AtomicBool::new(false);
    let part = train_supernets(
        &teacher,
        &spaces,
        init.clone(),
        &data,
        &cfg,
        &device,
        Some(&b),
        Some(&stop),
        &mut |e| {
            if *e == (DistillEvent::Step { step: 5 }) {
                stop.store(true, Ordering::SeqCst);
            }
        },
    )
    .unwrap();
    assert!(!part.finished);
    assert_eq!(part.state.step, 5);
    let newest = diffnas::train::checkpoint::latest(&b).unwrap();
    assert!(newest.ends_with("step-000000005"), "{}", newest.display());
    let state = diffnas::train::checkpoint::read_state(&newest).unwrap();
    assert_eq!(
        state.sha256.len(),
        1 + spaces.len(),
        "supernets and each optimizer sealed"
    );
    crate::common::flip(&newest.join(SUPERNETS_FILE), 2000);
    let mut started = None;
    let mut notes = Vec::new();
    let rest = train_supernets(
        &teacher,
        &spaces,
        init,
        &data,
        &cfg,
        &device,
        Some(&b),
        None,
        &mut |e| match e {
            DistillEvent::Started { step, .. } => started = Some(*step),
            DistillEvent::Note(n) => notes.push(n.clone()),
            _ => {}
        },
    )
    .unwrap();
    assert_eq!(
        started,
        Some(4),
        "the second call passes over the damaged step-5 checkpoint to step 4"
    );
    assert!(
        notes.iter().any(|n| n.contains(SUPERNETS_FILE)
            && n.contains("damaged")
            && n.contains("passed over")),
        "{notes:?}"
    );
    assert!(
        b.join("checkpoints/step-000000005.damaged")
            .join(SUPERNETS_FILE)
            .exists(),
        "the damaged checkpoint is kept aside, not deleted"
    );
    // Old checkpoints are pruned to the configured number (the damaged one aside).
    let kept = std::fs::read_dir(b.join("checkpoints"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with("step-") && !name.ends_with(".damaged")
        })
        .count();
    assert_eq!(kept, cfg.keep_checkpoints);
    assert!(rest.finished);
    assert_eq!(rest.state.step, 8);
    for (x, y) in full.nets.iter().zip(&rest.nets) {
        assert!(
            crate::common::param_values(x) == crate::common::param_values(y),
            "{}: resumed weights differ",
            x.id
        );
    }
    assert_eq!(
        full.log
            .iter()
            .map(|r| r.losses.clone())
            .collect::<Vec<_>>(),
        rest.log
            .iter()
            .map(|r| r.losses.clone())
            .collect::<Vec<_>>()
    );
}

/// The whole command on the real data (the committed fmnist-tiny teacher, a slice of
/// Fashion-MNIST), with tiny budgets: every phase's files, a valid cheaper-or-equal student,
/// the ablation, and a report.
#[test]
fn block_search_end_to_end_on_real_data() {
    let diffnas = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_diffnas"))
            .args(args)
            .output()
            .unwrap()
    };
    let work = tempfile::tempdir().unwrap();
    let Some(data) = crate::search::small_fashion_mnist(work.path(), 64, 16) else {
        eprintln!("Fashion-MNIST not installed: skipped");
        return;
    };
    let teacher =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fmnist-tiny");
    let dir = work.path().join("block");
    let args = [
        "search",
        "block",
        "--teacher",
        teacher.to_str().unwrap(),
        "--run-dir",
        dir.to_str().unwrap(),
        "--data",
        &data,
        "--device",
        "flex",
        "--supernet-steps",
        "2",
        "--batch-size",
        "4",
        "--eval-batches",
        "1",
        "--max-exhaustive",
        "40",
        "--samples",
        "4",
        "--rounds",
        "1",
        "--children",
        "1",
        "--retrain-steps",
        "2",
        "--ablation",
        "--score-n",
        "0",
        "--score-steps",
        "2",
        "--latency-batch",
        "2",
        "--gamma",
        "3",
    ];
    let o = diffnas(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    for f in [
        "block.json",
        "supernet/supernets.bpk",
        "search/tables.json",
        "search/choice.json",
        "search/frontier.json",
        "student/genome.json",
        "student/ema.bpk",
        "student-diffusion-only/ema.bpk",
        "report.md",
        "report.json",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing\n{err}");
    }
    let g = Genome::from_json(&std::fs::read_to_string(dir.join("student/genome.json")).unwrap())
        .unwrap();
    SearchSpace::for_image(g.image).validate(&g).unwrap();
    let tg =
        Genome::from_json(&std::fs::read_to_string(teacher.join("genome.json")).unwrap()).unwrap();
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    let models = r["models"].as_array().unwrap();
    assert_eq!(models.len(), 3);
    assert_eq!(models[0]["macs"], cost(&tg).unwrap().macs);
    assert_eq!(models[1]["macs"], cost(&g).unwrap().macs);
    assert!(models[1]["macs"].as_u64() <= models[0]["macs"].as_u64());
    assert!(
        models
            .iter()
            .all(|m| m["latency_s"].as_f64().unwrap() > 0.0)
    );
    // The frontier is monotone: a looser gamma never costs more.
    let f = r["frontier"].as_array().unwrap();
    for w in f.windows(2) {
        assert!(w[1]["macs"].as_u64() <= w[0]["macs"].as_u64(), "{f:?}");
    }
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        md.contains("| teacher |") && md.contains("| student-diffusion-only |"),
        "{md}"
    );
    let resume = |extra: &[&str]| {
        let mut args = vec!["search", "block", "--resume", "--teacher"];
        args.extend([
            teacher.to_str().unwrap(),
            "--run-dir",
            dir.to_str().unwrap(),
        ]);
        args.extend_from_slice(extra);
        diffnas(&args)
    };
    // Run again with --resume: nothing is retrained, the report is rewritten.
    let o = resume(&["--device", "flex", "--score-n", "0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The trained supernets are sealed: one flipped byte is caught on --resume, the file is
    // kept aside and the supernets come back, the same bytes, from their last checkpoint.
    let nets = dir.join("supernet/supernets.bpk");
    let good = std::fs::read(&nets).unwrap();
    crate::common::flip(&nets, good.len() as i64 / 2);
    let o = resume(&["--device", "flex", "--score-n", "0"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("supernets.bpk: damaged") && err.contains("restoring the supernets"),
        "{err}"
    );
    assert!(dir.join("supernet/supernets.bpk.damaged").is_file());
    assert!(
        std::fs::read(&nets).unwrap() == good,
        "restored bytes differ"
    );
    // A flag that would change the stored search is refused on --resume, naming the value.
    let o = resume(&["--gamma", "2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--gamma 2.0 differs from the 3.0 stored"),
        "{err}"
    );
    // Another gamma from the same supernets and tables: nothing of phases 1-2 reruns.
    let other = work.path().join("block-loose");
    let o = diffnas(&[
        "search",
        "block",
        "--teacher",
        teacher.to_str().unwrap(),
        "--run-dir",
        other.to_str().unwrap(),
        "--reuse",
        dir.to_str().unwrap(),
        "--device",
        "flex",
        "--gamma",
        "100",
        "--retrain-steps",
        "1",
        "--batch-size",
        "4",
        "--score-n",
        "0",
        "--score-steps",
        "2",
        "--latency-batch",
        "2",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        !err.contains("supernets trained") && !err.contains("scored ("),
        "{err}"
    );
    assert_eq!(
        std::fs::read(other.join("search/tables.json")).unwrap(),
        std::fs::read(dir.join("search/tables.json")).unwrap()
    );
    let loose =
        Genome::from_json(&std::fs::read_to_string(other.join("student/genome.json")).unwrap())
            .unwrap();
    assert!(cost(&loose).unwrap().macs <= cost(&g).unwrap().macs);
}

/// The block search's phases as library calls, on the fixture teacher and a slice of real
/// Fashion-MNIST: each returns what it made and leaves its files; a finished phase is read
/// back rather than rerun; the student is an ordinary run directory; a stop is resumable.
#[test]
fn block_pipeline_phases_as_library_calls() {
    use diffnas::eval::rfid::GenerationConfig;
    use diffnas::rundir::{RunFiles, Weights, load_denoiser, weights_path};
    use diffnas::search::block::local::LocalSearchConfig;
    use diffnas::search::block::pipeline::{
        self, BlockConfig, BlockError, BlockEvent, Phase, ReportInput, StudentInit, SupernetInit,
        Teacher, short_schedule,
    };
    use std::sync::atomic::{AtomicBool, Ordering};

    let work = tempfile::tempdir().unwrap();
    // Fails rather than skips: CI installs Fashion-MNIST (`.ci/setup`).
    let data = crate::search::small_fashion_mnist(work.path(), 64, 16)
        .expect("Fashion-MNIST is needed (apt-get install dataset-fashion-mnist)");
    let teacher_dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fmnist-tiny");
    let (tg, tfiles) = RunFiles::read(&teacher_dir).unwrap();
    let space = SearchSpace::for_image(tg.image);
    let cfg = BlockConfig {
        teacher: teacher_dir.clone(),
        teacher_weights: weights_path(&teacher_dir, Weights::Ema).unwrap(),
        data: data.parse().unwrap(),
        max_images: None,
        seed: 1,
        supernet: short_schedule(&tfiles.config, 2, 4, 1e-3, 1),
        supernet_init: SupernetInit::Fresh,
        eval_batches: 1,
        kernels: space.kernels.clone(),
        hidden_mults: space.hidden_mults.clone(),
        gamma: 3.0,
        gamma_sweep: vec![1.0, 3.0, 100.0],
        budget_macs: None,
        local: LocalSearchConfig {
            max_exhaustive: 40,
            samples: 4,
            rounds: 1,
            children: 1,
            seed: 1,
        },
        retrain: short_schedule(&tfiles.config, 2, 4, 5e-4, 1),
        lambda: LambdaSchedule::parse("linear").unwrap(),
        lambda_steps: 1,
        student_init: StudentInit::Supernet,
        ablation: false,
        score: GenerationConfig {
            n: 0,
            steps: 2,
            ..GenerationConfig::rfid()
        },
        latency_batch: 2,
    };
    let mut bad = cfg.clone();
    bad.gamma = -1.0;
    let e = bad.check().unwrap_err();
    assert!(
        e.is_bad_input() && e.to_string().contains("gamma -1"),
        "{e}"
    );

    let dir = work.path().join("block");
    cfg.start(&dir).unwrap();
    let again = cfg.start(&dir).unwrap_err();
    assert!(
        matches!(&again, BlockError::Config(m) if m.contains("--resume")),
        "{again}"
    );
    assert_eq!(
        serde_json::to_value(BlockConfig::read(&dir).unwrap()).unwrap(),
        serde_json::to_value(&cfg).unwrap()
    );

    let device = Device::flex();
    let teacher = Teacher::load(&cfg, &device).unwrap();
    let stop = AtomicBool::new(false);
    let mut distilled = 0;
    let Phase::Done(nets) = pipeline::supernets(&cfg, &teacher, &dir, &device, &stop, &mut |e| {
        if matches!(e, BlockEvent::Distill(..)) {
            distilled += 1
        }
    })
    .unwrap() else {
        panic!("not stopped")
    };
    assert!(distilled > 0);
    assert_eq!(nets.nets.len(), teacher.spaces.len());
    // Finished: read back, not trained again.
    let mut retrained = false;
    let Phase::Done(back) = pipeline::supernets(&cfg, &teacher, &dir, &device, &stop, &mut |e| {
        retrained |= matches!(e, BlockEvent::Distill(..))
    })
    .unwrap() else {
        panic!("not stopped")
    };
    assert!(!retrained);
    for (a, b) in nets.nets.iter().zip(&back.nets) {
        assert!(crate::common::param_values(a) == crate::common::param_values(b));
    }

    let mut none = |_: BlockEvent| {};
    let tables =
        pipeline::local_search(&cfg, &teacher, &nets.nets, &dir, &device, &mut none).unwrap();
    assert_eq!(tables.tables.len(), teacher.spaces.len());
    assert!(tables.tables.iter().all(|t| !t.scored.is_empty()));
    let frontier = pipeline::frontier(&cfg, &teacher, &tables, &dir).unwrap();
    for w in frontier.windows(2) {
        assert!(w[1].macs <= w[0].macs, "a looser gamma never costs more");
    }
    let choice = pipeline::choose(&cfg, &teacher, &tables, &dir).unwrap();
    // Every block's teacher-shaped path is within gamma of itself, so the cheapest feasible
    // choice costs at most the teacher.
    assert!(choice.cost.macs <= teacher.cost.macs);
    for f in [
        pipeline::TABLES_FILE,
        pipeline::FRONTIER_FILE,
        pipeline::CHOICE_FILE,
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }

    let info = diffnas::device::flex().info;
    let student = pipeline::students(&cfg)[0];
    let Phase::Done((sdir, secs)) = pipeline::retrain(
        &cfg, &teacher, &nets.nets, &choice, student, &dir, &info, &device, &stop, &mut none,
    )
    .unwrap() else {
        panic!("not stopped")
    };
    // The student is an ordinary run directory.
    let run = load_denoiser(&sdir, Weights::Ema, &device).unwrap();
    assert_eq!(run.genome, choice.genome);
    assert_eq!(run.files.config, cfg.retrain);

    let models = vec![
        ("teacher".to_string(), teacher_dir.clone(), None),
        ("student".to_string(), sdir, Some(secs)),
    ];
    let rows = pipeline::measure(&cfg, &models, None, &device, &mut none).unwrap();
    assert_eq!(rows[0].macs, teacher.cost.macs);
    assert_eq!(rows[1].macs, choice.cost.macs);
    assert!(rows.iter().all(|r| r.latency_s > 0.0 && r.score.is_none()));
    let md = pipeline::write_report(
        &cfg,
        &ReportInput {
            rows: &rows,
            frontier: &frontier,
            supernet_seconds: nets.seconds,
            search_seconds: tables.seconds,
            device: "flex",
        },
        &dir,
    )
    .unwrap();
    assert!(std::fs::read_to_string(md).unwrap().contains("| student |"));

    // A stop request ends a retraining resumably, with a checkpoint.
    stop.store(true, Ordering::SeqCst);
    let stopped = pipeline::retrain(
        &cfg,
        &teacher,
        &nets.nets,
        &choice,
        ("stopped", LambdaSchedule::DiffusionOnly),
        &dir,
        &info,
        &device,
        &stop,
        &mut none,
    )
    .unwrap();
    assert!(matches!(stopped, Phase::Stopped(s) if s < cfg.retrain.steps));
}

/// `search block --precision f16`: the supernets distil in f16 with a loss scale (kept in the
/// checkpoint state), and their per-block losses stay within a few f16 roundoffs of f32's.
#[test]
fn supernets_distil_in_f16_with_a_loss_scale_close_to_f32() {
    use diffnas::precision::Precision;
    use diffnas::search::block::distill::train_supernets;
    use diffnas::train::TrainConfig;
    let device = Device::flex().autodiff();
    let g = teacher_genome(false);
    let teacher = random_teacher(&g, 6, &Device::flex());
    let spaces = block_spaces(&g, &KERNELS, &MULTS).unwrap();
    let init: Vec<BlockSupernet> = spaces
        .iter()
        .map(|s| BlockSupernet::new(&g, s, &device))
        .collect();
    let data = noise_dataset(16, 16);
    let cfg = TrainConfig::new()
        .with_steps(4)
        .with_batch_size(4)
        .with_lr(1e-3)
        .with_warmup_steps(1)
        .with_log_every(1);
    let run = |cfg: &TrainConfig| {
        train_supernets(
            &teacher,
            &spaces,
            init.clone(),
            &data,
            cfg,
            &device,
            None,
            None,
            &mut |_| {},
        )
        .unwrap()
    };
    let reference = run(&cfg);
    let half = run(&cfg.clone().with_precision(Some(Precision::F16)));
    let scale = half
        .state
        .loss_scale
        .as_ref()
        .expect("an f16 run keeps a loss scale");
    assert!(scale.scale > 0.0);
    assert!(reference.state.loss_scale.is_none());
    for (a, b) in reference.log.iter().zip(&half.log) {
        for (x, y) in a.losses.iter().zip(&b.losses) {
            let rel = (x - y).abs() / x.abs();
            assert!(
                rel > 0.0 && rel < 2e-2,
                "step {}: f32 loss {x} against f16 {y}",
                a.step
            );
        }
    }
}
