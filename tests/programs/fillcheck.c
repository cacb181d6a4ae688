/* A heap for farmem to manage: MIB MiB in malloc'd blocks of 1 MiB, every
 * page with bytes of its own (compressible, so the compressed tier takes
 * it), a pause for the policy to bring the heap down to its limit, then
 * every byte checked and a checksum of them all printed.
 *
 * With "fork", after the fill it also forks a child that fills and checks a
 * heap of its own and leaves through exit() (so its exit handlers run), and
 * starts a copy of itself (fork, then exec) that does the same; once both
 * are done it fails if the statistics file (FARMEM_STATS) exists: only this
 * process may write it, and only when it exits.
 *
 * With "sigwait", it blocks SIGUSR1 first, as a program that takes its
 * signals in one thread does in main before anything else, then after the
 * fill sends itself SIGUSR1 and waits for it (the default action, on a
 * thread that does not block it, would end the process).
 *
 * Prints "pid N" and "checksum X"; exits 1 naming the first wrong byte.
 * Usage: fillcheck MIB [PAUSE_MS] [fork|sigwait] */
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096
#define BLOCK (1 << 20)

/* Page `p` of the heap: its number, then a run that repeats every 256 bytes. */
static void page_bytes(uint8_t *out, uint64_t p, unsigned seed) {
    for (size_t j = 0; j < PAGE; j++) out[j] = (uint8_t)(p * 31 + j * 7 + seed);
    memcpy(out, &p, sizeof p);
}

static uint8_t **fill(size_t blocks, unsigned seed) {
    uint8_t **b = malloc(blocks * sizeof *b);
    if (!b) { perror("malloc"); exit(2); }
    for (size_t i = 0; i < blocks; i++) {
        b[i] = malloc(BLOCK);
        if (!b[i]) { perror("malloc"); exit(2); }
        for (size_t o = 0; o < BLOCK; o += PAGE) page_bytes(b[i] + o, (i * BLOCK + o) / PAGE, seed);
    }
    return b;
}

/* Checks every byte; returns the checksum (FNV-1a over 64-bit words). */
static uint64_t check(uint8_t **b, size_t blocks, unsigned seed, const char *who) {
    uint8_t want[PAGE];
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < blocks; i++)
        for (size_t o = 0; o < BLOCK; o += PAGE) {
            const uint8_t *got = b[i] + o;
            page_bytes(want, (i * BLOCK + o) / PAGE, seed);
            if (memcmp(got, want, PAGE) != 0) {
                size_t j = 0;
                while (got[j] == want[j]) j++;
                fprintf(stderr, "fillcheck (%s): block %zu byte %zu is %u, want %u\n", who, i, o + j, got[j], want[j]);
                exit(1);
            }
            for (size_t w = 0; w < PAGE; w += 8) {
                uint64_t x;
                memcpy(&x, got + w, 8);
                h = (h ^ x) * 0x100000001b3ull;
            }
        }
    return h;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: fillcheck MIB [PAUSE_MS] [fork]\n"); return 2; }
    size_t blocks = strtoull(argv[1], 0, 0);
    unsigned pause_ms = argc > 2 ? (unsigned)strtoul(argv[2], 0, 0) : 1500;
    int forks = argc > 3 && strcmp(argv[3], "fork") == 0;
    int waits = argc > 3 && strcmp(argv[3], "sigwait") == 0;
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    if (waits) sigprocmask(SIG_BLOCK, &usr1, NULL);
    printf("pid %d\n", (int)getpid());
    fflush(stdout);
    uint8_t **heap = fill(blocks, 1);
    if (waits) {
        struct timespec five = {5, 0};
        kill(getpid(), SIGUSR1);
        if (sigtimedwait(&usr1, NULL, &five) != SIGUSR1) { perror("fillcheck: sigtimedwait"); return 1; }
    }
    if (forks) {
        int status;
        pid_t c = fork();
        if (c == 0) {
            uint8_t **own = fill(24, 2);
            check(own, 24, 2, "forked child");
            exit(0);
        }
        waitpid(c, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) { fprintf(stderr, "fillcheck: forked child failed (%d)\n", status); return 1; }
        pid_t e = fork();
        if (e == 0) {
            int null = open("/dev/null", O_WRONLY);
            dup2(null, 1);
            execl("/proc/self/exe", argv[0], "24", "0", (char *)NULL);
            _exit(127);
        }
        waitpid(e, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) { fprintf(stderr, "fillcheck: exec'd child failed (%d)\n", status); return 1; }
        const char *stats = getenv("FARMEM_STATS");
        if (stats && *stats && access(stats, F_OK) == 0) {
            fprintf(stderr, "fillcheck: %s was written before this process exited\n", stats);
            return 1;
        }
    }
    usleep(pause_ms * 1000u);
    printf("checksum %016llx\n", (unsigned long long)check(heap, blocks, 1, "heap"));
    return 0;
}
