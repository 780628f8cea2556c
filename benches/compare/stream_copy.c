/* One-thread copy speed with ordinary stores (memcpy) and with streaming stores, which write
 * whole lines to memory without reading them first: what the shared-memory arena's
 * `Store::Streaming` relies on (docs/PERFORMANCE.md §6).
 *
 *   gcc -O2 benches/compare/stream_copy.c -o /tmp/stream_copy && /tmp/stream_copy 64   (MiB)
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Copies n bytes (a multiple of 64; dst 16-byte aligned) with movntdq, then fences. */
static void stream_copy(char *dst, const char *src, size_t n) {
    for (size_t i = 0; i < n; i += 64) {
        for (size_t k = 0; k < 64; k += 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)(src + i + k));
            _mm_stream_si128((__m128i *)(dst + i + k), v);
        }
    }
    _mm_sfence();
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s MIB\n", argv[0]);
        return 2;
    }
    size_t n = (size_t)atoi(argv[1]) << 20;
    char *src = aligned_alloc(64, n), *dst = aligned_alloc(64, n);
    if (!src || !dst || n == 0) {
        fprintf(stderr, "cannot allocate %s MiB twice\n", argv[1]);
        return 1;
    }
    memset(src, 1, n);
    memset(dst, 2, n);
    const int reps = 10;
    for (int round = 0; round < 3; round++) {
        double t = now();
        for (int r = 0; r < reps; r++) memcpy(dst, src, n);
        double plain = now() - t;
        t = now();
        for (int r = 0; r < reps; r++) stream_copy(dst, src, n);
        double streaming = now() - t;
        printf("%zu MiB memcpy %.2f GB/s  streaming %.2f GB/s\n", n >> 20,
               reps * n / plain / 1e9, reps * n / streaming / 1e9);
    }
    free(src);
    free(dst);
    return 0;
}
