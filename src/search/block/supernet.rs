//! Block supernets: single-path one-shot weight sharing (ALGORITHMS.md section 6). Each unit
//! keeps one convolution per kernel size at the widest hidden width; a narrower width uses the
//! leading channel slice of those weights (and of the timestep projection), with a GroupNorm
//! of its own. Unused slices receive exactly zero gradient.

use super::{BlockSpace, Path};
use crate::genome::{Genome, ResBlockGene};
use crate::model::conv::{self, conv2d};
use crate::model::norm::group_norm_act;
use crate::model::{AttentionBlock, BlockId, ResBlock, Unet, block_forward};
use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor};

/// A ResBlock whose kernels and hidden width are chosen per forward pass.
#[derive(Module, Debug)]
pub struct SuperResBlock {
    pub norm1: GroupNorm,
    /// One per entry of `kernels`: `[max_width, in, k, k]`.
    pub conv1: Vec<Conv2d>,
    /// `temb -> max_width` (twice that with scale-shift norm: scales, then shifts).
    pub emb: Linear,
    /// One per entry of `widths`.
    pub norm2: Vec<GroupNorm>,
    /// One per entry of `kernels`: `[out, max_width, k, k]`.
    pub conv2: Vec<Conv2d>,
    pub skip: Option<Conv2d>,
    #[module(skip)]
    pub kernels: Vec<usize>,
    #[module(skip)]
    pub widths: Vec<usize>,
    #[module(skip)]
    pub scale_shift: bool,
}

fn conv_opts(k: usize) -> ConvOptions<2> {
    ConvOptions::new([1, 1], [k / 2, k / 2], [1, 1], 1)
}

impl SuperResBlock {
    fn max_width(&self) -> usize {
        *self.widths.last().expect("at least one width")
    }

    fn kernel_index(&self, k: usize) -> usize {
        self.kernels
            .iter()
            .position(|&x| x == k)
            .unwrap_or_else(|| panic!("kernel {k} is not in the supernet's {:?}", self.kernels))
    }

    fn width_index(&self, w: usize) -> usize {
        self.widths
            .iter()
            .position(|&x| x == w)
            .unwrap_or_else(|| panic!("width {w} is not in the supernet's {:?}", self.widths))
    }

    /// `x`: `[B, in, H, W]`, `emb`: `[B, temb]` after SiLU; kernels `k` and hidden width `w`.
    pub fn forward(&self, x: Tensor<4>, emb: Tensor<2>, k: [usize; 2], w: usize) -> Tensor<4> {
        let (c1, c2) = (
            &self.conv1[self.kernel_index(k[0])],
            &self.conv2[self.kernel_index(k[1])],
        );
        let norm2 = &self.norm2[self.width_index(w)];
        let h = conv2d(
            group_norm_act(&self.norm1, x.clone(), None, true),
            c1.weight.val().narrow(0, 0, w),
            c1.bias.as_ref().map(|b| b.val().narrow(0, 0, w)),
            conv_opts(k[0]),
        );
        let b = h.dims()[0];
        let e = self.emb.forward(emb);
        let h = if self.scale_shift {
            let scale = e.clone().narrow(1, 0, w);
            let shift = e.narrow(1, self.max_width(), w);
            group_norm_act(norm2, h, Some((scale, shift)), true)
        } else {
            group_norm_act(
                norm2,
                h + e.narrow(1, 0, w).reshape([b, w, 1, 1]),
                None,
                true,
            )
        };
        let h = conv2d(
            h,
            c2.weight.val().narrow(1, 0, w),
            c2.bias.as_ref().map(|b| b.val()),
            conv_opts(k[1]),
        );
        let x = match &self.skip {
            Some(s) => conv::forward(s, x),
            None => x,
        };
        x + h
    }
}

/// A supernet unit: the searchable ResBlock and the teacher-shaped attention after it.
#[derive(Module, Debug)]
pub struct SuperUnit {
    pub res: SuperResBlock,
    pub attn: Option<AttentionBlock>,
}

/// The supernet of one block.
#[derive(Module, Debug)]
pub struct BlockSupernet {
    pub units: Vec<SuperUnit>,
    #[module(skip)]
    pub id: BlockId,
    /// The hidden width of every gene of every unit is resolved with the teacher's rule.
    #[module(skip)]
    pub genome: Genome,
}

