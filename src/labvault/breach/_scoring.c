/*
 * labvault.breach._scoring: the fuzzy tier's pair scoring in one C loop.
 *
 * Why native code: a 500,000-row leaked file against 30 laboratories of 33,000
 * patients gives ~13 million (row, candidate) pairs per laboratory; NumPy scores them
 * at ~90 ns a pair (each of 23 words gathered, AND-ed and counted as a separate pass
 * over memory). This loop does the same per pair in registers. It computes exactly
 * what ``matching._score_batch`` computes, with the same IEEE double operations in
 * the same order (tests compare both, bit for bit), and is optional: without it the
 * NumPy path runs.
 *
 * Layout (all C-contiguous, one row or patient per line so a pair reads two or three
 * cache lines of each side): rows' filters rf (R, words) uint64, swapped-names words
 * rsw (R, sw_words), per-field counts rc (R, fields) / rc_sw (R, 2) float64; patients'
 * filters cw (P, words) uint64 and counts cc (P, fields) float64; pairs pr / pp (n)
 * int64; field f covers words [lo[f], hi[f]); out (n) float64.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define MAX_FIELDS 16
#define EARLY_FIELDS 3
#define AHEAD 6           /* entries / candidates prefetched ahead */

/* 1 / n for the field count sums (a field has at most 256 bits: sums <= 512). */
#define MAX_SUM 1024
static double inverse[MAX_SUM + 1];

static inline double inv(double x) { return x <= MAX_SUM ? inverse[(int)x] : 1.0 / x; }

/* The pair's per-field intersections for fields [from, to) (and of the swapped
 * names' L and F words, fields 0 and 1). */
static inline void intersections(const uint64_t *rw, const uint64_t *sw, const uint64_t *cp,
                                 int from, int to, const int64_t *lo, const int64_t *hi,
                                 unsigned *inter, unsigned *inter_sw) {
    for (int k = from; k < to; k++) {
        unsigned a = 0, b = 0;
        for (int64_t x = lo[k]; x < hi[k]; x++) {
            const uint64_t c = cp[x];
            a += (unsigned)__builtin_popcountll(rw[x] & c);
            if (k < 2) b += (unsigned)__builtin_popcountll(sw[x] & c);
        }
        inter[k] = a;
        if (k < 2) inter_sw[k] = b;
    }
}

/* Whether the pair may score at least `floor` knowing only the intersections of its
 * first `known` fields: the others count as perfect agreement (Dice 1) wherever both
 * sides have them. Multiplications by 1/(pa+pb) stand in for the divisions, with a
 * margin far above their error. */
static inline int may_reach_partial(const unsigned *inter, const unsigned *inter_sw,
                                    const double *rcn, const double *rsn, const double *ccn,
                                    int known, int fields, const double *w2, const double *w,
                                    double min_weight, double floor) {
    double total = 0.0, weight = 0.0, total_sw = 0.0, weight_sw = 0.0;
    for (int k = 0; k < fields; k++) {
        const double pb = ccn[k], pa = rcn[k];
        if (pa > 0 && pb > 0) {
            const double t = k < known ? (double)inter[k] * w2[k] * inv(pa + pb) : w[k];
            total += t;
            weight += w[k];
            if (k >= 2) {
                total_sw += t;
                weight_sw += w[k];
            }
        }
        if (k < 2 && rsn[k] > 0 && pb > 0) {
            total_sw += k < known ? (double)inter_sw[k] * w2[k] * inv(rsn[k] + pb) : w[k];
            weight_sw += w[k];
        }
    }
    const double f = floor - 1e-9;
    return (weight >= min_weight && total >= f * weight)
           || (weight_sw >= min_weight && total_sw >= f * weight_sw) || f <= 0.0;
}

/* One field's weighted Dice term and weight, (inter * 2w) / (pa + pb) and w, or zeros
 * when either side lacks the field. */
static inline void field_term(unsigned inter, double pa, double pb, double w2, double w,
                              double *term, double *wt) {
    if (pa > 0 && pb > 0) {
        *term = ((double)inter * w2) / (pa + pb);
        *wt = w;
    } else {
        *term = 0.0;
        *wt = 0.0;
    }
}

