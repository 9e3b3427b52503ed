/* The shutdown deadline: a thread of its own, in C, that ends the process `shutdown_timeout`
 * after a stop began, whatever the interpreter is doing.
 *
 * Rule 1: it needs no GIL, ever. A Python watchdog thread is starved while another thread holds
 *         the GIL in one long native operation (libmpdec converting a number of tens of millions
 *         of digits holds it for seconds), and so is a Python signal handler: neither could
 *         bound the stop. This thread only polls, sleeps, writes and calls _exit.
 * Rule 2: it learns that a stop began from a pipe: the interpreter's signal wakeup descriptor
 *         (`signal.set_wakeup_fd`), into which CPython's C-level handler writes the number of
 *         each signal as it arrives, before any Python code runs; and a 0 byte that Python
 *         writes when a stop begins for another reason (the run ended, stdout closed). The first
 *         stop signal or 0 byte starts the countdown; nothing stops it.
 * Rule 3: at the deadline it writes the last lines it was given, each CK_NOW marker replaced by
 *         the time of writing, from a second thread (the write may block on a stalled reader),
 *         waits for that at most CK_WRITE_GRACE_MS, and ends the process with `exit_code`.
 * Rule 4: its threads block every signal, so signals reach the interpreter's threads as before.
 * Rule 5: the countdown counts time the process ran, in ticks of CK_TICK_NS: a tick that took
 *         over CK_GAP_NS is a process that was stopped (SIGSTOP, `docker pause`, a frozen
 *         cgroup), and counts as one tick. Stopped mid-shutdown, a worker still saves when it
 *         runs again.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CK_NOW "YYYY-MM-DDTHH:MM:SS.ffffffZ" /* replaced by the time of writing, same width */
#define CK_NOW_LEN (sizeof(CK_NOW) - 1)
#define CK_WRITE_GRACE_MS 200
#define CK_MAX_TRIGGERS 8
#define CK_TICK_NS 50000000LL  /* 50 ms */
#define CK_GAP_NS 1000000000LL /* a tick this late: the process was stopped (Rule 5) */

typedef struct {
    int wakeup_fd;               /* the read end of the wakeup pipe */
    int output_fd;               /* where the last lines go */
    double seconds;              /* from the first trigger to the exit */
    int exit_code;
    unsigned char triggers[CK_MAX_TRIGGERS]; /* signal numbers that start the countdown, and 0 */
    size_t trigger_count;
    char *text;                  /* the last lines, CK_NOW markers in them */
    size_t text_len;
    atomic_int written;
} ck_deadline;

static int ck_started; /* one deadline per process; guarded by the GIL in `watch` */

static int ck_is_trigger(const ck_deadline *d, unsigned char byte) {
    for (size_t i = 0; i < d->trigger_count; i++)
        if (d->triggers[i] == byte) return 1;
    return 0;
}

/* Block until a trigger arrives: 1; or 0 if the pipe's write end was closed first. */
static int ck_wait_for_trigger(const ck_deadline *d) {
    unsigned char bytes[64];
    for (;;) {
        struct pollfd p = {.fd = d->wakeup_fd, .events = POLLIN};
        if (poll(&p, 1, -1) < 0) {
            if (errno == EINTR) continue;
            return 0;
        }
        ssize_t got = read(d->wakeup_fd, bytes, sizeof bytes);
        if (got == 0) return 0;
        if (got < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            return 0;
        }
        for (ssize_t i = 0; i < got; i++)
            if (ck_is_trigger(d, bytes[i])) return 1;
    }
}

static int64_t ck_now_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000LL + now.tv_nsec;
}

/* Sleep until the process has run `seconds` (Rule 5). */
static void ck_count_down(double seconds) {
    int64_t left = (int64_t)(seconds * 1e9);
    int64_t last = ck_now_ns();
    while (left > 0) {
        int64_t tick = left < CK_TICK_NS ? left : CK_TICK_NS;
        struct timespec step = {0, (long)tick};
        nanosleep(&step, NULL); /* woken early or late: what passed is measured */
        int64_t now = ck_now_ns();
        int64_t passed = now - last;
        last = now;
        left -= passed > CK_GAP_NS ? tick : passed;
    }
}

/* Every CK_NOW in the text becomes the current UTC time, as the log lines write it. */
static void ck_stamp(char *text, size_t len) {
    struct timespec now;
    struct tm utc;
    char stamp[CK_NOW_LEN + 1];
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &utc);
    snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", utc.tm_year + 1900,
             utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec,
             now.tv_nsec / 1000);
    for (char *at = text; (size_t)(at - text) + CK_NOW_LEN <= len; at++)
        if (memcmp(at, CK_NOW, CK_NOW_LEN) == 0) memcpy(at, stamp, CK_NOW_LEN);
}

