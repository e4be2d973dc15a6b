/*
 * htab.h - buckets of intrusive chains that grow without a pause.
 *
 * Each entry carries its own chain pointer (at byte offset link), so the
 * table allocates nothing per entry. When it doubles, the old buckets move
 * to the new array a few at a time on later adds, as Redis's dict does:
 * rehashing everything in the add that crossed the line held the engine's
 * lock 25 ms at 65,536 instances and 54 ms at 262,144 (every RCP client
 * waited), and twice that at each doubling after. Until its bucket has
 * moved, an entry may be on a chain of either array, so a lookup walks up
 * to two chains (htab_chains).
 */
#ifndef STM_HTAB_H
#define STM_HTAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    void **tab;                 /* chain heads; size a power of two, or 0 */
    size_t size;
    void **old;                 /* while growing: the array being emptied */
    size_t old_size, old_next;  /* old[0..old_next) have moved */
    size_t n;                   /* entries */
    size_t first_size;          /* buckets at the first add */
    size_t link;                /* offset of an entry's chain pointer */
    uint64_t (*hash)(const void *entry);
} htab;

/* An empty table; entries of type T chain through the member at link
 * (offsetof(T, member)); hash gives an entry's hash, the one its adds,
 * removals and lookups pass. */
void htab_init(htab *t, size_t first_size, size_t link, uint64_t (*hash)(const void *entry));
/* Sizes an empty table for n entries at once, so that filling it (a
 * snapshot's load) moves nothing. */
void htab_reserve(htab *t, size_t n);
/* Frees the arrays, not the entries. */
void htab_free(htab *t);
/* The chains an entry of hash h may be on: fills heads with pointers to
 * their first links (so a caller can unlink through them) and returns how
 * many (0, 1 or 2). Inline: every GET and APPLY looks an id up. */
static inline size_t htab_chains(const htab *t, uint64_t h, void **heads[2])
{
    if (!t->size) return 0;
    size_t n = 0;
    heads[n++] = &t->tab[h & (t->size - 1)];
    if (t->old) {
        size_t b = h & (t->old_size - 1);
        if (b >= t->old_next) heads[n++] = &t->old[b];
    }
    return n;
}
/* Adds an entry that is not in the table. */
void htab_add(htab *t, void *entry, uint64_t h);
/* Takes entry out; false if it was not in the table. */
bool htab_remove(htab *t, void *entry, uint64_t h);

#endif