impl BlockSupernet {
    /// A freshly initialised supernet for `space`, a block of `teacher`.
    pub fn new(teacher: &Genome, space: &BlockSpace, device: &Device) -> Self {
        let g = teacher.norm_groups;
        let temb = teacher.base_channels * teacher.time_embed_mult;
        let ss = teacher.scale_shift_norm;
        let units = space
            .units
            .iter()
            .map(|u| {
                let s = u.teacher;
                let wmax = u.max_width();
                let widths: Vec<usize> = u.widths.iter().map(|&(w, _)| w).collect();
                let proto = |k: usize, cin: usize, cout: usize, zero: bool| {
                    crate::model::conv(cin, cout, k, 1, zero, device)
                };
                SuperUnit {
                    res: SuperResBlock {
                        norm1: GroupNormConfig::new(g, s.in_channels).init(device),
                        conv1: u
                            .kernels
                            .iter()
                            .map(|&k| proto(k, s.in_channels, wmax, false))
                            .collect(),
                        emb: LinearConfig::new(temb, if ss { 2 } else { 1 } * wmax).init(device),
                        norm2: widths
                            .iter()
                            .map(|&w| GroupNormConfig::new(g, w).init(device))
                            .collect(),
                        // Not zero-initialised (unlike a fresh UNet's): a supernet starting
                        // at the identity would give every path the same loss at first.
                        conv2: u
                            .kernels
                            .iter()
                            .map(|&k| proto(k, wmax, s.out_channels, false))
                            .collect(),
                        skip: (s.in_channels != s.out_channels)
                            .then(|| proto(1, s.in_channels, s.out_channels, false)),
                        kernels: u.kernels.clone(),
                        widths,
                        scale_shift: ss,
                    },
                    attn: s.attention.then(|| {
                        AttentionBlock::new(
                            s.out_channels,
                            teacher.heads_for(s.out_channels),
                            g,
                            device,
                        )
                    }),
                }
            })
            .collect();
        BlockSupernet {
            units,
            id: space.id,
            genome: teacher.clone(),
        }
    }

    /// Run the block along `path` on the given inputs (see [`crate::model::block_forward`]).
    pub fn forward(
        &self,
        path: &[ResBlockGene],
        input: Tensor<4>,
        skips: &[Tensor<4>],
        emb: Tensor<2>,
    ) -> Vec<Tensor<4>> {
        assert_eq!(path.len(), self.units.len(), "{}: path length", self.id);
        block_forward(self.id, self.units.len(), input, skips, |i, h| {
            let u = &self.units[i];
            let out = u
                .res
                .forward(h, emb.clone(), path[i].kernels, self.width(i, &path[i]));
            match &u.attn {
                Some(a) => a.forward(out),
                None => out,
            }
        })
    }

    fn width(&self, unit: usize, g: &ResBlockGene) -> usize {
        let out = self.units[unit].res.conv2[0].weight.dims()[0];
        self.genome.hidden_channels(out, g.hidden_mult)
    }

    /// Copy the teacher's weights of this block into the teacher-shaped path (leading slices
    /// of the teacher's kernels, its width's GroupNorm, attention, skip and first norm).
    pub fn load_teacher(self, teacher: &Unet) -> Self {
        let units = teacher.block_units(self.id);
        let mut me = self;
        let ids = me.id;
        for (u, t) in me.units.iter_mut().zip(units) {
            copy_res(&mut u.res, &t.res, ids);
            if let (Some(a), Some(ta)) = (&mut u.attn, &t.attn) {
                *a = ta.clone();
            }
        }
        me
    }

    /// The unit genes of the teacher-shaped path, as [`Path`].
    pub fn teacher_path(space: &BlockSpace) -> Path {
        space.teacher_path()
    }
}

fn put<const D: usize>(p: Param<Tensor<D>>, value: Tensor<D>) -> Param<Tensor<D>> {
    p.map(|w| {
        let ranges: [std::ops::Range<usize>; D] = std::array::from_fn(|i| 0..value.dims()[i]);
        w.slice_assign(ranges, value)
    })
}

fn copy_conv(dst: &mut Conv2d, src: &Conv2d) {
    dst.weight = put(dst.weight.clone(), src.weight.val());
    if let (Some(db), Some(sb)) = (&mut dst.bias, &src.bias) {
        *db = put(db.clone(), sb.val());
    }
}

