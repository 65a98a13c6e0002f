/* An FL client in C: creates the link, sends ROUNDS training tasks with a model and checks
 * each result (every element plus one, see agent.c), then says bye.
 *
 *   cc -std=c11 exchanger.c -o exchanger $(pkg-config --cflags --libs shmex)
 *   ./exchanger SITE AGENT_ID ROUNDS ELEMENTS
 */
#include <shmex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what, shmex_status status) {
    fprintf(stderr, "exchanger.c: %s: %s: %s\n", what, shmex_status_name(status),
            shmex_last_error_message());
    return 1;
}

static int check(const shmex_reply *reply, const char *name, size_t n, int64_t round) {
    shmex_tensor t;
    shmex_status st = shmex_reply_tensor_by_name(reply, name, &t);
    if (st != SHMEX_OK) return fail(name, st);
    const float *v = t.data; /* valid until shmex_reply_free */
    if (t.dtype != SHMEX_DTYPE_F32 || t.len != n * sizeof(float)) {
        fprintf(stderr, "exchanger.c: %s has dtype %u and %zu bytes\n", name, t.dtype, t.len);
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        if (v[i] != (float)(i % 1000) * 0.5f + (float)round + 1.0f) {
            fprintf(stderr, "exchanger.c: %s[%zu] = %g is not the update\n", name, i, v[i]);
            return 1;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s SITE AGENT_ID ROUNDS ELEMENTS\n", argv[0]);
        return 2;
    }
    int64_t rounds = strtoll(argv[3], NULL, 10);
    size_t elements = strtoull(argv[4], NULL, 10) / 16 * 16;
    shmex_exchanger_options options;
    shmex_exchanger_options_default(&options);
    options.result_timeout = 300.0; /* seconds; the default waits forever, as FLARE */
    shmex_exchanger *exchanger = NULL;
    shmex_status st = shmex_exchanger_create(argv[1], argv[2], &options, &exchanger);
    if (st != SHMEX_OK) return fail("create", st);
    shmex_abort *abort_flag = NULL; /* another thread may shmex_abort_trigger() it */
    shmex_abort_new(&abort_flag);
    float *weight = malloc(elements * sizeof(float) + 1);
    float bias[16];
    int failed = weight == NULL;
    for (int64_t round = 0; round < rounds && !failed; round++) {
        for (size_t i = 0; i < elements; i++) weight[i] = (float)(i % 1000) * 0.5f + (float)round;
        for (size_t i = 0; i < 16; i++) bias[i] = (float)i * 0.5f + (float)round;
        uint64_t weight_shape[2] = {elements / 16, 16}, bias_shape[1] = {16};
        shmex_tensor tensors[2] = {
            {"weight", SHMEX_DTYPE_F32, 2, weight_shape, weight, elements * sizeof(float)},
            {"bias", SHMEX_DTYPE_F32, 1, bias_shape, bias, sizeof bias},
        };
        shmex_data model = {SHMEX_DATA_KIND_WEIGHTS, NULL, tensors, 2};
        char task_id[32];
        snprintf(task_id, sizeof task_id, "task-%lld", (long long)round);
        shmex_headers headers = {task_id, round, rounds};
        shmex_reply *reply = NULL;
        st = shmex_exchanger_execute(exchanger, "train", &headers, &model, abort_flag, &reply);
        if (st != SHMEX_OK) { failed = fail("execute", st); break; }
        uint32_t rc = 0;
        shmex_reply_rc(reply, &rc);
        if (rc != SHMEX_RC_OK) {
            fprintf(stderr, "exchanger.c: round %lld: return code %u\n", (long long)round, rc);
            failed = 1;
        } else {
            failed = check(reply, "weight", elements, round) || check(reply, "bias", 16, round);
        }
        shmex_reply_free(reply);
    }
    free(weight);
    shmex_abort_free(abort_flag);
    st = shmex_exchanger_close(exchanger); /* says bye: the agent's get_task ends */
    if (st != SHMEX_OK && !failed) failed = fail("close", st);
    shmex_exchanger_free(exchanger);
    if (!failed)
        printf("C exchanger: %lld rounds of %zu + 16 elements checked\n", (long long)rounds,
               elements);
    return failed;
}
