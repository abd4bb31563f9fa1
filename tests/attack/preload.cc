// What a hostile task asks the dynamic loader to preload (LD_PRELOAD): on load, in every
// program it reaches, it appends "uid=U euid=E exe=PATH" to the file $ATTACK_OUT. A line
// with uid 0 from a task of another user is the attack of issue #22 working: task input
// that reached a privileged process.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

__attribute__((constructor)) static void ReportWhoLoadedMe() {
  const char* out = getenv("ATTACK_OUT");
  if (!out) return;
  char exe[512] = {0};
  if (readlink("/proc/self/exe", exe, sizeof exe - 1) < 0) exe[0] = '?';
  char line[700];
  int n = snprintf(line, sizeof line, "uid=%d euid=%d exe=%s\n", static_cast<int>(getuid()),
                   static_cast<int>(geteuid()), exe);
  int fd = open(out, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
  if (fd < 0) return;
  if (write(fd, line, static_cast<size_t>(n)) < 0) {
  }
  close(fd);
}