fn copy_res(dst: &mut SuperResBlock, src: &ResBlock, id: BlockId) {
    let k = src.conv1.kernel_size[0];
    let k2 = src.conv2.kernel_size[0];
    let w = src.conv1.weight.dims()[0];
    dst.norm1 = src.norm1.clone();
    let (i1, i2, iw) = (
        dst.kernel_index(k),
        dst.kernel_index(k2),
        dst.width_index(w),
    );
    copy_conv(&mut dst.conv1[i1], &src.conv1);
    copy_conv(&mut dst.conv2[i2], &src.conv2);
    dst.norm2[iw] = src.norm2.clone();
    let wmax = dst.max_width();
    // The timestep projection: `[temb, w]` (or scales then shifts, `[temb, 2w]`).
    let sw = src.emb.weight.val();
    let sb = src.emb.bias.as_ref().map(|b| b.val());
    let temb = sw.dims()[0];
    let parts = if dst.scale_shift { 2 } else { 1 };
    for part in 0..parts {
        let cols = part * wmax..part * wmax + w;
        let from = part * w..part * w + w;
        dst.emb.weight = dst.emb.weight.clone().map(|x| {
            x.slice_assign(
                [0..temb, cols.clone()],
                sw.clone().slice([0..temb, from.clone()]),
            )
        });
        if let (Some(db), Some(sb)) = (&mut dst.emb.bias, &sb) {
            *db = db
                .clone()
                .map(|x| x.slice_assign([cols.clone()], sb.clone().slice([from])));
        }
    }
    match (&mut dst.skip, &src.skip) {
        (Some(d), Some(s)) => *d = s.clone(),
        (None, None) => {}
        _ => panic!("{id}: the supernet's skip does not match the teacher's"),
    }
}

fn take<const D: usize>(dst: &mut Param<Tensor<D>>, src: Tensor<D>) {
    let ranges: [std::ops::Range<usize>; D] = std::array::from_fn(|i| 0..dst.dims()[i]);
    let value = src.slice(ranges);
    *dst = dst.clone().map(|_| value);
}

fn take_conv(dst: &mut Conv2d, src: &Conv2d) {
    take(&mut dst.weight, src.weight.val());
    if let (Some(db), Some(sb)) = (&mut dst.bias, &src.bias) {
        take(db, sb.val());
    }
}

impl BlockSupernet {
    /// Write the weights of `path` into `units`, a student's block of that shape (the
    /// inverse of [`BlockSupernet::load_teacher`]).
    pub fn extract_into(&self, path: &[ResBlockGene], units: &mut [crate::model::UnetBlock]) {
        assert_eq!(path.len(), units.len(), "{}: path length", self.id);
        for (i, (u, dst)) in self.units.iter().zip(units.iter_mut()).enumerate() {
            let s = &u.res;
            let d = &mut dst.res;
            let w = self.width(i, &path[i]);
            assert_eq!(d.conv1.weight.dims()[0], w, "{}: unit {i} width", self.id);
            d.norm1 = s.norm1.clone();
            take_conv(&mut d.conv1, &s.conv1[s.kernel_index(path[i].kernels[0])]);
            take_conv(&mut d.conv2, &s.conv2[s.kernel_index(path[i].kernels[1])]);
            d.norm2 = s.norm2[s.width_index(w)].clone();
            let wmax = s.max_width();
            let sw = s.emb.weight.val();
            let temb = sw.dims()[0];
            let parts = if s.scale_shift { 2 } else { 1 };
            let cols = |p: usize| p * wmax..p * wmax + w;
            let weight = Tensor::cat(
                (0..parts)
                    .map(|p| sw.clone().slice([0..temb, cols(p)]))
                    .collect(),
                1,
            );
            d.emb.weight = d.emb.weight.clone().map(|_| weight);
            if let (Some(db), Some(sb)) = (&mut d.emb.bias, &s.emb.bias) {
                let sb = sb.val();
                let b = Tensor::cat((0..parts).map(|p| sb.clone().slice([cols(p)])).collect(), 0);
                *db = db.clone().map(|_| b);
            }
            if let (Some(ds), Some(ss)) = (&mut d.skip, &s.skip) {
                *ds = ss.clone();
            }
            if let (Some(da), Some(sa)) = (&mut dst.attn, &u.attn) {
                *da = sa.clone();
            }
        }
    }
}
