//! The coordinator's side of secure aggregation in one training attempt: it routes keys and
//! sealed shares, adds masked inputs into a running sum, and unmasks the sum. It never holds
//! a plain individual update: there is no code path here that could receive one.
//!
//! Stages: `Keys` lasts as long as training (sites advertise keys when their update is ready;
//! the attempt's usual closing rules end it), then `Shares`, `Masked` and `Reveal` each close
//! when every expected site answered, or after a lease without an answer from the missing
//! ones (they count as dropped, which the protocol tolerates up to its threshold).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

pub use flotilla_common::secagg::{Answer, Step};
use flotilla_common::secagg::{Endorsement, PublicKeys, Reveal, Roster, Sealed, Server, majority};
use flotilla_common::train::TrainReport;

use super::rejection::Rejection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Keys,
    Shares,
    Masked,
    Reveal,
    Finished,
}

/// One attempt's secure aggregation.
#[derive(Debug)]
pub struct SecureRound {
    /// Values per masked input: the model's, plus the weight.
    len: usize,
    stage: Stage,
    stage_started: Instant,
    keys: BTreeMap<String, PublicKeys>,
    endorsements: BTreeMap<String, Endorsement>,
    server: Option<Server>,
    roster: Option<Roster>,
    boxes: BTreeMap<String, Vec<Sealed>>,
    inbox: BTreeMap<String, Vec<Sealed>>,
    masked: BTreeSet<String>,
    survivors: Vec<String>,
    reveals: BTreeMap<String, Reveal>,
    /// Sites that left the federation (lease expired) since the exchange began: no stage
    /// waits for them.
    gone: BTreeSet<String>,
    /// Training metrics from the masked uploads' headers.
    pub metrics: BTreeMap<String, TrainReport>,
    result: Option<Result<Vec<u64>, String>>,
}

impl SecureRound {
    pub fn new(len: usize, now: Instant) -> Self {
        Self {
            len,
            stage: Stage::Keys,
            stage_started: now,
            keys: BTreeMap::new(),
            endorsements: BTreeMap::new(),
            server: None,
            roster: None,
            boxes: BTreeMap::new(),
            inbox: BTreeMap::new(),
            masked: BTreeSet::new(),
            survivors: Vec::new(),
            reveals: BTreeMap::new(),
            gone: BTreeSet::new(),
            metrics: BTreeMap::new(),
            result: None,
        }
    }

    /// Values a masked input must have.
    pub fn input_len(&self) -> usize {
        self.len
    }

    /// Still collecting keys (the training part of the attempt).
    pub fn in_keys_stage(&self) -> bool {
        self.stage == Stage::Keys
    }

    pub fn is_finished(&self) -> bool {
        self.stage == Stage::Finished
    }

    /// Sites whose input is in the sum (once known).
    /// The round's threshold, once the roster is fixed.
    pub fn threshold(&self) -> Option<usize> {
        self.roster.as_ref().map(|r| r.threshold)
    }

    pub fn survivors(&self) -> &[String] {
        &self.survivors
    }

    /// The unmasked sum, or why there is none; once.
    pub fn take_result(&mut self) -> Option<Result<Vec<u64>, String>> {
        self.result.take()
    }

    fn fail(&mut self, reason: String) {
        self.stage = Stage::Finished;
        self.result = Some(Err(reason));
        self.server = None;
    }

    fn enter(&mut self, stage: Stage, now: Instant) {
        self.stage = stage;
        self.stage_started = now;
    }

    /// Stage 0: a site's keys (it has trained and is ready to take part).
    /// The endorsement (signature and certificate) is routed to the other sites, which verify
    /// it: the coordinator cannot check what it could forge anyway.
    pub fn add_keys(&mut self, site: &str, keys: PublicKeys, endorsement: Option<Endorsement>) -> Result<(), Rejection> {
        if self.stage != Stage::Keys {
            return Err(Rejection::Closed(format!("secure aggregation: keys of `{site}` arrived after the roster was fixed")));
        }
        if self.keys.contains_key(site) {
            return Err(Rejection::Duplicate(format!("secure aggregation: `{site}` already sent its keys")));
        }
        self.keys.insert(site.to_owned(), keys);
        if let Some(e) = endorsement {
            self.endorsements.insert(site.to_owned(), e);
        }
        Ok(())
    }

