// fm-cgexec UID GID [PROCS...]   (the attempt on descriptor 3)
//
// fm-worker's exec shim, the only program a worker running as root starts for an exec
// attempt. fm-worker runs it with an empty environment and these arguments, all of its
// own making: the attempt's process joins its cgroup leaf (writes its pid to each
// cgroup.procs given), drops to UID:GID ("-": stays) with no supplementary groups, and
// only then reads the task's input from descriptor 3 and acts on it: umask 077, the
// working directory, the environment, the command (PATH from that environment). So
// nothing of the task (LD_PRELOAD, a cwd, an argument) ever reaches a process that is
// still privileged. Only libc: it costs an exec, not a program's start-up.
//
// Descriptor 3 (a memfd of fm-worker's) holds NUL-terminated strings:
//   CWD ("" for none)  ARGC  ARG0 .. ARGn-1  ENV0 .. ENVm-1
// It is closed before the command runs. When the shim cannot run the command it
// writes "!" KIND MESSAGE over the start of descriptor 3, for fm-worker to report,
// KIND 'T' the task's fault (its cwd, its command), 'W' the worker's (its cgroup, the
// switch), and exits 126 (127: the command was not found).
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern char** environ;

namespace {

constexpr int kInputFd = 3;
constexpr size_t kMaxInput = 64u << 20;

[[noreturn]] void Fail(int code, char kind, const char* format, ...) {
  char message[1024];
  message[0] = '!';
  message[1] = kind;
  va_list args;
  va_start(args, format);
  int n = vsnprintf(message + 2, sizeof message - 2, format, args);
  va_end(args);
  size_t len = 2 + (n < 0                                       ? 0
                    : n >= static_cast<int>(sizeof message - 2) ? sizeof message - 3
                                                                : static_cast<size_t>(n));
  if (ftruncate(kInputFd, 0) != 0 || pwrite(kInputFd, message, len, 0) != static_cast<ssize_t>(len)) {
    // fm-worker then reports the exit status alone; the task's stderr still says why.
  }
  fprintf(stderr, "fm-cgexec: %.*s\n", static_cast<int>(len - 2), message + 2);
  _exit(code);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: fm-cgexec UID GID [PROCS...] (the attempt on descriptor 3)\n");
    return 126;
  }
  const char* uid = argv[1];
  const char* gid = argv[2];
  char pid[32];
  int len = snprintf(pid, sizeof pid, "%ld", static_cast<long>(getpid()));
  for (int i = 3; i < argc; ++i) {
    int fd = open(argv[i], O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, pid, static_cast<size_t>(len)) != len) {
      Fail(126, 'W', "cannot join the attempt's cgroup (%s): %s", argv[i], strerror(errno));
    }
    close(fd);
  }
  if (strcmp(gid, "-") != 0 && (setgroups(0, nullptr) != 0 || setgid(static_cast<gid_t>(atol(gid))) != 0)) {
    Fail(126, 'W', "cannot switch to group %s: %s", gid, strerror(errno));
  }
  if (strcmp(uid, "-") != 0 && setuid(static_cast<uid_t>(atol(uid))) != 0) {
    Fail(126, 'W', "cannot switch to user %s: %s", uid, strerror(errno));
  }
  // From here on this process is the task's user: the task's input is read and used.
  struct stat st {};
  if (fstat(kInputFd, &st) != 0 || st.st_size <= 0 || static_cast<size_t>(st.st_size) > kMaxInput) {
    Fail(126, 'W', "no attempt on descriptor 3");
  }
  size_t size = static_cast<size_t>(st.st_size);
  char* input = static_cast<char*>(malloc(size + 1));
  if (!input || pread(kInputFd, input, size, 0) != static_cast<ssize_t>(size)) {
    Fail(126, 'W', "cannot read the attempt on descriptor 3");
  }
  input[size] = '\0';
  // Split into its strings; the last one must be terminated.
  size_t count = 0;
  for (size_t i = 0; i < size; ++i) count += input[i] == '\0';
  char** strings = static_cast<char**>(calloc(count + 2, sizeof(char*)));
  if (!strings || size == 0 || input[size - 1] != '\0') Fail(126, 'W', "a malformed attempt on descriptor 3");
  size_t n = 0;
  for (size_t start = 0; start < size; start += strlen(input + start) + 1) strings[n++] = input + start;
  if (n < 3) Fail(126, 'W', "a malformed attempt on descriptor 3");
  const char* cwd = strings[0];
  long args = atol(strings[1]);
  if (args < 1 || static_cast<size_t>(args) + 2 > n) Fail(126, 'W', "a malformed attempt on descriptor 3");
  char** command = strings + 2;
  char** env = command + args;
  // The command's argv ends at the first variable: terminate it there (a copy of the
  // pointers, env keeps its own).
  char** command_argv = static_cast<char**>(calloc(static_cast<size_t>(args) + 1, sizeof(char*)));
  if (!command_argv) Fail(126, 'W', "out of memory");
  for (long i = 0; i < args; ++i) command_argv[i] = command[i];
  // The descriptor stays open, close-on-exec, to report a failed exec.
  fcntl(kInputFd, F_SETFD, FD_CLOEXEC);
  umask(077);
  if (cwd[0] != '\0' && chdir(cwd) != 0) Fail(126, 'T', "cwd \"%s\" is not a directory", cwd);
  if (cwd[0] == '\0') {
    // HOME when it can be entered, else "/".
    const char* home = nullptr;
    for (char** e = env; *e; ++e) {
      if (strncmp(*e, "HOME=", 5) == 0) home = *e + 5;
    }
    if (!home || chdir(home) != 0) {
      if (chdir("/") != 0) Fail(126, 'W', "cannot enter /: %s", strerror(errno));
    }
  }
  environ = env;  // execvp finds the command through the task's PATH
  execvp(command_argv[0], command_argv);
  Fail(errno == ENOENT ? 127 : 126, 'T', "cannot run \"%s\": %s", command_argv[0], strerror(errno));
}
