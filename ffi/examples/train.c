/*
 * A small elastic data-parallel trainer over the ringrun C ABI.
 *
 *   train STEPS STEP_MS     one worker; joins from the RINGRUN_* environment
 *   train --reference STEPS the fault-free result, computed alone without ringrun
 *
 * SAMPLES samples are split round-robin over the ranks; every step sums their gradients with
 * ringrun_allreduce and commits (step, weights). Gradients are small integers held in doubles,
 * so sums are exact in any order: the final weights do not depend on the world size or on
 * faults, and every worker's "final" line must equal the reference's. On
 * RINGRUN_MEMBERSHIP_CHANGED / PEER_LOST / TIMEOUT it calls ringrun_restore, reloads the last
 * commit and redoes the step: the three lines a training loop needs.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ringrun.h"

#define DIM 32
#define SAMPLES 48

struct state {
    uint64_t step;
    double w[DIM];
};

static void die(const char *what, int rc) {
    fprintf(stderr, "train: %s failed: status %d: %s\n", what, rc, ringrun_last_error());
    exit(1);
}

static int recoverable(int rc) {
    return rc == RINGRUN_MEMBERSHIP_CHANGED || rc == RINGRUN_PEER_LOST || rc == RINGRUN_TIMEOUT;
}

/* The gradient of one sample: an integer in [-50, 50], a function of the weights. */
static double grad(int sample, int j, uint64_t step, const double *w) {
    long long v = ((long long)sample * 31 + j * 17 + (long long)step * 7 + (long long)w[j]) % 101;
    if (v < 0) v += 101;
    return (double)(v - 50);
}

/* Sums the gradients of this rank's samples into g. */
static void local_grad(double *g, const double *w, uint64_t step, int rank, int size) {
    memset(g, 0, sizeof(double) * DIM);
    for (int i = rank; i < SAMPLES; i += size)
        for (int j = 0; j < DIM; j++) g[j] += grad(i, j, step, w);
}

static void apply(double *w, const double *g) {
    for (int j = 0; j < DIM; j++) w[j] += g[j];
}

/* FNV-1a over the weights' bytes. */
static uint64_t digest(const double *w) {
    uint64_t h = 1469598103934665603ULL;
    const unsigned char *p = (const unsigned char *)w;
    for (size_t i = 0; i < sizeof(double) * DIM; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

/* Restores the last commit: returns the next step to run and fills w. */
static uint64_t resume(double *w) {
    uint64_t step;
    size_t size;
    int rc = ringrun_restore(&step, &size);
    if (rc != RINGRUN_OK) die("ringrun_restore", rc);
    if (step == RINGRUN_NO_STATE) {
        memset(w, 0, sizeof(double) * DIM);
        return 0;
    }
    struct state st;
    if (size != sizeof st) {
        fprintf(stderr, "train: restored %zu bytes, expected %zu\n", size, sizeof st);
        exit(1);
    }
    rc = ringrun_restored_copy(&st, sizeof st);
    if (rc != RINGRUN_OK) die("ringrun_restored_copy", rc);
    memcpy(w, st.w, sizeof st.w);
    return st.step + 1;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--reference") == 0) {
        uint64_t steps = strtoull(argv[2], NULL, 10);
        double w[DIM] = {0}, g[DIM];
        for (uint64_t s = 0; s < steps; s++) {
            local_grad(g, w, s, 0, 1);
            apply(w, g);
        }
        printf("final %016" PRIx64 "\n", digest(w));
        return 0;
    }
    if (argc != 3) {
        fprintf(stderr, "usage: train STEPS STEP_MS | train --reference STEPS\n");
        return 2;
    }
    uint64_t steps = strtoull(argv[1], NULL, 10);
    unsigned step_ms = (unsigned)atoi(argv[2]);
    if (ringrun_abi_version() != RINGRUN_ABI_VERSION) {
        fprintf(stderr, "train: header and library ABI versions differ\n");
        return 1;
    }
    int rc = ringrun_init();
    if (rc != RINGRUN_OK) die("ringrun_init", rc);

    double w[DIM], g[DIM];
    uint64_t next = resume(w);
    while (next < steps) {
        int rank, size;
        uint64_t epoch;
        if ((rc = ringrun_rank(&rank)) || (rc = ringrun_size(&size)) ||
            (rc = ringrun_epoch(&epoch)))
            die("rank/size/epoch", rc);
        ringrun_set_step(next);

        struct state st = {.step = next};
        memcpy(st.w, w, sizeof w);
        local_grad(g, w, next, rank, size);
        rc = ringrun_allreduce(g, g, DIM, RINGRUN_FLOAT64, RINGRUN_SUM);
        if (rc == RINGRUN_OK) {
            apply(st.w, g);
            rc = ringrun_commit(next, &st, sizeof st);
        }
        if (rc == RINGRUN_OK) {
            memcpy(w, st.w, sizeof w);
            printf("step %" PRIu64 " size %d epoch %" PRIu64 "\n", next, size, epoch);
            fflush(stdout);
            next++;
        } else if (recoverable(rc)) {
            fprintf(stderr, "train: %s; restoring\n", ringrun_last_error());
            next = resume(w);
            printf("restored to step %" PRIu64 "\n", next);
            fflush(stdout);
        } else {
            die("step", rc);
        }
        if (step_ms) usleep(step_ms * 1000);
    }
    /* The last commit is the job's final state: a worker restarted after this gets it rather
       than training again. Its failure loses nothing (the state is committed). */
    if ((rc = ringrun_finish()) != RINGRUN_OK)
        fprintf(stderr, "train: finish: %s\n", ringrun_last_error());

    size_t len = 0;
    if ((rc = ringrun_faults_json(NULL, 0, &len))) die("ringrun_faults_json", rc);
    char *json = malloc(len + 1);
    if (!json || (rc = ringrun_faults_json(json, len + 1, &len))) die("ringrun_faults_json", rc);
    printf("faults %s\n", json);
    free(json);
    printf("final %016" PRIx64 "\n", digest(w));
    fflush(stdout);
    ringrun_finalize();
    return 0;
}
