//! Starting a federation of a custom model (`[model] kind = "custom"`) whose code only the
//! sites have: its layout and initial values come from a file (`serve --init-model`), and the
//! task the sites receive names both, so that every site checks its own module against them
//! and a resume cannot start over from other values.

use std::path::Path;

use flotilla_common::model::initial::read_initial_model;
use flotilla_common::task::ModelKind;
use flotilla_common::{FlatParams, Task};

/// Reads the initial model at `path` into `task`: its layout becomes `model.layout` (or must
/// equal the one the task already gives), its hash `model.initial`.
pub fn take_initial(task: &mut Task, path: &Path) -> Result<FlatParams, String> {
    if task.model.kind != ModelKind::Custom {
        return Err(format!(
            "--init-model {} starts a custom model; the task's model is kind = \"{}\" (set [model] kind = \"custom\" and name = \"…\")",
            path.display(),
            format!("{:?}", task.model.kind).to_lowercase()
        ));
    }
    let params = read_initial_model(path).map_err(|e| format!("--init-model {e}"))?;
    let layout = params.layout().tensors().to_vec();
    if let Some(given) = &task.model.layout
        && *given != layout
    {
        let diff = flotilla_common::model::registry::describe_difference(&flotilla_common::Layout::new(given.clone()), params.layout()).unwrap_or_default();
        return Err(format!("--init-model {}: its layout is not the task's model.layout: {diff}", path.display()));
    }
    task.model.layout = Some(layout);
    task.model.initial = Some(params.hash());
    task.validate().map_err(|e| format!("--init-model {}: {e}", path.display()))?;
    Ok(params)
}

/// Refuses what a coordinator cannot do for a custom model: start without its layout, or score
/// a held-out set without its code (which this process has only if it registered the module).
pub fn check_servable(task: &Task, holdout: bool) -> Result<(), String> {
    task.custom_layout().map_err(|e| e.to_string())?;
    if let (ModelKind::Custom, true) = (task.model.kind, holdout) {
        let name = task.model.name.as_deref().unwrap_or_default();
        flotilla_common::model::registry::lookup(name).map_err(|_| {
            format!("--test-data: the coordinator scores a held-out set with the model's code, and the custom model `{name}` is known only to its sites")
        })?;
    }
    Ok(())
}
