//! One secure-aggregation round with every client in this process: for tests, the benchmark
//! and simulations. Clients can be made to drop out at any stage.

use std::collections::BTreeMap;
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::protocol::{Client, SecAggError, Server};
use crate::seed::derive_seed;

/// Where a client stops answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropout {
    /// Completes the round.
    Never,
    /// Advertised its keys, never shared them.
    AfterKeys,
    /// Shared its keys, never sent its masked input (its pairwise masks must be removed).
    AfterShares,
    /// Sent its masked input, never helped to unmask.
    AfterMasking,
}

/// Wall time spent by the clients (total, all of them) and by the server.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    pub clients_seconds: f64,
    pub server_seconds: f64,
}

/// Runs a round over `inputs` (already in Z/2^64) with threshold `t`; client `i` drops out
/// at `dropouts[i]`. Returns the unmasked sum over the clients whose input got in, and their
/// indices.
pub fn run_round(inputs: &[Vec<u64>], t: usize, dropouts: &[Dropout], seed: u64) -> Result<(Vec<u64>, Vec<usize>, Timing), SecAggError> {
    let n = inputs.len();
    let len = inputs.first().map_or(0, Vec::len);
    let ids: Vec<String> = (0..n).map(|i| format!("client{i:05}")).collect();
    let drop = |i: usize| dropouts.get(i).copied().unwrap_or(Dropout::Never);
    let mut timing = Timing::default();
    let mut server = Server::new(t, len);
    let mut clients = Vec::with_capacity(n);
    let mut keys = BTreeMap::new();
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        let mut rng = ChaCha20Rng::seed_from_u64(derive_seed(seed, &["secagg", id]));
        let (c, k) = Client::new(id.clone(), &mut rng);
        keys.insert(id.clone(), k);
        clients.push((i, c, rng));
    }
    timing.clients_seconds += started.elapsed().as_secs_f64();
    let s = Instant::now();
    let roster = server.roster(keys)?;
    timing.server_seconds += s.elapsed().as_secs_f64();

    let mut boxes = Vec::new();
    let c = Instant::now();
    for (i, client, rng) in clients.iter_mut() {
        if drop(*i) != Dropout::AfterKeys {
            boxes.push(client.share_keys(roster.clone(), rng)?);
        }
    }
    timing.clients_seconds += c.elapsed().as_secs_f64();
    let s = Instant::now();
    let inbox = server.route(boxes)?;
    timing.server_seconds += s.elapsed().as_secs_f64();

    for (i, client, _) in clients.iter_mut() {
        let Some(mine) = inbox.get(&ids[*i]) else { continue };
        if drop(*i) == Dropout::AfterShares {
            continue;
        }
        let c = Instant::now();
        let y = client.masked_input(&inputs[*i], mine)?;
        timing.clients_seconds += c.elapsed().as_secs_f64();
        let s = Instant::now();
        server.add_masked(&ids[*i], &y)?;
        timing.server_seconds += s.elapsed().as_secs_f64();
    }
    let s = Instant::now();
    let survivors = server.survivors()?;
    timing.server_seconds += s.elapsed().as_secs_f64();
    let mut reveals = Vec::new();
    let c = Instant::now();
    for (i, client, _) in &clients {
        if survivors.contains(&ids[*i]) && drop(*i) != Dropout::AfterMasking {
            reveals.push(client.reveal(&survivors)?);
        }
    }
    timing.clients_seconds += c.elapsed().as_secs_f64();
    let s = Instant::now();
    let sum = server.unmask(reveals)?;
    timing.server_seconds += s.elapsed().as_secs_f64();
    let included = (0..n).filter(|i| survivors.contains(&ids[*i])).collect();
    Ok((sum, included, timing))
}

#[cfg(test)]
mod tests {
    use rand::RngCore;

    use super::*;
    use crate::secagg::masking::FixedPoint;
    use crate::secagg::protocol::{Reveal, Sealed, majority};

    fn inputs(n: usize, len: usize) -> (Vec<Vec<f64>>, Vec<Vec<u64>>) {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let fp = FixedPoint::default();
        let plain: Vec<Vec<f64>> = (0..n).map(|_| (0..len).map(|_| (rng.next_u32() as f64 / u32::MAX as f64 - 0.5) * 0.2).collect()).collect();
        let encoded = plain.iter().map(|v| v.iter().map(|&x| fp.encode(x).unwrap()).collect()).collect();
        (plain, encoded)
    }

    fn plain_sum(plain: &[Vec<f64>], which: &[usize]) -> Vec<f64> {
        let mut s = vec![0.0; plain[0].len()];
        for &i in which {
            s.iter_mut().zip(&plain[i]).for_each(|(a, b)| *a += b);
        }
        s
    }

    fn max_error(sum: &[u64], expected: &[f64]) -> f64 {
        let fp = FixedPoint::default();
        sum.iter().zip(expected).map(|(s, e)| (fp.decode(*s) - e).abs()).fold(0.0, f64::max)
    }

