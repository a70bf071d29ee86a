/*
 * w2j_record: the fields of one wal2json format-version 2 record, read
 * straight from its JSON text. The twin of decoders/wal2json.py's
 * _record_fields_python, which reads them from the standard library's parse
 * (the reference); the tests hold the two to the same result.
 *
 * It returns a tuple (action, xid, lsn, nextlsn, timestamp, schema, table,
 * new, old, pk), or None for anything it does not take: a record that is
 * not Begin, Commit, Insert, Update or Delete, malformed JSON, a field of an
 * unexpected type, and what the standard library reads but this does not
 * (escaped keys, lone surrogates, NaN, duplicate keys, deep nesting...).
 * The Python decoder then decodes the record the reference way, which says
 * what is wrong. So it never raises for its input; only for memory.
 *
 *   action     "B", "C", "I", "U" or "D"
 *   xid        int, or None when absent or null
 *   lsn        int (the text X/Y read), or None when absent
 *   nextlsn    the same
 *   timestamp  str, or None when absent or null
 *   schema     str ("" when absent); table: str, or None when absent
 *   new, old   ("columns", "identity") a tuple (names, type OIDs, values) of
 *              a tuple of str, a tuple of int (0 when absent) and a list of
 *              values: str, bool, None, or a number as its text (as the
 *              standard library parses them with parse_int=str and
 *              parse_float=str); None when absent
 *   pk         a tuple of the key's column names, or None when absent
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>

#include "_speedups.h"

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
} Scan;

#define MAX_DEPTH 64

/* Bytes a string scan stops at: the quote, the backslash, controls and non-ASCII. */
static unsigned char special[256];

static void
init_special(void)
{
    for (int c = 0; c < 256; c++) {
        special[c] = c == '"' || c == '\\' || c < 0x20 || c >= 0x80;
    }
}

static void
skip_ws(Scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r')) {
        s->p++;
    }
}

/* Strict UTF-8 as Python decodes it: no overlong forms, no surrogates, at most U+10FFFF. */
static int
valid_utf8(const unsigned char *p, const unsigned char *end)
{
    while (p < end) {
        unsigned char c = *p;
        if (c < 0x80) {
            p++;
            continue;
        }
        Py_ssize_t n;
        unsigned int min;
        unsigned int cp;
        if (c >= 0xC2 && c <= 0xDF) {
            n = 1; min = 0x80; cp = c & 0x1F;
        }
        else if (c >= 0xE0 && c <= 0xEF) {
            n = 2; min = 0x800; cp = c & 0x0F;
        }
        else if (c >= 0xF0 && c <= 0xF4) {
            n = 3; min = 0x10000; cp = c & 0x07;
        }
        else {
            return 0;
        }
        if (end - p <= n) {
            return 0;
        }
        for (Py_ssize_t i = 1; i <= n; i++) {
            if ((p[i] & 0xC0) != 0x80) {
                return 0;
            }
            cp = (cp << 6) | (p[i] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
            return 0;
        }
        p += n + 1;
    }
    return 1;
}

static int
hex4(const unsigned char *p, unsigned int *out)
{
    unsigned int v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return 0;
    }
    *out = v;
    return 1;
}

/*
 * A string at s->p (its opening quote). With out == NULL it is checked and
 * skipped; otherwise *out gets the str. 1 on success, 0 to decline, -1 on
 * a Python error (memory).
 */
