use std::time::Duration;

use ringrun_collectives::{CommConfig, Communicator, Ctl, ReduceOp, transport::mem};

#[tokio::test]
async fn allreduce_sum_over_mem() {
    for n in 1..=5 {
        for count in [0usize, 1, 7, 1000, 300_001] {
            let comms: Vec<_> = mem::mesh(n, 1 << 16)
                .into_iter()
                .map(|t| {
                    Communicator::new(
                        t,
                        1,
                        CommConfig {
                            segment_bytes: 4096,
                            ..Default::default()
                        },
                    )
                })
                .collect();
            let futs = comms.into_iter().enumerate().map(|(r, mut c)| async move {
                let mut buf: Vec<f32> = (0..count).map(|i| (i % 13 + r) as f32).collect();
                c.allreduce(
                    &mut buf,
                    ReduceOp::Sum,
                    &Ctl::timeout(Duration::from_secs(10)),
                )
                .await
                .unwrap();
                buf
            });
            let out = futures_util::future::join_all(futs).await;
            for buf in out {
                for (i, x) in buf.iter().enumerate() {
                    let want: usize = (0..n).map(|r| i % 13 + r).sum();
                    assert_eq!(*x, want as f32, "n={n} count={count} i={i}");
                }
            }
        }
    }
}
