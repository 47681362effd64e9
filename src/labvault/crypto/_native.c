/*
 * labvault.crypto._native: HMAC-SHA256 of many short messages under one key.
 *
 * Why native code: breach triage MACs every identifier of a leaked file under each
 * laboratory's index key (500,000 rows x 30 laboratories = ~67 million HMACs), and
 * CPython spends ~0.5 us of object overhead per HMAC through hashlib whatever the
 * Python code does. This loop does the same HMAC (RFC 2104) with OpenSSL's SHA-256
 * (SHA-NI / AVX2 where the CPU has them): the key's inner and outer pad states are
 * computed once and copied per message, as hashlib's copy() does, without the objects.
 *
 * chain_append: the audit chain's append loop (docs/audit.md; the reference is
 * ``labvault.audit.chain.append_many``): per entry the RFC 6962 leaf hash, the
 * forward-secure MAC under k_i, k_{i+1} = HMAC(k_i, "evolve") and the Merkle frontier.
 * Every audited read pays for it; in Python it is ~4 us of object overhead per entry
 * around ~0.4 us of hashing.
 *
 * Optional: labvault builds and runs without it (``_primitives`` falls back to
 * hashlib, byte-identical; tests compare both). No cryptography is implemented
 * here: SHA-256 is OpenSSL's, only the HMAC framing (two hashes, 64-byte pads) is
 * written out.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <openssl/sha.h>
#include <openssl/crypto.h>

#include <stdio.h>

#define BLOCK 64
#define DIGEST 32

typedef struct {
    SHA256_CTX inner;
    SHA256_CTX outer;
} keyed_t;

static int keyed_init(keyed_t *k, const unsigned char *key, Py_ssize_t key_len) {
    unsigned char block[BLOCK], pad[BLOCK];
    memset(block, 0, BLOCK);
    if (key_len > BLOCK) {
        if (!SHA256(key, (size_t)key_len, block)) return 0;
    } else {
        memcpy(block, key, (size_t)key_len);
    }
    for (int i = 0; i < BLOCK; i++) pad[i] = block[i] ^ 0x36;
    if (!SHA256_Init(&k->inner) || !SHA256_Update(&k->inner, pad, BLOCK)) return 0;
    for (int i = 0; i < BLOCK; i++) pad[i] = block[i] ^ 0x5c;
    if (!SHA256_Init(&k->outer) || !SHA256_Update(&k->outer, pad, BLOCK)) return 0;
    OPENSSL_cleanse(block, BLOCK);
    OPENSSL_cleanse(pad, BLOCK);
    return 1;
}

static int keyed_mac(const keyed_t *k, const unsigned char *msg, size_t len,
                     unsigned char out[DIGEST]) {
    SHA256_CTX c;
    unsigned char ih[DIGEST];
    memcpy(&c, &k->inner, sizeof c);
    if (!SHA256_Update(&c, msg, len) || !SHA256_Final(ih, &c)) return 0;
    memcpy(&c, &k->outer, sizeof c);
    if (!SHA256_Update(&c, ih, DIGEST) || !SHA256_Final(out, &c)) return 0;
    return 1;
}

PyDoc_STRVAR(mac_many_doc,
"mac_many(key: bytes, messages: Sequence[bytes], size: int) -> bytes\n\n"
"HMAC-SHA256 of each message under key, each digest cut to its first `size` bytes\n"
"(1..32), concatenated in the order of `messages`.");

static PyObject *mac_many(PyObject *self, PyObject *args) {
    Py_buffer key;
    PyObject *messages, *seq = NULL, *out = NULL;
    Py_ssize_t size;
    keyed_t k;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*On", &key, &messages, &size)) return NULL;
    if (size < 1 || size > DIGEST) {
        PyErr_SetString(PyExc_ValueError, "size must be between 1 and 32");
        goto done;
    }
    seq = PySequence_Fast(messages, "messages must be a sequence of bytes");
    if (!seq) goto done;
    if (!keyed_init(&k, key.buf, key.len)) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL SHA-256 failed");
        goto done;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    out = PyBytes_FromStringAndSize(NULL, n * size);
    if (!out) goto done;
    unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(out);
    unsigned char d[DIGEST];
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyBytes_Check(items[i])) {
            PyErr_Format(PyExc_TypeError, "messages[%zd] is not bytes", i);
            Py_CLEAR(out);
            goto wipe;
        }
        if (!keyed_mac(&k, (const unsigned char *)PyBytes_AS_STRING(items[i]),
                       (size_t)PyBytes_GET_SIZE(items[i]), d)) {
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL SHA-256 failed");
            Py_CLEAR(out);
            goto wipe;
        }
        memcpy(dst + i * size, d, (size_t)size);
    }
wipe:
    OPENSSL_cleanse(&k, sizeof k);
done:
    Py_XDECREF(seq);
    PyBuffer_Release(&key);
    return out;
}

/* -- the audit chain ---------------------------------------------------------------------- */
#define SEP '\x1f'
#define MAX_FRONTIER 64

