//! The ABI across processes: three workers (this test binary, re-run with `RANKS_FFI_WORKER`;
//! `harness = false`, so `main` picks the role) join through `ringrun_init` and check
//! - `ringrun_rank() == RANK` in the first epoch (the workers start in reverse `RANK` order);
//! - `ringrun_reduce_scatter` for every dtype × op against results computed here (inputs are
//!   small integers, so every result is exact in every dtype);
//! - a count (shape), dtype or op that differs across ranks is `RINGRUN_MISMATCH` on every
//!   rank, well before the op timeout, for allreduce, broadcast, allgather, all-to-all and
//!   reduce-scatter, and the group works again after `ringrun_restore`;
//! - `ringrun_rank`, `ringrun_size` and `ringrun_epoch` answer at once on one thread while a
//!   collective is in flight on another.
//!
//! Bounded in time.

// Calling the C ABI from Rust is unsafe by nature; this crate opts out (ARCHITECTURE.md).
#![allow(unsafe_code)]

use std::{
    ffi::{CStr, c_int, c_void},
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use ringrun::*;

#[path = "../../tests/common/ports.rs"]
#[allow(unreachable_pub)]
mod ports;

const WORKER: &str = "RANKS_FFI_WORKER";
const N: usize = 3;
const OK: c_int = ringrun_status_t::RINGRUN_OK as c_int;
const INVALID: c_int = ringrun_status_t::RINGRUN_INVALID_ARGUMENT as c_int;
const MISMATCH: c_int = ringrun_status_t::RINGRUN_MISMATCH as c_int;
/// Far above any mismatch report; a call that takes this long was not told by its peers.
const OP_TIMEOUT: Duration = Duration::from_secs(20);

fn main() {
    if std::env::var_os(WORKER).is_some() {
        worker();
        return;
    }
    let name = "ranks_mismatches_and_reduce_scatter_across_three_processes";
    parent();
    println!("test {name} ... ok");
}

fn last_error() -> String {
    // SAFETY: the library returns a valid NUL-terminated string, never NULL.
    unsafe { CStr::from_ptr(ringrun_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Starts the workers in reverse rank order and requires each to finish cleanly.
fn parent() {
    let ports: Vec<u16> = (0..N).map(|_| ports::free_udp_port()).collect();
    let seeds: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let exe = std::env::current_exe().unwrap();
    let run = format!("ffi-ranks-{}", std::process::id());
    let mut children = Vec::new();
    for rank in (0..N).rev() {
        let mut child = Command::new(&exe)
            .env(WORKER, "1")
            .env("RINGRUN_SECRET", "ffi-ranks-test-secret-0123456789")
            .env("RINGRUN_RUN_ID", &run)
            .env("RINGRUN_NODE_ID", rank.to_string())
            .env("RINGRUN_MEMBER_PORT", ports[rank].to_string())
            .env("RINGRUN_SEEDS", seeds.join(","))
            .env("RINGRUN_INITIAL_SIZE", N.to_string())
            .env("RINGRUN_MIN_SIZE", N.to_string())
            .env("RINGRUN_OP_TIMEOUT_MS", OP_TIMEOUT.as_millis().to_string())
            .env("RINGRUN_RESTORE_TIMEOUT_MS", "30000")
            .env("RANK", rank.to_string())
            .env("RINGRUN_DEVICE", "cpu")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let reader = thread::spawn(move || {
            let lines: Vec<String> = BufReader::new(out).lines().map_while(Result::ok).collect();
            for l in &lines {
                eprintln!("[{rank}] {l}");
            }
            lines
        });
        children.push((rank, child, reader));
        // Each later RANK starts later: seniority is the reverse of the launch order.
        thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for (rank, mut child, reader) in children {
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("worker {rank} did not finish in time");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let lines = reader.join().unwrap();
        assert!(status.success(), "worker {rank} exited with {status}");
        assert_eq!(
            lines.last().map(String::as_str),
            Some("done"),
            "worker {rank}"
        );
    }
}

fn worker() {
    let launch: c_int = std::env::var("RANK").unwrap().parse().unwrap();
    // SAFETY: valid out-pointers throughout.
    unsafe {
        assert_eq!(ringrun_init(), OK, "{}", last_error());
        let (mut rank, mut size) = (-1, -1);
        assert_eq!(ringrun_rank(&mut rank), OK);
        assert_eq!(ringrun_size(&mut size), OK);
        assert_eq!(
            (rank, size),
            (launch, N as c_int),
            "the first epoch's rank is RANK"
        );
    }
    let (rank, n) = (launch as usize, N);
    reduce_scatter_every_dtype_and_op(rank, n);
    println!("reduce_scatter ok");
    alltoall_every_dtype(rank, n);
    println!("alltoall ok");
    bad_arguments_are_refused_before_anything_is_sent(n);
    println!("bad arguments ok");
    mismatches_fail_everywhere_and_restore_recovers(rank, n);
    println!("mismatches ok");
    rank_size_epoch_answer_while_a_collective_runs(rank);
    println!("threads ok");
    assert_eq!(ringrun_finalize(), OK);
    println!("done");
}

/// Rank `r`'s input element `j` for `op`: small integers whose reduction over the ranks is
/// exact in every dtype (products stay at most 2^n; averages are whole).
fn input(op: ringrun_op_t, r: usize, j: usize) -> i64 {
    match op {
        RINGRUN_PROD => 1 + ((j + r) % 2) as i64,
        RINGRUN_AVG => (j % 7) as i64 + 2 * r as i64,
        _ => ((j + 3 * r) % 7) as i64 + 1,
    }
}

fn reduce(op: ringrun_op_t, n: usize, j: usize) -> i64 {
    let vals = (0..n).map(|r| input(op, r, j));
    match op {
        RINGRUN_SUM => vals.sum(),
        RINGRUN_PROD => vals.product(),
        RINGRUN_MIN => vals.min().unwrap(),
        RINGRUN_MAX => vals.max().unwrap(),
        _ => vals.sum::<i64>() / n as i64,
    }
}

/// `values` in `dtype`'s encoding, in 8-byte-aligned storage.
fn encode(dtype: ringrun_dtype_t, values: &[i64]) -> Vec<u64> {
    let mut bytes = Vec::new();
    for &v in values {
        match dtype {
            RINGRUN_FLOAT32 => bytes.extend((v as f32).to_le_bytes()),
            RINGRUN_FLOAT64 => bytes.extend((v as f64).to_le_bytes()),
            RINGRUN_FLOAT16 => bytes.extend(half::f16::from_f64(v as f64).to_le_bytes()),
            RINGRUN_BFLOAT16 => bytes.extend(half::bf16::from_f64(v as f64).to_le_bytes()),
            RINGRUN_INT8 => bytes.extend((v as i8).to_le_bytes()),
            RINGRUN_UINT8 => bytes.extend((v as u8).to_le_bytes()),
            RINGRUN_INT32 => bytes.extend((v as i32).to_le_bytes()),
            _ => bytes.extend(v.to_le_bytes()),
        }
    }
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    for (i, b) in bytes.into_iter().enumerate() {
        words[i / 8] |= u64::from(b) << (8 * (i % 8));
    }
    words
}

fn decode(dtype: ringrun_dtype_t, words: &[u64], count: usize) -> Vec<i64> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let size = [4, 8, 2, 2, 1, 1, 4, 8][dtype as usize];
    (0..count)
        .map(|i| {
            let b = &bytes[i * size..(i + 1) * size];
            match dtype {
                RINGRUN_FLOAT32 => f32::from_le_bytes(b.try_into().unwrap()) as i64,
                RINGRUN_FLOAT64 => f64::from_le_bytes(b.try_into().unwrap()) as i64,
                RINGRUN_FLOAT16 => half::f16::from_le_bytes([b[0], b[1]]).to_f64() as i64,
                RINGRUN_BFLOAT16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f64() as i64,
                RINGRUN_INT8 => i64::from(b[0] as i8),
                RINGRUN_UINT8 => i64::from(b[0]),
                RINGRUN_INT32 => i64::from(i32::from_le_bytes(b.try_into().unwrap())),
                _ => i64::from_le_bytes(b.try_into().unwrap()),
            }
        })
        .collect()
}

fn reduce_scatter_every_dtype_and_op(rank: usize, n: usize) {
    for count in [5, 40_000] {
        for dtype in RINGRUN_FLOAT32..=RINGRUN_INT64 {
            for op in RINGRUN_SUM..=RINGRUN_AVG {
                let send: Vec<i64> = (0..n * count).map(|j| input(op, rank, j)).collect();
                let send = encode(dtype, &send);
                let mut recv = encode(dtype, &vec![-1; count]);
                // SAFETY: `send` holds n × count elements, `recv` count, both live.
                let status = unsafe {
                    ringrun_reduce_scatter(
                        send.as_ptr().cast(),
                        recv.as_mut_ptr().cast(),
                        count,
                        dtype,
                        op,
                    )
                };
                assert_eq!(status, OK, "dtype {dtype} op {op}: {}", last_error());
                let want: Vec<i64> = (0..count)
                    .map(|i| reduce(op, n, rank * count + i))
                    .collect();
                let got = decode(dtype, &recv, count);
                assert!(got == want, "dtype {dtype} op {op} count {count}: {got:?}");
            }
        }
    }
}

/// Element `i` of the block rank `r` sends rank `j` is `r + n j + i % 7` (small and positive,
/// exact in every dtype), so every received block names its sender and its receiver.
fn alltoall_every_dtype(rank: usize, n: usize) {
    let value = |r: usize, j: usize, i: usize| (r + n * j + i % 7) as i64;
    for count in [5, 40_000] {
        for dtype in RINGRUN_FLOAT32..=RINGRUN_INT64 {
            let send: Vec<i64> = (0..n * count)
                .map(|k| value(rank, k / count, k % count))
                .collect();
            let send = encode(dtype, &send);
            let mut recv = encode(dtype, &vec![-1; n * count]);
            // SAFETY: `send` and `recv` hold n × count elements each, both live.
            let status = unsafe {
                ringrun_alltoall(send.as_ptr().cast(), recv.as_mut_ptr().cast(), count, dtype)
            };
            assert_eq!(status, OK, "dtype {dtype}: {}", last_error());
            let want: Vec<i64> = (0..n * count)
                .map(|k| value(k / count, rank, k % count))
                .collect();
            let got = decode(dtype, &recv, n * count);
            assert!(got == want, "alltoall dtype {dtype} count {count}: {got:?}");
        }
    }
}

fn bad_arguments_are_refused_before_anything_is_sent(n: usize) {
    let mut words = vec![0u64; 4 * n];
    let p = words.as_mut_ptr().cast::<c_void>();
    // SAFETY: live buffers; the bad calls must not touch them.
    unsafe {
        let call = |send: *const c_void, recv: *mut c_void, count, dtype, op| {
            ringrun_reduce_scatter(send, recv, count, dtype, op)
        };
        let odd = p.cast::<u8>().add(1).cast::<c_void>();
        let second = p.cast::<f32>().add(1).cast::<c_void>();
        for (what, status) in [
            ("unknown dtype", call(p, second, 1, 8, RINGRUN_SUM)),
            ("unknown op", call(p, second, 1, RINGRUN_FLOAT32, 5)),
            (
                "NULL sendbuf",
                call(std::ptr::null(), p, 1, RINGRUN_FLOAT32, RINGRUN_SUM),
            ),
            (
                "NULL recvbuf",
                call(p, std::ptr::null_mut(), 1, RINGRUN_FLOAT32, RINGRUN_SUM),
            ),
            ("misaligned", call(odd, p, 1, RINGRUN_FLOAT32, RINGRUN_SUM)),
            ("overlap", call(p, second, 2, RINGRUN_FLOAT32, RINGRUN_SUM)),
            (
                "overflow",
                call(p, p, usize::MAX / 2, RINGRUN_FLOAT64, RINGRUN_SUM),
            ),
        ] {
            assert_eq!(status, INVALID, "{what}: {}", last_error());
        }
    }
    // Nothing was sent: the group is still in step.
    let mut one = [1i32];
    // SAFETY: a live buffer of one int.
    let status = unsafe {
        ringrun_allreduce(
            one.as_ptr().cast(),
            one.as_mut_ptr().cast(),
            1,
            RINGRUN_INT32,
            RINGRUN_SUM,
        )
    };
    assert_eq!(status, OK, "{}", last_error());
    assert_eq!(one[0], n as i32);
}

/// Runs `call` (a collective that disagrees across ranks), requires `RINGRUN_MISMATCH` well
/// before the op timeout, then restores and checks the group with an allreduce.
fn expect_mismatch(what: &str, n: usize, call: impl FnOnce() -> c_int) {
    let started = Instant::now();
    let status = call();
    let took = started.elapsed();
    assert_eq!(status, MISMATCH, "{what}: {}", last_error());
    assert!(took < OP_TIMEOUT / 4, "{what}: reported after {took:?}");
    let (mut step, mut len) = (0u64, 0usize);
    // SAFETY: valid out-pointers; a live buffer of one int.
    unsafe {
        assert_eq!(
            ringrun_restore(&mut step, &mut len),
            OK,
            "{what}: {}",
            last_error()
        );
        let mut one = [1i32];
        let p = one.as_mut_ptr().cast::<c_void>();
        let status = ringrun_allreduce(p, p, 1, RINGRUN_INT32, RINGRUN_SUM);
        assert_eq!(status, OK, "{what}, after restore: {}", last_error());
        assert_eq!(one[0], n as i32, "{what}, after restore");
    }
}

fn mismatches_fail_everywhere_and_restore_recovers(rank: usize, n: usize) {
    let mut big = vec![0u64; 8 * n];
    let mut out = vec![0u64; 8 * n];
    let (b, o) = (
        big.as_mut_ptr().cast::<c_void>(),
        out.as_mut_ptr().cast::<c_void>(),
    );
    let count = 4 + rank;
    // SAFETY (all calls): `big` and `out` hold 8 × n words, more than any count × size here.
    unsafe {
        expect_mismatch("allreduce count", n, || {
            ringrun_allreduce(b, b, count, RINGRUN_FLOAT32, RINGRUN_SUM)
        });
        let dtype = if rank == 0 {
            RINGRUN_FLOAT32
        } else {
            RINGRUN_INT32
        };
        expect_mismatch("allreduce dtype", n, || {
            ringrun_allreduce(b, b, 4, dtype, RINGRUN_SUM)
        });
        expect_mismatch("broadcast count", n, || {
            ringrun_broadcast(b, count, RINGRUN_INT64, 0)
        });
        expect_mismatch("allgather count", n, || {
            ringrun_allgather(b, o, count, RINGRUN_FLOAT64)
        });
        expect_mismatch("alltoall count", n, || {
            ringrun_alltoall(b, o, count, RINGRUN_FLOAT64)
        });
        expect_mismatch("alltoall dtype", n, || ringrun_alltoall(b, o, 4, dtype));
        expect_mismatch("reduce_scatter count", n, || {
            ringrun_reduce_scatter(b, o, count, RINGRUN_INT32, RINGRUN_SUM)
        });
        expect_mismatch("reduce_scatter empty on one rank", n, || {
            ringrun_reduce_scatter(b, o, rank, RINGRUN_INT32, RINGRUN_SUM)
        });
        let op = if rank == 1 { RINGRUN_MAX } else { RINGRUN_SUM };
        expect_mismatch("reduce_scatter op", n, || {
            ringrun_reduce_scatter(b, o, 3, RINGRUN_INT32, op)
        });
    }
}

fn rank_size_epoch_answer_while_a_collective_runs(rank: usize) {
    let done = Arc::new(AtomicBool::new(false));
    if rank != 0 {
        // Rank 0's barrier waits for this one.
        thread::sleep(Duration::from_millis(1500));
        assert_eq!(ringrun_barrier(), OK, "{}", last_error());
        return;
    }
    let flag = done.clone();
    let collective = thread::spawn(move || {
        let status = ringrun_barrier();
        flag.store(true, Ordering::SeqCst);
        (status, last_error())
    });
    thread::sleep(Duration::from_millis(300));
    let (mut r, mut s, mut e) = (-1, -1, 0u64);
    let started = Instant::now();
    // SAFETY: valid out-pointers.
    unsafe {
        assert_eq!(ringrun_rank(&mut r), OK);
        assert_eq!(ringrun_size(&mut s), OK);
        assert_eq!(ringrun_epoch(&mut e), OK);
        let mut init = 0;
        assert_eq!(ringrun_initialized(&mut init), OK);
        assert_eq!(init, 1);
    }
    let took = started.elapsed();
    assert!(
        !done.load(Ordering::SeqCst),
        "the barrier should still be waiting"
    );
    assert!(
        took < Duration::from_millis(200),
        "rank/size/epoch took {took:?}"
    );
    assert_eq!((r, s), (0, N as c_int));
    assert!(e >= 1);
    let (status, error) = collective.join().unwrap();
    assert_eq!(status, OK, "{error}");
}
