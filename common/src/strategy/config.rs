//! Which aggregation rule a federation uses, and its parameters: part of the task (TOML
//! `[strategy]`), overridable on the command line, validated once at start.

use serde::{Deserialize, Serialize};

/// The strategies Flotilla implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyName {
    /// Federated averaging weighted by examples (McMahan et al. 2017).
    #[default]
    Fedavg,
    /// FedAvg with server momentum (Hsu et al. 2019).
    Fedavgm,
    /// FedAvg with a proximal term on the sites (Li et al. 2020).
    Fedprox,
    /// Adaptive server optimisers (Reddi et al. 2021).
    Fedadagrad,
    Fedadam,
    Fedyogi,
    /// SCAFFOLD with control variates, option II (Karimireddy et al. 2020).
    Scaffold,
    /// Coordinate-wise median.
    Median,
    /// β-trimmed mean (Yin et al. 2018).
    TrimmedMean,
    /// Krum and Multi-Krum (Blanchard et al. 2017).
    Krum,
    MultiKrum,
    /// Bulyan (El Mhamdi et al. 2018).
    Bulyan,
}

impl StrategyName {
    /// Every name, as written in configs and on the command line.
    pub const ALL: [StrategyName; 12] = [
        Self::Fedavg,
        Self::Fedavgm,
        Self::Fedprox,
        Self::Fedadagrad,
        Self::Fedadam,
        Self::Fedyogi,
        Self::Scaffold,
        Self::Median,
        Self::TrimmedMean,
        Self::Krum,
        Self::MultiKrum,
        Self::Bulyan,
    ];

    /// The name as written in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fedavg => "fedavg",
            Self::Fedavgm => "fedavgm",
            Self::Fedprox => "fedprox",
            Self::Fedadagrad => "fedadagrad",
            Self::Fedadam => "fedadam",
            Self::Fedyogi => "fedyogi",
            Self::Scaffold => "scaffold",
            Self::Median => "median",
            Self::TrimmedMean => "trimmed-mean",
            Self::Krum => "krum",
            Self::MultiKrum => "multi-krum",
            Self::Bulyan => "bulyan",
        }
    }

    /// The strategy parameters (`StrategyConfig` fields) this rule reads; the others would be
    /// ignored, so a flag that sets one of them is refused. (η, the server learning rate, is
    /// read by every rule.)
    pub fn parameters(self) -> &'static [&'static str] {
        match self {
            Self::Fedavg | Self::Scaffold | Self::Median => &[],
            Self::Fedavgm => &["beta1"],
            Self::Fedprox => &["proximal_mu"],
            Self::Fedadagrad => &["beta1", "tau"],
            Self::Fedadam | Self::Fedyogi => &["beta1", "beta2", "tau"],
            Self::TrimmedMean => &["trim_fraction"],
            Self::Krum | Self::Bulyan => &["byzantine"],
            Self::MultiKrum => &["byzantine", "multi_krum_select"],
        }
    }

    /// The rules that read `parameter` (see [`Self::parameters`]).
    pub fn using(parameter: &str) -> Vec<StrategyName> {
        Self::ALL.into_iter().filter(|n| n.parameters().contains(&parameter)).collect()
    }

    /// True for rules that need every update of the round at once (the robust ones).
    pub fn needs_all_updates(self) -> bool {
        matches!(self, Self::Median | Self::TrimmedMean | Self::Krum | Self::MultiKrum | Self::Bulyan)
    }
}

impl std::str::FromStr for StrategyName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|n| n.as_str() == s)
            .ok_or_else(|| format!("unknown strategy `{s}`; one of: {}", Self::ALL.map(StrategyName::as_str).join(", ")))
    }
}

