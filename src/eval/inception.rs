//! The FID Inception-v3 of pytorch-fid ("pool_3", 2048-d), in Burn.
//!
//! Follows `pytorch_fid/inception.py` exactly: torchvision's Inception-v3 with the FID patches
//! (average pooling with `count_include_pad = false` in the A, C and E blocks, max pooling in the
//! pooling branch of Mixed_7c), BatchNorm eps 1e-3 with inference statistics, and pytorch-fid's
//! input pipeline (bilinear resize to 299 with `align_corners = false`, then `2x - 1`; grey images
//! are copied to three channels, as `Image.convert('RGB')` does).
//!
//! Each BasicConv2d (conv without bias -> BatchNorm -> ReLU) is stored with its BatchNorm folded
//! into the convolution's weight and bias (in f64, rounded once to f32). The tensors a checkpoint
//! must hold are derived from one table ([`conv_specs`]), which also builds the network, so the
//! strict loader and the architecture cannot drift apart.

use burn::module::{Module, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::relu;
use burn::tensor::module::{adaptive_avg_pool2d, avg_pool2d, interpolate, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, InterpolateMode, InterpolateOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData};
use std::collections::BTreeMap;

use super::synthetic;

/// Input side of the network after resizing.
pub const INPUT_SIZE: usize = 299;
/// Length of the pool_3 feature vector.
pub const FEATURE_DIM: usize = 2048;
/// BatchNorm epsilon of torchvision's BasicConv2d.
pub const BN_EPS: f64 = 1e-3;

/// One BasicConv2d of the network: its checkpoint prefix and geometry.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvSpec {
    /// Prefix in the torchvision state dict, e.g. `Mixed_5b.branch5x5_2`.
    pub name: String,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: usize,
    pub padding: [usize; 2],
}

impl ConvSpec {
    /// The five checkpoint tensors of this conv and their shapes.
    pub fn tensors(&self) -> [(String, Vec<usize>); 5] {
        let [kh, kw] = self.kernel;
        let o = self.out_channels;
        let n = |s: &str| format!("{}.{s}", self.name);
        [
            (n("conv.weight"), vec![o, self.in_channels, kh, kw]),
            (n("bn.weight"), vec![o]),
            (n("bn.bias"), vec![o]),
            (n("bn.running_mean"), vec![o]),
            (n("bn.running_var"), vec![o]),
        ]
    }
}

struct SpecList(Vec<ConvSpec>);

impl SpecList {
    fn conv(&mut self, name: String, io: [usize; 2], k: [usize; 2], stride: usize, p: [usize; 2]) {
        self.0.push(ConvSpec {
            name,
            in_channels: io[0],
            out_channels: io[1],
            kernel: k,
            stride,
            padding: p,
        });
    }
    fn one(&mut self, name: String, cin: usize, cout: usize) {
        self.conv(name, [cin, cout], [1, 1], 1, [0, 0]);
    }

    /// InceptionA: Mixed_5b/5c/5d.
    fn a(&mut self, p: &str, cin: usize, pool: usize) {
        self.one(format!("{p}.branch1x1"), cin, 64);
        self.one(format!("{p}.branch5x5_1"), cin, 48);
        self.conv(format!("{p}.branch5x5_2"), [48, 64], [5, 5], 1, [2, 2]);
        self.one(format!("{p}.branch3x3dbl_1"), cin, 64);
        self.conv(format!("{p}.branch3x3dbl_2"), [64, 96], [3, 3], 1, [1, 1]);
        self.conv(format!("{p}.branch3x3dbl_3"), [96, 96], [3, 3], 1, [1, 1]);
        self.one(format!("{p}.branch_pool"), cin, pool);
    }

    /// InceptionB: Mixed_6a.
    fn b(&mut self, p: &str, cin: usize) {
        self.conv(format!("{p}.branch3x3"), [cin, 384], [3, 3], 2, [0, 0]);
        self.one(format!("{p}.branch3x3dbl_1"), cin, 64);
        self.conv(format!("{p}.branch3x3dbl_2"), [64, 96], [3, 3], 1, [1, 1]);
        self.conv(format!("{p}.branch3x3dbl_3"), [96, 96], [3, 3], 2, [0, 0]);
    }

