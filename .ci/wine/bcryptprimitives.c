/*
 * bcryptprimitives.dll for Wine 8, which lacks it: the one function Rust's
 * standard library imports from it, ProcessPrng (random bytes, as Windows
 * 10 and later give them), made from BCryptGenRandom with the system's
 * preferred generator. Built by .ci/windows into the Wine prefix only;
 * on Windows the system's own DLL is used.
 */
#include <windows.h>
#include <bcrypt.h>

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG n = len > 0x40000000u ? 0x40000000u : (ULONG)len;
        if (!BCRYPT_SUCCESS(BCryptGenRandom(NULL, data, n, BCRYPT_USE_SYSTEM_PREFERRED_RNG))) return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
