//! Packing: many short samples share one `cutoff_len` row. [`greedy_knapsack`] is LLaMA-Factory's greedy
//! fit (lengths sorted; each row repeatedly takes the longest sample that still fits), done with an ordered
//! multiset so it is O(n log n). Positions restart at 0 for every packed sample and the row records where
//! each sample starts, so the model can mask attention across samples.

use std::collections::BTreeMap;

/// Groups sample indices into rows whose total length is at most `capacity`. Samples longer than
/// `capacity` get a row of their own. Deterministic: equal lengths are taken in reverse index order.
pub fn greedy_knapsack(lengths: &[u32], capacity: u32) -> Vec<Vec<usize>> {
    let mut by_len: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, &l) in lengths.iter().enumerate() {
        by_len.entry(l).or_default().push(i);
    }
    let mut rows = Vec::new();
    while let Some((&longest, _)) = by_len.iter().next_back() {
        let mut row = Vec::new();
        let mut left = capacity;
        if longest > capacity {
            row.push(take(&mut by_len, longest));
            rows.push(row);
            continue;
        }
        while let Some((&l, _)) = by_len.range(..=left).next_back() {
            row.push(take(&mut by_len, l));
            left -= l;
        }
        rows.push(row);
    }
    rows
}

fn take(by_len: &mut BTreeMap<u32, Vec<usize>>, l: u32) -> usize {
    let v = by_len.get_mut(&l).expect("present");
    let i = v.pop().expect("non-empty");
    if v.is_empty() {
        by_len.remove(&l);
    }
    i
}

/// Position ids of a row given where each packed sample starts (first start is 0).
pub fn positions(len: usize, starts: &[usize]) -> Vec<u32> {
    let mut pos = Vec::with_capacity(len);
    for (k, &s) in starts.iter().enumerate() {
        let e = starts.get(k + 1).copied().unwrap_or(len);
        pos.extend(0..(e - s) as u32);
    }
    pos
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A straight transcription of LLaMA-Factory's list-based `greedy_knapsack` (sort, bisect, pop),
    /// returning lengths per row, to check the multiset version gives the same rows.
    fn reference(mut numbers: Vec<u32>, capacity: u32) -> Vec<Vec<u32>> {
        numbers.sort();
        let mut out = Vec::new();
        while !numbers.is_empty() {
            let mut row = Vec::new();
            let mut left = capacity;
            loop {
                let idx = numbers.partition_point(|&x| x <= left);
                if idx == 0 {
                    break;
                }
                left -= numbers[idx - 1];
                row.push(numbers.remove(idx - 1));
            }
            out.push(row);
        }
        out
    }

    #[test]
    fn matches_list_algorithm_and_respects_capacity() {
        let mut x = 12345u64;
        let lengths: Vec<u32> = (0..500)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as u32 % 200 + 1
            })
            .collect();
        let rows = greedy_knapsack(&lengths, 256);
        let got: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| r.iter().map(|&i| lengths[i]).collect())
            .collect();
        assert_eq!(got, reference(lengths.clone(), 256));
        let mut all: Vec<usize> = rows.concat();
        all.sort();
        assert_eq!(all, (0..500).collect::<Vec<_>>());
        // LLaMA-Factory's identity test: equal lengths in different rows keep their own indices.
        let rows = greedy_knapsack(&[50, 50, 30, 80], 100);
        for r in &rows {
            assert!(r.iter().map(|&i| [50, 50, 30, 80][i]).sum::<u32>() <= 100);
        }
        assert_eq!(positions(5, &[0, 2]), vec![0, 1, 0, 1, 2]);
    }
}
