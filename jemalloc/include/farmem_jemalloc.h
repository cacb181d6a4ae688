/* farmem for C programs linked against jemalloc 5 (Debian: libjemalloc-dev).
 *
 *   cc prog.c -Ijemalloc/include target/release/libfarmem_jemalloc_c.a \
 *      -ljemalloc -lpthread -ldl -lm
 *
 * farmem_jemalloc_install() creates farmem arenas in the program's jemalloc
 * (whose extents are registered with farmem), starts the runtime, and binds
 * the calling thread to one of them. Other threads that should use farmem
 * memory call farmem_jemalloc_bind_thread(). Only allocations made after that
 * come from farmem memory. See jemalloc/README.md for the limits.
 */
#ifndef FARMEM_JEMALLOC_H
#define FARMEM_JEMALLOC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    FARMEM_JEMALLOC_OK = 0,
    FARMEM_JEMALLOC_ERR_CONFIG = 1,        /* the configuration string is not accepted */
    FARMEM_JEMALLOC_ERR_INSTALLED = 2,     /* already installed in this process */
    FARMEM_JEMALLOC_ERR_NO_JEMALLOC = 3,   /* no jemalloc 5 mallctl found */
    FARMEM_JEMALLOC_ERR_USERFAULTFD = 4,   /* userfaultfd not available */
    FARMEM_JEMALLOC_ERR_TIER = 5,          /* a tier could not be made */
    FARMEM_JEMALLOC_ERR_RUNTIME = 6,       /* the runtime could not start */
    FARMEM_JEMALLOC_ERR_ARENA = 7,         /* jemalloc refused the farmem arenas */
    FARMEM_JEMALLOC_ERR_NOT_INSTALLED = 8, /* farmem is not installed */
    FARMEM_JEMALLOC_ERR_BIND = 9           /* jemalloc refused thread.arena */
};

/* jemalloc's mallctl, for farmem_jemalloc_install_with. */
typedef int (*farmem_mallctl_fn)(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen);

/* Installs farmem into the jemalloc whose mallctl dlsym(RTLD_DEFAULT) finds.
 * config: "key=value" pairs separated by spaces, e.g. "limit=256M tiers=zstd:3";
 * keys limit, stall, min, tiers (as farmem run's --limit, --stall, --min,
 * --tiers) and arenas (1 to 8). "" is the defaults (no reclaim).
 * Returns FARMEM_JEMALLOC_OK or an error code; once per process. */
int farmem_jemalloc_install(const char *config);

/* As farmem_jemalloc_install, with the jemalloc's mallctl given (a static or
 * prefixed jemalloc, e.g. je_mallctl). */
int farmem_jemalloc_install_with(const char *config, farmem_mallctl_fn mallctl);

/* Binds the calling thread to a farmem arena. */
int farmem_jemalloc_bind_thread(void);

/* Stops reclaim and brings every evicted page back; memory stays correct.
 * farmem cannot be installed again afterwards. */
int farmem_jemalloc_uninstall(void);

/* The calling thread's last error message ("" if none); valid until its next
 * farmem_jemalloc call. */
const char *farmem_jemalloc_last_error(void);

struct farmem_jemalloc_stats {
    uint64_t registered_bytes;         /* the farmem arenas' extents */
    uint64_t resident_pages;           /* of those, pages in RAM now */
    uint64_t evicted_pages;            /* pages out of RAM now */
    uint64_t pages_evicted_total;      /* pages evicted since install */
    uint64_t faults_from_tier;         /* faults served from a tier */
    uint64_t pages_dropped_by_program; /* evicted pages dropped because jemalloc purged them */
    uint64_t pages_poisoned;           /* pages a tier could not return (SIGBUS) */
    uint64_t tier_bytes;               /* bytes the tiers hold */
};

/* Fills *out (if not NULL) with the runtime's statistics. */
int farmem_jemalloc_stats(struct farmem_jemalloc_stats *out);

#ifdef __cplusplus
}
#endif
#endif
