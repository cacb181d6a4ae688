/* Futex words in the heap, contended, while farmem evicts the heap every few
 * milliseconds (FARMEM_EVICT_EVERY): a pthread mutex and condition variable,
 * a read-write lock, a semaphore, a barrier, C11 mtx_t and cnd_t, a raw
 * futex word waited on with syscall(SYS_futex), and a stdio stream that
 * two threads write at once (glibc's own lock, inside the FILE).
 *
 * In signal mode the kernel's read of a futex word on an evicted page fails
 * with EFAULT instead of waiting, and glibc aborts on that ("The futex
 * facility returned an unexpected error code."); the shim must keep each
 * word in RAM while a thread waits on it. Thread mode must pass as it is.
 * Prints "ok" when every count adds up; exits 1 if not.
 * Usage: futexcold SECONDS */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <threads.h>
#include <time.h>
#include <unistd.h>

struct shared {
    pthread_mutex_t lock;
    pthread_cond_t turn;
    long count;
    char pad1[4096];
    pthread_rwlock_t rw;
    long rw_count;
    char pad2[4096];
    sem_t items;
    long produced, consumed;
    char pad3[4096];
    pthread_barrier_t barrier;
    long rounds;
    char pad4[4096];
    mtx_t c11_lock;
    cnd_t c11_turn;
    long c11_count;
    char pad5[4096];
    atomic_uint word;
    long raw_count;
    char pad6[4096];
    unsigned idle;
    char pad7[4096];
};

static struct shared *s;
static time_t end;
static FILE *sink;

/* 100 µs from now on CLOCK_REALTIME (TIME_UTC for C11): a short timed wait. */
static struct timespec soon(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 100000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    return ts;
}

static void *mutex_worker(void *arg) {
    (void)arg;
    long mine = 0;
    while (time(NULL) < end) {
        for (int i = 0; i < 1000; i++) {
            pthread_mutex_lock(&s->lock);
            s->count++;
            if ((s->count & 255) == 0) pthread_cond_broadcast(&s->turn);
            if ((s->count & 1023) == 7) {
                /* A short timed wait: the condition variable's futex too. */
                struct timespec ts = soon();
                pthread_cond_timedwait(&s->turn, &s->lock, &ts);
            }
            pthread_mutex_unlock(&s->lock);
            mine++;
        }
    }
    return (void *)mine;
}

static void *rw_worker(void *arg) {
    long mine = 0, writer = (long)arg;
    while (time(NULL) < end) {
        for (int i = 0; i < 1000; i++) {
            if (writer) {
                pthread_rwlock_wrlock(&s->rw);
                s->rw_count++;
                mine++;
            } else {
                pthread_rwlock_rdlock(&s->rw);
                (void)*(volatile long *)&s->rw_count;
            }
            pthread_rwlock_unlock(&s->rw);
        }
    }
    return (void *)mine;
}

static atomic_int producing = 1;

static void *producer(void *arg) {
    (void)arg;
    while (time(NULL) < end) {
        __atomic_add_fetch(&s->produced, 1, __ATOMIC_SEQ_CST);
        sem_post(&s->items);
    }
    atomic_store(&producing, 0);
    sem_post(&s->items); /* wakes the consumer for its last check */
    return NULL;
}