static void *ck_write_last_lines(void *arg) {
    ck_deadline *d = arg;
    size_t done = 0;
    while (done < d->text_len) {
        ssize_t n = write(d->output_fd, d->text + done, d->text_len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        done += (size_t)n;
    }
    atomic_store(&d->written, 1);
    return NULL;
}

static int ck_start_thread(void *(*body)(void *), void *arg) {
    pthread_attr_t attr;
    pthread_t thread;
    sigset_t all, before;
    sigfillset(&all);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_sigmask(SIG_SETMASK, &all, &before); /* the new thread inherits the full mask */
    int failed = pthread_create(&thread, &attr, body, arg);
    pthread_sigmask(SIG_SETMASK, &before, NULL);
    pthread_attr_destroy(&attr);
    return failed;
}

static void *ck_watch(void *arg) {
    ck_deadline *d = arg;
    if (!ck_wait_for_trigger(d)) return NULL; /* the process is ending on its own */
    ck_count_down(d->seconds);
    ck_stamp(d->text, d->text_len);
    if (ck_start_thread(ck_write_last_lines, d) == 0) {
        for (int waited = 0; waited < CK_WRITE_GRACE_MS && !atomic_load(&d->written); waited++) {
            struct timespec one_ms = {0, 1000000L};
            nanosleep(&one_ms, NULL);
        }
    }
    _exit(d->exit_code);
}

static PyObject *ck_py_watch(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    static char *keywords[] = {"wakeup_fd", "seconds", "triggers", "output_fd", "last_lines",
                               "exit_code", NULL};
    int wakeup_fd, output_fd, exit_code;
    double seconds;
    Py_buffer triggers, text;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "idy*iy*i", keywords, &wakeup_fd, &seconds,
                                     &triggers, &output_fd, &text, &exit_code))
        return NULL;
    PyObject *outcome = NULL;
    ck_deadline *d = NULL;
    if (ck_started) {
        PyErr_SetString(PyExc_RuntimeError, "a shutdown deadline is already watching");
    } else if (!(seconds >= 0 && seconds <= 1e9)) {
        PyErr_SetString(PyExc_ValueError, "seconds must be in [0, 1e9]");
    } else if (triggers.len > CK_MAX_TRIGGERS) {
        PyErr_SetString(PyExc_ValueError, "too many triggers");
    } else if ((d = calloc(1, sizeof *d)) == NULL || (d->text = malloc(text.len + 1)) == NULL) {
        PyErr_NoMemory();
    } else {
        d->wakeup_fd = wakeup_fd;
        d->output_fd = output_fd;
        d->seconds = seconds;
        d->exit_code = exit_code;
        memcpy(d->triggers, triggers.buf, (size_t)triggers.len);
        d->trigger_count = (size_t)triggers.len;
        memcpy(d->text, text.buf, (size_t)text.len);
        d->text_len = (size_t)text.len;
        int failed = ck_start_thread(ck_watch, d);
        if (failed) {
            errno = failed;
            PyErr_SetFromErrno(PyExc_OSError);
        } else {
            ck_started = 1;
            d = NULL; /* the thread owns it for the rest of the process */
            outcome = Py_NewRef(Py_None);
        }
    }
    if (d != NULL) free(d->text);
    free(d);
    PyBuffer_Release(&triggers);
    PyBuffer_Release(&text);
    return outcome;
}

static PyMethodDef ck_methods[] = {
    {"watch", (PyCFunction)(void (*)(void))ck_py_watch, METH_VARARGS | METH_KEYWORDS,
     "watch(wakeup_fd, seconds, triggers, output_fd, last_lines, exit_code)\n"
     "Start the deadline's thread: once a byte of `triggers` is read from wakeup_fd, write\n"
     "last_lines (NOW markers stamped) to output_fd `seconds` later and end the process with\n"
     "exit_code. Once per process."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef ck_module = {
    PyModuleDef_HEAD_INIT, "_deadline",
    "The shutdown deadline, in a thread that needs no GIL (service/lifecycle/_deadline.c).", -1,
    ck_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__deadline(void) {
    PyObject *module = PyModule_Create(&ck_module);
    if (module == NULL) return NULL;
    if (PyModule_AddStringConstant(module, "NOW", CK_NOW) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
