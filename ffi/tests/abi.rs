//! The ABI in one process: status codes, argument checks, the per-thread last error, no
//! panic across the boundary, and a one-member group's collectives, commit and restore.
//! One test function: the group is process-global, so its phases must not interleave.

// Calling the C ABI from Rust is unsafe by nature; this crate opts out (ARCHITECTURE.md).
#![allow(unsafe_code)]

use std::{
    ffi::{CStr, c_int, c_void},
    ptr::{null, null_mut},
};

use ringrun::*;

const OK: c_int = ringrun_status_t::RINGRUN_OK as c_int;
const INVALID: c_int = ringrun_status_t::RINGRUN_INVALID_ARGUMENT as c_int;
const NOT_INIT: c_int = ringrun_status_t::RINGRUN_NOT_INITIALIZED as c_int;
const INTERNAL: c_int = ringrun_status_t::RINGRUN_INTERNAL as c_int;

fn last_error() -> String {
    // SAFETY: the library returns a valid NUL-terminated string, never NULL.
    unsafe { CStr::from_ptr(ringrun_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn config(secret: &CStr) -> ringrun_config_t {
    ringrun_config_t {
        secret: secret.as_ptr(),
        run_id: c"ffi-abi-test".as_ptr(),
        node_id: std::process::id() as u64,
        bind: null(),
        member_port: 0,
        seeds: null(),
        min_size: 1,
        max_size: 0,
        initial_size: 1,
        op_timeout_ms: 5000,
        restore_timeout_ms: 10000,
        checkpoint_dir: null(),
        transport: null(),
    }
}

fn ptr<T>(v: &mut [T]) -> *mut c_void {
    v.as_mut_ptr().cast()
}

#[test]
fn abi() {
    assert_eq!(ringrun_abi_version(), RINGRUN_ABI_VERSION);
    assert_eq!(OK, 0);

    // A panic inside an entry point becomes RINGRUN_INTERNAL with its message.
    assert_eq!(guard(|| panic!("boom")), INTERNAL);
    assert!(last_error().contains("boom"), "{}", last_error());
    assert_eq!(guard(|| Ok(())), OK);
    assert_eq!(last_error(), "");

    // Before init.
    let mut rank: c_int = -1;
    // SAFETY: valid out-pointers and buffers throughout this test.
    unsafe {
        assert_eq!(ringrun_rank(&mut rank), NOT_INIT);
        assert!(last_error().contains("not initialised"));
        assert_eq!(ringrun_barrier(), NOT_INIT);
        assert_eq!(ringrun_finalize(), OK, "finalize is idempotent");
        let mut init = 7;
        assert_eq!(ringrun_initialized(&mut init), OK);
        assert_eq!(init, 0);
        // Argument checks come first: a bad pointer is invalid even without a group.
        assert_eq!(ringrun_rank(null_mut()), NOT_INIT);
        assert_eq!(
            ringrun_allreduce(null(), null_mut(), 4, RINGRUN_FLOAT32, RINGRUN_SUM),
            INVALID
        );
        assert_eq!(
            ringrun_reduce_scatter(null(), null_mut(), 4, RINGRUN_FLOAT32, RINGRUN_SUM),
            INVALID
        );
        assert_eq!(ringrun_init_config(null()), INVALID);
        let mut bad = config(c"short");
        assert_eq!(ringrun_init_config(&bad), INVALID);
        assert!(last_error().contains("16 bytes"), "{}", last_error());
        let mut pigeon = config(c"ffi-abi-test-secret-0123456789");
        pigeon.transport = c"pigeon".as_ptr();
        assert_eq!(ringrun_init_config(&pigeon), INVALID);
        let e = last_error();
        assert!(
            e.contains("pigeon") && e.contains("auto, tcp, quic, shm, nccl"),
            "{e}"
        );
        bad.secret = null();
        assert_eq!(ringrun_init_config(&bad), INVALID);

        // The last error is per thread.
        std::thread::spawn(|| assert_eq!(ringrun_barrier(), NOT_INIT))
            .join()
            .unwrap();
        assert!(last_error().contains("secret"), "{}", last_error());
    }

    // A one-member group.
    let cfg = config(c"ffi-abi-test-secret-0123456789");
    // SAFETY: as above.
    unsafe {
        assert_eq!(ringrun_init_config(&cfg), OK, "{}", last_error());
        assert_eq!(ringrun_init_config(&cfg), INVALID, "double init");
        let (mut size, mut epoch) = (0, 0u64);
        assert_eq!(ringrun_rank(&mut rank), OK);
        assert_eq!(ringrun_size(&mut size), OK);
        assert_eq!(ringrun_epoch(&mut epoch), OK);
        assert_eq!((rank, size), (0, 1));
        assert!(epoch >= 1);
        let mut step = 0u64;
        let mut len = 1usize;
        assert_eq!(ringrun_restore(&mut step, &mut len), OK);
        assert_eq!((step, len), (RINGRUN_NO_STATE, 0));

        // Every dtype and op, in place and out of place.
        let mut words = [0u64; 16];
        for dt in RINGRUN_FLOAT32..=RINGRUN_INT64 {
            for op in RINGRUN_SUM..=RINGRUN_AVG {
                let p = ptr(&mut words);
                assert_eq!(ringrun_allreduce(p, p, 4, dt, op), OK, "{}", last_error());
                let q = ptr(&mut words[8..]);
                assert_eq!(ringrun_allreduce(p, q, 4, dt, op), OK, "{}", last_error());
            }
        }
        let mut f = [1.5f32, -2.0, 3.25];
        let mut out = [0f32; 3];
        let fp = ptr(&mut f);
        assert_eq!(
            ringrun_allreduce(fp, ptr(&mut out), 3, RINGRUN_FLOAT32, RINGRUN_AVG),
            OK
        );
        assert_eq!(out, f);

        // Bad arguments: nothing crashes, every one is RINGRUN_INVALID_ARGUMENT.
        let odd = fp.cast::<u8>().add(1).cast::<c_void>();
        assert_eq!(
            ringrun_allreduce(odd, odd, 1, RINGRUN_FLOAT32, RINGRUN_SUM),
            INVALID
        );
        assert!(last_error().contains("aligned"), "{}", last_error());
        assert_eq!(ringrun_allreduce(fp, fp, 3, 99, RINGRUN_SUM), INVALID);
        assert_eq!(ringrun_allreduce(fp, fp, 3, RINGRUN_FLOAT32, -1), INVALID);
        let shifted = fp.cast::<f32>().add(1).cast::<c_void>();
        assert_eq!(
            ringrun_allreduce(fp, shifted, 2, RINGRUN_FLOAT32, RINGRUN_SUM),
            INVALID
        );
        assert_eq!(
            ringrun_allreduce(fp, fp, usize::MAX, RINGRUN_FLOAT64, RINGRUN_SUM),
            INVALID
        );
        assert_eq!(ringrun_broadcast(fp, 3, RINGRUN_FLOAT32, 1), INVALID);
        assert_eq!(ringrun_broadcast(fp, 3, RINGRUN_FLOAT32, -1), INVALID);
        assert_eq!(ringrun_broadcast(fp, 3, RINGRUN_FLOAT32, 0), OK);
        assert_eq!(ringrun_allgather(fp, fp, 3, RINGRUN_FLOAT32), INVALID);
        assert_eq!(ringrun_allgather(fp, ptr(&mut out), 3, RINGRUN_FLOAT32), OK);
        assert_eq!(out, f);
        out = [0.0; 3];
        assert_eq!(ringrun_alltoall(fp, fp, 3, RINGRUN_FLOAT32), INVALID);
        assert_eq!(ringrun_alltoall(fp, ptr(&mut out), 3, RINGRUN_FLOAT32), OK);
        assert_eq!(out, f, "a group of one sends its one block to itself");
        out = [0.0; 3];
        for op in RINGRUN_SUM..=RINGRUN_AVG {
            let status = ringrun_reduce_scatter(fp, ptr(&mut out), 3, RINGRUN_FLOAT32, op);
            assert_eq!(status, OK, "{}", last_error());
            assert_eq!(out, f, "a group of one keeps its one block");
        }
        assert_eq!(
            ringrun_reduce_scatter(fp, fp, 3, RINGRUN_FLOAT32, RINGRUN_SUM),
            INVALID
        );
        assert_eq!(
            ringrun_reduce_scatter(fp, ptr(&mut out), 3, RINGRUN_FLOAT32, 9),
            INVALID
        );
        assert_eq!(ringrun_rank(null_mut()), INVALID);
        assert_eq!(ringrun_commit(1, null(), 8), INVALID);

        // Grouped allreduce: overlapping buffers are refused.
        let mut a = [1i32, 2, 3];
        let mut b = [4i32, 5];
        let bufs = [ptr(&mut a), ptr(&mut b)];
        assert_eq!(
            ringrun_allreduce_many(
                bufs.as_ptr(),
                [3, 2].as_ptr(),
                2,
                RINGRUN_INT32,
                RINGRUN_MAX
            ),
            OK
        );
        assert_eq!((a, b), ([1, 2, 3], [4, 5]));
        let same = [bufs[0], bufs[0]];
        assert_eq!(
            ringrun_allreduce_many(
                same.as_ptr(),
                [3, 3].as_ptr(),
                2,
                RINGRUN_INT32,
                RINGRUN_MAX
            ),
            INVALID
        );
        assert_eq!(
            ringrun_allreduce_many(null(), null(), 0, RINGRUN_INT32, RINGRUN_SUM),
            OK
        );
        assert_eq!(ringrun_barrier(), OK);

        // Commit, restore, copy.
        let blob = b"model state after step 7";
        assert_eq!(ringrun_commit(7, blob.as_ptr().cast(), blob.len()), OK);
        assert_eq!(ringrun_restore(&mut step, &mut len), OK);
        assert_eq!((step, len), (7, blob.len()));
        let mut back = vec![0u8; len];
        assert_eq!(ringrun_restored_copy(ptr(&mut back), 3), INVALID);
        assert_eq!(ringrun_restored_copy(ptr(&mut back), len), OK);
        assert_eq!(&back[..], blob);

        // The fault report (empty: nothing failed), sized first.
        let mut count = 9usize;
        assert_eq!(ringrun_fault_count(&mut count), OK);
        assert_eq!(count, 0);
        assert_eq!(ringrun_faults_json(null_mut(), 0, &mut len), OK);
        assert_eq!(len, 2);
        let mut json = [0u8; 8];
        assert_eq!(
            ringrun_faults_json(json.as_mut_ptr().cast(), 2, &mut len),
            INVALID
        );
        assert_eq!(
            ringrun_faults_json(json.as_mut_ptr().cast(), 8, &mut len),
            OK
        );
        assert_eq!(&json[..3], b"[]\0");
        assert_eq!(ringrun_set_step(8), OK);

        sampler_in_a_group_of_one();

        // Scalars for the dashboard.
        let names = [c"loss".as_ptr(), c"lr".as_ptr()];
        assert_eq!(ringrun_log(3, names.as_ptr(), [0.5, 0.1].as_ptr(), 2), OK);
        assert_eq!(ringrun_log(3, null(), null(), 0), OK);
        assert_eq!(ringrun_log(3, null(), [0.5].as_ptr(), 1), INVALID);
        let nulls = [null()];
        assert_eq!(ringrun_log(3, nulls.as_ptr(), [0.5].as_ptr(), 1), INVALID);

        assert_eq!(ringrun_finalize(), OK);
        assert_eq!(ringrun_barrier(), NOT_INIT);
        assert_eq!(
            ringrun_log(3, names.as_ptr(), [0.5, 0.1].as_ptr(), 2),
            NOT_INIT
        );
    }
}

/// The sampler: argument checks, the whole global batch for the one rank, peeking without
/// moving, offsets set and read back, and no move on a refused call.
unsafe fn sampler_in_a_group_of_one() {
    let mut s = null_mut();
    // SAFETY (all calls): pointers to live locals, sizes matching.
    unsafe {
        assert_eq!(ringrun_sampler_new(10, 0, 1, 1, &mut s), INVALID);
        assert!(last_error().contains("global_batch"), "{}", last_error());
        assert_eq!(ringrun_sampler_new(10, 11, 1, 1, &mut s), INVALID);
        assert_eq!(ringrun_sampler_new(10, 4, 1, 1, null_mut()), INVALID);
        assert_eq!(ringrun_sampler_new(10, 4, 1, 1, &mut s), OK);
        let (mut out, mut n, mut at) = ([0i64; 4], 0usize, 0u64);
        assert_eq!(
            ringrun_sampler_next(null_mut(), out.as_mut_ptr(), 4, &mut n),
            INVALID
        );
        assert_eq!(
            ringrun_sampler_next(s, out.as_mut_ptr(), 3, &mut n),
            INVALID
        );
        assert_eq!(ringrun_sampler_offset(s, &mut at), OK);
        assert_eq!(at, 0, "a refused call does not move the sampler");
        let mut peeked = [0i64; 4];
        assert_eq!(
            ringrun_sampler_peek(s, 0, peeked.as_mut_ptr(), 4, &mut n),
            OK
        );
        let mut seen = Vec::new();
        for _ in 0..5 {
            assert_eq!(ringrun_sampler_next(s, out.as_mut_ptr(), 4, &mut n), OK);
            assert_eq!(n, 4);
            seen.extend(out);
        }
        assert_eq!(seen[..4], peeked, "peek shows what next takes");
        let mut first: Vec<i64> = seen[..10].to_vec();
        first.sort_unstable();
        assert_eq!(
            first,
            (0..10).collect::<Vec<_>>(),
            "a pass reads each index once"
        );
        let mut epoch = 0u64;
        assert_eq!(ringrun_sampler_data_epoch(s, &mut epoch), OK);
        assert_eq!(epoch, 2);
        assert_eq!(ringrun_sampler_set_offset(s, 4), OK);
        assert_eq!(ringrun_sampler_next(s, out.as_mut_ptr(), 4, &mut n), OK);
        assert_eq!(
            out[..],
            seen[4..8],
            "a restored offset re-reads the same batch"
        );
        ringrun_sampler_free(s);
        ringrun_sampler_free(null_mut());
    }
}