    /// Ends stage 0: the roster of the sites that sent keys, with a strict-majority threshold.
    pub fn close_keys(&mut self, now: Instant) {
        let n = self.keys.len();
        let t = majority(n);
        let mut server = Server::new(t, self.len);
        match server.roster(std::mem::take(&mut self.keys)) {
            Ok(mut r) => {
                r.endorsements = std::mem::take(&mut self.endorsements);
                self.roster = Some(r);
                self.server = Some(server);
                self.enter(Stage::Shares, now);
            }
            Err(e) => self.fail(e.to_string()),
        }
    }

    /// A site's step of the exchange; the answer is what it needs next.
    pub fn step(&mut self, site: &str, step: Step) -> Result<Answer, Rejection> {
        if let Some(done) = self.done_for(site) {
            return Ok(done);
        }
        match step {
            Step::Keys(..) => Err(Rejection::InvalidArgument("secure aggregation: keys go through the fit round".into())),
            Step::Shares(boxes) => {
                if self.stage != Stage::Shares {
                    return Err(Rejection::Closed(format!("secure aggregation: the key shares of `{site}` are late")));
                }
                if boxes.iter().any(|b| b.from != site) {
                    return Err(Rejection::InvalidArgument(format!("secure aggregation: `{site}` sent boxes in another site's name")));
                }
                // The first message stands: a second one is refused, never swapped in.
                if self.boxes.contains_key(site) {
                    return Err(Rejection::Duplicate(format!("secure aggregation: `{site}` already sent its key shares")));
                }
                self.boxes.insert(site.to_owned(), boxes);
                Ok(Answer::Wait)
            }
            Step::Reveal(reveal) => {
                if self.stage != Stage::Reveal || !self.survivors.iter().any(|s| s == site) {
                    return Err(Rejection::Closed(format!("secure aggregation: the reveal of `{site}` is not expected now")));
                }
                if self.reveals.contains_key(site) {
                    return Err(Rejection::Duplicate(format!("secure aggregation: `{site}` already revealed")));
                }
                self.reveals.insert(site.to_owned(), Reveal { from: site.to_owned(), ..reveal });
                Ok(Answer::Done("revealed".into()))
            }
            Step::Poll(want) => Ok(self.poll(site, want)),
        }
    }

    /// A finished round, or a site left out of it, is told so.
    fn done_for(&self, site: &str) -> Option<Answer> {
        match self.stage {
            Stage::Finished => Some(Answer::Done(match &self.result {
                Some(Err(e)) => format!("secure aggregation failed: {e}"),
                _ => "secure aggregation complete".into(),
            })),
            Stage::Masked | Stage::Reveal if !self.inbox.contains_key(site) => Some(Answer::Done("left out of this round's secure aggregation".into())),
            Stage::Shares if self.roster.as_ref().is_some_and(|r| !r.members.iter().any(|(m, _)| m == site)) => {
                Some(Answer::Done("not in this round's roster".into()))
            }
            _ => None,
        }
    }

    fn poll(&self, site: &str, want: u32) -> Answer {
        match (want, self.stage) {
            (1, Stage::Shares) => self.roster.clone().map_or(Answer::Wait, Answer::Roster),
            (2, Stage::Masked) => Answer::Inbox(self.inbox.get(site).cloned().unwrap_or_default()),
            (3, Stage::Reveal) => Answer::Survivors(self.survivors.clone()),
            _ => Answer::Wait,
        }
    }

    /// Checks a masked upload's header before its values are read.
    pub fn expect_masked(&self, site: &str, total: u64) -> Result<(), Rejection> {
        if self.stage != Stage::Masked || !self.inbox.contains_key(site) {
            return Err(Rejection::Closed(format!("secure aggregation: a masked input from `{site}` is not expected now")));
        }
        if self.masked.contains(site) {
            return Err(Rejection::Duplicate(format!("secure aggregation: `{site}` already sent its masked input")));
        }
        if total != self.len as u64 {
            return Err(Rejection::InvalidArgument(format!(
                "secure aggregation: the masked input of `{site}` declares {total} values; the round takes {}",
                self.len
            )));
        }
        Ok(())
    }