/* The exact score (the same IEEE operations in the same order as _score_batch). */
static inline double exact_score(const unsigned *inter, const unsigned *inter_sw,
                                 const double *rcn, const double *rsn, const double *ccn,
                                 int fields, const double *w2, const double *w,
                                 double min_weight) {
    double total = 0.0, weight = 0.0, total_sw = 0.0, weight_sw = 0.0;
    double rest_t[MAX_FIELDS], rest_w[MAX_FIELDS];
    int nrest = 0;
    for (int k = 0; k < fields; k++) {
        double term, wt;
        field_term(inter[k], rcn[k], ccn[k], w2[k], w[k], &term, &wt);
        total += term;
        weight += wt;
        if (k >= 2) {
            rest_t[nrest] = term;
            rest_w[nrest] = wt;
            nrest++;
        } else {
            field_term(inter_sw[k], rsn[k], ccn[k], w2[k], w[k], &term, &wt);
            total_sw += term;
            weight_sw += wt;
        }
    }
    for (int j = 0; j < nrest; j++) {
        total_sw += rest_t[j];
        weight_sw += rest_w[j];
    }
    const double s = weight >= min_weight ? total / weight : 0.0;
    const double s_sw = weight_sw >= min_weight ? total_sw / weight_sw : 0.0;
    return s_sw > s ? s_sw : s;
}

typedef struct {
    const uint64_t *rf, *rsw, *cw;
    const double *rc, *rc_sw, *cc;
    Py_ssize_t words, sw_words;
    int fields;
    const int64_t *lo, *hi;
    const double *w2, *w;
    double min_weight;
} tables_t;

#define ROW(t, r) (t)->rf + (r) * (t)->words, (t)->rsw + (r) * (t)->sw_words, \
                  (t)->rc + (r) * (t)->fields, (t)->rc_sw + (r) * 2
#define PAT(t, p) (t)->cw + (p) * (t)->words, (t)->cc + (p) * (t)->fields
#define CONST(t) (t)->fields, (t)->w2, (t)->w, (t)->min_weight

__attribute__((target_clones("popcnt", "default")))
static void score(const tables_t *t, const int64_t *pr, const int64_t *pp, Py_ssize_t n,
                  double *out) {
    unsigned inter[MAX_FIELDS], inter_sw[2];
    for (Py_ssize_t i = 0; i < n; i++) {
        const int64_t r = pr[i], p = pp[i];
        intersections(t->rf + r * t->words, t->rsw + r * t->sw_words, t->cw + p * t->words,
                      0, t->fields, t->lo, t->hi, inter, inter_sw);
        out[i] = exact_score(inter, inter_sw, t->rc + r * t->fields, t->rc_sw + r * 2,
                             t->cc + p * t->fields, CONST(t));
    }
}

/* Entries e: row e_row[e] against patients block_patient[e_lo[e] .. e_lo[e]+e_cnt[e]).
 * Keeps per row the best score, the smallest patient index among equal scores; pairs
 * that cannot reach max(floor, the row's best so far) are not scored exactly (they
 * could neither win nor tie, nor be accepted). Entries sorted by block keep a block's
 * patients in cache across its rows. */
__attribute__((target_clones("popcnt", "default")))
static void best(const tables_t *t, const int64_t *e_row, const int64_t *e_lo,
                 const int64_t *e_cnt, Py_ssize_t n, const int64_t *block_patient,
                 double floor, double *top, int64_t *win) {
    unsigned inter[MAX_FIELDS], inter_sw[2];
    for (Py_ssize_t e = 0; e < n; e++) {
        const int64_t r = e_row[e];
        if (e + AHEAD < n) {
            /* rows come in blocking-value order, i.e. from all over the row arrays:
             * ask for a later entry's row now, it arrives while this one is scored */
            const int64_t q = e_row[e + AHEAD];
            __builtin_prefetch(t->rf + q * t->words);
            __builtin_prefetch(t->rf + q * t->words + 8);
            __builtin_prefetch(t->rsw + q * t->sw_words);
            __builtin_prefetch(t->rc + q * t->fields);
            __builtin_prefetch(t->rc_sw + q * 2);
        }
        const uint64_t *rw = t->rf + r * t->words, *sw = t->rsw + r * t->sw_words;
        const double *rcn = t->rc + r * t->fields, *rsn = t->rc_sw + r * 2;
        for (int64_t j = e_lo[e]; j < e_lo[e] + e_cnt[e]; j++) {
            const int64_t p = block_patient[j];
            if (j + AHEAD < e_lo[e] + e_cnt[e]) {
                const int64_t q = block_patient[j + AHEAD];
                __builtin_prefetch(t->cw + q * t->words);
                __builtin_prefetch(t->cw + q * t->words + 8);
                __builtin_prefetch(t->cc + q * t->fields);
            }
            const double *ccn = t->cc + p * t->fields;
            const uint64_t *cp = t->cw + p * t->words;
            const double need = top[r] > floor ? top[r] : floor;
            /* the heavy fields first (last and first names, birth date: 60 % of the
             * weight); most candidates of a block are ruled out before the rest */
            const int first = t->fields < EARLY_FIELDS ? t->fields : EARLY_FIELDS;
            intersections(rw, sw, cp, 0, first, t->lo, t->hi, inter, inter_sw);
            if (!may_reach_partial(inter, inter_sw, rcn, rsn, ccn, first, CONST(t), need))
                continue;
            intersections(rw, sw, cp, first, t->fields, t->lo, t->hi, inter, inter_sw);
            if (!may_reach_partial(inter, inter_sw, rcn, rsn, ccn, t->fields, CONST(t), need))
                continue;
            const double s = exact_score(inter, inter_sw, rcn, rsn, ccn, CONST(t));
            if (s > top[r] || (s == top[r] && p < win[r])) {
                top[r] = s;
                win[r] = p;
            }
        }
    }
}

