/* receive_in_place and expected_message_len through the C API, between two processes:
 *
 *   in_place exchanger SITE AGENT_ID on|off
 *   in_place agent     SITE AGENT_ID on|off     (run by tests/run.sh, the agent under valgrind
 *                                               too)
 *
 * The exchanger sends ROUNDS tasks by loan (shmex_exchanger_loan_task) over 1 MiB rings, each
 * one f32 tensor "w" of ELEMENTS elements (element i of round r: (i % 1000) * 0.5 + r); the
 * agent checks every element and answers by loan (shmex_agent_loan_result) with each element
 * plus one, which the exchanger checks.
 *
 * "on": both sides set receive_in_place (and expected_message_len). Every task must be read in
 * place by the agent and every result in place by the exchanger. A task is 625 KiB, so two do
 * not fit in the ring: while the agent holds task r (answered, not freed), task r + 1 cannot
 * arrive; once task r is freed, it does.
 * "off": the defaults (receive_in_place 0). Nothing is in place, and the agent keeps task r
 * while fetching task r + 1, which arrives: a copied-out task does not hold the ring. */
#include <shmex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { ROUNDS = 3 };
#define RING ((uint64_t)1 << 20)
#define ELEMENTS ((size_t)160000) /* 640,000 bytes */
#define WAIT_MS 120000

/* One message fits with SHMEX_IN_PLACE_KEEP_FREE to spare (the envelope, meta and tensor
 * table take far less than the 4 KiB allowed here); two do not fit. */
_Static_assert(ELEMENTS * sizeof(float) + 4096 + SHMEX_IN_PLACE_KEEP_FREE <= RING,
               "a message fits in the ring with room to spare");
_Static_assert(2 * ELEMENTS * sizeof(float) > RING, "two messages do not fit in the ring");

static int fail(const char *who, const char *what, shmex_status status) {
    fprintf(stderr, "in_place.c %s: %s: %s: %s\n", who, what, shmex_status_name(status),
            shmex_last_error_message());
    return 1;
}

static float pattern(size_t i, int64_t round) {
    return (float)(i % 1000) * 0.5f + (float)round;
}

/* Checks tensor "w": f32, ELEMENTS elements, each pattern + plus, 64-byte aligned. */
static int check_w(const char *who, const shmex_tensor *t, int64_t round, float plus) {
    if (strcmp(t->name, "w") != 0 || t->dtype != SHMEX_DTYPE_F32 || t->ndim != 1 ||
        t->shape[0] != ELEMENTS || t->len != ELEMENTS * sizeof(float) ||
        (uintptr_t)t->data % 64 != 0) {
        fprintf(stderr, "in_place.c %s: round %lld: tensor %s has dtype %u, %zu bytes\n", who,
                (long long)round, t->name, t->dtype, t->len);
        return 1;
    }
    const float *v = t->data;
    for (size_t i = 0; i < ELEMENTS; i++) {
        if (v[i] != pattern(i, round) + plus) {
            fprintf(stderr, "in_place.c %s: round %lld: w[%zu] = %g, expected %g\n", who,
                    (long long)round, i, v[i], pattern(i, round) + plus);
            return 1;
        }
    }
    return 0;
}

/* Whether the new options' defaults are wrong (off, and no expected length); says so. */
static int bad_defaults(const char *who, int receive_in_place, uint64_t expected_message_len) {
    if (receive_in_place == 0 && expected_message_len == 0) return 0;
    fprintf(stderr, "in_place.c %s: defaults receive_in_place %d, expected_message_len %llu\n",
            who, receive_in_place, (unsigned long long)expected_message_len);
    return 1;
}

