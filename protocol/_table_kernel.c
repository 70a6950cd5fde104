/* The compiled kernel of the histogram table (see histogram_table.py for the form).
 *
 * Why C: at a thousand agents the coordinator validates and merges a thousand
 * tables of ~21,000 slots a second. numpy does it in some forty passes over
 * temporary arrays (widen the deltas, prefix sums, reduceat, np.add.at), and those
 * passes, not the slots, were half of the coordinator's CPU. Here one table is
 * checked in one walk over its columns as they arrived, and merged in another,
 * with no temporary arrays.
 *
 * `check` enforces exactly the rules of histogram_table's numpy decoder, and
 * reports the same message for the same fault: the checks that must hold before
 * the slots can be walked (ns adds up, the scalars, the escape positions) come
 * first, in the numpy decoder's order; the walk then notes every later rule that
 * fails and the first in the numpy decoder's order is reported. The caller has
 * checked the fields' types and lengths (histogram_table._check_shape and the
 * length checks of decode_tables); they are checked here again, so that no input
 * reads outside its buffer whoever calls.
 *
 * `scatter` adds validated tables' counts into rows of a block, histogram k of
 * every table before histogram k + 1 (see kernel_scatter for why). It checks every
 * write against the block's bounds, but not the rules: it must only be given
 * tables that `check` accepted.
 *
 * Every multi-byte field is little endian and unaligned (msgpack bytes): loads
 * assemble bytes (load_u), which compilers turn into plain loads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define SUB_HALF_MAG 10
#define SUB_BITS 11
#define SUB_MASK ((1LL << SUB_BITS) - 1)
#define COUNTS_LEN (33LL << SUB_HALF_MAG)
#define HIGHEST 3600000000000LL

static inline uint64_t load_u(const unsigned char *p, int width) {
    uint64_t v = 0;
    for (int i = width - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static inline int64_t load_i64(const unsigned char *p) { return (int64_t)load_u(p, 8); }

static inline int bit_length(uint64_t v) {
#if defined(__GNUC__) || defined(__clang__)
    return v ? 64 - __builtin_clzll(v) : 0;
#else
    int n = 0;
    while (v) { n++; v >>= 1; }
    return n;
#endif
}

/* HdrHistogram's slot of an in-range value (hdr_layout.index_of). */
static inline int64_t index_of(int64_t value) {
    if (value <= SUB_MASK) return value;
    int b = bit_length((uint64_t)value) - SUB_BITS;
    return ((int64_t)b << SUB_HALF_MAG) + (value >> b);
}

#if defined(__GNUC__) || defined(__clang__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

/* Count j of width cw; called with a constant cw, so each width gets its own loop
 * with a plain load (see the dispatch on t->cw below). */
static ALWAYS_INLINE uint64_t count_at(const unsigned char *c, Py_ssize_t j, int cw) {
    switch (cw) {
    case 1: return c[j];
    case 2: return load_u(c + 2 * j, 2);
    default: return load_u(c + 4 * j, 4);
    }
}

/* The sum of n counts and whether one is 0, in a loop the compiler vectorises. */
static ALWAYS_INLINE uint64_t sum_counts(const unsigned char *c, Py_ssize_t n, int cw,
                                         int *zero) {
    uint64_t sum = 0; /* < 2^16 counts below 2^32 */
    uint32_t least = UINT32_MAX; /* a minimum vectorises, a count of zeros does not */
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)count_at(c, i, cw);
        sum += v;
        least = v < least ? v : least;
    }
    *zero = least == 0;
    return sum;
}

typedef struct {
    Py_ssize_t h;
    const unsigned char *ns, *sc, *d, *ep, *ev, *c; /* as parsed: "y#" gives const char */
    Py_ssize_t slots, escapes;
    int cw;
} Table;

/* The fields as parsed; 0 (and ValueError set) if their lengths disagree. */
static int valid_lengths(Table *t, Py_ssize_t ns_len, Py_ssize_t sc_len, Py_ssize_t d_len,
                         Py_ssize_t ep_len, Py_ssize_t ev_len, Py_ssize_t c_len) {
    if (t->h < 0 || ns_len != 2 * t->h || sc_len != 32 * t->h
        || !(t->cw == 1 || t->cw == 2 || t->cw == 4) || c_len != d_len * t->cw
        || ev_len % 2 || ep_len != 2 * ev_len) {
        PyErr_SetString(PyExc_ValueError, "table fields of inconsistent lengths");
        return 0;
    }
    t->slots = d_len;
    t->escapes = ev_len / 2;
    return 1;
}

