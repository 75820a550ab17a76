//! The search space's unit: a UNet architecture as plain serde data (ALGORITHMS.md section 2).
//!
//! A [`Genome`] stores only free choices, organised by blocks (stem, encoder levels, middle,
//! decoder levels, head); channel counts and resolutions are derived. No Burn and no I/O here.

mod cost;
mod presets;
mod space;

pub use cost::{Cost, cost, unit_cost};
pub use presets::GenomeLoadError;
pub use space::{Budget, SearchSpace};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// The images a genome is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// Colour channels (1 for grayscale, 3 for RGB).
    pub channels: usize,
    /// Height and width in pixels (square images).
    pub size: usize,
}

/// Knobs of one residual block (the unit of the block-wise search).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResBlockGene {
    /// Kernel sizes of the block's two convolutions, each in {1, 3, 5}.
    pub kernels: [usize; 2],
    /// Width of the block's inner activation as a multiple of its output width, rounded to the
    /// GroupNorm group multiple: one of {0.5, 0.75, 1.0, 1.25}.
    pub hidden_mult: f64,
}

impl ResBlockGene {
    /// The DDPM block: two 3x3 convolutions at full width.
    pub const STANDARD: ResBlockGene = ResBlockGene {
        kernels: [3, 3],
        hidden_mult: 1.0,
    };
}

impl Default for ResBlockGene {
    fn default() -> Self {
        Self::STANDARD
    }
}

/// One encoder level: ResBlocks at one resolution, followed by a downsample (except the last).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderLevel {
    /// Output width of the level's blocks as a multiple of `base_channels`.
    pub channel_mult: usize,
    /// The level's residual blocks (their number is the level's `num_res_blocks`).
    pub res_blocks: Vec<ResBlockGene>,
}

/// One decoder level. It holds exactly one block more than its encoder level, because it
/// consumes one skip per encoder block plus the one from the level's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderLevel {
    pub res_blocks: Vec<ResBlockGene>,
}

/// The middle block: ResBlock, self-attention, ResBlock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Middle {
    pub res_blocks: [ResBlockGene; 2],
}

/// Self-attention placement and shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionGene {
    /// Resolutions (in pixels) at which every ResBlock is followed by self-attention.
    pub resolutions: Vec<usize>,
    /// Number of heads; ignored when `head_channels` is set.
    pub heads: usize,
    /// Channels per head (heads = width / head_channels), as in IDDPM's `num_head_channels`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_channels: Option<usize>,
}

/// A UNet denoiser architecture (DDPM / IDDPM family).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genome {
    pub image: ImageSpec,
    /// Width of the stem and the unit of every level's `channel_mult`.
    pub base_channels: usize,
    /// Timestep-embedding width as a multiple of `base_channels` (4 in DDPM).
    pub time_embed_mult: usize,
    /// GroupNorm groups; every width in the network is a multiple of it.
    pub norm_groups: usize,
    /// Dropout inside every ResBlock (before its second convolution).
    pub dropout: f64,
    /// IDDPM's adaptive GroupNorm: the timestep embedding gives a scale and a shift.
    pub scale_shift_norm: bool,
    pub attention: AttentionGene,
    /// Encoder levels, highest resolution first.
    pub encoder: Vec<EncoderLevel>,
    pub middle: Middle,
    /// Decoder levels, lowest resolution first (the mirror of `encoder`).
    pub decoder: Vec<DecoderLevel>,
    /// IDDPM's learned variance: the head outputs `2 C` channels, epsilon and the raw
    /// interpolation `v` of eq. 15 (trained with `L_hybrid`). Absent in JSON when false, so
    /// genomes without it keep their hashes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub learn_sigma: bool,
}

/// A validation failure: where in the genome's JSON and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct GenomeError {
    pub path: String,
    pub message: String,
}

impl GenomeError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// All the errors of one genome, in document order.
#[derive(Debug, Clone, PartialEq)]
pub struct GenomeErrors(pub Vec<GenomeError>);

impl fmt::Display for GenomeErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for GenomeErrors {}

/// Derived shape of one ResBlock, shared by the cost model and the model builder so they
/// cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResBlockShape {
    pub in_channels: usize,
    pub hidden_channels: usize,
    pub out_channels: usize,
    pub kernels: [usize; 2],
    /// Spatial size the block runs at.
    pub resolution: usize,
    /// Whether self-attention follows the block.
    pub attention: bool,
}

/// One level of a derived layout: its blocks, and `Some((channels, resolution))` of the
/// resampling convolution that follows them.
pub type LevelLayout = (Vec<ResBlockShape>, Option<(usize, usize)>);

