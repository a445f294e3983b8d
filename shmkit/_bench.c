/*
 * shmkit._bench: the hot loops of `shmkit bench` (docs/bench.md).
 *
 * Why C: a Python loop costs about a microsecond per iteration and allocates;
 * the benchmark measures transports whose hand-off costs well under a
 * microsecond and whose copies run at tens of GB/s. Every measured loop here
 * runs with the GIL released, allocates nothing, brackets itself with
 * getrusage() (minor/major faults of this process during the loop only) and
 * CLOCK_MONOTONIC (comparable between the two processes of a pair).
 *
 * A transport moves messages over one or two channels (channel 0: role 0 to
 * role 1; channel 1: role 1 back to role 0, used by ping-pong). A channel is a
 * data path (kind) and a synchronisation method (sync), two separate factors:
 *
 *   kind  RING        slots in shared memory mapped by both (warm: mapped once)
 *         STREAM      write()/read() of a pipe or a socket (the fd synchronises)
 *         FILE        pwrite() by one, pread() by the other (page cache)
 *         COLD_POSIX  per message: shm_open+ftruncate+mmap+write+munmap, the
 *                     peer shm_open+mmap+shm_unlink+read+munmap
 *         COLD_SYSV   per message: shmget+shmat+write+shmdt, the peer
 *                     shmat+IPC_RMID+read+shmdt
 *         COLD_MEMFD  per message: memfd_create+ftruncate+mmap+write+munmap,
 *                     the fd passed with SCM_RIGHTS, the peer mmap+read+munmap
 *         COLD_FILE   per message: a new disk file, open+ftruncate+mmap+write+
 *                     munmap, the peer open+mmap+unlink+read+munmap
 *   sync  SPIN        counters in shared memory (acquire/release), pause-spin
 *         SEM         two POSIX semaphores in shared memory (futex)
 *         EVENTFD     two eventfds (counter mode: one read collects many posts)
 *         PIPE        two pipes, one byte per post
 *
 * Every message carries a sequence stamp in its first and last 8 bytes; the
 * consumer checks both (after copy-out, or in place, where it also sums the
 * whole message), so a broken hand-off shows as errors, not as speed.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <semaphore.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield" ::: "memory")
#else
#define CPU_RELAX() __asm__ __volatile__("" ::: "memory")
#endif

enum { K_RING, K_STREAM, K_FILE, K_COLD_POSIX, K_COLD_SYSV, K_COLD_MEMFD, K_COLD_FILE };
enum { S_NONE, S_SPIN, S_SEM, S_EVENTFD, S_PIPE };

/* Control block layout (an anonymous shared mapping made before fork). */
#define CB_BARRIER 0
#define CB_HEAD(c) (256 + (c) * 512)
#define CB_TAIL(c) (256 + (c) * 512 + 256)
#define CB_SEM_FULL(c) (2048 + (c) * 256)
#define CB_SEM_EMPTY(c) (2048 + (c) * 256 + 128)
#define CB_IDS(c) (4096 + (c) * 4096)
#define CB_SIZE 16384
#define MAX_SLOTS 512

/* Per-process state of each channel that lives across run() calls: the
 * message number (slot choice, stamps) and the posts already collected. */
static uint64_t msgno[2];
static uint64_t avail_full[2], avail_empty[2];

typedef struct {
    int c, kind, sync, slots, inplace;
    size_t size, slot_size;
    size_t msg_size, chunk;     /* a message goes as ceil(msg_size / chunk) slots (ring, file) */
    char *ring;
    int fd;
    off_t foff;
    uint64_t *head, *tail;
    sem_t *full, *empty;
    int full_r, full_w, empty_r, empty_w;
    long *ids;
    const char *name;
    long spin_limit;
    /* results */
    unsigned long send_addr, recv_addr;
    uint64_t sum;
    long errors;
    int err;
} chan_t;

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t spin_until_ge(uint64_t *p, uint64_t v, long limit)
{
    long k = 0;
    uint64_t x;
    while ((x = __atomic_load_n(p, __ATOMIC_ACQUIRE)) < v) {
        CPU_RELAX();
        if (++k > limit)
            sched_yield();
    }
    return x;
}

