//! Block-wise distillation search (ALGORITHMS.md section 6): a trained teacher UNet is cut into
//! blocks ([`BlockId`]); each block gets a weight-sharing supernet trained to reproduce the
//! teacher block's outputs from the teacher's inputs; a per-block local search picks the
//! cheapest path whose loss stays within `gamma` of the teacher-shaped path; the assembled
//! student is retrained with the dynamic joint loss.
//!
//! What a block may change: the kernels and the hidden width of each of its ResBlocks (a
//! [`ResBlockGene`]). The number of ResBlocks, their output widths, attention, and everything
//! outside the blocks keep the teacher's shape, so every block stays a drop-in replacement
//! and the blocks can be searched independently.

pub mod distill;
pub mod local;
pub mod pipeline;
pub mod retrain;
pub mod supernet;

use crate::genome::{Genome, GenomeErrors, ResBlockGene, ResBlockShape, unit_cost};
pub use crate::model::BlockId;
use serde::{Deserialize, Serialize};

/// The choices of one unit (ResBlock) of a block.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitSpace {
    /// The teacher's shape of this unit.
    pub teacher: ResBlockShape,
    /// The teacher's gene of this unit.
    pub teacher_gene: ResBlockGene,
    /// Kernel sizes a convolution may take.
    pub kernels: Vec<usize>,
    /// Distinct hidden widths, ascending, each with the first multiplier that gives it.
    pub widths: Vec<(usize, f64)>,
}

impl UnitSpace {
    /// Number of distinct genes: kernels x kernels x widths.
    pub fn len(&self) -> usize {
        self.kernels.len() * self.kernels.len() * self.widths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gene number `i` (mixed radix: width fastest, then the second kernel, then the first).
    pub fn gene(&self, i: usize) -> ResBlockGene {
        let (nk, nw) = (self.kernels.len(), self.widths.len());
        ResBlockGene {
            kernels: [self.kernels[i / (nw * nk)], self.kernels[(i / nw) % nk]],
            hidden_mult: self.widths[i % nw].1,
        }
    }

    /// The index of a gene's choices, or None when a kernel or the width is not offered.
    pub fn index_of(&self, g: &ResBlockGene, genome: &Genome) -> Option<usize> {
        let nw = self.widths.len();
        let k0 = self.kernels.iter().position(|&k| k == g.kernels[0])?;
        let k1 = self.kernels.iter().position(|&k| k == g.kernels[1])?;
        let w = genome.hidden_channels(self.teacher.out_channels, g.hidden_mult);
        let wi = self.widths.iter().position(|&(x, _)| x == w)?;
        Some((k0 * self.kernels.len() + k1) * nw + wi)
    }

    /// The unit's shape with gene `g`.
    pub fn shape(&self, g: &ResBlockGene, genome: &Genome) -> ResBlockShape {
        ResBlockShape {
            hidden_channels: genome.hidden_channels(self.teacher.out_channels, g.hidden_mult),
            kernels: g.kernels,
            ..self.teacher
        }
    }

    /// The widest hidden width offered.
    pub fn max_width(&self) -> usize {
        self.widths.last().expect("at least one width").0
    }
}

/// The choices of one block: one [`UnitSpace`] per ResBlock.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSpace {
    pub id: BlockId,
    pub units: Vec<UnitSpace>,
}

/// One candidate of a block: a gene per unit.
pub type Path = Vec<ResBlockGene>;

impl BlockSpace {
    /// Number of paths (saturating).
    pub fn size(&self) -> u128 {
        self.units
            .iter()
            .fold(1u128, |n, u| n.saturating_mul(u.len() as u128))
    }

    /// Path number `i` in mixed radix (the last unit fastest).
    pub fn path(&self, mut i: u128) -> Path {
        let mut genes: Vec<ResBlockGene> = self
            .units
            .iter()
            .rev()
            .map(|u| {
                let n = u.len() as u128;
                let g = u.gene((i % n) as usize);
                i /= n;
                g
            })
            .collect();
        genes.reverse();
        genes
    }

    /// The teacher's own path.
    pub fn teacher_path(&self) -> Path {
        self.units.iter().map(|u| u.teacher_gene).collect()
    }

    /// Parameters and MACs of a path, from the cost model.
    pub fn cost(&self, path: &[ResBlockGene], genome: &Genome) -> PathCost {
        let mut c = PathCost::default();
        for (u, g) in self.units.iter().zip(path) {
            let k = unit_cost(genome, &u.shape(g, genome));
            c.params += k.params;
            c.macs += k.macs;
        }
        c
    }
}

/// Parameters and MACs of a block's path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathCost {
    pub params: u64,
    pub macs: u64,
}

/// The teacher genome's block spaces: every unit may take any of `kernels` and any hidden
/// width that `hidden_mults` give (the teacher's own kernels and multiplier are always
/// offered, so the teacher-shaped path is a candidate).
pub fn block_spaces(
    teacher: &Genome,
    kernels: &[usize],
    hidden_mults: &[f64],
) -> Result<Vec<BlockSpace>, GenomeErrors> {
    let layout = teacher.layout()?;
    let genes = |id: BlockId| -> Vec<ResBlockGene> {
        match id {
            BlockId::Encoder(l) => teacher.encoder[l].res_blocks.clone(),
            BlockId::Middle => teacher.middle.res_blocks.to_vec(),
            BlockId::Decoder(d) => teacher.decoder[d].res_blocks.clone(),
        }
    };
    let shapes = |id: BlockId| -> Vec<ResBlockShape> {
        match id {
            BlockId::Encoder(l) => layout.encoder[l].0.clone(),
            BlockId::Middle => layout.middle.to_vec(),
            BlockId::Decoder(d) => layout.decoder[d].0.clone(),
        }
    };
    let ids = (0..teacher.encoder.len())
        .map(BlockId::Encoder)
        .chain([BlockId::Middle])
        .chain((0..teacher.decoder.len()).map(BlockId::Decoder));
    Ok(ids
        .map(|id| BlockSpace {
            id,
            units: shapes(id)
                .into_iter()
                .zip(genes(id))
                .map(|(shape, gene)| {
                    let mut ks: Vec<usize> = kernels.to_vec();
                    ks.extend(gene.kernels);
                    ks.sort_unstable();
                    ks.dedup();
                    let mut widths: Vec<(usize, f64)> = Vec::new();
                    let mut mults = hidden_mults.to_vec();
                    mults.push(gene.hidden_mult);
                    for m in mults {
                        let w = teacher.hidden_channels(shape.out_channels, m);
                        if !widths.iter().any(|&(x, _)| x == w) {
                            widths.push((w, m));
                        }
                    }
                    widths.sort_by_key(|&(w, _)| w);
                    UnitSpace {
                        teacher: shape,
                        teacher_gene: gene,
                        kernels: ks,
                        widths,
                    }
                })
                .collect(),
        })
        .collect())
}

/// The teacher genome with the given blocks' genes replaced.
pub fn assemble(teacher: &Genome, choice: &[(BlockId, Path)]) -> Genome {
    let mut g = teacher.clone();
    for (id, path) in choice {
        match id {
            BlockId::Encoder(l) => g.encoder[*l].res_blocks = path.clone(),
            BlockId::Middle => g.middle.res_blocks = [path[0], path[1]],
            BlockId::Decoder(d) => g.decoder[*d].res_blocks = path.clone(),
        }
    }
    g
}
