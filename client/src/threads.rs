//! Capping a site's compute threads (`--threads N`, the policy's `resources.threads`): an
//! edge device shares its cores with other work.
//!
//! Training and evaluation run inside a rayon pool of N threads, so burn-ndarray's parallel
//! operations use at most N (sites of one process that ask for the same N share a pool). The
//! binary also holds its async runtime to N threads and, on Linux, pins the process to N of
//! the CPUs it may use, which bounds the threads no pool controls (matrixmultiply's GEMM
//! keeps up to four of its own for large products). None of this changes a result: the
//! kernels split work by output, never the order of a sum, and a test checks that sites with
//! 1 and 2 threads give the same model bit for bit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The shared pool of `n` compute threads.
pub fn compute_pool(n: usize) -> Result<Arc<rayon::ThreadPool>, rayon::ThreadPoolBuildError> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let mut pools = POOLS.get_or_init(Default::default).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(p) = pools.get(&n) {
        return Ok(p.clone());
    }
    let pool = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(n).thread_name(move |i| format!("flotilla-compute-{n}-{i}")).build()?);
    pools.insert(n, pool.clone());
    Ok(pool)
}

/// Pins the calling thread, and every thread it starts afterwards, to the first `n` of the
/// CPUs it may run on. Call it before any thread exists. Returns the CPUs kept.
#[cfg(target_os = "linux")]
pub fn pin_to_cpus(n: usize) -> Result<Vec<usize>, String> {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    use nix::unistd::Pid;
    let allowed = sched_getaffinity(Pid::from_raw(0)).map_err(|e| format!("reading the CPUs this process may use: {e}"))?;
    let kept: Vec<usize> = (0..CpuSet::count()).filter(|&c| allowed.is_set(c).unwrap_or(false)).take(n).collect();
    let mut set = CpuSet::new();
    for &c in &kept {
        set.set(c).map_err(|e| format!("CPU {c}: {e}"))?;
    }
    sched_setaffinity(Pid::from_raw(0), &set).map_err(|e| format!("pinning to CPUs {kept:?}: {e}"))?;
    Ok(kept)
}

/// Elsewhere the thread pools alone cap the compute.
#[cfg(not(target_os = "linux"))]
pub fn pin_to_cpus(_n: usize) -> Result<Vec<usize>, String> {
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_has_the_threads_asked_and_is_shared() {
        let a = compute_pool(3).unwrap();
        assert_eq!(a.current_num_threads(), 3);
        assert!(Arc::ptr_eq(&a, &compute_pool(3).unwrap()));
        assert_eq!(a.install(rayon::current_num_threads), 3, "work inside the pool sees its size");
    }
}
