//! The policy's rules applied to what a coordinator sends: the task at join, the plan before
//! encoding, each piece of work before it runs.

use flotilla_common::Task;
use flotilla_common::task::{DEFAULT_KERNEL, ModelKind};

use super::memory::{checked_params, estimate_bytes};
use super::{RequiredDp, SitePolicy, task_diff};

/// A rule the coordinator's request breaks: the rule's key in the policy file and the value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("rule `{rule}`: {message}")]
pub struct Violation {
    pub rule: &'static str,
    pub message: String,
}

fn refuse(rule: &'static str, message: impl Into<String>) -> Result<(), Violation> {
    Err(Violation { rule, message: message.into() })
}

/// What the site knows of a plan when it checks it.
#[derive(Debug, Clone, Copy)]
pub struct PlanFacts {
    /// Encoded features.
    pub width: u64,
    pub train_rows: u64,
    pub test_rows: u64,
}

impl SitePolicy {
    /// The task, at join and at every rejoin.
    pub fn check_task(&self, task: &Task) -> Result<(), Violation> {
        if let Some(approved) = &self.task.loaded
            && approved != task
        {
            let diff = task_diff(approved, task);
            return refuse("task.approved", format!("the coordinator's task is not the approved one: {}", diff.join("; ")));
        }
        if let Some(fp) = &self.task.fingerprint
            && !fp.eq_ignore_ascii_case(&task.fingerprint())
        {
            return refuse("task.fingerprint", format!("the coordinator's task has fingerprint {}, not the approved {fp}", task.fingerprint()));
        }
        let label = &task.data.label.column;
        if let Some(labels) = &self.columns.labels
            && !labels.contains(label)
        {
            return refuse("columns.labels", format!("the task's label is `{label}`, which is not one this site allows ({})", list(labels)));
        }
        let b = &self.bounds;
        if let Some(strategies) = &b.strategies
            && !strategies.contains(&task.strategy.name)
        {
            return refuse("bounds.strategies", format!("the task's strategy is {}; this site allows {}", task.strategy.name, list(strategies)));
        }
        if let Some(min) = b.min_batch_size
            && task.training.batch_size < min
        {
            return refuse("bounds.min_batch_size", format!("the task's batch size is {}; this site's minimum is {min}", task.training.batch_size));
        }
        self.check_epochs(task.training.local_epochs)?;
        // The hidden layers alone, with one input, already bound the model from below.
        self.check_model(task, 1)?;
        self.check_privacy(task)
    }

    fn check_privacy(&self, task: &Task) -> Result<(), Violation> {
        let p = &self.privacy;
        if p.require == Some(RequiredDp::Record) {
            if task.record_privacy.is_none() {
                return refuse("privacy.require", "this site requires record-level DP (DP-SGD on its rows); the task has none");
            }
        } else {
            self.check_client_dp(task)?;
        }
        if p.require_secure_aggregation && !task.secure_aggregation {
            return refuse("privacy.require_secure_aggregation", "this site requires secure aggregation; the task does not use it");
        }
        Ok(())
    }

    fn check_client_dp(&self, task: &Task) -> Result<(), Violation> {
        let p = &self.privacy;
        let dp = task.privacy.as_ref();
        match (p.require, dp) {
            (Some(RequiredDp::Local), Some(d)) if !d.local => {
                return refuse("privacy.require", "this site requires local DP (it noises its own update); the task announces central DP");
            }
            (Some(RequiredDp::Distributed), Some(d)) if !d.distributed => {
                return refuse(
                    "privacy.require",
                    "this site requires distributed DP (it adds its share of the noise under secure aggregation); the task's DP is not distributed",
                );
            }
            (Some(required), None) => {
                let kind = match required {
                    RequiredDp::Local => "local",
                    RequiredDp::Central => "central",
                    RequiredDp::Any => "local or central",
                    RequiredDp::Record => "record-level",
                    RequiredDp::Distributed => "distributed",
                };
                return refuse("privacy.require", format!("this site requires {kind} differential privacy; the task has none"));
            }
            _ => {}
        }
        if let Some(d) = dp {
            if let Some(min) = p.min_noise_multiplier
                && d.noise_multiplier < min
            {
                return refuse("privacy.min_noise_multiplier", format!("the task's noise multiplier is {}; this site's minimum is {min}", d.noise_multiplier));
            }
            if let Some(max) = p.max_clip_norm
                && d.clip_norm > max
            {
                return refuse("privacy.max_clip_norm", format!("the task's clip norm is {}; this site's maximum is {max}", d.clip_norm));
            }
        } else if p.min_noise_multiplier.is_some() || p.max_clip_norm.is_some() {
            return refuse("privacy.min_noise_multiplier", "this site sets a noise floor; the task has no differential privacy");
        }
        Ok(())
    }

