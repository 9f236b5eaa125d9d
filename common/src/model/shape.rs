//! The model's shape and everything derived from it without a tensor backend:
//! the parameter layout and the seeded initial parameters.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::params::{FlatParams, Layout, TensorSpec};
use crate::task::{DEFAULT_KERNEL, ImageSpec, ModelKind, Task};

/// A model's shape: an MLP `inputs → hidden… → outputs`, or a CNN whose convolutions
/// (`conv`) come before those fully connected layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelShape {
    /// Values per example (a CNN: channels × height × width).
    pub inputs: usize,
    pub hidden: Vec<usize>,
    /// 1 for a binary task (sigmoid), the number of classes otherwise (softmax).
    pub outputs: usize,
    /// A CNN's convolutions; `None` for an MLP.
    pub conv: Option<ConvShape>,
    /// A site's own module (`kind = "custom"`): its registered name and layout. `hidden` and
    /// `conv` are then unused.
    pub custom: Option<CustomShape>,
}

/// A custom model as the federation knows it without its code: the name its sites registered
/// the module under, the layout of its parameters, and the image it reads (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomShape {
    pub name: String,
    pub layout: Layout,
    pub image: Option<ImageSpec>,
}

/// The convolutional part of a CNN: each convolution has `"same"` padding and is followed by
/// ReLU and a 2×2 max-pool of stride 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub filters: Vec<usize>,
    pub kernel: usize,
}

impl ConvShape {
    /// Values out of the last pool, into the first fully connected layer.
    pub fn flat_outputs(&self) -> usize {
        let halvings = self.filters.len();
        self.filters.last().copied().unwrap_or(self.channels) * (self.height >> halvings) * (self.width >> halvings)
    }
}

impl ModelShape {
    /// An MLP of these widths.
    pub fn mlp(inputs: usize, hidden: Vec<usize>, outputs: usize) -> Self {
        Self { inputs, hidden, outputs, conv: None, custom: None }
    }

    /// The shape of a task's model once the number of encoded features is known (an image
    /// task's input is its image, whatever the plan's width).
    /// A custom task whose layout is not set yet (see [`Task::custom_layout`]) gets an empty
    /// layout here, which no model and no update matches.
    pub fn for_task(task: &Task, inputs: usize) -> Self {
        let classes = task.data.label.num_classes();
        let outputs = if classes == 2 { 1 } else { classes };
        let inputs = task.data.images.map_or(inputs, |i| i.values());
        let conv = match (task.model.kind, task.data.images) {
            (ModelKind::Cnn, Some(img)) => Some(ConvShape {
                channels: img.channels,
                height: img.height,
                width: img.width,
                filters: task.model.filters.clone(),
                kernel: task.model.kernel.unwrap_or(DEFAULT_KERNEL),
            }),
            _ => None,
        };
        let custom = (task.model.kind == ModelKind::Custom).then(|| CustomShape {
            name: task.model.name.clone().unwrap_or_default(),
            layout: Layout::new(task.model.layout.clone().unwrap_or_default()),
            image: task.data.images,
        });
        Self { inputs, hidden: task.model.hidden.clone(), outputs, conv, custom }
    }

    /// The image an input row holds, if the model reads images.
    pub fn image(&self) -> Option<ImageSpec> {
        match (&self.conv, &self.custom) {
            (Some(c), _) => Some(ImageSpec { channels: c.channels, height: c.height, width: c.width }),
            (None, Some(c)) => c.image,
            (None, None) => None,
        }
    }

    /// Widths of the fully connected layers including their input and the output.
    pub fn widths(&self) -> Vec<usize> {
        let mut w = vec![self.conv.as_ref().map_or(self.inputs, ConvShape::flat_outputs)];
        w.extend(&self.hidden);
        w.push(self.outputs);
        w
    }

