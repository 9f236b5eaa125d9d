//! The strategy of a federation: how a round's updates become the next global model.
//!
//! The math lives in `flotilla_common::strategy` as pure functions; this holds the
//! strategy's state (server optimiser moments) across rounds and picks the rule.

use std::collections::BTreeMap;

use flotilla_common::aggregate::apply_delta;
use flotilla_common::strategy::server_opt::{self, Adaptive, ServerOptConfig};
use flotilla_common::strategy::{robust, StrategyConfig, StrategyName};
use flotilla_common::FlatParams;

/// What a round collected.
#[derive(Debug)]
pub enum Collected<'a> {
    /// The example-weighted mean delta (FedAvg-family strategies stream into it).
    Mean(FlatParams),
    /// Every update, by site (robust strategies).
    All(&'a BTreeMap<String, (FlatParams, u64)>),
}

/// A strategy with its state.
#[derive(Debug, Clone)]
pub struct Strategy {
    config: StrategyConfig,
    server_lr: f64,
    /// First moment (FedAvgM's velocity, or the adaptive optimisers' m).
    m: Vec<f64>,
    /// Second moment of the adaptive optimisers.
    v: Vec<f64>,
}

impl Strategy {
    /// A fresh strategy; `server_lr` is η of the task.
    pub fn new(config: StrategyConfig, server_lr: f64) -> Self {
        Self { config, server_lr, m: Vec::new(), v: Vec::new() }
    }

    /// The configuration.
    pub fn config(&self) -> &StrategyConfig {
        &self.config
    }

    /// True when the round must keep every update (robust rules).
    pub fn needs_all_updates(&self) -> bool {
        self.config.name.needs_all_updates()
    }

    /// The next global model, or `Err` with the reason to keep the current one.
    pub fn aggregate(&mut self, global: &FlatParams, collected: Collected<'_>) -> Result<FlatParams, String> {
        let c = &self.config;
        let delta = match collected {
            Collected::Mean(mean) => mean,
            Collected::All(updates) => {
                let deltas: Vec<&[f32]> = updates.values().map(|(d, _)| d.values()).collect();
                let values = match c.name {
                    StrategyName::Median => robust::median(&deltas),
                    StrategyName::TrimmedMean => robust::trimmed_mean(&deltas, c.trim_fraction),
                    StrategyName::Krum => robust::krum(&deltas, c.byzantine),
                    StrategyName::MultiKrum => {
                        let m = c.multi_krum_select.unwrap_or(deltas.len().saturating_sub(c.byzantine).max(1));
                        robust::multi_krum(&deltas, c.byzantine, m.min(deltas.len()))
                    }
                    StrategyName::Bulyan => robust::bulyan(&deltas, c.byzantine),
                    other => return Err(format!("{other} does not aggregate a list of updates")),
                }
                .map_err(|e| e.to_string())?;
                FlatParams::new(global.layout().clone(), values).map_err(|e| e.to_string())?
            }
        };
        let opt = ServerOptConfig { lr: self.server_lr, beta1: c.beta1, beta2: c.beta2, tau: c.tau };
        let n = global.values().len();
        let mut x = global.values().to_vec();
        match c.name {
            StrategyName::Fedavgm => {
                self.m.resize(n, 0.0);
                server_opt::momentum_step(&mut x, &mut self.m, delta.values(), &opt);
            }
            StrategyName::Fedadagrad | StrategyName::Fedadam | StrategyName::Fedyogi => {
                if self.v.len() != n {
                    self.m = vec![0.0; n];
                    self.v = server_opt::initial_second_moment(n, &opt);
                }
                let rule = match c.name {
                    StrategyName::Fedadagrad => Adaptive::Adagrad,
                    StrategyName::Fedadam => Adaptive::Adam,
                    _ => Adaptive::Yogi,
                };
                server_opt::adaptive_step(rule, &mut x, &mut self.m, &mut self.v, delta.values(), &opt);
            }
            _ => return apply_delta(global, &delta, self.server_lr as f32).map_err(|e| e.to_string()),
        }
        FlatParams::new(global.layout().clone(), x).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use flotilla_common::{Layout, TensorSpec};

    use super::*;

    fn params(v: &[f32]) -> FlatParams {
        FlatParams::new(Layout::new(vec![TensorSpec { name: "w".into(), shape: vec![v.len()] }]), v.to_vec()).unwrap()
    }

    #[test]
    fn a_robust_rule_with_too_few_updates_keeps_the_model_and_says_why() {
        let config = StrategyConfig { name: StrategyName::Krum, byzantine: 1, ..Default::default() };
        let mut s = Strategy::new(config, 1.0);
        let updates: BTreeMap<String, (FlatParams, u64)> = (0..4).map(|i| (format!("s{i}"), (params(&[i as f32]), 1))).collect();
        let err = s.aggregate(&params(&[0.0]), Collected::All(&updates)).unwrap_err();
        assert!(err.contains("at least 5"), "{err}");
    }

    #[test]
    fn the_median_ignores_an_outlier_and_fedavgm_accumulates_velocity() {
        let mut median = Strategy::new(StrategyConfig { name: StrategyName::Median, ..Default::default() }, 1.0);
        let updates: BTreeMap<String, (FlatParams, u64)> =
            [("a", 1.0), ("b", 2.0), ("c", 1000.0)].into_iter().map(|(s, v)| (s.to_owned(), (params(&[v]), 1))).collect();
        assert_eq!(median.aggregate(&params(&[10.0]), Collected::All(&updates)).unwrap().values(), &[12.0]);

        let mut m = Strategy::new(StrategyConfig { name: StrategyName::Fedavgm, beta1: 0.5, ..Default::default() }, 1.0);
        let x1 = m.aggregate(&params(&[0.0]), Collected::Mean(params(&[1.0]))).unwrap();
        let x2 = m.aggregate(&x1, Collected::Mean(params(&[1.0]))).unwrap();
        assert_eq!(x2.values(), &[2.5]); // v = 1 then 1.5
    }
}