static int sha_parts(unsigned char out[DIGEST], const void *a, size_t al, const void *b,
                     size_t bl, const void *c, size_t cl) {
    SHA256_CTX x;
    if (!SHA256_Init(&x) || !SHA256_Update(&x, a, al) || !SHA256_Update(&x, b, bl)
        || !SHA256_Update(&x, c, cl) || !SHA256_Final(out, &x)) return 0;
    return 1;
}

static int node_hash(unsigned char out[DIGEST], const unsigned char *l, const unsigned char *r) {
    static const unsigned char one = 0x01;
    return sha_parts(out, &one, 1, l, DIGEST, r, DIGEST);
}

/* Append `s` (UTF-8 of a str, or "" for None) to buf at *pos, growing it. */
static int put(char **buf, size_t *cap, size_t *pos, const char *s, size_t n) {
    if (*pos + n + 1 > *cap) {
        size_t want = (*pos + n + 1) * 2;
        char *nb = PyMem_Realloc(*buf, want);
        if (!nb) { PyErr_NoMemory(); return 0; }
        *buf = nb;
        *cap = want;
    }
    memcpy(*buf + *pos, s, n);
    *pos += n;
    return 1;
}

static int put_str(char **buf, size_t *cap, size_t *pos, PyObject *o, const char *what) {
    Py_ssize_t n;
    const char *u;
    if (o == Py_None) return 1;
    if (!PyUnicode_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be str", what);
        return 0;
    }
    u = PyUnicode_AsUTF8AndSize(o, &n);
    return u != NULL && put(buf, cap, pos, u, (size_t)n);
}

static int put_int(char **buf, size_t *cap, size_t *pos, long long v) {
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%lld", v);
    return put(buf, cap, pos, tmp, (size_t)n);
}

static PyObject *frontier_list(unsigned char f[][DIGEST], int n) {
    PyObject *l = PyList_New(n);
    if (!l) return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *b = PyBytes_FromStringAndSize((const char *)f[i], DIGEST);
        if (!b) { Py_DECREF(l); return NULL; }
        PyList_SET_ITEM(l, i, b);
    }
    return l;
}

PyDoc_STRVAR(chain_append_doc,
"chain_append(row_type, chain, seq, prev, key, frontier, entries, checkpoint_every)\n"
"-> (rows, next_seq, prev, key, frontier, reached)\n\n"
"``labvault.audit.chain.append_many`` in one loop: entries are (entry_id, at_us,\n"
"actor_id, patient_id | None, action, outcome, body) with str fields; rows are\n"
"row_type instances (a tuple subclass) (chain, seq, entry_id, at_us, actor_id,\n"
"patient_id, action, outcome, body, mac); reached lists (tree size, root, last leaf,\n"
"frontier) for every checkpoint_every-th entry.");

