//! The offline feature extractor: a small CNN classifier trained on the dataset's labels.
//!
//! Where the Inception weights are not at hand, Fréchet distance and KID are computed in the
//! 128-d penultimate (pre-ReLU) feature space of this classifier and reported as
//! `FD-classifier` / `KID-classifier`, never as FID. Numbers are comparable only between runs
//! that used the same classifier file (its SHA-256 is part of the extractor's identity).
//!
//! Network: two 3x3 conv pairs (32, 64 channels) with 2x2 max-pooling, a 128-unit linear layer
//! (the features), dropout, and the class logits. Inputs are scaled to [-1, 1] and, when their
//! size differs from the classifier's, resized bilinearly (align_corners = false).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::activation::relu;
use burn::tensor::module::{interpolate, max_pool2d};
use burn::tensor::ops::{InterpolateMode, InterpolateOptions, MaxPoolOptions};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// Length of the feature vector.
pub const FEATURE_DIM: usize = 128;

/// What a classifier file was made for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierMeta {
    /// Input `[channels, height, width]`.
    pub input: [usize; 3],
    pub classes: usize,
    /// Dataset it was trained on (as given on the command line).
    pub data: String,
    pub train_images: usize,
    pub test_accuracy: f64,
    pub epochs: usize,
    pub seed: u64,
}

#[derive(Module, Debug)]
pub struct Classifier {
    c1: Conv2d,
    c2: Conv2d,
    c3: Conv2d,
    c4: Conv2d,
    fc1: Linear,
    drop: Dropout,
    fc2: Linear,
    #[module(skip)]
    input: [usize; 3],
}

fn conv3(i: usize, o: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([i, o], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

impl Classifier {
    /// A freshly initialised classifier for `[c, h, w]` inputs (h, w multiples of 4).
    pub fn new(input: [usize; 3], classes: usize, device: &Device) -> Self {
        let [c, h, w] = input;
        assert!(
            h % 4 == 0 && w % 4 == 0,
            "classifier input must be a multiple of 4"
        );
        Classifier {
            c1: conv3(c, 32, device),
            c2: conv3(32, 32, device),
            c3: conv3(32, 64, device),
            c4: conv3(64, 64, device),
            fc1: LinearConfig::new(64 * (h / 4) * (w / 4), FEATURE_DIM).init(device),
            drop: DropoutConfig::new(0.3).init(),
            fc2: LinearConfig::new(FEATURE_DIM, classes).init(device),
            input,
        }
    }

    pub fn input(&self) -> [usize; 3] {
        self.input
    }

    /// u8 images `[n, c, h, w]` -> network input on `device`: [-1, 1], channels matched
    /// (grey -> RGB by copying, RGB -> grey by the channel mean), resized to the classifier's size.
    pub fn prepare(&self, pixels: &[u8], shape: [usize; 4], device: &Device) -> Tensor<4> {
        let [_, c, h, w] = shape;
        let v: Vec<f32> = pixels.iter().map(|&p| p as f32 / 127.5 - 1.0).collect();
        let x = Tensor::<4>::from_data(TensorData::new(v, shape), device);
        let [tc, th, tw] = self.input;
        let x = match (c, tc) {
            (1, 3) => x.repeat_dim(1, 3),
            (3, 1) => x.mean_dim(1),
            _ => x,
        };
        if (h, w) == (th, tw) {
            x
        } else {
            let o = InterpolateOptions::new(InterpolateMode::Bilinear)
                .with_align_corners(false)
                .with_output_size([th, tw]);
            interpolate(x, o)
        }
    }

    /// The 128-d features (pre-ReLU output of the first linear layer).
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let pool = |x| max_pool2d(x, MaxPoolOptions::new([2, 2]));
        let conv = crate::model::conv::forward_on_cpu_kernel;
        let x = relu(conv(&self.c2, relu(conv(&self.c1, x))));
        let x = pool(x);
        let x = relu(conv(&self.c4, relu(conv(&self.c3, x))));
        let x = pool(x);
        let [n, c, h, w] = x.dims();
        self.fc1.forward(x.reshape([n, c * h * w]))
    }

    pub fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        self.fc2.forward(self.drop.forward(relu(self.features(x))))
    }
}

