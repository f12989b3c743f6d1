/* Fixture for the unwind table tests (tracer-user/src/unwind/tests/real.rs).
 * Built with: gcc -O2 -fomit-frame-pointer -fno-optimize-sibling-calls -fno-ipa-icf
 * Every function is noinline and does work after its call, so every call is a real call.
 */
#include <alloca.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline))
#define BARRIER() __asm__ volatile("" ::: "memory")

NOINLINE void *leaf(size_t n) {
    void *p = malloc(n);
    BARRIER();
    return p;
}

NOINLINE void *f0(size_t n) { void *p = leaf(n + 1); BARRIER(); return p; }
NOINLINE void *f1(size_t n) { void *p = f0(n + 1); BARRIER(); return p; }
NOINLINE void *f2(size_t n) { void *p = f1(n + 1); BARRIER(); return p; }

/* Keeps several callee-saved registers live across the call: pushes in the prologue. */
NOINLINE void *f3(size_t a, size_t b, size_t c, size_t d) {
    size_t x = a * 3, y = b * 5, z = c * 7, w = d * 11;
    void *p = f2(a);
    BARRIER();
    return (char *)p + ((x ^ y ^ z ^ w) & 1);
}

/* A variable-size stack allocation: gcc sets up rbp and the CFA becomes rbp-based even with
 * -fomit-frame-pointer. */
NOINLINE size_t vla_frame(size_t n) {
    char *buf = alloca(n);
    memset(buf, 1, n);
    BARRIER();
    size_t sum = 0;
    for (size_t i = 0; i < n; i++) sum += (size_t)buf[i];
    return sum + (size_t)f3(n, n, n, n);
}

/* A frame larger than 64 KiB: the CFA offset does not fit 16 bits. */
NOINLINE size_t big_frame(size_t n) {
    volatile char buf[100000];
    buf[n % sizeof buf] = 1;
    BARRIER();
    return buf[(n * 7) % sizeof buf] + vla_frame(n & 63);
}

int main(int argc, char **argv) {
    (void)argv;
    size_t r = big_frame((size_t)argc);
    printf("%zu\n", r);
    return 0;
}