impl std::fmt::Display for StrategyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A strategy and its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategyConfig {
    #[serde(default)]
    pub name: StrategyName,
    /// FedProx's μ in `(μ/2)‖w − w_global‖²`.
    #[serde(default = "default_mu")]
    pub proximal_mu: f64,
    /// FedAvgM's momentum, and β₁ of the adaptive optimisers.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// β₂ of FedAdam and FedYogi.
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// τ of the adaptive optimisers.
    #[serde(default = "default_tau")]
    pub tau: f64,
    /// β of the trimmed mean: share trimmed from each end.
    #[serde(default = "default_trim")]
    pub trim_fraction: f64,
    /// f: Byzantine sites Krum, Multi-Krum and Bulyan must tolerate.
    #[serde(default = "default_byzantine")]
    pub byzantine: usize,
    /// m: updates Multi-Krum averages (default: n − f).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_krum_select: Option<usize>,
}

fn default_mu() -> f64 {
    0.01
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.99
}
fn default_tau() -> f64 {
    1e-3
}
fn default_trim() -> f64 {
    0.1
}
fn default_byzantine() -> usize {
    1
}

impl Default for StrategyConfig {
    fn default() -> Self {
        Self {
            name: StrategyName::Fedavg,
            proximal_mu: default_mu(),
            beta1: default_beta1(),
            beta2: default_beta2(),
            tau: default_tau(),
            trim_fraction: default_trim(),
            byzantine: default_byzantine(),
            multi_krum_select: None,
        }
    }
}

impl StrategyConfig {
    /// μ the sites use (0 unless the strategy is FedProx).
    pub fn proximal_mu(&self) -> f64 {
        if self.name == StrategyName::Fedprox { self.proximal_mu } else { 0.0 }
    }

    /// Refuses a configuration that cannot work with cohorts of `cohort` sites, at start.
    pub fn validate(&self, cohort: usize) -> Result<(), String> {
        let name = self.name;
        let unit = |v: f64| (0.0..1.0).contains(&v);
        if !(self.proximal_mu.is_finite() && self.proximal_mu >= 0.0) {
            return Err(format!("{name}: proximal-mu must be >= 0"));
        }
        if !(unit(self.beta1) && unit(self.beta2)) {
            return Err(format!("{name}: beta1 and beta2 must be in [0, 1)"));
        }
        if !(self.tau.is_finite() && self.tau > 0.0) {
            return Err(format!("{name}: tau must be positive"));
        }
        let f = self.byzantine;
        match name {
            StrategyName::TrimmedMean if !(0.0..0.5).contains(&self.trim_fraction) => {
                Err(format!("trimmed-mean: trim-fraction must be in [0, 0.5), got {}", self.trim_fraction))
            }
            StrategyName::Krum | StrategyName::MultiKrum if cohort < 2 * f + 3 => {
                Err(format!("{name} with --byzantine {f} needs cohorts of at least 2f + 3 = {} sites; this federation's cohort is {cohort}", 2 * f + 3))
            }
            StrategyName::Bulyan if cohort < 4 * f + 3 => {
                Err(format!("bulyan with --byzantine {f} needs cohorts of at least 4f + 3 = {} sites; this federation's cohort is {cohort}", 4 * f + 3))
            }
            StrategyName::MultiKrum if self.multi_krum_select.is_some_and(|m| m == 0 || m > cohort) => {
                Err(format!("multi-krum: multi-krum-select must be between 1 and the cohort size {cohort}"))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for n in StrategyName::ALL {
            assert_eq!(n.as_str().parse::<StrategyName>().unwrap(), n);
        }
        assert!("fedsgd".parse::<StrategyName>().unwrap_err().contains("one of"));
    }

    #[test]
    fn byzantine_conditions_are_checked_at_start() {
        let krum = StrategyConfig { name: StrategyName::Krum, byzantine: 2, ..Default::default() };
        assert!(krum.validate(7).is_ok());
        assert!(krum.validate(6).unwrap_err().contains("2f + 3 = 7"));
        let bulyan = StrategyConfig { name: StrategyName::Bulyan, byzantine: 2, ..Default::default() };
        assert!(bulyan.validate(10).unwrap_err().contains("4f + 3 = 11"));
        assert!(bulyan.validate(11).is_ok());
        let tm = StrategyConfig { name: StrategyName::TrimmedMean, trim_fraction: 0.5, ..Default::default() };
        assert!(tm.validate(10).is_err());
    }
}
