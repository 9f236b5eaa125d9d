//! A held-out test set at the coordinator (`--test-data`, as Flower's `evaluate_fn`): a
//! public or synthetic labelled CSV (or, in an image task, images: MNIST's test set), never a
//! site's data, on which every round's global model is evaluated and written to `holdout.csv`. With the baselines, this is the one place the
//! coordinator instantiates a model (on the writer thread, never in a round's path).

use std::fs::File;
use std::path::{Path, PathBuf};

use flotilla_common::data::images::ImageSet;
use flotilla_common::data::{Dataset, Plan, RawTable, SiteRows};
use flotilla_common::model::ModelShape;
use flotilla_common::train::{Backend, Evaluation, evaluate};
use flotilla_common::{FlatParams, Task};

/// Held-out examples as read: a table, or images.
#[derive(Debug)]
enum Examples {
    Table(RawTable),
    Images(ImageSet),
}

impl Examples {
    /// Reads `data` as the task's kind of input; a table is cleaned now, so that a bad file
    /// stops the run before it starts.
    fn read(data: &Path, task: &Task) -> Result<Self, String> {
        match task.data.images {
            Some(spec) => ImageSet::read(data, spec, task.data.label.classes.as_deref().unwrap_or_default())
                .map(Examples::Images)
                .map_err(|e| format!("--test-data: {e}")),
            None => {
                let table = RawTable::read(data).map_err(|e| e.to_string())?;
                SiteRows::from_table(&table, &task.data).map_err(|e| format!("--test-data: {e}"))?;
                Ok(Examples::Table(table))
            }
        }
    }

    /// The examples encoded with the plan, and the model shape they feed.
    fn encode(&self, task: &Task, plan: &Plan) -> Result<(Dataset, ModelShape), String> {
        let data = match self {
            Examples::Table(table) => flotilla_common::predict::encode_labelled(table, task, plan).map_err(|e| e.to_string())?,
            Examples::Images(images) => {
                let all: Vec<usize> = (0..images.len()).collect();
                images.encode(plan, &all, task.data.label.num_classes()).map_err(|e| e.to_string())?
            }
        };
        Ok((data, ModelShape::for_task(task, plan.width())))
    }
}

/// `summary.json`'s `holdout`: the held-out metrics of a finished run's kept model.
pub fn summary_of_kept(data: &Path, task: &Task, plan: &Plan, model: &FlatParams) -> Result<serde_json::Value, String> {
    let (rows, shape) = Examples::read(data, task)?.encode(task, plan)?;
    let e = evaluate(model, &shape, &rows, Backend::Ndarray).map_err(|e| e.to_string())?;
    let mut v = e.metrics_json();
    v["file"] = serde_json::json!(data.display().to_string());
    Ok(v)
}

/// The held-out rows, encoded once the federation's plan exists.
#[derive(Debug)]
pub struct Holdout {
    examples: Examples,
    task: Task,
    encoded: Option<(Dataset, ModelShape)>,
    csv: csv::Writer<File>,
    path: PathBuf,
}

impl Holdout {
    /// Reads and cleans the file now (so a bad file stops the run before it starts) and
    /// starts `holdout.csv` in `dir`.
    pub fn open(data: &Path, task: &Task, dir: &Path) -> Result<Self, String> {
        let examples = Examples::read(data, task)?;
        let path = dir.join("holdout.csv");
        let mut csv = csv::Writer::from_path(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut header = vec!["round", "examples"];
        header.extend(Evaluation::METRIC_HEADER);
        csv.write_record(header).map_err(|e| e.to_string())?;
        csv.flush().map_err(|e| e.to_string())?;
        Ok(Self { examples, task: task.clone(), encoded: None, csv, path })
    }

    /// Encodes the rows with the federation's plan.
    pub fn plan_ready(&mut self, plan: &Plan) -> Result<(), String> {
        self.encoded = Some(self.examples.encode(&self.task, plan)?);
        Ok(())
    }

    /// Evaluates a round's model and appends it to `holdout.csv` (nothing before the plan).
    pub fn record(&mut self, round: u32, model: &FlatParams) -> Result<Option<Evaluation>, String> {
        let Some(e) = self.evaluate(model)? else { return Ok(None) };
        let mut record = vec![round.to_string(), e.examples.to_string()];
        record.extend(e.metric_fields());
        self.csv.write_record(record).and_then(|()| self.csv.flush().map_err(csv::Error::from)).map_err(|err| format!("{}: {err}", self.path.display()))?;
        Ok(Some(e))
    }

    /// The held-out metrics of `model`, once the plan is known.
    pub fn evaluate(&self, model: &FlatParams) -> Result<Option<Evaluation>, String> {
        match &self.encoded {
            Some((data, shape)) => evaluate(model, shape, data, Backend::Ndarray).map(Some).map_err(|e| e.to_string()),
            None => Ok(None),
        }
    }
}
