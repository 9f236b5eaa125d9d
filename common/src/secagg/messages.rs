//! The messages of the secure-aggregation exchange between a site and the coordinator, in
//! domain terms (the wire module converts them).

use super::endorse::Endorsement;
use super::protocol::{PublicKeys, Reveal, Roster, Sealed};

/// What a site sends.
#[derive(Debug, Clone)]
pub enum Step {
    /// The round keys, signed with the site's certificate key when it has one.
    Keys(PublicKeys, Option<Endorsement>),
    Shares(Vec<Sealed>),
    Reveal(Reveal),
    /// Waiting for stage 1 (roster), 2 (inbox) or 3 (survivors).
    Poll(u32),
}

/// What the coordinator answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Roster(Roster),
    Inbox(Vec<Sealed>),
    Survivors(Vec<String>),
    Wait,
    Done(String),
}
