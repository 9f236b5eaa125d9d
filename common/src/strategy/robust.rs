//! Byzantine-robust aggregation of deltas (unweighted, as in the papers).
//!
//! Inputs are the cohort's deltas in a fixed order (sorted by site), so ties resolve the same
//! way on every run. Each function checks its own precondition and says what it needs.

/// Why a robust rule cannot run on this cohort.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RobustError {
    #[error("{rule} needs at least {needed} updates to tolerate {f} Byzantine sites, got {got}")]
    TooFew { rule: &'static str, needed: usize, f: usize, got: usize },
    #[error("updates have different lengths")]
    Ragged,
    #[error("{0}")]
    Invalid(String),
}

fn check(deltas: &[&[f32]]) -> Result<usize, RobustError> {
    let len = deltas.first().map_or(0, |d| d.len());
    if deltas.iter().any(|d| d.len() != len) {
        return Err(RobustError::Ragged);
    }
    Ok(len)
}

/// Coordinate-wise median (the mean of the two middle values for an even count).
pub fn median(deltas: &[&[f32]]) -> Result<Vec<f32>, RobustError> {
    let len = check(deltas)?;
    if deltas.is_empty() {
        return Err(RobustError::TooFew { rule: "median", needed: 1, f: 0, got: 0 });
    }
    let n = deltas.len();
    let mut column = vec![0f32; n];
    Ok((0..len)
        .map(|j| {
            for (c, d) in column.iter_mut().zip(deltas) {
                *c = d[j];
            }
            column.sort_by(f32::total_cmp);
            if n % 2 == 1 { column[n / 2] } else { ((f64::from(column[n / 2 - 1]) + f64::from(column[n / 2])) / 2.0) as f32 }
        })
        .collect())
}

/// Number of values trimmed from each end by the β-trimmed mean.
pub fn trim_count(n: usize, beta: f64) -> usize {
    (beta * n as f64).floor() as usize
}

/// β-trimmed mean (Yin et al. 2018): per coordinate, drop the ⌊βn⌋ largest and smallest values
/// and average the rest.
pub fn trimmed_mean(deltas: &[&[f32]], beta: f64) -> Result<Vec<f32>, RobustError> {
    let len = check(deltas)?;
    if !(0.0..0.5).contains(&beta) {
        return Err(RobustError::Invalid(format!("trim fraction must be in [0, 0.5), got {beta}")));
    }
    let n = deltas.len();
    if n == 0 {
        return Err(RobustError::TooFew { rule: "trimmed mean", needed: 1, f: 0, got: 0 });
    }
    // β < 1/2 keeps at least one value: n − 2⌊βn⌋ ≥ 1.
    let k = trim_count(n, beta);
    let mut column = vec![0f32; n];
    Ok((0..len)
        .map(|j| {
            for (c, d) in column.iter_mut().zip(deltas) {
                *c = d[j];
            }
            column.sort_by(f32::total_cmp);
            let kept = &column[k..n - k];
            (kept.iter().map(|&v| f64::from(v)).sum::<f64>() / kept.len() as f64) as f32
        })
        .collect())
}

fn squared_distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(x - y) * f64::from(x - y)).sum()
}

/// Krum scores (Blanchard et al. 2017): for each update, the sum of squared distances to its
/// `n − f − 2` nearest neighbours.
pub fn krum_scores(deltas: &[&[f32]], f: usize) -> Result<Vec<f64>, RobustError> {
    check(deltas)?;
    let n = deltas.len();
    if n < 2 * f + 3 {
        return Err(RobustError::TooFew { rule: "Krum", needed: 2 * f + 3, f, got: n });
    }
    let mut dist = vec![vec![0f64; n]; n];
    for i in 0..n {
        for j in i + 1..n {
            let d = squared_distance(deltas[i], deltas[j]);
            dist[i][j] = d;
            dist[j][i] = d;
        }
    }
    Ok((0..n)
        .map(|i| {
            let mut others: Vec<f64> = (0..n).filter(|&j| j != i).map(|j| dist[i][j]).collect();
            others.sort_by(f64::total_cmp);
            others[..n - f - 2].iter().sum()
        })
        .collect())
}

