/* The fast engine's compiled lane: a closed-loop user's requests with no Python
 * frame between them.
 *
 * Why: with callback users (driven_users.py) a request still ran ~13 Python
 * functions in the agent (the connection's data_received and parser callbacks,
 * the pool, the user's record, the dead-man check, the next send), ~0.7 µs each
 * on this project's VMs: 1.7x wrk's CPU per request, where a bare uvloop Protocol
 * client with no measurement is 1.1-1.3x. Here the commonest heavy load runs in
 * C: a user that sends static requests again and again (a cycle: one request, the
 * steps of a sequence, or one period of a mix's picks, each with its own series and
 * timeout, all to one server) with no think time and nothing to check in the
 * replies beyond their status. The connection's `data_received` frames the reply,
 * records it and writes the cycle's next request.
 *
 * What makes that safe is that the lane only ever takes the easy case and hands
 * everything else back, unchanged, to the Python path that existed before it:
 *
 * - Replies: the lane accepts a reply only if its whole head came in one read
 *   and is in a strict subset of HTTP/1.1 (`parse_head`): "HTTP/1.1 NNN reason",
 *   status 200-599, well-formed header lines, one Content-Length (or none on a
 *   204/304), no Transfer-Encoding, Upgrade or Proxy-Connection, and Connection
 *   tokens it knows. Anything else, valid or not, is "bail": the bytes go to the
 *   connection's Python `_data_received` and llhttp judges them as it always did.
 *   So the lane can only differ from llhttp on heads it accepts, and
 *   tests/test_lane_head.py checks on thousands of generated and damaged heads
 *   that llhttp then agrees (status, keep-alive, where the message ends).
 * - Users: the lane sends the next request only while its `enabled` flag is set
 *   (cleared when the user stops or the run aborts), before `until` (the end of
 *   the recorder's interval, or the dead-man deadline if that is sooner), when
 *   no other request waits for a connection (the pool's `waiters`), and if the
 *   reply let the connection live. Otherwise the reply goes to the connection's
 *   `_lane_complete`, which completes it the Python way: the user records it,
 *   checks the stop, the interval and the dead-man switch, and sends on.
 *
 * - Checks: a series may come with what its checks accept (`checks`: every check of
 *   its step is a `status` or `latency_under` check, the commonest): the statuses,
 *   and a latency to stay under. A reply they accept counts the step's checks as
 *   passed; any other is handed back, and the user judges it as it judges every
 *   reply (it counts, and logs, the failure).
 *
 * What the lane records per series (arrivals, outcomes by class, bytes, checks passed,
 * one latency
 * per reply: in a closed loop with no think time the intended start is the send, so
 * latency and service time are equal and the send lag is 0) it keeps until the
 * recorder takes it (`take`) when it cuts the interval. Replies it hands back are
 * recorded by the user, into the same series.
 *
 * State it shares with Python lives in the connection's C fields (`nbytes`,
 * `deadline`, `served`, `keep`, read and written by fast_conn.py as attributes)
 * and in the lane's (`enabled`, `until`, `sent`, `pos`). When Python takes a
 * request back (`detach_lane`: a reply handed back, a failure, a timeout, a
 * cancel) the user is told when it was sent, its deadline and how many requests
 * the lane moved on by (`lane_detached`), so the Python path continues exactly
 * where the lane left.
 * Times are CLOCK_MONOTONIC seconds: time.perf_counter's and the loop's clock.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>
#include <time.h>

#define BAIL (-1)

static PyObject *str_data_received, *str_lane_complete;

static inline double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------------ */
/* The head parser: a strict subset of HTTP/1.1 replies, everything else BAIL. */

static inline int is_tchar(unsigned char c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* A field value's byte: visible ASCII, SP, HTAB, or obs-text. */
static inline int is_vchar(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

static int same_name(const char *p, Py_ssize_t n, const char *lower) {
    Py_ssize_t k = (Py_ssize_t)strlen(lower);
    if (n != k) return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 'A' && c <= 'Z') c = (unsigned char)(c + 32);
        if (c != (unsigned char)lower[i]) return 0;
    }
    return 1;
}

