use proptest::prelude::*;

use super::*;

fn spec(num_samples: u64, global_batch: u64, seed: u64) -> SamplerSpec {
    SamplerSpec {
        num_samples,
        global_batch,
        seed,
        shuffle: true,
    }
}

#[test]
fn bad_arguments_are_refused() {
    let e = |s| ElasticSampler::new(s).unwrap_err();
    assert_eq!(e(spec(10, 0, 0)), SamplerError::EmptyBatch);
    assert!(matches!(
        e(spec(10, 11, 0)),
        SamplerError::BatchLargerThanData { .. }
    ));
    assert_eq!(e(spec(0, 1, 0)), SamplerError::Samples(0));
    assert_ne!(spec(10, 2, 0).fingerprint(), spec(10, 2, 1).fingerprint());
    assert_ne!(spec(10, 2, 0).fingerprint(), spec(10, 3, 0).fingerprint());
}

#[test]
fn shares_cover_the_batch_once_and_differ_by_at_most_one() {
    for gb in 1..40 {
        for n in 1..10 {
            let parts: Vec<_> = (0..n).map(|r| share(gb, r, n)).collect();
            assert_eq!(parts[0].start, 0);
            assert_eq!(parts[n - 1].end, gb);
            assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
            let sizes: Vec<u64> = parts.iter().map(|p| p.end - p.start).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        }
    }
}

#[test]
fn a_billion_samples_cost_no_memory() {
    let mut s = ElasticSampler::new(spec(1_000_000_000, 4096, 3)).unwrap();
    assert!(std::mem::size_of_val(&s) < 128);
    let batch = s.next_share(0, 1);
    assert!(batch.iter().all(|i| *i < 1_000_000_000));
    assert_eq!(s.data_epoch(), 0);
}

/// One attempt at a step: the world size it runs with, whether it fails (rolled back), and
/// whether every rank then restarts from the committed offset with a fresh sampler.
#[derive(Clone, Debug)]
struct Attempt {
    size: usize,
    fails: bool,
    restart: bool,
}

fn attempts() -> impl Strategy<Value = Vec<Attempt>> {
    prop::collection::vec(
        (
            1usize..9,
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(size, fails, restart)| Attempt {
                size,
                fails,
                restart,
            }),
        1..120,
    )
}

proptest! {
    /// Any sequence of world sizes, rolled-back steps and restarts commits the same global
    /// batches as one worker alone, and reads every index exactly once per pass.
    #[test]
    fn churn_reads_each_index_once_per_pass(
        n in 1u64..200,
        gb_frac in 0.01f64..1.0,
        seed: u64,
        plan in attempts(),
    ) {
        let gb = ((n as f64 * gb_frac) as u64).clamp(1, n);
        let spec = spec(n, gb, seed);
        let mut alone = ElasticSampler::new(spec).unwrap();
        let mut ranks: Vec<ElasticSampler> = Vec::new();
        let mut committed = 0u64;
        let mut stream = Vec::new();
        for a in plan {
            if a.restart || ranks.len() != a.size {
                // A membership change or a restart: every rank of the new world restores the
                // committed offset (a fresh sampler, as a restarted process builds).
                ranks = (0..a.size).map(|_| ElasticSampler::new(spec).unwrap()).collect();
            }
            for s in &mut ranks {
                s.restore(committed);
            }
            let global: Vec<u64> = (0..a.size)
                .flat_map(|r| ranks[r].next_share(r, a.size))
                .collect();
            if a.fails {
                continue;
            }
            prop_assert_eq!(&global, &alone.next_share(0, 1));
            committed += gb;
            prop_assert!(ranks.iter().all(|s| s.offset() == committed));
            stream.extend(global);
        }
        for pass in stream.chunks(n as usize).filter(|c| c.len() == n as usize) {
            let mut sorted = pass.to_vec();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (0..n).collect::<Vec<_>>());
        }
    }
}
