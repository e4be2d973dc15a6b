/*
 * hub.c - one subscription hub for RCP watches and the mount's watch files.
 *
 * Every record the engine applies is published here in WAL order, into a
 * bounded ring of immutable, reference-counted events. A subscriber is a
 * cursor into the ring plus a filter; it only ever moves over events whose
 * WAL sequence is acknowledged (durable before visible). Writers never wait
 * for subscribers: when a subscriber falls behind the ring's tail it is told
 * (eng_sub_next returns -1 with the offset to resume from), never silently
 * skipped. A subscription with from_offset first reads the WAL from there
 * and switches to the ring at the first offset the ring holds, so the
 * catch-up and the live stream meet with no gap and no duplicate.
 *
 * With nobody subscribed nothing is published and the ring is emptied:
 * building events that no one reads cost a writer a tenth of its time.
 * The ring therefore holds every record since the first current
 * subscription began, and a subscription that starts at an older offset
 * catches up from the WAL at least up to the point where it began.
 */
#include "engine/internal.h"

#include <stdlib.h>
#include <string.h>

#define RING_EVENTS 16384
#define RING_BYTES (16u * 1024 * 1024)

typedef struct hevent {
    int refs;
    size_t bytes;
    eng_event ev;
    char data[]; /* the strings ev points at */
} hevent;

struct eng_sub {
    hub *h;
    eng_filter f;
    char **strs; /* deep copies behind f */
    size_t n_strs;
    void (*wake)(void *);
    void *wake_arg;
    uint64_t cursor;      /* next ring index */
    uint64_t next_offset; /* first offset not yet delivered */
    hevent *held;         /* returned last; released on the next call */
    wal_iter *it;         /* catching up from the WAL when not NULL */
    bool has_peek;
    wal_record peek;
    buf peek_payload;
    buf scan_store;       /* entry_scan's store while catching up */
    uint64_t catch_until; /* catch-up reads the WAL at least up to here: the
                             records appended before the subscription began */
    eng_sub *next;
};

struct hub {
    eng *e;
    pthread_mutex_t lock;
    hevent **ring;
    uint64_t first, next; /* ring indices present: [first, next) */
    size_t bytes;
    eng_sub *subs;
    size_t n_subs;
};

static void hevent_release(hevent *ev)
{
    if (ev && __atomic_sub_fetch(&ev->refs, 1, __ATOMIC_ACQ_REL) == 0) free(ev);
}

hub *hub_new(eng *e)
{
    hub *h = xcalloc(1, sizeof *h);
    h->e = e;
    pthread_mutex_init(&h->lock, NULL);
    h->ring = xcalloc(RING_EVENTS, sizeof *h->ring);
    return h;
}