__attribute__((target_clones("avx2", "default")))
static uint64_t checksum(const void *p, size_t n)
{
    const uint64_t *w = (const uint64_t *)p;
    size_t k = n / 8, i;
    uint64_t a = 0, b = 0, c = 0, d = 0, e = 0, f = 0, g = 0, h = 0;
    for (i = 0; i + 8 <= k; i += 8) {
        a += w[i]; b += w[i + 1]; c += w[i + 2]; d += w[i + 3];
        e += w[i + 4]; f += w[i + 5]; g += w[i + 6]; h += w[i + 7];
    }
    for (; i < k; i++)
        a += w[i];
    return a + b + c + d + e + f + g + h;
}

/* How the producer writes a slot (pstore): 0 memcpy; 1 memcpy, then CLDEMOTE of every line
 * (a hint to push the lines out of this core's private caches to the shared L3, where the
 * consumer's core finds them without a cross-core snoop); 2 non-temporal stores. */
static int pstore_mode;

static inline void demote(const char *p, size_t n)
{
#if defined(__x86_64__)
    size_t i;
    for (i = 0; i < n; i += 64)
        __asm__ __volatile__("cldemote %0" ::"m"(*(const volatile char *)(p + i)));
#else
    (void)p; (void)n;
#endif
}

#if defined(__x86_64__)
__attribute__((target("avx2")))
static void copy_nt(char *dst, const char *src, size_t n)
{
    size_t i = 0;
    if (((uintptr_t)dst & 31) == 0) {
        for (; i + 128 <= n; i += 128) {
            __m256i a = _mm256_loadu_si256((const __m256i *)(src + i));
            __m256i b = _mm256_loadu_si256((const __m256i *)(src + i + 32));
            __m256i c = _mm256_loadu_si256((const __m256i *)(src + i + 64));
            __m256i d = _mm256_loadu_si256((const __m256i *)(src + i + 96));
            _mm256_stream_si256((__m256i *)(dst + i), a);
            _mm256_stream_si256((__m256i *)(dst + i + 32), b);
            _mm256_stream_si256((__m256i *)(dst + i + 64), c);
            _mm256_stream_si256((__m256i *)(dst + i + 96), d);
        }
        _mm_sfence();
    }
    memcpy(dst + i, src + i, n - i);
}
#else
static void copy_nt(char *dst, const char *src, size_t n) { memcpy(dst, src, n); }
#endif