static int
read_string(Scan *s, PyObject **out)
{
    const unsigned char *start = s->p + 1;
    const unsigned char *p = start;
    int escaped = 0;
    int high = 0;
    while (1) {
        while (p < s->end && !special[*p]) p++;
        if (p >= s->end) return 0;
        unsigned char c = *p;
        if (c == '"') break;
        if (c < 0x20) return 0;
        if (c >= 0x80) {
            high = 1;
        }
        else { /* a backslash: the escaped byte is checked when resolved */
            escaped = 1;
            p++;
            if (p >= s->end) return 0;
        }
        p++;
    }
    const unsigned char *stop = p;
    s->p = p + 1;
    if (!escaped) {
        if (out == NULL) {
            return !high || valid_utf8(start, stop);
        }
        PyObject *text = PyUnicode_DecodeUTF8((const char *)start, stop - start, "strict");
        if (text == NULL) {
            if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                PyErr_Clear();
                return 0;
            }
            return -1;
        }
        *out = text;
        return 1;
    }
    if (high && !valid_utf8(start, stop)) return 0;
    /* Escapes: resolve them into UTF-8, then decode. */
    Py_ssize_t room = stop - start;
    char small[256];
    char *buffer = room <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc(room);
    if (buffer == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    char *w = buffer;
    int result = 0;
    for (p = start; p < stop; p++) {
        if (*p != '\\') {
            *w++ = (char)*p;
            continue;
        }
        p++;
        switch (*p) {
        case '"': *w++ = '"'; break;
        case '\\': *w++ = '\\'; break;
        case '/': *w++ = '/'; break;
        case 'b': *w++ = '\b'; break;
        case 'f': *w++ = '\f'; break;
        case 'n': *w++ = '\n'; break;
        case 'r': *w++ = '\r'; break;
        case 't': *w++ = '\t'; break;
        case 'u': {
            unsigned int cp;
            if (stop - p < 5 || !hex4(p + 1, &cp)) goto done;
            p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned int low;
                if (stop - p < 7 || p[1] != '\\' || p[2] != 'u' || !hex4(p + 3, &low)
                    || low < 0xDC00 || low > 0xDFFF) {
                    goto done; /* a lone surrogate: the standard library keeps it */
                }
                p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            }
            else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                goto done;
            }
            /* Never longer than the escape it replaces (6 or 12 bytes). */
            if (cp < 0x80) {
                *w++ = (char)cp;
            }
            else if (cp < 0x800) {
                *w++ = (char)(0xC0 | (cp >> 6));
                *w++ = (char)(0x80 | (cp & 0x3F));
            }
            else if (cp < 0x10000) {
                *w++ = (char)(0xE0 | (cp >> 12));
                *w++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                *w++ = (char)(0x80 | (cp & 0x3F));
            }
            else {
                *w++ = (char)(0xF0 | (cp >> 18));
                *w++ = (char)(0x80 | ((cp >> 12) & 0x3F));
                *w++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                *w++ = (char)(0x80 | (cp & 0x3F));
            }
            break;
        }
        default:
            goto done;
        }
    }
    if (out == NULL) {
        result = 1;
        goto done;
    }
    *out = PyUnicode_DecodeUTF8(buffer, w - buffer, "strict");
    if (*out == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            result = 0;
        }
        else {
            result = -1;
        }
    }
    else {
        result = 1;
    }
done:
    if (buffer != small) PyMem_Free(buffer);
    return result;
}

/* A number as the standard library's grammar has it; *integral: no fraction or exponent. */
static int
scan_number(Scan *s, int *integral)
{
    const unsigned char *p = s->p;
    const unsigned char *end = s->end;
    *integral = 1;
    if (p < end && *p == '-') p++;
    if (p >= end) return 0;
    if (*p == '0') {
        p++;
    }
    else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    else {
        return 0;
    }
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9') return 0;
        while (p < end && *p >= '0' && *p <= '9') p++;
        *integral = 0;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || *p < '0' || *p > '9') return 0;
        while (p < end && *p >= '0' && *p <= '9') p++;
        *integral = 0;
    }
    /* What follows must end the value; anything else ("01", "1.e5") the reference rejects. */
    if (p < end && !(*p == ',' || *p == '}' || *p == ']' || *p == ' ' || *p == '\t'
                     || *p == '\n' || *p == '\r')) {
        return 0;
    }
    s->p = p;
    return 1;
}

static int
literal(Scan *s, const char *word, Py_ssize_t n)
{
    if (s->end - s->p < n || memcmp(s->p, word, n) != 0) return 0;
    s->p += n;
    return 1;
}

static int skip_value(Scan *s, int depth);

