//! Secure aggregation inside a round: masked inputs and the exchange's steps.

use super::*;

impl Federation {
    /// A masked input (secure aggregation) for the open round: added to the secure sum.
    pub fn submit_masked(&mut self, claim: &UpdateClaim, values: &[u64], metrics: TrainReport, now: Instant) -> Result<Vec<Event>, Rejection> {
        let claim = UpdateClaim { total: values.len() as u64, masked: true, ..claim.clone() };
        self.begin_update(&claim, now)?;
        let site = self.clients[&claim.client_id].site.clone();
        let Phase::Fit(FitRound { secure: Some(secure), .. }) = &mut self.phase else {
            return Err(Rejection::Closed(format!("training of round {} is not open", claim.round)));
        };
        secure.add_masked(&site, values, metrics)?;
        let mut events = vec![Event::UpdateAccepted { site, round: claim.round }];
        events.extend(self.advance(now));
        Ok(events)
    }

    /// A site's step of the secure-aggregation exchange for `round`.
    pub fn secagg_step(&mut self, client_id: &str, round: u32, step: SecAggStep, now: Instant) -> Result<(Answer, Vec<Event>), Rejection> {
        let site = self.client_mut(client_id, now)?.site.clone();
        match &self.phase {
            Phase::Fit(f) if f.round == round && f.secure.is_some() => {}
            Phase::Fit(f) if f.round == round => {
                return Err(Rejection::InvalidArgument("this federation does not use secure aggregation".into()));
            }
            _ => return Ok((Answer::Done(format!("training of round {round} is over")), Vec::new())),
        }
        if let SecAggStep::Keys(keys, endorsement) = step {
            // Keys mean "my update is ready": the site delivers, as a plain update would.
            self.open_fit(&site, round)?;
            let min = self.policy.min_fit_results;
            if let Phase::Fit(f) = &mut self.phase
                && let Some(secure) = f.secure.as_mut()
            {
                secure.add_keys(&site, keys, endorsement)?;
                f.pending.remove(&site);
                f.contributors.insert(site.clone(), (1, TrainReport::default()));
                if f.contributors.len() >= min && f.min_reached_at.is_none() {
                    f.min_reached_at = Some(now);
                }
            }
            let events = self.advance(now);
            let answer = match &mut self.phase {
                Phase::Fit(FitRound { secure: Some(secure), .. }) => secure.step(&site, SecAggStep::Poll(1))?,
                _ => Answer::Done(format!("training of round {round} is over")),
            };
            return Ok((answer, events));
        }
        let Phase::Fit(FitRound { secure: Some(secure), .. }) = &mut self.phase else { unreachable!("checked above") };
        let answer = secure.step(&site, step)?;
        Ok((answer, self.advance(now)))
    }

    /// The mean delta from an unmasked secure sum (Σ w·Δ, Σ w); with central DP the sites
    /// sent clipped deltas with weight 1, and the noise of the round's `release` is added here,
    /// after unmasking: the same release, so the same noise, as the plain path's.
    ///
    /// The sum is checked before use: its weight must be exactly what the survivors declared
    /// (1 each under DP, their training examples otherwise), and under DP its norm at most
    /// survivors × S. Masks that did not cancel leave values uniform in Z/2^64, which fail
    /// both with overwhelming probability: the round then keeps the model and says why.
    pub(super) fn secure_mean(
        &self,
        sum: &[u64],
        layout: &Layout,
        survivors: &[String],
        release: Option<Release>,
        noise_seed: u64,
        target: usize,
    ) -> Result<FlatParams, String> {
        let (weighted, weight) = flotilla_common::secagg::masking::decode_weighted(sum)?;
        let n = survivors.len();
        let expected = match release {
            Some(_) => n as u64,
            None => survivors.iter().fold(0u64, |a, s| a.saturating_add(self.sites_seen.get(s).copied().unwrap_or(0))),
        };
        if weight != expected {
            return Err(format!(
                "secure aggregation: the unmasked sum carries weight {weight}, not the {expected} its {n} sites declared: \
                 the masks did not cancel (inconsistent inputs or key shares); the model is kept"
            ));
        }
        if let Some(r) = release {
            let norm = weighted.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
            // Under distributed DP the sites' noise is in the sum: allow a few of its deviations.
            let noise = if r.skellam.is_some() { r.noise_std * (2.0 * (weighted.len() as f64).sqrt() + 6.0) } else { 0.0 };
            let bound = n as f64 * r.sensitivity + noise;
            if norm.is_nan() || norm > bound * (1.0 + 1e-3) + 1e-3 {
                return Err(format!(
                    "secure aggregation: the unmasked sum has norm {norm:.4}, above the {bound:.4} that {n} updates clipped to {} can have; the model is kept",
                    r.sensitivity
                ));
            }
        }
        let values = match release {
            // Distributed DP: the noise is already in the sum; only the fixed denominator remains.
            Some(r) if r.skellam.is_some() => weighted.iter().map(|v| (f64::from(*v) / target.max(1) as f64) as f32).collect(),
            Some(r) => noisy_mean(&weighted, r.noise_std, target, noise_seed)?,
            None if weight == 0 => return Err("the secure sum carries no weight".into()),
            None => weighted.iter().map(|v| (f64::from(*v) / weight as f64) as f32).collect(),
        };
        FlatParams::new(layout.clone(), values).map_err(|e| e.to_string())
    }
}
