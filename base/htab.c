#include "base/htab.h"

#include <stdlib.h>

#include "base/buf.h"

/* Old buckets moved by each add while the table grows: the move ends after
 * old_size / HTAB_MOVE adds, long before the next doubling (old_size more),
 * and costs an add a few cache misses. */
#define HTAB_MOVE 8

#define NEXT(t, e) (*(void **)((char *)(e) + (t)->link))

void htab_init(htab *t, size_t first_size, size_t link, uint64_t (*hash)(const void *entry))
{
    *t = (htab){.first_size = first_size, .link = link, .hash = hash};
}

void htab_reserve(htab *t, size_t n)
{
    if (t->n || t->size >= n) return;
    size_t size = t->first_size ? t->first_size : 16;
    while (size < n) size *= 2;
    free(t->tab);
    free(t->old);
    t->old = NULL;
    t->old_size = t->old_next = 0;
    t->tab = xcalloc(size, sizeof *t->tab);
    t->size = size;
}

void htab_free(htab *t)
{
    free(t->tab);
    free(t->old);
    t->tab = t->old = NULL;
    t->size = t->old_size = t->old_next = t->n = 0;
}

static void move_some(htab *t)
{
    for (int k = 0; k < HTAB_MOVE && t->old_next < t->old_size; k++, t->old_next++)
        for (void *e = t->old[t->old_next], *next; e; e = next) {
            next = NEXT(t, e);
            void **head = &t->tab[t->hash(e) & (t->size - 1)];
            NEXT(t, e) = *head;
            *head = e;
        }
    if (t->old_next == t->old_size) {
        free(t->old);
        t->old = NULL;
        t->old_size = t->old_next = 0;
    }
}

void htab_add(htab *t, void *entry, uint64_t h)
{
    if (t->n + 1 > t->size && !t->old) {
        /* at most one entry a bucket on average; while the last growth is
         * still moving, chains grow a little longer for a while instead */
        t->old = t->tab;
        t->old_size = t->size;
        t->old_next = 0;
        t->size = t->size ? t->size * 2 : (t->first_size ? t->first_size : 16);
        t->tab = xcalloc(t->size, sizeof *t->tab);
        if (!t->old_size) t->old = NULL;
    }
    if (t->old) move_some(t);
    void **head = &t->tab[h & (t->size - 1)];
    NEXT(t, entry) = *head;
    *head = entry;
    t->n++;
}

bool htab_remove(htab *t, void *entry, uint64_t h)
{
    void **heads[2];
    size_t nc = htab_chains(t, h, heads);
    for (size_t c = 0; c < nc; c++)
        for (void **p = heads[c]; *p; p = &NEXT(t, *p))
            if (*p == entry) {
                *p = NEXT(t, entry);
                t->n--;
                return true;
            }
    return false;
}
