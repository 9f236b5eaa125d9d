//! The site's own side of every exchange: its policy, its privacy ledger and its audit log.
//!
//! `site.rs` speaks the protocol; before it uses anything the coordinator sent, it asks the
//! guard, and after anything left the site it tells the guard. The guard lives for the whole
//! process (across rejoins), so a task that changes under a running site is caught here.

use std::sync::Arc;

use flotilla_common::Task;
use flotilla_common::data::Plan;
use flotilla_common::privacy::Step;

use crate::error::ClientError;
use crate::policy::{PlanFacts, SitePolicy, Violation, model_params, task_diff};
use crate::state::{AuditEvent, AuditLog, Ledger, StateDir};

/// The policy, the ledger and the audit log of one site process.
#[derive(Debug)]
pub struct Guard {
    site: String,
    policy: Option<Arc<SitePolicy>>,
    budget: Option<(f64, f64)>,
    /// The task accepted at the first join: a rejoin must bring the same.
    accepted: Option<Task>,
    ledger: Ledger,
    state: Option<StateDir>,
    audit: Option<AuditLog>,
}

/// What left the site in a round, for its audit log.
#[derive(Debug, Clone)]
pub struct Sent {
    pub round: u32,
    /// The global model it was trained from.
    pub model_hash: String,
    /// SHA-256 of the values sent (empty under secure aggregation).
    pub update_sha256: String,
    pub update_bytes: u64,
    pub examples: u64,
    pub local_epochs: u32,
}

/// How a round is protected, as the site sees it.
fn dp_kind(task: &Task) -> &'static str {
    match (&task.privacy, &task.record_privacy) {
        (Some(dp), Some(_)) if dp.local => "local + record (DP-SGD)",
        (Some(_), Some(_)) => "central (declared) + record (DP-SGD)",
        (Some(dp), None) if dp.local => "local",
        // The site cannot see the coordinator add its noise: declared, not verified.
        (Some(_), None) => "central (declared)",
        (None, Some(_)) => "record (DP-SGD)",
        (None, None) => "none",
    }
}

/// What a round costs the site: the client-level round at rate 1 (the site knows it was
/// selected) and its own DP-SGD steps.
fn round_steps(task: &Task, record: Option<Step>) -> Vec<Step> {
    let mut steps: Vec<Step> = task.privacy.iter().map(|dp| Step { q: 1.0, sigma: dp.noise_multiplier, count: 1 }).collect();
    steps.extend(record);
    steps
}

impl Guard {
    /// Opens the state directory (if any) and loads the ledger from it.
    pub fn open(site: &str, policy: Option<Arc<SitePolicy>>, budget: Option<(f64, f64)>, state_dir: Option<&std::path::Path>) -> Result<Self, ClientError> {
        let budget = match &policy {
            Some(p) => p.budget(budget),
            None => budget,
        };
        let (state, ledger, audit) = match state_dir {
            Some(dir) => {
                let state = StateDir::open(dir)?;
                let ledger = state.load_ledger()?;
                let audit = state.audit()?;
                (Some(state), ledger, Some(audit))
            }
            None => (None, Ledger::default(), None),
        };
        Ok(Self { site: site.to_owned(), policy, budget, accepted: None, ledger, state, audit })
    }

