//! The custom models a process knows, by name.
//!
//! A site binary registers its own burn module once ([`register`]) and then runs sites as the
//! stock client does ([`crate::site`], `flotilla_client::run_site`); a task with
//! `[model] kind = "custom"` and that `name` trains it. The coordinator never needs the code:
//! it starts from the model's layout and initial values (`serve --init-model`). The registry
//! is process-wide because a model is code, chosen once per binary, like a CLI's subcommands.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock, RwLock};

use burn::prelude::*;

use super::net::Net;
use super::shape::ModelShape;
use crate::data::Dataset;
use crate::error::{ParamsError, TrainError};
use crate::params::{FlatParams, Layout};
use crate::train::local::{LocalConfig, TrainReport};

/// What the federation does with a registered model, its type erased.
pub trait ModelOps: Send + Sync {
    /// Local training from `global` (see [`crate::train::train_local`]).
    fn train(&self, global: &FlatParams, shape: &ModelShape, data: &Dataset, cfg: &LocalConfig) -> Result<(FlatParams, TrainReport), TrainError>;
    /// Logits `[n, outputs]`, row-major, of the model holding `params`.
    fn logits(&self, params: &FlatParams, shape: &ModelShape, data: &Dataset, device: &Device) -> Result<Vec<f32>, TrainError>;
    /// The layout of the module for `shape` (a fresh one, on the CPU).
    fn layout(&self, shape: &ModelShape) -> Result<Layout, ParamsError>;
}

struct Registered<M>(PhantomData<fn() -> M>);

impl<M: Net + 'static> ModelOps for Registered<M> {
    fn train(&self, global: &FlatParams, shape: &ModelShape, data: &Dataset, cfg: &LocalConfig) -> Result<(FlatParams, TrainReport), TrainError> {
        crate::train::local::train_with::<M>(global, shape, data, cfg)
    }

    fn logits(&self, params: &FlatParams, shape: &ModelShape, data: &Dataset, device: &Device) -> Result<Vec<f32>, TrainError> {
        Ok(crate::train::evaluate::predict_logits(&M::from_params(shape, params, device)?, data, device))
    }

    fn layout(&self, shape: &ModelShape) -> Result<Layout, ParamsError> {
        let device = crate::train::Backend::Ndarray.inference();
        Ok(super::bridge::read_layout(&M::init(shape, &device)?))
    }
}

fn models() -> &'static RwLock<BTreeMap<String, Arc<dyn ModelOps>>> {
    static MODELS: OnceLock<RwLock<BTreeMap<String, Arc<dyn ModelOps>>>> = OnceLock::new();
    MODELS.get_or_init(Default::default)
}

/// Makes the module `M` the custom model `name` of this process (`[model] kind = "custom"`,
/// `name = "…"`). Registering the same name twice is refused, so that two parts of a binary
/// cannot silently train different code under one name.
pub fn register<M: Net + 'static>(name: &str) -> Result<(), ParamsError> {
    let mut models = models().write().map_err(|_| ParamsError::Invalid("the model registry was poisoned by a panic".into()))?;
    if models.contains_key(name) {
        return Err(ParamsError::Invalid(format!("a custom model named `{name}` is already registered in this process")));
    }
    models.insert(name.to_owned(), Arc::new(Registered::<M>(PhantomData)));
    Ok(())
}

/// The registered model `name`, or an error that says which models this process has.
pub fn lookup(name: &str) -> Result<Arc<dyn ModelOps>, TrainError> {
    let models = models().read().map_err(|_| TrainError::CustomModel("the model registry was poisoned by a panic".into()))?;
    models.get(name).cloned().ok_or_else(|| {
        let known: Vec<&str> = models.keys().map(String::as_str).collect();
        TrainError::CustomModel(format!(
            "the federation trains the custom model `{name}`, which this process does not have (it has {}); \
             a site binary registers its module with flotilla_common::model::register",
            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
        ))
    })
}

/// Checks that this process's module `shape.custom.name` has the layout the federation
/// announced; the error names the first tensor that differs.
pub fn check_custom(shape: &ModelShape) -> Result<(), TrainError> {
    let Some(custom) = &shape.custom else { return Ok(()) };
    let mine = lookup(&custom.name)?.layout(shape)?;
    match describe_difference(&custom.layout, &mine) {
        None => Ok(()),
        Some(diff) => Err(TrainError::CustomModel(format!(
            "this site's module `{}` for {} inputs and {} outputs does not have the federation's layout: {diff}",
            custom.name, shape.inputs, shape.outputs
        ))),
    }
}

