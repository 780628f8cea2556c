use proptest::prelude::*;

use super::*;

const SPEC: SamplerSpec = SamplerSpec {
    num_samples: 50,
    global_batch: 8,
    seed: 7,
    shuffle: true,
};

/// The records of a job that runs `steps` (world size, whether the step fails) attempts:
/// a failed step is rolled back and the next attempt, in a new epoch, re-reads it.
fn job(steps: &[(usize, bool)]) -> Vec<Record> {
    let mut sampler = ElasticSampler::new(SPEC).unwrap();
    let (mut records, mut epoch, mut step) = (Vec::new(), 0, 0);
    for &(size, fails) in steps {
        let committed = sampler.offset();
        for rank in 0..size {
            let mut s = sampler.clone();
            records.push(Record::Read {
                spec: SPEC.into(),
                epoch,
                rank,
                size,
                offset: committed,
                indices: s.next_share(rank, size),
            });
        }
        if fails {
            epoch += 1;
            continue;
        }
        sampler.restore(committed + SPEC.global_batch);
        records.push(Record::Commit {
            spec: SPEC.into(),
            epoch,
            step,
            offset: sampler.offset(),
        });
        step += 1;
    }
    records
}

fn one(records: &[Record]) -> StreamReport {
    let mut reports = check(records);
    assert_eq!(reports.len(), 1);
    reports.pop().unwrap()
}

#[test]
fn a_clean_history_passes_and_counts_each_pass() {
    let steps: Vec<_> = (0..20).map(|i| (1 + i % 4, i % 5 == 3)).collect();
    let r = one(&job(&steps));
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.batches, 16);
    assert_eq!(r.end, 16 * 8);
    assert_eq!(r.superseded, (3 + 4 + 1 + 2) as u64);
    let passes: Vec<_> = r
        .data_epochs
        .iter()
        .map(|d| (d.positions, d.once))
        .collect();
    assert_eq!(passes, [(50, 50), (50, 50), (28, 28)]);
}

#[test]
fn a_lost_share_is_incomplete_and_missing() {
    let mut records = job(&[(3, false), (3, false), (3, false)]);
    records.remove(5); // offset 8, rank 1
    let r = one(&records);
    assert!(!r.ok());
    assert_eq!(r.incomplete, [(8, vec![1])]);
    assert_eq!(r.data_epochs[0].missing, 3);
}

#[test]
fn a_skipped_batch_is_a_gap() {
    let records: Vec<_> = job(&[(2, false), (2, false), (2, false)])
        .into_iter()
        .filter(|r| !matches!(r, Record::Read { offset: 8, .. }))
        .collect();
    let r = one(&records);
    assert_eq!(r.gaps, [8]);
    assert_eq!(r.data_epochs[0].missing, 8);
}

#[test]
fn a_rank_reading_another_batch_is_wrong_and_repeated() {
    let mut records = job(&[(2, false), (2, false)]);
    // Rank 1 of the second step read the first step's share (it did not restore its sampler).
    let first = match &records[1] {
        Record::Read { indices, .. } => indices.clone(),
        Record::Commit { .. } => unreachable!(),
    };
    if let Record::Read { indices, .. } = &mut records[4] {
        *indices = first;
    }
    let r = one(&records);
    assert_eq!(r.wrong_batches, [8]);
    assert_eq!(r.data_epochs[0].repeated, 4);
    assert_eq!(r.data_epochs[0].missing, 4);
}

#[test]
fn samplers_are_checked_apart_and_records_round_trip_as_json() {
    let mut records = job(&[(2, false)]);
    let other = SamplerSpec { seed: 8, ..SPEC };
    records.push(Record::Commit {
        spec: other.into(),
        epoch: 0,
        step: 0,
        offset: 0,
    });
    assert_eq!(check(&records).len(), 2);
    for r in &records {
        let line = serde_json::to_string(r).unwrap();
        assert_eq!(&serde_json::from_str::<Record>(&line).unwrap(), r);
    }
}

proptest! {
    #[test]
    fn any_history_of_failures_and_world_sizes_passes(
        steps in prop::collection::vec((1usize..6, prop::bool::weighted(0.2)), 1..60)
    ) {
        let r = one(&job(&steps));
        prop_assert!(r.ok(), "{:?}", r);
        let committed = steps.iter().filter(|s| !s.1).count() as u64;
        prop_assert_eq!(r.batches, committed);
        let read: u64 = r.data_epochs.iter().map(|d| d.once).sum();
        prop_assert_eq!(read, committed * SPEC.global_batch);
    }
}
