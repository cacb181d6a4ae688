/* What a program hands the kernel, from memory farmem has evicted: the cases
 * of signal mode, where the kernel's access to an evicted page fails with
 * EFAULT unless farmem brought the page back first.
 *
 * A heap of MIB MiB (1 MiB blocks, every page with bytes of its own) is
 * filled, then after each pause (FARMEM_EVICT_EVERY evicts everything
 * meanwhile) one case runs and prints one line:
 *   pipe     write(2) and writev(2) of cold blocks to a pipe, read(2) and
 *            readv(2) by a thread into buffers never touched;
 *   socket   send, sendmsg and sendto of cold blocks over a socket pair,
 *            recv, recvmsg and recvfrom into cold buffers;
 *   file     pwrite of cold blocks to a file, pread and read back into
 *            buffers that were filled and evicted;
 *   stdio    fprintf into a stream, fflush after a pause, fwrite of a whole
 *            cold block and fread back into a cold buffer;
 *   mutex    4 threads counting under a pthread mutex and condition
 *            variable that live in the heap, through pauses;
 *   sigbus   the program's own SIGBUS handler (set after farmem's) takes a
 *            real SIGBUS (a read past the end of a truncated file mapping);
 *   blocked  a thread that blocks every signal reads the cold heap;
 *   fork     a child checks the cold heap.
 * Then the whole heap is checked and its checksum printed. Every line is
 * the same under farmem as without it. Exits 1 naming what differed.
 * Usage: kernelio MIB PAUSE_MS DIR */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096
#define BLOCK (1 << 20)

static size_t blocks;
static uint8_t **heap;
static unsigned pause_ms;

static void fail(const char *what) {
    fprintf(stderr, "kernelio: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void page_bytes(uint8_t *out, uint64_t p) {
    for (size_t j = 0; j < PAGE; j++) out[j] = (uint8_t)(p * 31 + j * 7 + 1);
    memcpy(out, &p, sizeof p);
}

static uint64_t fnv(const uint8_t *b, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

static void nap(void) { usleep(pause_ms * 1000u); }

/* A buffer of n bytes no one has touched: its pages are missing. */
static uint8_t *fresh(size_t n) {
    uint8_t *b = malloc(n);
    if (!b) fail("malloc");
    return b;
}

static void full_write(int fd, const uint8_t *b, size_t n, const char *what) {
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0) fail(what);
        b += w;
        n -= (size_t)w;
    }
}

static void full_read(int fd, uint8_t *b, size_t n, const char *what) {
    while (n) {
        ssize_t r = read(fd, b, n);
        if (r <= 0) { if (r == 0) errno = EPIPE; fail(what); }
        b += r;
        n -= (size_t)r;
    }
}

struct reader { int fd; uint64_t sum; };

static void *pipe_reader(void *p) {
    struct reader *r = p;
    uint8_t *a = fresh(BLOCK), *b = fresh(BLOCK), *c = fresh(BLOCK);
    full_read(r->fd, a, BLOCK, "read from pipe");
    struct iovec iov[2] = {{b, BLOCK}, {c, BLOCK}};
    size_t want = 2 * BLOCK;
    int k = 0;
    while (want) {
        ssize_t n = readv(r->fd, iov + k, 2 - k);
        if (n <= 0) fail("readv from pipe");
        want -= (size_t)n;
        while (n) {
            size_t t = (size_t)n < iov[k].iov_len ? (size_t)n : iov[k].iov_len;
            iov[k].iov_base = (uint8_t *)iov[k].iov_base + t;
            iov[k].iov_len -= t;
            n -= (ssize_t)t;
            if (!iov[k].iov_len) k++;
        }
    }
    r->sum = fnv(a, BLOCK) ^ (fnv(b, BLOCK) * 3) ^ (fnv(c, BLOCK) * 7);
    return NULL;
}

