/* 4 KiB random reads of a backup through vhdkit_reader, timed: the C side
 * of scripts/bench-capi.sh (examples/bench_reads.rs is the Rust side, with
 * the same offsets). One untimed pass warms the caches, then COUNT reads
 * are timed, at 4 KiB-aligned offsets in the first SPAN bytes (default, or 0:
 * the whole disk; 8 MiB fits the reader's chunk cache, so those reads
 * cost what the call itself costs).
 * usage: bench_reads STORE SPEC COUNT SEED [SPAN]   prints: ns_per_read N */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <vhdkit.h>

static uint64_t next(uint64_t *s) { /* xorshift64, as the Rust side */
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    return *s;
}

static void check(vhdkit_status status, vhdkit_error *err) {
    if (status != VHDKIT_OK) { fprintf(stderr, "%s\n", vhdkit_error_message(err)); exit(1); }
}

int main(int argc, char **argv) {
    if (argc != 5 && argc != 6) { fprintf(stderr, "usage: bench_reads STORE SPEC COUNT SEED [SPAN]\n"); return 2; }
    vhdkit_error *err = NULL;
    vhdkit_store *store = NULL;
    vhdkit_reader *reader = NULL;
    uint64_t size = 0, count = strtoull(argv[3], NULL, 10), seed = strtoull(argv[4], NULL, 10);
    check(vhdkit_store_open(argv[1], "{\"read_only\": true}", &store, &err), err);
    check(vhdkit_reader_open(store, argv[2], NULL, &reader, &err), err);
    check(vhdkit_reader_size(reader, &size, &err), err);
    uint64_t span = argc == 6 ? strtoull(argv[5], NULL, 10) : 0;
    if (span > 0 && span < size) size = span; /* 0: the whole disk */
    static uint8_t buf[4096];
    uint64_t sum = 0;
    struct timespec t0, t1;
    for (int pass = 0; pass < 2; pass++) {
        uint64_t s = seed;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (uint64_t i = 0; i < count; i++) {
            uint64_t offset = next(&s) % (size / 4096) * 4096;
            check(vhdkit_reader_read_at(reader, offset, buf, sizeof buf, &err), err);
            sum += buf[i % 4096];
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
    }
    double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
    printf("ns_per_read %.1f (checksum %llu)\n", ns / (double)count, (unsigned long long)sum);
    vhdkit_reader_free(reader);
    vhdkit_store_free(store);
    return 0;
}