    /// Names and shapes in the order burn visits them: a CNN's `convs.i.weight [out, in, k, k]`
    /// and `convs.i.bias`, then `layers.i.weight [in, out]` and `layers.i.bias`.
    pub fn layout(&self) -> Layout {
        if let Some(custom) = &self.custom {
            return custom.layout.clone();
        }
        let w = self.widths();
        let mut tensors = Vec::new();
        if let Some(c) = &self.conv {
            let mut channels = c.channels;
            for (i, &f) in c.filters.iter().enumerate() {
                tensors.push(TensorSpec { name: format!("convs.{i}.weight"), shape: vec![f, channels, c.kernel, c.kernel] });
                tensors.push(TensorSpec { name: format!("convs.{i}.bias"), shape: vec![f] });
                channels = f;
            }
        }
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
    /// (burn's and PyTorch's default for linear and convolutional layers; a convolution's fan-in
    /// is `in × k × k`), drawn from ChaCha8 so that the same seed gives the same model on every
    /// machine. A custom model's layout gets the same rule (see [`seeded_init`]).
    pub fn init_params(&self, seed: u64) -> FlatParams {
        seeded_init(self.layout(), seed)
    }
}

/// Seeded initial values for any layout: a 2-D `[in, out]` weight and a 4-D `[out, in, k, k]`
/// convolution take `U(−1/√fan_in, 1/√fan_in)`, a bias `x.bias` that of its `x.weight`, any
/// other tensor `U(−1, 1)`. A custom module whose layers want another rule (a norm's scale of
/// ones, say) should start from its own values: `serve --init-model`.
pub fn seeded_init(layout: Layout, seed: u64) -> FlatParams {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x696e_6974); // "init"
    let mut values = Vec::with_capacity(layout.total());
    for t in layout.tensors() {
        let fan_in = weight_fan_in(&t.shape).unwrap_or_else(|| values_fan_in(layout.tensors(), &t.name));
        let k = 1.0 / (fan_in.max(1) as f32).sqrt();
        values.extend((0..t.len()).map(|_| rng.random_range(-k..k)));
    }
    // Lengths agree by construction.
    FlatParams::new(layout, values).unwrap_or_else(|e| unreachable!("{e}"))
}

/// The fan-in of a weight: a linear layer's `[in, out]`, a convolution's `[out, in, k, k]`.
fn weight_fan_in(shape: &[usize]) -> Option<usize> {
    match shape {
        [fan_in, _] => Some(*fan_in),
        [_, rest @ ..] if rest.len() == 3 => Some(rest.iter().product()),
        _ => None,
    }
}

/// The fan-in of a bias is that of the weight of the same layer.
fn values_fan_in(tensors: &[TensorSpec], bias_name: &str) -> usize {
    let weight = bias_name.replace(".bias", ".weight");
    tensors.iter().find(|t| t.name == weight).and_then(|t| weight_fan_in(&t.shape)).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_model_has_the_expected_size() {
        let s = ModelShape { inputs: 30, hidden: vec![64, 32], outputs: 1, conv: None, custom: None };
        assert_eq!(s.num_params(), 30 * 64 + 64 + 64 * 32 + 32 + 32 + 1);
        assert_eq!(s.num_params(), 4097);
        assert_eq!(s.layout().tensors()[0].name, "layers.0.weight");
    }

    #[test]
    fn the_fedavg_papers_models_have_its_parameter_counts() {
        let cnn = ModelShape {
            inputs: 784,
            hidden: vec![512],
            outputs: 10,
            conv: Some(ConvShape { channels: 1, height: 28, width: 28, filters: vec![32, 64], kernel: 5 }),
            custom: None,
        };
        assert_eq!(cnn.num_params(), 1_663_370, "McMahan et al. 2017, section 3");
        let layout = cnn.layout();
        let names: Vec<&str> = layout.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["convs.0.weight", "convs.0.bias", "convs.1.weight", "convs.1.bias", "layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]
        );
        assert_eq!(cnn.layout().tensors()[2].shape, vec![64, 32, 5, 5]);
        assert_eq!(cnn.widths(), vec![7 * 7 * 64, 512, 10]);
        assert_eq!(ModelShape::mlp(784, vec![200, 200], 10).num_params(), 199_210, "the 2NN");
        // A convolution's weights are bounded by 1/√(in·k·k), its bias by the same.
        let p = cnn.init_params(1);
        let bound = 1.0 / ((32 * 25) as f32).sqrt();
        assert!(p.tensor_values(2).iter().chain(p.tensor_values(3)).all(|v| v.abs() <= bound));
        assert!(p.tensor_values(2).iter().any(|v| v.abs() > 0.5 * bound));
    }

    #[test]
    fn init_is_seeded_and_bounded() {
        let s = ModelShape { inputs: 4, hidden: vec![8], outputs: 1, conv: None, custom: None };
        assert_eq!(s.init_params(1).hash(), s.init_params(1).hash());
        assert_ne!(s.init_params(1).hash(), s.init_params(2).hash());
        let p = s.init_params(3);
        assert!(p.tensor_values(0).iter().all(|v| v.abs() <= 0.5));
        assert!(p.tensor_values(3).iter().all(|v| v.abs() <= 1.0 / 8f32.sqrt()));
    }
}
