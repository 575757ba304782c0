/* berth's integration tests: a static probe run inside a task, to see what
 * its seccomp filter lets through. Prints one NAME=RESULT line per probe:
 * "ok", or the errno's name. Built by the test with `cc -static -pthread`. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static const char *name_of(int e) {
    switch (e) {
    case EPERM: return "EPERM";
    case ENOSYS: return "ENOSYS";
    case EINVAL: return "EINVAL";
    case ENOKEY: return "ENOKEY";
    case EBADF: return "EBADF";
    case ENOENT: return "ENOENT";
    default: return "other";
    }
}

static void report(const char *name, long r) {
    if (r < 0)
        printf("%s=%s\n", name, name_of(errno));
    else
        printf("%s=ok\n", name);
}

static void *worker(void *arg) {
    return arg;
}

int main(void) {
    report("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 0));
    report("add_key", syscall(SYS_add_key, "user", "berth-probe", "x", 1, -2 /* process keyring */));
    report("unshare_user", unshare(CLONE_NEWUSER));
    report("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
    char handle[128] = {0};
    ((unsigned int *)handle)[0] = 8; /* handle_bytes */
    report("open_by_handle_at", syscall(SYS_open_by_handle_at, AT_FDCWD, handle, O_RDONLY));
    pthread_t t[4];
    int ok = 1;
    for (int i = 0; i < 4; i++)
        ok &= pthread_create(&t[i], NULL, worker, NULL) == 0;
    for (int i = 0; i < 4; i++)
        ok &= pthread_join(t[i], NULL) == 0;
    printf("threads=%s\n", ok ? "ok" : "failed");
    return 0;
}