static PyObject *chain_append(PyObject *self, PyObject *args) {
    PyTypeObject *row_type;
    PyObject *chain, *frontier_in, *entries, *seq_fast = NULL, *rows = NULL, *reached = NULL;
    PyObject *result = NULL;
    long long seq, every;
    Py_buffer prev_b, key_b;
    unsigned char prev[DIGEST], key[DIGEST], leaf[DIGEST], mac[DIGEST], ih[DIGEST];
    unsigned char frontier[MAX_FRONTIER][DIGEST], pad[BLOCK];
    int nf;
    char *buf = NULL;
    size_t cap = 0;
    keyed_t k;
    static const unsigned char leaf_tag[5] = {0x00, 'L', 'V', 'A', '1'};
    static const unsigned char evolve[6] = {'e', 'v', 'o', 'l', 'v', 'e'};
    (void)self;
    if (!PyArg_ParseTuple(args, "O!ULy*y*O!OL", &PyType_Type, &row_type, &chain, &seq,
                          &prev_b, &key_b, &PyList_Type, &frontier_in, &entries, &every))
        return NULL;
    memset(&k, 0, sizeof k);
    if (!PyType_IsSubtype(row_type, &PyTuple_Type) || row_type->tp_dictoffset != 0) {
        PyErr_SetString(PyExc_TypeError, "row_type must be a tuple subclass without __dict__");
        goto done;
    }
    if (prev_b.len != DIGEST || key_b.len != DIGEST) {
        PyErr_SetString(PyExc_ValueError, "prev and key must be 32 bytes");
        goto done;
    }
    if (seq < 0) {
        PyErr_SetString(PyExc_ValueError, "seq must be >= 0");
        goto done;
    }
    memcpy(prev, prev_b.buf, DIGEST);
    memcpy(key, key_b.buf, DIGEST);
    nf = (int)PyList_GET_SIZE(frontier_in);
    if (nf != __builtin_popcountll((unsigned long long)seq)) {
        PyErr_SetString(PyExc_ValueError, "the frontier does not match seq");
        goto done;
    }
    for (int i = 0; i < nf; i++) {
        PyObject *f = PyList_GET_ITEM(frontier_in, i);
        if (!PyBytes_Check(f) || PyBytes_GET_SIZE(f) != DIGEST) {
            PyErr_SetString(PyExc_ValueError, "frontier items must be 32 bytes");
            goto done;
        }
        memcpy(frontier[i], PyBytes_AS_STRING(f), DIGEST);
    }
    seq_fast = PySequence_Fast(entries, "entries must be a sequence");
    if (!seq_fast) goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq_fast);
    PyObject **items = PySequence_Fast_ITEMS(seq_fast);
    rows = PyList_New(n);
    reached = PyList_New(0);
    cap = 1024;
    buf = PyMem_Malloc(cap);
    if (!rows || !reached || !buf) { if (!buf) PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = items[i];
        if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) != 7) {
            PyErr_Format(PyExc_TypeError, "entries[%zd] must be a 7-tuple", i);
            goto done;
        }
        PyObject *entry_id = PyTuple_GET_ITEM(e, 0), *at = PyTuple_GET_ITEM(e, 1),
                 *actor = PyTuple_GET_ITEM(e, 2), *patient = PyTuple_GET_ITEM(e, 3),
                 *action = PyTuple_GET_ITEM(e, 4), *outcome = PyTuple_GET_ITEM(e, 5),
                 *body = PyTuple_GET_ITEM(e, 6);
        if (!PyLong_Check(at)) {
            PyErr_Format(PyExc_TypeError, "entries[%zd]: at_us must be int", i);
            goto done;
        }
        long long at_us = PyLong_AsLongLong(at);
        if (at_us == -1 && PyErr_Occurred()) goto done;
        if (entry_id == Py_None || actor == Py_None || action == Py_None
            || outcome == Py_None || body == Py_None) {
            PyErr_Format(PyExc_TypeError, "entries[%zd]: only patient_id may be None", i);
            goto done;
        }
        /* P = chain SEP seq SEP entry_id SEP at_us SEP actor SEP patient SEP action SEP
           outcome, after 4 bytes for its length */
        size_t pos = 4;
        char sep = SEP;
        if (!put_str(&buf, &cap, &pos, chain, "chain") || !put(&buf, &cap, &pos, &sep, 1)
            || !put_int(&buf, &cap, &pos, seq) || !put(&buf, &cap, &pos, &sep, 1)
            || !put_str(&buf, &cap, &pos, entry_id, "entry_id") || !put(&buf, &cap, &pos, &sep, 1)
            || !put_int(&buf, &cap, &pos, at_us) || !put(&buf, &cap, &pos, &sep, 1)
            || !put_str(&buf, &cap, &pos, actor, "actor_id") || !put(&buf, &cap, &pos, &sep, 1)
            || !put_str(&buf, &cap, &pos, patient, "patient_id")
            || !put(&buf, &cap, &pos, &sep, 1)
            || !put_str(&buf, &cap, &pos, action, "action") || !put(&buf, &cap, &pos, &sep, 1)
            || !put_str(&buf, &cap, &pos, outcome, "outcome"))
            goto done;
        size_t plen = pos - 4;
        if (plen > 0xFFFFFFFFu) {
            PyErr_SetString(PyExc_ValueError, "entry prefix too long");
            goto done;
        }
        buf[0] = (char)(plen >> 24); buf[1] = (char)(plen >> 16);
        buf[2] = (char)(plen >> 8); buf[3] = (char)plen;
        if (!put(&buf, &cap, &pos, (const char *)prev, DIGEST)
            || !put_str(&buf, &cap, &pos, body, "body"))
            goto done;
        if (!sha_parts(leaf, leaf_tag, sizeof leaf_tag, buf, pos, "", 0)) goto ssl;
        /* MAC under k_i, then k_{i+1}: one pair of pad states for both */
        memset(pad, 0, BLOCK);
        memcpy(pad, key, DIGEST);
        for (int j = 0; j < BLOCK; j++) pad[j] ^= 0x36;
        if (!SHA256_Init(&k.inner) || !SHA256_Update(&k.inner, pad, BLOCK)) goto ssl;
        for (int j = 0; j < BLOCK; j++) pad[j] ^= 0x36 ^ 0x5c;
        if (!SHA256_Init(&k.outer) || !SHA256_Update(&k.outer, pad, BLOCK)) goto ssl;
        if (!keyed_mac(&k, leaf, DIGEST, mac) || !keyed_mac(&k, evolve, sizeof evolve, key))
            goto ssl;
        /* frontier push (RFC 6962 compact range) */
        memcpy(ih, leaf, DIGEST);
        for (unsigned long long m = (unsigned long long)seq; m & 1; m >>= 1) {
            if (!node_hash(ih, frontier[--nf], ih)) goto ssl;
        }
        if (nf >= MAX_FRONTIER) {
            PyErr_SetString(PyExc_OverflowError, "chain too long");
            goto done;
        }
        memcpy(frontier[nf++], ih, DIGEST);
        PyObject *row = row_type->tp_alloc(row_type, 10);
        if (!row) goto done;
        PyList_SET_ITEM(rows, i, row);
        PyObject *seq_o = PyLong_FromLongLong(seq);
        PyObject *mac_o = PyBytes_FromStringAndSize((const char *)mac, DIGEST);
        if (!seq_o || !mac_o) { Py_XDECREF(seq_o); Py_XDECREF(mac_o); goto done; }
        Py_INCREF(chain); PyTuple_SET_ITEM(row, 0, chain);
        PyTuple_SET_ITEM(row, 1, seq_o);
        Py_INCREF(entry_id); PyTuple_SET_ITEM(row, 2, entry_id);
        Py_INCREF(at); PyTuple_SET_ITEM(row, 3, at);
        Py_INCREF(actor); PyTuple_SET_ITEM(row, 4, actor);
        Py_INCREF(patient); PyTuple_SET_ITEM(row, 5, patient);
        Py_INCREF(action); PyTuple_SET_ITEM(row, 6, action);
        Py_INCREF(outcome); PyTuple_SET_ITEM(row, 7, outcome);
        Py_INCREF(body); PyTuple_SET_ITEM(row, 8, body);
        PyTuple_SET_ITEM(row, 9, mac_o);
        memcpy(prev, leaf, DIGEST);
        seq++;
        if (every > 0 && seq % every == 0) {
            unsigned char root[DIGEST];
            memcpy(root, frontier[nf - 1], DIGEST);
            for (int j = nf - 2; j >= 0; j--)
                if (!node_hash(root, frontier[j], root)) goto ssl;
            PyObject *fl = frontier_list(frontier, nf);
            PyObject *t = fl ? Py_BuildValue("(Ly#y#N)", seq, root, (Py_ssize_t)DIGEST, leaf,
                                             (Py_ssize_t)DIGEST, fl) : NULL;
            if (!t || PyList_Append(reached, t) < 0) { Py_XDECREF(t); goto done; }
            Py_DECREF(t);
        }
    }
    {
        PyObject *fl = frontier_list(frontier, nf);
        if (fl) result = Py_BuildValue("(OLy#y#NO)", rows, seq, prev, (Py_ssize_t)DIGEST, key,
                                       (Py_ssize_t)DIGEST, fl, reached);
    }
    goto done;
ssl:
    PyErr_SetString(PyExc_RuntimeError, "OpenSSL SHA-256 failed");
done:
    OPENSSL_cleanse(&k, sizeof k);
    OPENSSL_cleanse(key, sizeof key);
    OPENSSL_cleanse(pad, sizeof pad);
    PyMem_Free(buf);
    Py_XDECREF(seq_fast);
    Py_XDECREF(rows);
    Py_XDECREF(reached);
    PyBuffer_Release(&prev_b);
    PyBuffer_Release(&key_b);
    return result;
}

static PyMethodDef methods[] = {
    {"mac_many", mac_many, METH_VARARGS, mac_many_doc},
    {"chain_append", chain_append, METH_VARARGS, chain_append_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "labvault.crypto._native",
    "HMAC-SHA256 of many messages under one key; the audit chain's append loop "
    "(OpenSSL SHA-256).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
