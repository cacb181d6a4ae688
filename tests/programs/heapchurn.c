/* A heap that churns like a database's page cache: blocks of many sizes are
 * allocated (half of them with calloc), filled with a pattern that says which
 * block and generation they are, checked later, freed and allocated again,
 * while a table beside them takes random read-modify-writes. With the
 * allocator purging freed pages at once, pages are dropped and reused all the
 * time, the case where a write right after a drop could be lost.
 *
 * Prints one digest line; exits 1 naming the first wrong byte it sees.
 * Usage: heapchurn STEPS [SEED] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 96
#define TABLE_WORDS (4u << 20) /* 16 MiB of uint32_t */

static uint64_t rng;
static uint64_t next(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng;
}

/* Word `k` of the block in `slot`, generation `gen`. */
static uint64_t pattern(unsigned slot, uint64_t gen, size_t k) {
    uint64_t x = (gen * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)slot << 40) ^ k;
    x ^= x >> 29; x *= 0xBF58476D1CE4E5B9ull; x ^= x >> 32;
    return x;
}

/* `len` is in bytes, a multiple of 8. */
struct block { uint64_t *p; size_t len; uint64_t gen; };

static size_t pick_size(void) {
    uint64_t r = next();
    switch (r % 4) {
    case 0: return (4096 + (r >> 8) % 4096) & ~7ull;        /* a page or two */
    case 1: return (16384 + (r >> 8) % 65536) & ~7ull;      /* tens of KiB */
    case 2: return (131072 + (r >> 8) % 262144) & ~7ull;    /* a few hundred KiB */
    default: return (1048576 + (r >> 8) % 1048576) & ~7ull; /* a MiB or two */
    }
}

static void fill(struct block *b, unsigned slot) {
    for (size_t k = 0; k < b->len / 8; k++) b->p[k] = pattern(slot, b->gen, k);
}

static int check(const struct block *b, unsigned slot, uint64_t step) {
    for (size_t k = 0; k < b->len / 8; k++) {
        uint64_t want = pattern(slot, b->gen, k);
        if (b->p[k] != want) {
            fprintf(stderr, "heapchurn: step %llu: block %u (generation %llu, %zu bytes at %p) word %zu is %#llx, want %#llx\n",
                    (unsigned long long)step, slot, (unsigned long long)b->gen, b->len, (void *)b->p, k,
                    (unsigned long long)b->p[k], (unsigned long long)want);
            return 0;
        }
    }
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: heapchurn STEPS [SEED]\n"); return 2; }
    uint64_t steps = strtoull(argv[1], 0, 0);
    rng = argc > 2 ? strtoull(argv[2], 0, 0) : 0x2545F4914F6CDD1Dull;
    uint32_t *table = calloc(TABLE_WORDS, 4);
    struct block blocks[SLOTS];
    if (!table) { perror("calloc"); return 1; }
    for (unsigned s = 0; s < SLOTS; s++) {
        blocks[s].len = pick_size();
        blocks[s].gen = s + 1;
        blocks[s].p = malloc(blocks[s].len);
        if (!blocks[s].p) { perror("malloc"); return 1; }
        fill(&blocks[s], s);
    }
    uint64_t digest = 0;
    for (uint64_t step = 0; step < steps; step++) {
        unsigned s = next() % SLOTS;
        struct block *b = &blocks[s];
        if (!check(b, s, step)) return 1;
        free(b->p);
        b->len = pick_size();
        b->gen += SLOTS;
        if (next() & 1) {
            b->p = calloc(1, b->len);
            if (!b->p) { perror("calloc"); return 1; }
            for (size_t k = 0; k < b->len / 8; k += 61) {
                if (b->p[k] != 0) {
                    fprintf(stderr, "heapchurn: step %llu: calloc gave %zu bytes at %p with word %zu = %#llx\n",
                            (unsigned long long)step, b->len, (void *)b->p, k, (unsigned long long)b->p[k]);
                    return 1;
                }
            }
        } else {
            b->p = malloc(b->len);
            if (!b->p) { perror("malloc"); return 1; }
        }
        fill(b, s);
        for (int k = 0; k < 2048; k++) {
            uint64_t r = next();
            uint32_t *w = &table[(r >> 16) % TABLE_WORDS];
            digest = digest * 1099511628211ull + *w;
            *w = *w * 2654435761u + (uint32_t)r;
        }
    }
    for (unsigned s = 0; s < SLOTS; s++)
        if (!check(&blocks[s], s, steps)) return 1;
    for (size_t k = 0; k < TABLE_WORDS; k++) digest = digest * 31 + table[k];
    printf("%016llx\n", (unsigned long long)digest);
    return 0;
}
