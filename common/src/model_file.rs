//! Models on disk: safetensors files whose tensor names are burn's module paths, so a model
//! written here loads into the MLP (or into any safetensors reader) as it is.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, TensorView};

use crate::error::ParamsError;
use crate::params::{FlatParams, Layout, TensorSpec, extend_from_le_bytes, f32_to_le_bytes};

/// Serialises a model (tensors in layout order) with string metadata.
pub fn to_safetensors(params: &FlatParams, metadata: HashMap<String, String>) -> Result<Vec<u8>, ParamsError> {
    let bytes: Vec<Vec<u8>> = (0..params.layout().tensors().len()).map(|i| f32_to_le_bytes(params.tensor_values(i))).collect();
    let views = params
        .layout()
        .tensors()
        .iter()
        .zip(&bytes)
        .map(|(t, b)| TensorView::new(Dtype::F32, t.shape.clone(), b).map(|v| (t.name.clone(), v)).map_err(|e| ParamsError::Safetensors(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    // Order is part of the layout; it is recorded so that reading restores it.
    let mut metadata = metadata;
    metadata.insert("flotilla.order".into(), params.layout().tensors().iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(","));
    safetensors::serialize(views, Some(metadata)).map_err(|e| ParamsError::Safetensors(e.to_string()))
}

/// Reads a model written by [`to_safetensors`], with its metadata.
pub fn from_safetensors(bytes: &[u8]) -> Result<(FlatParams, HashMap<String, String>), ParamsError> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| ParamsError::Safetensors(e.to_string()))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| ParamsError::Safetensors(e.to_string()))?;
    let order: Vec<String> = match metadata.get("flotilla.order") {
        Some(o) if !o.is_empty() => o.split(',').map(str::to_owned).collect(),
        _ => {
            let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
            names.sort();
            names
        }
    };
    let mut specs = Vec::with_capacity(order.len());
    let mut values = Vec::new();
    for name in order {
        let t = st.tensor(&name).map_err(|e| ParamsError::Safetensors(format!("tensor `{name}`: {e}")))?;
        if t.dtype() != Dtype::F32 {
            return Err(ParamsError::Safetensors(format!("tensor `{name}` is {:?}, not F32", t.dtype())));
        }
        extend_from_le_bytes(&mut values, t.data())?;
        specs.push(TensorSpec { name, shape: t.shape().to_vec() });
    }
    Ok((FlatParams::new(Layout::new(specs), values)?, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelShape;

    #[test]
    fn safetensors_round_trip_keeps_order_and_bits() {
        let p = ModelShape { inputs: 3, hidden: vec![5, 4], outputs: 1 }.init_params(4);
        let bytes = to_safetensors(&p, HashMap::from([("round".into(), "7".into())])).unwrap();
        let (back, meta) = from_safetensors(&bytes).unwrap();
        assert_eq!(back, p);
        assert_eq!(meta["round"], "7");
        assert!(from_safetensors(&bytes[..bytes.len() - 3]).is_err());
    }
}