/// Settings of `eval train-classifier`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierTraining {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
}

impl Default for ClassifierTraining {
    fn default() -> Self {
        ClassifierTraining {
            epochs: 4,
            batch_size: 128,
            lr: 1e-3,
            seed: 0,
        }
    }
}

/// Progress of classifier training.
pub enum ClassifierEvent {
    Step {
        step: usize,
        total: usize,
        loss: f32,
    },
    Epoch {
        epoch: usize,
        test_accuracy: f64,
    },
}

/// Labelled u8 images, `[n, c, h, w]`.
pub struct LabelledImages<'a> {
    pub pixels: &'a [u8],
    pub labels: &'a [u8],
    pub shape: [usize; 4],
}

impl LabelledImages<'_> {
    fn per(&self) -> usize {
        self.shape[1] * self.shape[2] * self.shape[3]
    }
    fn gather(&self, idx: &[usize]) -> (Vec<u8>, Vec<i64>) {
        let per = self.per();
        let mut px = Vec::with_capacity(idx.len() * per);
        let mut y = Vec::with_capacity(idx.len());
        for &i in idx {
            px.extend_from_slice(&self.pixels[i * per..(i + 1) * per]);
            y.push(self.labels[i] as i64);
        }
        (px, y)
    }
}

/// Classification accuracy of `model` (in eval mode) on `data`.
pub fn accuracy(model: &Classifier, data: &LabelledImages, device: &Device) -> f64 {
    let n = data.shape[0];
    let per = data.per();
    let mut correct = 0usize;
    for start in (0..n).step_by(500) {
        let end = (start + 500).min(n);
        let shape = [end - start, data.shape[1], data.shape[2], data.shape[3]];
        let x = model.prepare(&data.pixels[start * per..end * per], shape, device);
        let pred = model.logits(x).argmax(1).reshape([end - start]);
        let pred: Vec<i64> = pred
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .expect("int data");
        correct += pred
            .iter()
            .zip(&data.labels[start..end])
            .filter(|(p, y)| **p == **y as i64)
            .count();
    }
    correct as f64 / n.max(1) as f64
}

/// Train a classifier with AdamW and a cosine learning rate, on the autodiff `device`.
/// Returns the model in eval mode and its test accuracy.
pub fn train_classifier(
    train: &LabelledImages,
    test: &LabelledImages,
    classes: usize,
    cfg: &ClassifierTraining,
    device: &Device,
    on_event: &mut dyn FnMut(&ClassifierEvent),
) -> (Classifier, f64) {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let [n, c, h, w] = train.shape;
    device.seed(cfg.seed);
    let mut model = Classifier::new([c, h, w], classes, device);
    let mut optim: ModuleOptimizer = AdamWConfig::new().with_weight_decay(1e-4).init();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let steps_per_epoch = n / cfg.batch_size;
    let total = steps_per_epoch * cfg.epochs;
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut step = 0;
    let mut acc = 0.0;
    for epoch in 0..cfg.epochs {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        for b in 0..steps_per_epoch {
            let idx = &order[b * cfg.batch_size..(b + 1) * cfg.batch_size];
            let (px, y) = train.gather(idx);
            let x = model.prepare(&px, [idx.len(), c, h, w], device);
            let y = Tensor::<1, Int>::from_data(TensorData::new(y, [idx.len()]), device);
            let loss = loss_fn.forward(model.logits(x), y);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let lr =
                cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total as f64).cos());
            model = optim.step(lr, model, grads);
            step += 1;
            if step % 20 == 0 || step == total {
                let loss = loss.into_scalar::<f32>();
                on_event(&ClassifierEvent::Step { step, total, loss });
            }
        }
        acc = accuracy(&model.valid(), test, &device.clone().inner());
        on_event(&ClassifierEvent::Epoch {
            epoch: epoch + 1,
            test_accuracy: acc,
        });
    }
    (model.valid(), acc)
}
