/* A contended pthread mutex and condition variable in the heap, while farmem
 * evicts the heap every few milliseconds (FARMEM_EVICT_EVERY).
 *
 * In signal mode the kernel's read of a futex word on an evicted page fails
 * with EFAULT instead of waiting, and glibc aborts on that ("The futex
 * facility returned an unexpected error code."): the page can go between the
 * program's atomic on the word and the kernel's read. Thread mode must
 * always pass; signal mode does not yet (see the README's "Signal mode").
 * Prints "ok COUNT" when every increment was seen; exits 1 if not.
 * Usage: futexcold SECONDS */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct shared {
    pthread_mutex_t lock;
    pthread_cond_t turn;
    long count;
    char pad[4 * 4096];
};

static struct shared *s;
static int seconds;

static void *worker(void *arg) {
    (void)arg;
    time_t end = time(NULL) + seconds;
    long mine = 0;
    while (time(NULL) < end) {
        for (int i = 0; i < 1000; i++) {
            pthread_mutex_lock(&s->lock);
            s->count++;
            if ((s->count & 255) == 0) pthread_cond_broadcast(&s->turn);
            if ((s->count & 1023) == 7) {
                /* A short timed wait: the condition variable's futex too. */
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_nsec += 100000;
                if (ts.tv_nsec >= 1000000000) {
                    ts.tv_sec++;
                    ts.tv_nsec -= 1000000000;
                }
                pthread_cond_timedwait(&s->turn, &s->lock, &ts);
            }
            pthread_mutex_unlock(&s->lock);
            mine++;
        }
    }
    return (void *)mine;
}

int main(int argc, char **argv) {
    seconds = argc > 1 ? atoi(argv[1]) : 10;
    /* A heap worth managing beside the lock. */
    size_t big = 64u << 20;
    char *heap = malloc(big);
    s = malloc(sizeof *s);
    if (!heap || !s) return 2;
    memset(heap, 1, big);
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->turn, NULL);
    pthread_t t[4];
    long total = 0;
    for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, worker, NULL);
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(t[i], &r);
        total += (long)r;
    }
    if (total != s->count) {
        printf("lost increments: %ld done, %ld counted\n", total, s->count);
        return 1;
    }
    printf("ok\n");
    return 0;
}
