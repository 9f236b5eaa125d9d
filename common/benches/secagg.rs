//! Secure aggregation at the scale of Bonawitz et al. (CCS 2017, table 3): 500 clients,
//! vectors of 100,000 entries, without dropouts and with 10% of the clients dropping after
//! they shared their keys. Run: `cargo bench -p flotilla-common --bench secagg`
//! (`-- --quick` for 100 clients). Prints a table next to the paper's figures.

use flotilla_common::secagg::in_memory::{Dropout, run_round};
use flotilla_common::secagg::majority;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (n, len) = if quick { (100, 100_000) } else { (500, 100_000) };
    let inputs: Vec<Vec<u64>> = (0..n).map(|i| (0..len).map(|j| (i * 31 + j) as u64).collect()).collect();
    let expected: Vec<u64> = (0..len).map(|j| (0..n).map(|i| (i * 31 + j) as u64).fold(0u64, u64::wrapping_add)).collect();
    println!("| clients | entries | dropouts | per client (s) | server (s) | paper: per client / server (s) |");
    println!("|---|---|---|---|---|---|");
    for (label, dropped, paper) in [("0%", 0, "0.85 / 2.0"), ("10%", n / 10, "0.85 / 62")] {
        let dropouts: Vec<Dropout> = (0..n).map(|i| if i < dropped { Dropout::AfterShares } else { Dropout::Never }).collect();
        let (sum, included, timing) = run_round(&inputs, majority(n).max(n * 2 / 3), &dropouts, 1).expect("round");
        let want: Vec<u64> = if dropped == 0 {
            expected.clone()
        } else {
            (0..len).map(|j| included.iter().map(|&i| (i * 31 + j) as u64).fold(0u64, u64::wrapping_add)).collect()
        };
        assert_eq!(sum, want, "the unmasked sum is exact");
        println!("| {n} | {len} | {label} | {:.3} | {:.2} | {paper} |", timing.clients_seconds / n as f64, timing.server_seconds);
    }
}