/// Derived layout of a whole UNet: everything the builder and the cost model need.
#[derive(Debug, Clone, PartialEq)]
pub struct UnetLayout {
    pub image: ImageSpec,
    pub base_channels: usize,
    pub time_embed_channels: usize,
    pub norm_groups: usize,
    pub scale_shift_norm: bool,
    /// Per encoder level: its blocks, and `Some((channels, resolution))` of the downsample
    /// that follows it (None for the last level).
    pub encoder: Vec<LevelLayout>,
    /// Middle ResBlock, attention, ResBlock (attention always on in the middle).
    pub middle: [ResBlockShape; 2],
    /// Per decoder level: its blocks, and `Some((channels, resolution))` of the upsample that
    /// follows it (None for the last, full-resolution level).
    pub decoder: Vec<LevelLayout>,
    /// Width entering the head.
    pub head_channels: usize,
    /// Channels the head produces: the image's, twice over with a learned variance.
    pub out_channels: usize,
}

impl Genome {
    /// Number of resolution levels.
    pub fn num_levels(&self) -> usize {
        self.encoder.len()
    }

    /// Spatial size at each level, highest first (`size`, `size/2`, ...).
    pub fn level_resolutions(&self) -> Vec<usize> {
        (0..self.encoder.len())
            .map(|i| self.image.size >> i)
            .collect()
    }

    /// Number of attention heads for a width, following `head_channels` when it is set.
    pub fn heads_for(&self, channels: usize) -> usize {
        match self.attention.head_channels {
            Some(hc) if hc > 0 => (channels / hc).max(1),
            _ => self.attention.heads,
        }
    }

    /// Hidden width of a block: `out * hidden_mult` rounded to the nearest multiple of the
    /// GroupNorm groups, at least one group.
    pub fn hidden_channels(&self, out_channels: usize, hidden_mult: f64) -> usize {
        let g = self.norm_groups.max(1) as f64;
        let groups = ((out_channels as f64 * hidden_mult) / g).round().max(1.0);
        groups as usize * self.norm_groups.max(1)
    }

    /// Structural checks: can a UNet be built from this genome at all? (Membership in a search
    /// space is [`SearchSpace::validate`]'s job.) Errors carry JSON paths.
    pub fn check(&self) -> Result<(), GenomeErrors> {
        let mut errs = Vec::new();
        {
            let mut e = |path: String, msg: String| errs.push(GenomeError::new(path, msg));
            self.check_knobs(&mut e);
            self.check_levels(&mut e);
        }
        if errs.is_empty() {
            self.check_widths(&mut errs);
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(GenomeErrors(errs))
        }
    }

    /// The image, the global widths, dropout, the level count and attention.
    fn check_knobs(&self, e: &mut dyn FnMut(String, String)) {
        if !(1..=4).contains(&self.image.channels) {
            e(
                "image.channels".into(),
                format!("{} is not in 1..=4", self.image.channels),
            );
        }
        if self.image.size < 4 {
            e(
                "image.size".into(),
                format!("{} is too small (at least 4)", self.image.size),
            );
        }
        if self.encoder.is_empty() {
            e("encoder".into(), "needs at least one level".into());
        }
        if self.norm_groups == 0 {
            e("norm_groups".into(), "0 is not a valid group count".into());
        }
        if self.base_channels == 0 {
            e("base_channels".into(), "0 is not a valid width".into());
        } else if self.norm_groups > 0 && !self.base_channels.is_multiple_of(self.norm_groups) {
            e(
                "base_channels".into(),
                format!(
                    "{} is not a multiple of norm_groups = {}",
                    self.base_channels, self.norm_groups
                ),
            );
        }
        if self.time_embed_mult == 0 {
            e("time_embed_mult".into(), "0 is not valid".into());
        }
        if !(0.0..1.0).contains(&self.dropout) || self.dropout.is_nan() {
            e(
                "dropout".into(),
                format!("{} is not in [0, 1)", self.dropout),
            );
        }
        let levels = self.encoder.len();
        if levels > 0 && self.image.size >= 4 {
            let div = 1usize << (levels - 1);
            if !self.image.size.is_multiple_of(div) {
                e(
                    "encoder".into(),
                    format!(
                        "{levels} levels need an image size divisible by {div}, but image.size is {}",
                        self.image.size
                    ),
                );
            }
        }
        let resolutions = self.level_resolutions();
        for (i, r) in self.attention.resolutions.iter().enumerate() {
            if !resolutions.contains(r) {
                e(
                    format!("attention.resolutions[{i}]"),
                    format!("{r} is not a level resolution (levels are at {resolutions:?})"),
                );
            }
        }
        if self.attention.head_channels.is_none() && self.attention.heads == 0 {
            e("attention.heads".into(), "0 heads".into());
        }
        if self.attention.head_channels == Some(0) {
            e(
                "attention.head_channels".into(),
                "0 channels per head".into(),
            );
        }
    }

