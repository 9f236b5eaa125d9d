//! The model's shape and everything derived from it without a tensor backend:
//! the parameter layout and the seeded initial parameters.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::params::{FlatParams, Layout, TensorSpec};
use crate::task::Task;

/// Widths of an MLP: `inputs → hidden… → outputs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelShape {
    pub inputs: usize,
    pub hidden: Vec<usize>,
    /// 1 for a binary task (sigmoid), the number of classes otherwise (softmax).
    pub outputs: usize,
}

impl ModelShape {
    /// The shape of a task's model once the number of encoded features is known.
    pub fn for_task(task: &Task, inputs: usize) -> Self {
        let classes = task.data.label.num_classes();
        Self { inputs, hidden: task.model.hidden.clone(), outputs: if classes == 2 { 1 } else { classes } }
    }

    /// Layer widths including input and output.
    pub fn widths(&self) -> Vec<usize> {
        let mut w = vec![self.inputs];
        w.extend(&self.hidden);
        w.push(self.outputs);
        w
    }

    /// Names and shapes in the order burn visits them (`layers.i.weight [in, out]`, `layers.i.bias`).
    pub fn layout(&self) -> Layout {
        let w = self.widths();
        let mut tensors = Vec::new();
        for (i, pair) in w.windows(2).enumerate() {
            tensors.push(TensorSpec { name: format!("layers.{i}.weight"), shape: vec![pair[0], pair[1]] });
            tensors.push(TensorSpec { name: format!("layers.{i}.bias"), shape: vec![pair[1]] });
        }
        Layout::new(tensors)
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.layout().total()
    }

    /// Initial parameters from a seed: `U(−k, k)` with `k = 1/√fan_in` for weights and biases
    /// (burn's and PyTorch's default for linear layers), drawn from ChaCha8 so that the same
    /// seed gives the same model on every machine.
    pub fn init_params(&self, seed: u64) -> FlatParams {
        let layout = self.layout();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x696e_6974); // "init"
        let mut values = Vec::with_capacity(layout.total());
        for t in layout.tensors() {
            let fan_in = if t.shape.len() == 2 { t.shape[0] } else { values_fan_in(layout.tensors(), &t.name) };
            let k = 1.0 / (fan_in.max(1) as f32).sqrt();
            values.extend((0..t.len()).map(|_| rng.random_range(-k..k)));
        }
        // Lengths agree by construction.
        FlatParams::new(layout, values).unwrap_or_else(|e| unreachable!("{e}"))
    }
}

/// The fan-in of a bias is that of the weight of the same layer.
fn values_fan_in(tensors: &[TensorSpec], bias_name: &str) -> usize {
    let weight = bias_name.replace(".bias", ".weight");
    tensors.iter().find(|t| t.name == weight).map_or(1, |t| t.shape[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_model_has_the_expected_size() {
        let s = ModelShape { inputs: 30, hidden: vec![64, 32], outputs: 1 };
        assert_eq!(s.num_params(), 30 * 64 + 64 + 64 * 32 + 32 + 32 + 1);
        assert_eq!(s.num_params(), 4097);
        assert_eq!(s.layout().tensors()[0].name, "layers.0.weight");
    }

    #[test]
    fn init_is_seeded_and_bounded() {
        let s = ModelShape { inputs: 4, hidden: vec![8], outputs: 1 };
        assert_eq!(s.init_params(1).hash(), s.init_params(1).hash());
        assert_ne!(s.init_params(1).hash(), s.init_params(2).hash());
        let p = s.init_params(3);
        assert!(p.tensor_values(0).iter().all(|v| v.abs() <= 0.5));
        assert!(p.tensor_values(3).iter().all(|v| v.abs() <= 1.0 / 8f32.sqrt()));
    }
}