static int exchanger(const char *site, const char *agent_id, int on) {
    shmex_exchanger_options options;
    shmex_status st = shmex_exchanger_options_default(&options);
    if (st != SHMEX_OK) return fail("exchanger", "options_default", st);
    if (bad_defaults("exchanger", options.receive_in_place, options.expected_message_len))
        return 1;
    options.task_ring_capacity = options.result_ring_capacity = RING;
    options.result_timeout = 120.0;
    if (on) {
        options.receive_in_place = 1;
        options.expected_message_len = ELEMENTS * sizeof(float);
    }
    shmex_exchanger *ex = NULL;
    st = shmex_exchanger_create(site, agent_id, &options, &ex);
    if (st != SHMEX_OK) return fail("exchanger", "create", st);
    int failed = 0;
    for (int64_t round = 0; round < ROUNDS && !failed; round++) {
        char task_id[32];
        snprintf(task_id, sizeof task_id, "task-%lld", (long long)round);
        shmex_headers headers = {task_id, round, ROUNDS};
        uint64_t shape[1] = {ELEMENTS};
        shmex_tensor_spec layout = {"w", SHMEX_DTYPE_F32, 1, shape};
        shmex_loan_spec spec = {SHMEX_DATA_KIND_WEIGHTS, NULL, &layout, 1};
        shmex_task_loan *loan = NULL;
        /* "on": waits here until the agent frees the previous task */
        st = shmex_exchanger_loan_task(ex, "train", &headers, &spec, NULL, &loan);
        if (st != SHMEX_OK) { failed = fail("exchanger", "loan_task", st); break; }
        shmex_tensor_mut w;
        st = shmex_task_loan_tensor(loan, 0, &w);
        if (st != SHMEX_OK) {
            shmex_task_loan_abandon(loan);
            failed = fail("exchanger", "task_loan_tensor", st);
            break;
        }
        float *out = w.data;
        for (size_t i = 0; i < ELEMENTS; i++) out[i] = pattern(i, round);
        shmex_reply *reply = NULL;
        st = shmex_task_loan_execute(loan, NULL, &reply); /* ends the loan */
        if (st != SHMEX_OK) { failed = fail("exchanger", "execute", st); break; }
        uint32_t rc = 99;
        bool in_place = !on;
        shmex_tensor t;
        st = shmex_reply_rc(reply, &rc);
        if (st == SHMEX_OK) st = shmex_reply_is_in_place(reply, &in_place);
        if (st == SHMEX_OK) st = shmex_reply_tensor_by_name(reply, "w", &t);
        if (st != SHMEX_OK) {
            failed = fail("exchanger", "reading the reply", st);
        } else if (rc != SHMEX_RC_OK) {
            fprintf(stderr, "in_place.c exchanger: round %lld: return code %u\n",
                    (long long)round, rc);
            failed = 1;
        } else if (in_place != (bool)on) {
            fprintf(stderr, "in_place.c exchanger: round %lld: the result is%s in place\n",
                    (long long)round, in_place ? "" : " not");
            failed = 1;
        } else {
            failed = check_w("exchanger", &t, round, 1.0f);
        }
        /* frees the result's ring space ("on") for the agent's next result */
        shmex_reply_free(reply);
    }
    st = shmex_exchanger_close(ex); /* bye: the agent's get_task ends */
    if (st != SHMEX_OK && !failed) failed = fail("exchanger", "close", st);
    shmex_exchanger_free(ex);
    if (!failed)
        printf("in_place.c exchanger (%s): %d loaned tasks, results %s, checked\n",
               on ? "on" : "off", ROUNDS, on ? "read in place" : "copied out");
    return failed;
}

/* Answers the task by loan, each element plus one; 0 when accepted. */
static int answer(shmex_agent *agent, const shmex_task *task, int64_t round) {
    shmex_tensor w;
    shmex_status st = shmex_task_tensor_by_name(task, "w", &w);
    if (st != SHMEX_OK) return fail("agent", "task_tensor_by_name", st);
    if (check_w("agent", &w, round, 0.0f)) return 1;
    shmex_tensor_spec layout = {w.name, w.dtype, w.ndim, w.shape};
    shmex_loan_spec spec = {SHMEX_DATA_KIND_WEIGHTS, NULL, &layout, 1};
    shmex_result_loan *loan = NULL;
    st = shmex_agent_loan_result(agent, &spec, &loan);
    if (st != SHMEX_OK) return fail("agent", "loan_result", st);
    shmex_tensor_mut out;
    st = shmex_result_loan_tensor(loan, 0, &out);
    if (st != SHMEX_OK) {
        shmex_result_loan_abandon(loan);
        return fail("agent", "result_loan_tensor", st);
    }
    const float *in = w.data;
    float *updated = out.data;
    for (size_t i = 0; i < ELEMENTS; i++) updated[i] = in[i] + 1.0f;
    bool accepted = false;
    st = shmex_result_loan_commit(loan, SHMEX_RC_OK, &accepted);
    if (st != SHMEX_OK) return fail("agent", "commit", st);
    if (!accepted) {
        fprintf(stderr, "in_place.c agent: round %lld: result not accepted\n", (long long)round);
        return 1;
    }
    return 0;
}