    /// InceptionC: Mixed_6b..6e.
    fn c(&mut self, p: &str, c7: usize) {
        let (row, col) = (([1, 7], [0, 3]), ([7, 1], [3, 0]));
        self.one(format!("{p}.branch1x1"), 768, 192);
        self.one(format!("{p}.branch7x7_1"), 768, c7);
        self.conv(format!("{p}.branch7x7_2"), [c7, c7], row.0, 1, row.1);
        self.conv(format!("{p}.branch7x7_3"), [c7, 192], col.0, 1, col.1);
        self.one(format!("{p}.branch7x7dbl_1"), 768, c7);
        self.conv(format!("{p}.branch7x7dbl_2"), [c7, c7], col.0, 1, col.1);
        self.conv(format!("{p}.branch7x7dbl_3"), [c7, c7], row.0, 1, row.1);
        self.conv(format!("{p}.branch7x7dbl_4"), [c7, c7], col.0, 1, col.1);
        self.conv(format!("{p}.branch7x7dbl_5"), [c7, 192], row.0, 1, row.1);
        self.one(format!("{p}.branch_pool"), 768, 192);
    }

    /// InceptionD: Mixed_7a.
    fn d(&mut self, p: &str) {
        self.one(format!("{p}.branch3x3_1"), 768, 192);
        self.conv(format!("{p}.branch3x3_2"), [192, 320], [3, 3], 2, [0, 0]);
        self.one(format!("{p}.branch7x7x3_1"), 768, 192);
        self.conv(format!("{p}.branch7x7x3_2"), [192, 192], [1, 7], 1, [0, 3]);
        self.conv(format!("{p}.branch7x7x3_3"), [192, 192], [7, 1], 1, [3, 0]);
        self.conv(format!("{p}.branch7x7x3_4"), [192, 192], [3, 3], 2, [0, 0]);
    }

    /// InceptionE: Mixed_7b/7c.
    fn e(&mut self, p: &str, cin: usize) {
        self.one(format!("{p}.branch1x1"), cin, 320);
        self.one(format!("{p}.branch3x3_1"), cin, 384);
        self.conv(format!("{p}.branch3x3_2a"), [384, 384], [1, 3], 1, [0, 1]);
        self.conv(format!("{p}.branch3x3_2b"), [384, 384], [3, 1], 1, [1, 0]);
        self.one(format!("{p}.branch3x3dbl_1"), cin, 448);
        self.conv(format!("{p}.branch3x3dbl_2"), [448, 384], [3, 3], 1, [1, 1]);
        self.conv(
            format!("{p}.branch3x3dbl_3a"),
            [384, 384],
            [1, 3],
            1,
            [0, 1],
        );
        self.conv(
            format!("{p}.branch3x3dbl_3b"),
            [384, 384],
            [3, 1],
            1,
            [1, 0],
        );
        self.one(format!("{p}.branch_pool"), cin, 192);
    }
}

/// Every BasicConv2d of the FID Inception, in the order the network is assembled.
pub fn conv_specs() -> Vec<ConvSpec> {
    let mut s = SpecList(Vec::new());
    s.conv("Conv2d_1a_3x3".into(), [3, 32], [3, 3], 2, [0, 0]);
    s.conv("Conv2d_2a_3x3".into(), [32, 32], [3, 3], 1, [0, 0]);
    s.conv("Conv2d_2b_3x3".into(), [32, 64], [3, 3], 1, [1, 1]);
    s.one("Conv2d_3b_1x1".into(), 64, 80);
    s.conv("Conv2d_4a_3x3".into(), [80, 192], [3, 3], 1, [0, 0]);
    s.a("Mixed_5b", 192, 32);
    s.a("Mixed_5c", 256, 64);
    s.a("Mixed_5d", 288, 64);
    s.b("Mixed_6a", 288);
    for (p, c7) in [
        ("Mixed_6b", 128),
        ("Mixed_6c", 160),
        ("Mixed_6d", 160),
        ("Mixed_6e", 192),
    ] {
        s.c(p, c7);
    }
    s.d("Mixed_7a");
    s.e("Mixed_7b", 1280);
    s.e("Mixed_7c", 2048);
    s.0
}

