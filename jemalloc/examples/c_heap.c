/* A C program on the system libjemalloc with farmem linked in: fills a heap
 * larger than the limit, lets farmem evict, checks every byte, frees half and
 * has jemalloc purge (farmem drops its copies), then uninstalls and checks
 * again. Prints one "key=value" line per figure; exits 1 on a wrong byte.
 *
 *   cargo build --release -p farmem-jemalloc-capi
 *   cc -O2 jemalloc/examples/c_heap.c -Ijemalloc/include \
 *      target/release/libfarmem_jemalloc_c.a -ljemalloc -lpthread -ldl -lm -o c_heap
 *   ./c_heap 512 128        # heap MiB, limit MiB
 */
#include <jemalloc/jemalloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "farmem_jemalloc.h"

#define VALUE (64 * 1024)

/* The byte at i of value k: different for every value and page. */
static uint8_t byte_at(uint64_t k, size_t i) {
    uint64_t x = k * 0x9e3779b97f4a7c15ull ^ (uint64_t)(i / 4096) * 0xbf58476d1ce4e5b9ull;
    return (uint8_t)(x >> ((i % 8) * 8)) ^ (uint8_t)(i / 64);
}

static size_t check(uint8_t **values, size_t n) {
    size_t bad = 0;
    for (size_t k = 0; k < n; k++) {
        if (!values[k]) continue;
        for (size_t i = 0; i < VALUE; i++) {
            if (values[k][i] != byte_at(k, i)) { bad++; break; }
        }
    }
    return bad;
}

static void stats(const char *stage) {
    struct farmem_jemalloc_stats s;
    if (farmem_jemalloc_stats(&s) != 0) return;
    printf("%s registered_bytes=%llu resident_pages=%llu evicted_pages=%llu pages_evicted_total=%llu "
           "faults_from_tier=%llu pages_dropped_by_program=%llu pages_poisoned=%llu tier_bytes=%llu\n",
           stage, (unsigned long long)s.registered_bytes, (unsigned long long)s.resident_pages,
           (unsigned long long)s.evicted_pages, (unsigned long long)s.pages_evicted_total,
           (unsigned long long)s.faults_from_tier, (unsigned long long)s.pages_dropped_by_program,
           (unsigned long long)s.pages_poisoned, (unsigned long long)s.tier_bytes);
}

int main(int argc, char **argv) {
    size_t heap_mib = argc > 1 ? strtoul(argv[1], 0, 10) : 512;
    size_t limit_mib = argc > 2 ? strtoul(argv[2], 0, 10) : 128;
    char config[64];
    snprintf(config, sizeof config, "limit=%zuM tiers=lz4", limit_mib);
    if (farmem_jemalloc_install(config) != 0) {
        fprintf(stderr, "c_heap: farmem: %s\n", farmem_jemalloc_last_error());
        return 2;
    }
    size_t n = heap_mib * 1024 * 1024 / VALUE;
    uint8_t **values = calloc(n, sizeof *values);
    for (size_t k = 0; k < n; k++) {
        values[k] = malloc(VALUE);
        if (!values[k]) { fprintf(stderr, "c_heap: out of memory\n"); return 2; }
        for (size_t i = 0; i < VALUE; i++) values[k][i] = byte_at(k, i);
    }
    struct farmem_jemalloc_stats s;
    for (int t = 0; t < 300; t++) { /* up to 30 s for the policy */
        farmem_jemalloc_stats(&s);
        if (s.pages_evicted_total > 0 && s.resident_pages * 4096 <= limit_mib * 1024 * 1024 * 5 / 4) break;
        usleep(100 * 1000);
    }
    stats("settled");
    size_t bad = check(values, n);
    stats("checked");
    printf("mismatches=%zu\n", bad);

    /* Free half and purge: jemalloc gives the pages back with MADV_DONTNEED,
     * and farmem drops its copies of those that were evicted. */
    for (size_t k = 0; k < n; k += 2) { free(values[k]); values[k] = NULL; }
    if (mallctl("arena." "4096" ".purge", NULL, NULL, NULL, 0) != 0) fprintf(stderr, "c_heap: purge refused\n");
    usleep(200 * 1000);
    stats("purged");

    farmem_jemalloc_uninstall();
    size_t bad_after = check(values, n);
    printf("mismatches_after_uninstall=%zu\n", bad_after);
    return bad || bad_after ? 1 : 0;
}