static int
skip_container(Scan *s, int depth, unsigned char close)
{
    if (depth >= MAX_DEPTH) return 0;
    s->p++;
    skip_ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        return 1;
    }
    while (1) {
        if (close == '}') {
            if (s->p >= s->end || *s->p != '"') return 0;
            int r = read_string(s, NULL);
            if (r <= 0) return r;
            skip_ws(s);
            if (s->p >= s->end || *s->p != ':') return 0;
            s->p++;
            skip_ws(s);
        }
        int r = skip_value(s, depth + 1);
        if (r <= 0) return r;
        skip_ws(s);
        if (s->p >= s->end) return 0;
        if (*s->p == ',') {
            s->p++;
            skip_ws(s);
            continue;
        }
        if (*s->p == close) {
            s->p++;
            return 1;
        }
        return 0;
    }
}

/* Check and pass over any value (duplicate keys inside are the reference's business: it
 * keeps the last, and nothing here reads them). */
static int
skip_value(Scan *s, int depth)
{
    if (s->p >= s->end) return 0;
    int integral;
    switch (*s->p) {
    case '"': return read_string(s, NULL);
    case '{': return skip_container(s, depth, '}');
    case '[': return skip_container(s, depth, ']');
    case 't': return literal(s, "true", 4);
    case 'f': return literal(s, "false", 5);
    case 'n': return literal(s, "null", 4);
    default: return scan_number(s, &integral);
    }
}

/* A scalar column value into *out (new reference). */
static int
read_scalar(Scan *s, PyObject **out)
{
    if (s->p >= s->end) return 0;
    unsigned char c = *s->p;
    if (c == '"') return read_string(s, out);
    if (c == 't' || c == 'f' || c == 'n') {
        PyObject *v;
        if (literal(s, "true", 4)) v = Py_True;
        else if (literal(s, "false", 5)) v = Py_False;
        else if (literal(s, "null", 4)) v = Py_None;
        else return 0;
        Py_INCREF(v);
        *out = v;
        return 1;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        const unsigned char *start = s->p;
        int integral;
        if (!scan_number(s, &integral)) return 0;
        *out = PyUnicode_DecodeASCII((const char *)start, s->p - start, NULL);
        return *out == NULL ? -1 : 1;
    }
    return 0; /* an object or an array: the reference's */
}

/* A JSON integer (of at most 18 digits) into *value; other numbers and types decline. */
static int
scan_int(Scan *s, long long *value)
{
    const unsigned char *start = s->p;
    int integral;
    if (s->p >= s->end || !(*s->p == '-' || (*s->p >= '0' && *s->p <= '9'))) return 0;
    if (!scan_number(s, &integral) || !integral) return 0;
    const unsigned char *p = start;
    int negative = *p == '-';
    if (negative) p++;
    if (s->p - p > 18) return 0; /* huge: the reference's */
    long long v = 0;
    for (; p < s->p; p++) v = v * 10 + (*p - '0');
    *value = negative ? -v : v;
    return 1;
}

static int
read_int(Scan *s, PyObject **out)
{
    long long v;
    if (!scan_int(s, &v)) return 0;
    *out = PyLong_FromLongLong(v);
    return *out == NULL ? -1 : 1;
}

/* PostgreSQL's X/Y form, 1 to 8 hex digits each, exactly (as LSN.parse reads unstripped text). */
static int
read_lsn(Scan *s, PyObject **out)
{
    if (s->p >= s->end || *s->p != '"') return 0;
    const unsigned char *p = s->p + 1;
    unsigned long long halves[2] = {0, 0};
    for (int half = 0; half < 2; half++) {
        int digits = 0;
        while (p < s->end) {
            unsigned char c = *p;
            unsigned int d;
            if (c >= '0' && c <= '9') d = c - '0';
            else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
            else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
            else break;
            halves[half] = (halves[half] << 4) | d;
            digits++;
            p++;
        }
        if (digits < 1 || digits > 8 || p >= s->end) return 0;
        if (*p != (half == 0 ? '/' : '"')) return 0;
        p++;
    }
    s->p = p;
    *out = PyLong_FromUnsignedLongLong((halves[0] << 32) | halves[1]);
    return *out == NULL ? -1 : 1;
}

/* Compare a key (without escapes) to a name. */
#define KEY_IS(k, n, lit) ((n) == (Py_ssize_t)(sizeof(lit) - 1) && memcmp((k), (lit), (n)) == 0)