/// Every tensor a checkpoint must hold, with its shape (the classifier `fc.*` and the
/// BatchNorm `num_batches_tracked` counters are allowed extras).
pub fn expected_tensors() -> Vec<(String, Vec<usize>)> {
    conv_specs().iter().flat_map(|s| s.tensors()).collect()
}

/// Whether a checkpoint tensor that the network does not use may be ignored.
pub fn ignorable(name: &str) -> bool {
    name.starts_with("fc.") || name.ends_with(".num_batches_tracked")
}

/// Why a set of weights does not fit the network.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    Missing(String),
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    Unexpected(String),
    Unreadable {
        name: String,
        message: String,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Missing(n) => write!(f, "missing tensor `{n}`"),
            Problem::Shape {
                name,
                expected,
                found,
            } => write!(
                f,
                "tensor `{name}` has shape {found:?}, expected {expected:?}"
            ),
            Problem::Unexpected(n) => write!(f, "unexpected tensor `{n}`"),
            Problem::Unreadable { name, message } => write!(f, "tensor `{name}`: {message}"),
        }
    }
}

/// Errors of loading Inception weights.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{origin}: cannot read weights: {message}")]
    Read { origin: String, message: String },
    #[error("{origin}: not the pytorch-fid Inception-v3 weights ({} problem(s)):\n{}", problems.len(), list(problems))]
    Mismatch {
        origin: String,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    const SHOWN: usize = 12;
    let mut s: Vec<String> = problems
        .iter()
        .take(SHOWN)
        .map(|p| format!("  - {p}"))
        .collect();
    if problems.len() > SHOWN {
        s.push(format!("  ... and {} more", problems.len() - SHOWN));
    }
    s.join("\n")
}

