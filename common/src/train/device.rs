//! Which burn CPU backend runs training and evaluation.
//!
//! burn-ndarray is the project's required default. burn 0.22's newer `flex` backend is offered
//! as an option (`--backend flex`): it trains the seed MLP 1.6× and W2's large MLP 2.5× faster
//! (BENCHMARKS.md). Both are compiled in; a site picks one at run time.
//! Models are bit-for-bit reproducible on one backend, not across the two (different kernels).

use std::fmt;
use std::str::FromStr;

use burn::prelude::Device;

/// A CPU backend for the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// burn-ndarray (SIMD, rayon): the default.
    #[default]
    Ndarray,
    /// burn-flex: burn 0.22's newer CPU backend.
    Flex,
}

impl Backend {
    /// Every backend, for help texts and benchmarks.
    pub const ALL: [Backend; 2] = [Backend::Ndarray, Backend::Flex];

    /// The inference device (no autodiff).
    #[allow(deprecated)] // burn 0.22 marks burn-ndarray deprecated in favour of flex; it is our required default
    pub fn inference(self) -> Device {
        match self {
            Backend::Ndarray => Device::ndarray(),
            Backend::Flex => Device::flex(),
        }
    }

    /// The training device (autodiff over the inference device).
    pub fn training(self) -> Device {
        self.inference().autodiff()
    }

    /// Runs `work` (a training or an evaluation) the way this backend is fastest on a site's
    /// small model. burn-ndarray hands each parallel operation to rayon's global pool and
    /// blocks until it is done: on tensors of a few thousand values that hand-off (futex
    /// wake-ups and waits, tens per step) cost more than the arithmetic, and it was a third of
    /// the CPU time of a simulation in the profile. So on ndarray the work runs on a
    /// one-thread rayon pool of this thread's own, where those operations run inline; sites
    /// train in parallel with each other instead. (Its matrix products use their own threads.)
    pub fn run<T: Send>(self, work: impl FnOnce() -> T + Send) -> T {
        thread_local! {
            static ONE_THREAD: Option<rayon::ThreadPool> = rayon::ThreadPoolBuilder::new().num_threads(1).build().ok();
        }
        match self {
            Backend::Ndarray => ONE_THREAD.with(|pool| match pool {
                Some(pool) => pool.install(work),
                None => work(),
            }),
            Backend::Flex => work(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Ndarray => "ndarray",
            Backend::Flex => "flex",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A backend name that is not one of ours.
#[derive(Debug, thiserror::Error)]
#[error("unknown backend `{0}`: expected `ndarray` (the default) or `flex`")]
pub struct UnknownBackend(String);

impl FromStr for Backend {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim().to_ascii_lowercase();
        Backend::ALL.into_iter().find(|b| b.name() == name).ok_or_else(|| UnknownBackend(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for b in Backend::ALL {
            assert_eq!(b.to_string().parse::<Backend>().unwrap(), b);
        }
        assert_eq!("Flex".parse::<Backend>().unwrap(), Backend::Flex);
        let err = "cuda".parse::<Backend>().unwrap_err().to_string();
        assert!(err.contains("`cuda`") && err.contains("ndarray"), "{err}");
        assert_eq!(Backend::default(), Backend::Ndarray);
    }
}
