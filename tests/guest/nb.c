/* nb: what busybox cannot do, for tests/guest/linux.sh: reads and writes
 * of a file opened with O_NONBLOCK, printing what each call returned.
 *
 *   nb read FILE N       open O_RDONLY|O_NONBLOCK, N read(2)s of 4096
 *   nb write FILE TEXT   open O_WRONLY|O_APPEND|O_NONBLOCK, one write(2)
 *   nb bwrite FILE TEXT  the same without O_NONBLOCK
 *
 * One line per call: "data TEXT" (newlines as \n), "eof", "wrote N", or
 * "errno N". Built static by tests/linux_client.rs (gcc -static) into the
 * guest's /checks. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: nb read FILE N | nb write FILE TEXT\n");
        return 2;
    }
    if (strcmp(argv[1], "read") == 0) {
        int fd = open(argv[2], O_RDONLY | O_NONBLOCK);
        if (fd < 0) { printf("open errno %d\n", errno); return 1; }
        for (int i = 0; i < atoi(argv[3]); i++) {
            char buf[4096];
            ssize_t n = read(fd, buf, sizeof buf);
            if (n < 0) printf("errno %d\n", errno);
            else if (n == 0) printf("eof\n");
            else {
                printf("data ");
                for (ssize_t j = 0; j < n; j++) {
                    if (buf[j] == '\n') printf("\\n"); else putchar(buf[j]);
                }
                printf("\n");
            }
            fflush(stdout);
        }
        return 0;
    }
    int nb = strcmp(argv[1], "write") == 0 ? O_NONBLOCK : 0;
    int fd = open(argv[2], O_WRONLY | O_APPEND | nb);
    if (fd < 0) { printf("open errno %d\n", errno); return 1; }
    ssize_t n = write(fd, argv[3], strlen(argv[3]));
    if (n < 0) printf("errno %d\n", errno); else printf("wrote %zd\n", n);
    printf(close(fd) < 0 ? "close errno %d\n" : "closed\n", errno);
    return 0;
}
