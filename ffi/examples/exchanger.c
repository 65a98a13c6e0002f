/* An FL client in C: creates the link, sends ROUNDS training tasks with a model and checks
 * each result (every element plus one, see agent.c), then says bye. Even rounds send the
 * model by copy from the caller's memory; odd rounds write it straight into a loan of
 * shared memory (a loan must fit in one record of the task ring: a model too large for it
 * goes by copy).
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

static void fill(float *v, size_t n, int64_t round) {
    for (size_t i = 0; i < n; i++) v[i] = (float)(i % 1000) * 0.5f + (float)round;
}

/* Sends the task by loan: *reply is NULL if the model does not fit in the ring. */
static shmex_status execute_by_loan(shmex_exchanger *exchanger, const shmex_headers *headers,
                                    size_t elements, const shmex_abort *abort_flag,
                                    shmex_reply **reply) {
    uint64_t weight_shape[2] = {elements / 16, 16}, bias_shape[1] = {16};
    shmex_tensor_spec layout[2] = {{"weight", SHMEX_DTYPE_F32, 2, weight_shape},
                                   {"bias", SHMEX_DTYPE_F32, 1, bias_shape}};
    shmex_loan_spec spec = {SHMEX_DATA_KIND_WEIGHTS, NULL, layout, 2};
    shmex_task_loan *loan = NULL;
    *reply = NULL;
    shmex_status st =
        shmex_exchanger_loan_task(exchanger, "train", headers, &spec, abort_flag, &loan);
    if (st == SHMEX_TOO_LARGE) return SHMEX_OK;
    if (st != SHMEX_OK) return st;
    for (size_t t = 0; t < 2; t++) {
        shmex_tensor_mut out; /* in shared memory: valid until execute or abandon */
        st = shmex_task_loan_tensor(loan, t, &out);
        if (st != SHMEX_OK) {
            shmex_task_loan_abandon(loan);
            return st;
        }
        fill(out.data, out.len / sizeof(float), headers->current_round);
    }
    return shmex_task_loan_execute(loan, abort_flag, reply); /* ends the loan */
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
        char task_id[32];
        snprintf(task_id, sizeof task_id, "task-%lld", (long long)round);
        shmex_headers headers = {task_id, round, rounds};
        shmex_reply *reply = NULL;
        if (round % 2 == 1) {
            st = execute_by_loan(exchanger, &headers, elements, abort_flag, &reply);
            if (st != SHMEX_OK) { failed = fail("loan", st); break; }
        }
        fill(weight, elements, round);
        fill(bias, 16, round);
        uint64_t weight_shape[2] = {elements / 16, 16}, bias_shape[1] = {16};
        shmex_tensor tensors[2] = {
            {"weight", SHMEX_DTYPE_F32, 2, weight_shape, weight, elements * sizeof(float)},
            {"bias", SHMEX_DTYPE_F32, 1, bias_shape, bias, sizeof bias},
        };
        shmex_data model = {SHMEX_DATA_KIND_WEIGHTS, NULL, tensors, 2};
        if (reply == NULL) /* an even round, or a model too large for a loan */
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
