/* Every function's error paths: NULL handles and pointers, invalid names, zero and huge
 * sizes, bad dtype/kind/rc numbers, double free and use after free or close, calls in the
 * wrong state. Each must return its defined status (never crash); run under valgrind by
 * tests/run.sh.  Usage: errors SITE  (a site name not used by anything else) */
#include <shmex.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static int failures = 0, checks = 0;

#define EXPECT(call, want)                                                                   \
    do {                                                                                     \
        shmex_status got_ = (call);                                                          \
        checks++;                                                                            \
        if (got_ != (want)) {                                                                \
            failures++;                                                                      \
            fprintf(stderr, "%s:%d: %s gave %s, expected %s (%s)\n", __FILE__, __LINE__,      \
                    #call, shmex_status_name(got_), shmex_status_name(want),                 \
                    shmex_last_error_message());                                             \
        }                                                                                    \
    } while (0)

static void misc(void) {
    size_t size = 0;
    EXPECT(shmex_dtype_size(SHMEX_DTYPE_F64, &size), SHMEX_OK);
    if (size != 8) failures++;
    EXPECT(shmex_dtype_size(0, &size), SHMEX_INVALID_ARGUMENT);
    EXPECT(shmex_dtype_size(99, &size), SHMEX_INVALID_ARGUMENT);
    EXPECT(shmex_dtype_size(SHMEX_DTYPE_F32, NULL), SHMEX_NULL_POINTER);
    if (strstr(shmex_last_error_message(), "out_size") == NULL) failures++;
    if (strcmp(shmex_status_name(SHMEX_CLOSED), "SHMEX_CLOSED") != 0) failures++;
    if (strcmp(shmex_status_name(12345), "SHMEX_UNKNOWN_STATUS") != 0) failures++;
    if (shmex_version()[0] == '\0') failures++;
    EXPECT(shmex_exchanger_options_default(NULL), SHMEX_NULL_POINTER);
    EXPECT(shmex_agent_options_default(NULL), SHMEX_NULL_POINTER);
}

static void null_handles(void) {
    shmex_task *task = NULL;
    shmex_reply *reply = NULL;
    const char *s = NULL;
    uint32_t u = 0;
    size_t n = 0;
    bool b = false;
    shmex_tensor t;
    EXPECT(shmex_agent_get_task(NULL, 0, &task), SHMEX_NULL_POINTER);
    EXPECT(shmex_agent_submit_result(NULL, NULL, SHMEX_RC_OK, &b), SHMEX_NULL_POINTER);
    EXPECT(shmex_agent_is_aborted(NULL, &b), SHMEX_NULL_POINTER);
    EXPECT(shmex_agent_status(NULL, &u), SHMEX_NULL_POINTER);
    EXPECT(shmex_agent_close(NULL), SHMEX_NULL_POINTER);
    EXPECT(shmex_exchanger_execute(NULL, "train", NULL, NULL, NULL, &reply), SHMEX_NULL_POINTER);
    EXPECT(shmex_exchanger_status(NULL, &u), SHMEX_NULL_POINTER);
    EXPECT(shmex_exchanger_close(NULL), SHMEX_NULL_POINTER);
    EXPECT(shmex_abort_trigger(NULL), SHMEX_NULL_POINTER);
    EXPECT(shmex_abort_is_set(NULL, &b), SHMEX_NULL_POINTER);
    EXPECT(shmex_task_id(NULL, &s), SHMEX_NULL_POINTER);
    EXPECT(shmex_task_name(NULL, &s), SHMEX_NULL_POINTER);
    EXPECT(shmex_task_meta(NULL, &s), SHMEX_NULL_POINTER);
    EXPECT(shmex_task_data_kind(NULL, &u), SHMEX_NULL_POINTER);
    EXPECT(shmex_task_tensor_count(NULL, &n), SHMEX_NULL_POINTER);
    EXPECT(shmex_task_tensor(NULL, 0, &t), SHMEX_NULL_POINTER);
    EXPECT(shmex_task_tensor_by_name(NULL, "w", &t), SHMEX_NULL_POINTER);
    EXPECT(shmex_task_is_in_place(NULL, &b), SHMEX_NULL_POINTER);
    EXPECT(shmex_reply_rc(NULL, &u), SHMEX_NULL_POINTER);
    EXPECT(shmex_reply_data_kind(NULL, &u), SHMEX_NULL_POINTER);
    EXPECT(shmex_reply_meta(NULL, &s), SHMEX_NULL_POINTER);
    EXPECT(shmex_reply_tensor_count(NULL, &n), SHMEX_NULL_POINTER);
    EXPECT(shmex_reply_tensor(NULL, 0, &t), SHMEX_NULL_POINTER);
    EXPECT(shmex_reply_tensor_by_name(NULL, "w", &t), SHMEX_NULL_POINTER);
    EXPECT(shmex_reply_is_in_place(NULL, &b), SHMEX_NULL_POINTER);
    /* free(NULL) is a no-op, as free(3) */
    EXPECT(shmex_agent_free(NULL), SHMEX_OK);
    EXPECT(shmex_exchanger_free(NULL), SHMEX_OK);
    EXPECT(shmex_task_free(NULL), SHMEX_OK);
    EXPECT(shmex_reply_free(NULL), SHMEX_OK);
    EXPECT(shmex_abort_free(NULL), SHMEX_OK);
    /* handles shmex never made */
    EXPECT(shmex_agent_close((shmex_agent *)(uintptr_t)0x1234), SHMEX_INVALID_HANDLE);
    EXPECT(shmex_task_free((shmex_task *)(uintptr_t)0x1234), SHMEX_INVALID_HANDLE);
    EXPECT(shmex_task_is_in_place((shmex_task *)(uintptr_t)0x1234, &b), SHMEX_INVALID_HANDLE);
}