    /// Stage 2: adds a masked input to the sum; the input itself is dropped here.
    pub fn add_masked(&mut self, site: &str, y: &[u64], metrics: TrainReport) -> Result<(), Rejection> {
        self.expect_masked(site, y.len() as u64)?;
        let server = self.server.as_mut().ok_or_else(|| Rejection::Closed("secure aggregation is over".into()))?;
        server.add_masked(site, y).map_err(|e| Rejection::InvalidArgument(e.to_string()))?;
        self.masked.insert(site.to_owned());
        self.metrics.insert(site.to_owned(), metrics);
        Ok(())
    }

    /// A site left the federation: the stages stop waiting for it.
    pub fn site_gone(&mut self, site: &str) {
        self.gone.insert(site.to_owned());
    }

    /// Whether some of `expected` sites (of which `done` answered) may still answer: counts,
    /// so a request from one of thousands of sites does not walk them all.
    fn waiting(&self, expected: usize, done: usize, is_expected: impl Fn(&str) -> bool, is_done: impl Fn(&str) -> bool) -> bool {
        let gone = self.gone.iter().filter(|g| is_expected(g) && !is_done(g)).count();
        done + gone < expected
    }

    /// Moves to the next stage once every expected site answered or is gone, or a lease after
    /// the stage opened. Returns whether the stage changed.
    pub fn advance(&mut self, now: Instant, patience: Duration) -> bool {
        let timed_out = now.duration_since(self.stage_started) > patience;
        match self.stage {
            Stage::Shares => {
                let roster = self.roster.as_ref();
                let members = roster.map_or(0, |r| r.members.len());
                let in_roster = |s: &str| roster.is_some_and(|r| r.members.binary_search_by(|(m, _)| m.as_str().cmp(s)).is_ok());
                if !timed_out && self.waiting(members, self.boxes.len(), in_roster, |s| self.boxes.contains_key(s)) {
                    return false;
                }
                let boxes = std::mem::take(&mut self.boxes).into_values().collect();
                match self.server.as_mut().map(|s| s.route(boxes)) {
                    Some(Ok(inbox)) => {
                        if let Some(server) = &self.server
                            && !server.incomplete().is_empty()
                        {
                            tracing::warn!(sites = ?server.incomplete(), "secure aggregation: left out of the round for not sealing one key share to every other member");
                        }
                        self.inbox = inbox;
                        self.enter(Stage::Masked, now);
                    }
                    Some(Err(e)) => self.fail(e.to_string()),
                    None => self.fail("no server state".into()),
                }
                true
            }
            Stage::Masked => {
                if !timed_out && self.waiting(self.inbox.len(), self.masked.len(), |s| self.inbox.contains_key(s), |s| self.masked.contains(s)) {
                    return false;
                }
                match self.server.as_ref().map(Server::survivors) {
                    Some(Ok(s)) => {
                        self.survivors = s;
                        self.enter(Stage::Reveal, now);
                    }
                    Some(Err(e)) => self.fail(e.to_string()),
                    None => self.fail("no server state".into()),
                }
                true
            }
            Stage::Reveal => {
                let survivors = &self.survivors; // sorted
                let is_survivor = |s: &str| survivors.binary_search_by(|m| m.as_str().cmp(s)).is_ok();
                if !timed_out && self.waiting(survivors.len(), self.reveals.len(), is_survivor, |s| self.reveals.contains_key(s)) {
                    return false;
                }
                let reveals = std::mem::take(&mut self.reveals).into_values().collect();
                match self.server.take().map(|s| s.unmask(reveals)) {
                    Some(Ok(sum)) => {
                        self.stage = Stage::Finished;
                        self.result = Some(Ok(sum));
                    }
                    Some(Err(e)) => self.fail(e.to_string()),
                    None => self.fail("no server state".into()),
                }
                true
            }
            Stage::Keys | Stage::Finished => false,
        }
    }
}
