/* memcpy against a plain 16-byte vector loop, for destinations 0-100 bytes above the source
 * modulo 4 KiB: glibc's `rep movsb` path slows sixteenfold at 1-15 bytes on AMD Zen 4, which is
 * why the shared-memory transport copies through `transport/shm/memcpy.rs`.
 *
 *   gcc -O2 benches/compare/skew_copy.c -o /tmp/skew_copy && /tmp/skew_copy 65536
 */
#include <emmintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* What memcpy.rs does in the slow band: 64 bytes per step, unaligned loads and stores. */
__attribute__((noinline)) static void vector_copy(char *d, const char *s, size_t n) {
    for (size_t i = 0; i + 64 <= n; i += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(s + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(s + i + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(s + i + 32));
        __m128i e = _mm_loadu_si128((const __m128i *)(s + i + 48));
        _mm_storeu_si128((__m128i *)(d + i), a);
        _mm_storeu_si128((__m128i *)(d + i + 16), b);
        _mm_storeu_si128((__m128i *)(d + i + 32), c);
        _mm_storeu_si128((__m128i *)(d + i + 48), e);
    }
}

static double rate(int vec, char *d, const char *s, size_t n) {
    long k = 0;
    double t0 = now();
    while (now() - t0 < 0.1) vec ? vector_copy(d, s, n) : (void)memcpy(d, s, n), k++;
    return (double)n * k / (now() - t0) / 1e9;
}

int main(int argc, char **argv) {
    size_t n = argc > 1 ? strtoull(argv[1], 0, 0) : 65536;
    char *s = aligned_alloc(4096, n + 8192), *d = aligned_alloc(4096, n + 8192);
    if (!s || !d) return 1;
    memset(s, 1, n + 8192);
    memset(d, 2, n + 8192);
    int skews[] = {0, 1, 8, 15, 16, 48, 100};
    printf("%zu-byte copies, GB/s\nskew  memcpy  vector\n", n);
    for (int i = 0; i < 7; i++)
        printf("%4d  %6.1f  %6.1f\n", skews[i], rate(0, d + skews[i], s, n), rate(1, d + skews[i], s, n));
    return 0;
}