/// Named f32 tensors in host memory: a parsed checkpoint, or the synthetic formula weights.
#[derive(Debug, Clone, Default)]
pub struct TensorMap {
    /// Where the tensors came from (a path, or `synthetic`), for messages.
    pub origin: String,
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl TensorMap {
    /// The formula weights of [`synthetic`], for tests and benchmarks only.
    pub fn synthetic() -> Self {
        let tensors = expected_tensors()
            .into_iter()
            .map(|(name, shape)| {
                let v = synthetic::inception_tensor(&name, &shape);
                (name, (shape, v))
            })
            .collect();
        TensorMap {
            origin: "synthetic (splitmix formula, not pretrained)".into(),
            tensors,
        }
    }

    /// Check names and shapes against the network: every problem at once, not just the first.
    pub fn check(&self) -> Result<(), WeightsError> {
        let expected = expected_tensors();
        let mut problems = Vec::new();
        for (name, shape) in &expected {
            match self.tensors.get(name) {
                None => problems.push(Problem::Missing(name.clone())),
                Some((found, _)) if found != shape => problems.push(Problem::Shape {
                    name: name.clone(),
                    expected: shape.clone(),
                    found: found.clone(),
                }),
                Some(_) => {}
            }
        }
        let known: std::collections::HashSet<&str> =
            expected.iter().map(|(n, _)| n.as_str()).collect();
        for name in self.tensors.keys() {
            if !known.contains(name.as_str()) && !ignorable(name) {
                problems.push(Problem::Unexpected(name.clone()));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(WeightsError::Mismatch {
                origin: self.origin.clone(),
                problems,
            })
        }
    }

    fn get(&self, name: &str) -> &[f32] {
        &self.tensors[name].1
    }
}

#[cfg(feature = "cli")]
impl TensorMap {
    /// Read a PyTorch checkpoint (`torch.save` of a state dict; zip or legacy format).
    /// Floating tensors are converted to f32; integer tensors (`num_batches_tracked`) are kept
    /// as names only. Shapes are checked by [`TensorMap::check`], not here.
    pub fn from_pytorch(path: &std::path::Path) -> Result<Self, WeightsError> {
        use pytorch_reader::{DType, PytorchReader};
        let origin = path.display().to_string();
        let reader = PytorchReader::new(path).map_err(|e| WeightsError::Read {
            origin: origin.clone(),
            message: e.to_string(),
        })?;
        let mut tensors = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, t) in reader.tensors() {
            let shape = t.shape().to_vec();
            let bytes = match t.read() {
                Ok(b) => b,
                Err(e) => {
                    problems.push(Problem::Unreadable {
                        name: name.clone(),
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            let values: Vec<f32> = match t.dtype() {
                DType::F32 => bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                DType::F64 => bytes
                    .chunks_exact(8)
                    .map(|c| f64::from_ne_bytes(c.try_into().expect("8 bytes")) as f32)
                    .collect(),
                other if ignorable(name) => {
                    let _ = other;
                    Vec::new()
                }
                other => {
                    problems.push(Problem::Unreadable {
                        name: name.clone(),
                        message: format!("element type {other:?}, expected float32"),
                    });
                    continue;
                }
            };
            tensors.insert(name.clone(), (shape, values));
        }
        if !problems.is_empty() {
            return Err(WeightsError::Mismatch { origin, problems });
        }
        Ok(TensorMap { origin, tensors })
    }
}

/// Conv (BatchNorm folded in) -> ReLU.
#[derive(Module, Debug)]
pub struct BasicConv {
    conv: Conv2d,
}

impl BasicConv {
    fn new(spec: &ConvSpec, weight: Vec<f32>, bias: Vec<f32>, device: &Device) -> Self {
        let [kh, kw] = spec.kernel;
        let [ph, pw] = spec.padding;
        let shape = [spec.out_channels, spec.in_channels, kh, kw];
        let conv = Conv2d {
            weight: Param::from_tensor(Tensor::from_data(TensorData::new(weight, shape), device)),
            bias: Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(bias, [spec.out_channels]),
                device,
            ))),
            stride: [spec.stride; 2],
            kernel_size: spec.kernel,
            dilation: [1, 1],
            groups: 1,
            padding: PaddingConfig2d::Explicit(ph, pw, ph, pw),
        };
        BasicConv { conv }
    }

    /// Fold `bn(conv(x))` into one convolution: w' = w * g / sqrt(v + eps), b' = b - m * g /
    /// sqrt(v + eps), in f64.
    fn folded(spec: &ConvSpec, w: &TensorMap, device: &Device) -> Self {
        let [(cw, _), (g, _), (b, _), (m, _), (v, _)] = spec.tensors();
        let (cw, g, b, m, v) = (w.get(&cw), w.get(&g), w.get(&b), w.get(&m), w.get(&v));
        let per_out = cw.len() / spec.out_channels;
        let mut weight = Vec::with_capacity(cw.len());
        let mut bias = Vec::with_capacity(spec.out_channels);
        for o in 0..spec.out_channels {
            let scale = g[o] as f64 / (v[o] as f64 + BN_EPS).sqrt();
            weight.extend(
                cw[o * per_out..(o + 1) * per_out]
                    .iter()
                    .map(|&x| (x as f64 * scale) as f32),
            );
            bias.push((b[o] as f64 - m[o] as f64 * scale) as f32);
        }
        Self::new(spec, weight, bias, device)
    }

    fn zeros(spec: &ConvSpec, device: &Device) -> Self {
        let n = spec.out_channels * spec.in_channels * spec.kernel[0] * spec.kernel[1];
        Self::new(spec, vec![0.0; n], vec![0.0; spec.out_channels], device)
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        relu(crate::model::conv::forward_on_cpu_kernel(&self.conv, x))
    }
}

fn avg_pool_3(x: Tensor<4>) -> Tensor<4> {
    let o = AvgPoolOptions::new([3, 3])
        .with_stride([1, 1])
        .with_padding([1, 1])
        .with_count_include_pad(false);
    avg_pool2d(x, o)
}

fn max_pool_3(x: Tensor<4>, stride: usize, padding: usize) -> Tensor<4> {
    let o = MaxPoolOptions::new([3, 3])
        .with_stride([stride; 2])
        .with_padding([padding; 2]);
    max_pool2d(x, o)
}

#[derive(Module, Debug)]
struct MixedA {
    b1: BasicConv,
    b5_1: BasicConv,
    b5_2: BasicConv,
    bd_1: BasicConv,
    bd_2: BasicConv,
    bd_3: BasicConv,
    pool: BasicConv,
}

impl MixedA {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.b1.forward(x.clone());
        let b5 = self.b5_2.forward(self.b5_1.forward(x.clone()));
        let bd = self
            .bd_3
            .forward(self.bd_2.forward(self.bd_1.forward(x.clone())));
        let pool = self.pool.forward(avg_pool_3(x));
        Tensor::cat(vec![b1, b5, bd, pool], 1)
    }
}

#[derive(Module, Debug)]
struct MixedB {
    b3: BasicConv,
    bd_1: BasicConv,
    bd_2: BasicConv,
    bd_3: BasicConv,
}

impl MixedB {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b3 = self.b3.forward(x.clone());
        let bd = self
            .bd_3
            .forward(self.bd_2.forward(self.bd_1.forward(x.clone())));
        Tensor::cat(vec![b3, bd, max_pool_3(x, 2, 0)], 1)
    }
}

