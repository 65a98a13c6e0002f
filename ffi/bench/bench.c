/* The C side of ffi/bench/run.sh (a benchmark, not a test; see ffi-peer's bench modes for
 * the Rust side, which does the same work):
 *   bench agent SITE AGENT_ID
 *       answers each task by loan, writing every f32 element plus one into the loan
 *   bench exchanger SITE AGENT_ID LABEL WARMUP ROUNDS BYTES RING
 *       sends WARMUP + ROUNDS tasks of one f32 tensor of BYTES bytes by copy over rings of
 *       RING bytes, times each round trip, prints RESULT LABEL median_us=.. p99_us=.. */
#define _POSIX_C_SOURCE 200809L
#include <shmex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int fail(const char *what, shmex_status status) {
    fprintf(stderr, "bench.c: %s: %s: %s\n", what, shmex_status_name(status),
            shmex_last_error_message());
    return 1;
}

static int answer(shmex_agent *agent, shmex_task *task) {
    size_t count = 0;
    shmex_status st = shmex_task_tensor_count(task, &count);
    if (st != SHMEX_OK || count > 16) return fail("tensor_count", st);
    shmex_tensor in[16];
    shmex_tensor_spec layout[16];
    for (size_t t = 0; t < count; t++) {
        st = shmex_task_tensor(task, t, &in[t]);
        if (st != SHMEX_OK || in[t].dtype != SHMEX_DTYPE_F32) return fail("tensor", st);
        layout[t] = (shmex_tensor_spec){in[t].name, in[t].dtype, in[t].ndim, in[t].shape};
    }
    shmex_loan_spec spec = {SHMEX_DATA_KIND_WEIGHTS, "{\"NUM_STEPS_CURRENT_ROUND\": 1}", layout,
                            count};
    shmex_result_loan *loan = NULL;
    st = shmex_agent_loan_result(agent, &spec, &loan);
    if (st != SHMEX_OK) return fail("loan_result", st);
    for (size_t t = 0; t < count; t++) {
        shmex_tensor_mut out;
        st = shmex_result_loan_tensor(loan, t, &out);
        if (st != SHMEX_OK) {
            shmex_result_loan_abandon(loan);
            return fail("loan tensor", st);
        }
        const float *w = in[t].data;
        float *updated = out.data;
        size_t n = in[t].len / sizeof(float);
        for (size_t i = 0; i < n; i++) updated[i] = w[i] + 1.0f;
    }
    bool accepted = false;
    st = shmex_result_loan_commit(loan, SHMEX_RC_OK, &accepted);
    if (st != SHMEX_OK) return fail("commit", st);
    return !accepted;
}

static int agent_main(const char *site, const char *id) {
    shmex_agent *agent = NULL;
    shmex_status st = shmex_agent_attach(site, id, NULL, &agent);
    if (st != SHMEX_OK) return fail("attach", st);
    int failed = 0;
    for (;;) {
        shmex_task *task = NULL;
        st = shmex_agent_get_task(agent, 120000, &task);
        if (st == SHMEX_CLOSED) break;
        if (st != SHMEX_OK) { failed = fail("get_task", st); break; }
        failed = answer(agent, task);
        shmex_task_free(task);
        if (failed) break;
    }
    shmex_agent_free(agent);
    return failed;
}

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int exchanger_main(char **argv) {
    const char *label = argv[4];
    size_t warmup = strtoull(argv[5], NULL, 10), rounds = strtoull(argv[6], NULL, 10);
    size_t elements = strtoull(argv[7], NULL, 10) / sizeof(float);
    if (elements == 0) elements = 1;
    shmex_exchanger_options options;
    shmex_exchanger_options_default(&options);
    options.task_ring_capacity = options.result_ring_capacity = strtoull(argv[8], NULL, 10);
    shmex_exchanger *exchanger = NULL;
    shmex_status st = shmex_exchanger_create(argv[2], argv[3], &options, &exchanger);
    if (st != SHMEX_OK) return fail("create", st);
    float *model = malloc(elements * sizeof(float));
    double *times = malloc((rounds ? rounds : 1) * sizeof(double));
    int failed = model == NULL || times == NULL;
    for (size_t i = 0; i < elements && !failed; i++) model[i] = (float)(i % 1000) * 0.5f;
    uint64_t shape[1] = {elements};
    shmex_tensor tensor = {"weight", SHMEX_DTYPE_F32, 1, shape, model, elements * sizeof(float)};
    shmex_data task = {SHMEX_DATA_KIND_WEIGHTS, NULL, &tensor, 1};
    for (size_t round = 0; round < warmup + rounds && !failed; round++) {
        char task_id[32];
        snprintf(task_id, sizeof task_id, "task-%zu", round);
        shmex_headers headers = {task_id, -1, -1};
        shmex_reply *reply = NULL;
        double start = now_us();
        st = shmex_exchanger_execute(exchanger, "train", &headers, &task, NULL, &reply);
        double elapsed = now_us() - start;
        if (st != SHMEX_OK) { failed = fail("execute", st); break; }
        uint32_t rc = 99;
        shmex_tensor out;
        shmex_reply_rc(reply, &rc);
        if (rc != SHMEX_RC_OK || shmex_reply_tensor(reply, 0, &out) != SHMEX_OK ||
            out.len != tensor.len ||
            ((const float *)out.data)[elements - 1] != model[elements - 1] + 1.0f) {
            fprintf(stderr, "bench.c: round %zu: rc %u or not the update\n", round, rc);
            failed = 1;
        }
        shmex_reply_free(reply);
        if (round >= warmup) times[round - warmup] = elapsed;
    }
    if (!failed && rounds > 0) {
        qsort(times, rounds, sizeof *times, by_value);
        printf("RESULT %s median_us=%.3f p99_us=%.3f rounds=%zu\n", label,
               times[(size_t)((double)(rounds - 1) * 0.5 + 0.5)],
               times[(size_t)((double)(rounds - 1) * 0.99 + 0.5)], rounds);
    }
    free(model);
    free(times);
    shmex_exchanger_close(exchanger);
    shmex_exchanger_free(exchanger);
    return failed;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "agent") == 0) return agent_main(argv[2], argv[3]);
    if (argc == 9 && strcmp(argv[1], "exchanger") == 0) return exchanger_main(argv);
    fprintf(stderr,
            "usage: %s agent SITE AGENT_ID\n"
            "       %s exchanger SITE AGENT_ID LABEL WARMUP ROUNDS BYTES RING\n",
            argv[0], argv[0]);
    return 2;
}
