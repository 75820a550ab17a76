//! What the checkpoints' SHA-256 costs: a genome's checkpoint (model, EMA, optimizer) written
//! as `diffnas train` writes it, then sealed (hashed) and verified (hashed again), timed:
//!
//! ```sh
//! cargo run --release --example checkpoint_hash_cost -- ddpm-cifar10
//! ```
//!
//! Prints the checkpoint's size, the save time without hashing, and the seal and verify times
//! in MB/s.

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use diffnas::diffusion::NoiseSchedule;
use diffnas::genome::Genome;
use diffnas::model::Unet;
use diffnas::train::{
    EMA_FILE, EpsObjective, MODEL_FILE, OPTIM_FILE, TrainConfig, TrainState, optimizer_for,
    train_step_marked,
};
use std::time::Instant;

fn main() {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ddpm-cifar10".into());
    let genome = Genome::load(&name).unwrap_or_else(|e| panic!("{e}"));
    let device = Device::flex().autodiff();
    let model = Unet::new(&genome, &device).expect("a valid genome");
    let cfg = TrainConfig::new().with_batch_size(1);
    let mut optim = optimizer_for(&cfg);
    // One step (batch 1), so that the optimizer holds its moments as a checkpoint's does.
    let schedule = NoiseSchedule::new(cfg.beta_schedule, cfg.timesteps).unwrap();
    let x0 = Tensor::<4>::random(
        [
            1,
            genome.image.channels,
            genome.image.size,
            genome.image.size,
        ],
        Distribution::Uniform(-1.0, 1.0),
        &device,
    );
    let ema = model.clone();
    let (model, _, _, _) = train_step_marked(
        model,
        ema,
        &mut optim,
        &cfg,
        &schedule,
        x0,
        0,
        &EpsObjective,
        None,
        &mut |_| {},
    );
    let dir = std::env::temp_dir().join(format!("diffnas-hash-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let t = Instant::now();
    model.clone().save_file(dir.join(MODEL_FILE)).unwrap();
    model.valid().save_file(dir.join(EMA_FILE)).unwrap();
    optim.save(dir.join(OPTIM_FILE)).unwrap();
    let save = t.elapsed().as_secs_f64();
    let files = [MODEL_FILE, EMA_FILE, OPTIM_FILE];
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(dir.join(f)).unwrap().len())
        .sum();
    let mb = bytes as f64 / 1e6;
    let mut state = TrainState::start(0);
    let t = Instant::now();
    state.seal(&dir, &files).unwrap();
    let seal = t.elapsed().as_secs_f64();
    let t = Instant::now();
    assert!(state.verify(&dir).unwrap());
    let verify = t.elapsed().as_secs_f64();
    println!(
        "{name}: checkpoint {mb:.1} MB; \
         save {save:.2} s; seal {seal:.2} s ({:.0} MB/s); verify {verify:.2} s ({:.0} MB/s)",
        mb / seal,
        mb / verify
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
