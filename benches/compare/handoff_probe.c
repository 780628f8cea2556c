/* Which speed mode the machine is in: how fast one thread hands data to another through a
 * cache-resident ring, next to how fast one thread copies on its own.
 *
 * On the shared 2-vCPU machines this project benchmarks on, the handoff rate switches from one
 * second to the next between ~15-25 GB/s and ~2-5 GB/s while the private copy rate stays put.
 * Every shared-memory allreduce (ringrun's and Open MPI's alike) slows with it, so
 * benches/compare/mid_rounds.sh runs this before and after each run and mid_table.py can
 * compare the two sides within one mode (docs/PERFORMANCE.md §6).
 *
 *   gcc -O2 -pthread benches/compare/handoff_probe.c -o /tmp/handoff_probe
 *   /tmp/handoff_probe 0.2      -> "handoff 21.3 GB/s  copy 38.0 GB/s"
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SLOT (256 << 10) /* one hand-off: ringrun's shm segment size */
#define SLOTS 4          /* ring of 1 MiB: stays in cache, so only the cross-core path counts */
#define SPAN 16          /* source and destination cycle over 4 MiB */

static char *ring, *src, *dst;
static _Atomic long head, tail;
static _Atomic int stop;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *producer(void *unused) {
    (void)unused;
    for (long h = 0; !atomic_load(&stop); h++) {
        while (h - atomic_load_explicit(&tail, memory_order_acquire) >= SLOTS)
            if (atomic_load(&stop)) return NULL;
        memcpy(ring + (h % SLOTS) * SLOT, src + (h % SPAN) * SLOT, SLOT);
        atomic_store_explicit(&head, h + 1, memory_order_release);
    }
    return NULL;
}

/* Consumer side, on the calling thread: bytes per second handed over in `secs`. */
static double handoff(double secs) {
    pthread_t p;
    pthread_create(&p, NULL, producer, NULL);
    long t = 0;
    double t0 = now(), spent = 0;
    while (spent < secs) {
        while (atomic_load_explicit(&head, memory_order_acquire) <= t)
            if (now() - t0 > 5 * secs) goto done; /* producer never scheduled: report what we have */
        memcpy(dst + (t % SPAN) * SLOT, ring + (t % SLOTS) * SLOT, SLOT);
        atomic_store_explicit(&tail, ++t, memory_order_release);
        spent = now() - t0;
    }
done:
    spent = now() - t0;
    atomic_store(&stop, 1);
    pthread_join(p, NULL);
    return (double)t * SLOT / spent;
}

static double private_copy(double secs) {
    long k = 0;
    double t0 = now();
    while (now() - t0 < secs) memcpy(dst + (k % SPAN) * SLOT, src + (k % SPAN) * SLOT, SLOT), k++;
    return (double)k * SLOT / (now() - t0);
}

int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 0.2;
    ring = aligned_alloc(4096, SLOTS * SLOT);
    src = aligned_alloc(4096, SPAN * SLOT);
    dst = aligned_alloc(4096, SPAN * SLOT);
    if (!ring || !src || !dst) return 1;
    memset(ring, 0, SLOTS * SLOT);
    memset(src, 1, SPAN * SLOT);
    memset(dst, 0, SPAN * SLOT);
    double h = handoff(secs), c = private_copy(secs / 2);
    printf("handoff %.1f GB/s  copy %.1f GB/s\n", h / 1e9, c / 1e9);
    return 0;
}