#[derive(Module, Debug)]
struct MixedC {
    b1: BasicConv,
    b7_1: BasicConv,
    b7_2: BasicConv,
    b7_3: BasicConv,
    bd_1: BasicConv,
    bd_2: BasicConv,
    bd_3: BasicConv,
    bd_4: BasicConv,
    bd_5: BasicConv,
    pool: BasicConv,
}

impl MixedC {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.b1.forward(x.clone());
        let b7 = [&self.b7_1, &self.b7_2, &self.b7_3]
            .iter()
            .fold(x.clone(), |h, c| c.forward(h));
        let bd = [&self.bd_1, &self.bd_2, &self.bd_3, &self.bd_4, &self.bd_5]
            .iter()
            .fold(x.clone(), |h, c| c.forward(h));
        let pool = self.pool.forward(avg_pool_3(x));
        Tensor::cat(vec![b1, b7, bd, pool], 1)
    }
}

#[derive(Module, Debug)]
struct MixedD {
    b3_1: BasicConv,
    b3_2: BasicConv,
    b7_1: BasicConv,
    b7_2: BasicConv,
    b7_3: BasicConv,
    b7_4: BasicConv,
}

impl MixedD {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b3 = self.b3_2.forward(self.b3_1.forward(x.clone()));
        let b7 = [&self.b7_1, &self.b7_2, &self.b7_3, &self.b7_4]
            .iter()
            .fold(x.clone(), |h, c| c.forward(h));
        Tensor::cat(vec![b3, b7, max_pool_3(x, 2, 0)], 1)
    }
}

#[derive(Module, Debug)]
struct MixedE {
    b1: BasicConv,
    b3_1: BasicConv,
    b3_2a: BasicConv,
    b3_2b: BasicConv,
    bd_1: BasicConv,
    bd_2: BasicConv,
    bd_3a: BasicConv,
    bd_3b: BasicConv,
    pool: BasicConv,
    /// Mixed_7c of the FID network max-pools in its pooling branch.
    #[module(skip)]
    max_pool: bool,
}

impl MixedE {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.b1.forward(x.clone());
        let h = self.b3_1.forward(x.clone());
        let b3 = Tensor::cat(
            vec![self.b3_2a.forward(h.clone()), self.b3_2b.forward(h)],
            1,
        );
        let h = self.bd_2.forward(self.bd_1.forward(x.clone()));
        let bd = Tensor::cat(
            vec![self.bd_3a.forward(h.clone()), self.bd_3b.forward(h)],
            1,
        );
        let pooled = if self.max_pool {
            max_pool_3(x, 1, 1)
        } else {
            avg_pool_3(x)
        };
        Tensor::cat(vec![b1, b3, bd, self.pool.forward(pooled)], 1)
    }
}