/// The first difference between two layouts, in words; `None` when they are the same.
pub fn describe_difference(federation: &Layout, mine: &Layout) -> Option<String> {
    let (a, b) = (federation.tensors(), mine.tensors());
    for (i, (f, m)) in a.iter().zip(b).enumerate() {
        if f != m {
            return Some(format!("tensor {i} is `{}` {:?} in the federation's model and `{}` {:?} here", f.name, f.shape, m.name, m.shape));
        }
    }
    match a.len().cmp(&b.len()) {
        std::cmp::Ordering::Equal => None,
        std::cmp::Ordering::Greater => {
            Some(format!("the federation's model has {} tensors, this one {} (`{}` is missing here)", a.len(), b.len(), a[b.len()].name))
        }
        std::cmp::Ordering::Less => Some(format!("the federation's model has {} tensors, this one {} (`{}` is extra here)", a.len(), b.len(), b[a.len()].name)),
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::{Linear, LinearConfig};

    use super::super::shape::CustomShape;
    use super::*;
    use crate::params::TensorSpec;

    /// One linear layer of `inputs → outputs`.
    #[derive(Module, Debug)]
    struct Probe {
        out: Linear,
    }

    impl Net for Probe {
        fn init(shape: &ModelShape, device: &Device) -> Result<Self, ParamsError> {
            Ok(Self { out: LinearConfig::new(shape.inputs, shape.outputs).init(device) })
        }
        fn forward(&self, x: Tensor<2>) -> Tensor<2> {
            self.out.forward(x)
        }
    }

    fn shape(name: &str, layout: Vec<TensorSpec>) -> ModelShape {
        let custom = CustomShape { name: name.into(), layout: Layout::new(layout), image: None };
        ModelShape { inputs: 3, hidden: Vec::new(), outputs: 2, conv: None, custom: Some(custom) }
    }

    fn spec(name: &str, shape: &[usize]) -> TensorSpec {
        TensorSpec { name: name.into(), shape: shape.to_vec() }
    }

    #[test]
    fn a_registered_module_trains_and_others_are_refused_by_name_and_tensor() {
        register::<Probe>("probe").unwrap();
        assert!(register::<Probe>("probe").unwrap_err().to_string().contains("already registered"));
        let good = shape("probe", vec![spec("out.weight", &[3, 2]), spec("out.bias", &[2])]);
        check_custom(&good).unwrap();

        // The federation announces another layout: the first differing tensor is named.
        let wider = shape("probe", vec![spec("out.weight", &[4, 2]), spec("out.bias", &[2])]);
        let e = check_custom(&wider).unwrap_err().to_string();
        assert!(e.contains("out.weight") && e.contains("[4, 2]") && e.contains("[3, 2]"), "{e}");
        let longer = shape("probe", vec![spec("out.weight", &[3, 2]), spec("out.bias", &[2]), spec("extra.weight", &[2, 2])]);
        assert!(check_custom(&longer).unwrap_err().to_string().contains("`extra.weight` is missing here"));
        let unknown = shape("nobody", good.layout().tensors().to_vec());
        let e = check_custom(&unknown).unwrap_err().to_string();
        assert!(e.contains("`nobody`") && e.contains("probe"), "{e}");

        // Training and evaluation go through the registered module, and FedProx's default
        // distance is zero at the anchor.
        let global = good.init_params(1);
        let data =
            crate::data::Dataset { features: vec![0.5, -1.0, 2.0, 1.0, 0.0, -0.5], n_features: 3, labels: vec![0, 1], num_classes: 2, ..Default::default() };
        let cfg = LocalConfig {
            epochs: 2,
            batch_size: 2,
            learning_rate: 0.1,
            seed: 1,
            proximal_mu: 0.1,
            scaffold_correction: None,
            backend: crate::train::Backend::Ndarray,
            optimizer: crate::train::Optim::Adam,
        };
        let (trained, report) = crate::train::train_local(&global, &good, &data, &cfg).unwrap();
        assert_eq!(trained.layout(), global.layout());
        assert_ne!(trained.hash(), global.hash());
        assert_eq!((report.epochs, report.steps), (2, 2));
        let eval = crate::train::evaluate(&trained, &good, &data, crate::train::Backend::Ndarray).unwrap();
        assert_eq!(eval.examples, 2);
        let device = crate::train::Backend::Ndarray.inference();
        let m = Probe::from_params(&good, &global, &device).unwrap();
        assert_eq!(m.squared_distance(&m.clone()).into_scalar::<f32>(), 0.0);
    }
}
