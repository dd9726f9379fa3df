/* scratch.c: per-thread, grow-only scratch memory for the CPU ops (im2col chunks, score matrices), so a
 * training step allocates nothing once the first has run. Freed by cpu_scratch_release or at thread exit. */
#include "cpu.h"

#include <pthread.h>
#include <stdlib.h>

/* Blocks are aligned to a cache line (and an AVX-512 vector). */
#define SCRATCH_ALIGN 64

typedef struct scratch_state {
    void *block[CPU_SCRATCH_SLOTS];
    size_t cap[CPU_SCRATCH_SLOTS];
    int registered; /* this thread's state is set under scratch_key, so its exit frees the blocks */
} scratch_state;

static _Thread_local scratch_state scratch;
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static int scratch_key_ok;

static void scratch_free_blocks(scratch_state *st)
{
    for (int s = 0; s < CPU_SCRATCH_SLOTS; s++) {
        free(st->block[s]);
        st->block[s] = NULL;
        st->cap[s] = 0;
    }
}

/* Thread exit: the key's value is the exiting thread's own state. */
static void scratch_at_exit(void *st)
{
    scratch_free_blocks(st);
}

static void scratch_make_key(void)
{
    scratch_key_ok = pthread_key_create(&scratch_key, scratch_at_exit) == 0;
}

void *cpu_scratch(int slot, size_t bytes)
{
    if (slot < 0 || slot >= CPU_SCRATCH_SLOTS)
        return NULL;
    scratch_state *st = &scratch;
    if (st->block[slot] && bytes <= st->cap[slot])
        return st->block[slot];
    if (!st->registered) {
        pthread_once(&scratch_once, scratch_make_key);
        st->registered = scratch_key_ok && pthread_setspecific(scratch_key, st) == 0;
    }
    /* The old contents are not kept: free first, so the peak is the new size only. */
    free(st->block[slot]);
    st->block[slot] = NULL;
    st->cap[slot] = 0;
    size_t size = (bytes + SCRATCH_ALIGN - 1) / SCRATCH_ALIGN * SCRATCH_ALIGN;
    if (size < bytes) /* overflow */
        return NULL;
    if (size == 0)
        size = SCRATCH_ALIGN;
    void *p = aligned_alloc(SCRATCH_ALIGN, size);
    if (!p)
        return NULL;
    st->block[slot] = p;
    st->cap[slot] = size;
    return p;
}

void cpu_scratch_release(void)
{
    scratch_free_blocks(&scratch);
}
