//! The strategy of a federation: how a round's updates become the next global model.
//!
//! The math lives in `flotilla_common::strategy` as pure functions; this holds the
//! strategy's state (server optimiser moments) across rounds and picks the rule.

use std::collections::BTreeMap;

use flotilla_common::FlatParams;
use flotilla_common::aggregate::apply_delta;
use flotilla_common::strategy::server_opt::{self, Adaptive, ServerOptConfig};
use flotilla_common::strategy::{StrategyConfig, StrategyName, robust};

/// What a round collected.
#[derive(Debug)]
pub enum Collected<'a> {
    /// The example-weighted mean delta (FedAvg-family strategies stream into it), with the
    /// number of contributors and of eligible sites (SCAFFOLD scales its control by them).
    Mean { mean: FlatParams, contributors: usize, population: usize },
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
    /// SCAFFOLD's server control variate `c`.
    control: Option<FlatParams>,
}

impl Strategy {
    /// A fresh strategy; `server_lr` is η of the task.
    pub fn new(config: StrategyConfig, server_lr: f64) -> Self {
        Self { config, server_lr, m: Vec::new(), v: Vec::new(), control: None }
    }

    /// SCAFFOLD's server control variate for a model of `layout` (zeros before round 1).
    pub fn control(&mut self, layout: &flotilla_common::Layout) -> Option<&FlatParams> {
        if self.config.name != StrategyName::Scaffold {
            return None;
        }
        if self.control.as_ref().is_none_or(|c| c.layout() != layout) {
            self.control = Some(FlatParams::zeros(layout.clone()));
        }
        self.control.as_ref()
    }

    /// The optimiser state to checkpoint: FedAvgM's velocity or the adaptive moments `m`, `v`,
    /// and SCAFFOLD's control `c` (empty for stateless strategies).
    pub fn state(&self) -> Vec<(&'static str, Vec<f64>)> {
        let mut out = Vec::new();
        if !self.m.is_empty() {
            out.push(("strategy.m", self.m.clone()));
        }
        if !self.v.is_empty() {
            out.push(("strategy.v", self.v.clone()));
        }
        if let Some(c) = &self.control {
            out.push(("strategy.control", c.values().iter().map(|&x| f64::from(x)).collect()));
        }
        out
    }

    /// Puts back the state `state` returned (from a snapshot); `model` is the global model's
    /// layout, which SCAFFOLD's control shares.
    pub fn restore(&mut self, state: &[(String, Vec<f64>)], model: &flotilla_common::Layout) -> Result<(), String> {
        for (name, values) in state {
            match name.as_str() {
                "strategy.m" => self.m = values.clone(),
                "strategy.v" => self.v = values.clone(),
                "strategy.control" => {
                    // Saved from f32, so the conversion back is exact.
                    let c = FlatParams::new(model.clone(), values.iter().map(|&x| x as f32).collect())
                        .map_err(|e| format!("the saved SCAFFOLD control does not fit the model: {e}"))?;
                    self.control = Some(c);
                }
                other => return Err(format!("the saved strategy state has an unknown part `{other}`")),
            }
        }
        Ok(())
    }

    /// The layout updates must have: the model's, or `[Δy ; Δc]` for SCAFFOLD.
    pub fn update_layout(&self, model: &flotilla_common::Layout) -> flotilla_common::Layout {
        if self.config.name == StrategyName::Scaffold { model.with_control() } else { model.clone() }
    }

    /// The configuration.
    pub fn config(&self) -> &StrategyConfig {
        &self.config
    }

    /// FedProx accepts updates from sites that did fewer local epochs than asked; the others
    /// drop them, as in the FedProx paper's baselines.
    pub fn accepts_partial_work(&self) -> bool {
        self.config.name == StrategyName::Fedprox
    }

    /// True when the round must keep every update (robust rules).
    pub fn needs_all_updates(&self) -> bool {
        self.config.name.needs_all_updates()
    }

    /// The next global model, or `Err` with the reason to keep the current one.
    pub fn aggregate(&mut self, global: &FlatParams, collected: Collected<'_>) -> Result<FlatParams, String> {
        let c = &self.config;
        let delta = match collected {
            Collected::Mean { mean, contributors, population } if c.name == StrategyName::Scaffold => {
                // x ← x + η·mean(Δy);  c ← c + (|S| / N)·mean(Δc).
                let (dy, dc) = mean.split_control(global.layout()).map_err(|e| e.to_string())?;
                let scale = contributors as f32 / population.max(1) as f32;
                let control = self.control.get_or_insert_with(|| FlatParams::zeros(global.layout().clone()));
                control.values_mut().iter_mut().zip(dc.values()).for_each(|(ci, d)| *ci += scale * d);
                dy
            }
            Collected::Mean { mean, .. } => mean,
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
    fn scaffold_steps_the_model_and_the_control_by_hand() {
        let mut s = Strategy::new(StrategyConfig { name: StrategyName::Scaffold, ..Default::default() }, 1.0);
        let global = params(&[1.0, 2.0]);
        assert_eq!(s.control(global.layout()).unwrap().values(), &[0.0, 0.0]);
        // Mean update [Δy ; Δc] = [0.5, −1 ; 0.2, 0.4] from 2 of 4 sites: x = [1.5, 1], c = ½·[0.2, 0.4].
        let update = params(&[0.5, -1.0]).concat_control(&params(&[0.2, 0.4])).unwrap();
        let next = s.aggregate(&global, Collected::Mean { mean: update, contributors: 2, population: 4 }).unwrap();
        assert_eq!(next.values(), &[1.5, 1.0]);
        assert_eq!(s.control(global.layout()).unwrap().values(), &[0.1, 0.2]);
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
        let mean = |v| Collected::Mean { mean: params(&[v]), contributors: 1, population: 1 };
        let x1 = m.aggregate(&params(&[0.0]), mean(1.0)).unwrap();
        let x2 = m.aggregate(&x1, mean(1.0)).unwrap();
        assert_eq!(x2.values(), &[2.5]); // v = 1 then 1.5
    }
}
