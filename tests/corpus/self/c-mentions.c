/* A C program whose data holds "os.Executable" between NULs, as Go's function table does: no Go
 * buildinfo, so build.rs must leave it on the memfd runner. */
#include <stdio.h>

static const char name[] = "\0os.Executable";

int main(void) {
    printf("%s%zu\n", name + 1, sizeof name);
    return 0;
}