/* An object key at s->p, then its colon: *key and *n, 1; 0 declines (escaped keys too). */
static int
read_key(Scan *s, const unsigned char **key, Py_ssize_t *n)
{
    if (s->p >= s->end || *s->p != '"') return 0;
    const unsigned char *start = s->p + 1;
    const unsigned char *p = start;
    while (p < s->end && !special[*p]) p++;
    if (p >= s->end || *p != '"') return 0;
    *key = start;
    *n = p - start;
    s->p = p + 1;
    skip_ws(s);
    if (s->p >= s->end || *s->p != ':') return 0;
    s->p++;
    skip_ws(s);
    return 1;
}

/* After a member: ',' (1, more follow), '}' or ']' as close (2, the end), else 0. */
static int
after_member(Scan *s, unsigned char close)
{
    skip_ws(s);
    if (s->p >= s->end) return 0;
    if (*s->p == ',') {
        s->p++;
        skip_ws(s);
        return 1;
    }
    if (*s->p == close) {
        s->p++;
        return 2;
    }
    return 0;
}

/*
 * The shape (names and type OIDs) of the last "columns" and of the last
 * "identity" read: rows of a table come alike, so a record of the same shape
 * gets the same tuples (no new str per name, and the decoder's comparison of
 * the tuples with its cached ones stops at their identity).
 */
#define MAX_COLUMNS 1664 /* PostgreSQL's limit is 1600 */
typedef struct {
    PyObject *names; /* tuple of str, or NULL */
    PyObject *oids;  /* tuple of int */
    long long oid_values[MAX_COLUMNS];
} Shape;

static Shape shapes[2];

/* A column's name as its bytes when plain (no escape, ASCII), else as a str. */
typedef struct {
    const unsigned char *bytes;
    Py_ssize_t n;
    PyObject *text; /* new reference, or NULL when plain */
} Name;

static int
read_name(Scan *s, Name *name)
{
    if (s->p >= s->end || *s->p != '"') return 0;
    const unsigned char *start = s->p + 1;
    const unsigned char *p = start;
    while (p < s->end && !special[*p]) p++;
    if (p < s->end && *p == '"') {
        name->bytes = start;
        name->n = p - start;
        name->text = NULL;
        s->p = p + 1;
        return 1;
    }
    return read_string(s, &name->text);
}

static PyObject *
name_object(const Name *name)
{
    if (name->text != NULL) {
        Py_INCREF(name->text);
        return name->text;
    }
    return PyUnicode_DecodeASCII((const char *)name->bytes, name->n, NULL);
}

/* Is the plain name the same as the cached str? */
static int
same_name(const Name *name, PyObject *cached)
{
    if (name->text != NULL) {
        return PyUnicode_Compare(name->text, cached) == 0;
    }
    return PyUnicode_IS_COMPACT_ASCII(cached) && PyUnicode_GET_LENGTH(cached) == name->n
           && memcmp(PyUnicode_DATA(cached), name->bytes, name->n) == 0;
}

/* One {"name":..., "typeoid":..., "value":...} object. */
static int
read_column(Scan *s, Name *name, long long *oid, PyObject **value)
{
    if (s->p >= s->end || *s->p != '{') return 0;
    s->p++;
    skip_ws(s);
    int have_name = 0, have_oid = 0;
    *value = NULL;
    name->text = NULL;
    *oid = 0;
    if (s->p < s->end && *s->p == '}') return 0; /* no name: the reference's */
    while (1) {
        const unsigned char *key;
        Py_ssize_t n;
        int r;
        if (!read_key(s, &key, &n)) goto decline;
        if (KEY_IS(key, n, "name")) {
            if (have_name) goto decline;
            r = read_name(s, name);
            have_name = 1;
        }
        else if (KEY_IS(key, n, "typeoid")) {
            if (have_oid) goto decline;
            r = scan_int(s, oid);
            have_oid = 1;
        }
        else if (KEY_IS(key, n, "value")) {
            if (*value != NULL) goto decline;
            r = read_scalar(s, value);
        }
        else {
            r = skip_value(s, 2);
        }
        if (r <= 0) {
            Py_CLEAR(name->text);
            Py_CLEAR(*value);
            return r;
        }
        r = after_member(s, '}');
        if (r == 0) goto decline;
        if (r == 2) break;
    }
    if (!have_name) goto decline;
    if (*value == NULL) {
        Py_INCREF(Py_None);
        *value = Py_None;
    }
    return 1;
decline:
    Py_CLEAR(name->text);
    Py_CLEAR(*value);
    return 0;
}

