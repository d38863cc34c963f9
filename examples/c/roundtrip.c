/*
 * vhdkit from C: back up a disk, then its changes from a Hyper-V change
 * list, cancel a backup from another thread, restore as VHDX through a
 * write callback, verify, and make every hostile call the header warns
 * about. tests/capi_languages.rs builds this with the system cc (once
 * under AddressSanitizer) and compares the restored image with qemu-img's
 * raw view of CHANGED.
 *
 * usage: roundtrip BASE.vhdx CHANGED.vhdx CHANGES.json STORE OUT.vhdx
 */
#define _DEFAULT_SOURCE
#define _FILE_OFFSET_BITS 64
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <vhdkit.h>

static int failures = 0;

/* Fails the program when `status` is not `want`, printing the error. */
static void check(const char *what, vhdkit_status status, vhdkit_status want, vhdkit_error *err) {
    if (status != want) {
        fprintf(stderr, "FAIL %s: got %s, want %s: %s\n", what, vhdkit_status_name(status),
                vhdkit_status_name(want), err ? vhdkit_error_message(err) : "(no error)");
        failures++;
    } else if (want != VHDKIT_OK && (err == NULL || vhdkit_error_status(err) != want)) {
        fprintf(stderr, "FAIL %s: no error object for %s\n", what, vhdkit_status_name(want));
        failures++;
    } else {
        printf("ok   %s%s%s\n", what, err ? ": " : "", err ? vhdkit_error_message(err) : "");
    }
    vhdkit_error_free(err);
}

/* C leaves the order of a call's arguments open, so the status is taken
 * before the error it filled is read. */
#define EXPECT(what, call, want)                 \
    do {                                         \
        vhdkit_status status_ = (call);          \
        check((what), status_, (want), err);     \
        err = NULL;                              \
    } while (0)
#define MUST(what, call)                         \
    do {                                         \
        vhdkit_status status_ = (call);          \
        check((what), status_, VHDKIT_OK, err);  \
        err = NULL;                              \
        if (status_ != VHDKIT_OK) exit(1);       \
    } while (0)

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = calloc(1, (size_t)n + 1);
    if (fread(text, 1, (size_t)n, f) != (size_t)n) { perror(path); exit(1); }
    fclose(f);
    return text;
}

/* The write callback: positional writes into a FILE*. */
static int32_t write_file(void *user, uint64_t offset, const uint8_t *data, size_t len) {
    FILE *f = user;
    if (fseeko(f, (off_t)offset, SEEK_SET) != 0) return 1;
    return fwrite(data, 1, len, f) == len ? 0 : 2;
}

/* A write callback that fails, to see its code come back. */
static int32_t write_refuse(void *user, uint64_t offset, const uint8_t *data, size_t len) {
    (void)user; (void)offset; (void)data; (void)len;
    return 28; /* ENOSPC */
}

/* Progress into a counter. */
static void count_progress(void *user, const vhdkit_progress *p) {
    (void)p;
    atomic_fetch_add((atomic_int *)user, 1);
}

/* The cancel test: the backup's first progress report says "running", then
 * waits (up to 30 s) for the main thread to trip the cancel handle. */
struct cancel_test {
    const vhdkit_store *store;
    const vhdkit_disk *disk;
    const vhdkit_cancel *cancel;
    atomic_int started, tripped;
    vhdkit_status status;
    vhdkit_error *err;
};

static void hold_until_tripped(void *user, const vhdkit_progress *p) {
    struct cancel_test *t = user;
    (void)p;
    atomic_store(&t->started, 1);
    for (int i = 0; i < 3000 && !atomic_load(&t->tripped); i++) usleep(10000);
}