static void case_pipe(void) {
    int p[2];
    if (pipe(p)) fail("pipe");
    struct reader r = {p[0], 0};
    pthread_t t;
    pthread_create(&t, NULL, pipe_reader, &r);
    nap();
    full_write(p[1], heap[0], BLOCK, "write to pipe");
    nap();
    struct iovec iov[2] = {{heap[1], BLOCK}, {heap[2], BLOCK}};
    size_t sent = 0;
    while (sent < 2 * BLOCK) {
        ssize_t n = writev(p[1], iov, 2);
        if (n < 0) fail("writev to pipe");
        sent += (size_t)n;
        /* A short writev: send the rest with write. */
        if (sent < 2 * BLOCK) {
            size_t off = sent;
            full_write(p[1], off < BLOCK ? heap[1] + off : heap[2] + (off - BLOCK), off < BLOCK ? BLOCK - off : 2 * BLOCK - off, "write to pipe");
            if (off < BLOCK) full_write(p[1], heap[2], BLOCK, "write to pipe");
            sent = 2 * BLOCK;
        }
    }
    pthread_join(t, NULL);
    uint64_t want = fnv(heap[0], BLOCK) ^ (fnv(heap[1], BLOCK) * 3) ^ (fnv(heap[2], BLOCK) * 7);
    printf("pipe %s\n", r.sum == want ? "same" : "DIFFERENT");
    close(p[0]);
    close(p[1]);
}

static void case_socket(void) {
    int s[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, s)) fail("socketpair");
    int size = 1 << 20;
    setsockopt(s[0], SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    setsockopt(s[1], SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    /* Datagrams of 16 KiB: a datagram the kernel could not copy out would be
     * dropped, so every one must arrive whole. */
    enum { D = 16384, N = 48 };
    uint8_t *in = heap[3], *back = fresh((size_t)D * N);
    uint64_t want = fnv(in, (size_t)D * N);
    memset(back, 0, (size_t)D * N);
    nap();
    for (int i = 0; i < N; i++) {
        uint8_t *src = in + (size_t)i * D, *dst = back + (size_t)i * D;
        ssize_t w;
        if (i % 3 == 0) w = send(s[0], src, D, 0);
        else if (i % 3 == 1) {
            struct iovec v = {src, D};
            struct msghdr m = {0};
            m.msg_iov = &v;
            m.msg_iovlen = 1;
            w = sendmsg(s[0], &m, 0);
        } else w = sendto(s[0], src, D, 0, NULL, 0);
        if (w != D) fail("send");
        if (i % 8 == 7) nap();
        ssize_t r;
        if (i % 3 == 0) r = recv(s[1], dst, D, 0);
        else if (i % 3 == 1) {
            struct iovec v = {dst, D};
            struct msghdr m = {0};
            m.msg_iov = &v;
            m.msg_iovlen = 1;
            r = recvmsg(s[1], &m, 0);
        } else r = recvfrom(s[1], dst, D, 0, NULL, NULL);
        if (r != D) fail("recv");
    }
    printf("socket %s\n", fnv(back, (size_t)D * N) == want ? "same" : "DIFFERENT");
    free(back);
    close(s[0]);
    close(s[1]);
}

static void case_file(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/kernelio.dat", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) fail(path);
    nap();
    for (int i = 0; i < 4; i++)
        if (pwrite(fd, heap[5 + i], BLOCK, (off_t)i * BLOCK) != BLOCK) fail("pwrite");
    uint8_t *back = fresh(4 * (size_t)BLOCK);
    memset(back, 0xa5, 4 * (size_t)BLOCK);
    nap();
    uint64_t got = 0, want = 0;
    for (int i = 0; i < 2; i++)
        if (pread(fd, back + (size_t)i * BLOCK, BLOCK, (off_t)i * BLOCK) != BLOCK) fail("pread");
    if (lseek(fd, 2 * BLOCK, SEEK_SET) < 0) fail("lseek");
    full_read(fd, back + 2 * (size_t)BLOCK, 2 * BLOCK, "read from file");
    for (int i = 0; i < 4; i++) {
        got = got * 31 + fnv(back + (size_t)i * BLOCK, BLOCK);
        want = want * 31 + fnv(heap[5 + i], BLOCK);
    }
    printf("file %s\n", got == want ? "same" : "DIFFERENT");
    free(back);
    close(fd);
    unlink(path);
}

static void case_stdio(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/kernelio.txt", dir);
    FILE *f = fopen(path, "w+");
    if (!f) fail(path);
    for (int i = 0; i < 1000; i++) fprintf(f, "line %d of %zu\n", i, blocks);
    nap();
    if (fflush(f)) fail("fflush");
    nap();
    if (fwrite(heap[9], 1, BLOCK, f) != BLOCK) fail("fwrite");
    if (fflush(f)) fail("fflush");
    rewind(f);
    char line[64];
    int lines = 0;
    while (lines < 1000 && fgets(line, sizeof line, f)) lines++;
    uint8_t *back = fresh(BLOCK);
    nap();
    if (fread(back, 1, BLOCK, f) != BLOCK) fail("fread");
    printf("stdio %d lines %s\n", lines, fnv(back, BLOCK) == fnv(heap[9], BLOCK) ? "same" : "DIFFERENT");
    free(back);
    fclose(f);
    unlink(path);
}

struct shared {
    pthread_mutex_t lock;
    pthread_cond_t turn;
    long count;
    uint8_t pad[3 * PAGE];
};

static void *counter(void *p) {
    struct shared *s = p;
    for (int i = 0; i < 20000; i++) {
        /* Pauses outside the lock, for the heap to be evicted meanwhile. */
        if (i % 5000 == 0) usleep(pause_ms * 250u);
        pthread_mutex_lock(&s->lock);
        s->count++;
        if (s->count % 64 == 0) pthread_cond_broadcast(&s->turn);
        pthread_mutex_unlock(&s->lock);
    }
    pthread_mutex_lock(&s->lock);
    while (s->count % 64 != 0 && s->count < 80000) pthread_cond_wait(&s->turn, &s->lock);
    pthread_cond_broadcast(&s->turn);
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

static void case_mutex(void) {
    struct shared *s = malloc(sizeof *s);
    if (!s) fail("malloc");
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->turn, NULL);
    s->count = 0;
    nap();
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, counter, s);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    printf("mutex %ld\n", s->count);
    free(s);
}