    pub fn policy(&self) -> Option<&SitePolicy> {
        self.policy.as_deref()
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Appends to the audit log (when there is one). A log that cannot be written stops the
    /// site: it must not act without a record.
    pub fn record(&mut self, event: AuditEvent) -> Result<(), ClientError> {
        if let Some(log) = &mut self.audit {
            log.append(event)?;
        }
        Ok(())
    }

    /// A refusal: logged, audited, and the error the site stops with.
    pub fn refuse(&mut self, round: Option<u32>, violation: Violation) -> ClientError {
        tracing::warn!(site = %self.site, round, rule = violation.rule, "refused by the site's policy: {}", violation.message);
        let event = AuditEvent::Refused { round, rule: violation.rule.to_owned(), message: violation.message.clone() };
        if let Err(e) = self.record(event) {
            return e;
        }
        let policy = self.policy.as_ref().map_or_else(|| "built-in rules".to_owned(), |p| p.source.display().to_string());
        ClientError::Policy { site: self.site.clone(), policy, violation }
    }

    /// The task of a join: the same as at the first join, and allowed by the policy.
    pub fn check_task(&mut self, task: &Task) -> Result<(), ClientError> {
        if let Some(first) = &self.accepted
            && first != task
        {
            let diff = task_diff(first, task).join("; ");
            let v =
                Violation { rule: "task (unchanged while the site runs)", message: format!("the coordinator's task changed since this site joined: {diff}") };
            return Err(self.refuse(None, v));
        }
        if let Some(p) = self.policy.clone()
            && let Err(v) = p.check_task(task)
        {
            return Err(self.refuse(None, v));
        }
        self.accepted = Some(task.clone());
        Ok(())
    }

    /// A plan, before the site's data is encoded with it. Without a policy the model still
    /// must fit the protocol's limit: a plan cannot make the site allocate without bound.
    pub fn check_plan(&mut self, task: &Task, plan: &Plan, train_rows: usize, test_rows: usize) -> Result<u64, ClientError> {
        let width = plan.width() as u64;
        let params = match model_params(task, width) {
            Some(n) if n <= flotilla_common::wire::MAX_VALUES => n,
            _ => {
                let v = Violation {
                    rule: "the protocol's model limit",
                    message: format!("the plan's {width} features make a model above {} parameters", flotilla_common::wire::MAX_VALUES),
                };
                return Err(self.refuse(None, v));
            }
        };
        if let Some(p) = self.policy.clone()
            && let Err(v) = p.check_plan(task, PlanFacts { width, train_rows: train_rows as u64, test_rows: test_rows as u64 })
        {
            return Err(self.refuse(None, v));
        }
        Ok(params)
    }

    /// A round to train: its epochs within the policy, the rounds of this task within the
    /// policy, and the site's budget. `Ok(Some(reason))` when the budget is spent (the site
    /// leaves without training).
    /// `record`: the round's DP-SGD steps, when the task asks for record-level DP.
    pub fn check_fit(
        &mut self,
        task: &Task,
        round: u32,
        local_epochs: u32,
        secure_aggregation: bool,
        record: Option<Step>,
    ) -> Result<Option<String>, ClientError> {
        if secure_aggregation != task.secure_aggregation {
            let v = Violation {
                rule: "task.secure_aggregation",
                message: format!("round {round} asks secure aggregation {secure_aggregation}, the task says {}", task.secure_aggregation),
            };
            return Err(self.refuse(Some(round), v));
        }
        if let Some(p) = self.policy.clone() {
            if let Err(v) = p.check_epochs(local_epochs) {
                return Err(self.refuse(Some(round), v));
            }
            if let Err(v) = p.check_rounds(self.ledger.rounds_of(&task.fingerprint())) {
                return Err(self.refuse(Some(round), v));
            }
        }
        let Some((max_eps, delta)) = self.budget else { return Ok(None) };
        let steps = round_steps(task, record);
        if steps.is_empty() {
            let reason = format!("this site requires differential privacy (ε ≤ {max_eps}) and the federation announces none; not training");
            self.record(AuditEvent::Refused { round: Some(round), rule: "privacy.max_epsilon".into(), message: reason.clone() })?;
            return Ok(Some(reason));
        }
        let reason = match self.ledger.epsilon_with_steps(&steps, delta) {
            Ok(e) if e <= max_eps => return Ok(None),
            Ok(e) => format!(
                "privacy budget: round {round} would bring this site to ε = {e:.3} (δ = {delta:e}, {}, {} rounds spent before), above its limit {max_eps}; stopping",
                dp_kind(task),
                self.ledger.rounds()
            ),
            Err(e) => format!("privacy budget: {e}; not training"),
        };
        self.record(AuditEvent::Refused { round: Some(round), rule: "privacy.max_epsilon".into(), message: reason.clone() })?;
        Ok(Some(reason))
    }

    /// Writes the round down (durably, with a state directory) before its update leaves the
    /// site: a crash in between can only over-count.
    pub fn spend(&mut self, task: &Task, record: Option<Step>) -> Result<(), ClientError> {
        let fingerprint = task.fingerprint();
        match (task.privacy, record) {
            (Some(dp), _) => self.ledger.record(&fingerprint, Some(dp.noise_multiplier)),
            (None, Some(_)) => self.ledger.record_round(&fingerprint),
            (None, None) => self.ledger.record(&fingerprint, None),
        }
        if let Some(s) = record {
            self.ledger.record_sgd(s.q, s.sigma, s.count);
        }
        if let Some(state) = &self.state {
            state.save_ledger(&self.ledger)?;
        }
        Ok(())
    }

    /// The site's ε after everything it spent, at its budget's δ (or the task's); `None`
    /// when nothing it ran was private.
    pub fn epsilon(&self, task: &Task) -> Option<f64> {
        let delta = self.budget.map_or_else(|| task.record_privacy.map(|r| r.delta).or(task.privacy.map(|p| p.delta)).unwrap_or(1e-5), |b| b.1);
        let any = task.privacy.is_some() || task.record_privacy.is_some() || self.ledger.plain_rounds > 0;
        self.ledger.epsilon_with(None, delta).ok().filter(|_| any)
    }

    /// The audit record of a round whose update left the site.
    pub fn trained(&mut self, task: &Task, sent: Sent) -> Result<(), ClientError> {
        let dp = dp_kind(task);
        let epsilon = self.epsilon(task);
        self.record(AuditEvent::Trained {
            round: sent.round,
            model_hash: sent.model_hash,
            update_sha256: sent.update_sha256,
            update_bytes: sent.update_bytes,
            examples: sent.examples,
            local_epochs: sent.local_epochs,
            dp: dp.to_owned(),
            epsilon,
            secure_aggregation: task.secure_aggregation,
        })
    }
}