/* An array of columns into *out: (names, oids, values). */
static int
read_columns(Scan *s, PyObject **out, Shape *shape)
{
    if (s->p >= s->end || *s->p != '[') return 0;
    s->p++;
    skip_ws(s);
    PyObject *values = PyList_New(0);
    PyObject *names = NULL; /* a list, once the names differ from the cached ones */
    Py_ssize_t cached = shape->names == NULL ? 0 : PyTuple_GET_SIZE(shape->names);
    long long read_oids[MAX_COLUMNS];
    int result = -1;
    Py_ssize_t count = 0;
    if (values == NULL) return -1;
    if (s->p < s->end && *s->p == ']') {
        s->p++;
    }
    else {
        while (1) {
            Name name;
            long long oid;
            PyObject *value;
            int r = read_column(s, &name, &oid, &value);
            if (r <= 0) {
                result = r;
                goto done;
            }
            if (count >= MAX_COLUMNS) {
                Py_XDECREF(name.text);
                Py_DECREF(value);
                result = 0;
                goto done;
            }
            r = PyList_Append(values, value);
            Py_DECREF(value);
            if (r < 0) {
                Py_XDECREF(name.text);
                goto done;
            }
            if (names == NULL
                && !(count < cached && same_name(&name, PyTuple_GET_ITEM(shape->names, count)))) {
                names = PyList_New(0);
                if (names == NULL) {
                    Py_XDECREF(name.text);
                    goto done;
                }
                for (Py_ssize_t i = 0; i < count; i++) {
                    if (PyList_Append(names, PyTuple_GET_ITEM(shape->names, i)) < 0) {
                        Py_XDECREF(name.text);
                        goto done;
                    }
                }
            }
            if (names != NULL) {
                PyObject *text = name_object(&name);
                if (text == NULL || PyList_Append(names, text) < 0) {
                    Py_XDECREF(text);
                    Py_XDECREF(name.text);
                    goto done;
                }
                Py_DECREF(text);
            }
            Py_XDECREF(name.text);
            read_oids[count] = oid;
            count++;
            r = after_member(s, ']');
            if (r == 0) {
                result = 0;
                goto done;
            }
            if (r == 2) break;
        }
    }
    if (names == NULL && count != cached) {
        /* Fewer names than cached (or none cached): the first count of them. */
        names = PyList_New(0);
        if (names == NULL) goto done;
        for (Py_ssize_t i = 0; i < count; i++) {
            if (PyList_Append(names, PyTuple_GET_ITEM(shape->names, i)) < 0) goto done;
        }
    }
    int same_oids = count == cached
                    && memcmp(read_oids, shape->oid_values, sizeof(long long) * count) == 0;
    if (names != NULL || !same_oids) {
        /* A new shape: it becomes the cached one. */
        PyObject *name_tuple = names != NULL ? PyList_AsTuple(names) : Py_NewRef(shape->names);
        PyObject *oid_tuple = name_tuple == NULL ? NULL : PyTuple_New(count);
        if (oid_tuple == NULL) {
            Py_XDECREF(name_tuple);
            goto done;
        }
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *number = PyLong_FromLongLong(read_oids[i]);
            if (number == NULL) {
                Py_DECREF(name_tuple);
                Py_DECREF(oid_tuple);
                goto done;
            }
            PyTuple_SET_ITEM(oid_tuple, i, number);
        }
        memcpy(shape->oid_values, read_oids, sizeof(long long) * count);
        Py_XSETREF(shape->names, name_tuple);
        Py_XSETREF(shape->oids, oid_tuple);
    }
    if (count == 0 && shape->names == NULL) {
        shape->names = PyTuple_New(0);
        shape->oids = PyTuple_New(0);
        if (shape->names == NULL || shape->oids == NULL) {
            Py_CLEAR(shape->names);
            Py_CLEAR(shape->oids);
            goto done;
        }
    }
    *out = PyTuple_Pack(3, shape->names, shape->oids, values);
    result = *out == NULL ? -1 : 1;
done:
    Py_XDECREF(names);
    Py_DECREF(values);
    return result;
}