    #[test]
    fn the_unmasked_sum_is_the_plain_sum_within_the_fixed_point_error() {
        let (plain, encoded) = inputs(10, 1000);
        let (sum, included, _) = run_round(&encoded, majority(10), &[], 1).unwrap();
        assert_eq!(included, (0..10).collect::<Vec<_>>());
        let err = max_error(&sum, &plain_sum(&plain, &included));
        assert!(err <= 10.0 * 0.5 / FixedPoint::default().scale, "error {err}");
    }

    #[test]
    fn dropouts_at_every_stage_up_to_the_threshold_are_handled() {
        let (plain, encoded) = inputs(10, 500);
        use Dropout::*;
        let drops = [AfterKeys, Never, AfterShares, Never, AfterMasking, Never, Never, AfterKeys, Never, Never];
        let (sum, included, _) = run_round(&encoded, 6, &drops, 2).unwrap();
        assert_eq!(included, vec![1, 3, 4, 5, 6, 8, 9], "the input of the client that dropped after masking still counts");
        assert!(max_error(&sum, &plain_sum(&plain, &included)) < 1e-6);
    }

    #[test]
    fn beyond_the_threshold_the_round_fails_cleanly() {
        let (_, encoded) = inputs(10, 50);
        use Dropout::*;
        let five = [AfterShares, AfterShares, AfterShares, AfterShares, AfterShares, Never, Never, Never, Never, Never];
        let err = run_round(&encoded, 6, &five, 3).unwrap_err();
        assert_eq!(err, SecAggError::TooFew { stage: "masked inputs", have: 5, need: 6 });
        let unmask = [AfterMasking, AfterMasking, AfterMasking, AfterMasking, AfterMasking, Never, Never, Never, Never, Never];
        let err = run_round(&encoded, 6, &unmask, 3).unwrap_err();
        assert_eq!(err, SecAggError::TooFew { stage: "reveals", have: 5, need: 6 });
        assert!(matches!(run_round(&encoded, 5, &[], 3), Err(SecAggError::Threshold { t: 5, n: 10 })), "t must be a majority");
    }