#define TABLE_FORMAT "ny#y#y#y#y#iy#"
#define TABLE_ARGS(t) &(t).h, &(t).ns, &ns_len, &(t).sc, &sc_len, &(t).d, &d_len, &(t).ep, \
    &ep_len, &(t).ev, &ev_len, &(t).cw, &(t).c, &c_len
#define TABLE_LENGTHS Py_ssize_t ns_len, sc_len, d_len, ep_len, ev_len, c_len

/* The rules found broken by the walk, in the order the numpy decoder checks them. */
enum {
    NOT_INCREASING,
    OUT_OF_RANGE,
    ZERO_COUNT,
    SUMS,
    EMPTY_SUMS,
    EMPTY_NONZERO,
    EMPTY_MIN_IN_RANGE,
    MIN_SLOT,
    MAX_IFF_OVERFLOW,
    MAX_SLOT,
    RULES
};

static const char *const MESSAGES[RULES] = {
    "indices must be strictly increasing",
    "index out of range",
    "zero count in sparse form",
    "counts do not add up to count",
    "counts do not add up to count",
    "empty histogram with non-zero min or max",
    "only overflow recorded but min is in range",
    "min is not in the first non-empty slot",
    "max is above the range if and only if there is overflow",
    "max is not in the last non-empty slot",
};

/* NULL if the table is valid, else what is wrong with it. */
static const char *check_table(const Table *t) {
    Py_ssize_t total = 0;
    for (Py_ssize_t k = 0; k < t->h; k++) total += (Py_ssize_t)load_u(t->ns + 2 * k, 2);
    if (total != t->slots) return "'ns' does not add up to the slots in 'd'";
    for (Py_ssize_t k = 0; k < t->h; k++) {
        const unsigned char *s = t->sc + 32 * k;
        int64_t count = load_i64(s), overflow = load_i64(s + 8);
        int64_t mn = load_i64(s + 16), mx = load_i64(s + 24);
        if (overflow < 0 || mn < 0 || overflow > count || mn > mx)
            return "count, overflow, min, max need 0 <= overflow <= count and 0 <= min <= max";
    }
    /* 'd' is 0 exactly at the increasing positions of 'ep' */
    Py_ssize_t zeros = 0;
    for (Py_ssize_t j = 0; j < t->slots; j++) zeros += t->d[j] == 0;
    int64_t previous = -1;
    for (Py_ssize_t e = 0; e < t->escapes; e++) {
        int64_t at = (int64_t)load_u(t->ep + 4 * e, 4);
        if (at <= previous || at >= t->slots)
            return "'ep' must be increasing positions among the slots";
        previous = at;
    }
    if (zeros != t->escapes) return "'d' must be 0 exactly at the positions in 'ep'";
    for (Py_ssize_t e = 0; e < t->escapes; e++)
        if (t->d[load_u(t->ep + 4 * e, 4)] != 0)
            return "'d' must be 0 exactly at the positions in 'ep'";

    int broken[RULES] = {0};
    Py_ssize_t j = 0, e = 0;
    for (Py_ssize_t k = 0; k < t->h; k++) {
        const unsigned char *s = t->sc + 32 * k;
        int64_t count = load_i64(s), overflow = load_i64(s + 8);
        int64_t mn = load_i64(s + 16), mx = load_i64(s + 24);
        Py_ssize_t n = (Py_ssize_t)load_u(t->ns + 2 * k, 2);
        if (n == 0) {
            if (count != overflow) broken[EMPTY_SUMS] = 1;
            if (count == 0 && mx != 0) broken[EMPTY_NONZERO] = 1;
            if (count > 0 && mn <= HIGHEST) broken[EMPTY_MIN_IN_RANGE] = 1;
            continue;
        }
        /* The last index is the sum of the deltas: the narrow ones (an escape's 0
         * adds nothing) and the escapes in this histogram, which the checks above
         * say are next in 'ep', the first of them at j if d[j] is 0. */
        uint64_t index = 0;
        for (Py_ssize_t i = 0; i < n; i++) index += t->d[j + i];
        int64_t first = t->d[j];
        for (; e < t->escapes && (Py_ssize_t)load_u(t->ep + 4 * e, 4) < j + n; e++) {
            uint64_t delta = load_u(t->ev + 2 * e, 2);
            if ((Py_ssize_t)load_u(t->ep + 4 * e, 4) == j) first = (int64_t)delta;
            else if (delta == 0) broken[NOT_INCREASING] = 1;
            index += delta;
        }
        int zero;
        uint64_t sum;
        switch (t->cw) {
        case 1: sum = sum_counts(t->c + j, n, 1, &zero); break;
        case 2: sum = sum_counts(t->c + 2 * j, n, 2, &zero); break;
        default: sum = sum_counts(t->c + 4 * j, n, 4, &zero); break;
        }
        j += n;
        if (zero) broken[ZERO_COUNT] = 1;
        if (index >= COUNTS_LEN) broken[OUT_OF_RANGE] = 1;
        if ((int64_t)sum != count - overflow) broken[SUMS] = 1;
        if (mn > HIGHEST || index_of(mn) != first) broken[MIN_SLOT] = 1;
        if ((mx > HIGHEST) != (overflow > 0)) broken[MAX_IFF_OVERFLOW] = 1;
        if (overflow == 0 && mx <= HIGHEST && index_of(mx) != (int64_t)index)
            broken[MAX_SLOT] = 1;
    }
    for (int rule = 0; rule < RULES; rule++)
        if (broken[rule]) return MESSAGES[rule];
    return NULL;
}

