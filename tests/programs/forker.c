/* A program that exercises what farmem's shim must keep right: malloc'd and
 * mmap'd memory checked byte for byte across eviction, threads started after
 * the shim, fork (the child sees the parent's bytes, evicted pages included),
 * posix_spawn, mremap (grow and move), madvise(MADV_DONTNEED) and a partial
 * munmap. Prints "forker ok" and exits 0 when every byte is right. */
#define _GNU_SOURCE
#include <pthread.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static uint8_t pat(size_t i, unsigned seed) { return (uint8_t)((i >> 12) * 31 + i * 7 + seed); }

static void fill(uint8_t *p, size_t n, unsigned seed) { for (size_t i = 0; i < n; i++) p[i] = pat(i, seed); }

static int check(const char *what, const uint8_t *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != pat(i, seed)) {
            fprintf(stderr, "%s: byte %zu is %u, want %u\n", what, i, p[i], pat(i, seed));
            return 1;
        }
    return 0;
}

static void pause_for_eviction(void) { usleep(400 * 1000); }

struct job { unsigned seed; int bad; };

static void *worker(void *arg) {
    struct job *j = arg;
    size_t n = 8 << 20;
    uint8_t *p = malloc(n);
    fill(p, n, j->seed);
    pause_for_eviction();
    j->bad = check("thread buffer", p, n, j->seed);
    free(p);
    return NULL;
}

int main(void) {
    int bad = 0;
    size_t heap_len = 48 << 20, map_len = 16 << 20;
    uint8_t *heap = malloc(heap_len);
    fill(heap, heap_len, 1);
    uint8_t *map = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) { perror("mmap"); return 2; }
    fill(map, map_len, 2);

    pthread_t t[2];
    struct job jobs[2] = {{3, 0}, {4, 0}};
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, worker, &jobs[i]);
    pause_for_eviction();

    pid_t child = fork();
    if (child == 0) {
        int cbad = check("child heap", heap, heap_len, 1) | check("child map", map, map_len, 2);
        /* The child's writes are its own. */
        memset(heap, 0xee, heap_len);
        uint8_t *more = malloc(4 << 20);
        fill(more, 4 << 20, 9);
        cbad |= check("child malloc", more, 4 << 20, 9);
        _exit(cbad ? 1 : 0);
    }
    int status = 0;
    waitpid(child, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) { fprintf(stderr, "fork child failed (%d)\n", status); bad = 1; }
    for (int i = 0; i < 2; i++) { pthread_join(t[i], NULL); bad |= jobs[i].bad; }
    bad |= check("heap after fork", heap, heap_len, 1);

    pid_t sp;
    char *argv[] = {"true", NULL};
    if (posix_spawnp(&sp, "true", NULL, NULL, argv, environ) != 0) { perror("posix_spawn"); bad = 1; }
    else { waitpid(sp, &status, 0); if (!WIFEXITED(status) || WEXITSTATUS(status)) { fprintf(stderr, "spawned true failed\n"); bad = 1; } }

    /* Grow (and probably move) the mapping: the old bytes follow it. */
    uint8_t *grown = mremap(map, map_len, 2 * map_len, MREMAP_MAYMOVE);
    if (grown == MAP_FAILED) { perror("mremap"); return 2; }
    fill(grown + map_len, map_len, 5);
    pause_for_eviction();
    bad |= check("mremapped low half", grown, map_len, 2) | check("mremapped high half", grown + map_len, map_len, 5);

    /* Dropped pages read as zeros, however often they were evicted before. */
    madvise(grown + (1 << 20), 1 << 20, MADV_DONTNEED);
    pause_for_eviction();
    for (size_t i = 0; i < (1 << 20); i++)
        if (grown[(1 << 20) + i]) { fprintf(stderr, "dropped byte %zu not zero\n", i); bad = 1; break; }
    for (size_t i = 2 << 20; i < map_len; i++)
        if (grown[i] != pat(i, 2)) { fprintf(stderr, "beside the drop: byte %zu\n", i); bad = 1; break; }

    /* Unmap the first 4 MiB: the rest stays right, and new mappings work. */
    munmap(grown, 4 << 20);
    uint8_t *fresh = mmap(NULL, 4 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    fill(fresh, 4 << 20, 6);
    pause_for_eviction();
    for (size_t i = 4 << 20; i < map_len; i++)
        if (grown[i] != pat(i, 2)) { fprintf(stderr, "after partial munmap: byte %zu\n", i); bad = 1; break; }
    bad |= check("high half after munmap", grown + map_len, map_len, 5) | check("fresh map", fresh, 4 << 20, 6);
    bad |= check("heap at the end", heap, heap_len, 1);
    if (bad) return 1;
    printf("forker ok\n");
    return 0;
}
