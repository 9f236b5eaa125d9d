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
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| ParamsError::Safetensors(e.to_string()))?;
    Ok(canonical_header(bytes))
}

/// The same file with its JSON header's keys sorted: safetensors writes its metadata map in
/// hash order, so the same model would otherwise give a different file (and file hash) each
/// time. The sorted header has the same length and is padded the same way.
fn canonical_header(mut bytes: Vec<u8>) -> Vec<u8> {
    let Some(len) = bytes.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).and_then(|n| usize::try_from(n).ok()) else { return bytes };
    let Some(header) = bytes.get(8..8 + len) else { return bytes };
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(header) else { return bytes };
    value.sort_all_objects();
    let Ok(sorted) = serde_json::to_vec(&value) else { return bytes };
    if sorted.len() > len {
        return bytes;
    }
    let end = 8 + len;
    bytes[8..8 + sorted.len()].copy_from_slice(&sorted);
    bytes[8 + sorted.len()..end].fill(b' ');
    bytes
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
    // Every tensor once: a file whose order leaves one out or names one twice is not a model.
    if order.len() != st.len() || order.iter().collect::<std::collections::BTreeSet<_>>().len() != order.len() {
        return Err(ParamsError::Safetensors(format!("the file holds {} tensors, and its recorded order names {} (or repeats one)", st.len(), order.len())));
    }
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

/// What a model file says about itself, so that it can be used without the run that made it:
/// the task (label, columns, model) and the preprocessing plan (means, deviations,
/// vocabularies), as safetensors metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCard {
    pub task: crate::Task,
    pub plan: crate::data::Plan,
    /// The round whose global model this is.
    pub round: u32,
}

const META_TASK: &str = "flotilla.task";
const META_PLAN: &str = "flotilla.plan";
const META_ROUND: &str = "flotilla.round";
const META_PARAMS: &str = "flotilla.params_sha256";

impl ModelCard {
    /// The card as metadata, with the hash of the parameters it describes.
    pub fn metadata(&self, params: &FlatParams) -> HashMap<String, String> {
        HashMap::from([
            (META_TASK.to_owned(), self.task.to_toml()),
            (META_PLAN.to_owned(), serde_json::to_string(&self.plan).unwrap_or_default()),
            (META_ROUND.to_owned(), self.round.to_string()),
            (META_PARAMS.to_owned(), params.hash()),
        ])
    }

    /// Reads a model file's card and parameters; refuses a file without a card, or whose
    /// parameters do not match the model the card describes or the hash it records.
    pub fn read(bytes: &[u8], origin: &str) -> Result<(Self, FlatParams), ParamsError> {
        let (params, meta) = from_safetensors(bytes)?;
        let field = |key: &str| {
            meta.get(key).ok_or_else(|| ParamsError::Safetensors(format!("{origin}: no `{key}` metadata: not a model file written by a Flotilla run")))
        };
        let task = crate::Task::from_toml(field(META_TASK)?, &format!("{origin} (its task)")).map_err(|e| ParamsError::Safetensors(e.to_string()))?;
        let plan: crate::data::Plan = serde_json::from_str(field(META_PLAN)?).map_err(|e| ParamsError::Safetensors(format!("{origin}: its plan: {e}")))?;
        let round = field(META_ROUND)?.parse().map_err(|_| ParamsError::Safetensors(format!("{origin}: its round is not a number")))?;
        if field(META_PARAMS)? != &params.hash() {
            return Err(ParamsError::Safetensors(format!("{origin}: the parameters do not hash to the recorded {META_PARAMS}: the file is damaged")));
        }
        let card = Self { task, plan, round };
        let expected = card.shape().layout();
        if *params.layout() != expected {
            return Err(ParamsError::Safetensors(format!("{origin}: the parameters' layout is not that of the model its task and plan describe")));
        }
        Ok((card, params))
    }

    /// The model's shape: the plan's width in, the task's layers, one output per class
    /// (one for a binary task).
    pub fn shape(&self) -> crate::model::ModelShape {
        crate::model::ModelShape::for_task(&self.task, self.plan.width())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelShape;

    #[test]
    fn a_model_card_is_checked_against_its_parameters() {
        let task = crate::Task::hospitals();
        let plan = crate::data::Plan {
            columns: vec![crate::data::ColumnPlan { name: "age".into(), kind: crate::data::ColumnKind::Numeric { mean: 50.0, std: 9.0 } }],
            target: None,
        };
        let card = ModelCard { task: task.clone(), plan, round: 3 };
        let p = card.shape().init_params(1);
        let bytes = to_safetensors(&p, card.metadata(&p)).unwrap();
        let (back, params) = ModelCard::read(&bytes, "m.safetensors").unwrap();
        assert_eq!((back, params.hash()), (card.clone(), p.hash()));
        // A file without a card, one whose parameters were changed, and one whose card
        // describes another model are refused, naming the file.
        let bare = to_safetensors(&p, HashMap::new()).unwrap();
        assert!(ModelCard::read(&bare, "m.safetensors").unwrap_err().to_string().contains("m.safetensors: no `flotilla.task`"));
        let mut changed = p.clone();
        changed.values_mut()[0] += 1.0;
        let tampered = to_safetensors(&changed, card.metadata(&p)).unwrap();
        assert!(ModelCard::read(&tampered, "m.safetensors").unwrap_err().to_string().contains("damaged"));
        let other = ModelShape { inputs: 2, hidden: vec![64, 32], outputs: 1, conv: None, custom: None }.init_params(1);
        let wrong = to_safetensors(&other, card.metadata(&other)).unwrap();
        assert!(ModelCard::read(&wrong, "m.safetensors").unwrap_err().to_string().contains("layout"));
        let mut bad_plan = card.metadata(&p);
        bad_plan.insert("flotilla.plan".into(), "{".into());
        assert!(ModelCard::read(&to_safetensors(&p, bad_plan).unwrap(), "m.safetensors").unwrap_err().to_string().contains("its plan"));
    }

    #[test]
    fn safetensors_round_trip_keeps_order_and_bits() {
        let p = ModelShape { inputs: 3, hidden: vec![5, 4], outputs: 1, conv: None, custom: None }.init_params(4);
        let bytes = to_safetensors(&p, HashMap::from([("round".into(), "7".into())])).unwrap();
        let (back, meta) = from_safetensors(&bytes).unwrap();
        assert_eq!(back, p);
        assert_eq!(meta["round"], "7");
        assert!(from_safetensors(&bytes[..bytes.len() - 3]).is_err());
        // Many metadata keys still give the same bytes every time.
        let meta: HashMap<String, String> = (0..20).map(|i| (format!("k{i}"), i.to_string())).collect();
        let once = to_safetensors(&p, meta.clone()).unwrap();
        assert!((0..5).all(|_| to_safetensors(&p, meta.clone().into_iter().collect()).unwrap() == once));
        assert_eq!(from_safetensors(&once).unwrap().1["k7"], "7");
    }
}