static inline void produce(char *p, const char *src, size_t n)
{
    if (pstore_mode == 2)
        copy_nt(p, src, n);
    else
        memcpy(p, src, n);
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t r = write(fd, p, n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int read_all(int fd, char *p, size_t n)
{
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (r == 0)
            return EPIPE;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int pwrite_all(int fd, const char *p, size_t n, off_t off)
{
    while (n) {
        ssize_t r = pwrite(fd, p, n, off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        p += r;
        n -= (size_t)r;
        off += r;
    }
    return 0;
}

static int pread_all(int fd, char *p, size_t n, off_t off)
{
    while (n) {
        ssize_t r = pread(fd, p, n, off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (r == 0)
            return EIO;
        p += r;
        n -= (size_t)r;
        off += r;
    }
    return 0;
}

/* ----- synchronisation ------------------------------------------------------------------ */

static int wait_count(int fd, int sync, uint64_t *avail)
{
    if (*avail == 0) {
        if (sync == S_EVENTFD) {
            uint64_t v;
            for (;;) {
                ssize_t r = read(fd, &v, 8);
                if (r == 8)
                    break;
                if (r < 0 && errno == EINTR)
                    continue;
                return r < 0 ? errno : EIO;
            }
            *avail += v;
        } else {
            char buf[MAX_SLOTS];
            ssize_t r;
            for (;;) {
                r = read(fd, buf, sizeof buf);
                if (r > 0)
                    break;
                if (r < 0 && errno == EINTR)
                    continue;
                return r < 0 ? errno : EPIPE;
            }
            *avail += (uint64_t)r;
        }
    }
    (*avail)--;
    return 0;
}

static int post_count(int fd, int sync)
{
    if (sync == S_EVENTFD) {
        uint64_t one = 1;
        return write(fd, &one, 8) == 8 ? 0 : errno;
    }
    return write(fd, "x", 1) == 1 ? 0 : errno;
}

static int sem_wait_retry(sem_t *s)
{
    while (sem_wait(s) != 0) {
        if (errno != EINTR)
            return errno;
    }
    return 0;
}

/* producer: a slot is free */
static int wait_empty(chan_t *ch, uint64_t m)
{
    switch (ch->sync) {
    case S_SPIN:
        if (m + 1 > (uint64_t)ch->slots)
            spin_until_ge(ch->tail, m + 1 - (uint64_t)ch->slots, ch->spin_limit);
        return 0;
    case S_SEM:
        return sem_wait_retry(ch->empty);
    case S_EVENTFD:
    case S_PIPE:
        return wait_count(ch->empty_r, ch->sync, &avail_empty[ch->c]);
    }
    return 0;
}

static int post_full(chan_t *ch, uint64_t m)
{
    switch (ch->sync) {
    case S_SPIN:
        __atomic_store_n(ch->head, m + 1, __ATOMIC_RELEASE);
        return 0;
    case S_SEM:
        return sem_post(ch->full) == 0 ? 0 : errno;
    case S_EVENTFD:
    case S_PIPE:
        return post_count(ch->full_w, ch->sync);
    }
    return 0;
}

static int wait_full(chan_t *ch, uint64_t m)
{
    switch (ch->sync) {
    case S_SPIN:
        spin_until_ge(ch->head, m + 1, ch->spin_limit);
        return 0;
    case S_SEM:
        return sem_wait_retry(ch->full);
    case S_EVENTFD:
    case S_PIPE:
        return wait_count(ch->full_r, ch->sync, &avail_full[ch->c]);
    }
    return 0;
}

static int post_empty(chan_t *ch, uint64_t m)
{
    switch (ch->sync) {
    case S_SPIN:
        __atomic_store_n(ch->tail, m + 1, __ATOMIC_RELEASE);
        return 0;
    case S_SEM:
        return sem_post(ch->empty) == 0 ? 0 : errno;
    case S_EVENTFD:
    case S_PIPE:
        return post_count(ch->empty_w, ch->sync);
    }
    return 0;
}

/* ----- messages --------------------------------------------------------------------------- */

static inline uint64_t stamp_of(chan_t *ch, uint64_t m)
{
    return ((uint64_t)(ch->c + 1) << 56) | (m + 1);
}

static inline void stamp(char *p, size_t n, uint64_t s)
{
    memcpy(p, &s, 8);
    memcpy(p + n - 8, &s, 8);
}

static inline void check(chan_t *ch, const char *p, size_t n, uint64_t s)
{
    uint64_t a, b;
    memcpy(&a, p, 8);
    memcpy(&b, p + n - 8, 8);
    if (a != s || b != s)
        ch->errors++;
}

static void slot_name(chan_t *ch, char *out, size_t outlen, int slot)
{
    snprintf(out, outlen, "%s%d-%d", ch->name, ch->c, slot);
}

/* The consumer's work on the bytes at p: copy out to dst, or read in place. */
static inline void consume(chan_t *ch, const char *p, char *dst, uint64_t s)
{
    if (ch->inplace) {
        ch->sum += checksum(p, ch->size);
        check(ch, p, ch->size, s);
    } else {
        memcpy(dst, p, ch->size);
        check(ch, dst, ch->size, s);
    }
}

static int send_fd(int sock, int fd)
{
    struct msghdr msg;
    struct iovec iov;
    char byte = 'm';
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
    struct cmsghdr *cm;
    memset(&msg, 0, sizeof msg);
    memset(&u, 0, sizeof u);
    iov.iov_base = &byte;
    iov.iov_len = 1;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = u.buf;
    msg.msg_controllen = sizeof u.buf;
    cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    for (;;) {
        if (sendmsg(sock, &msg, 0) == 1)
            return 0;
        if (errno != EINTR)
            return errno;
    }
}

static int recv_fd(int sock, int *fd)
{
    struct msghdr msg;
    struct iovec iov;
    char byte;
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
    struct cmsghdr *cm;
    ssize_t r;
    memset(&msg, 0, sizeof msg);
    iov.iov_base = &byte;
    iov.iov_len = 1;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = u.buf;
    msg.msg_controllen = sizeof u.buf;
    for (;;) {
        r = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
        if (r >= 0 || errno != EINTR)
            break;
    }
    if (r != 1)
        return r < 0 ? errno : EPIPE;
    cm = CMSG_FIRSTHDR(&msg);
    if (!cm || cm->cmsg_type != SCM_RIGHTS)
        return EPROTO;
    memcpy(fd, CMSG_DATA(cm), sizeof(int));
    return 0;
}

static int do_send(chan_t *ch, const char *src)
{
    uint64_t m = msgno[ch->c];
    int slot = (int)(m % (uint64_t)ch->slots);
    uint64_t s = stamp_of(ch, m);
    size_t n = ch->size;
    char name[320];
    char *p;
    int fd, e = 0;

    if (ch->kind == K_STREAM) {
        stamp((char *)src, n, s);
        e = write_all(ch->fd, src, n);
        msgno[ch->c] = m + 1;
        return e;
    }
    if ((e = wait_empty(ch, m)))
        return e;
    switch (ch->kind) {
    case K_RING:
        p = ch->ring + (size_t)slot * ch->slot_size;
        produce(p, src, n);
        stamp(p, n, s);
        if (pstore_mode == 1)
            demote(p, n);
        break;
    case K_FILE:
        stamp((char *)src, n, s);
        e = pwrite_all(ch->fd, src, n, ch->foff + (off_t)slot * (off_t)ch->slot_size);
        break;
    case K_COLD_POSIX:
    case K_COLD_MEMFD:
    case K_COLD_FILE:
        slot_name(ch, name, sizeof name, slot);
        if (ch->kind == K_COLD_POSIX)
            fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        else if (ch->kind == K_COLD_MEMFD)
            fd = memfd_create(name, MFD_CLOEXEC);
        else
            fd = open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
            return errno;
        if (ftruncate(fd, (off_t)n) != 0) {
            e = errno;
            close(fd);
            return e;
        }
        p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            e = errno;
            close(fd);
            return e;
        }
        ch->send_addr = (unsigned long)p;
        memcpy(p, src, n);
        stamp(p, n, s);
        munmap(p, n);
        if (ch->kind == K_COLD_MEMFD)
            e = send_fd(ch->fd, fd);
        close(fd);
        if (e)
            return e;
        break;
    case K_COLD_SYSV: {
        int id = shmget(IPC_PRIVATE, n, IPC_CREAT | 0600);
        if (id < 0)
            return errno;
        p = shmat(id, NULL, 0);
        if (p == (void *)-1) {
            e = errno;
            shmctl(id, IPC_RMID, NULL);
            return e;
        }
        ch->send_addr = (unsigned long)p;
        memcpy(p, src, n);
        stamp(p, n, s);
        shmdt(p);
        __atomic_store_n(&ch->ids[slot], (long)id, __ATOMIC_RELEASE);
        break;
    }
    }
    if (e)
        return e;
    msgno[ch->c] = m + 1;
    return post_full(ch, m);
}

static int do_recv(chan_t *ch, char *dst)
{
    uint64_t m = msgno[ch->c];
    int slot = (int)(m % (uint64_t)ch->slots);
    uint64_t s = stamp_of(ch, m);
    size_t n = ch->size;
    char name[320];
    char *p;
    int fd = -1, e = 0;

    if (ch->kind == K_STREAM) {
        e = read_all(ch->fd, dst, n);
        if (!e) {
            check(ch, dst, n, s);
            if (ch->inplace)
                ch->sum += checksum(dst, n);
        }
        msgno[ch->c] = m + 1;
        return e;
    }
    if ((e = wait_full(ch, m)))
        return e;
    switch (ch->kind) {
    case K_RING:
        consume(ch, ch->ring + (size_t)slot * ch->slot_size, dst, s);
        break;
    case K_FILE:
        e = pread_all(ch->fd, dst, n, ch->foff + (off_t)slot * (off_t)ch->slot_size);
        if (!e) {
            check(ch, dst, n, s);
            if (ch->inplace)
                ch->sum += checksum(dst, n);
        }
        break;
    case K_COLD_POSIX:
    case K_COLD_MEMFD:
    case K_COLD_FILE:
        slot_name(ch, name, sizeof name, slot);
        if (ch->kind == K_COLD_POSIX)
            fd = shm_open(name, O_RDONLY | O_CLOEXEC, 0);
        else if (ch->kind == K_COLD_MEMFD)
            e = recv_fd(ch->fd, &fd);
        else
            fd = open(name, O_RDONLY | O_CLOEXEC);
        if (e)
            return e;
        if (fd < 0)
            return errno;
        p = mmap(NULL, n, PROT_READ, MAP_SHARED, fd, 0);
        e = p == MAP_FAILED ? errno : 0;
        close(fd);
        if (ch->kind == K_COLD_POSIX)
            shm_unlink(name);
        else if (ch->kind == K_COLD_FILE)
            unlink(name);
        if (e)
            return e;
        ch->recv_addr = (unsigned long)p;
        consume(ch, p, dst, s);
        munmap(p, n);
        break;
    case K_COLD_SYSV: {
        int id = (int)__atomic_load_n(&ch->ids[slot], __ATOMIC_ACQUIRE);
        p = shmat(id, NULL, SHM_RDONLY);
        e = p == (void *)-1 ? errno : 0;
        shmctl(id, IPC_RMID, NULL);
        if (e)
            return e;
        ch->recv_addr = (unsigned long)p;
        consume(ch, p, dst, s);
        shmdt(p);
        break;
    }
    }
    if (e)
        return e;
    msgno[ch->c] = m + 1;
    return post_empty(ch, m);
}

/* A message of msg_size bytes, in pieces of `chunk` bytes when the ring's slots are smaller
 * than the message (each piece is handed off, stamped and checked on its own). */
static int send_msg(chan_t *ch, const char *src)
{
    size_t off;
    int e = 0;
    if (!ch->chunk || ch->chunk >= ch->msg_size) {
        ch->size = ch->msg_size;
        return do_send(ch, src);
    }
    for (off = 0; off < ch->msg_size && !e; off += ch->chunk) {
        size_t n = ch->msg_size - off;
        ch->size = n > ch->chunk ? ch->chunk : n;
        e = do_send(ch, src + off);
    }
    ch->size = ch->msg_size;
    return e;
}

static int recv_msg(chan_t *ch, char *dst)
{
    size_t off;
    int e = 0;
    if (!ch->chunk || ch->chunk >= ch->msg_size) {
        ch->size = ch->msg_size;
        return do_recv(ch, dst);
    }
    for (off = 0; off < ch->msg_size && !e; off += ch->chunk) {
        size_t n = ch->msg_size - off;
        ch->size = n > ch->chunk ? ch->chunk : n;
        e = do_recv(ch, dst + off);
    }
    ch->size = ch->msg_size;
    return e;
}

/* ----- Python entry points ---------------------------------------------------------------- */

static void *as_ptr(unsigned long long a) { return (void *)(uintptr_t)a; }

static void barrier_wait(char *cb, uint64_t epoch)
{
    uint64_t *b = (uint64_t *)(cb + CB_BARRIER);
    __atomic_fetch_add(b, 1, __ATOMIC_ACQ_REL);
    spin_until_ge(b, 2 * epoch, 4096);
}

static PyObject *py_run(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"role", "pattern", "n", "size", "cb", "epoch", "kind", "sync",
                             "data0", "data1", "slots", "slot_size", "fd0", "fd1", "foff1",
                             "sfd", "name", "inplace", "src", "dst", "spin_limit", "pstore", NULL};
    int role, pattern, kind, sync, slots, fd0 = -1, fd1 = -1, inplace = 0;
    long long n;
    Py_ssize_t size, slot_size;
    unsigned long long cb, epoch, data0 = 0, data1 = 0, src, dst;
    long long foff1 = 0;
    long spin_limit = 20000;
    int sfd[8] = {-1, -1, -1, -1, -1, -1, -1, -1};
    PyObject *sfd_obj = NULL;
    const char *name = "";
    chan_t ch[2];
    struct rusage r0, r1;
    uint64_t t0, t1;
    int e = 0, i;
    long long k;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "iiLnKKiiKKinii|LOsiKKli", kwlist, &role, &pattern, &n,
                                     &size, &cb, &epoch, &kind, &sync, &data0, &data1, &slots,
                                     &slot_size, &fd0, &fd1, &foff1, &sfd_obj, &name, &inplace,
                                     &src, &dst, &spin_limit, &pstore_mode))
        return NULL;
    if (size < 16 || slots < 1 || slots > MAX_SLOTS || slot_size < 16 || (size % slot_size && size % slot_size < 16)
        || ((size_t)slot_size < (size_t)size && kind != K_RING && kind != K_FILE)) {
        PyErr_SetString(PyExc_ValueError, "size >= 16, 1 <= slots <= 512, slot_size >= size (or a chunk "
                        ">= 16 bytes for ring and file)");
        return NULL;
    }
    if (sfd_obj && sfd_obj != Py_None) {
        if (!PyArg_ParseTuple(sfd_obj, "iiiiiiii", &sfd[0], &sfd[1], &sfd[2], &sfd[3], &sfd[4],
                              &sfd[5], &sfd[6], &sfd[7]))
            return NULL;
    }
    if (!src || !dst) {
        PyErr_SetString(PyExc_ValueError, "src and dst buffers are required");
        return NULL;
    }
    for (i = 0; i < 2; i++) {
        chan_t *c = &ch[i];
        memset(c, 0, sizeof *c);
        c->c = i;
        c->kind = kind;
        c->sync = kind == K_STREAM ? S_NONE : sync;
        c->slots = slots;
        c->inplace = inplace;
        c->size = c->msg_size = (size_t)size;
        c->slot_size = (size_t)slot_size;
        c->chunk = (size_t)slot_size < (size_t)size ? (size_t)slot_size : 0;
        c->ring = as_ptr(i ? data1 : data0);
        c->fd = i ? fd1 : fd0;
        c->foff = i ? (off_t)foff1 : 0;
        c->head = (uint64_t *)((char *)as_ptr(cb) + CB_HEAD(i));
        c->tail = (uint64_t *)((char *)as_ptr(cb) + CB_TAIL(i));
        c->full = (sem_t *)((char *)as_ptr(cb) + CB_SEM_FULL(i));
        c->empty = (sem_t *)((char *)as_ptr(cb) + CB_SEM_EMPTY(i));
        c->full_r = sfd[4 * i];
        c->full_w = sfd[4 * i + 1];
        c->empty_r = sfd[4 * i + 2];
        c->empty_w = sfd[4 * i + 3];
        c->ids = (long *)((char *)as_ptr(cb) + CB_IDS(i));
        c->name = name;
        c->spin_limit = spin_limit;
    }
    Py_BEGIN_ALLOW_THREADS
    barrier_wait(as_ptr(cb), epoch);
    getrusage(RUSAGE_SELF, &r0);
    t0 = now_ns();
    for (k = 0; k < n && !e; k++) {
        if (pattern == 0) {
            e = role == 0 ? send_msg(&ch[0], as_ptr(src)) : recv_msg(&ch[0], as_ptr(dst));
        } else if (role == 0) {
            e = send_msg(&ch[0], as_ptr(src));
            if (!e)
                e = recv_msg(&ch[1], as_ptr(dst));
        } else {
            e = recv_msg(&ch[0], as_ptr(dst));
            if (!e)
                e = send_msg(&ch[1], as_ptr(src));
        }
    }
    t1 = now_ns();
    getrusage(RUSAGE_SELF, &r1);
    Py_END_ALLOW_THREADS
    if (e) {
        errno = e;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("{s:K,s:K,s:l,s:l,s:l,s:K,s:k,s:k}", "t0", (unsigned long long)t0,
                         "t1", (unsigned long long)t1, "minflt", r1.ru_minflt - r0.ru_minflt,
                         "majflt", r1.ru_majflt - r0.ru_majflt, "errors", ch[0].errors + ch[1].errors,
                         "checksum", (unsigned long long)(ch[0].sum + ch[1].sum),
                         "send_addr", ch[0].send_addr ? ch[0].send_addr : ch[1].send_addr,
                         "recv_addr", ch[0].recv_addr ? ch[0].recv_addr : ch[1].recv_addr);
}

static PyObject *py_memcpy_loop(PyObject *self, PyObject *args)
{
    unsigned long long dst, src, cb = 0, epoch = 0;
    Py_ssize_t size;
    long long n, k;
    struct rusage r0, r1;
    uint64_t t0, t1;
    if (!PyArg_ParseTuple(args, "KKnL|KK", &dst, &src, &size, &n, &cb, &epoch))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    if (cb)
        barrier_wait(as_ptr(cb), epoch);
    getrusage(RUSAGE_SELF, &r0);
    t0 = now_ns();
    for (k = 0; k < n; k++) {
        memcpy(as_ptr(dst), as_ptr(src), (size_t)size);
        __asm__ __volatile__("" ::: "memory");
    }
    t1 = now_ns();
    getrusage(RUSAGE_SELF, &r1);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("{s:K,s:K,s:l,s:l,s:l,s:K,s:k,s:k}", "t0", (unsigned long long)t0,
                         "t1", (unsigned long long)t1, "minflt", r1.ru_minflt - r0.ru_minflt,
                         "majflt", r1.ru_majflt - r0.ru_majflt, "errors", 0L, "checksum", 0ull,
                         "send_addr", 0ul, "recv_addr", 0ul);
}

static PyObject *py_barrier(PyObject *self, PyObject *args)
{
    unsigned long long cb, epoch;
    if (!PyArg_ParseTuple(args, "KK", &cb, &epoch))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    barrier_wait(as_ptr(cb), epoch);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_addr(PyObject *self, PyObject *obj)
{
    Py_buffer view;
    unsigned long long a;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) != 0)
        return NULL;
    a = (unsigned long long)(uintptr_t)view.buf;
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(a);
}

static PyObject *py_fill(PyObject *self, PyObject *args)
{
    unsigned long long a;
    Py_ssize_t n;
    int seed;
    if (!PyArg_ParseTuple(args, "Kni", &a, &n, &seed))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    {
        unsigned char *p = as_ptr(a);
        uint64_t x = 0x9E3779B97F4A7C15ull * (uint64_t)(seed + 1);
        Py_ssize_t i;
        for (i = 0; i + 8 <= n; i += 8) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            memcpy(p + i, &x, 8);
        }
        for (; i < n; i++)
            p[i] = (unsigned char)i;
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_touch_read(PyObject *self, PyObject *args)
{
    unsigned long long a;
    Py_ssize_t n, i;
    unsigned long long sum = 0;
    if (!PyArg_ParseTuple(args, "Kn", &a, &n))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    for (i = 0; i < n; i += 4096)
        sum += ((volatile unsigned char *)as_ptr(a))[i];
    Py_END_ALLOW_THREADS
    return PyLong_FromUnsignedLongLong(sum);
}

static PyObject *py_reset(PyObject *self, PyObject *noargs)
{
    memset(msgno, 0, sizeof msgno);
    memset(avail_full, 0, sizeof avail_full);
    memset(avail_empty, 0, sizeof avail_empty);
    Py_RETURN_NONE;
}

static PyObject *py_sem_init(PyObject *self, PyObject *args)
{
    unsigned long long a;
    unsigned int v;
    if (!PyArg_ParseTuple(args, "KI", &a, &v))
        return NULL;
    if (sem_init(as_ptr(a), 1, v) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *py_pin(PyObject *self, PyObject *args)
{
    int cpu;
    cpu_set_t set;
    if (!PyArg_ParseTuple(args, "i", &cpu))
        return NULL;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *py_pdeathsig(PyObject *self, PyObject *args)
{
    int sig;
    if (!PyArg_ParseTuple(args, "i", &sig))
        return NULL;
    if (prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *py_now(PyObject *self, PyObject *noargs)
{
    return PyLong_FromUnsignedLongLong(now_ns());
}

static PyMethodDef methods[] = {
    {"run", (PyCFunction)(void (*)(void))py_run, METH_VARARGS | METH_KEYWORDS,
     "run(role, pattern, n, size, cb, epoch, kind, sync, data0, data1, slots, slot_size, fd0, fd1, "
     "foff1=0, sfd=None, name='', inplace=0, src=0, dst=0, spin_limit=20000) -> dict: n messages "
     "(pattern 0) or round trips (pattern 1) with the GIL released"},
    {"memcpy_loop", py_memcpy_loop, METH_VARARGS, "memcpy_loop(dst, src, size, n[, cb, epoch]) -> dict"},
    {"barrier", py_barrier, METH_VARARGS, "barrier(cb, epoch): wait until both processes reach it"},
    {"addr", py_addr, METH_O, "addr(buffer) -> its address (the object must outlive its use)"},
    {"fill", py_fill, METH_VARARGS, "fill(addr, size, seed): write pseudo-random bytes"},
    {"touch_read", py_touch_read, METH_VARARGS, "touch_read(addr, size): read one byte per page"},
    {"reset", py_reset, METH_NOARGS, "reset(): forget message numbers and collected posts"},
    {"sem_init", py_sem_init, METH_VARARGS, "sem_init(addr, value): a process-shared semaphore"},
    {"pin", py_pin, METH_VARARGS, "pin(cpu): sched_setaffinity to one CPU"},
    {"pdeathsig", py_pdeathsig, METH_VARARGS, "pdeathsig(sig): PR_SET_PDEATHSIG"},
    {"now", py_now, METH_NOARGS, "now() -> CLOCK_MONOTONIC in ns"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "shmkit._bench", "Hot loops of shmkit bench (see _bench.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__bench(void)
{
    PyObject *m = PyModule_Create(&moduledef);
    if (!m)
        return NULL;
    PyModule_AddIntConstant(m, "CB_SIZE", CB_SIZE);
    PyModule_AddIntConstant(m, "CB_SEM_FULL0", CB_SEM_FULL(0));
    PyModule_AddIntConstant(m, "CB_SEM_EMPTY0", CB_SEM_EMPTY(0));
    PyModule_AddIntConstant(m, "CB_SEM_FULL1", CB_SEM_FULL(1));
    PyModule_AddIntConstant(m, "CB_SEM_EMPTY1", CB_SEM_EMPTY(1));
    PyModule_AddIntConstant(m, "MAX_SLOTS", MAX_SLOTS);
    PyModule_AddIntConstant(m, "SEM_SIZE", (long)sizeof(sem_t));
    return m;
}
