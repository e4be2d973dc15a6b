/*
 * inode.c - the inode table: one node per path the kernel holds.
 *
 * A path is (kind, a, b, ver): e.g. (K_STATE, "o-1") is instances/o-1/state.
 * Inode numbers come from a counter and are never reused, so a number the
 * kernel still holds cannot come to mean another file. A node lives while
 * the kernel has looked it up (nlookup > 0); FORGET drops it. Two chained
 * hash tables (by path, by number) grow by doubling. Callers hold f->lock.
 */
#include <stdlib.h>
#include <string.h>

#include "fs/internal.h"

static uint64_t hash_path(enum fs_kind kind, const char *a, const char *b, uint32_t ver)
{
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)kind;
    h *= 1099511628211ULL;
    for (const char *s = a ? a : ""; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    h = (h ^ 0xff) * 1099511628211ULL;
    for (const char *s = b ? b : ""; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    h = (h ^ ver) * 1099511628211ULL;
    return h ^ (h >> 29);
}

static uint64_t hash_ino(uint64_t ino)
{
    ino ^= ino >> 33;
    ino *= 0xff51afd7ed558ccdULL;
    return ino ^ (ino >> 33);
}

static bool streq_opt(const char *x, const char *y)
{
    return strcmp(x ? x : "", y ? y : "") == 0;
}

static void grow(fs *f)
{
    size_t nb = f->nbuckets * 2;
    fs_node **bk = xcalloc(nb, sizeof *bk), **bi = xcalloc(nb, sizeof *bi);
    for (size_t i = 0; i < f->nbuckets; i++) {
        for (fs_node *n = f->by_key[i], *next; n; n = next) {
            next = n->next_key;
            n->next_key = bk[n->hash & (nb - 1)];
            bk[n->hash & (nb - 1)] = n;
        }
        for (fs_node *n = f->by_ino[i], *next; n; n = next) {
            next = n->next_ino;
            size_t j = hash_ino(n->ino) & (nb - 1);
            n->next_ino = bi[j];
            bi[j] = n;
        }
    }
    free(f->by_key);
    free(f->by_ino);
    f->by_key = bk;
    f->by_ino = bi;
    f->nbuckets = nb;
}

void fs_inodes_init(fs *f)
{
    f->nbuckets = 1024;
    f->by_key = xcalloc(f->nbuckets, sizeof *f->by_key);
    f->by_ino = xcalloc(f->nbuckets, sizeof *f->by_ino);
    f->next_ino = FUSE_ROOT_ID;
    /* the fixed nodes, root first so it gets FUSE_ROOT_ID */
    static const enum fs_kind fixed[] = {K_ROOT, K_MACHINES, K_INSTANCES, K_WAL,
                                         K_WAL_ENTRIES, K_WAL_WATCH, K_WAL_STATS};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        fs_node_get(f, fixed[i], NULL, NULL, 0)->pinned = true;
}

static void node_free(fs_node *n)
{
    if (n->blob) fs_blob_unref(n->blob);
    free(n->a);
    free(n->b);
    free(n);
}

void fs_inodes_free(fs *f)
{
    for (size_t i = 0; i < f->nbuckets; i++)
        for (fs_node *n = f->by_key[i], *next; n; n = next) {
            next = n->next_key;
            node_free(n);
        }
    free(f->by_key);
    free(f->by_ino);
    f->by_key = f->by_ino = NULL;
    f->nnodes = 0;
}

fs_node *fs_node_find(fs *f, enum fs_kind kind, const char *a, const char *b, uint32_t ver)
{
    uint64_t h = hash_path(kind, a, b, ver);
    for (fs_node *n = f->by_key[h & (f->nbuckets - 1)]; n; n = n->next_key)
        if (n->hash == h && n->kind == kind && n->ver == ver && streq_opt(n->a, a) &&
            streq_opt(n->b, b))
            return n;
    return NULL;
}

fs_node *fs_node_get(fs *f, enum fs_kind kind, const char *a, const char *b, uint32_t ver)
{
    fs_node *n = fs_node_find(f, kind, a, b, ver);
    if (n) return n;
    if (f->nnodes + 1 > f->nbuckets) grow(f);
    n = xcalloc(1, sizeof *n);
    n->ino = f->next_ino++;
    n->kind = kind;
    n->a = a ? xstrdup(a) : NULL;
    n->b = b ? xstrdup(b) : NULL;
    n->ver = ver;
    n->hash = hash_path(kind, a, b, ver);
    size_t i = n->hash & (f->nbuckets - 1), j = hash_ino(n->ino) & (f->nbuckets - 1);
    n->next_key = f->by_key[i];
    f->by_key[i] = n;
    n->next_ino = f->by_ino[j];
    f->by_ino[j] = n;
    f->nnodes++;
    return n;
}

fs_node *fs_node_by_ino(fs *f, uint64_t ino)
{
    for (fs_node *n = f->by_ino[hash_ino(ino) & (f->nbuckets - 1)]; n; n = n->next_ino)
        if (n->ino == ino) return n;
    return NULL;
}

void fs_node_forget(fs *f, fs_node *n, uint64_t nlookup)
{
    n->nlookup = nlookup > n->nlookup ? 0 : n->nlookup - nlookup;
    if (n->nlookup || n->pinned) return;
    fs_node **pp = &f->by_key[n->hash & (f->nbuckets - 1)];
    while (*pp && *pp != n) pp = &(*pp)->next_key;
    if (*pp) *pp = n->next_key;
    pp = &f->by_ino[hash_ino(n->ino) & (f->nbuckets - 1)];
    while (*pp && *pp != n) pp = &(*pp)->next_ino;
    if (*pp) *pp = n->next_ino;
    f->nnodes--;
    node_free(n);
}

fs_blob *fs_blob_new(const char *data, size_t len)
{
    fs_blob *b = xmalloc(sizeof *b + len + 1);
    atomic_init(&b->ref, 1);
    b->len = len;
    if (len) memcpy(b->data, data, len);
    b->data[len] = 0;
    return b;
}

fs_blob *fs_blob_ref(fs_blob *b)
{
    atomic_fetch_add(&b->ref, 1);
    return b;
}

void fs_blob_unref(fs_blob *b)
{
    if (b && atomic_fetch_sub(&b->ref, 1) == 1) free(b);
}