/* The tables (rf, rsw, rc, rc_sw, cw, cc, lo, hi, w2, w) as buffers b[0..9], checked. */
static int tables_of(Py_buffer *b, double min_weight, tables_t *t, Py_ssize_t *R,
                     Py_ssize_t *P) {
    const Py_ssize_t fields = b[6].len / 8;
    const int64_t *lo = b[6].buf, *hi = b[7].buf;
    int ok = fields >= 2 && fields <= MAX_FIELDS && b[7].len == b[6].len
             && b[8].len == b[6].len && b[9].len == b[6].len;
    Py_ssize_t words = 0;
    for (Py_ssize_t k = 0; ok && k < fields; k++) {
        ok = lo[k] >= 0 && lo[k] <= hi[k] && (k == 0 || lo[k] == hi[k - 1]);
        words = hi[k];
    }
    if (!ok) return 0;
    *R = b[2].len / 8 / fields;
    *P = b[5].len / 8 / fields;
    const Py_ssize_t sw_words = hi[1];
    if (b[2].len != *R * fields * 8 || b[5].len != *P * fields * 8 || b[3].len != *R * 2 * 8
        || b[0].len != words * *R * 8 || b[4].len != words * *P * 8
        || b[1].len != sw_words * *R * 8)
        return 0;
    tables_t v = {b[0].buf, b[1].buf, b[4].buf, b[2].buf, b[3].buf, b[5].buf, words, sw_words,
                  (int)fields, lo, hi, b[8].buf, b[9].buf, min_weight};
    *t = v;
    return 1;
}

/* Releases the n buffers; None if ok, else a ValueError naming what was wrong. */
static PyObject *finish(Py_buffer *b, int n, int ok, const char *error) {
    for (int i = 0; i < n; i++) PyBuffer_Release(&b[i]);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, error);
        return NULL;
    }
    Py_RETURN_NONE;
}

static int in_range(const Py_buffer *b, Py_ssize_t limit) {
    const int64_t *v = b->buf;
    for (Py_ssize_t i = 0; i < b->len / 8; i++)
        if (v[i] < 0 || v[i] >= limit) return 0;
    return 1;
}

#define TABLES_FMT "y*y*y*y*y*y*y*y*y*y*d"
#define TABLES_ARGS(b) &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &b[6], &b[7], &b[8], &b[9]

PyDoc_STRVAR(score_pairs_doc,
"score_pairs(rf, rsw, rc, rc_sw, cw, cc, lo, hi, w2, w, min_weight, pr, pp, out)\n\n"
"Scores of (row pr[i], patient pp[i]) pairs into out (see matching._score_batch);\n"
"arrays row-major: rf (R, words), rsw (R, 7), rc (R, fields), rc_sw (R, 2),\n"
"cw (P, words), cc (P, fields).");

static PyObject *score_pairs(PyObject *self, PyObject *args) {
    Py_buffer b[13];
    double min_weight;
    tables_t t;
    Py_ssize_t R, P;
    (void)self;
    memset(b, 0, sizeof b);
    if (!PyArg_ParseTuple(args, TABLES_FMT "y*y*w*", TABLES_ARGS(b), &min_weight,
                          &b[10], &b[11], &b[12]))
        return NULL;
    const int ok = tables_of(b, min_weight, &t, &R, &P) && b[11].len == b[10].len
                   && b[12].len == b[10].len && in_range(&b[10], R) && in_range(&b[11], P);
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        score(&t, b[10].buf, b[11].buf, b[10].len / 8, b[12].buf);
        Py_END_ALLOW_THREADS
    }
    return finish(b, 13, ok, "score_pairs: inconsistent array shapes or indexes");
}