/// The pytorch-fid Inception-v3 up to the 2048-d average pool.
#[derive(Module, Debug)]
pub struct FidInception {
    stem: Vec<BasicConv>,
    mixed_5: Vec<MixedA>,
    mixed_6a: MixedB,
    mixed_6: Vec<MixedC>,
    mixed_7a: MixedD,
    mixed_7b: MixedE,
    mixed_7c: MixedE,
}

impl FidInception {
    /// Build from checkpoint tensors, after a strict check of names and shapes.
    pub fn from_tensors(weights: &TensorMap, device: &Device) -> Result<Self, WeightsError> {
        weights.check()?;
        Ok(Self::assemble(device, |spec| {
            BasicConv::folded(spec, weights, device)
        }))
    }

    /// A network with zero weights: the skeleton that a Burn-format file is loaded into.
    pub fn zeros(device: &Device) -> Self {
        Self::assemble(device, |spec| BasicConv::zeros(spec, device))
    }

    fn assemble(_device: &Device, mut make: impl FnMut(&ConvSpec) -> BasicConv) -> Self {
        let specs = conv_specs();
        let mut convs = specs.iter().map(&mut make);
        let mut next = move || convs.next().expect("conv_specs covers the network");
        let stem = (0..5).map(|_| next()).collect();
        let mut a = || MixedA {
            b1: next(),
            b5_1: next(),
            b5_2: next(),
            bd_1: next(),
            bd_2: next(),
            bd_3: next(),
            pool: next(),
        };
        let mixed_5 = vec![a(), a(), a()];
        let mixed_6a = MixedB {
            b3: next(),
            bd_1: next(),
            bd_2: next(),
            bd_3: next(),
        };
        let mut c = || MixedC {
            b1: next(),
            b7_1: next(),
            b7_2: next(),
            b7_3: next(),
            bd_1: next(),
            bd_2: next(),
            bd_3: next(),
            bd_4: next(),
            bd_5: next(),
            pool: next(),
        };
        let mixed_6 = vec![c(), c(), c(), c()];
        let mixed_7a = MixedD {
            b3_1: next(),
            b3_2: next(),
            b7_1: next(),
            b7_2: next(),
            b7_3: next(),
            b7_4: next(),
        };
        let mut e = |max_pool| MixedE {
            b1: next(),
            b3_1: next(),
            b3_2a: next(),
            b3_2b: next(),
            bd_1: next(),
            bd_2: next(),
            bd_3a: next(),
            bd_3b: next(),
            pool: next(),
            max_pool,
        };
        let mixed_7b = e(false);
        let mixed_7c = e(true);
        FidInception {
            stem,
            mixed_5,
            mixed_6a,
            mixed_6,
            mixed_7a,
            mixed_7b,
            mixed_7c,
        }
    }

    /// pytorch-fid's input pipeline: `x` in [0, 1] with 1 or 3 channels, any size ->
    /// 3 x 299 x 299 in [-1, 1].
    pub fn preprocess(x: Tensor<4>) -> Tensor<4> {
        let [_, c, h, w] = x.dims();
        let x = if c == 1 { x.repeat_dim(1, 3) } else { x };
        let x = if (h, w) == (INPUT_SIZE, INPUT_SIZE) {
            x
        } else {
            let o = InterpolateOptions::new(InterpolateMode::Bilinear)
                .with_align_corners(false)
                .with_output_size([INPUT_SIZE, INPUT_SIZE]);
            interpolate(x, o)
        };
        x * 2.0 - 1.0
    }

    /// The 2048-d pool_3 features of preprocessed images `[n, 3, 299, 299]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = x;
        for (i, conv) in self.stem.iter().enumerate() {
            x = conv.forward(x);
            if i == 2 || i == 4 {
                x = max_pool_3(x, 2, 0);
            }
        }
        for m in &self.mixed_5 {
            x = m.forward(x);
        }
        x = self.mixed_6a.forward(x);
        for m in &self.mixed_6 {
            x = m.forward(x);
        }
        x = self.mixed_7a.forward(x);
        x = self.mixed_7b.forward(x);
        x = self.mixed_7c.forward(x);
        let [n, c, _, _] = x.dims();
        adaptive_avg_pool2d(x, [1, 1]).reshape([n, c])
    }
}
