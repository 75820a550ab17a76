//! Exponential moving average of the weights: `ema = d * ema + (1 - d) * model`, applied on the
//! device with a visitor (collect the model's parameters by id) and a mapper (update the EMA
//! copy, which shares the ids because it was made with `valid()`).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;
use std::collections::HashMap;

struct Collect(HashMap<ParamId, Tensor<1>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        // Detached, plain-device copy of the live weights, flattened so all ranks share a map.
        let v = param.val().inner().flatten::<1>(0, D - 1);
        self.0.insert(param.id, v);
    }
}

struct Update {
    src: HashMap<ParamId, Tensor<1>>,
    decay: f64,
    missing: usize,
}

impl ModuleMapper for Update {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        match self.src.remove(&param.id) {
            Some(src) => {
                let d = self.decay;
                param.map(|e| {
                    let shape = e.shape();
                    if crate::cpu::supported(&e) && crate::cpu::supported(&src) {
                        // One pass, in place (the same f32 arithmetic).
                        crate::cpu::ema(e, src.reshape(shape), d)
                    } else {
                        e * d + src.reshape(shape) * (1.0 - d)
                    }
                })
            }
            None => {
                self.missing += 1;
                param
            }
        }
    }
}

/// Update `ema` towards `model` with `decay`. Panics if the two modules do not share
/// parameter ids (the EMA must be created from the model with `valid()`).
pub fn ema_update<M: Module>(ema: M, model: &M, decay: f64) -> M {
    let mut c = Collect(HashMap::new());
    model.visit(&mut c);
    let mut u = Update {
        src: c.0,
        decay,
        missing: 0,
    };
    let ema = ema.map(&mut u);
    assert!(
        u.missing == 0 && u.src.is_empty(),
        "EMA and model parameters differ: the EMA copy must come from model.valid()"
    );
    ema
}