/* Connection's tokens: sets *close on "close"; BAIL on a token it does not know. */
static int connection_tokens(const char *v, Py_ssize_t n, int *close) {
    Py_ssize_t i = 0;
    while (i <= n) {
        Py_ssize_t start = i;
        while (i < n && v[i] != ',') i++;
        Py_ssize_t a = start, b = i;
        while (a < b && (v[a] == ' ' || v[a] == '\t')) a++;
        while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t')) b--;
        if (b > a) {
            if (same_name(v + a, b - a, "close"))
                *close = 1;
            else if (!same_name(v + a, b - a, "keep-alive"))
                return BAIL;
        }
        i++;
    }
    return 0;
}

/* The head at the start of buf[0:n]: its length, with *status, *body (the body's
 * length) and *keep (the connection may carry another request); or BAIL. */
static Py_ssize_t parse_head(const char *buf, Py_ssize_t n, int *status, long long *body, int *keep) {
    const unsigned char *b = (const unsigned char *)buf;
    if (n < 16 || memcmp(b, "HTTP/1.1 ", 9) != 0) return BAIL;
    for (int i = 9; i < 12; i++)
        if (b[i] < '0' || b[i] > '9') return BAIL;
    int code = (b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0');
    if (code < 200 || code > 599 || b[12] != ' ') return BAIL;
    Py_ssize_t i = 13;
    while (i < n && b[i] != '\r') {
        if (!is_vchar(b[i])) return BAIL;
        i++;
    }
    if (i + 1 >= n || b[i + 1] != '\n') return BAIL;
    i += 2;
    long long length = -1;
    int close = 0;
    for (;;) {
        if (i + 1 >= n) return BAIL;
        if (b[i] == '\r') {  /* the empty line that ends the head */
            if (b[i + 1] != '\n') return BAIL;
            i += 2;
            break;
        }
        Py_ssize_t name = i;
        while (i < n && is_tchar(b[i])) i++;
        if (i == name || i >= n || b[i] != ':') return BAIL;
        Py_ssize_t name_len = i - name;
        i++;
        while (i < n && (b[i] == ' ' || b[i] == '\t')) i++;
        Py_ssize_t value = i;
        while (i < n && b[i] != '\r') {
            if (!is_vchar(b[i])) return BAIL;
            i++;
        }
        if (i + 1 >= n || b[i + 1] != '\n') return BAIL;
        Py_ssize_t end = i;
        while (end > value && (b[end - 1] == ' ' || b[end - 1] == '\t')) end--;
        i += 2;
        const char *v = buf + value;
        Py_ssize_t v_len = end - value;
        const char *nm = buf + name;
        if (same_name(nm, name_len, "content-length")) {
            if (length >= 0 || v_len < 1 || v_len > 18) return BAIL;
            long long x = 0;
            for (Py_ssize_t k = 0; k < v_len; k++) {
                if (v[k] < '0' || v[k] > '9') return BAIL;
                x = x * 10 + (v[k] - '0');
            }
            length = x;
        } else if (same_name(nm, name_len, "connection")) {
            if (connection_tokens(v, v_len, &close) == BAIL) return BAIL;
        } else if (same_name(nm, name_len, "transfer-encoding") ||
                   same_name(nm, name_len, "upgrade") ||
                   same_name(nm, name_len, "proxy-connection")) { /* llhttp reads it too */
            return BAIL;
        }
    }
    if (code == 204 || code == 304) {
        if (length >= 0) return BAIL;
        length = 0;
    } else if (length < 0) {
        return BAIL;  /* a body that ends at EOF */
    }
    *status = code;
    *body = length;
    *keep = !close;
    return i;
}

/* ------------------------------------------------------------------------ */
/* Lane: one user's loop over a cycle of requests, and what it recorded since the
 * last `take`, per series (request name). */

#define STATUSES 600 /* a series' accepted statuses: a byte per status 0-599 */

typedef struct {
    long long arrivals, counts[4], bytes_in, checks_passed;
    double *seconds; /* one latency per reply */
    Py_ssize_t n, cap;
    unsigned char *accept; /* STATUSES bytes, or NULL: no checks, any reply goes on */
    long long checks;      /* the checks an accepted reply passes */
    double under;          /* and the latency it must stay under (seconds) */
} Record;

typedef struct {
    PyObject_HEAD
    PyObject *driver;  /* the user (an Exchange): told when Python takes a request back */
    PyObject *waiters; /* the client's queue of requests waiting for a connection */
    PyObject *phase;
    PyObject *names;   /* tuple of the series' names */
    PyObject *wires;   /* tuple of the cycle's requests (bytes) */
    Py_ssize_t length; /* of the cycle */
    Py_ssize_t *series; /* the cycle's requests' series */
    double *timeouts;   /* and their timeouts */
    Record *records;    /* per series */
    Py_ssize_t pos;      /* the cycle's request in flight */
    Py_ssize_t advanced; /* requests the lane moved on by since Python last took over */
    double until, sent;
    char enabled;
    long long sends; /* requests it sent, in all: how much of the load it carried */
} Lane;

static void lane_free_arrays(Lane *self) {
    if (self->records != NULL) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(self->names); i++) {
            PyMem_Free(self->records[i].seconds);
            PyMem_Free(self->records[i].accept);
        }
    }
    PyMem_Free(self->records);
    PyMem_Free(self->series);
    PyMem_Free(self->timeouts);
    self->records = NULL;
    self->series = NULL;
    self->timeouts = NULL;
}

