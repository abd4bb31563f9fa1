// fm-cgexec UID GID PROCS... -- COMMAND ARGS...
//
// fm-worker's exec shim: the attempt's process joins its cgroup leaf (writes its pid to
// each cgroup.procs given), drops to UID:GID ("-": stays), and runs COMMAND with the
// environment it was given (PATH from there). Nothing the command starts is ever outside
// the leaf. Exit 126 when the cgroup or the user cannot be taken, 127 when the command
// cannot be run. Only libc: it costs an exec, not a program's start-up.
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: fm-cgexec UID GID PROCS... -- COMMAND ARGS...\n");
    return 126;
  }
  const char* uid = argv[1];
  const char* gid = argv[2];
  char pid[32];
  int len = snprintf(pid, sizeof pid, "%ld", static_cast<long>(getpid()));
  int i = 3;
  for (; i < argc && strcmp(argv[i], "--") != 0; ++i) {
    int fd = open(argv[i], O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, pid, static_cast<size_t>(len)) != len) {
      fprintf(stderr, "fm-cgexec: cannot join the attempt's cgroup (%s): %s\n", argv[i], strerror(errno));
      return 126;
    }
    close(fd);
  }
  if (i + 1 >= argc) {
    fprintf(stderr, "fm-cgexec: no command after --\n");
    return 126;
  }
  if (strcmp(gid, "-") != 0 && (setgroups(0, nullptr) != 0 || setgid(static_cast<gid_t>(atol(gid))) != 0)) {
    fprintf(stderr, "fm-cgexec: cannot switch to group %s: %s\n", gid, strerror(errno));
    return 126;
  }
  if (strcmp(uid, "-") != 0 && setuid(static_cast<uid_t>(atol(uid))) != 0) {
    fprintf(stderr, "fm-cgexec: cannot switch to user %s: %s\n", uid, strerror(errno));
    return 126;
  }
  execvp(argv[i + 1], argv + i + 1);
  fprintf(stderr, "cannot run \"%s\": %s\n", argv[i + 1], strerror(errno));
  return 127;
}
