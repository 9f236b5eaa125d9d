//! Using a model a run produced: its file carries the task and the plan
//! ([`ModelCard`]), so new rows are cleaned and encoded exactly as the sites did, then scored.

use std::path::Path;

use crate::data::{ColumnKind, Dataset, RawTable, Row, SiteRows};
use crate::error::{DataError, Location};
use crate::model::ModelShape;
use crate::model_file::ModelCard;
use crate::task::LabelRule;
use crate::train::{Backend, Evaluation};
use crate::{FlatParams, ParamsError, TrainError};

/// Why a model could not be used on a file.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(transparent)]
    Model(#[from] ParamsError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Train(#[from] TrainError),
}

/// A model file, read and checked.
#[derive(Debug, Clone)]
pub struct Model {
    pub card: ModelCard,
    pub params: FlatParams,
    pub shape: ModelShape,
}

/// One row's prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The row's line in its file.
    pub line: u64,
    /// The predicted class index (0 in a regression task).
    pub class: u32,
    /// Binary tasks: the probability of the positive class; multi-class: of `class`;
    /// NaN in a regression task.
    pub probability: f64,
    /// Regression: the predicted label, in its own units.
    pub value: Option<f64>,
}

/// Every row of a labelled table, cleaned under `task` as a site cleans its rows and encoded
/// with `plan`.
pub fn encode_labelled(table: &RawTable, task: &crate::Task, plan: &crate::data::Plan) -> Result<Dataset, DataError> {
    let rows = SiteRows::from_table(table, &task.data)?;
    let all: Vec<usize> = (0..rows.rows.len()).collect();
    plan.encode(&rows, &all, task.data.label.num_classes())
}

impl Model {
    /// Reads a model file written by a run (`model.safetensors`).
    pub fn load(path: &Path) -> Result<Self, PredictError> {
        let bytes = std::fs::read(path).map_err(|source| PredictError::Io { path: path.display().to_string(), source })?;
        let (card, params) = ModelCard::read(&bytes, &path.display().to_string())?;
        let shape = card.shape();
        Ok(Self { card, params, shape })
    }

    /// The name of class `c` as the task spells it.
    pub fn class_name(&self, c: u32) -> String {
        match self.card.task.data.label.rule() {
            Ok(LabelRule::Classes(names)) => names.get(c as usize).cloned().unwrap_or_default(),
            _ if c == 1 => "positive".into(),
            _ => "negative".into(),
        }
    }

    /// Predictions for every row of `table`, which needs the model's feature columns (the label
    /// may be absent); a column missing, or a value a numeric column cannot read, is an
    /// error naming file, line and column.
    pub fn predict(&self, table: &RawTable, backend: Backend) -> Result<Vec<Prediction>, PredictError> {
        if self.card.task.data.images.is_some() {
            return Err(DataError::File { file: table.source.clone(), message: "is a table, and this model classifies images".into() }.into());
        }
        let rows = self.feature_rows(table)?;
        let all: Vec<usize> = (0..rows.rows.len()).collect();
        let data = self.card.plan.encode(&rows, &all, self.card.task.data.label.num_classes())?;
        let logits = crate::train::evaluate::logits(&self.params, &self.shape, &data, backend)?;
        let outputs = self.shape.outputs;
        Ok(rows
            .rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let out = &logits[i * outputs..(i + 1) * outputs];
                if let Some(scale) = data.target_scale {
                    return Prediction { line: r.line, class: 0, probability: f64::NAN, value: Some(scale.restore(f64::from(out[0]))) };
                }
                let (class, probability) = if outputs == 1 {
                    let p = 1.0 / (1.0 + (-f64::from(out[0])).exp());
                    (u32::from(out[0] > 0.0), p)
                } else {
                    let max = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let total: f64 = out.iter().map(|&v| f64::from(v - max).exp()).sum();
                    let (k, _) = out.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap_or((0, &0.0));
                    (k as u32, f64::from(out[k] - max).exp() / total)
                };
                Prediction { line: r.line, class, probability, value: None }
            })
            .collect())
    }

    /// Loss, accuracy and AUC (regression: loss, MAE, RMSE, R²) on a labelled table, cleaned under the task as a site cleans
    /// its rows.
    pub fn evaluate(&self, table: &RawTable, backend: Backend) -> Result<Evaluation, PredictError> {
        let data = self.labelled(table)?;
        Ok(crate::train::evaluate(&self.params, &self.shape, &data, backend)?)
    }

    /// Loss and accuracy of an image model on labelled images, encoded as the sites encoded theirs.
    pub fn evaluate_images(&self, images: &crate::data::images::ImageSet, backend: Backend) -> Result<Evaluation, PredictError> {
        if self.card.task.data.images != Some(images.spec) {
            return Err(
                DataError::File { file: images.source.clone(), message: "holds images of another size, or the model is not an image model".into() }.into()
            );
        }
        let all: Vec<usize> = (0..images.len()).collect();
        let data = images.encode(&self.card.plan, &all, self.card.task.data.label.num_classes())?;
        Ok(crate::train::evaluate(&self.params, &self.shape, &data, backend)?)
    }

    /// A labelled table encoded with the model's plan.
    pub fn labelled(&self, table: &RawTable) -> Result<Dataset, PredictError> {
        if self.card.task.data.images.is_some() {
            return Err(DataError::File { file: table.source.clone(), message: "is a table, and this model classifies images".into() }.into());
        }
        self.check_columns(table)?;
        Ok(encode_labelled(table, &self.card.task, &self.card.plan)?)
    }

    fn check_columns(&self, table: &RawTable) -> Result<(), DataError> {
        let missing: Vec<&str> = self.card.plan.columns.iter().map(|c| c.name.as_str()).filter(|c| table.column_index(c).is_none()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(DataError::File {
            file: table.source.clone(),
            message: format!(
                "the model needs column{} {} that the header lacks (it has: {})",
                if missing.len() == 1 { "" } else { "s" },
                missing.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "),
                table.header.join(", ")
            ),
        })
    }

    /// The plan's feature columns of every row, under the task's spellings of "missing".
    fn feature_rows(&self, table: &RawTable) -> Result<SiteRows, DataError> {
        self.check_columns(table)?;
        let spec = &self.card.task.data;
        let plan = &self.card.plan;
        let index: Vec<usize> = plan.columns.iter().filter_map(|c| table.column_index(&c.name)).collect();
        let mut rows = Vec::with_capacity(table.rows.len());
        for raw in &table.rows {
            let mut values = Vec::with_capacity(index.len());
            for (c, &i) in plan.columns.iter().zip(&index) {
                let v = raw.fields[i].as_str();
                if spec.is_missing(&c.name, v) {
                    values.push(None);
                    continue;
                }
                if matches!(c.kind, ColumnKind::Numeric { .. }) && !v.parse::<f64>().is_ok_and(f64::is_finite) {
                    return Err(DataError::Row {
                        at: Location { file: table.source.clone(), line: raw.line, column: Some(c.name.clone()) },
                        message: "the value is not a number, and the model reads this column as numbers".into(),
                    });
                }
                values.push(Some(v.to_owned()));
            }
            rows.push(Row { line: raw.line, label: 0, target: 0.0, values });
        }
        if rows.is_empty() {
            return Err(DataError::File { file: table.source.clone(), message: "no rows to predict".into() });
        }
        Ok(SiteRows {
            columns: plan.columns.iter().map(|c| c.name.clone()).collect(),
            categorical: plan.columns.iter().map(|c| matches!(c.kind, ColumnKind::Categorical { .. })).collect(),
            rows,
            skipped: Vec::new(),
            identifiers: Vec::new(),
        })
    }
}