static void *consumer(void *arg) {
    (void)arg;
    for (;;) {
        sem_wait(&s->items);
        if (__atomic_load_n(&s->consumed, __ATOMIC_SEQ_CST) == __atomic_load_n(&s->produced, __ATOMIC_SEQ_CST) && !atomic_load(&producing)) break;
        __atomic_add_fetch(&s->consumed, 1, __ATOMIC_SEQ_CST);
    }
    while (sem_trywait(&s->items) == 0) __atomic_add_fetch(&s->consumed, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

/* Two threads meet at the barrier a fixed number of times (no clock: both
 * must call it equally often). */
static void *barrier_worker(void *arg) {
    for (int i = 0; i < 20000; i++) {
        if (pthread_barrier_wait(&s->barrier) == PTHREAD_BARRIER_SERIAL_THREAD) s->rounds++;
    }
    (void)arg;
    return NULL;
}

static int c11_worker(void *arg) {
    (void)arg;
    while (time(NULL) < end) {
        for (int i = 0; i < 1000; i++) {
            mtx_lock(&s->c11_lock);
            s->c11_count++;
            if ((s->c11_count & 511) == 3) {
                struct timespec ts = soon();
                cnd_timedwait(&s->c11_turn, &s->c11_lock, &ts);
            }
            cnd_signal(&s->c11_turn);
            mtx_unlock(&s->c11_lock);
        }
    }
    return 0;
}

/* A lock of its own on a raw futex word (0 free, 1 held, 2 contended), the
 * way Rust's std and many libraries lock: syscall(SYS_futex) directly. */
static void raw_lock(atomic_uint *w) {
    unsigned c = 0;
    if (atomic_compare_exchange_strong(w, &c, 1)) return;
    if (c != 2) c = atomic_exchange(w, 2);
    while (c != 0) {
        if (syscall(SYS_futex, w, FUTEX_WAIT_PRIVATE, 2, NULL, NULL, 0) == -1 && errno != EAGAIN && errno != EINTR) {
            printf("futex wait: errno %d\n", errno);
            exit(1);
        }
        c = atomic_exchange(w, 2);
    }
}

static void raw_unlock(atomic_uint *w) {
    if (atomic_exchange(w, 0) == 2) syscall(SYS_futex, w, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static void *raw_worker(void *arg) {
    long mine = 0;
    (void)arg;
    while (time(NULL) < end) {
        for (int i = 0; i < 1000; i++) {
            raw_lock(&s->word);
            s->raw_count++;
            raw_unlock(&s->word);
            mine++;
        }
    }
    return (void *)mine;
}

/* Timed waits on a word nobody changes, touched only by the kernel: the
 * page can go while the thread sleeps, and the next wait reads it again. */
static void *idle_waiter(void *arg) {
    long waits = 0;
    (void)arg;
    while (time(NULL) < end) {
        struct timespec ts = {0, 200000};
        if (syscall(SYS_futex, &s->idle, FUTEX_WAIT_PRIVATE, 0, &ts, NULL, 0) == -1 && errno != ETIMEDOUT && errno != EINTR && errno != EAGAIN) {
            printf("idle futex wait: errno %d\n", errno);
            exit(1);
        }
        waits++;
    }
    return (void *)waits;
}

/* Two threads write one stream: glibc's lock inside the FILE is contended. */
static void *stdio_worker(void *arg) {
    long mine = 0;
    while (time(NULL) < end) {
        for (int i = 0; i < 100; i++) {
            fprintf(sink, "%ld %ld\n", (long)arg, mine++);
        }
    }
    return (void *)mine;
}

static int failed;

static void check(const char *what, long want, long got) {
    if (want != got) {
        printf("%s: %ld done, %ld counted\n", what, want, got);
        failed = 1;
    }
}

int main(int argc, char **argv) {
    int seconds = argc > 1 ? atoi(argv[1]) : 10;
    /* A heap worth managing beside the objects. */
    size_t big = 64u << 20;
    char *heap = malloc(big);
    s = malloc(sizeof *s);
    if (!heap || !s) return 2;
    memset(heap, 1, big);
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->turn, NULL);
    pthread_rwlock_init(&s->rw, NULL);
    sem_init(&s->items, 0, 0);
    pthread_barrier_init(&s->barrier, NULL, 2);
    mtx_init(&s->c11_lock, mtx_plain);
    cnd_init(&s->c11_turn);
    sink = fopen("/dev/null", "w");
    if (!sink) return 2;
    end = time(NULL) + seconds;

    pthread_t m[4], rw[3], pc[2], b[2], raw[2], io[2], idle;
    thrd_t c11[2];
    for (int i = 0; i < 4; i++) pthread_create(&m[i], NULL, mutex_worker, NULL);
    for (long i = 0; i < 3; i++) pthread_create(&rw[i], NULL, rw_worker, (void *)(long)(i == 0));
    pthread_create(&pc[0], NULL, producer, NULL);
    pthread_create(&pc[1], NULL, consumer, NULL);
    for (int i = 0; i < 2; i++) pthread_create(&b[i], NULL, barrier_worker, NULL);
    for (int i = 0; i < 2; i++) thrd_create(&c11[i], c11_worker, NULL);
    for (int i = 0; i < 2; i++) pthread_create(&raw[i], NULL, raw_worker, NULL);
    for (long i = 0; i < 2; i++) pthread_create(&io[i], NULL, stdio_worker, (void *)i);
    pthread_create(&idle, NULL, idle_waiter, NULL);

    long total = 0, rw_total = 0, raw_total = 0;
    void *r;
    for (int i = 0; i < 4; i++) {
        pthread_join(m[i], &r);
        total += (long)r;
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(rw[i], &r);
        rw_total += (long)r;
    }
    pthread_join(pc[0], NULL);
    pthread_join(pc[1], NULL);
    for (int i = 0; i < 2; i++) pthread_join(b[i], NULL);
    for (int i = 0; i < 2; i++) thrd_join(c11[i], NULL);
    for (int i = 0; i < 2; i++) {
        pthread_join(raw[i], &r);
        raw_total += (long)r;
    }
    for (int i = 0; i < 2; i++) pthread_join(io[i], NULL);
    pthread_join(idle, NULL);
    if (fclose(sink) != 0) {
        printf("fclose failed\n");
        failed = 1;
    }
    check("mutex", total, s->count);
    check("rwlock", rw_total, s->rw_count);
    check("semaphore", s->produced, s->consumed);
    check("barrier", 20000, s->rounds);
    check("futex word", raw_total, s->raw_count);
    if (s->c11_count == 0) {
        printf("c11: nothing counted\n");
        failed = 1;
    }
    if (failed) return 1;
    printf("ok\n");
    return 0;
}
