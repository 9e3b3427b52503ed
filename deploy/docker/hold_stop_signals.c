/* hold-stop-signals COMMAND [ARG...]: run COMMAND with the worker's stop signals blocked; the
 * image's entry point.
 *
 * In a container the worker is PID 1, and the kernel drops a signal sent to PID 1 while its
 * action is still the default one. A `docker stop` in the first tens of milliseconds, before the
 * interpreter has started and the worker has installed its handlers, was lost that way, and the
 * engine waited out its grace period to SIGKILL. A blocked signal is never dropped: it stays
 * pending across exec until the worker, its handlers installed, unblocks it (service/signals.py,
 * `release_held_stop_signals`), and then stops gracefully.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* The stop signals of service/signals.py (STOP_SIGNALS). */
static const int stop_signals[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGXCPU, SIGPWR};

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs("usage: hold-stop-signals COMMAND [ARG...]\n", stderr);
        return 2;
    }
    sigset_t held;
    sigemptyset(&held);
    for (size_t i = 0; i < sizeof stop_signals / sizeof stop_signals[0]; i++) {
        sigaddset(&held, stop_signals[i]);
    }
    if (sigprocmask(SIG_BLOCK, &held, NULL) != 0) {
        fprintf(stderr, "hold-stop-signals: cannot block the stop signals: %s\n", strerror(errno));
        return 1;
    }
    execvp(argv[1], argv + 1);
    fprintf(stderr, "hold-stop-signals: cannot run %s: %s\n", argv[1], strerror(errno));
    return 127;
}
