// Test harness only: Wine 8.0 (Debian bookworm) lacks bcryptprimitives.dll, whose ProcessPrng Rust's
// standard library calls on Windows 10+ (where the DLL always exists). Same contract, from Wine's RtlGenRandom.
#include <windows.h>
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
  while (len > 0) {
    ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
    if (!SystemFunction036(data, chunk)) return FALSE;
    data += chunk;
    len -= chunk;
  }
  return TRUE;
}