/* A series' checks, from `checks` (name -> (accepted statuses, checks, latency to stay
 * under)), if it has any. */
static int series_checks(Record *r, PyObject *checks, PyObject *name) {
    if (checks == NULL || checks == Py_None) return 0;
    PyObject *item = PyDict_GetItemWithError(checks, name);
    if (item == NULL) return PyErr_Occurred() ? -1 : 0;
    PyObject *accept;
    long long n;
    if (!PyTuple_Check(item)) {
        PyErr_SetString(PyExc_TypeError,
                        "a series' checks are a tuple (accepted, count, under)");
        return -1;
    }
    double under;
    if (!PyArg_ParseTuple(item, "SLd", &accept, &n, &under)) return -1;
    if (PyBytes_GET_SIZE(accept) != STATUSES || n < 1 || !(under > 0)) {
        PyErr_SetString(PyExc_ValueError,
                        "a series' checks are (600 bytes, a count >= 1, seconds > 0)");
        return -1;
    }
    r->accept = PyMem_Malloc(STATUSES);
    if (r->accept == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(r->accept, PyBytes_AS_STRING(accept), STATUSES);
    r->checks = n;
    r->under = under;
    return 0;
}

/* Lane(driver, cycle, waiters, phase, checks=None): cycle is a sequence of (wire,
 * timeout, name); checks a dict of name -> (accepted statuses, checks, under). */
static int lane_init(Lane *self, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"driver", "cycle", "waiters", "phase", "checks", NULL};
    PyObject *driver, *cycle, *waiters, *phase, *checks = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOU|O", kw, &driver, &cycle, &waiters, &phase,
                                     &checks))
        return -1;
    if (checks != NULL && checks != Py_None && !PyDict_Check(checks)) {
        PyErr_SetString(PyExc_TypeError, "checks must be a dict or None");
        return -1;
    }
    if (self->wires != NULL) {
        PyErr_SetString(PyExc_TypeError, "a Lane is initialised once");
        return -1;
    }
    PyObject *items = PySequence_Tuple(cycle);
    if (items == NULL) return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    PyObject *wires = PyTuple_New(n);
    PyObject *names = PyList_New(0);
    self->series = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Py_ssize_t));
    self->timeouts = PyMem_Calloc(n ? (size_t)n : 1, sizeof(double));
    if (wires == NULL || names == NULL || self->series == NULL || self->timeouts == NULL) {
        if (wires != NULL && names != NULL) PyErr_NoMemory();
        goto fail;
    }
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError, "a lane's cycle has at least one request");
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *wire, *name;
        double timeout;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(items, i), "SdU", &wire, &timeout, &name))
            goto fail;
        Py_INCREF(wire);
        PyTuple_SET_ITEM(wires, i, wire);
        self->timeouts[i] = timeout;
        Py_ssize_t at = PySequence_Index(names, name);
        if (at < 0) {
            PyErr_Clear();
            at = PyList_GET_SIZE(names);
            if (PyList_Append(names, name) < 0) goto fail;
        }
        self->series[i] = at;
    }
    self->names = PyList_AsTuple(names);
    if (self->names == NULL) goto fail;
    self->records = PyMem_Calloc((size_t)PyTuple_GET_SIZE(self->names), sizeof(Record));
    if (self->records == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(self->names); i++)
        if (series_checks(&self->records[i], checks, PyTuple_GET_ITEM(self->names, i)) < 0)
            goto fail;
    Py_DECREF(items);
    Py_DECREF(names);
    self->wires = wires;
    self->length = n;
    Py_INCREF(driver);
    Py_INCREF(waiters);
    Py_INCREF(phase);
    self->driver = driver;
    self->waiters = waiters;
    self->phase = phase;
    return 0;

