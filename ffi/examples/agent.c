/* A trainer in C: attaches to the exchanger's link, and for each task checks the model,
 * adds one to every weight and submits the result (by copy), until the exchanger says bye.
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

static int answer(shmex_agent *agent, shmex_task *task) {
    const char *meta = NULL;
    size_t count = 0;
    shmex_status st = shmex_task_meta(task, &meta);
    if (st == SHMEX_OK) st = shmex_task_tensor_count(task, &count);
    if (st != SHMEX_OK) return fail("reading the task", st);
    long round = round_of(meta);
    shmex_tensor *out = calloc(count, sizeof *out);
    float **buffers = calloc(count, sizeof *buffers);
    int bad = (out == NULL || buffers == NULL);
    for (size_t t = 0; t < count && !bad; t++) {
        shmex_tensor in;
        st = shmex_task_tensor(task, t, &in); /* a view in place: valid until task_free */
        if (st != SHMEX_OK || in.dtype != SHMEX_DTYPE_F32) { bad = 1; break; }
        size_t n = in.len / sizeof(float);
        const float *w = in.data;
        buffers[t] = malloc(in.len ? in.len : 1);
        if (buffers[t] == NULL) { bad = 1; break; }
        for (size_t i = 0; i < n; i++) {
            if (w[i] != (float)(i % 1000) * 0.5f + (float)round) {
                fprintf(stderr, "agent.c: %s[%zu] = %g is not the model\n", in.name, i, w[i]);
                bad = 1;
                break;
            }
            buffers[t][i] = w[i] + 1.0f; /* the "training" */
        }
        out[t] = in;              /* same name, dtype and shape ... */
        out[t].data = buffers[t]; /* ... new values */
    }
    bool accepted = false;
    if (!bad) {
        shmex_data result = {SHMEX_DATA_KIND_WEIGHTS, "{\"NUM_STEPS_CURRENT_ROUND\": 1}", out,
                             count};
        st = shmex_agent_submit_result(agent, &result, SHMEX_RC_OK, &accepted);
        if (st != SHMEX_OK) bad = fail("submitting", st);
    }
    for (size_t t = 0; buffers != NULL && t < count; t++) free(buffers[t]);
    free(buffers);
    free(out);
    return bad || !accepted;
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
