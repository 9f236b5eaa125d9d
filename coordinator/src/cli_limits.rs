//! The flags that bound what the coordinator accepts from sites (README: "What the
//! coordinator accepts"): whatever a site sends, memory stays within these.

use flotilla_common::data::StatsLimits;

use crate::federation::Policy;

/// Limits on sites, their aggregates and their streams.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Most sites connected at once.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub max_sites: usize,
    /// Most feature columns a site may report.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_columns: usize,
    /// Most categories of one column, per site and in the plan (the most frequent are kept).
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_categories: usize,
    /// Most bytes of a column name or a category.
    #[arg(long, default_value_t = 256, value_name = "BYTES")]
    pub max_name_bytes: usize,
    /// Most uploads one site may have open at once (each holds a model-sized buffer).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub max_uploads_per_site: usize,
}

impl LimitArgs {
    /// `policy` with these limits.
    pub fn apply(&self, policy: Policy) -> Policy {
        Policy {
            max_sites: self.max_sites,
            limits: StatsLimits { max_columns: self.max_columns, max_categories: self.max_categories, max_name_bytes: self.max_name_bytes },
            max_uploads_per_site: self.max_uploads_per_site,
            ..policy
        }
    }
}
