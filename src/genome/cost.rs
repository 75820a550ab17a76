//! Cost model: parameters, multiply-accumulates and activation memory from the genome alone.
//!
//! Counts follow the builder in `model/` layer by layer (the test suite checks the parameter
//! count against the built module for presets and random genomes). MACs count convolutions,
//! linear layers and the two attention matmuls; element-wise work (norms, activations) is
//! not counted, as is usual for FLOP tables of UNets.

use super::{Genome, GenomeErrors, ResBlockShape, UnetLayout};
use serde::{Deserialize, Serialize};

/// What one genome costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    /// Trainable parameters (exactly the built module's count).
    pub params: u64,
    /// Multiply-accumulates of one forward pass for one image.
    pub macs: u64,
    /// Estimated activation floats kept for the backward pass, per image.
    pub activation_floats: u64,
}

impl Cost {
    /// Estimated bytes of activations for a training batch (f32).
    pub fn activation_bytes(&self, batch: usize) -> u64 {
        self.activation_floats * 4 * batch as u64
    }
}

#[derive(Default)]
struct Acc {
    params: u64,
    macs: u64,
    acts: u64,
}

impl Acc {
    fn conv(&mut self, cin: usize, cout: usize, k: usize, out_res: usize) {
        let (cin, cout, k, r) = (cin as u64, cout as u64, k as u64, out_res as u64);
        self.params += cin * cout * k * k + cout;
        self.macs += r * r * cout * cin * k * k;
        self.acts += r * r * cout;
    }
    fn linear(&mut self, din: usize, dout: usize) {
        let (din, dout) = (din as u64, dout as u64);
        self.params += din * dout + dout;
        self.macs += din * dout;
    }
    fn norm(&mut self, c: usize, res: usize) {
        self.params += 2 * c as u64;
        // the normalised tensor and the activation after it
        self.acts += 2 * (res * res * c) as u64;
    }
}

fn res_block(acc: &mut Acc, s: &ResBlockShape, temb: usize, scale_shift: bool, heads: usize) {
    let r = s.resolution;
    acc.norm(s.in_channels, r);
    acc.conv(s.in_channels, s.hidden_channels, s.kernels[0], r);
    let emb_out = if scale_shift { 2 } else { 1 } * s.hidden_channels;
    acc.linear(temb, emb_out);
    acc.norm(s.hidden_channels, r);
    acc.conv(s.hidden_channels, s.out_channels, s.kernels[1], r);
    if s.in_channels != s.out_channels {
        acc.conv(s.in_channels, s.out_channels, 1, r);
    }
    if s.attention {
        attention(acc, s.out_channels, r, heads);
    }
}

fn attention(acc: &mut Acc, c: usize, r: usize, heads: usize) {
    acc.norm(c, r);
    acc.conv(c, 3 * c, 1, r);
    let l = (r * r) as u64;
    // QK^T and attention-weighted V: each L x L x C multiply-accumulates in total over heads.
    acc.macs += 2 * l * l * c as u64;
    acc.acts += 2 * heads as u64 * l * l;
    acc.conv(c, c, 1, r);
}

/// Cost of one unit (a ResBlock of shape `s` and the attention that follows it when
/// `s.attention`) inside `genome`'s network: the block-wise search's per-candidate cost.
pub fn unit_cost(genome: &Genome, s: &ResBlockShape) -> Cost {
    let mut acc = Acc::default();
    let temb = genome.base_channels * genome.time_embed_mult;
    res_block(
        &mut acc,
        s,
        temb,
        genome.scale_shift_norm,
        genome.heads_for(s.out_channels),
    );
    Cost {
        params: acc.params,
        macs: acc.macs,
        activation_floats: acc.acts,
    }
}

/// Parameters, MACs and activation estimate of a genome. Errors if the genome is not
/// structurally valid.
pub fn cost(genome: &Genome) -> Result<Cost, GenomeErrors> {
    let layout = genome.layout()?;
    Ok(layout_cost(genome, &layout))
}

fn layout_cost(genome: &Genome, l: &UnetLayout) -> Cost {
    let mut acc = Acc::default();
    let ch = l.base_channels;
    let temb = l.time_embed_channels;
    let ss = l.scale_shift_norm;
    let heads = |c: usize| genome.heads_for(c);
    // Timestep MLP: sinusoidal(ch) -> temb -> temb.
    acc.linear(ch, temb);
    acc.linear(temb, temb);
    // Stem.
    acc.conv(l.image.channels, ch, 3, l.image.size);
    for (blocks, down) in &l.encoder {
        for s in blocks {
            res_block(&mut acc, s, temb, ss, heads(s.out_channels));
        }
        if let Some((c, r)) = down {
            acc.conv(*c, *c, 3, r / 2);
        }
    }
    let [m0, m1] = &l.middle;
    res_block(&mut acc, m0, temb, ss, heads(m0.out_channels));
    res_block(&mut acc, m1, temb, ss, heads(m1.out_channels));
    for (blocks, up) in &l.decoder {
        for s in blocks {
            res_block(&mut acc, s, temb, ss, heads(s.out_channels));
        }
        if let Some((c, r)) = up {
            acc.acts += (4 * r * r * c) as u64;
            acc.conv(*c, *c, 3, r * 2);
        }
    }
    acc.norm(l.head_channels, l.image.size);
    acc.conv(l.head_channels, l.out_channels, 3, l.image.size);
    Cost {
        params: acc.params,
        macs: acc.macs,
        activation_floats: acc.acts,
    }
}
