/* A trainer in C: attaches to the exchanger's link, and for each task checks the model,
 * adds one to every weight, writing the result straight into a loan of shared memory, and
 * commits it, until the exchanger says bye.
 *
 *   cc -std=c11 agent.c -o agent $(pkg-config --cflags --libs shmex)
 *   ./agent SITE AGENT_ID
 *
 * The contract of ffi/tests/run.sh: f32 tensors whose element i in round r is
 * (i % 1000) * 0.5 + r; the result is each element plus one. */
#include <shmex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what, shmex_status status) {
    fprintf(stderr, "agent.c: %s: %s: %s\n", what, shmex_status_name(status),
            shmex_last_error_message());
    return 1;
}

/* The task's round, from meta {"current_round": r, ...} (a real trainer would use a JSON
 * parser). */
static long round_of(const char *meta) {
    const char *at = strstr(meta, "\"current_round\":");
    return at ? strtol(at + strlen("\"current_round\":"), NULL, 10) : -1;
}

/* Answers by loan: the result's tensors are reserved in shared memory (same names, dtypes
 * and shapes as the task's) and the updated model is written straight into them; commit
 * sends it without a copy on this side. */
static int answer(shmex_agent *agent, shmex_task *task) {
    const char *meta = NULL;
    size_t count = 0;
    shmex_status st = shmex_task_meta(task, &meta);
    if (st == SHMEX_OK) st = shmex_task_tensor_count(task, &count);
    if (st != SHMEX_OK) return fail("reading the task", st);
    long round = round_of(meta);
    shmex_tensor_spec *layout = calloc(count ? count : 1, sizeof *layout);
    if (layout == NULL) return 1;
    for (size_t t = 0; t < count; t++) {
        shmex_tensor in;
        st = shmex_task_tensor(task, t, &in); /* a view in place: valid until task_free */
        if (st != SHMEX_OK) { free(layout); return fail("reading a tensor", st); }
        layout[t] = (shmex_tensor_spec){in.name, in.dtype, in.ndim, in.shape};
    }
    shmex_loan_spec spec = {SHMEX_DATA_KIND_WEIGHTS, "{\"NUM_STEPS_CURRENT_ROUND\": 1}", layout,
                            count};
    shmex_result_loan *loan = NULL;
    st = shmex_agent_loan_result(agent, &spec, &loan);
    free(layout); /* the spec is read during the call only */
    if (st != SHMEX_OK) return fail("loan_result", st);
    int bad = 0;
    for (size_t t = 0; t < count && !bad; t++) {
        shmex_tensor in;
        shmex_tensor_mut out; /* in shared memory: valid until commit or abandon */
        st = shmex_task_tensor(task, t, &in);
        if (st == SHMEX_OK) st = shmex_result_loan_tensor(loan, t, &out);
        if (st != SHMEX_OK || in.dtype != SHMEX_DTYPE_F32) { bad = 1; break; }
        const float *w = in.data;
        float *updated = out.data;
        for (size_t i = 0; i < in.len / sizeof(float); i++) {
            if (w[i] != (float)(i % 1000) * 0.5f + (float)round) {
                fprintf(stderr, "agent.c: %s[%zu] = %g is not the model\n", in.name, i, w[i]);
                bad = 1;
                break;
            }
            updated[i] = w[i] + 1.0f; /* the "training", written in place */
        }
    }
    if (bad) {
        shmex_result_loan_abandon(loan); /* nothing is sent */
        return 1;
    }
    bool accepted = false;
    st = shmex_result_loan_commit(loan, SHMEX_RC_OK, &accepted); /* ends the loan */
    if (st != SHMEX_OK) return fail("commit", st);
    return !accepted;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s SITE AGENT_ID\n", argv[0]);
        return 2;
    }
    shmex_agent *agent = NULL;
    shmex_status st = shmex_agent_attach(argv[1], argv[2], NULL, &agent);
    if (st != SHMEX_OK) return fail("attach", st);
    int tasks = 0, failed = 0;
    for (;;) {
        shmex_task *task = NULL;
        st = shmex_agent_get_task(agent, 120000, &task);
        if (st == SHMEX_CLOSED) break; /* the exchanger said bye */
        if (st != SHMEX_OK) { failed = fail("get_task", st); break; }
        failed = answer(agent, task);
        shmex_task_free(task);
        if (failed) break;
        tasks++;
    }
    shmex_agent_free(agent);
    if (!failed) printf("C agent: %d tasks checked and answered\n", tasks);
    return failed;
}