    #[test]
    fn a_masked_input_alone_is_uncorrelated_with_the_update() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let (plain, encoded) = inputs(3, 100_000);
        let ids = ["a", "b", "c"];
        let mut clients: Vec<_> = ids.iter().map(|id| Client::new(*id, &mut rng)).collect();
        let mut server = Server::new(2, 100_000);
        let roster = server.roster(clients.iter().zip(ids).map(|((_, k), id)| (id.to_owned(), *k)).collect()).unwrap();
        let boxes = clients.iter_mut().map(|(c, _)| c.share_keys(roster.clone(), &mut rng).unwrap()).collect();
        let inbox = server.route(boxes).unwrap();
        let y = clients[0].0.masked_input(&encoded[0], &inbox["a"]).unwrap();
        // Pearson correlation between the update and what the server sees of it.
        let ys: Vec<f64> = y.iter().map(|&v| v as i64 as f64).collect();
        let xs = &plain[0];
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (mx, my) = (mean(xs), mean(&ys));
        let cov: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
        let vx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
        let vy: f64 = ys.iter().map(|y| (y - my).powi(2)).sum();
        let r = cov / (vx * vy).sqrt();
        assert!(r.abs() < 0.02, "correlation {r}");
        let equal = y.iter().zip(&encoded[0]).filter(|(a, b)| a == b).count();
        assert_eq!(equal, 0, "no value goes through unmasked");
    }

    #[test]
    fn tampered_shares_are_detected_not_silently_wrong() {
        let (_, encoded) = inputs(5, 10);
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let ids: Vec<String> = (0..5).map(|i| format!("c{i}")).collect();
        let mut clients: Vec<_> = ids.iter().map(|id| Client::new(id.clone(), &mut rng)).collect();
        let mut server = Server::new(3, 10);
        let roster = server.roster(clients.iter().zip(&ids).map(|((_, k), id)| (id.clone(), *k)).collect()).unwrap();
        let boxes = clients.iter_mut().map(|(c, _)| c.share_keys(roster.clone(), &mut rng).unwrap()).collect();
        let inbox = server.route(boxes).unwrap();
        for (i, (c, _)) in clients.iter_mut().enumerate().take(4) {
            let y = c.masked_input(&encoded[i], &inbox[&ids[i]]).unwrap();
            server.add_masked(&ids[i], &y).unwrap();
        }
        let survivors = server.survivors().unwrap();
        let mut reveals: Vec<_> = clients.iter().take(4).map(|(c, _)| c.reveal(&survivors).unwrap()).collect();
        // One helper lies about the dropped client's key share.
        reveals[0].secret_key[0].1.y[0] ^= 1;
        reveals.truncate(3);
        assert!(matches!(server.unmask(reveals), Err(SecAggError::BadShares(id)) if id == "c4"));
    }

    /// A round of `n` clients driven by hand up to the reveals, with a hook to tamper with
    /// the routed boxes; returns the reveals, the server and the plain sum of the survivors.
    fn by_hand(n: usize, t: usize, tamper_boxes: impl FnOnce(&mut Vec<Vec<Sealed>>)) -> (Vec<Reveal>, Server, Vec<String>, Vec<f64>) {
        by_hand_dropping(n, t, 0, tamper_boxes)
    }

    /// As [`by_hand`], with the last `dropped` clients sharing their keys and then vanishing.
    fn by_hand_dropping(n: usize, t: usize, dropped: usize, tamper_boxes: impl FnOnce(&mut Vec<Vec<Sealed>>)) -> (Vec<Reveal>, Server, Vec<String>, Vec<f64>) {
        let (plain, encoded) = inputs(n, 64);
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let ids: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
        let mut clients: Vec<_> = ids.iter().map(|id| Client::new(id.clone(), &mut rng)).collect();
        let mut server = Server::new(t, 64);
        let roster = server.roster(clients.iter().zip(&ids).map(|((_, k), id)| (id.clone(), *k)).collect()).unwrap();
        let mut boxes: Vec<_> = clients.iter_mut().map(|(c, _)| c.share_keys(roster.clone(), &mut rng).unwrap()).collect();
        tamper_boxes(&mut boxes);
        let inbox = server.route(boxes).unwrap();
        for (i, (c, _)) in clients.iter_mut().enumerate().take(n - dropped) {
            if let Some(mine) = inbox.get(&ids[i]) {
                let y = c.masked_input(&encoded[i], mine).unwrap();
                server.add_masked(&ids[i], &y).unwrap();
            }
        }
        let survivors = server.survivors().unwrap();
        let reveals = clients.iter().enumerate().filter(|(i, _)| survivors.contains(&ids[*i])).map(|(_, (c, _))| c.reveal(&survivors).unwrap()).collect();
        let included: Vec<usize> = (0..n).filter(|i| survivors.contains(&ids[*i])).collect();
        (reveals, server, survivors, plain_sum(&plain, &included))
    }

    #[test]
    fn a_sender_that_leaves_out_a_box_is_dropped_and_the_sum_stays_right() {
        // c0 seals no box for c3: c3 would never remove c0's pairwise mask.
        let (reveals, server, survivors, expected) = by_hand(6, 4, |boxes| boxes[0].retain(|b| b.to != "c3"));
        assert!(!survivors.contains(&"c0".to_owned()), "{survivors:?}");
        assert_eq!(server.incomplete().iter().collect::<Vec<_>>(), vec!["c0"]);
        let sum = server.unmask(reveals).unwrap();
        assert!(max_error(&sum, &expected) < 1e-6, "the sum of the five others, exactly");
        // Two boxes to one member (and none to another) is no better.
        let (reveals, server, survivors, expected) = by_hand(6, 4, |boxes| {
            let copy = boxes[1][0].clone();
            boxes[1].pop();
            boxes[1].push(copy);
        });
        assert!(!survivors.contains(&"c1".to_owned()));
        assert!(max_error(&server.unmask(reveals).unwrap(), &expected) < 1e-6);
    }

    #[test]
    fn a_duplicated_or_misplaced_share_leaves_out_its_helper_not_the_round() {
        let (mut reveals, server, _, expected) = by_hand(6, 4, |_| {});
        // c0 repeats one share; c1 sends a share at another helper's point.
        let dup = reveals[0].self_mask[0].clone();
        reveals[0].self_mask.push(dup);
        reveals[1].self_mask[0].1.x = 6;
        let sum = server.unmask(reveals).unwrap();
        assert!(max_error(&sum, &expected) < 1e-6, "four well-formed reveals are enough");
    }

    #[test]
    fn a_tampered_self_mask_share_is_outvoted_by_the_spare_shares() {
        let (mut reveals, server, _, expected) = by_hand(6, 4, |_| {});
        reveals[2].self_mask[1].1.y[0] ^= 1;
        let sum = server.unmask(reveals).unwrap();
        assert!(max_error(&sum, &expected) < 1e-6, "a subset without the lie matches the commitment");
    }

    #[test]
    fn a_tampered_key_share_of_a_dropped_client_is_outvoted_by_the_spare_shares() {
        // c5 shares its keys but never sends its input: its pairwise masks come off with its
        // reconstructed key, which one helper lies about.
        let (mut reveals, server, _, expected) = by_hand_dropping(6, 4, 1, |_| {});
        reveals[3].secret_key[0].1.y[2] ^= 1 << 7;
        let sum = server.unmask(reveals).unwrap();
        assert!(max_error(&sum, &expected) < 1e-6);
    }
}
