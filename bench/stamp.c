/* The finalize action for P4: write CLOCK_MONOTONIC (ns) at main() to argv[1], and exit.
 * Built -static by bench/lab.py so no dynamic loader runs between execve() and the read. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (argc < 2)
        return 2;
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%lld\n", (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, buf, (size_t)n) != n)
        return 1;
    return close(fd) == 0 ? 0 : 1;
}
