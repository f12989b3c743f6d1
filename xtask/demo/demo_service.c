/*
 * leaktrace's demo: a pretend request server that runs for 30 seconds. Most requests allocate
 * and free their buffers, but every session it opens is added to a cache that is never pruned:
 * session_cache_add -> new_session -> malloc leaks 2 KiB per session.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
#define KEEP(p) __asm__ volatile("" : : "r"(p) : "memory")

struct session { struct session *next; char token[2040]; };
static struct session *cache;

NOINLINE struct session *new_session(int id) {
    struct session *s = malloc(sizeof *s);
    snprintf(s->token, sizeof s->token, "session-%d", id);
    KEEP(s);
    return s;
}
NOINLINE void session_cache_add(int id) { struct session *s = new_session(id); s->next = cache; cache = s; KEEP(s); }

NOINLINE char *read_body(size_t n) { char *b = malloc(n); memset(b, 'x', n); KEEP(b); return b; }
NOINLINE void handle_request(int i) {
    char *body = read_body(512 + (size_t)(i % 7) * 256);
    KEEP(body);
    free(body);
}

int main(void) {
    printf("demo service: pid %d, leaking 2 KiB per new session\n", (int)getpid());
    fflush(stdout);
    time_t end = time(NULL) + 30;
    for (int i = 0; time(NULL) < end; i++) {
        handle_request(i);
        if (i % 10 == 0) session_cache_add(i);
        usleep(2000);
    }
    return 0;
}
