/* The README's C example: back up a disk into a store (made if missing),
 * incrementally when a change list is given, and print the report.
 * usage: backup STORE NAME DISK [CHANGES.json] */
#include <stdio.h>
#include <vhdkit.h>

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: backup STORE NAME DISK [CHANGES.json]\n"); return 2; }
    vhdkit_error *err = NULL;
    vhdkit_store *store = NULL;
    vhdkit_disk *disk = NULL;
    char options[4096], *report = NULL;
    if (vhdkit_store_open(argv[1], NULL, &store, &err) == VHDKIT_NOT_FOUND) {
        vhdkit_error_free(err);
        vhdkit_store_init(argv[1], "{\"compression\": \"zstd\"}", &store, &err);
    }
    if (store && vhdkit_disk_open(argv[3], NULL, &disk, &err) == VHDKIT_OK) {
        snprintf(options, sizeof options, "{\"name\": \"%s\", \"disks\": [{\"changes_file\": %s%s%s}]}", argv[2],
                 argc > 4 ? "\"" : "", argc > 4 ? argv[4] : "null", argc > 4 ? "\"" : "");
        const vhdkit_disk *disks[] = {disk};
        vhdkit_store_backup(store, disks, 1, options, NULL, NULL, NULL, &report, &err);
    }
    if (err) fprintf(stderr, "%s: %s\n", vhdkit_status_name(vhdkit_error_status(err)), vhdkit_error_message(err));
    else printf("%s\n", report);
    vhdkit_string_free(report);
    vhdkit_error_free(err);
    vhdkit_disk_free(disk);
    vhdkit_store_free(store);
    return err ? 1 : 0;
}
