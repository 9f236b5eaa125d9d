//! Whether a federation that ran to its end produced a model worth keeping: a run whose
//! rounds never accepted an update, or whose final model no site evaluated, has nothing to
//! show and must not end as a success.

use crate::federation::RoundRecord;

/// Why the final model of `history` is not usable, or `None` when it is: at least one round
/// aggregated an update, and the last round's model was evaluated.
pub fn unusable_model(history: &[RoundRecord]) -> Option<String> {
    let Some(last) = history.last() else {
        return Some("no round closed: there is no model".into());
    };
    if history.len() == 1 {
        return Some("no training round closed: the model is the initial one".into());
    }
    if history.iter().skip(1).all(|r| r.clients == 0) {
        let rejected: usize = history.iter().skip(1).map(|r| r.rejected).sum();
        let declined: usize = history.iter().skip(1).map(|r| r.declined).sum();
        // Every site declining (its training diverged) says the task's learning rate is the
        // likely fault, not the sites.
        let hint = if declined > 0 { format!(", {declined} declined: local training diverged; try a lower learning rate") } else { String::new() };
        return Some(format!(
            "no round accepted an update ({rejected} refused{hint}; see the `rejected`, `declined` and `failed` columns of metrics.csv): \
             the final model is the untrained initial one"
        ));
    }
    if last.evaluated == 0 || !last.loss.is_finite() {
        return Some(format!("no site evaluated the final model (round {}): its quality is unknown", last.round));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(round: u32, clients: usize, evaluated: usize) -> RoundRecord {
        RoundRecord {
            round,
            accuracy: if evaluated > 0 { 0.7 } else { f64::NAN },
            loss: if evaluated > 0 { 0.5 } else { f64::NAN },
            auc: None,
            clients,
            selected: 4,
            failed: 4 - clients,
            declined: 0,
            rejected: 4 - clients,
            attempts: 1,
            evaluated,
            train_loss: None,
            seconds: 0.1,
            epsilon: None,
            clip_norm: None,
            model_hash: String::new(),
            refused: 0,
            record_epsilon: None,
            validation_loss: None,
            regression: None,
        }
    }

    #[test]
    fn a_run_that_never_aggregated_or_never_evaluated_its_last_model_is_not_usable() {
        assert!(unusable_model(&[]).is_some());
        assert!(unusable_model(&[round(0, 0, 4)]).is_some());
        let never = unusable_model(&[round(0, 0, 4), round(1, 0, 4), round(2, 0, 4)]).unwrap_or_default();
        assert!(never.contains("no round accepted an update (8 refused"), "{never}");
        let blind = unusable_model(&[round(0, 0, 4), round(1, 4, 0)]).unwrap_or_default();
        assert!(blind.contains("no site evaluated the final model (round 1)"), "{blind}");
        assert_eq!(unusable_model(&[round(0, 0, 4), round(1, 4, 4), round(2, 0, 4)]), None, "one aggregated round is enough");
    }
}