static void names(void) {
    shmex_exchanger *ex = (shmex_exchanger *)(uintptr_t)1;
    shmex_agent *agent = (shmex_agent *)(uintptr_t)1;
    EXPECT(shmex_exchanger_create(NULL, "a", NULL, &ex), SHMEX_NULL_POINTER);
    if (ex != NULL) failures++; /* the out-handle is NULL on failure */
    EXPECT(shmex_exchanger_create("s", NULL, NULL, &ex), SHMEX_NULL_POINTER);
    EXPECT(shmex_exchanger_create("s", "a", NULL, NULL), SHMEX_NULL_POINTER);
    EXPECT(shmex_exchanger_create("", "a", NULL, &ex), SHMEX_INVALID_NAME);
    EXPECT(shmex_exchanger_create("s", "", NULL, &ex), SHMEX_INVALID_NAME);
    EXPECT(shmex_exchanger_create("a.b", "a", NULL, &ex), SHMEX_INVALID_NAME);
    EXPECT(shmex_exchanger_create("s", "a/b", NULL, &ex), SHMEX_INVALID_NAME);
    char long_name[400];
    memset(long_name, 'x', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    EXPECT(shmex_exchanger_create("s", long_name, NULL, &ex), SHMEX_INVALID_NAME);
    EXPECT(shmex_exchanger_create("s\xff", "a", NULL, &ex), SHMEX_INVALID_ARGUMENT);
    EXPECT(shmex_agent_attach("a.b", "a", NULL, &agent), SHMEX_INVALID_NAME);
    if (agent != NULL) failures++;
    EXPECT(shmex_agent_attach("s", "a", NULL, NULL), SHMEX_NULL_POINTER);
}

static void options(const char *site) {
    shmex_exchanger *ex = NULL;
    shmex_exchanger_options o;
    EXPECT(shmex_exchanger_options_default(&o), SHMEX_OK);
    /* the Rust defaults: receive_in_place off, expected_message_len unknown */
    if (o.receive_in_place != 0 || o.expected_message_len != 0 || o.reclaim_stale != 1)
        failures++;
    o.task_ring_capacity = 0;
    EXPECT(shmex_exchanger_create(site, "opt", &o, &ex), SHMEX_INVALID_CONFIG);
    shmex_exchanger_options_default(&o);
    o.result_ring_capacity = UINT64_MAX;
    EXPECT(shmex_exchanger_create(site, "opt", &o, &ex), SHMEX_INVALID_CONFIG);
    shmex_exchanger_options_default(&o);
    o.agent_ack_timeout = -1.0; /* only the optional timeouts may be negative */
    EXPECT(shmex_exchanger_create(site, "opt", &o, &ex), SHMEX_INVALID_CONFIG);
    shmex_exchanger_options_default(&o);
    o.on_agent_restart = 9;
    EXPECT(shmex_exchanger_create(site, "opt", &o, &ex), SHMEX_INVALID_CONFIG);
    shmex_agent_options a;
    EXPECT(shmex_agent_options_default(&a), SHMEX_OK);
    if (a.receive_in_place != 0 || a.expected_message_len != 0) failures++;
    a.attach_timeout = 0.2;
    shmex_agent *agent = NULL;
    /* no exchanger on this name: not found or timed out, within attach_timeout */
    shmex_status st = shmex_agent_attach(site, "nobody", &a, &agent);
    checks++;
    if (st != SHMEX_NOT_FOUND && st != SHMEX_TIMEOUT) {
        failures++;
        fprintf(stderr, "attach without exchanger gave %s\n", shmex_status_name(st));
    }
    a.heartbeat_interval = 0.0 / 0.0; /* NaN */
    EXPECT(shmex_agent_attach(site, "nobody", &a, &agent), SHMEX_INVALID_CONFIG);
}

/* A connected pair in one process: execute in the main thread needs an agent answering in
 * another; here only the calls that return without a peer's answer are exercised. */
static void protocol(const char *site) {
    shmex_exchanger *ex = NULL, *ex2 = NULL;
    shmex_exchanger_options o;
    shmex_exchanger_options_default(&o);
    o.task_ring_capacity = o.result_ring_capacity = 1 << 20;
    EXPECT(shmex_exchanger_create(site, "p", &o, &ex), SHMEX_OK);
    /* the name is taken by a live exchanger */
    shmex_status st = shmex_exchanger_create(site, "p", &o, &ex2);
    checks++;
    if (st != SHMEX_IN_USE && st != SHMEX_ALREADY_EXISTS) {
        failures++;
        fprintf(stderr, "second create gave %s\n", shmex_status_name(st));
    }
    shmex_agent_options ao;
    shmex_agent_options_default(&ao);
    ao.attach_timeout = 10.0;
    shmex_agent *agent = NULL;
    EXPECT(shmex_agent_attach(site, "p", &ao, &agent), SHMEX_OK);
    uint32_t state = 99;
    EXPECT(shmex_agent_status(agent, &state), SHMEX_OK);
    if (state == 99) failures++; /* written */
    EXPECT(shmex_agent_status(agent, NULL), SHMEX_NULL_POINTER);
    state = 99;
    EXPECT(shmex_exchanger_status(ex, &state), SHMEX_OK);
    if (state == 99) failures++;

    /* get_task: bad timeouts, nothing yet */
    shmex_task *task = (shmex_task *)(uintptr_t)1;
    EXPECT(shmex_agent_get_task(agent, -2, &task), SHMEX_INVALID_ARGUMENT);
    if (task != NULL) failures++;
    EXPECT(shmex_agent_get_task(agent, INT64_MIN, &task), SHMEX_INVALID_ARGUMENT);
    EXPECT(shmex_agent_get_task(agent, 0, &task), SHMEX_TIMEOUT);
    EXPECT(shmex_agent_get_task(agent, 20, &task), SHMEX_TIMEOUT);
    EXPECT(shmex_agent_get_task(agent, 0, NULL), SHMEX_NULL_POINTER);
    bool b = true;
    EXPECT(shmex_agent_is_aborted(agent, &b), SHMEX_OK);
    if (b) failures++; /* no task, nothing aborted */
    EXPECT(shmex_agent_is_aborted(agent, NULL), SHMEX_NULL_POINTER);

    /* execute: every malformed argument fails before anything is sent */
    float w[4] = {1, 2, 3, 4};
    uint64_t shape[1] = {4}, bad_shape[1] = {5}, huge_shape[2] = {UINT64_MAX, UINT64_MAX};
    uint64_t many_dims[9] = {1, 1, 1, 1, 1, 1, 1, 1, 4};
    shmex_tensor good = {"w", SHMEX_DTYPE_F32, 1, shape, w, sizeof w};
    shmex_data data = {SHMEX_DATA_KIND_WEIGHTS, "{\"k\": 1}", &good, 1};
    shmex_headers headers = {"t1", 0, 1};
    shmex_reply *reply = (shmex_reply *)(uintptr_t)1;
    shmex_abort *abort_flag = NULL;
    EXPECT(shmex_abort_new(&abort_flag), SHMEX_OK);
    EXPECT(shmex_abort_new(NULL), SHMEX_NULL_POINTER);
#define EXEC_EXPECT(tensor_expr, want)                                                      \
    do {                                                                                     \
        shmex_tensor t_ = tensor_expr;                                                       \
        shmex_data d_ = {SHMEX_DATA_KIND_WEIGHTS, NULL, &t_, 1};                             \
        EXPECT(shmex_exchanger_execute(ex, "train", &headers, &d_, NULL, &reply), want);     \
    } while (0)
    EXPECT(shmex_exchanger_execute(ex, "train", &headers, &data, NULL, NULL), SHMEX_NULL_POINTER);
    EXPECT(shmex_exchanger_execute(ex, NULL, &headers, &data, NULL, &reply), SHMEX_NULL_POINTER);
    if (reply != NULL) failures++;
    EXPECT(shmex_exchanger_execute(ex, "train", NULL, &data, NULL, &reply), SHMEX_NULL_POINTER);
    EXPECT(shmex_exchanger_execute(ex, "train", &headers, NULL, NULL, &reply), SHMEX_NULL_POINTER);
    shmex_headers no_id = {NULL, 0, 1};
    EXPECT(shmex_exchanger_execute(ex, "train", &no_id, &data, NULL, &reply), SHMEX_NULL_POINTER);
    EXEC_EXPECT(((shmex_tensor){"w", 0, 1, shape, w, sizeof w}), SHMEX_INVALID_ARGUMENT);
    EXEC_EXPECT(((shmex_tensor){"w", 77, 1, shape, w, sizeof w}), SHMEX_INVALID_ARGUMENT);
    EXEC_EXPECT(((shmex_tensor){NULL, SHMEX_DTYPE_F32, 1, shape, w, sizeof w}),
                SHMEX_NULL_POINTER);
    EXEC_EXPECT(((shmex_tensor){"", SHMEX_DTYPE_F32, 1, shape, w, sizeof w}), SHMEX_INVALID_DATA);
    EXEC_EXPECT(((shmex_tensor){"w", SHMEX_DTYPE_F32, 1, NULL, w, sizeof w}), SHMEX_NULL_POINTER);
    EXEC_EXPECT(((shmex_tensor){"w", SHMEX_DTYPE_F32, 1, shape, NULL, sizeof w}),
                SHMEX_NULL_POINTER);
    EXEC_EXPECT(((shmex_tensor){"w", SHMEX_DTYPE_F32, 1, bad_shape, w, sizeof w}),
                SHMEX_INVALID_DATA);
    EXEC_EXPECT(((shmex_tensor){"w", SHMEX_DTYPE_F32, 1, shape, w, 3}), SHMEX_INVALID_DATA);
    EXEC_EXPECT(((shmex_tensor){"w", SHMEX_DTYPE_F32, 1, shape, w, 0}), SHMEX_INVALID_DATA);
    EXEC_EXPECT(((shmex_tensor){"w", SHMEX_DTYPE_F32, 2, huge_shape, w, sizeof w}),
                SHMEX_INVALID_DATA);
    EXEC_EXPECT(((shmex_tensor){"w", SHMEX_DTYPE_F32, 9, many_dims, w, sizeof w}),
                SHMEX_INVALID_DATA);
    EXEC_EXPECT(((shmex_tensor){"w", SHMEX_DTYPE_F32, SIZE_MAX, shape, w, sizeof w}),
                SHMEX_INVALID_DATA);
    EXEC_EXPECT(((shmex_tensor){"w", SHMEX_DTYPE_F32, 1, shape, w, SIZE_MAX}),
                SHMEX_INVALID_ARGUMENT);
    EXEC_EXPECT(((shmex_tensor){"w\xfe", SHMEX_DTYPE_F32, 1, shape, w, sizeof w}),
                SHMEX_INVALID_ARGUMENT);
    shmex_tensor twice[2] = {good, good};
    shmex_data dup = {SHMEX_DATA_KIND_WEIGHTS, NULL, twice, 2};
    EXPECT(shmex_exchanger_execute(ex, "train", &headers, &dup, NULL, &reply), SHMEX_INVALID_DATA);
    shmex_data bad_kind = {0, NULL, &good, 1}, bad_meta = {SHMEX_DATA_KIND_WEIGHTS, "[1]", &good, 1};
    shmex_data not_json = {SHMEX_DATA_KIND_WEIGHTS, "{", &good, 1};
    shmex_data no_tensors = {SHMEX_DATA_KIND_WEIGHTS, NULL, NULL, 3};
    shmex_data huge_count = {SHMEX_DATA_KIND_WEIGHTS, NULL, &good, SIZE_MAX};
    EXPECT(shmex_exchanger_execute(ex, "train", &headers, &bad_kind, NULL, &reply),
           SHMEX_INVALID_ARGUMENT);
    EXPECT(shmex_exchanger_execute(ex, "train", &headers, &bad_meta, NULL, &reply),
           SHMEX_INVALID_ARGUMENT);
    EXPECT(shmex_exchanger_execute(ex, "train", &headers, &not_json, NULL, &reply),
           SHMEX_INVALID_ARGUMENT);
    EXPECT(shmex_exchanger_execute(ex, "train", &headers, &no_tensors, NULL, &reply),
           SHMEX_NULL_POINTER);
    EXPECT(shmex_exchanger_execute(ex, "train", &headers, &huge_count, NULL, &reply),
           SHMEX_INVALID_ARGUMENT);

    /* protocol outcomes are replies, not statuses: no data, empty id, aborted */
    uint32_t rc = 99, kind = 99;
    size_t count = 99;
    const char *meta = NULL;
    shmex_tensor t;
    shmex_data empty = {SHMEX_DATA_KIND_WEIGHTS, NULL, NULL, 0};
    EXPECT(shmex_exchanger_execute(ex, "train", &headers, &empty, NULL, &reply), SHMEX_OK);
    EXPECT(shmex_reply_rc(reply, &rc), SHMEX_OK);
    if (rc != SHMEX_RC_BAD_REQUEST_DATA) failures++;
    EXPECT(shmex_reply_data_kind(reply, &kind), SHMEX_OK);
    if (kind != SHMEX_DATA_KIND_NONE) failures++;
    EXPECT(shmex_reply_meta(reply, &meta), SHMEX_OK);
    if (meta == NULL || strcmp(meta, "{}") != 0) failures++;
    EXPECT(shmex_reply_tensor_count(reply, &count), SHMEX_OK);
    if (count != 0) failures++;
    EXPECT(shmex_reply_tensor(reply, 0, &t), SHMEX_NO_SUCH_TENSOR);
    EXPECT(shmex_reply_tensor_by_name(reply, "w", &t), SHMEX_NO_SUCH_TENSOR);
    EXPECT(shmex_reply_tensor_by_name(reply, NULL, &t), SHMEX_NULL_POINTER);
    EXPECT(shmex_reply_rc(reply, NULL), SHMEX_NULL_POINTER);
    b = true;
    EXPECT(shmex_reply_is_in_place(reply, &b), SHMEX_OK);
    if (b) failures++; /* a bare reply holds no ring space */
    EXPECT(shmex_reply_is_in_place(reply, NULL), SHMEX_NULL_POINTER);
    EXPECT(shmex_reply_free(reply), SHMEX_OK);
    EXPECT(shmex_reply_free(reply), SHMEX_INVALID_HANDLE); /* double free */
    EXPECT(shmex_reply_rc(reply, &rc), SHMEX_INVALID_HANDLE); /* use after free */
    EXPECT(shmex_reply_is_in_place(reply, &b), SHMEX_INVALID_HANDLE);
    shmex_headers empty_id = {"", 0, 1};
    EXPECT(shmex_exchanger_execute(ex, "train", &empty_id, &data, NULL, &reply), SHMEX_OK);
    shmex_reply_rc(reply, &rc);
    if (rc != SHMEX_RC_BAD_TASK_DATA) failures++;
    shmex_reply_free(reply);
    EXPECT(shmex_abort_trigger(abort_flag), SHMEX_OK);
    EXPECT(shmex_abort_is_set(abort_flag, &b), SHMEX_OK);
    if (!b) failures++;
    EXPECT(shmex_exchanger_execute(ex, "train", &headers, &data, abort_flag, &reply), SHMEX_OK);
    shmex_reply_rc(reply, &rc);
    if (rc != SHMEX_RC_TASK_ABORTED) failures++;
    shmex_reply_free(reply);
    EXPECT(shmex_abort_free(abort_flag), SHMEX_OK);
    EXPECT(shmex_abort_free(abort_flag), SHMEX_INVALID_HANDLE);
    EXPECT(shmex_abort_trigger(abort_flag), SHMEX_INVALID_HANDLE);
    EXPECT(shmex_exchanger_execute(ex, "train", &headers, &data, abort_flag, &reply),
           SHMEX_INVALID_HANDLE);

    /* submit: bad rc, bad data, then the empty-id result of a (re)started trainer */
    EXPECT(shmex_agent_submit_result(agent, NULL, 999, &b), SHMEX_INVALID_ARGUMENT);
    EXPECT(shmex_agent_submit_result(agent, &dup, SHMEX_RC_OK, &b), SHMEX_INVALID_DATA);

    /* wrong handle kind: an agent handle is no task handle */
    EXPECT(shmex_task_free((shmex_task *)(void *)agent), SHMEX_INVALID_HANDLE);

    /* close: the exchanger says bye; the agent's calls then say closed */
    EXPECT(shmex_exchanger_close(ex), SHMEX_OK);
    EXPECT(shmex_exchanger_close(ex), SHMEX_OK); /* a second close does nothing */
    EXPECT(shmex_exchanger_status(ex, &state), SHMEX_OK);
    if (state != SHMEX_EXCHANGER_CLOSED) failures++;
    EXPECT(shmex_exchanger_execute(ex, "train", &headers, &data, NULL, &reply), SHMEX_OK);
    shmex_reply_rc(reply, &rc);
    if (rc != SHMEX_RC_TASK_ABORTED) failures++;
    shmex_reply_free(reply);
    EXPECT(shmex_agent_get_task(agent, 10000, &task), SHMEX_CLOSED);
    EXPECT(shmex_agent_submit_result(agent, &data, SHMEX_RC_OK, &b), SHMEX_CLOSED);
    EXPECT(shmex_agent_close(agent), SHMEX_OK);
    EXPECT(shmex_agent_close(agent), SHMEX_OK);
    EXPECT(shmex_agent_free(agent), SHMEX_OK);
    EXPECT(shmex_agent_free(agent), SHMEX_INVALID_HANDLE);
    EXPECT(shmex_agent_get_task(agent, 0, &task), SHMEX_INVALID_HANDLE);
    EXPECT(shmex_exchanger_free(ex), SHMEX_OK);
    EXPECT(shmex_exchanger_free(ex), SHMEX_INVALID_HANDLE);
    EXPECT(shmex_exchanger_close(ex), SHMEX_INVALID_HANDLE);
}

/* Loans on both sides: NULL handles and pointers, bad specs, bad indices, calls in the wrong
 * state (no fetched task, a loan outstanding), double commit and use after abandon. */
static void loans(const char *site) {
    shmex_exchanger *ex = NULL;
    shmex_exchanger_options o;
    shmex_exchanger_options_default(&o);
    o.task_ring_capacity = o.result_ring_capacity = 1 << 20;
    EXPECT(shmex_exchanger_create(site, "l", &o, &ex), SHMEX_OK);
    shmex_agent_options ao;
    shmex_agent_options_default(&ao);
    ao.attach_timeout = 10.0;
    shmex_agent *agent = NULL;
    EXPECT(shmex_agent_attach(site, "l", &ao, &agent), SHMEX_OK);

    uint64_t shape[1] = {4}, big[1] = {1 << 20}, huge[2] = {UINT64_MAX, UINT64_MAX};
    uint64_t many_dims[9] = {1, 1, 1, 1, 1, 1, 1, 1, 4};
    shmex_tensor_spec good = {"w", SHMEX_DTYPE_F32, 1, shape};
    shmex_loan_spec spec = {SHMEX_DATA_KIND_WEIGHTS, "{\"k\": 1}", &good, 1};
    shmex_result_loan *rl = (shmex_result_loan *)(uintptr_t)1;
    shmex_task_loan *tl = (shmex_task_loan *)(uintptr_t)1;
    shmex_reply *reply = NULL;
    shmex_tensor_mut m;
    size_t n = 0;
    bool b = false;
    uint32_t rc = 99;

    /* NULL handles and pointers */
    EXPECT(shmex_agent_loan_result(NULL, &spec, &rl), SHMEX_NULL_POINTER);
    if (rl != NULL) failures++; /* the out-handle is NULL on failure */
    EXPECT(shmex_agent_loan_result(agent, NULL, &rl), SHMEX_NULL_POINTER);
    EXPECT(shmex_agent_loan_result(agent, &spec, NULL), SHMEX_NULL_POINTER);
    EXPECT(shmex_result_loan_tensor_count(NULL, &n), SHMEX_NULL_POINTER);
    EXPECT(shmex_result_loan_tensor(NULL, 0, &m), SHMEX_NULL_POINTER);
    EXPECT(shmex_result_loan_tensor_by_name(NULL, "w", &m), SHMEX_NULL_POINTER);
    EXPECT(shmex_result_loan_commit(NULL, SHMEX_RC_OK, &b), SHMEX_NULL_POINTER);
    EXPECT(shmex_result_loan_abandon(NULL), SHMEX_OK); /* as free(NULL) */
    shmex_headers headers = {"t1", 0, 1};
    EXPECT(shmex_exchanger_loan_task(NULL, "train", &headers, &spec, NULL, &tl),
           SHMEX_NULL_POINTER);
    if (tl != NULL) failures++;
    EXPECT(shmex_exchanger_loan_task(ex, NULL, &headers, &spec, NULL, &tl), SHMEX_NULL_POINTER);
    EXPECT(shmex_exchanger_loan_task(ex, "train", NULL, &spec, NULL, &tl), SHMEX_NULL_POINTER);
    EXPECT(shmex_exchanger_loan_task(ex, "train", &headers, NULL, NULL, &tl), SHMEX_NULL_POINTER);
    EXPECT(shmex_exchanger_loan_task(ex, "train", &headers, &spec, NULL, NULL),
           SHMEX_NULL_POINTER);
    EXPECT(shmex_task_loan_tensor_count(NULL, &n), SHMEX_NULL_POINTER);
    EXPECT(shmex_task_loan_tensor(NULL, 0, &m), SHMEX_NULL_POINTER);
    EXPECT(shmex_task_loan_tensor_by_name(NULL, "w", &m), SHMEX_NULL_POINTER);
    EXPECT(shmex_task_loan_execute(NULL, NULL, &reply), SHMEX_NULL_POINTER);
    EXPECT(shmex_task_loan_abandon(NULL), SHMEX_OK);
    EXPECT(shmex_result_loan_abandon((shmex_result_loan *)(uintptr_t)0x1234),
           SHMEX_INVALID_HANDLE);
    EXPECT(shmex_task_loan_abandon((shmex_task_loan *)(void *)agent), SHMEX_INVALID_HANDLE);

    /* bad specs: nothing is lent */
#define SPEC_EXPECT(tensor_spec, want)                                                      \
    do {                                                                                     \
        shmex_tensor_spec t_ = tensor_spec;                                                  \
        shmex_loan_spec s_ = {SHMEX_DATA_KIND_WEIGHTS, NULL, &t_, 1};                        \
        EXPECT(shmex_agent_loan_result(agent, &s_, &rl), want);                              \
        EXPECT(shmex_exchanger_loan_task(ex, "train", &headers, &s_, NULL, &tl), want);      \
    } while (0)
    SPEC_EXPECT(((shmex_tensor_spec){"w", 0, 1, shape}), SHMEX_INVALID_ARGUMENT);
    SPEC_EXPECT(((shmex_tensor_spec){NULL, SHMEX_DTYPE_F32, 1, shape}), SHMEX_NULL_POINTER);
    SPEC_EXPECT(((shmex_tensor_spec){"", SHMEX_DTYPE_F32, 1, shape}), SHMEX_INVALID_DATA);
    SPEC_EXPECT(((shmex_tensor_spec){"w\xfe", SHMEX_DTYPE_F32, 1, shape}),
                SHMEX_INVALID_ARGUMENT);
    SPEC_EXPECT(((shmex_tensor_spec){"w", SHMEX_DTYPE_F32, 1, NULL}), SHMEX_NULL_POINTER);
    SPEC_EXPECT(((shmex_tensor_spec){"w", SHMEX_DTYPE_F32, 9, many_dims}), SHMEX_INVALID_DATA);
    SPEC_EXPECT(((shmex_tensor_spec){"w", SHMEX_DTYPE_F32, SIZE_MAX, shape}),
                SHMEX_INVALID_DATA);
    SPEC_EXPECT(((shmex_tensor_spec){"w", SHMEX_DTYPE_F32, 2, huge}), SHMEX_INVALID_DATA);
    /* 4 MiB does not fit in a 1 MiB ring */
    SPEC_EXPECT(((shmex_tensor_spec){"w", SHMEX_DTYPE_F32, 1, big}), SHMEX_TOO_LARGE);
    shmex_tensor_spec twice[2] = {good, good};
    shmex_loan_spec dup = {SHMEX_DATA_KIND_WEIGHTS, NULL, twice, 2};
    shmex_loan_spec bad_kind = {0, NULL, &good, 1};
    shmex_loan_spec bad_meta = {SHMEX_DATA_KIND_WEIGHTS, "[1]", &good, 1};
    shmex_loan_spec no_tensors = {SHMEX_DATA_KIND_WEIGHTS, NULL, NULL, 3};
    shmex_loan_spec huge_count = {SHMEX_DATA_KIND_WEIGHTS, NULL, &good, SIZE_MAX};
    shmex_loan_spec empty = {SHMEX_DATA_KIND_WEIGHTS, NULL, NULL, 0};
    EXPECT(shmex_agent_loan_result(agent, &dup, &rl), SHMEX_INVALID_DATA);
    EXPECT(shmex_agent_loan_result(agent, &bad_kind, &rl), SHMEX_INVALID_ARGUMENT);
    EXPECT(shmex_agent_loan_result(agent, &bad_meta, &rl), SHMEX_INVALID_ARGUMENT);
    EXPECT(shmex_agent_loan_result(agent, &no_tensors, &rl), SHMEX_NULL_POINTER);
    EXPECT(shmex_agent_loan_result(agent, &huge_count, &rl), SHMEX_INVALID_ARGUMENT);
    EXPECT(shmex_exchanger_loan_task(ex, "train", &headers, &dup, NULL, &tl), SHMEX_INVALID_DATA);
    EXPECT(shmex_exchanger_loan_task(ex, "train", &headers, &empty, NULL, &tl),
           SHMEX_INVALID_DATA); /* a task without data */
    shmex_headers empty_id = {"", 0, 1};
    EXPECT(shmex_exchanger_loan_task(ex, "train", &empty_id, &spec, NULL, &tl),
           SHMEX_INVALID_DATA);

    /* a result loan: a trainer that starts without a task may answer once (empty task id) */
    EXPECT(shmex_agent_loan_result(agent, &spec, &rl), SHMEX_OK);
    EXPECT(shmex_result_loan_tensor_count(rl, &n), SHMEX_OK);
    if (n != 1) failures++;
    EXPECT(shmex_result_loan_tensor_count(rl, NULL), SHMEX_NULL_POINTER);
    EXPECT(shmex_result_loan_tensor(rl, 0, &m), SHMEX_OK);
    if (strcmp(m.name, "w") != 0 || m.dtype != SHMEX_DTYPE_F32 || m.ndim != 1 ||
        m.shape[0] != 4 || m.len != 4 * sizeof(float) || m.data == NULL ||
        (uintptr_t)m.data % 64 != 0)
        failures++;
    for (size_t i = 0; i < 4; i++) ((float *)m.data)[i] = (float)i;
    shmex_tensor_mut first = m;
    memset(&m, 0, sizeof m);
    EXPECT(shmex_result_loan_tensor_by_name(rl, "w", &m), SHMEX_OK);
    if (m.data != first.data || m.len != first.len) failures++; /* the same tensor */
    EXPECT(shmex_result_loan_tensor(rl, 1, &m), SHMEX_NO_SUCH_TENSOR);
    EXPECT(shmex_result_loan_tensor(rl, SIZE_MAX, &m), SHMEX_NO_SUCH_TENSOR);
    EXPECT(shmex_result_loan_tensor(rl, 0, NULL), SHMEX_NULL_POINTER);
    EXPECT(shmex_result_loan_tensor_by_name(rl, "nope", &m), SHMEX_NO_SUCH_TENSOR);
    EXPECT(shmex_result_loan_tensor_by_name(rl, NULL, &m), SHMEX_NULL_POINTER);
    shmex_result_loan *second = NULL;
    EXPECT(shmex_agent_loan_result(agent, &spec, &second), SHMEX_CALL_STATE); /* outstanding */
    EXPECT(shmex_result_loan_commit(rl, 999, &b), SHMEX_INVALID_ARGUMENT); /* the loan stays */
    EXPECT(shmex_result_loan_abandon(rl), SHMEX_OK);
    EXPECT(shmex_result_loan_abandon(rl), SHMEX_INVALID_HANDLE);
    EXPECT(shmex_result_loan_tensor(rl, 0, &m), SHMEX_INVALID_HANDLE); /* use after abandon */
    EXPECT(shmex_result_loan_commit(rl, SHMEX_RC_OK, &b), SHMEX_INVALID_HANDLE);
    /* abandoned: the answer is still owed, so a new loan may be made and committed */
    EXPECT(shmex_agent_loan_result(agent, &spec, &rl), SHMEX_OK);
    EXPECT(shmex_result_loan_tensor(rl, 0, &m), SHMEX_OK);
    for (size_t i = 0; i < 4; i++) ((float *)m.data)[i] = (float)i;
    /* no task fetched: this agent's first answer goes out with an empty id, and the idle
     * exchanger acks it ok and ignores it (FLARE's rule for a restarted trainer) */
    b = false;
    EXPECT(shmex_result_loan_commit(rl, SHMEX_RC_OK, &b), SHMEX_OK);
    if (!b) failures++;
    EXPECT(shmex_result_loan_commit(rl, SHMEX_RC_OK, &b), SHMEX_INVALID_HANDLE); /* twice */
    EXPECT(shmex_result_loan_tensor_count(rl, &n), SHMEX_INVALID_HANDLE);
    /* nothing to answer now: no fetched task */
    EXPECT(shmex_agent_loan_result(agent, &spec, &rl), SHMEX_CALL_STATE);
    if (rl != NULL) failures++;

    /* a task loan */
    EXPECT(shmex_exchanger_loan_task(ex, "train", &headers, &spec, NULL, &tl), SHMEX_OK);
    EXPECT(shmex_task_loan_tensor_count(tl, &n), SHMEX_OK);
    if (n != 1) failures++;
    EXPECT(shmex_task_loan_tensor(tl, 0, &m), SHMEX_OK);
    if (m.len != 4 * sizeof(float) || m.data == NULL) failures++;
    EXPECT(shmex_task_loan_tensor(tl, 1, &m), SHMEX_NO_SUCH_TENSOR);
    EXPECT(shmex_task_loan_tensor(tl, 0, NULL), SHMEX_NULL_POINTER);
    EXPECT(shmex_task_loan_tensor_by_name(tl, "nope", &m), SHMEX_NO_SUCH_TENSOR);
    shmex_task_loan *second_task = NULL;
    EXPECT(shmex_exchanger_loan_task(ex, "train", &headers, &spec, NULL, &second_task),
           SHMEX_CALL_STATE); /* a task is in flight */
    shmex_tensor t = {"w", SHMEX_DTYPE_F32, 1, shape, m.data, 16};
    shmex_data data = {SHMEX_DATA_KIND_WEIGHTS, NULL, &t, 1};
    for (size_t i = 0; i < 4; i++) ((float *)m.data)[i] = (float)i;
    EXPECT(shmex_exchanger_execute(ex, "train", &headers, &data, NULL, &reply), SHMEX_OK);
    shmex_reply_rc(reply, &rc);
    if (rc != SHMEX_RC_BAD_REQUEST_DATA) failures++; /* the loan's task is in flight */
    shmex_reply_free(reply);
    shmex_abort *dead = NULL;
    shmex_abort_new(&dead);
    shmex_abort_free(dead);
    EXPECT(shmex_task_loan_execute(tl, dead, &reply), SHMEX_INVALID_HANDLE); /* the loan stays */
    EXPECT(shmex_task_loan_execute(tl, NULL, NULL), SHMEX_NULL_POINTER);
    EXPECT(shmex_task_loan_abandon(tl), SHMEX_OK);
    EXPECT(shmex_task_loan_abandon(tl), SHMEX_INVALID_HANDLE);
    EXPECT(shmex_task_loan_tensor(tl, 0, &m), SHMEX_INVALID_HANDLE); /* use after abandon */
    EXPECT(shmex_task_loan_execute(tl, NULL, &reply), SHMEX_INVALID_HANDLE);
    /* executed with its abort flag set: nothing is sent, TASK_ABORTED; then it is gone */
    shmex_abort *abort_flag = NULL;
    shmex_abort_new(&abort_flag);
    EXPECT(shmex_exchanger_loan_task(ex, "train", &headers, &spec, abort_flag, &tl), SHMEX_OK);
    shmex_abort_trigger(abort_flag);
    EXPECT(shmex_task_loan_execute(tl, abort_flag, &reply), SHMEX_OK);
    shmex_reply_rc(reply, &rc);
    if (rc != SHMEX_RC_TASK_ABORTED) failures++;
    shmex_reply_free(reply);
    EXPECT(shmex_task_loan_execute(tl, abort_flag, &reply), SHMEX_INVALID_HANDLE); /* twice */
    shmex_abort_free(abort_flag);
    /* a loan outlives its exchanger's close: executing it then is TASK_ABORTED */
    EXPECT(shmex_exchanger_loan_task(ex, "train", &headers, &spec, NULL, &tl), SHMEX_OK);
    EXPECT(shmex_exchanger_close(ex), SHMEX_OK);
    EXPECT(shmex_exchanger_free(ex), SHMEX_OK);
    EXPECT(shmex_task_loan_execute(tl, NULL, &reply), SHMEX_OK);
    shmex_reply_rc(reply, &rc);
    if (rc != SHMEX_RC_TASK_ABORTED) failures++;
    shmex_reply_free(reply);

    /* closed */
    EXPECT(shmex_agent_close(agent), SHMEX_OK);
    EXPECT(shmex_agent_loan_result(agent, &spec, &rl), SHMEX_CLOSED);
    EXPECT(shmex_agent_free(agent), SHMEX_OK);
    EXPECT(shmex_agent_loan_result(agent, &spec, &rl), SHMEX_INVALID_HANDLE);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s SITE\n", argv[0]);
        return 2;
    }
    misc();
    null_handles();
    names();
    options(argv[1]);
    protocol(argv[1]);
    loans(argv[1]);
    printf("errors.c: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
