/* bcryptprimitives.dll for Wine 8 (Debian 12), which lacks it: Rust's
 * standard library on Windows imports ProcessPrng from it, so without this
 * no Rust program starts under that Wine ("bcryptprimitives.dll not
 * found"). ProcessPrng fills a buffer with random bytes and cannot fail;
 * this one asks RtlGenRandom (advapi32's SystemFunction036), which Wine
 * has. Test tooling only (scripts/wine-test.sh): never shipped, never
 * linked into vhdkit. A real Windows 10 or later has its own. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
    while (length > 0) {
        ULONG n = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, n)) return FALSE;
        data += n;
        length -= n;
    }
    return TRUE;
}
