/*
 * job.c - requests the loop hands to a thread of their own.
 *
 * COMPACT writes a snapshot of every instance: 0.9 s at 100,000 instances,
 * and on the loop's thread every other connection waited that long for
 * any answer, a PING included. WAL_READ without a limit and LIST_INSTANCES
 * with a big one build answers of up to 16 MiB (PINGs beside a WAL_READ of
 * 48,000 records waited 143-176 ms). Run on a thread of its own, such a request
 * holds up only its own connection, which takes no further request until
 * the answer is queued (so a pipelining client still gets its answers in
 * order); the worker also writes the answer's frame, and the loop sends it
 * (copying it only behind output already queued). The engine lets the others go on between its short locked
 * steps. At most RCP_MAX_JOBS run at once, so a crowd of clients cannot
 * make a crowd of threads; the others wait their turn in a queue, off the
 * loop too.
 *
 * The worker touches nothing but its job; the loop owns the list of jobs,
 * the connection and the answer. A connection that goes away leaves its
 * job to finish unowned, and stopping the server waits for every job.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "base/json.h"
#include "base/log.h"
#include "base/util.h"
#include "rcp/internal.h"

struct rcp_job {
    rcp_server *s;
    rcp_conn *c; /* NULL once the connection is gone (loop only) */
    rcp_job *prev, *next; /* s->jobs, every job (loop only) */
    rcp_job *wait_next;   /* s->job_wait, those not started yet (loop only) */
    bool started; /* has a thread, not yet joined */
    bool running; /* counted in s->n_jobs: started, its end not yet seen */
    pthread_t thread;
    int op;
    char *id;
    cJSON *params;
    enum rcp_wire wire;
    uint64_t t0_ns;
    /* the worker's, read by the loop once done is set */
    buf frame; /* the answer, ready to send */
    bool written; /* false: not even an error fitted in a frame */
    stm_code code;
    uint64_t seq;
    int done;
};

#define RCP_MAX_JOBS 4
/* What a client may read in one answer without a thread: rstmdb's own
 * documented WAL_READ maximum. */
#define RCP_INLINE_LIMIT 1000
/* Instances a listing on the loop may have to link into the sorted index
 * first (one to two microseconds each, eng_index_backlog): after a burst of
 * 100,000 creates, a LIST of 10 held the loop, and every client, 96 ms. */
#define RCP_INLINE_BACKLOG 2048

bool rcp_job_wanted(eng *e, int op, const cJSON *params)
{
    if (op == RCP_OP_COMPACT) return true;
    if (op != RCP_OP_WAL_READ && op != RCP_OP_LIST_INSTANCES) return false;
    if (op == RCP_OP_LIST_INSTANCES && eng_index_backlog(e) > RCP_INLINE_BACKLOG) return true;
    /* WAL_READ without a limit is unlimited (rstmdb's rule) */
    const cJSON *limit = json_get(params, "limit");
    uint64_t n;
    if (!limit || !json_get_uint(limit, UINT64_MAX, &n)) return op == RCP_OP_WAL_READ;
    return n > RCP_INLINE_LIMIT;
}

static void run_job(rcp_job *j)
{
    cJSON *result = NULL;
    stm_err err = {0};
    j->code = eng_call(j->s->e, rcp_op_name(j->op), j->params, &result, &j->seq, &err);
    if (j->code == STM_OK) {
        j->written = rcp_write_result_or_error(&j->frame, j->wire, j->id, result);
    } else {
        if (j->code >= STM_CODE_COUNT || j->code < 0) j->code = STM_INTERNAL_ERROR;
        j->written = rcp_write_error(&j->frame, j->wire, j->id, j->code, err.msg);
    }
    cJSON_Delete(result);
    __atomic_store_n(&j->done, 1, __ATOMIC_RELEASE);
    rcp_server_wake(j->s); /* on the loop's own thread, a flag */
}

static void *job_thread(void *arg)
{
    util_name_thread("rcp-job");
    run_job(arg);
    return NULL;
}

static void job_ended(rcp_job *j)
{
    if (j->running) {
        j->running = false;
        j->s->n_jobs--;
    }
}

/* Frees j once its thread is joined; without wait, only if it has already
 * exited (false: try again later). A thread's exit can take a while after
 * its job is done: glibc hands the thread's cache of freed blocks back to
 * its arena, which after a LIST of 100,000 (an answer tree of 700,000
 * blocks) merged them for about 50 ms, and a join here held every other
 * client of the loop that long. */
