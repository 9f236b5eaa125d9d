//! Time: leases that expire, training attempts abandoned at their deadline, late sites.

use super::*;

impl Federation {
    /// Expires leases and deadlines.
    pub fn tick(&mut self, now: Instant) -> Vec<Event> {
        let lease = self.policy.lease;
        let expired: Vec<String> = self.clients.iter().filter(|(_, c)| now.duration_since(c.last_seen) > lease).map(|(id, _)| id.clone()).collect();
        let mut events = Vec::new();
        for id in expired {
            if let Some(c) = self.clients.remove(&id) {
                events.extend(self.forget_site(&c.site, &format!("no contact for {:.1} s (lease expired)", lease.as_secs_f64())));
            }
        }
        let deadline = self.policy.round_timeout;
        // A training attempt without enough updates by the deadline is abandoned and retried
        // with a fresh cohort, so a round never hangs on sites that are gone.
        if let Phase::Fit(f) = &self.phase
            && now.duration_since(f.started) > deadline
            && f.contributors.len() < self.policy.min_fit_results
            && f.attempt < MAX_ATTEMPTS
        {
            let (round, attempt) = (f.round, f.attempt);
            events.push(Event::Abandoned { round, attempt, updates: f.contributors.len() });
            events.extend(self.open_fit_attempt(round, attempt + 1, now));
            return events;
        }
        let timed_out = match &mut self.phase {
            Phase::Fit(f) if now.duration_since(f.started) > deadline => std::mem::take(&mut f.pending),
            Phase::Evaluate(e) if now.duration_since(e.started) > deadline => std::mem::take(&mut e.pending),
            _ => BTreeSet::new(),
        };
        let round = self.round();
        for site in timed_out {
            if let Phase::Fit(f) = &mut self.phase {
                f.failed.insert(site.clone());
            }
            events.push(Event::Dropped { site, round, reason: "round deadline passed".into() });
        }
        events.extend(self.advance(now));
        events
    }
}