void hub_free(hub *h)
{
    for (uint64_t i = h->first; i < h->next; i++) hevent_release(h->ring[i % RING_EVENTS]);
    while (h->subs) eng_unsubscribe(h->subs);
    free(h->ring);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

bool hub_active(hub *h)
{
    return __atomic_load_n(&h->n_subs, __ATOMIC_ACQUIRE) != 0;
}

size_t hub_count(hub *h)
{
    pthread_mutex_lock(&h->lock);
    size_t n = h->n_subs;
    pthread_mutex_unlock(&h->lock);
    return n;
}

/* Packs the strings of an event into one allocation. */
struct packer {
    const char *src[12];
    size_t len[12];
    int n;
};

static int pack_add(struct packer *p, const char *s, size_t len)
{
    p->src[p->n] = s;
    p->len[p->n] = s ? len : 0;
    return p->n++;
}

/* Builds an event from a WAL entry's fields. history_line may be NULL. */
static hevent *make_event(const wal_record *rec, const entry_fields *f, const char *machine,
                          uint32_t version, const char *ctx_text, const char *history_line,
                          size_t history_len)
{
    buf entry_line = {0};
    if (!ctx_text) ctx_text = rec->type == WAL_T_CREATE_INSTANCE ? f->initial_ctx : f->ctx;
    if (rec->payload) eng_render_entry(&entry_line, rec->payload, rec->len, rec->offset, rec->seq);
    struct packer pk = {.n = 0};
    const char *id = f->instance_id;
    int i_id = pack_add(&pk, id, id ? strlen(id) : 0);
    int i_m = pack_add(&pk, machine, machine ? strlen(machine) : 0);
    const char *evn = f->event, *from = f->from_state,
               *to = rec->type == WAL_T_CREATE_INSTANCE ? f->initial_state : f->to_state,
               *eid = f->event_id;
    int i_ev = pack_add(&pk, evn, evn ? strlen(evn) : 0);
    int i_from = pack_add(&pk, from, from ? strlen(from) : 0);
    int i_to = pack_add(&pk, to, to ? strlen(to) : 0);
    int i_p = pack_add(&pk, f->payload ? f->payload : "null", f->payload ? f->payload_len : 4);
    int i_c = pack_add(&pk, ctx_text, ctx_text ? strlen(ctx_text) : 0);
    int i_eid = pack_add(&pk, eid, eid ? strlen(eid) : 0);
    int i_h = pack_add(&pk, history_line, history_len);
    int i_e = pack_add(&pk, entry_line.data, entry_line.len);
    size_t total = 0;
    for (int i = 0; i < pk.n; i++) total += pk.len[i] + 1;
    hevent *ev = xcalloc(1, sizeof *ev + total);
    ev->refs = 1;
    ev->bytes = sizeof *ev + total;
    const char *ptr[12];
    char *w = ev->data;
    for (int i = 0; i < pk.n; i++) {
        if (!pk.src[i]) {
            ptr[i] = NULL;
            continue;
        }
        memcpy(w, pk.src[i], pk.len[i]);
        w[pk.len[i]] = 0;
        ptr[i] = w;
        w += pk.len[i] + 1;
    }
    eng_event *e = &ev->ev;
    e->offset = rec->offset;
    e->seq = rec->seq;
    e->ts = f->ts;
    e->type = rec->type;
    e->instance_id = ptr[i_id];
    e->machine = ptr[i_m];
    e->version = version;
    e->event = ptr[i_ev];
    e->from_state = ptr[i_from];
    e->to_state = ptr[i_to];
    e->payload_json = ptr[i_p] ? ptr[i_p] : "null";
    e->ctx_json = ptr[i_c];
    e->event_id = ptr[i_eid];
    e->history_line = ptr[i_h];
    e->entry_line = ptr[i_e];
    buf_free(&entry_line);
    return ev;
}

static uint32_t version_of(const entry_fields *f)
{
    return f->has_version && f->version <= UINT32_MAX ? (uint32_t)f->version : 0;
}

void hub_publish(hub *h, const wal_record *rec, const entry_fields *f, const instance *in,
                 const char *history_line, size_t history_len)
{
    /* Subscribers come and go under e->lock, which the caller holds; one
     * leaving at this moment costs one unread event, no more. */
    if (__atomic_load_n(&h->n_subs, __ATOMIC_ACQUIRE) == 0) {
        if (h->next > h->first) {
            pthread_mutex_lock(&h->lock);
            for (; h->first < h->next; h->first++) {
                hevent_release(h->ring[h->first % RING_EVENTS]);
                h->ring[h->first % RING_EVENTS] = NULL;
            }
            h->bytes = 0;
            pthread_mutex_unlock(&h->lock);
        }
        return;
    }
    const char *machine = in ? in->m->name : f->machine;
    uint32_t version = in ? in->mv->version : version_of(f);
    hevent *ev = make_event(rec, f, machine, version, in ? in->ctx : NULL, history_line,
                            history_len);
    pthread_mutex_lock(&h->lock);
    while (h->next - h->first >= RING_EVENTS ||
           (h->next > h->first && h->bytes + ev->bytes > RING_BYTES)) {
        hevent *old = h->ring[h->first % RING_EVENTS];
        h->bytes -= old->bytes;
        h->ring[h->first % RING_EVENTS] = NULL;
        h->first++;
        hevent_release(old);
    }
    h->ring[h->next % RING_EVENTS] = ev;
    h->next++;
    h->bytes += ev->bytes;
    pthread_mutex_unlock(&h->lock);
}

void hub_wake(hub *h)
{
    pthread_mutex_lock(&h->lock);
    for (eng_sub *s = h->subs; s; s = s->next)
        if (s->wake) s->wake(s->wake_arg);
    pthread_mutex_unlock(&h->lock);
}

static bool in_list(const char *const *list, size_t n, const char *s)
{
    if (!n) return true;
    if (!s) return false;
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i], s) == 0) return true;
    return false;
}

static bool matches(const eng_filter *f, const eng_event *ev)
{
    if (ev->type == WAL_T_CHECKPOINT || ev->type == WAL_T_NOOP || ev->type == WAL_T_SNAPSHOT)
        return false;
    if (f->apply_only && ev->type != WAL_T_APPLY_EVENT) return false;
    if (f->instance_id && (!ev->instance_id || strcmp(f->instance_id, ev->instance_id) != 0))
        return false;
    if (!in_list(f->machines, f->n_machines, ev->machine)) return false;
    bool is_apply = ev->type == WAL_T_APPLY_EVENT;
    if (f->n_from_states && (!is_apply || !in_list(f->from_states, f->n_from_states, ev->from_state)))
        return false;
    if (f->n_to_states && !in_list(f->to_states, f->n_to_states, ev->to_state)) return false;
    if (f->n_events && (!is_apply || !in_list(f->events, f->n_events, ev->event))) return false;
    return true;
}

