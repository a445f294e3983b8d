/*
 * shmkit._access: the page-access loops of the live side.
 *
 * Why C: a touch must (1) make exactly one CPU access per page and nothing
 * else, so that the step's fault count is the kernel's answer to those
 * accesses alone (a Python loop allocates objects, and a fresh heap page or a
 * copy-on-write of an interpreter page would be counted too); (2) bracket the
 * loop with getrusage() without any code in between; (3) survive the SIGBUS
 * or SIGSEGV that an access past the end of a file or against the protection
 * raises, and report it as the step's result. Python cannot recover from a
 * synchronous SIGSEGV; sigsetjmp/siglongjmp from a handler running on a
 * pre-faulted alternate stack can, without adding a fault of its own.
 *
 * Fault accounting follows mm/memory.c:mm_account_fault(): a fault that
 * ends in VM_FAULT_SIGBUS/SIGSEGV is not counted in min_flt/maj_flt, and a
 * SIGSEGV from arch/x86/mm/fault.c:bad_area() never reaches handle_mm_fault.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <setjmp.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>

#define ALTSTACK_SIZE (256 * 1024)

static char altstack[ALTSTACK_SIZE] __attribute__((aligned(4096)));
static sigjmp_buf jump_env;
static volatile sig_atomic_t caught_signal;
static volatile void *caught_addr;

static void on_fault(int sig, siginfo_t *info, void *ctx)
{
    (void)ctx;
    caught_signal = sig;
    caught_addr = info ? info->si_addr : NULL;
    siglongjmp(jump_env, 1);
}

typedef struct {
    struct sigaction old_bus, old_segv;
    stack_t old_stack;
} guard_t;

static void guard_install(guard_t *g)
{
    struct sigaction sa;
    stack_t ss;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    ss.ss_sp = altstack;
    ss.ss_size = sizeof altstack;
    ss.ss_flags = 0;
    sigaltstack(&ss, &g->old_stack);
    sigaction(SIGBUS, &sa, &g->old_bus);
    sigaction(SIGSEGV, &sa, &g->old_segv);
}

static void guard_remove(guard_t *g)
{
    sigaction(SIGBUS, &g->old_bus, NULL);
    sigaction(SIGSEGV, &g->old_segv, NULL);
    sigaltstack(&g->old_stack, NULL);
}

/* One loop for touch (write or read) and read (record first bytes).
 * mode 0: read-touch, 1: write value, 2: read first byte into out[]. */
static PyObject *access_loop(unsigned long addr, long npages, long page_size,
                             int mode, int value, unsigned char *out)
{
    struct rusage r0, r1;
    volatile long i = 0;
    volatile unsigned char sink = 0;
    int signo = 0;
    unsigned long fault_addr = 0;
    guard_t g;

    caught_signal = 0;
    guard_install(&g);
    getrusage(RUSAGE_SELF, &r0);
    if (sigsetjmp(jump_env, 1) != 0) {
        signo = caught_signal;
        fault_addr = (unsigned long)caught_addr;
    } else {
        for (; i < npages; i++) {
            volatile unsigned char *p =
                (volatile unsigned char *)(addr + (unsigned long)i * (unsigned long)page_size);
            if (mode == 1)
                *p = (unsigned char)value;
            else if (mode == 2)
                out[i] = *p;
            else
                sink = *p;
        }
    }
    getrusage(RUSAGE_SELF, &r1);
    guard_remove(&g);
    (void)sink;
    return Py_BuildValue("(lillk)", (long)i, signo,
                         (long)(r1.ru_minflt - r0.ru_minflt),
                         (long)(r1.ru_majflt - r0.ru_majflt), fault_addr);
}

PyDoc_STRVAR(touch_doc,
"touch(addr, npages, page_size, write, value) -> (done, signo, minflt, majflt, fault_addr)\n\n"
"One access per page at the first byte of each page, in order. Stops at the\n"
"first SIGBUS/SIGSEGV: done is the number of pages accessed before it.");

static PyObject *py_touch(PyObject *self, PyObject *args)
{
    unsigned long addr;
    long npages, page_size;
    int write, value;
    if (!PyArg_ParseTuple(args, "kllpi", &addr, &npages, &page_size, &write, &value))
        return NULL;
    return access_loop(addr, npages, page_size, write ? 1 : 0, value, NULL);
}

PyDoc_STRVAR(read_doc,
"read(addr, npages, page_size, out) -> (done, signo, minflt, majflt, fault_addr)\n\n"
"Reads the first byte of each page into the writable buffer out (len >= npages).");

static PyObject *py_read(PyObject *self, PyObject *args)
{
    unsigned long addr;
    long npages, page_size;
    Py_buffer buf;
    PyObject *res;
    if (!PyArg_ParseTuple(args, "kllw*", &addr, &npages, &page_size, &buf))
        return NULL;
    if (buf.len < npages) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "out buffer shorter than npages");
        return NULL;
    }
    res = access_loop(addr, npages, page_size, 2, 0, (unsigned char *)buf.buf);
    PyBuffer_Release(&buf);
    return res;
}

PyDoc_STRVAR(rewrite_doc,
"rewrite(addr, length, page_size, write=True) -> pages\n\n"
"Reads and (if write) writes back one byte of every page of [addr, addr+length):\n"
"after a fork this breaks copy-on-write sharing of the interpreter's own pages,\n"
"and maps again in the child the file pages fork did not copy (mm/memory.c:\n"
"copy_page_range() skips VMAs without an anon_vma), so that later steps count\n"
"only the experiment's faults. Pages that fault fatally are skipped.");

static PyObject *py_rewrite(PyObject *self, PyObject *args)
{
    unsigned long addr, length;
    long page_size;
    int write = 1;
    volatile unsigned long off = 0;
    volatile long done = 0;
    guard_t g;
    if (!PyArg_ParseTuple(args, "kkl|p", &addr, &length, &page_size, &write))
        return NULL;
    guard_install(&g);
    for (off = 0; off < length; off += (unsigned long)page_size) {
        if (sigsetjmp(jump_env, 1) != 0)
            continue; /* the page could not be accessed: leave it */
        volatile unsigned char *p = (volatile unsigned char *)(addr + off);
        unsigned char v = *p;
        if (write)
            *p = v;
        done++;
    }
    guard_remove(&g);
    return PyLong_FromLong(done);
}

PyDoc_STRVAR(faults_doc, "faults() -> (minflt, majflt) of this process (getrusage RUSAGE_SELF).");

static PyObject *py_faults(PyObject *self, PyObject *unused)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return Py_BuildValue("(ll)", (long)r.ru_minflt, (long)r.ru_majflt);
}

static PyMethodDef methods[] = {
    {"touch", py_touch, METH_VARARGS, touch_doc},
    {"read", py_read, METH_VARARGS, read_doc},
    {"rewrite", py_rewrite, METH_VARARGS, rewrite_doc},
    {"faults", py_faults, METH_NOARGS, faults_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "shmkit._access",
    "Exact page-access loops for the live side (see _access.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__access(void)
{
    /* Fault the alternate signal stack in now, so that delivering a signal
     * during a measured loop adds no fault of its own. */
    memset(altstack, 0, sizeof altstack);
    return PyModule_Create(&moduledef);
}
