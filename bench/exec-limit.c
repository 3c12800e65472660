/* exec-limit: the floor any launcher has to pay, for bench/bench.sh.
 *
 *   exec-limit MODE FILE [ARGS...]   runs FILE with argv[0] = FILE's basename
 *
 * MODE
 *   mmap     mmap FILE, memfd_create(MFD_CLOEXEC|MFD_ALLOW_SEALING|MFD_EXEC), write(2)
 *            from the mapping, seal, fexecve: the copy limit of the memfd runner
 *   sendfile the same, filling the memfd with sendfile(2) from FILE (what stigmer does)
 *   execve   execve(FILE): the cost of one more exec
 *   stat     stat(FILE), refuse anything but a regular file, then execve(FILE): what the cache
 *            runner must do at the least, the floor of a warm cache start
 *   execveat open(FILE, O_PATH) then execveat(fd, "", AT_EMPTY_PATH)
 *
 * Built static (-O2 -static) by bench/bench.sh, so its own start-up is as small as
 * it gets. Exits 125 with a message on any failure before the exec; the message also goes to
 * the file $EXEC_LIMIT_LOG when set (hyperfine discards the commands' stderr, and bench.sh
 * keeps that file beside the run's JSON so a failed repetition says which step failed). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U
#endif

extern char **environ;

static const char *mode_name = "?", *file_name = "?";

static void die(const char *what) {
    const char *why = strerror(errno);
    fprintf(stderr, "exec-limit: %s %s: %s: %s\n", mode_name, file_name, what, why);
    const char *log = getenv("EXEC_LIMIT_LOG");
    FILE *f = log && *log ? fopen(log, "a") : NULL;
    if (f) {
        fprintf(f, "exec-limit[%ld]: %s %s: %s: %s\n", (long)getpid(), mode_name, file_name, what, why);
        fclose(f);
    }
    exit(125);
}

static int new_memfd(void) {
    int fd = memfd_create("exec-limit", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC);
    if (fd < 0 && errno == EINVAL)
        fd = memfd_create("exec-limit", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        die("memfd_create");
    return fd;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: exec-limit mmap|sendfile|execve|stat|execveat FILE [ARGS...]\n");
        return 125;
    }
    const char *mode = argv[1], *file = argv[2];
    mode_name = mode;
    file_name = file;
    char **args = argv + 2;
    const char *base = strrchr(file, '/');
    args[0] = (char *)(base ? base + 1 : file);

    if (strcmp(mode, "execve") == 0) {
        execve(file, args, environ);
        die("execve");
    }
    if (strcmp(mode, "stat") == 0) {
        struct stat st;
        if (lstat(file, &st) < 0)
            die("lstat");
        if (!S_ISREG(st.st_mode)) {
            errno = EACCES;
            die("not a regular file");
        }
        execve(file, args, environ);
        die("execve");
    }
    if (strcmp(mode, "execveat") == 0) {
        int fd = open(file, O_PATH | O_CLOEXEC);
        if (fd < 0)
            die("open");
        syscall(SYS_execveat, fd, "", args, environ, AT_EMPTY_PATH);
        die("execveat");
    }

    int in = open(file, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        die("open");
    struct stat st;
    if (fstat(in, &st) < 0)
        die("fstat");
    int fd = new_memfd();
    if (strcmp(mode, "mmap") == 0) {
        const char *p = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, in, 0);
        if (p == MAP_FAILED)
            die("mmap");
        for (off_t done = 0; done < st.st_size;) {
            ssize_t n = write(fd, p + done, st.st_size - done);
            if (n < 0)
                die("write");
            done += n;
        }
    } else if (strcmp(mode, "sendfile") == 0) {
        off_t off = 0;
        while (off < st.st_size) {
            ssize_t n = sendfile(fd, in, &off, st.st_size - off);
            if (n <= 0)
                die("sendfile");
        }
    } else {
        fprintf(stderr, "exec-limit: unknown mode %s\n", mode);
        return 125;
    }
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0)
        die("F_ADD_SEALS");
    fexecve(fd, args, environ);
    die("fexecve");
}