    /// Every level's multiplier and ResBlocks, and the decoder's shape against the encoder's.
    fn check_levels(&self, e: &mut dyn FnMut(String, String)) {
        let levels = self.encoder.len();
        let check_block = |path: String, b: &ResBlockGene, e: &mut dyn FnMut(String, String)| {
            for (k, ks) in b.kernels.iter().enumerate() {
                if *ks == 0 || ks % 2 == 0 {
                    e(
                        format!("{path}.kernels[{k}]"),
                        format!("{ks} is not an odd kernel size"),
                    );
                }
            }
            if !(b.hidden_mult > 0.0 && b.hidden_mult <= 4.0) {
                e(
                    format!("{path}.hidden_mult"),
                    format!("{} is not in (0, 4]", b.hidden_mult),
                );
            }
        };
        for (l, level) in self.encoder.iter().enumerate() {
            if level.channel_mult == 0 {
                e(
                    format!("encoder[{l}].channel_mult"),
                    "0 is not a valid multiplier".into(),
                );
            }
            if level.res_blocks.is_empty() {
                e(
                    format!("encoder[{l}].res_blocks"),
                    "a level needs at least one ResBlock".into(),
                );
            }
            for (b, rb) in level.res_blocks.iter().enumerate() {
                check_block(format!("encoder[{l}].res_blocks[{b}]"), rb, &mut *e);
            }
        }
        for (b, rb) in self.middle.res_blocks.iter().enumerate() {
            check_block(format!("middle.res_blocks[{b}]"), rb, &mut *e);
        }
        if self.decoder.len() != levels {
            e(
                "decoder".into(),
                format!(
                    "has {} levels but the encoder has {levels}",
                    self.decoder.len()
                ),
            );
        }
        for (d, level) in self.decoder.iter().enumerate() {
            if d < levels {
                let want = self.encoder[levels - 1 - d].res_blocks.len() + 1;
                if level.res_blocks.len() != want {
                    e(
                        format!("decoder[{d}].res_blocks"),
                        format!(
                            "has {} blocks but must have {want} (encoder[{}] has {} blocks, plus one)",
                            level.res_blocks.len(),
                            levels - 1 - d,
                            want - 1
                        ),
                    );
                }
            }
            for (b, rb) in level.res_blocks.iter().enumerate() {
                check_block(format!("decoder[{d}].res_blocks[{b}]"), rb, &mut *e);
            }
        }
    }

    /// Widths must divide into GroupNorm groups and attention heads (on a structurally valid
    /// genome).
    fn check_widths(&self, errs: &mut Vec<GenomeError>) {
        let layout = self.layout_unchecked();
        let mut seen = Vec::new();
        let all = layout
            .encoder
            .iter()
            .chain(layout.decoder.iter())
            .flat_map(|(blocks, _)| blocks.iter())
            .chain(layout.middle.iter());
        for s in all {
            for c in [s.in_channels, s.out_channels, s.hidden_channels] {
                if c % self.norm_groups != 0 && !seen.contains(&c) {
                    seen.push(c);
                    errs.push(GenomeError::new(
                        "norm_groups",
                        format!("{} does not divide the derived width {c}", self.norm_groups),
                    ));
                }
            }
            if s.attention {
                let heads = self.heads_for(s.out_channels);
                if heads == 0 || s.out_channels % heads != 0 {
                    errs.push(GenomeError::new(
                        "attention.heads",
                        format!(
                            "{heads} heads do not divide the width {} at resolution {}",
                            s.out_channels, s.resolution
                        ),
                    ));
                }
            }
        }
    }

    /// The derived layout. Errors if the genome is not structurally valid.
    pub fn layout(&self) -> Result<UnetLayout, GenomeErrors> {
        self.check()?;
        Ok(self.layout_unchecked())
    }