fail:
    Py_DECREF(items);
    Py_XDECREF(wires);
    Py_XDECREF(names);
    if (self->names != NULL) {
        lane_free_arrays(self);
        Py_CLEAR(self->names);
    } else {
        PyMem_Free(self->series);
        PyMem_Free(self->timeouts);
        self->series = NULL;
        self->timeouts = NULL;
    }
    return -1;
}

static int lane_traverse(Lane *self, visitproc visit, void *arg) {
    Py_VISIT(self->driver);
    Py_VISIT(self->waiters);
    return 0;
}

static int lane_clear(Lane *self) {
    Py_CLEAR(self->driver);
    Py_CLEAR(self->waiters);
    return 0;
}

static void lane_dealloc(Lane *self) {
    PyObject_GC_UnTrack(self);
    lane_clear(self);
    if (self->names != NULL) lane_free_arrays(self);
    Py_CLEAR(self->names);
    Py_CLEAR(self->wires);
    Py_CLEAR(self->phase);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int record_keep(Record *r, double seconds) {
    if (r->n == r->cap) {
        Py_ssize_t cap = r->cap ? r->cap * 2 : 1024;
        double *grown = PyMem_Realloc(r->seconds, (size_t)cap * sizeof(double));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        r->seconds = grown;
        r->cap = cap;
    }
    r->seconds[r->n++] = seconds;
    return 0;
}

static int lane_ready(Lane *self) {
    if (self->wires == NULL) {
        PyErr_SetString(PyExc_TypeError, "the Lane was not initialised");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(lane_take_doc,
"take() -> [(name, arrivals, (n2xx, n3xx, n4xx, n5xx), bytes_in, checks_passed,\n"
"latencies), ...]\n\n"
"What the lane recorded since the last take, per series that has anything\n"
"(latencies: float64 seconds, native order, one per reply); it starts over.");

static PyObject *lane_take(Lane *self, PyObject *unused) {
    if (lane_ready(self) < 0) return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(self->names); i++) {
        Record *r = &self->records[i];
        if (r->arrivals == 0 && r->n == 0) continue;
        PyObject *raw = PyBytes_FromStringAndSize((const char *)r->seconds,
                                                  r->n * (Py_ssize_t)sizeof(double));
        if (raw == NULL) goto fail;
        PyObject *item = Py_BuildValue("OL(LLLL)LLN", PyTuple_GET_ITEM(self->names, i),
                                       r->arrivals, r->counts[0], r->counts[1], r->counts[2],
                                       r->counts[3], r->bytes_in, r->checks_passed, raw);
        if (item == NULL) goto fail;
        int rc = PyList_Append(out, item);
        Py_DECREF(item);
        if (rc < 0) goto fail;
        r->arrivals = r->bytes_in = r->checks_passed = 0;
        memset(r->counts, 0, sizeof r->counts);
        r->n = 0;
        if (r->cap > 65536) { /* a burst does not keep its memory */
            PyMem_Free(r->seconds);
            r->seconds = NULL;
            r->cap = 0;
        }
    }
    return out;

fail:
    Py_DECREF(out);
    return NULL;
}

static PyObject *lane_get_pos(Lane *self, void *closure) { return PyLong_FromSsize_t(self->pos); }

static int lane_set_pos(Lane *self, PyObject *value, void *closure) {
    if (value == NULL || lane_ready(self) < 0) {
        if (value == NULL) PyErr_SetString(PyExc_TypeError, "pos cannot be deleted");
        return -1;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(value);
    if (pos == -1 && PyErr_Occurred()) return -1;
    if (pos < 0 || pos >= self->length) {
        PyErr_SetString(PyExc_ValueError, "pos is outside the cycle");
        return -1;
    }
    self->pos = pos;
    return 0;
}

static PyMethodDef lane_methods[] = {
    {"take", (PyCFunction)lane_take, METH_NOARGS, lane_take_doc},
    {NULL},
};

static PyMemberDef lane_members[] = {
    {"enabled", T_BOOL, offsetof(Lane, enabled), 0, "whether it may send the next request"},
    {"until", T_DOUBLE, offsetof(Lane, until), 0, "it sends nothing at or after this time"},
    {"sent", T_DOUBLE, offsetof(Lane, sent), 0, "when the request in flight was sent"},
    {"sends", T_LONGLONG, offsetof(Lane, sends), READONLY, "requests it sent, in all"},
    {"phase", T_OBJECT, offsetof(Lane, phase), READONLY, "the series' phase"},
    {"names", T_OBJECT, offsetof(Lane, names), READONLY, "the series' names"},
    {NULL},
};

static PyGetSetDef lane_getset[] = {
    {"pos", (getter)lane_get_pos, (setter)lane_set_pos,
     "the place in the cycle of the request in flight", NULL},
    {NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "loadctl.agent._lane.Lane",
    .tp_doc = PyDoc_STR("Lane(driver, cycle, waiters, phase, checks=None): a user's closed "
                        "loop over a cycle of static requests ((wire, timeout, name), ...), "
                        "run by its connection; checks: {name: (accepted statuses as 600 "
                        "bytes, checks passed by each, latency to stay under)}."),
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)lane_init,
    .tp_dealloc = (destructor)lane_dealloc,
    .tp_traverse = (traverseproc)lane_traverse,
    .tp_clear = (inquiry)lane_clear,
    .tp_methods = lane_methods,
    .tp_members = lane_members,
    .tp_getset = lane_getset,
};

/* ------------------------------------------------------------------------ */
/* ConnCore: the fields of a connection the lane shares with fast_conn.Conn. */

typedef struct {
    PyObject_HEAD
    Py_ssize_t nbytes;
    double deadline;
    Py_ssize_t served;
    char keep;
    char in_body;    /* the lane's reply: its head is in, `need` body bytes are due */
    char reply_keep; /* what the lane's reply said of the connection */
    int status;
    long long need;
    Lane *lane;      /* the lane whose request is in flight here, or NULL */
    PyObject *writer; /* the transport's write */
} ConnCore;

static int core_traverse(ConnCore *self, visitproc visit, void *arg) {
    Py_VISIT(self->lane);
    Py_VISIT(self->writer);
    return 0;
}

static int core_clear(ConnCore *self) {
    Py_CLEAR(self->lane);
    Py_CLEAR(self->writer);
    return 0;
}

static void core_dealloc(ConnCore *self) {
    PyObject_GC_UnTrack(self);
    core_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Python takes the request back: the user learns when it was sent, its deadline and
 * how many requests the lane moved on by (`lane_detached`). */
static int detach(ConnCore *self) {
    Lane *lane = self->lane;
    if (lane == NULL) return 0;
    self->lane = NULL;
    self->in_body = 0;
    Py_ssize_t advanced = lane->advanced;
    lane->advanced = 0;
    int rc = 0;
    if (lane->driver != NULL) {
        PyObject *r = PyObject_CallMethod(lane->driver, "lane_detached", "ddn", lane->sent,
                                          self->deadline, advanced);
        if (r == NULL)
            rc = -1;
        else
            Py_DECREF(r);
    }
    Py_DECREF(lane);
    return rc;
}

static PyObject *core_detach_lane(ConnCore *self, PyObject *unused) {
    if (detach(self) < 0) return NULL;
    Py_RETURN_NONE;
}

/* The lane's reply is complete: record it and send the next request, or hand it
 * back to Python. */
static PyObject *complete(ConnCore *self, int keep) {
    Lane *lane = self->lane;
    double end = now();
    self->served++;
    int status = self->status;
    int go = keep && lane->enabled && end < lane->until && self->writer != NULL &&
             lane->waiters != NULL; /* NULL: cleared by the garbage collector */
    Record *r = &lane->records[lane->series[lane->pos]];
    if (go && r->accept != NULL) /* else the user judges it */
        go = r->accept[status] && end - lane->sent < r->under;
    if (go) {
        Py_ssize_t waiting = PyObject_Length(lane->waiters);
        if (waiting < 0) return NULL;
        go = waiting == 0;
    }
    if (go) {
        if (record_keep(r, end - lane->sent) < 0) return NULL;
        r->counts[status / 100 - 2]++;
        r->bytes_in += self->nbytes;
        r->checks_passed += r->checks;
        Py_ssize_t pos = lane->pos + 1 < lane->length ? lane->pos + 1 : 0;
        lane->pos = pos;
        lane->advanced++;
        lane->records[lane->series[pos]].arrivals++;
        lane->sends++;
        lane->sent = end;
        self->deadline = end + lane->timeouts[pos];
        self->nbytes = 0;
        PyObject *w = PyObject_CallOneArg(self->writer, PyTuple_GET_ITEM(lane->wires, pos));
        if (w == NULL) return NULL;
        Py_DECREF(w);
        Py_RETURN_NONE;
    }
    self->keep = (char)keep;
    if (detach(self) < 0) return NULL;
    PyObject *code = PyLong_FromLong(status);
    if (code == NULL) return NULL;
    PyObject *done = PyObject_CallMethodOneArg((PyObject *)self, str_lane_complete, code);
    Py_DECREF(code);
    return done;
}

static PyObject *core_data_received(ConnCore *self, PyObject *data) {
    if (self->lane == NULL)
        return PyObject_CallMethodOneArg((PyObject *)self, str_data_received, data);
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    const char *b = view.buf;
    Py_ssize_t n = view.len;
    if (!self->in_body) {
        int status, keep;
        long long body;
        Py_ssize_t head = parse_head(b, n, &status, &body, &keep);
        PyBuffer_Release(&view);
        if (head == BAIL) {
            /* a head the lane leaves to llhttp: the Python path takes the request
             * back and counts the reply's bytes from the start */
            if (detach(self) < 0) return NULL;
            self->nbytes = 0;
            return PyObject_CallMethodOneArg((PyObject *)self, str_data_received, data);
        }
        self->status = status;
        self->reply_keep = (char)keep;
        self->nbytes = n;
        long long rest = (long long)(n - head);
        if (rest < body) {
            self->need = body - rest;
            self->in_body = 1;
            Py_RETURN_NONE;
        }
        /* bytes past the reply were never asked for: do not trust the connection */
        return complete(self, rest == body && keep);
    }
    PyBuffer_Release(&view);
    self->nbytes += n;
    if ((long long)n < self->need) {
        self->need -= n;
        Py_RETURN_NONE;
    }
    self->in_body = 0;
    return complete(self, (long long)n == self->need && self->reply_keep);
}

static PyObject *core_get_lane(ConnCore *self, void *closure) {
    if (self->lane == NULL) Py_RETURN_NONE;
    Py_INCREF(self->lane);
    return (PyObject *)self->lane;
}

static int core_set_lane(ConnCore *self, PyObject *value, void *closure) {
    if (value == NULL || value == Py_None) {
        Py_CLEAR(self->lane);
        self->in_body = 0;
        return 0;
    }
    if (!PyObject_TypeCheck(value, &LaneType) || ((Lane *)value)->wires == NULL) {
        PyErr_SetString(PyExc_TypeError, "lane must be an initialised Lane or None");
        return -1;
    }
    Py_INCREF(value);
    Py_XSETREF(self->lane, (Lane *)value);
    self->in_body = 0;
    return 0;
}

static PyObject *core_get_writer(ConnCore *self, void *closure) {
    if (self->writer == NULL) Py_RETURN_NONE;
    Py_INCREF(self->writer);
    return self->writer;
}

static int core_set_writer(ConnCore *self, PyObject *value, void *closure) {
    if (value == Py_None) value = NULL;
    Py_XINCREF(value);
    Py_XSETREF(self->writer, value);
    return 0;
}

static PyMethodDef core_methods[] = {
    {"data_received", (PyCFunction)core_data_received, METH_O,
     "The transport's bytes: the lane's reply, or `_data_received` (Python)."},
    {"detach_lane", (PyCFunction)core_detach_lane, METH_NOARGS,
     "Python takes the request in flight back from the lane (if it has one)."},
    {NULL},
};

static PyMemberDef core_members[] = {
    {"nbytes", T_PYSSIZET, offsetof(ConnCore, nbytes), 0, "bytes of the reply so far"},
    {"deadline", T_DOUBLE, offsetof(ConnCore, deadline), 0,
     "when the reply in flight is due; 0.0: none in flight"},
    {"served", T_PYSSIZET, offsetof(ConnCore, served), 0, "replies completed"},
    {"keep", T_BOOL, offsetof(ConnCore, keep), 0, "whether it may carry another request"},
    {NULL},
};

static PyGetSetDef core_getset[] = {
    {"lane", (getter)core_get_lane, (setter)core_set_lane,
     "the lane whose request is in flight here, or None", NULL},
    {"writer", (getter)core_get_writer, (setter)core_set_writer, "the transport's write", NULL},
    {NULL},
};

static PyTypeObject ConnCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "loadctl.agent._lane.ConnCore",
    .tp_doc = PyDoc_STR("The base of fast_conn.Conn: the fields the lane shares with it."),
    .tp_basicsize = sizeof(ConnCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_methods = core_methods,
    .tp_members = core_members,
    .tp_getset = core_getset,
};

/* ------------------------------------------------------------------------ */

static PyObject *py_parse_head(PyObject *module, PyObject *data) {
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    int status = 0, keep = 0;
    long long body = 0;
    Py_ssize_t head = parse_head(view.buf, view.len, &status, &body, &keep);
    PyBuffer_Release(&view);
    if (head == BAIL) Py_RETURN_NONE;
    return Py_BuildValue("niLO", head, status, body, keep ? Py_True : Py_False);
}

static PyMethodDef module_methods[] = {
    {"parse_head", py_parse_head, METH_O,
     "parse_head(data) -> (head_length, status, body_length, keep_alive), or None if the "
     "lane leaves the reply to llhttp."},
    {NULL},
};

static struct PyModuleDef lane_module = {
    PyModuleDef_HEAD_INIT, "loadctl.agent._lane",
    "The fast engine's compiled lane (see the comment at the top of _lane.c).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__lane(void) {
    if (PyType_Ready(&LaneType) < 0 || PyType_Ready(&ConnCoreType) < 0) return NULL;
    str_data_received = PyUnicode_InternFromString("_data_received");
    str_lane_complete = PyUnicode_InternFromString("_lane_complete");
    if (!str_data_received || !str_lane_complete) return NULL;
    PyObject *m = PyModule_Create(&lane_module);
    if (m == NULL) return NULL;
    Py_INCREF(&LaneType);
    Py_INCREF(&ConnCoreType);
    if (PyModule_AddObject(m, "Lane", (PyObject *)&LaneType) < 0 ||
        PyModule_AddObject(m, "ConnCore", (PyObject *)&ConnCoreType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