static PyObject *kernel_check(PyObject *self, PyObject *args) {
    Table t;
    TABLE_LENGTHS;
    if (!PyArg_ParseTuple(args, TABLE_FORMAT, TABLE_ARGS(t))
        || !valid_lengths(&t, ns_len, sc_len, d_len, ep_len, ev_len, c_len))
        return NULL;
    const char *fault = check_table(&t);
    if (fault == NULL) Py_RETURN_NONE;
    return PyUnicode_FromString(fault);
}

/* Add histogram k's counts, whose slots start at j and escapes at e, to row;
 * NULL, or the fault that stopped it (only in a table `check` refused). */
static ALWAYS_INLINE const char *scatter_width(const Table *t, Py_ssize_t j, Py_ssize_t e,
                                               Py_ssize_t n, uint64_t *row, int cw) {
    int64_t index = 0;
    for (Py_ssize_t end = j + n; j < end; j++) {
        int64_t delta = t->d[j];
        if (delta == 0) {
            if (e >= t->escapes) return "'d' must be 0 exactly at the positions in 'ep'";
            delta = (int64_t)load_u(t->ev + 2 * e, 2);
            e++;
        }
        index += delta;
        if (index >= COUNTS_LEN) return "index out of range";
        row[index] += count_at(t->c, j, cw);
    }
    return NULL;
}

static const char *scatter_one(const Table *t, Py_ssize_t j, Py_ssize_t e, Py_ssize_t n,
                               uint64_t *row) {
    switch (t->cw) {
    case 1: return scatter_width(t, j, e, n, row, 1);
    case 2: return scatter_width(t, j, e, n, row, 2);
    default: return scatter_width(t, j, e, n, row, 4);
    }
}

/* One table of the list `scatter` takes, its fields checked for length; 0 (and an
 * exception set) if it is not a sequence of the eight fields. `*held` keeps the
 * tuple the pointers point into. */
static int table_at(PyObject *tables, Py_ssize_t i, Table *t, PyObject **held) {
    PyObject *fields = PySequence_Tuple(PyList_GET_ITEM(tables, i));
    *held = fields;
    if (fields == NULL) return 0;
    TABLE_LENGTHS;
    return PyArg_ParseTuple(fields, TABLE_FORMAT, TABLE_ARGS(*t))
           && valid_lengths(t, ns_len, sc_len, d_len, ep_len, ev_len, c_len);
}

/* Where histogram k of a table starts: its first slot and its first escape (the
 * escapes before it are those at positions below its first slot). */