    fn layout_unchecked(&self) -> UnetLayout {
        let ch = self.base_channels;
        let res = self.level_resolutions();
        let attn = |r: usize| self.attention.resolutions.contains(&r);
        let block = |cin: usize, cout: usize, g: &ResBlockGene, r: usize, a: bool| ResBlockShape {
            in_channels: cin,
            hidden_channels: self.hidden_channels(cout, g.hidden_mult),
            out_channels: cout,
            kernels: g.kernels,
            resolution: r,
            attention: a,
        };
        // Encoder: track the skip widths in the order they are pushed.
        let mut skips = vec![ch];
        let mut cur = ch;
        let mut encoder = Vec::new();
        let levels = self.encoder.len();
        for (l, level) in self.encoder.iter().enumerate() {
            let out = ch * level.channel_mult;
            let mut blocks = Vec::new();
            for g in &level.res_blocks {
                blocks.push(block(cur, out, g, res[l], attn(res[l])));
                cur = out;
                skips.push(cur);
            }
            let down = if l + 1 < levels {
                skips.push(cur);
                Some((cur, res[l]))
            } else {
                None
            };
            encoder.push((blocks, down));
        }
        let r_mid = res[levels - 1];
        let middle = [
            block(cur, cur, &self.middle.res_blocks[0], r_mid, true),
            block(cur, cur, &self.middle.res_blocks[1], r_mid, false),
        ];
        let mut decoder = Vec::new();
        for (d, level) in self.decoder.iter().enumerate() {
            let l = levels - 1 - d;
            let out = ch * self.encoder[l].channel_mult;
            let mut blocks = Vec::new();
            for g in &level.res_blocks {
                let skip = skips
                    .pop()
                    .expect("check() matched decoder and encoder block counts");
                blocks.push(block(cur + skip, out, g, res[l], attn(res[l])));
                cur = out;
            }
            let up = (l > 0).then_some((cur, res[l]));
            decoder.push((blocks, up));
        }
        UnetLayout {
            image: self.image,
            base_channels: ch,
            time_embed_channels: ch * self.time_embed_mult,
            norm_groups: self.norm_groups,
            scale_shift_norm: self.scale_shift_norm,
            encoder,
            middle,
            decoder,
            head_channels: cur,
            out_channels: self.image.channels * if self.learn_sigma { 2 } else { 1 },
        }
    }

    /// The same network in one normal form: each block's `hidden_mult` replaced by the width
    /// it builds as a fraction of the block's output width (0.5 and 0.75 of 24 channels in
    /// groups of 8 both build 16, so both become 16/24), attention resolutions sorted and
    /// deduplicated, and `heads` zeroed where `head_channels` decides the heads. A genome that
    /// is not structurally valid is returned with only the attention normalised.
    pub fn canonical(&self) -> Genome {
        let mut g = self.clone();
        g.attention.resolutions.sort_unstable();
        g.attention.resolutions.dedup();
        if let Some(hc) = g.attention.head_channels {
            // With head_channels set, `heads` has no effect: normalise it away.
            g.attention.heads = 0;
            g.attention.head_channels = Some(hc);
        }
        if self.check().is_err() {
            return g;
        }
        let layout = self.layout_unchecked();
        let ratio = |s: &ResBlockShape| s.hidden_channels as f64 / s.out_channels as f64;
        for (level, (shapes, _)) in g.encoder.iter_mut().zip(&layout.encoder) {
            for (b, s) in level.res_blocks.iter_mut().zip(shapes) {
                b.hidden_mult = ratio(s);
            }
        }
        for (b, s) in g.middle.res_blocks.iter_mut().zip(&layout.middle) {
            b.hidden_mult = ratio(s);
        }
        for (level, (shapes, _)) in g.decoder.iter_mut().zip(&layout.decoder) {
            for (b, s) in level.res_blocks.iter_mut().zip(shapes) {
                b.hidden_mult = ratio(s);
            }
        }
        g
    }

    /// Canonical JSON of [`Genome::canonical`]: fixed key order, no whitespace, floats in
    /// shortest round-trip form. Two genomes that build the same network have the same
    /// canonical JSON.
    pub fn canonical_json(&self) -> String {
        let value = serde_json::to_value(self.canonical()).expect("a genome always serialises");
        canonical_value(&value)
    }

    /// Short content hash of the canonical JSON (16 hex digits of SHA-256), used to deduplicate
    /// trials and name their directories.
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.canonical_json().as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// Parse from JSON; a malformed, missing or unknown field is reported with its JSON path.
    pub fn from_json(text: &str) -> Result<Genome, GenomeError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let path = if path == "." { String::new() } else { path };
            GenomeError::new(
                if path.is_empty() {
                    "(document)".to_string()
                } else {
                    path
                },
                format!("{inner}"),
            )
        })
    }

    /// Pretty JSON for files and the terminal.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("a genome always serialises")
    }
}

/// Serialise a JSON value with object keys sorted, recursively.
fn canonical_value(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        serde_json::to_string(k).expect("string"),
                        canonical_value(&map[*k])
                    )
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(canonical_value).collect();
            format!("[{}]", parts.join(","))
        }
        other => other.to_string(),
    }
}