static void *backup_thread(void *arg) {
    struct cancel_test *t = arg;
    const vhdkit_disk *disks[] = {t->disk};
    t->status = vhdkit_store_backup(t->store, disks, 1, "{\"name\": \"vm\", \"full\": true}", t->cancel,
                                    hold_until_tripped, t, NULL, &t->err);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s BASE.vhdx CHANGED.vhdx CHANGES.json STORE OUT.vhdx\n", argv[0]);
        return 2;
    }
    const char *base_path = argv[1], *changed_path = argv[2], *changes_path = argv[3];
    const char *store_path = argv[4], *out_path = argv[5];
    vhdkit_error *err = NULL;
    char *json = NULL;

    if ((vhdkit_abi_version() >> 16) != (VHDKIT_ABI_VERSION >> 16)) {
        fprintf(stderr, "FAIL: library ABI %x, header %x\n", vhdkit_abi_version(), VHDKIT_ABI_VERSION);
        return 1;
    }
    printf("vhdkit %s, ABI %x\n", vhdkit_version(), vhdkit_abi_version());

    /* A full backup of BASE. */
    vhdkit_disk *base = NULL, *changed = NULL;
    MUST("open base", vhdkit_disk_open(base_path, NULL, &base, &err));
    MUST("info", vhdkit_disk_info(base, &json, &err));
    printf("info %s\n", json);
    vhdkit_string_free(json);
    vhdkit_store *store = NULL;
    MUST("init store", vhdkit_store_init(store_path, "{\"compression\": \"zstd\"}", &store, &err));
    atomic_int reports = 0;
    const vhdkit_disk *one[] = {base};
    MUST("full backup", vhdkit_store_backup(store, one, 1, "{\"name\": \"vm\"}", NULL, count_progress, &reports,
                                            &json, &err));
    printf("full %s\nprogress reports: %d\n", json, atomic_load(&reports));
    vhdkit_string_free(json);

    /* An incremental of CHANGED from its Hyper-V change list, given inline. */
    MUST("open changed", vhdkit_disk_open(changed_path, "{\"mmap\": false}", &changed, &err));
    char *changes = slurp(changes_path);
    size_t n = strlen(changes) + 128;
    char *options = malloc(n);
    snprintf(options, n, "{\"name\": \"vm\", \"disks\": [{\"changes\": %s, \"change_id\": \"rct-2\"}]}", changes);
    one[0] = changed;
    MUST("incremental backup", vhdkit_store_backup(store, one, 1, options, NULL, NULL, NULL, &json, &err));
    printf("incremental %s\n", json);
    if (!strstr(json, "\"kind\":\"incremental\"")) { fprintf(stderr, "FAIL: not incremental\n"); failures++; }
    vhdkit_string_free(json);
    free(options);
    free(changes);

    /* A third backup, cancelled from this thread while it runs on another. */
    struct cancel_test t = {.store = store, .disk = changed};
    vhdkit_cancel *cancel = NULL;
    MUST("cancel handle", vhdkit_cancel_new(&cancel, &err));
    t.cancel = cancel;
    pthread_t thread;
    pthread_create(&thread, NULL, backup_thread, &t);
    for (int i = 0; i < 3000 && !atomic_load(&t.started); i++) usleep(10000);
    MUST("trip", vhdkit_cancel_trip(cancel, &err));
    atomic_store(&t.tripped, 1);
    pthread_join(thread, NULL);
    check("cancelled backup", t.status, VHDKIT_CANCELLED, t.err);
    MUST("list", vhdkit_store_list(store, &json, &err));
    int backups = 0;
    for (const char *p = json; (p = strstr(p, "\"id\":")); p++) backups++;
    printf("backups after the cancel: %d\n", backups);
    if (backups != 2) { fprintf(stderr, "FAIL: the cancelled backup committed\n"); failures++; }
    vhdkit_string_free(json);

    /* Restore the newest as VHDX through the write callback. */
    FILE *out = fopen(out_path, "wb");
    if (!out) { perror(out_path); return 1; }
    reports = 0;
    MUST("restore to callback", vhdkit_store_restore_to_callback(store, "vm", "vhdx", write_file, out, NULL, NULL,
                                                                 count_progress, &reports, &json, &err));
    if (fclose(out) != 0) { perror(out_path); return 1; }
    printf("restore %s\n", json);
    vhdkit_string_free(json);

    /* A reader gives what the disk holds, at odd offsets too. */
    vhdkit_reader *reader = NULL;
    MUST("reader", vhdkit_reader_open(store, "vm", NULL, &reader, &err));
    uint64_t size = 0;
    MUST("reader size", vhdkit_reader_size(reader, &size, &err));
    static uint8_t a[1 << 20], b[1 << 20];
    uint64_t offsets[] = {0, 4096 * 3 + 17, size / 2 - 333, size - sizeof a};
    for (size_t i = 0; i < sizeof offsets / sizeof *offsets; i++) {
        MUST("reader read", vhdkit_reader_read_at(reader, offsets[i], a, sizeof a, &err));
        MUST("disk read", vhdkit_disk_read_at(changed, offsets[i], b, sizeof b, &err));
        if (memcmp(a, b, sizeof a) != 0) { fprintf(stderr, "FAIL: reader differs at %llu\n",
                                                   (unsigned long long)offsets[i]); failures++; }
    }

    /* Verify. */
    MUST("verify", vhdkit_store_verify(store, NULL, NULL, NULL, NULL, &json, &err));
    printf("verify %s\n", json);
    vhdkit_string_free(json);

    /* Hostile calls: each an error, never a crash. */
    vhdkit_disk *freed = NULL;
    MUST("open to free", vhdkit_disk_open(base_path, NULL, &freed, &err));
    vhdkit_disk_free(freed);
    EXPECT("freed handle", vhdkit_disk_size(freed, &size, &err), VHDKIT_INVALID_ARGUMENT);
    vhdkit_disk_free(freed); /* a second free is ignored */
    EXPECT("null handle", vhdkit_disk_size(NULL, &size, &err), VHDKIT_INVALID_ARGUMENT);
    EXPECT("wrong kind of handle", vhdkit_disk_size((const vhdkit_disk *)store, &size, &err),
           VHDKIT_INVALID_ARGUMENT);
    EXPECT("garbage handle", vhdkit_reader_size((const vhdkit_reader *)(uintptr_t)0x1234, &size, &err),
           VHDKIT_INVALID_ARGUMENT);
    EXPECT("null out-pointer", vhdkit_disk_size(base, NULL, &err), VHDKIT_INVALID_ARGUMENT);
    EXPECT("null path", vhdkit_disk_open(NULL, NULL, &freed, &err), VHDKIT_INVALID_ARGUMENT);
    EXPECT("non-UTF-8 path", vhdkit_disk_open("\xff\xfe.vhdx", NULL, &freed, &err), VHDKIT_INVALID_ARGUMENT);
    EXPECT("missing file", vhdkit_disk_open("/nonexistent/x.vhdx", NULL, &freed, &err), VHDKIT_NOT_FOUND);
    EXPECT("options not JSON", vhdkit_disk_open(base_path, "{mmap", &freed, &err), VHDKIT_INVALID_ARGUMENT);
    EXPECT("unknown option", vhdkit_disk_open(base_path, "{\"mmpa\": true}", &freed, &err),
           VHDKIT_INVALID_ARGUMENT);
    EXPECT("read past the end", vhdkit_disk_read_at(base, size - 10, a, 20, &err), VHDKIT_INVALID_INPUT);
    EXPECT("read into null", vhdkit_disk_read_at(base, 0, NULL, 20, &err), VHDKIT_INVALID_ARGUMENT);
    EXPECT("no such backup", vhdkit_reader_open(store, "nothing-by-this-name", NULL, &reader, &err),
           VHDKIT_NOT_FOUND);
    EXPECT("backup without a name", vhdkit_store_backup(store, one, 1, "{}", NULL, NULL, NULL, &json, &err),
           VHDKIT_INVALID_ARGUMENT);
    EXPECT("unknown format", vhdkit_store_restore(store, "vm", "x.img", "qcow2", NULL, NULL, NULL, NULL, &json, &err),
           VHDKIT_INVALID_ARGUMENT);
    EXPECT("null write callback", vhdkit_store_restore_to_callback(store, "vm", "raw", NULL, NULL, NULL, NULL, NULL,
                                                                   NULL, &json, &err), VHDKIT_INVALID_ARGUMENT);
    vhdkit_status s = vhdkit_store_restore_to_callback(store, "vm", "vhdx", write_refuse, NULL, NULL, NULL, NULL,
                                                       NULL, &json, &err);
    if (s == VHDKIT_CALLBACK && vhdkit_error_os_code(err) != 28) {
        fprintf(stderr, "FAIL: callback code %d, want 28\n", vhdkit_error_os_code(err));
        failures++;
    }
    EXPECT("failing write callback", s, VHDKIT_CALLBACK);
    if (json != NULL) { fprintf(stderr, "FAIL: a report from a failed call\n"); failures++; }
    if (vhdkit_disk_size(NULL, &size, NULL) != VHDKIT_INVALID_ARGUMENT) {
        fprintf(stderr, "FAIL: a null handle without an error object\n");
        failures++;
    }

    /* A cancel during every long call: tripped before, so each stops at
     * its first check. */
    vhdkit_cancel *tripped = NULL;
    MUST("cancel handle", vhdkit_cancel_new(&tripped, &err));
    MUST("trip", vhdkit_cancel_trip(tripped, &err));
    EXPECT("cancelled backup (tripped before)",
           vhdkit_store_backup(store, one, 1, "{\"name\": \"vm\", \"full\": true}", tripped, NULL, NULL, &json, &err),
           VHDKIT_CANCELLED);
    EXPECT("cancelled restore", vhdkit_store_restore(store, "vm", "cancelled.vhdx", "vhdx", NULL, tripped, NULL, NULL,
                                                     &json, &err), VHDKIT_CANCELLED);
    if (access("cancelled.vhdx", F_OK) == 0) { fprintf(stderr, "FAIL: a cancelled restore left its file\n"); failures++; }
    FILE *sink = tmpfile();
    EXPECT("cancelled restore to callback",
           vhdkit_store_restore_to_callback(store, "vm", "raw", write_file, sink, NULL, tripped, NULL, NULL, &json,
                                            &err), VHDKIT_CANCELLED);
    fclose(sink);
    EXPECT("cancelled verify", vhdkit_store_verify(store, NULL, tripped, NULL, NULL, &json, &err), VHDKIT_CANCELLED);
    EXPECT("cancelled vacuum", vhdkit_store_vacuum(store, "{\"grace_seconds\": 0}", tripped, NULL, NULL, &json, &err),
           VHDKIT_CANCELLED);
    vhdkit_cancel_free(tripped);
    EXPECT("freed cancel handle", vhdkit_cancel_trip(tripped, &err), VHDKIT_INVALID_ARGUMENT);

    /* Maintenance still works after all that, and the store is sound. */
    MUST("prune", vhdkit_store_prune(store, "vm", "{\"keep_last\": 5}", &json, &err));
    vhdkit_string_free(json);
    MUST("vacuum", vhdkit_store_vacuum(store, "{\"grace_seconds\": 0}", NULL, NULL, NULL, &json, &err));
    vhdkit_string_free(json);
    MUST("verify again", vhdkit_store_verify(store, NULL, NULL, NULL, NULL, &json, &err));
    vhdkit_string_free(json);

    vhdkit_reader_free(reader);
    vhdkit_cancel_free(cancel);
    vhdkit_disk_free(base);
    vhdkit_disk_free(changed);
    vhdkit_store_free(store);
    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("C ROUNDTRIP OK\n");
    return 0;
}