typedef struct {
    Py_ssize_t slot, escape, n;
} Start;

static int find_starts(const Table *t, Start *starts) {
    Py_ssize_t j = 0, e = 0;
    for (Py_ssize_t k = 0; k < t->h; k++) {
        while (e < t->escapes && (Py_ssize_t)load_u(t->ep + 4 * e, 4) < j) e++;
        starts[k].slot = j;
        starts[k].escape = e;
        starts[k].n = (Py_ssize_t)load_u(t->ns + 2 * k, 2);
        j += starts[k].n;
    }
    return j <= t->slots;
}

/* Why histogram by histogram across the tables, not table after table: histogram k
 * of every agent's snapshot goes to the same row (the same series), so its ~20 KiB
 * of counts stay in the L1/L2 cache for all the tables, instead of all thirty rows
 * (~500 KiB) passing through it once per table. */
static PyObject *kernel_scatter(PyObject *self, PyObject *args) {
    Py_buffer block;
    const unsigned char *offsets;
    Py_ssize_t offsets_len;
    PyObject *tables;
    if (!PyArg_ParseTuple(args, "w*y#O!", &block, &offsets, &offsets_len, &PyList_Type, &tables))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(tables), histograms = 0, widest = 0;
    Table *parsed = PyMem_Calloc(count ? count : 1, sizeof(Table));
    PyObject **held = PyMem_Calloc(count ? count : 1, sizeof(PyObject *));
    Start *starts = NULL;
    PyObject *result = NULL;
    const char *fault = NULL;
    if (parsed == NULL || held == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!table_at(tables, i, &parsed[i], &held[i])) goto done;
        histograms += parsed[i].h;
        if (parsed[i].h > widest) widest = parsed[i].h;
    }
    int64_t cells = (int64_t)(block.len / 8);
    if (block.itemsize != 8 || offsets_len != 8 * histograms) {
        PyErr_SetString(PyExc_ValueError, "a block of 8-byte counts and one offset per histogram");
        goto done;
    }
    for (Py_ssize_t k = 0; k < histograms; k++) {
        int64_t base = load_i64(offsets + 8 * k);
        if (base < 0 || base > cells - COUNTS_LEN) {
            PyErr_SetString(PyExc_ValueError, "an offset outside the block");
            goto done;
        }
    }
    starts = PyMem_Calloc(histograms ? histograms : 1, sizeof(Start));
    if (starts == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0, first = 0; i < count; first += parsed[i].h, i++)
        if (!find_starts(&parsed[i], starts + first)) fault = "'ns' does not add up to the slots in 'd'";
    uint64_t *cell = (uint64_t *)block.buf;
    for (Py_ssize_t k = 0; k < widest && fault == NULL; k++) {
        for (Py_ssize_t i = 0, first = 0; i < count && fault == NULL; first += parsed[i].h, i++) {
            if (k >= parsed[i].h) continue;
            const Start *at = starts + first + k;
            uint64_t *row = cell + load_i64(offsets + 8 * (first + k));
            fault = scatter_one(&parsed[i], at->slot, at->escape, at->n, row);
        }
    }
    if (fault != NULL) /* only a table `check` refused gets here: a caller's bug */
        PyErr_Format(PyExc_RuntimeError, "scatter of an unchecked table: %s", fault);
    else
        result = Py_NewRef(Py_None);
done:
    for (Py_ssize_t i = 0; held != NULL && i < count; i++) Py_XDECREF(held[i]);
    PyMem_Free(held);
    PyMem_Free(parsed);
    PyMem_Free(starts);
    PyBuffer_Release(&block);
    return result;
}

static PyMethodDef METHODS[] = {
    {"check", kernel_check, METH_VARARGS,
     "check(h, ns, sc, d, ep, ev, cw, c) -> None if the table is valid, else what is wrong."},
    {"scatter", kernel_scatter, METH_VARARGS,
     "scatter(block, offsets, tables): add checked tables' counts into the block, the "
     "k-th histogram of them all at cell offsets[k] (int64) on."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, "_table_kernel",
    "The compiled checks and merge of the histogram table form.", -1, METHODS,
};

PyMODINIT_FUNC PyInit__table_kernel(void) { return PyModule_Create(&MODULE); }