static PyObject *last_pk; /* the last pk tuple: rows of a table give the same */

/* [{"name": ...}, ...] into a tuple of the names. */
static int
read_pk(Scan *s, PyObject **out)
{
    if (s->p >= s->end || *s->p != '[') return 0;
    s->p++;
    skip_ws(s);
    PyObject *names = PyList_New(0);
    if (names == NULL) return -1;
    int result = 0;
    if (s->p < s->end && *s->p == ']') {
        s->p++;
    }
    else {
        while (1) {
            if (s->p >= s->end || *s->p != '{') goto done;
            s->p++;
            skip_ws(s);
            PyObject *name = NULL;
            int r = 0;
            if (s->p < s->end && *s->p == '}') goto done;
            while (1) {
                const unsigned char *key;
                Py_ssize_t n;
                if (!read_key(s, &key, &n)) {
                    r = 0;
                    break;
                }
                if (KEY_IS(key, n, "name")) {
                    if (name != NULL || s->p >= s->end || *s->p != '"') {
                        r = 0;
                        break;
                    }
                    r = read_string(s, &name);
                }
                else {
                    r = skip_value(s, 2);
                }
                if (r <= 0) break;
                r = after_member(s, '}');
                if (r != 1) break;
            }
            if (r == 2 && name != NULL) {
                r = PyList_Append(names, name) < 0 ? -1 : 1;
            }
            else if (r == 2) {
                r = 0;
            }
            Py_XDECREF(name);
            if (r <= 0) {
                result = r;
                goto done;
            }
            r = after_member(s, ']');
            if (r == 0) goto done;
            if (r == 2) break;
        }
    }
    {
        Py_ssize_t n = PyList_GET_SIZE(names);
        int same = last_pk != NULL && PyTuple_GET_SIZE(last_pk) == n;
        for (Py_ssize_t i = 0; same && i < n; i++) {
            PyObject *a = PyList_GET_ITEM(names, i), *b = PyTuple_GET_ITEM(last_pk, i);
            same = a == b || PyUnicode_Compare(a, b) == 0;
        }
        if (same) {
            *out = Py_NewRef(last_pk);
            result = 1;
            goto done;
        }
    }
    *out = PyList_AsTuple(names);
    result = *out == NULL ? -1 : 1;
    if (*out != NULL) Py_XSETREF(last_pk, Py_NewRef(*out));
done:
    Py_DECREF(names);
    return result;
}

/* A string, reusing *cache (the last one read here) when it has the same plain text. */
static int
read_cached_string(Scan *s, PyObject **cache, PyObject **out)
{
    Name name;
    int r = read_name(s, &name);
    if (r <= 0) return r;
    if (name.text == NULL && *cache != NULL && same_name(&name, *cache)) {
        Py_INCREF(*cache);
        *out = *cache;
        return 1;
    }
    *out = name_object(&name);
    Py_XDECREF(name.text);
    if (*out == NULL) return -1;
    Py_INCREF(*out);
    Py_XSETREF(*cache, *out);
    return 1;
}

static PyObject *last_strings[3]; /* timestamp, schema, table */

enum { F_ACTION, F_XID, F_LSN, F_NEXTLSN, F_TIMESTAMP, F_SCHEMA, F_TABLE, F_NEW, F_OLD, F_PK, F_COUNT };

