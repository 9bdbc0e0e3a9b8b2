/*
 * share_prog: a dynamically linked program for the lab's share steps,
 * compiled in L1 (the host's gcc and glibc) and run in L2 through
 * `ember smoke --root-share`.
 *
 *   share_prog gen N        writes the N-byte test pattern to stdout
 *   share_prog guest RW RO  in the guest: prints what it sees (uid, cwd,
 *                           PATH, HOME, its libc), writes the pattern
 *                           (1 MiB + 3 bytes) to RW/written.bin, tries to
 *                           create RO/refused (must fail with EROFS), writes
 *                           "to stderr" on stderr, exits 42
 */
#include <errno.h>
#include <fcntl.h>
#include <gnu/libc-version.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LEN ((1u << 20) + 3)

static unsigned char byte_at(unsigned long i)
{
    unsigned long x = i * 2654435761u + 12345;
    return (unsigned char)(x >> 13);
}

static int gen(unsigned long n, FILE *f)
{
    for (unsigned long i = 0; i < n; i++)
        if (fputc(byte_at(i), f) == EOF)
            return 1;
    return fclose(f) != 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "gen"))
        return gen(strtoul(argv[2], NULL, 10), stdout);
    if (argc != 4 || strcmp(argv[1], "guest"))
        return 2;
    char cwd[4096], path[4096];
    if (!getcwd(cwd, sizeof(cwd)))
        strcpy(cwd, "?");
    printf("SHARE-PROG uid=%d gid=%d cwd=%s glibc=%s\n", (int)getuid(), (int)getgid(), cwd, gnu_get_libc_version());
    printf("SHARE-PROG path=%s home=%s term=%s\n", getenv("PATH") ? getenv("PATH") : "-",
           getenv("HOME") ? getenv("HOME") : "-", getenv("TERM") ? getenv("TERM") : "-");
    snprintf(path, sizeof(path), "%s/written.bin", argv[2]);
    FILE *f = fopen(path, "w");
    int wrote = f && gen(LEN, f) == 0;
    printf("SHARE-PROG wrote=%d\n", wrote);
    snprintf(path, sizeof(path), "%s/refused", argv[3]);
    int fd = open(path, O_CREAT | O_WRONLY, 0644);
    printf("SHARE-PROG ro_create=%s\n", fd >= 0 ? "allowed" : strerror(errno));
    fprintf(stderr, "SHARE-PROG to stderr\n");
    fflush(NULL);
    return 42;
}
