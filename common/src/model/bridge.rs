//! Flat parameters in and out of any burn module.
//!
//! Reading walks the module with a `ModuleVisitor` in burn's deterministic order; writing
//! maps every float parameter with a `ModuleMapper` through `transform_for_load`, which keeps
//! `require_grad` (a plain `Param::map` would silently stop training). Training builds its
//! MLP straight from the values instead (`Mlp::from_params`, no random init to overwrite);
//! the tests here hold the two paths to the same model.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

use crate::error::ParamsError;
use crate::params::{FlatParams, Layout, TensorSpec};

/// Reads every float parameter of `module` into a flat vector with its layout.
pub fn read_params<M: Module>(module: &M) -> FlatParams {
    let mut reader = Reader::default();
    module.visit(&mut reader);
    let layout = Layout::new(reader.specs);
    // The visitor produced one spec per tensor it read, so lengths agree.
    FlatParams::new(layout, reader.values).unwrap_or_else(|e| unreachable!("{e}"))
}

/// Writes `params` into `module`; the layout must match the module's exactly.
pub fn write_params<M: Module>(module: M, params: &FlatParams) -> Result<M, ParamsError> {
    let expected = read_layout(&module);
    expected.ensure_same(params.layout())?;
    let mut writer = Writer { values: params.values(), offset: 0 };
    Ok(module.map(&mut writer))
}

/// The layout of a module, without copying values out of it.
pub fn read_layout<M: Module>(module: &M) -> Layout {
    let mut reader = Reader { shapes_only: true, ..Default::default() };
    module.visit(&mut reader);
    Layout::new(reader.specs)
}

#[derive(Default)]
struct Reader {
    path: Vec<String>,
    specs: Vec<TensorSpec>,
    values: Vec<f32>,
    shapes_only: bool,
}

impl ModuleVisitor for Reader {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.transform_for_save().val();
        let shape = tensor.dims().to_vec();
        self.specs.push(TensorSpec { name: self.path.join("."), shape });
        if !self.shapes_only {
            // f32 models only; a conversion error would mean another dtype.
            let data = tensor.into_data().convert::<f32>();
            self.values.extend_from_slice(data.as_slice::<f32>().unwrap_or(&[]));
        }
    }
}

struct Writer<'a> {
    values: &'a [f32],
    offset: usize,
}

impl ModuleMapper for Writer<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let current = param.val();
        let dims = current.dims();
        let device = current.device();
        let n: usize = dims.iter().product();
        let slice = self.values[self.offset..self.offset + n].to_vec();
        self.offset += n;
        let tensor = Tensor::<D>::from_data(TensorData::new(slice, dims), &device);
        let id = param.id;
        param.transform_for_load(tensor, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Mlp, ModelShape};

    #[allow(deprecated)] // burn-ndarray is the project's required default backend
    fn device() -> Device {
        Device::ndarray()
    }

    #[test]
    fn layout_from_shape_matches_burn_order() {
        let shape = ModelShape { inputs: 5, hidden: vec![4, 3], outputs: 1, conv: None, custom: None };
        let model = Mlp::new(&shape, &device());
        assert_eq!(read_layout(&model), shape.layout());
    }

    #[test]
    fn write_then_read_is_identity() {
        let shape = ModelShape { inputs: 5, hidden: vec![4], outputs: 2, conv: None, custom: None };
        let params = shape.init_params(9);
        let model = write_params(Mlp::new(&shape, &device()), &params).unwrap();
        assert_eq!(read_params(&model), params);
    }

    #[test]
    fn written_params_still_train() {
        let shape = ModelShape { inputs: 2, hidden: vec![3], outputs: 1, conv: None, custom: None };
        let d = device().autodiff();
        let model = write_params(Mlp::new(&shape, &d), &shape.init_params(1)).unwrap();
        let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0], [1, 2]), &d);
        let grads = model.forward(x).sum().backward();
        let g = burn::optim::GradientsParams::from_grads(grads, &model);
        assert_eq!(g.len(), 4, "every parameter must still require gradients");
    }

    #[test]
    fn a_model_built_from_params_reads_back_the_same_and_trains() {
        let shape = ModelShape { inputs: 3, hidden: vec![4, 2], outputs: 1, conv: None, custom: None };
        let params = shape.init_params(4);
        let d = device().autodiff();
        let model = Mlp::from_params(&shape, &params, &d).unwrap();
        assert_eq!(read_params(&model), params);
        let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, -1.0], [1, 3]), &d);
        let written = write_params(Mlp::new(&shape, &d), &params).unwrap();
        let (a, b) = (model.forward(x.clone()), written.forward(x));
        assert_eq!(a.into_data().as_slice::<f32>().unwrap(), b.into_data().as_slice::<f32>().unwrap());
        let g = burn::optim::GradientsParams::from_grads(
            model.forward(Tensor::from_data(TensorData::new(vec![0.5f32, 0.5, 0.5], [1, 3]), &d)).sum().backward(),
            &model,
        );
        assert_eq!(g.len(), 6, "every parameter must require gradients");
        let other = ModelShape { inputs: 4, hidden: vec![4, 2], outputs: 1, conv: None, custom: None };
        assert!(matches!(Mlp::from_params(&other, &params, &d), Err(ParamsError::LayoutMismatch { .. })));
    }

    #[test]
    fn a_cnn_built_from_params_has_burns_layout_reads_back_and_trains() {
        use crate::model::{Cnn, ConvShape, Net};
        let conv = ConvShape { channels: 2, height: 8, width: 8, filters: vec![3, 4], kernel: 3 };
        let shape = ModelShape { inputs: 128, hidden: vec![6], outputs: 3, conv: Some(conv), custom: None };
        let params = shape.init_params(5);
        let d = device().autodiff();
        let model = Cnn::from_params(&shape, &params, &d).unwrap();
        assert_eq!(read_layout(&model), shape.layout(), "the layout computed without burn is burn's");
        assert_eq!(read_params(&model), params);
        let x = Tensor::<2>::from_data(TensorData::new((0..256).map(|i| (i % 7) as f32 / 7.0).collect::<Vec<f32>>(), [2, 128]), &d);
        let logits = model.forward(x);
        assert_eq!(logits.dims(), [2, 3]);
        let g = burn::optim::GradientsParams::from_grads(logits.sum().backward(), &model);
        assert_eq!(g.len(), 8, "every convolution and layer parameter requires gradients");
        assert!(matches!(Mlp::from_params(&shape, &params, &d), Err(ParamsError::Invalid(_))), "an MLP refuses a CNN's shape");
    }

    #[test]
    fn a_foreign_layout_is_refused() {
        let shape = ModelShape { inputs: 5, hidden: vec![4], outputs: 1, conv: None, custom: None };
        let other = ModelShape { inputs: 6, hidden: vec![4], outputs: 1, conv: None, custom: None };
        let err = write_params(Mlp::new(&shape, &device()), &other.init_params(1)).unwrap_err();
        assert!(matches!(err, ParamsError::LayoutMismatch { .. }));
    }
}