static PyObject *
w2j_record(PyObject *self, PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        Py_RETURN_NONE; /* the reference path reads what it can */
    }
    Scan s = {(const unsigned char *)PyBytes_AS_STRING(arg),
              (const unsigned char *)PyBytes_AS_STRING(arg) + PyBytes_GET_SIZE(arg)};
    PyObject *fields[F_COUNT] = {NULL};
    int r = 0;
    if (s.p >= s.end || *s.p != '{') goto decline;
    s.p++;
    skip_ws(&s);
    if (s.p < s.end && *s.p == '}') goto decline; /* no action */
    while (1) {
        const unsigned char *key;
        Py_ssize_t n;
        int field = -1;
        if (!read_key(&s, &key, &n)) goto decline;
        switch (n) {
        case 3:
            if (KEY_IS(key, n, "xid")) field = F_XID;
            else if (KEY_IS(key, n, "lsn")) field = F_LSN;
            break;
        case 2:
            if (KEY_IS(key, n, "pk")) field = F_PK;
            break;
        case 5:
            if (KEY_IS(key, n, "table")) field = F_TABLE;
            break;
        case 6:
            if (KEY_IS(key, n, "action")) field = F_ACTION;
            else if (KEY_IS(key, n, "schema")) field = F_SCHEMA;
            break;
        case 7:
            if (KEY_IS(key, n, "columns")) field = F_NEW;
            else if (KEY_IS(key, n, "nextlsn")) field = F_NEXTLSN;
            break;
        case 8:
            if (KEY_IS(key, n, "identity")) field = F_OLD;
            break;
        case 9:
            if (KEY_IS(key, n, "timestamp")) field = F_TIMESTAMP;
            break;
        }
        if (field < 0) {
            r = skip_value(&s, 1);
        }
        else if (fields[field] != NULL) {
            goto decline; /* a duplicate key */
        }
        else if (s.p < s.end && *s.p == 'n' && (field == F_XID || field == F_TIMESTAMP)) {
            /* null: as if absent, for these two */
            r = literal(&s, "null", 4);
            if (r) {
                Py_INCREF(Py_None);
                fields[field] = Py_None;
            }
        }
        else {
            switch (field) {
            case F_XID: r = read_int(&s, &fields[field]); break;
            case F_LSN:
            case F_NEXTLSN: r = read_lsn(&s, &fields[field]); break;
            case F_NEW: r = read_columns(&s, &fields[field], &shapes[0]); break;
            case F_OLD: r = read_columns(&s, &fields[field], &shapes[1]); break;
            case F_PK: r = read_pk(&s, &fields[field]); break;
            case F_TIMESTAMP:
                r = read_cached_string(&s, &last_strings[0], &fields[field]);
                break;
            case F_SCHEMA: r = read_cached_string(&s, &last_strings[1], &fields[field]); break;
            case F_TABLE: r = read_cached_string(&s, &last_strings[2], &fields[field]); break;
            default:
                r = s.p < s.end && *s.p == '"' ? read_string(&s, &fields[field]) : 0;
            }
        }
        if (r <= 0) goto decline;
        r = after_member(&s, '}');
        if (r == 0) goto decline;
        if (r == 2) break;
    }
    skip_ws(&s);
    if (s.p != s.end) goto decline; /* trailing text: the reference decides */
    {
        PyObject *action = fields[F_ACTION];
        if (action == NULL || PyUnicode_GET_LENGTH(action) != 1) goto decline;
        Py_UCS4 a = PyUnicode_READ_CHAR(action, 0);
        if (a != 'B' && a != 'C' && a != 'I' && a != 'U' && a != 'D') goto decline;
    }
    if (fields[F_SCHEMA] == NULL) {
        fields[F_SCHEMA] = PyUnicode_FromStringAndSize("", 0);
        if (fields[F_SCHEMA] == NULL) goto error;
    }
    PyObject *result = PyTuple_New(F_COUNT);
    if (result == NULL) goto error;
    for (int i = 0; i < F_COUNT; i++) {
        PyObject *v = fields[i] != NULL ? fields[i] : Py_None;
        if (fields[i] == NULL) Py_INCREF(v);
        PyTuple_SET_ITEM(result, i, v);
    }
    return result;
decline:
    if (r < 0) goto error;
    for (int i = 0; i < F_COUNT; i++) Py_XDECREF(fields[i]);
    Py_RETURN_NONE;
error:
    for (int i = 0; i < F_COUNT; i++) Py_XDECREF(fields[i]);
    return NULL;
}

PyDoc_STRVAR(w2j_record_doc,
"w2j_record(data)\n"
"--\n\n"
"The fields of a wal2json format 2 Begin, Commit, Insert, Update or Delete\n"
"record, or None for anything else (see decoders/wal2json.py's\n"
"_record_fields_python, the reference).");

static PyMethodDef w2j_methods[] = {
    {"w2j_record", (PyCFunction)w2j_record, METH_O, w2j_record_doc},
    {NULL, NULL, 0, NULL},
};

int
replicant_w2j_exec(PyObject *module)
{
    init_special();
    return PyModule_AddFunctions(module, w2j_methods);
}