static bool job_free(rcp_job *j, bool wait)
{
    rcp_server *s = j->s;
    if (j->started) {
        if (wait)
            pthread_join(j->thread, NULL);
        else if (pthread_tryjoin_np(j->thread, NULL) != 0)
            return false;
        j->started = false;
    }
    job_ended(j);
    if (j->prev)
        j->prev->next = j->next;
    else
        s->jobs = j->next;
    if (j->next) j->next->prev = j->prev;
    buf_free(&j->frame);
    cJSON_Delete(j->params);
    free(j->id);
    free(j);
    return true;
}

/* Starts waiting jobs while fewer than RCP_MAX_JOBS run; drops those whose
 * connection has gone meanwhile. */
static void start_waiting(rcp_server *s)
{
    while (s->job_wait && s->n_jobs < RCP_MAX_JOBS) {
        rcp_job *j = s->job_wait;
        s->job_wait = j->wait_next;
        if (!s->job_wait) s->job_wait_tail = NULL;
        if (!j->c) {
            job_free(j, false); /* never started: nothing to join */
            continue;
        }
        j->started = j->running = true;
        s->n_jobs++;
        if (pthread_create(&j->thread, NULL, job_thread, j) != 0) {
            /* no thread to be had: the loop does it, as it did them all once */
            log_warn("rcp %s: no thread for %s, running it on the loop", j->c->peer,
                     rcp_op_name(j->op));
            j->started = false;
            job_ended(j);
            run_job(j);
        }
    }
}

bool rcp_job_start(rcp_conn *c, int op, const char *id, const cJSON *params, uint64_t t0_ns)
{
    rcp_server *s = c->srv;
    rcp_job *j = xcalloc(1, sizeof *j);
    j->s = s;
    j->c = c;
    j->op = op;
    j->id = xstrdup(id ? id : "");
    /* the request's tree lives in the loop's arena, gone by the next pass */
    j->params = params ? cJSON_Duplicate(params, true) : NULL;
    j->t0_ns = t0_ns;
    j->wire = c->wire_out; /* fixed meanwhile: c reads nothing until the answer */
    if (params && !j->params) {
        free(j->id);
        free(j);
        return false;
    }
    j->next = s->jobs;
    if (s->jobs) s->jobs->prev = j;
    s->jobs = j;
    if (s->job_wait_tail)
        s->job_wait_tail->wait_next = j;
    else
        s->job_wait = j;
    s->job_wait_tail = j;
    c->job = j;
    c->read_paused = true; /* resumed in conn_settle once the answer is queued */
    rcp_conn_track(c);
    start_waiting(s);
    return true;
}

bool rcp_job_finish(rcp_conn *c)
{
    rcp_job *j = c->job;
    if (!j || !__atomic_load_n(&j->done, __ATOMIC_ACQUIRE)) return false;
    if (j->code != STM_OK) c->srv->m.errors[j->code]++;
    if (j->written) {
        if (c->out.len == 0) {
            /* nothing queued before it: the frame becomes the output (an
             * answer of up to 16 MiB is not copied on the loop) */
            buf t = c->out;
            c->out = j->frame;
            j->frame = t;
        } else {
            buf_add(&c->out, j->frame.data, j->frame.len);
        }
        rcp_queue_mark(c, j->seq, j->op, j->t0_ns);
    } else {
        c->closing = true;
    }
    c->job = NULL;
    j->c = NULL;
    job_ended(j);
    job_free(j, false); /* else freed by a later rcp_jobs_reap */
    start_waiting(c->srv);
    rcp_conn_track(c);
    return true;
}

void rcp_job_orphan(rcp_conn *c)
{
    if (!c->job) return;
    c->job->c = NULL;
    c->job = NULL;
}

void rcp_jobs_reap(rcp_server *s, bool wait)
{
    if (wait) s->job_wait = s->job_wait_tail = NULL; /* those never start */
    for (rcp_job *j = s->jobs, *next; j; j = next) {
        next = j->next;
        if (wait && j->c) rcp_job_orphan(j->c);
        /* a job not done is either running or waiting in the queue, where
         * start_waiting drops it once its turn comes */
        if (j->c) continue;
        bool done = __atomic_load_n(&j->done, __ATOMIC_ACQUIRE);
        if (done) job_ended(j); /* its slot is free though its thread may linger */
        if (wait || done) job_free(j, wait);
    }
    if (!wait) start_waiting(s);
}
