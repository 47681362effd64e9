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

static PyMethodDef methods[] = {
    {"mac_many", mac_many, METH_VARARGS, mac_many_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "labvault.crypto._native",
    "HMAC-SHA256 of many messages under one key (OpenSSL SHA-256).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