/// Indices of the `m` best Krum scores (lowest first; ties go to the earlier update).
pub fn multi_krum_select(deltas: &[&[f32]], f: usize, m: usize) -> Result<Vec<usize>, RobustError> {
    let scores = krum_scores(deltas, f)?;
    if m == 0 || m > deltas.len() {
        return Err(RobustError::Invalid(format!("Multi-Krum must select between 1 and {} updates, not {m}", deltas.len())));
    }
    let mut order: Vec<usize> = (0..deltas.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    order.truncate(m);
    Ok(order)
}

fn mean_of(deltas: &[&[f32]], picks: &[usize]) -> Vec<f32> {
    let len = deltas.first().map_or(0, |d| d.len());
    (0..len).map(|j| (picks.iter().map(|&i| f64::from(deltas[i][j])).sum::<f64>() / picks.len() as f64) as f32).collect()
}

/// Krum: the single update with the best score.
pub fn krum(deltas: &[&[f32]], f: usize) -> Result<Vec<f32>, RobustError> {
    let pick = multi_krum_select(deltas, f, 1)?;
    Ok(deltas[pick[0]].to_vec())
}

/// Multi-Krum: the mean of the `m` updates with the best scores.
pub fn multi_krum(deltas: &[&[f32]], f: usize, m: usize) -> Result<Vec<f32>, RobustError> {
    let picks = multi_krum_select(deltas, f, m)?;
    Ok(mean_of(deltas, &picks))
}

/// Bulyan (El Mhamdi et al. 2018): select θ = n − 2f updates by repeated Krum, then per
/// coordinate average the β = θ − 2f values closest to the median of the selection.
pub fn bulyan(deltas: &[&[f32]], f: usize) -> Result<Vec<f32>, RobustError> {
    let len = check(deltas)?;
    let n = deltas.len();
    if n < 4 * f + 3 {
        return Err(RobustError::TooFew { rule: "Bulyan", needed: 4 * f + 3, f, got: n });
    }
    let theta = n - 2 * f;
    let mut remaining: Vec<usize> = (0..n).collect();
    let mut selected = Vec::with_capacity(theta);
    while selected.len() < theta {
        let pool: Vec<&[f32]> = remaining.iter().map(|&i| deltas[i]).collect();
        // Krum on the remaining pool; with fewer than 2f + 3 left, fall back to f = 0 scoring
        // (the paper's recursion only needs the best-scored element).
        let fk = if pool.len() >= 2 * f + 3 { f } else { pool.len().saturating_sub(3) / 2 };
        let best = multi_krum_select(&pool, fk, 1).map(|p| p[0]).unwrap_or(0);
        selected.push(remaining.remove(best));
    }
    let beta = theta - 2 * f;
    let mut column: Vec<f32> = vec![0.0; theta];
    Ok((0..len)
        .map(|j| {
            for (c, &i) in column.iter_mut().zip(&selected) {
                *c = deltas[i][j];
            }
            column.sort_by(f32::total_cmp);
            let med = if theta % 2 == 1 { f64::from(column[theta / 2]) } else { (f64::from(column[theta / 2 - 1]) + f64::from(column[theta / 2])) / 2.0 };
            let mut by_closeness: Vec<f64> = column.iter().map(|&v| f64::from(v)).collect();
            by_closeness.sort_by(|a, b| (a - med).abs().total_cmp(&(b - med).abs()).then(a.total_cmp(b)));
            (by_closeness[..beta].iter().sum::<f64>() / beta as f64) as f32
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(v: &[Vec<f32>]) -> Vec<&[f32]> {
        v.iter().map(Vec::as_slice).collect()
    }

    #[test]
    fn median_by_hand() {
        let d = vec![vec![1.0, 10.0], vec![3.0, -2.0], vec![2.0, 100.0]];
        assert_eq!(median(&refs(&d)).unwrap(), vec![2.0, 10.0]);
        let d = vec![vec![1.0], vec![4.0], vec![2.0], vec![100.0]];
        assert_eq!(median(&refs(&d)).unwrap(), vec![3.0]);
    }

    #[test]
    fn trimmed_mean_by_hand() {
        // n = 5, β = 0.2: drop one from each end. Column [−50, 1, 2, 3, 90] → (1+2+3)/3 = 2.
        let d = vec![vec![1.0], vec![90.0], vec![2.0], vec![-50.0], vec![3.0]];
        assert_eq!(trimmed_mean(&refs(&d), 0.2).unwrap(), vec![2.0]);
        assert_eq!(trimmed_mean(&refs(&d), 0.0).unwrap(), vec![9.2]);
        assert!(matches!(trimmed_mean(&refs(&d), 0.5), Err(RobustError::Invalid(_))));
    }

    #[test]
    fn krum_by_hand() {
        // Four honest points near 0 and one outlier at 10 (1-D), f = 1: n − f − 2 = 2 neighbours.
        let d = vec![vec![0.0], vec![0.1], vec![-0.1], vec![0.2], vec![10.0]];
        // Scores: 0 → 0.01 + 0.01 = 0.02; 0.1 → 0.01 + 0.01 = 0.02; −0.1 → 0.01 + 0.04 = 0.05;
        // 0.2 → 0.01 + 0.04 = 0.05; 10 → 96.04 + 98.01 = 194.05.
        let s = krum_scores(&refs(&d), 1).unwrap();
        let expected = [0.02, 0.02, 0.05, 0.05, 194.05];
        for (a, b) in s.iter().zip(expected) {
            assert!((a - b).abs() < 1e-5 * b.max(1.0), "{s:?}");
        }
        assert_eq!(krum(&refs(&d), 1).unwrap(), vec![0.0], "tie goes to the earlier update");
        let mk = multi_krum(&refs(&d), 1, 2).unwrap();
        assert!((mk[0] - 0.05).abs() < 1e-7);
        assert!(matches!(krum(&refs(&d[..4]), 1), Err(RobustError::TooFew { needed: 5, .. })));
    }

    #[test]
    fn bulyan_ignores_outliers() {
        // n = 7, f = 1: θ = 5 selected by Krum, β = 3 closest to the median averaged.
        let d = vec![vec![1.0], vec![1.1], vec![0.9], vec![1.05], vec![0.95], vec![1000.0], vec![-1000.0]];
        let b = bulyan(&refs(&d), 1).unwrap();
        // Krum selects the five honest values; the three closest to their median 1.0 are 1.0, 1.05, 0.95.
        assert!((b[0] - 1.0).abs() < 1e-6, "{b:?}");
        assert!(matches!(bulyan(&refs(&d[..6]), 1), Err(RobustError::TooFew { needed: 7, .. })));
    }
}