static sigjmp_buf escape;
static volatile sig_atomic_t caught;

static void on_bus(int sig, siginfo_t *info, void *ctx) {
    (void)sig; (void)info; (void)ctx;
    caught++;
    siglongjmp(escape, 1);
}

static void case_sigbus(const char *dir) {
    struct sigaction a = {0};
    a.sa_sigaction = on_bus;
    a.sa_flags = SA_SIGINFO;
    sigemptyset(&a.sa_mask);
    if (sigaction(SIGBUS, &a, NULL)) fail("sigaction");
    char path[4096];
    snprintf(path, sizeof path, "%s/kernelio.map", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, PAGE)) fail(path);
    volatile uint8_t *m = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) fail("mmap");
    if (ftruncate(fd, 0)) fail("ftruncate");
    nap();
    if (sigsetjmp(escape, 1) == 0) (void)m[0];
    /* farmem's faults still work beside the program's handler. */
    uint64_t h = fnv(heap[10], BLOCK);
    struct sigaction old;
    sigaction(SIGBUS, NULL, &old);
    printf("sigbus caught %d, own handler kept %s, heap %s\n", (int)caught, old.sa_sigaction == on_bus ? "yes" : "no", h == fnv(heap[10], BLOCK) ? "readable" : "DIFFERENT");
    munmap((void *)m, PAGE);
    close(fd);
    unlink(path);
}

static void *blocked_reader(void *p) {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    usleep(pause_ms * 1000u);
    uint64_t *sum = p;
    for (size_t i = 0; i < blocks; i++) *sum = *sum * 31 + fnv(heap[i], BLOCK);
    return NULL;
}

static uint64_t heap_sum(void) {
    uint64_t s = 0;
    for (size_t i = 0; i < blocks; i++) s = s * 31 + fnv(heap[i], BLOCK);
    return s;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: kernelio MIB PAUSE_MS DIR\n"); return 2; }
    blocks = strtoull(argv[1], 0, 0);
    pause_ms = (unsigned)strtoul(argv[2], 0, 0);
    const char *dir = argv[3];
    if (blocks < 12) { fprintf(stderr, "kernelio: at least 12 MiB\n"); return 2; }
    heap = malloc(blocks * sizeof *heap);
    for (size_t i = 0; i < blocks; i++) {
        heap[i] = malloc(BLOCK);
        if (!heap[i]) fail("malloc");
        for (size_t o = 0; o < BLOCK; o += PAGE) page_bytes(heap[i] + o, (i * BLOCK + o) / PAGE);
    }
    uint64_t before = heap_sum();
    nap();
    case_pipe();
    case_socket();
    case_file(dir);
    case_stdio(dir);
    case_mutex();
    case_sigbus(dir);
    uint64_t sum = 0;
    pthread_t t;
    pthread_create(&t, NULL, blocked_reader, &sum);
    pthread_join(t, NULL);
    printf("blocked %s\n", sum == before ? "same" : "DIFFERENT");
    nap();
    pid_t c = fork();
    if (c == 0) _exit(heap_sum() == before ? 0 : 1);
    int status;
    waitpid(c, &status, 0);
    printf("fork %s\n", WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "same" : "DIFFERENT");
    nap();
    printf("heap %s\n", heap_sum() == before ? "same" : "DIFFERENT");
    fflush(stdout);
    return 0;
}