PyDoc_STRVAR(best_pairs_doc,
"best_pairs(rf, rsw, rc, rc_sw, cw, cc, lo, hi, w2, w, min_weight,\n"
"           e_row, e_lo, e_cnt, block_patient, floor, top, win)\n\n"
"For each entry e, scores row e_row[e] against the patients\n"
"block_patient[e_lo[e]:e_lo[e] + e_cnt[e]] and keeps in top[row] / win[row] the best\n"
"score and the smallest patient index among equal best scores (top starts at 0.0,\n"
"win at a large index); pairs scoring below `floor` may be skipped.");

static PyObject *best_pairs(PyObject *self, PyObject *args) {
    Py_buffer b[16];
    double min_weight, floor;
    tables_t t;
    Py_ssize_t R, P;
    (void)self;
    memset(b, 0, sizeof b);
    if (!PyArg_ParseTuple(args, TABLES_FMT "y*y*y*y*dw*w*", TABLES_ARGS(b), &min_weight,
                          &b[10], &b[11], &b[12], &b[13], &floor, &b[14], &b[15]))
        return NULL;
    int ok = tables_of(b, min_weight, &t, &R, &P) && b[11].len == b[10].len
             && b[12].len == b[10].len && b[14].len == R * 8 && b[15].len == R * 8
             && in_range(&b[10], R) && in_range(&b[13], P);
    const Py_ssize_t n = b[10].len / 8, nb = b[13].len / 8;
    const int64_t *e_lo = b[11].buf, *e_cnt = b[12].buf;
    for (Py_ssize_t e = 0; ok && e < n; e++)
        ok = e_lo[e] >= 0 && e_cnt[e] >= 0 && e_lo[e] + e_cnt[e] <= nb;
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        best(&t, b[10].buf, e_lo, e_cnt, n, b[13].buf, floor, b[14].buf, b[15].buf);
        Py_END_ALLOW_THREADS
    }
    return finish(b, 16, ok, "best_pairs: inconsistent array shapes or indexes");
}

PyDoc_STRVAR(or_groups_doc,
"or_groups(x, toks, ptr, out)\n\n"
"out[v] |= x[toks[j]] for j in ptr[v]:ptr[v+1], for every group v: each distinct field\n"
"value's filter segment as the OR of its tokens' (x: (T, w) uint64, out: (V+1, w)).");

static PyObject *or_groups(PyObject *self, PyObject *args) {
    Py_buffer b[4];
    (void)self;
    memset(b, 0, sizeof b);
    if (!PyArg_ParseTuple(args, "y*y*y*w*", &b[0], &b[1], &b[2], &b[3])) return NULL;
    const Py_ssize_t groups = b[2].len / 8 - 1, m = b[1].len / 8;
    const Py_ssize_t w = groups >= 0 && b[3].len ? b[3].len / 8 / (groups + 1) : 0;
    const int64_t *toks = b[1].buf, *ptr = b[2].buf;
    int ok = groups >= 0 && w > 0 && b[3].len == (groups + 1) * w * 8 && b[0].len % (w * 8) == 0;
    const Py_ssize_t t = ok ? b[0].len / 8 / w : 0;
    for (Py_ssize_t v = 0; ok && v < groups; v++)
        ok = ptr[v] >= 0 && ptr[v] <= ptr[v + 1] && ptr[v + 1] <= m;
    ok = ok && in_range(&b[1], t);
    if (ok) {
        const uint64_t *x = b[0].buf;
        uint64_t *out = b[3].buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t v = 0; v < groups; v++)
            for (int64_t j = ptr[v]; j < ptr[v + 1]; j++)
                for (Py_ssize_t k = 0; k < w; k++) out[v * w + k] |= x[toks[j] * w + k];
        Py_END_ALLOW_THREADS
    }
    return finish(b, 4, ok, "or_groups: inconsistent array shapes or indexes");
}

static PyMethodDef methods[] = {
    {"or_groups", or_groups, METH_VARARGS, or_groups_doc},
    {"score_pairs", score_pairs, METH_VARARGS, score_pairs_doc},
    {"best_pairs", best_pairs, METH_VARARGS, best_pairs_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "labvault.breach._scoring",
    "Fuzzy-tier pair scoring (same floats as matching._score_batch).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__scoring(void) {
    inverse[0] = 0.0;
    for (int i = 1; i <= MAX_SUM; i++) inverse[i] = 1.0 / i;
    return PyModule_Create(&module);
}
