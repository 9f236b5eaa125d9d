//! A custom model's initial parameters on disk: how the stock coordinator (`serve
//! --init-model FILE.safetensors`) starts a model whose code only the sites have. The file is
//! an ordinary safetensors file of f32 tensors named by burn's module paths, in burn's order
//! (recorded in its metadata); the model's own binary writes it with [`write_initial_model`].

use std::collections::HashMap;
use std::path::Path;

use super::net::Net;
use super::shape::ModelShape;
use crate::error::ParamsError;
use crate::model_file::{from_safetensors, to_safetensors};
use crate::params::FlatParams;

/// The largest initial-model file read (checked before it is read).
pub const MAX_INITIAL_MODEL_BYTES: u64 = 4 << 30;

/// The initial parameters of the module `M` for `shape`: its layout from burn, its values
/// from the federation's seeded rule (so that the same seed gives the same model everywhere;
/// see [`super::shape::seeded_init`]), or the module's own initialisation with `own_init`.
pub fn initial_params<M: Net>(shape: &ModelShape, seed: u64, own_init: bool) -> Result<FlatParams, ParamsError> {
    let device = crate::train::Backend::Ndarray.inference();
    let module = M::init(shape, &device)?;
    if own_init {
        return Ok(super::bridge::read_params(&module));
    }
    Ok(super::shape::seeded_init(super::bridge::read_layout(&module), seed))
}

/// Writes `params` as an initial-model file.
pub fn write_initial_model(path: &Path, params: &FlatParams) -> Result<(), ParamsError> {
    let meta = HashMap::from([("flotilla.params_sha256".to_owned(), params.hash())]);
    let bytes = to_safetensors(params, meta)?;
    std::fs::write(path, bytes).map_err(|e| ParamsError::Safetensors(format!("cannot write {}: {e}", path.display())))
}

/// Reads an initial-model file; every refusal names the file. Values must be finite, and a
/// recorded hash must match.
pub fn read_initial_model(path: &Path) -> Result<FlatParams, ParamsError> {
    let err = |m: String| ParamsError::Safetensors(format!("{}: {m}", path.display()));
    let len = std::fs::metadata(path).map_err(|e| err(format!("cannot read it: {e}")))?.len();
    if len > MAX_INITIAL_MODEL_BYTES {
        return Err(err(format!("{len} bytes is more than the {MAX_INITIAL_MODEL_BYTES} an initial model may have")));
    }
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let (params, meta) = from_safetensors(&bytes).map_err(|e| err(e.to_string()))?;
    if params.layout().tensors().is_empty() {
        return Err(err("it holds no tensors".into()));
    }
    if let Some(i) = params.values().iter().position(|v| !v.is_finite()) {
        return Err(err(format!("value {i} of the parameters is {}, not a finite number", params.values()[i])));
    }
    if let Some(recorded) = meta.get("flotilla.params_sha256")
        && *recorded != params.hash()
    {
        return Err(err("the parameters do not hash to the recorded flotilla.params_sha256: the file is damaged".into()));
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{Layout, TensorSpec};

    fn params() -> FlatParams {
        let layout = Layout::new(vec![
            TensorSpec { name: "conv.weight".into(), shape: vec![2, 1, 3, 3] },
            TensorSpec { name: "conv.bias".into(), shape: vec![2] },
            TensorSpec { name: "head.weight".into(), shape: vec![8, 3] },
        ]);
        super::super::shape::seeded_init(layout, 3)
    }

    #[test]
    fn an_initial_model_round_trips_in_its_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("init.safetensors");
        let p = params();
        write_initial_model(&path, &p).unwrap();
        let back = read_initial_model(&path).unwrap();
        assert_eq!(back, p, "names, order (not alphabetical here), shapes and values");
    }

    #[test]
    fn damaged_or_foreign_initial_models_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("init.safetensors");
        write_initial_model(&path, &params()).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        // A value flipped after the header: the recorded hash no longer matches.
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let e = read_initial_model(&path).unwrap_err().to_string();
        assert!(e.contains("init.safetensors") && e.contains("damaged"), "{e}");
        // Not a safetensors file at all.
        std::fs::write(&path, b"PK\x03\x04 a zip file").unwrap();
        assert!(read_initial_model(&path).unwrap_err().to_string().contains("init.safetensors"));
        // A NaN among the values (no recorded hash, as another tool would write it).
        let mut p = params();
        p.values_mut()[4] = f32::NAN;
        std::fs::write(&path, to_safetensors(&p, HashMap::new()).unwrap()).unwrap();
        let e = read_initial_model(&path).unwrap_err().to_string();
        assert!(e.contains("value 4") && e.contains("finite"), "{e}");
        assert!(read_initial_model(&dir.path().join("missing.safetensors")).unwrap_err().to_string().contains("missing.safetensors"));
    }
}