static int agent(const char *site, const char *agent_id, int on) {
    shmex_agent_options options;
    shmex_status st = shmex_agent_options_default(&options);
    if (st != SHMEX_OK) return fail("agent", "options_default", st);
    if (bad_defaults("agent", options.receive_in_place, options.expected_message_len))
        return 1;
    options.attach_timeout = 60.0;
    if (on) {
        options.receive_in_place = 1;
        options.expected_message_len = ELEMENTS * sizeof(float);
    }
    shmex_agent *ag = NULL;
    st = shmex_agent_attach(site, agent_id, &options, &ag);
    if (st != SHMEX_OK) return fail("agent", "attach", st);
    int failed = 0;
    shmex_task *task = NULL;
    st = shmex_agent_get_task(ag, WAIT_MS, &task);
    if (st != SHMEX_OK) failed = fail("agent", "get_task", st);
    for (int64_t round = 0; round < ROUNDS && !failed; round++) {
        bool in_place = !on;
        st = shmex_task_is_in_place(task, &in_place);
        if (st != SHMEX_OK) { failed = fail("agent", "is_in_place", st); break; }
        if (in_place != (bool)on) {
            fprintf(stderr, "in_place.c agent: round %lld: the task is%s in place\n",
                    (long long)round, in_place ? "" : " not");
            failed = 1;
            break;
        }
        if ((failed = answer(ag, task, round))) break;
        shmex_task *next = NULL;
        if (on && round + 1 < ROUNDS) {
            /* held: the next task has no room in the ring (not a timing bound: it cannot
             * arrive at all until the free below) */
            st = shmex_agent_get_task(ag, 500, &next);
            if (st != SHMEX_TIMEOUT) {
                fprintf(stderr, "in_place.c agent: round %lld: with the task held, get_task "
                                "gave %s\n",
                        (long long)round, shmex_status_name(st));
                shmex_task_free(next);
                failed = 1;
                break;
            }
            shmex_task_free(task); /* releases its ring space: the next task comes in */
            task = NULL;
        }
        /* "off": the answered task is still held here, and the next one arrives anyway;
         * after the last round ("on" too) the bye arrives behind the held task */
        st = shmex_agent_get_task(ag, WAIT_MS, &next);
        if (round + 1 == ROUNDS) {
            if (st != SHMEX_CLOSED) failed = fail("agent", "get_task after the last", st);
        } else if (st != SHMEX_OK) {
            failed = fail("agent", "get_task", st);
        } else if (task != NULL) {
            /* "off": both tasks are readable side by side */
            shmex_tensor w;
            st = shmex_task_tensor_by_name(task, "w", &w);
            if (st != SHMEX_OK) failed = fail("agent", "the kept task", st);
            else failed = check_w("agent", &w, round, 0.0f);
        }
        shmex_task_free(task);
        task = next;
    }
    shmex_task_free(task);
    shmex_agent_free(ag);
    if (!failed)
        printf("in_place.c agent (%s): %d tasks %s, checked and answered by loan\n",
               on ? "on" : "off", ROUNDS, on ? "read in place" : "copied out");
    return failed;
}

int main(int argc, char **argv) {
    if (argc != 5 || (strcmp(argv[4], "on") != 0 && strcmp(argv[4], "off") != 0)) {
        fprintf(stderr, "usage: %s exchanger|agent SITE AGENT_ID on|off\n", argv[0]);
        return 2;
    }
    int on = strcmp(argv[4], "on") == 0;
    if (strcmp(argv[1], "exchanger") == 0) return exchanger(argv[2], argv[3], on);
    if (strcmp(argv[1], "agent") == 0) return agent(argv[2], argv[3], on);
    fprintf(stderr, "usage: %s exchanger|agent SITE AGENT_ID on|off\n", argv[0]);
    return 2;
}
