/*
 * buf.h - a growable byte buffer (the strbuf/sds of stmfs).
 *
 * data is always NUL-terminated after len bytes, so buf_cstr is free.
 * Allocation failure aborts the process with a message: every caller would
 * otherwise need an error path for a condition it cannot handle anyway.
 * A zeroed buf ({0}) is a valid empty buffer.
 */
#ifndef STM_BUF_H
#define STM_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    char *data;
    size_t len;
    size_t cap;
} buf;

void buf_free(buf *b);                        /* releases memory, leaves an empty buf */
void buf_reset(buf *b);                       /* len = 0, keeps capacity */
void buf_grow(buf *b, size_t extra);          /* buf_reserve's allocating half */
void buf_puts(buf *b, const char *s);
void buf_printf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_vprintf(buf *b, const char *fmt, va_list ap);
/* Decimal, without printf: numbers of every line of a snapshot or a JSON
 * answer are a good part of writing it. */
void buf_put_u64(buf *b, uint64_t v);
void buf_put_i64(buf *b, int64_t v);
const char *buf_cstr(buf *b);                 /* "" for an empty, never-used buf */
char *buf_detach(buf *b, size_t *len);        /* caller owns the returned malloc'd text */
/* Appends the first `cap` bytes of s[0..n) as one line a person can read
 * back in a message: valid UTF-8 as it is; backslashes doubled; control
 * bytes and bytes that are not UTF-8 as \xNN; a cut says
 * how long the whole was. For user text quoted in errors and logs. */
void buf_add_shown(buf *b, const char *s, size_t n, size_t cap);

/* Inline because JSON writing calls them per token, millions of times a
 * second on the write path; the common case is a compare and a copy. */
static inline void buf_reserve(buf *b, size_t extra) /* room for extra more bytes + NUL */
{
    if (b->len + extra + 1 > b->cap) buf_grow(b, extra);
}

static inline void buf_add(buf *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
}

static inline void buf_putc(buf *b, char c)
{
    buf_reserve(b, 1);
    b->data[b->len++] = c;
    b->data[b->len] = 0;
}

/* malloc/strdup that abort on failure, for the same reason as above. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

#endif
