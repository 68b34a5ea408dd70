/*
 * C23 strtol/strtoul entry points for glibc < 2.38 (Debian 12).
 *
 * glibc 2.38 added __isoc23_strtol and __isoc23_strtoul; compilers targeting
 * C23 (or _GNU_SOURCE with new headers) call them instead of strtol/strtoul.
 * They differ from the old functions only in also accepting a "0b"/"0B"
 * prefix when base is 0 or 2, which is handled here before forwarding.
 *
 * Built by tests/testbed/lib/apptainer.sh and added to the Apptainer binaries
 * with `patchelf --add-needed`.
 */
#include <ctype.h>
#include <stdlib.h>

/* Return a pointer to the digits after a binary prefix, or NULL. */
static const char *binary_digits(const char *s, int base)
{
    if (base != 0 && base != 2)
        return NULL;
    while (isspace((unsigned char)*s))
        s++;
    if (*s == '+' || *s == '-')
        s++;
    if (s[0] == '0' && (s[1] == 'b' || s[1] == 'B') && (s[2] == '0' || s[2] == '1'))
        return s + 2;
    return NULL;
}

long __isoc23_strtol(const char *nptr, char **endptr, int base)
{
    const char *digits = binary_digits(nptr, base);
    if (digits) {
        const char *p = nptr;
        while (isspace((unsigned char)*p))
            p++;
        long v = strtol(digits, endptr, 2);
        return *p == '-' ? -v : v;
    }
    return strtol(nptr, endptr, base);
}

unsigned long __isoc23_strtoul(const char *nptr, char **endptr, int base)
{
    const char *digits = binary_digits(nptr, base);
    if (digits) {
        const char *p = nptr;
        while (isspace((unsigned char)*p))
            p++;
        unsigned long v = strtoul(digits, endptr, 2);
        return *p == '-' ? -v : v;
    }
    return strtoul(nptr, endptr, base);
}
