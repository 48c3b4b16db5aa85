/* The bochscpu-python wheel is built against glibc >= 2.38, whose C23 headers route
 * strtoull/sscanf to __isoc23_* symbols; Debian 12 has glibc 2.36. These forward to the
 * classic functions (the only difference, C23's 0b prefixes, does not arise there).
 * Preloaded by scripts/test-avx512.sh only when the wheel fails to import without it. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

unsigned long long __isoc23_strtoull(const char *s, char **end, int base) {
    return strtoull(s, end, base);
}

int __isoc23_sscanf(const char *s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int r = vsscanf(s, fmt, ap);
    va_end(ap);
    return r;
}