static const char *const *copy_list(eng_sub *s, const char *const *src, size_t n)
{
    if (!n) return NULL;
    const char **dst = xmalloc(n * sizeof *dst);
    s->strs = xrealloc(s->strs, (s->n_strs + n + 1) * sizeof *s->strs);
    s->strs[s->n_strs++] = (char *)dst;
    for (size_t i = 0; i < n; i++) {
        char *c = xstrdup(src[i]);
        s->strs[s->n_strs++] = c;
        dst[i] = c;
    }
    return dst;
}

/* First ring index whose event has offset >= off (caller holds the lock). */
static uint64_t ring_seek(hub *h, uint64_t off)
{
    uint64_t lo = h->first, hi = h->next;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (h->ring[mid % RING_EVENTS]->ev.offset < off) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

stm_code eng_subscribe(eng *e, const eng_filter *f, void (*wake)(void *), void *arg,
                       eng_sub **out, stm_err *err)
{
    hub *h = e->hub;
    eng_sub *s = xcalloc(1, sizeof *s);
    s->h = h;
    s->f = *f;
    if (f->instance_id) {
        char *c = xstrdup(f->instance_id);
        s->strs = xrealloc(s->strs, (s->n_strs + 1) * sizeof *s->strs);
        s->strs[s->n_strs++] = c;
        s->f.instance_id = c;
    }
    s->f.machines = copy_list(s, f->machines, f->n_machines);
    s->f.from_states = copy_list(s, f->from_states, f->n_from_states);
    s->f.to_states = copy_list(s, f->to_states, f->n_to_states);
    s->f.events = copy_list(s, f->events, f->n_events);
    s->wake = wake;
    s->wake_arg = arg;
    /* No record is being applied (and published, or not) while it starts. */
    pthread_mutex_lock(&e->lock);
    pthread_mutex_lock(&h->lock);
    s->cursor = h->next;
    /* Where this subscription starts, should it ever need to resume from the
     * WAL: just after the newest record now (every appended record is in
     * the ring; an empty ring means nothing was appended since open). */
    if (h->next > h->first) {
        s->next_offset = h->ring[(h->next - 1) % RING_EVENTS]->ev.offset + 1;
    } else {
        wal_stats st;
        wal_get_stats(e->w, &st);
        s->next_offset = st.latest_offset;
    }
    if (f->from_offset) {
        bool in_ring = h->next > h->first && h->ring[h->first % RING_EVENTS]->ev.offset <= f->from_offset;
        if (in_ring) {
            s->cursor = ring_seek(h, f->from_offset);
        } else {
            /* Offsets in segment 0 hold no record: they ask for the start,
             * i.e. the oldest record kept. Any other offset before that
             * record was in a segment compaction deleted, and starting
             * later would hand the client a stream with a hole it cannot
             * see, so it is told instead. */
            wal_stats ws;
            wal_get_stats(e->w, &ws);
            stm_code rc = STM_OK;
            if (f->from_offset >= WAL_OFFSET(1, 0) && ws.first_offset && f->from_offset < ws.first_offset)
                rc = stm_fail(err, STM_BAD_REQUEST,
                              "from_offset %llu is no longer in the log: compaction removed the "
                              "records before offset %llu, the oldest kept; read the current "
                              "state, then watch from %llu (or from 0 for all the log holds)",
                              (unsigned long long)f->from_offset,
                              (unsigned long long)ws.first_offset,
                              (unsigned long long)ws.first_offset);
            else
                rc = wal_iter_open(e->w, f->from_offset, false, &s->it, err);
            if (rc != STM_OK) {
                pthread_mutex_unlock(&h->lock);
                pthread_mutex_unlock(&e->lock);
                s->h = NULL;
                eng_unsubscribe(s);
                return rc;
            }
            /* The records before this point may not be in the ring (nobody
             * was subscribed) nor yet in the file (the flusher batches). */
            wal_stats st;
            wal_get_stats(e->w, &st);
            s->catch_until = st.latest_offset;
            /* only a signal: the listener a writing thread calls takes
             * h->lock, which is held here */
            wal_kick(e->w, st.entry_count);
        }
        s->next_offset = f->from_offset;
    }
    s->next = h->subs;
    h->subs = s;
    __atomic_add_fetch(&h->n_subs, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&h->lock);
    pthread_mutex_unlock(&e->lock);
    *out = s;
    return STM_OK;
}

void eng_unsubscribe(eng_sub *s)
{
    if (!s) return;
    hub *h = s->h;
    if (h) {
        pthread_mutex_lock(&h->lock);
        for (eng_sub **p = &h->subs; *p; p = &(*p)->next)
            if (*p == s) {
                *p = s->next;
                __atomic_sub_fetch(&h->n_subs, 1, __ATOMIC_RELEASE);
                break;
            }
        pthread_mutex_unlock(&h->lock);
    }
    hevent_release(s->held);
    if (s->it) wal_iter_close(s->it);
    buf_free(&s->peek_payload);
    buf_free(&s->scan_store);
    for (size_t i = 0; i < s->n_strs; i++) free(s->strs[i]);
    free(s->strs);
    free(s);
}

/* One step of catching up from the WAL. Returns 1 with an event held, 0 when
 * the next record is not durable yet, 2 when the WAL part is done. */
static int catch_up(eng_sub *s, eng_event *out)
{
    hub *h = s->h;
    eng *e = h->e;
    for (;;) {
        if (!s->has_peek) {
            stm_err err;
            int r = wal_iter_next(s->it, &s->peek, &err);
            /* the end of what is written so far, short of where the ring
             * takes over: the rest is on its way to the file */
            if (r == 0 && s->next_offset < s->catch_until) return 0;
            if (r <= 0) return 2;
            buf_reset(&s->peek_payload);
            buf_add(&s->peek_payload, s->peek.payload, s->peek.len);
            s->peek.payload = s->peek_payload.data;
            s->has_peek = true;
        }
        pthread_mutex_lock(&h->lock);
        bool ring_has = h->next > h->first &&
                        h->ring[h->first % RING_EVENTS]->ev.offset <= s->peek.offset;
        pthread_mutex_unlock(&h->lock);
        if (ring_has) {
            s->next_offset = s->peek.offset;
            return 2;
        }
        if (s->peek.seq > eng_acked_seq(e)) return 0;
        s->has_peek = false;
        s->next_offset = s->peek.offset + 1;
        entry_fields f;
        if (!entry_scan(s->peek.payload, s->peek.len, &s->scan_store, &f)) continue;
        /* machine and version of the instance, as it stands now */
        const char *machine = f.machine;
        uint32_t version = version_of(&f);
        char *mcopy = NULL;
        const char *id = f.instance_id;
        if (id && !machine) {
            pthread_mutex_lock(&e->lock);
            instance *in = inst_find(e, id);
            if (in) {
                mcopy = xstrdup(in->m->name);
                version = in->mv->version;
            }
            pthread_mutex_unlock(&e->lock);
            machine = mcopy;
        }
        hevent *ev = make_event(&s->peek, &f, machine, version, NULL, NULL, 0);
        free(mcopy);
        s->next_offset = s->peek.offset + 1;
        if (!matches(&s->f, &ev->ev)) {
            hevent_release(ev);
            continue;
        }
        s->held = ev;
        *out = ev->ev;
        return 1;
    }
}

int eng_sub_next(eng_sub *s, eng_event *ev, uint64_t *resume_offset)
{
    hub *h = s->h;
    hevent_release(s->held);
    s->held = NULL;
    if (s->it) {
        int r = catch_up(s, ev);
        if (r == 1) return 1;
        if (r == 0) return 0;
        wal_iter_close(s->it);
        s->it = NULL;
        pthread_mutex_lock(&h->lock);
        s->cursor = ring_seek(h, s->next_offset);
        pthread_mutex_unlock(&h->lock);
    }
    uint64_t acked = eng_acked_seq(h->e);
    pthread_mutex_lock(&h->lock);
    for (;;) {
        if (s->cursor < h->first) {
            /* Fell behind the ring: say where to pick up from the WAL. */
            if (resume_offset) *resume_offset = s->next_offset;
            s->cursor = h->next;
            pthread_mutex_unlock(&h->lock);
            return -1;
        }
        if (s->cursor >= h->next) break;
        hevent *he = h->ring[s->cursor % RING_EVENTS];
        if (he->ev.seq > acked) break;
        s->cursor++;
        s->next_offset = he->ev.offset + 1;
        if (!matches(&s->f, &he->ev)) continue;
        __atomic_add_fetch(&he->refs, 1, __ATOMIC_ACQ_REL);
        s->held = he;
        *ev = he->ev;
        pthread_mutex_unlock(&h->lock);
        return 1;
    }
    pthread_mutex_unlock(&h->lock);
    return 0;
}
