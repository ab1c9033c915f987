/* A preload shim for bench/slow-disk.sh: every fsync, fdatasync and sync_file_range of the
 * process waits as long as the file named by OUTLAST_SLOW_SYNC_FILE says (milliseconds; a
 * negative number: for ever, a disk that hangs), read again at every call, so a bench can
 * slow one site's disk while it runs. Without the variable, or with 0, nothing changes.
 *   cc -shared -fPIC -O2 -o slowsync.so bench/slowsync.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long wanted_ms(void) {
  const char *path = getenv("OUTLAST_SLOW_SYNC_FILE");
  if (!path) return 0;
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  long ms = 0;
  if (fscanf(f, "%ld", &ms) != 1) ms = 0;
  fclose(f);
  return ms;
}

static void stall(void) {
  long ms = wanted_ms();
  while (ms < 0) {
    sleep(1);
    ms = wanted_ms();
  }
  if (ms > 0) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
  }
}

int fsync(int fd) {
  static int (*real)(int);
  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
  stall();
  return real(fd);
}

int fdatasync(int fd) {
  static int (*real)(int);
  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
  stall();
  return real(fd);
}

int sync_file_range(int fd, off_t off, off_t n, unsigned int flags) {
  static int (*real)(int, off_t, off_t, unsigned int);
  if (!real) real = (int (*)(int, off_t, off_t, unsigned int))dlsym(RTLD_NEXT, "sync_file_range");
  stall();
  return real(fd, off, n, flags);
}