    /// The model a plan of `width` features makes, before anything is allocated for it.
    pub fn check_model(&self, task: &Task, width: u64) -> Result<u64, Violation> {
        let params = model_params(task, width).ok_or_else(|| Violation { rule: "bounds.max_parameters", message: "the model's size overflows".into() })?;
        if let Some(max) = self.bounds.max_parameters
            && params > max
        {
            refuse(
                "bounds.max_parameters",
                format!("the model would have {params} parameters ({width} inputs, hidden {:?}); this site's maximum is {max}", task.model.hidden),
            )?;
        }
        if let Some(max) = self.bounds.max_model_bytes
            && params.saturating_mul(4) > max
        {
            refuse("bounds.max_model_bytes", format!("the model would be {} bytes; this site's maximum is {max}", params.saturating_mul(4)))?;
        }
        Ok(params)
    }

    /// The plan, before the site encodes its data with it.
    pub fn check_plan(&self, task: &Task, facts: PlanFacts) -> Result<(), Violation> {
        let params = self.check_model(task, facts.width)?;
        if let Some(mb) = self.resources.max_memory_mb {
            let need = estimate_bytes(task, params, facts.width, facts.train_rows, facts.test_rows);
            if need > mb.saturating_mul(1 << 20) {
                refuse(
                    "resources.max_memory_mb",
                    format!(
                        "the task would need about {} MiB here ({} features, {params} parameters); this site's ceiling is {mb} MiB",
                        need >> 20,
                        facts.width
                    ),
                )?;
            }
        }
        Ok(())
    }

    /// The local epochs a piece of work asks for.
    pub fn check_epochs(&self, epochs: u32) -> Result<(), Violation> {
        match self.bounds.max_local_epochs {
            Some(max) if epochs > max => refuse("bounds.max_local_epochs", format!("{epochs} local epochs asked; this site's maximum is {max}")),
            _ => Ok(()),
        }
    }

    /// Whether the site may train one more round of this task, having trained `trained`.
    pub fn check_rounds(&self, trained: u64) -> Result<(), Violation> {
        match self.bounds.max_rounds {
            Some(max) if trained >= max => {
                refuse("bounds.max_rounds", format!("this site already trained {trained} rounds of this task; its maximum is {max}"))
            }
            _ => Ok(()),
        }
    }
}

/// Parameters of the task's model with `width` inputs (an image task's input is its image,
/// whatever the plan's width), `None` past `u64`.
pub fn model_params(task: &Task, width: u64) -> Option<u64> {
    if task.model.kind == ModelKind::Custom {
        // The coordinator's announced layout (checked against the site's own module later);
        // its sizes come from the network, so every product is checked.
        let tensors = task.model.layout.as_ref()?;
        return tensors.iter().try_fold(0u64, |sum, t| sum.checked_add(t.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64))?));
    }
    let classes = task.data.label.num_classes() as u64;
    let (convolutions, first) = match (&task.data.images, task.model.kind) {
        (Some(image), ModelKind::Cnn) => {
            let k = task.model.kernel.unwrap_or(DEFAULT_KERNEL) as u64;
            let (mut channels, mut params) = (image.channels as u64, 0u64);
            for &f in &task.model.filters {
                let f = f as u64;
                params = params.checked_add(f.checked_mul(channels.checked_mul(k.checked_mul(k)?)?.checked_add(1)?)?)?;
                channels = f;
            }
            let halvings = u32::try_from(task.model.filters.len()).ok()?;
            let side = |s: usize| (s as u64).checked_shr(halvings).unwrap_or(0);
            (params, channels.checked_mul(side(image.height))?.checked_mul(side(image.width))?)
        }
        (Some(image), _) => (0, image.values() as u64),
        (None, _) => (0, width),
    };
    let mut widths = vec![first];
    widths.extend(task.model.hidden.iter().map(|&h| h as u64));
    widths.push(if classes == 2 { 1 } else { classes });
    checked_params(&widths)?.checked_add(convolutions)
}

fn list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items.into_iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}
