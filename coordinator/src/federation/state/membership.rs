//! Who is in the federation: joins, reported aggregates, leases kept alive, departures.

use super::*;

#[derive(Debug)]
pub(super) struct Client {
    pub(super) site: String,
    pub(super) last_seen: Instant,
    /// Set once the site reported its aggregates.
    pub(super) stats: Option<SiteStats>,
    /// Training examples the site declared: the most an update may claim.
    pub(super) num_train: u64,
    /// Rows the site declared at join: the most an evaluation may claim.
    pub(super) num_rows: u64,
    /// When this connection joined: a site that never reports its aggregates stops being
    /// waited for after the round deadline.
    pub(super) joined_at: Instant,
}

/// The most rows a site may declare (2^40, about 10^12): sums of counts over any number of
/// sites then stay far inside `u64`.
pub const MAX_SITE_ROWS: u64 = 1 << 40;

impl Federation {
    /// A site joins (or rejoins: a new connection replaces the old one of the same name).
    pub fn join(&mut self, site: &str, columns: &[String], num_rows: u64, now: Instant) -> Result<(Joined, Vec<Event>), Rejection> {
        if site.is_empty() || site.len() > 128 || site.chars().any(char::is_control) {
            let shown: String = site.chars().filter(|c| !c.is_control()).take(40).collect();
            return Err(Rejection::InvalidArgument(format!("site name `{shown}` is empty, longer than 128 bytes or has control characters")));
        }
        if let Some(allowed) = &self.policy.allowed_sites
            && !allowed.contains(site)
        {
            return Err(Rejection::Forbidden(format!("site `{site}` is not on this federation's allow list")));
        }
        // A table names its label column; images carry their labels in their files.
        let label = &self.task.data.label.column;
        if self.task.data.images.is_none() && !columns.contains(label) {
            return Err(Rejection::InvalidArgument(format!("site `{site}`: its data has no column `{label}` (the label)")));
        }
        if num_rows == 0 || num_rows > MAX_SITE_ROWS {
            return Err(Rejection::InvalidArgument(format!("site `{site}` declares {num_rows} rows; a site needs 1 to {MAX_SITE_ROWS}")));
        }
        let rejoining = self.clients.values().any(|c| c.site == site);
        if !rejoining && self.clients.len() >= self.policy.max_sites {
            return Err(Rejection::Exhausted(format!(
                "site `{site}`: the federation already has {} sites connected, its limit (--max-sites)",
                self.clients.len()
            )));
        }
        self.clients.retain(|_, c| c.site != site);
        let client_id = format!("{site}#{}", self.next_client);
        self.next_client += 1;
        self.clients.insert(client_id.clone(), Client { site: site.to_owned(), last_seen: now, stats: None, num_train: 0, num_rows, joined_at: now });
        let joined = Joined { client_id: client_id.clone(), task_toml: self.task_toml.clone(), seed: self.seed };
        Ok((joined, vec![Event::Joined { site: site.to_owned(), client_id }]))
    }

    /// A site's aggregates and number of training examples, once per connection. The number
    /// of training examples bounds the weight of every update the site sends, so it is fixed
    /// by the site's first report: a rejoining site must declare the same.
    pub fn report_stats(&mut self, client_id: &str, stats: SiteStats, num_train: u64, now: Instant) -> Result<Vec<Event>, Rejection> {
        let limits = self.policy.limits;
        let c = self.client_mut(client_id, now)?;
        let site = c.site.clone();
        if c.stats.is_some() {
            return Err(Rejection::Duplicate(format!("site `{site}` already reported its aggregates on this connection")));
        }
        if num_train == 0 || num_train > c.num_rows {
            return Err(Rejection::InvalidArgument(format!(
                "site `{site}` declares {num_train} training examples; it needs at least one and at most the {} rows it declared at join",
                c.num_rows
            )));
        }
        if stats.columns.is_empty() {
            return Err(Rejection::InvalidArgument(format!("site `{site}` must report at least one feature column")));
        }
        stats.validate(num_train, &limits).map_err(|why| Rejection::InvalidArgument(format!("aggregates of site `{site}`: {why}")))?;
        if let Some(spec) = &self.task.data.images {
            flotilla_common::data::images::validate_image_stats(&stats, spec)
                .map_err(|why| Rejection::InvalidArgument(format!("aggregates of site `{site}`: {why}")))?;
        }
        if stats.label_values.is_some() != self.task.data.label.is_regression() {
            return Err(Rejection::InvalidArgument(format!(
                "aggregates of site `{site}`: the label's values are reported for a regression task, and only for one"
            )));
        }
        if !self.sites_seen.contains_key(&site) && self.sites_seen.len() >= self.policy.max_sites {
            return Err(Rejection::Exhausted(format!(
                "site `{site}`: {} sites have taken part already, the federation's limit (--max-sites)",
                self.sites_seen.len()
            )));
        }
        if let Some(&first) = self.sites_seen.get(&site)
            && first != num_train
        {
            return Err(Rejection::InvalidArgument(format!(
                "site `{site}` declared {first} training examples when it first reported and now declares {num_train}; \
                 a site's weight cannot change during a run"
            )));
        }
        let c = self.client_mut(client_id, now)?;
        c.stats = Some(stats);
        c.num_train = num_train;
        self.sites_seen.insert(site, num_train);
        Ok(self.advance(now))
    }

    /// Marks a site as alive (any request does).
    pub fn touch(&mut self, client_id: &str, now: Instant) -> Result<(), Rejection> {
        self.client_mut(client_id, now).map(|_| ())
    }

    /// A site leaves; it is treated as failed in the current round.
    pub fn leave(&mut self, client_id: &str, now: Instant) -> Vec<Event> {
        match self.clients.remove(client_id) {
            Some(c) => {
                let mut ev = self.forget_site(&c.site, "left the federation");
                ev.extend(self.advance(now));
                ev
            }
            None => Vec::new(),
        }
    }

    pub(super) fn client_mut(&mut self, client_id: &str, now: Instant) -> Result<&mut Client, Rejection> {
        let c = self
            .clients
            .get_mut(client_id)
            .ok_or_else(|| Rejection::UnknownClient(format!("client `{client_id}` is unknown or its lease expired; join again")))?;
        c.last_seen = now;
        Ok(c)
    }

    pub(super) fn forget_site(&mut self, site: &str, reason: &str) -> Vec<Event> {
        if self.clients.values().any(|c| c.site == site) {
            return Vec::new(); // the site rejoined under a new connection and keeps its role
        }
        let round = self.round();
        let was_pending = match &mut self.phase {
            Phase::Fit(f) => {
                if let Some(secure) = f.secure.as_mut() {
                    secure.site_gone(site);
                }
                f.fail(site)
            }
            Phase::Evaluate(e) => e.pending.remove(site),
            _ => false,
        };
        if was_pending { vec![Event::Dropped { site: site.to_owned(), round, reason: reason.to_owned() }] } else { vec![Event::Left { site: site.to_owned() }] }
    }

    pub(super) fn eligible_sites(&self) -> Vec<String> {
        self.clients.values().filter(|c| c.stats.is_some()).map(|c| c.site.clone()).collect::<BTreeSet<_>>().into_iter().collect()
    }
}

/// The site a client id was issued to (ids are `<site>#<n>`), to check it against the
/// caller's certificate.
pub fn site_of_client_id(client_id: &str) -> Option<&str> {
    client_id.rsplit_once('#').map(|(site, _)| site)
}
