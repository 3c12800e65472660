/* A chatty service for the logs row of `make bench`: prints N (default 1,000,000) lines of
 * exactly 100 bytes (an 8-digit sequence number, 91 'x', a newline) through stdio as fast as it
 * can, so the bench can check that every line reached the log, in order. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    char pad[92];
    memset(pad, 'x', 91);
    pad[91] = 0;
    for (long i = 0; i < n; i++)
        if (printf("%08ld%s\n", i, pad) < 0)
            return 1;
    return fflush(stdout) == 0 ? 0 : 1;
}
