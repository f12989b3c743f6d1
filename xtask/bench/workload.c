/*
 * Benchmark workload: THREADS threads each do OPS malloc+free pairs (16 B to 4 KiB) through a
 * twenty-frame call chain (or DEPTH frames, when given as the third argument) (built with frame pointers, so both unwinding modes see all of it). It prints "ready PID", waits for a line on stdin (so a tracer can attach
 * first), runs, and prints "ns_per_pair X": the mean of each thread's own loop time per pair
 * (per call of `mixed`, with BENCH_MIX=1).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
#define KEEP(p) __asm__ volatile("" : : "r"(p) : "memory")

static long ops;

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

NOINLINE void pair(long i) { void *p = malloc(16 + (size_t)(i * 61) % 4080); KEEP(p); free(p); }
NOINLINE void f1(long i) { pair(i); KEEP(i); }
NOINLINE void f2(long i) { f1(i); KEEP(i); }
NOINLINE void f3(long i) { f2(i); KEEP(i); }
NOINLINE void f4(long i) { f3(i); KEEP(i); }
NOINLINE void f5(long i) { f4(i); KEEP(i); }
NOINLINE void f6(long i) { f5(i); KEEP(i); }
NOINLINE void f7(long i) { f6(i); KEEP(i); }
NOINLINE void f8(long i) { f7(i); KEEP(i); }
NOINLINE void f9(long i) { f8(i); KEEP(i); }
NOINLINE void f10(long i) { f9(i); KEEP(i); }
NOINLINE void f11(long i) { f10(i); KEEP(i); }
NOINLINE void f12(long i) { f11(i); KEEP(i); }
NOINLINE void f13(long i) { f12(i); KEEP(i); }
NOINLINE void f14(long i) { f13(i); KEEP(i); }
NOINLINE void f15(long i) { f14(i); KEEP(i); }
NOINLINE void f16(long i) { f15(i); KEEP(i); }

/* With BENCH_MIX=1 in the environment: the held-out-like mix instead of the pairs, through ten
 * frames (mixed, m1 to m7, worker, start_thread; clone): sizes 16 B to 64 KiB, 1 call in 10 a
 * calloc, 1 in 10 a malloc followed by a realloc to half its size, each block then freed. */
static int mix = 0;
NOINLINE void mixed(long i) {
    size_t size = 16 + (size_t)((unsigned long)i * 2654435761UL) % 65520;
    long kind = i % 10;
    void *p = kind == 0 ? calloc(1, size) : malloc(size);
    if (kind == 1) {
        void *q = realloc(p, size / 2 + 16);
        if (q) p = q;
    }
    KEEP(p);
    free(p);
}
NOINLINE void m1(long i) { mixed(i); KEEP(i); }
NOINLINE void m2(long i) { m1(i); KEEP(i); }
NOINLINE void m3(long i) { m2(i); KEEP(i); }
NOINLINE void m4(long i) { m3(i); KEEP(i); }
NOINLINE void m5(long i) { m4(i); KEEP(i); }
NOINLINE void m6(long i) { m5(i); KEEP(i); }
NOINLINE void m7(long i) { m6(i); KEEP(i); }

/* With a depth argument: `descend` recurses to DEPTH - 4 frames, then pairs (the 4 being pair,
 * worker, start_thread and clone), for the per-program breakdown at 4, 20 and 60 frames. */
static long depth = -1;
NOINLINE void descend(long d, long i) { if (d <= 0) pair(i); else descend(d - 1, i); KEEP(d); }

static void *worker(void *out) {
    long start = now_ns();
    if (mix)
        for (long i = 0; i < ops; i++) m7(i);
    else if (depth >= 0)
        for (long i = 0; i < ops; i++) descend(depth > 4 ? depth - 4 : 0, i);
    else
        for (long i = 0; i < ops; i++) f16(i);
    *(long *)out = now_ns() - start;
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    ops = argc > 2 ? atol(argv[2]) : 50000;
    if (argc > 3) depth = atol(argv[3]);
    const char *mix_env = getenv("BENCH_MIX");
    mix = mix_env && mix_env[0] == '1';
    if (threads < 1 || threads > 64) threads = 2;
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 1;
    pthread_t t[64];
    long elapsed[64];
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, worker, &elapsed[i]);
    long total = 0;
    for (int i = 0; i < threads; i++) { pthread_join(t[i], NULL); total += elapsed[i]; }
    printf("ns_per_pair %.1f\n", (double)total / (double)(ops * threads));
    fflush(stdout);
    return 0;
}
