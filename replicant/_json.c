/*
 * replicant._speedups, part: JSON.
 *
 *   JsonWriter  the compiled twin of formatting.py's json_line (and of the
 *               row encoding envelopes.py does): the JSON of a row event
 *               written straight from its row's values as received, no
 *               Python value made per column.
 *
 * A row's JSON object is written column by column following its layout's
 * plan (formatting.py's _json_plan: one code per column, from its type,
 * representation, converter and JSON form, and each column's key already
 * encoded). A column is written here only when the value as received is
 * certain to give exactly what the reference writes (Row.to_dict and
 * json.dumps with ensure_ascii=False), and certain not to raise: a
 * malformed integer, a month 13, a BC date, a year past 9999, a float the
 * server writes oddly, ... go to the Python code for that one column
 * (`column(row, i, debezium)`: the column's JSON text, or the exception the
 * reference raises). What cannot be written as UTF-8 at all (a lone
 * surrogate in a str) makes the whole line or row go the Python way
 * (`line_exact(event)`, `row_slow(row, debezium)`), which then raises what
 * the reference raises, in the reference's order.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_speedups.h"

/* The plan's codes, one per column (formatting.py names the same numbers). */
enum {
    J_FALLBACK = 0,   /* the Python code writes it */
    J_INT_TEXT = 1,   /* int2/int4/int8/oid text (bytes or str): int(text) */
    J_STR_UTF8 = 2,   /* text types, bytes decoded as strict UTF-8 */
    J_STR_KEEP = 3,   /* text types given as str (wal2json) */
    J_BOOL_TEXT = 4,  /* "t"/"f" (bytes or str) */
    J_BOOL_ANY = 5,   /* wal2json's: True/False, or "t"/"f" */
    J_FLOAT = 6,      /* float4/float8: the converter's float, written as repr() */
    J_NUMERIC_TEXT = 7,
    J_DATE_TEXT = 8,
    J_TIMESTAMP_TEXT = 9,
    J_TIMESTAMPTZ_TEXT = 10,
    J_UUID_TEXT = 11,
    J_JSON_TEXT = 12, /* json and jsonb: {"$json": text} */
    J_BYTEA_TEXT = 13,  /* \x hex */
    J_BYTEA_HEX = 14,   /* wal2json: hex digits as str */
    J_INT2_BIN = 20,
    J_INT4_BIN = 21,
    J_INT8_BIN = 22,
    J_OID_BIN = 23,
    J_BOOL_BIN = 24,
    J_NUMERIC_BIN = 25,
    J_DATE_BIN = 26,
    J_TIMESTAMP_BIN = 27,
    J_TIMESTAMPTZ_BIN = 28,
    J_UUID_BIN = 29,
    J_JSON_BIN = 30,
    J_JSONB_BIN = 31,
    J_BYTEA_BIN = 32,
};

/* --- an output buffer ------------------------------------------------------ */

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
    char local[1024];
} Buf;

static void
buf_init(Buf *b)
{
    b->data = b->local;
    b->len = 0;
    b->cap = (Py_ssize_t)sizeof(b->local);
}

static void
buf_free(Buf *b)
{
    if (b->data != b->local) {
        PyMem_Free(b->data);
    }
}

/* Room for `more` bytes: 0, or -1 with MemoryError set. */
static int
buf_reserve(Buf *b, Py_ssize_t more)
{
    if (b->cap - b->len >= more) {
        return 0;
    }
    if (more > PY_SSIZE_T_MAX / 2 - b->len) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t cap = b->cap * 2;
    if (cap < b->len + more) {
        cap = b->len + more;
    }
    char *data;
    if (b->data == b->local) {
        data = PyMem_Malloc((size_t)cap);
        if (data != NULL) {
            memcpy(data, b->local, (size_t)b->len);
        }
    }
    else {
        data = PyMem_Realloc(b->data, (size_t)cap);
    }
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static int
buf_put(Buf *b, const char *s, Py_ssize_t n)
{
    if (buf_reserve(b, n) < 0) {
        return -1;
    }
    memcpy(b->data + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

#define PUT_LITERAL(b, s) buf_put((b), (s), (Py_ssize_t)(sizeof(s) - 1))

/* "s" as a JSON string, for text that needs no escaping (ASCII the code wrote
 * or checked): 0, or -1 with MemoryError set. */
static int
put_quoted(Buf *b, const void *s, Py_ssize_t n)
{
    if (buf_reserve(b, n + 2) < 0) {
        return -1;
    }
    b->data[b->len++] = '"';
    memcpy(b->data + b->len, s, (size_t)n);
    b->len += n;
    b->data[b->len++] = '"';
    return 0;
}

/* Decimal digits of v (any sign). */
static int
buf_put_i64(Buf *b, int64_t v)
{
    char digits[24];
    int n = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        digits[sizeof(digits) - 1 - n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) {
        digits[sizeof(digits) - 1 - n++] = '-';
    }
    return buf_put(b, digits + sizeof(digits) - n, n);
}

/* "%X" of v. */
static void
hex_upper(char *out, int *n, uint32_t v)
{
    static const char hex[] = "0123456789ABCDEF";
    char tmp[8];
    int k = 0;
    do {
        tmp[k++] = hex[v & 15];
        v >>= 4;
    } while (v);
    for (int i = 0; i < k; i++) {
        out[*n + i] = tmp[k - 1 - i];
    }
    *n += k;
}

/* --- UTF-8 and JSON strings ------------------------------------------------- */

/* The length of the valid UTF-8 sequence at s (s[0] >= 0x80) as Python's
 * strict decoder reads it (no surrogates, no overlong forms, at most
 * U+10FFFF), or 0. */
static Py_ssize_t
utf8_sequence(const unsigned char *s, Py_ssize_t left)
{
    unsigned int c = s[0];
    if (c < 0xC2) {
        return 0;
    }
    if (c < 0xE0) {
        return (left >= 2 && (s[1] & 0xC0) == 0x80) ? 2 : 0;
    }
    if (c < 0xF0) {
        if (left < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) {
            return 0;
        }
        if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] >= 0xA0)) {
            return 0;
        }
        return 3;
    }
    if (c < 0xF5) {
        if (left < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80
            || (s[3] & 0xC0) != 0x80) {
            return 0;
        }
        if ((c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] >= 0x90)) {
            return 0;
        }
        return 4;
    }
    return 0;
}

/* Append the JSON string (quotes included) json.dumps(ensure_ascii=False)
 * writes for the text s holds in UTF-8. With `check`, s must be valid
 * UTF-8 (else 1 is returned, nothing set); without, it is known to be.
 * 0 on success, -1 with an exception set. */
static int
put_string(Buf *b, const unsigned char *s, Py_ssize_t n, int check)
{
    static const char hex[] = "0123456789abcdef";
    Py_ssize_t start = b->len;
    if (buf_reserve(b, n + 2) < 0) {
        return -1;
    }
    b->data[b->len++] = '"';
    Py_ssize_t i = 0;
    while (i < n) {
        Py_ssize_t run = i;
        while (run < n) {
            unsigned char c = s[run];
            if (c < 0x20 || c == '"' || c == '\\') {
                break;
            }
            if (c >= 0x80 && check) {
                Py_ssize_t k = utf8_sequence(s + run, n - run);
                if (k == 0) {
                    b->len = start;
                    return 1;
                }
                run += k;
            }
            else {
                run++;
            }
        }
        if (run > i) {
            if (buf_put(b, (const char *)s + i, run - i) < 0) {
                return -1;
            }
            i = run;
        }
        if (i >= n) {
            break;
        }
        unsigned char c = s[i++];
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        Py_ssize_t k = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            k = 6;
        }
        if (buf_put(b, esc, k) < 0) {
            return -1;
        }
    }
    if (buf_reserve(b, 1) < 0) {
        return -1;
    }
    b->data[b->len++] = '"';
    return 0;
}

/* The UTF-8 of a str: 0 with *s and *n set, 1 when it has none (a lone
 * surrogate: no exception left set). */
static int
str_utf8(PyObject *text, const unsigned char **s, Py_ssize_t *n)
{
    const char *u = PyUnicode_AsUTF8AndSize(text, n);
    if (u == NULL) {
        PyErr_Clear();
        return 1;
    }
    *s = (const unsigned char *)u;
    return 0;
}

/* --- what Python's json.loads(str) certainly accepts ---------------------------- */

#define JSON_MAX_DEPTH 200
#define MAX_INT_DIGITS 4000 /* int() refuses more than sys.get_int_max_str_digits() (4300) */

static Py_ssize_t json_value_end(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, int depth);

static Py_ssize_t
json_ws(const unsigned char *s, Py_ssize_t n, Py_ssize_t i)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) {
        i++;
    }
    return i;
}

static int
is_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* The end of the JSON string at s[i] == '"', or -1. */
static Py_ssize_t
json_string_end(const unsigned char *s, Py_ssize_t n, Py_ssize_t i)
{
    i++;
    while (i < n) {
        unsigned char c = s[i];
        if (c == '"') {
            return i + 1;
        }
        if (c < 0x20) {
            return -1;
        }
        if (c == '\\') {
            if (i + 1 >= n) {
                return -1;
            }
            unsigned char e = s[i + 1];
            if (e == 'u') {
                if (i + 5 >= n || !is_hex(s[i + 2]) || !is_hex(s[i + 3]) || !is_hex(s[i + 4])
                    || !is_hex(s[i + 5])) {
                    return -1;
                }
                i += 6;
            }
            else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n'
                     || e == 'r' || e == 't') {
                i += 2;
            }
            else {
                return -1;
            }
        }
        else if (c >= 0x80) {
            Py_ssize_t k = utf8_sequence(s + i, n - i);
            if (k == 0) {
                return -1;
            }
            i += k;
        }
        else {
            i++;
        }
    }
    return -1;
}

static Py_ssize_t
json_number_end(const unsigned char *s, Py_ssize_t n, Py_ssize_t i)
{
    if (s[i] == '-') {
        i++;
    }
    Py_ssize_t digits = i;
    if (i < n && s[i] == '0') {
        i++;
    }
    else if (i < n && s[i] >= '1' && s[i] <= '9') {
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            i++;
        }
    }
    else {
        return -1; /* "-Infinity", or not a number: the Python code decides */
    }
    Py_ssize_t whole = i - digits;
    int real = 0;
    if (i + 1 < n && s[i] == '.' && s[i + 1] >= '0' && s[i + 1] <= '9') {
        i += 2;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            i++;
        }
        real = 1;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        Py_ssize_t e = i + 1;
        if (e < n && (s[e] == '+' || s[e] == '-')) {
            e++;
        }
        if (e < n && s[e] >= '0' && s[e] <= '9') {
            while (e < n && s[e] >= '0' && s[e] <= '9') {
                e++;
            }
            i = e;
            real = 1;
        }
    }
    if (!real && whole > MAX_INT_DIGITS) {
        return -1;
    }
    return i;
}

static Py_ssize_t
json_value_end(const unsigned char *s, Py_ssize_t n, Py_ssize_t i, int depth)
{
    if (i >= n) {
        return -1;
    }
    unsigned char c = s[i];
    if (c == '{' || c == '[') {
        unsigned char close = c == '{' ? '}' : ']';
        if (depth >= JSON_MAX_DEPTH) {
            return -1;
        }
        i = json_ws(s, n, i + 1);
        if (i < n && s[i] == close) {
            return i + 1;
        }
        for (;;) {
            if (c == '{') {
                if (i >= n || s[i] != '"') {
                    return -1;
                }
                i = json_string_end(s, n, i);
                if (i < 0) {
                    return -1;
                }
                i = json_ws(s, n, i);
                if (i >= n || s[i] != ':') {
                    return -1;
                }
                i = json_ws(s, n, i + 1);
            }
            i = json_value_end(s, n, i, depth + 1);
            if (i < 0) {
                return -1;
            }
            i = json_ws(s, n, i);
            if (i >= n) {
                return -1;
            }
            if (s[i] == close) {
                return i + 1;
            }
            if (s[i] != ',') {
                return -1;
            }
            i = json_ws(s, n, i + 1);
        }
    }
    if (c == '"') {
        return json_string_end(s, n, i);
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        return json_number_end(s, n, i);
    }
    if (c == 't' && n - i >= 4 && memcmp(s + i, "true", 4) == 0) {
        return i + 4;
    }
    if (c == 'f' && n - i >= 5 && memcmp(s + i, "false", 5) == 0) {
        return i + 5;
    }
    if (c == 'n' && n - i >= 4 && memcmp(s + i, "null", 4) == 0) {
        return i + 4;
    }
    return -1; /* NaN, Infinity or malformed: the Python code decides */
}

/* 1 when json.loads certainly reads the text s holds (valid UTF-8 too). */
static int
json_certain(const unsigned char *s, Py_ssize_t n)
{
    Py_ssize_t i = json_value_end(s, n, json_ws(s, n, 0), 0);
    return i >= 0 && json_ws(s, n, i) == n;
}

/* --- values ------------------------------------------------------------------ */

/* -?(0|[1-9][0-9]*), not "-0", at most MAX_INT_DIGITS digits: what int()
 * reads to the same digits. */
static int
plain_int(const unsigned char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    if (n > 0 && s[0] == '-') {
        i = 1;
    }
    if (i >= n || n - i > MAX_INT_DIGITS) {
        return 0;
    }
    if (s[i] == '0') {
        return n == 1;
    }
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return 0;
        }
    }
    return 1;
}

/* Numeric text Decimal() certainly reads: -?D+(.D+)?([eE][+-]?D{1,9})?,
 * NaN, Infinity, -Infinity. */
static int
plain_numeric(const unsigned char *s, Py_ssize_t n)
{
    if ((n == 3 && memcmp(s, "NaN", 3) == 0) || (n == 8 && memcmp(s, "Infinity", 8) == 0)
        || (n == 9 && memcmp(s, "-Infinity", 9) == 0)) {
        return 1;
    }
    Py_ssize_t i = 0;
    if (n > 0 && s[0] == '-') {
        i = 1;
    }
    Py_ssize_t start = i;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        i++;
    }
    if (i == start) {
        return 0;
    }
    if (i < n && s[i] == '.') {
        Py_ssize_t f = ++i;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            i++;
        }
        if (i == f) {
            return 0;
        }
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) {
            i++;
        }
        Py_ssize_t e = i;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            i++;
        }
        if (i == e || i - e > 9) {
            return 0;
        }
    }
    return i == n;
}

static int
two_digits(const unsigned char *s, int *v)
{
    if (s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9') {
        return 0;
    }
    *v = (s[0] - '0') * 10 + (s[1] - '0');
    return 1;
}

static int
is_leap(int year)
{
    return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
}

static int
month_days(int year, int month)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return month == 2 && is_leap(year) ? 29 : days[month - 1];
}

/* YYYY-MM-DD with a date datetime can hold (years 1 to 9999). */
static int
parse_day(const unsigned char *s, Py_ssize_t n)
{
    int c, y, m, d;
    if (n < 10 || s[4] != '-' || s[7] != '-' || !two_digits(s, &c) || !two_digits(s + 2, &y)
        || !two_digits(s + 5, &m) || !two_digits(s + 8, &d)) {
        return 0;
    }
    y += c * 100;
    return y >= 1 && m >= 1 && m <= 12 && d >= 1 && d <= month_days(y, m);
}

/* HH:MM:SS[.F{1,6}] at s: its length, or 0. *micro gets the fraction in
 * microseconds. */
static Py_ssize_t
parse_clock(const unsigned char *s, Py_ssize_t n, long *micro)
{
    int h, m, sec;
    if (n < 8 || s[2] != ':' || s[5] != ':' || !two_digits(s, &h) || !two_digits(s + 3, &m)
        || !two_digits(s + 6, &sec) || h > 23 || m > 59 || sec > 59) {
        return 0;
    }
    *micro = 0;
    Py_ssize_t i = 8;
    if (i < n && s[i] == '.') {
        i++;
        int count = 0;
        long us = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9' && count < 7) {
            us = us * 10 + (s[i] - '0');
            count++;
            i++;
        }
        if (count == 0 || count > 6) {
            return 0;
        }
        for (; count < 6; count++) {
            us *= 10;
        }
        *micro = us;
    }
    return i;
}

static int
put_micro(Buf *b, long us)
{
    char text[7];
    text[0] = '.';
    for (int k = 6; k >= 1; k--) {
        text[k] = (char)('0' + us % 10);
        us /= 10;
    }
    return buf_put(b, text, 7);
}

/* The server's date/timestamp text rewritten as datetime.isoformat() writes
 * the value fromisoformat reads from it: 0 done, 1 not certain, -1 error. */
static int
put_datetime_text(Buf *b, const unsigned char *s, Py_ssize_t n, int code)
{
    if ((n == 8 && memcmp(s, "infinity", 8) == 0) || (n == 9 && memcmp(s, "-infinity", 9) == 0)) {
        /* values._json_text_infinity: the server's word (the value reads as
         * the type's extreme) */
        return put_quoted(b, s, n);
    }
    if (!parse_day(s, n)) {
        return 1;
    }
    if (code == J_DATE_TEXT) {
        return n != 10 ? 1 : put_quoted(b, s, 10);
    }
    if (n < 19 || s[10] != ' ') {
        return 1;
    }
    long us;
    Py_ssize_t clock = parse_clock(s + 11, n - 11, &us);
    if (clock == 0) {
        return 1;
    }
    Py_ssize_t i = 11 + clock;
    char zone[10];
    int zone_len = 0;
    if (code == J_TIMESTAMPTZ_TEXT) {
        /* [+-]HH[:MM[:SS]] */
        int h, m = 0, sec = 0;
        if (i + 3 > n || (s[i] != '+' && s[i] != '-') || !two_digits(s + i + 1, &h) || h > 23) {
            return 1;
        }
        char sign = (char)s[i];
        i += 3;
        if (i < n && s[i] == ':') {
            if (i + 3 > n || !two_digits(s + i + 1, &m) || m > 59) {
                return 1;
            }
            i += 3;
            if (i < n && s[i] == ':') {
                if (i + 3 > n || !two_digits(s + i + 1, &sec) || sec > 59) {
                    return 1;
                }
                i += 3;
            }
        }
        if (h == 0 && m == 0 && sec == 0) {
            sign = '+'; /* a zero offset is UTC: "+00:00", whatever its sign */
        }
        zone[zone_len++] = sign;
        zone[zone_len++] = (char)('0' + h / 10);
        zone[zone_len++] = (char)('0' + h % 10);
        zone[zone_len++] = ':';
        zone[zone_len++] = (char)('0' + m / 10);
        zone[zone_len++] = (char)('0' + m % 10);
        if (sec) {
            zone[zone_len++] = ':';
            zone[zone_len++] = (char)('0' + sec / 10);
            zone[zone_len++] = (char)('0' + sec % 10);
        }
    }
    if (i != n) {
        return 1; /* " BC", another style: the Python code */
    }
    if (buf_reserve(b, 40) < 0) {
        return -1;
    }
    char *out = b->data + b->len;
    out[0] = '"';
    memcpy(out + 1, s, 10);
    out[11] = 'T';
    memcpy(out + 12, s + 11, 8);
    b->len += 20;
    if (us && put_micro(b, us) < 0) {
        return -1;
    }
    if (buf_put(b, zone, zone_len) < 0 || PUT_LITERAL(b, "\"") < 0) {
        return -1;
    }
    return 0;
}

/* (year, month, day) `days` after 1970-01-01 (proleptic Gregorian). */
static void
civil_from_days(int64_t days, int64_t *year, int *month, int *day)
{
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = yoe + era * 400;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *day = (int)(doy - (153 * mp + 2) / 5 + 1);
    *month = (int)(mp < 10 ? mp + 3 : mp - 9);
    *year = y + (*month <= 2);
}

#define DAYS_1970_TO_2000 10957

static int64_t
read_i64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int k = 0; k < 8; k++) {
        v = (v << 8) | p[k];
    }
    return (int64_t)v;
}

static int32_t
read_i32(const unsigned char *p)
{
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8)
                     | p[3]);
}

static int
put_ymd(Buf *b, int64_t year, int month, int day)
{
    char text[10] = {(char)('0' + year / 1000), (char)('0' + year / 100 % 10),
                     (char)('0' + year / 10 % 10), (char)('0' + year % 10), '-',
                     (char)('0' + month / 10), (char)('0' + month % 10), '-',
                     (char)('0' + day / 10), (char)('0' + day % 10)};
    return buf_put(b, text, 10);
}

/* A binary date/timestamp as the reference writes it: 0 done, 1 not
 * certain (out of datetime's range: a PgValue), -1 error. */
static int
put_datetime_bin(Buf *b, const unsigned char *s, Py_ssize_t n, int code)
{
    int64_t days, rest = 0;
    if (code == J_DATE_BIN) {
        if (n != 4) {
            return 1;
        }
        int32_t v = read_i32(s);
        if (v == INT32_MAX) {
            return PUT_LITERAL(b, "\"infinity\"");
        }
        if (v == INT32_MIN) {
            return PUT_LITERAL(b, "\"-infinity\"");
        }
        days = v;
    }
    else {
        if (n != 8) {
            return 1;
        }
        int64_t v = read_i64(s);
        if (v == INT64_MAX) {
            return PUT_LITERAL(b, "\"infinity\"");
        }
        if (v == INT64_MIN) {
            return PUT_LITERAL(b, "\"-infinity\"");
        }
        const int64_t per_day = INT64_C(86400000000);
        days = v / per_day;
        rest = v % per_day;
        if (rest < 0) {
            rest += per_day;
            days -= 1;
        }
    }
    int64_t year;
    int month, day;
    civil_from_days(days + DAYS_1970_TO_2000, &year, &month, &day);
    if (year < 1 || year > 9999) {
        return 1;
    }
    if (PUT_LITERAL(b, "\"") < 0 || put_ymd(b, year, month, day) < 0) {
        return -1;
    }
    if (code != J_DATE_BIN) {
        int64_t seconds = rest / 1000000;
        long us = (long)(rest % 1000000);
        int h = (int)(seconds / 3600), m = (int)(seconds / 60 % 60), sec = (int)(seconds % 60);
        char clock[9] = {'T', (char)('0' + h / 10), (char)('0' + h % 10), ':',
                         (char)('0' + m / 10), (char)('0' + m % 10), ':',
                         (char)('0' + sec / 10), (char)('0' + sec % 10)};
        if (buf_put(b, clock, 9) < 0 || (us && put_micro(b, us) < 0)) {
            return -1;
        }
        if (code == J_TIMESTAMPTZ_BIN && PUT_LITERAL(b, "+00:00") < 0) {
            return -1;
        }
    }
    return PUT_LITERAL(b, "\"");
}

/* The k-th decimal digit of a binary numeric's base-10000 digits ("%04d" each). */
static int
digit_of(const unsigned char *s, Py_ssize_t k)
{
    static const unsigned int scale[] = {1000, 100, 10, 1};
    unsigned int d = ((unsigned int)s[8 + 2 * (k / 4)] << 8) | s[9 + 2 * (k / 4)];
    return (int)(d / scale[k % 4] % 10);
}

/* values._numeric_text of a binary numeric, as a JSON string: 0, 1 (not
 * certain: malformed), -1. */
static int
put_numeric_bin(Buf *b, const unsigned char *s, Py_ssize_t n)
{
    if (n < 8) {
        return 1;
    }
    unsigned int ndigits = ((unsigned int)s[0] << 8) | s[1];
    int weight = (int16_t)(((unsigned int)s[2] << 8) | s[3]);
    unsigned int sign = ((unsigned int)s[4] << 8) | s[5];
    unsigned int dscale = ((unsigned int)s[6] << 8) | s[7];
    if (sign == 0xC000) {
        return PUT_LITERAL(b, "\"NaN\"");
    }
    if (sign == 0xD000) {
        return PUT_LITERAL(b, "\"Infinity\"");
    }
    if (sign == 0xF000) {
        return PUT_LITERAL(b, "\"-Infinity\"");
    }
    if (dscale > 0x3FFF || n != 8 + 2 * (Py_ssize_t)ndigits || (sign != 0 && sign != 0x4000)) {
        return 1;
    }
    for (unsigned int k = 0; k < ndigits; k++) {
        if ((((unsigned int)s[8 + 2 * k] << 8) | s[9 + 2 * k]) > 9999) {
            return 1;
        }
    }
    /* The decimal digits are "%04d" of each base-10000 digit: `pre` zeros
     * before them and `post` after make the text whose first `point`
     * characters are the whole part. */
    Py_ssize_t count = 4 * (Py_ssize_t)ndigits;
    Py_ssize_t point = 4 * ((Py_ssize_t)weight + 1);
    Py_ssize_t pre = 0;
    if (point <= 0) {
        pre = -point;
        point = 0;
    }
    Py_ssize_t total = pre + count;
    if (point > total) {
        total = point;
    }
#define DIGIT_AT(k)                                                                     \
    ((k) < pre || (k) >= pre + count                                                    \
         ? '0'                                                                          \
         : (char)('0' + digit_of(s, (k) - pre)))
    if (buf_reserve(b, point + (Py_ssize_t)dscale + 6) < 0) {
        return -1;
    }
    Py_ssize_t mark = b->len;
    b->data[b->len++] = '"';
    b->data[b->len++] = '-'; /* dropped below unless the value is negative and not zero */
    Py_ssize_t k = 0;
    while (k < point && DIGIT_AT(k) == '0') {
        k++;
    }
    if (k == point) {
        b->data[b->len++] = '0';
    }
    for (; k < point; k++) {
        b->data[b->len++] = DIGIT_AT(k);
    }
    if (dscale) {
        b->data[b->len++] = '.';
        for (Py_ssize_t f = 0; f < (Py_ssize_t)dscale; f++) {
            Py_ssize_t at = point + f;
            b->data[b->len++] = at < total ? DIGIT_AT(at) : '0';
        }
    }
#undef DIGIT_AT
    int nonzero = 0;
    for (Py_ssize_t at = mark + 2; at < b->len; at++) {
        if (b->data[at] >= '1' && b->data[at] <= '9') {
            nonzero = 1;
            break;
        }
    }
    if (!(sign == 0x4000 && nonzero)) {
        memmove(b->data + mark + 1, b->data + mark + 2, (size_t)(b->len - mark - 2));
        b->len--;
    }
    b->data[b->len++] = '"';
    return 0;
}

/* A uuid as str(UUID) writes it, from 16 bytes. */
static int
put_uuid(Buf *b, const unsigned char *bytes)
{
    static const char hex[] = "0123456789abcdef";
    if (buf_reserve(b, 38) < 0) {
        return -1;
    }
    char *out = b->data + b->len;
    int o = 0;
    out[o++] = '"';
    for (int k = 0; k < 16; k++) {
        if (k == 4 || k == 6 || k == 8 || k == 10) {
            out[o++] = '-';
        }
        out[o++] = hex[bytes[k] >> 4];
        out[o++] = hex[bytes[k] & 15];
    }
    out[o++] = '"';
    b->len += o;
    return 0;
}

static int
hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* The canonical 8-4-4-4-12 form (any case): 0, 1, -1. */
static int
put_uuid_text(Buf *b, const unsigned char *s, Py_ssize_t n)
{
    unsigned char bytes[16];
    if (n != 36) {
        return 1;
    }
    int o = 0;
    for (Py_ssize_t i = 0; i < 36;) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-') {
                return 1;
            }
            i++;
            continue;
        }
        int hi = hex_value(s[i]), lo = hex_value(s[i + 1]);
        if (hi < 0 || lo < 0) {
            return 1;
        }
        bytes[o++] = (unsigned char)(hi << 4 | lo);
        i += 2;
    }
    return put_uuid(b, bytes);
}

/* {"$base64":"..."} of n bytes (given as they are, or as hex digits). */
static int
put_base64(Buf *b, const unsigned char *s, Py_ssize_t n, int hex)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    Py_ssize_t size = hex ? n / 2 : n;
    if (hex) {
        if (n % 2) {
            return 1;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            if (hex_value(s[i]) < 0) {
                return 1;
            }
        }
    }
    if (size > (PY_SSIZE_T_MAX - 16) / 4 * 3 - 3 || buf_reserve(b, (size + 2) / 3 * 4 + 16) < 0) {
        if (!PyErr_Occurred()) {
            PyErr_NoMemory();
        }
        return -1;
    }
    memcpy(b->data + b->len, "{\"$base64\":\"", 12);
    b->len += 12;
    char *out = b->data + b->len;
    Py_ssize_t o = 0;
    for (Py_ssize_t i = 0; i < size; i += 3) {
        unsigned int v = 0;
        int have = 0;
        for (int k = 0; k < 3; k++) {
            v <<= 8;
            if (i + k < size) {
                unsigned int byte = hex ? (unsigned int)(hex_value(s[2 * (i + k)]) << 4
                                                         | hex_value(s[2 * (i + k) + 1]))
                                        : s[i + k];
                v |= byte;
                have++;
            }
        }
        out[o++] = alphabet[(v >> 18) & 63];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = have > 1 ? alphabet[(v >> 6) & 63] : '=';
        out[o++] = have > 2 ? alphabet[v & 63] : '=';
    }
    b->len += o;
    return PUT_LITERAL(b, "\"}");
}

/* A float as the reference writes it: repr(), or "NaN", "Infinity", "-Infinity" as text. */
static int
put_float(Buf *b, double v)
{
    if (Py_IS_NAN(v)) {
        return PUT_LITERAL(b, "\"NaN\"");
    }
    if (Py_IS_INFINITY(v)) {
        return v > 0 ? PUT_LITERAL(b, "\"Infinity\"") : PUT_LITERAL(b, "\"-Infinity\"");
    }
    char *text = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (text == NULL) {
        return -1;
    }
    int result = buf_put(b, text, (Py_ssize_t)strlen(text));
    PyMem_Free(text);
    return result;
}

/* --- the writer ------------------------------------------------------------------- */

#define RELATION_SLOTS 64

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *make_plan;  /* layout -> (codes, keys) */
    PyObject *column;     /* (row, i, debezium) -> str */
    PyObject *row_slow;   /* (row, debezium) -> bytes */
    PyObject *line_exact; /* event -> bytes: the reference's bytes or exception */
    PyObject *line_other; /* event -> bytes: the Python twin, for every other event */
    PyObject *row_type;
    PyObject *lsn_type;
    PyObject *insert_type;
    PyObject *update_type;
    PyObject *delete_type;
    PyObject *unchanged;
    PyObject *begin_type;
    PyObject *commit_type;
    PyObject *datetime_type;
    PyObject *isoformat; /* datetime -> str, as datetime.isoformat() */
    PyObject *relations[RELATION_SLOTS]; /* a small cache of relations seen... */
    PyObject *parts[RELATION_SLOTS];     /* ...and their ',"schema":..,"table":..' */
} JsonWriter;

static PyObject *str_layout, *str_raw, *str_json_plan, *str_lsn, *str_xid, *str_relation,
    *str_new, *str_old, *str_schema, *str_table, *str_final_lsn, *str_commit_lsn, *str_commit_time;

/* The text of one column from the Python code: 0, 1 (give up), -1. */
static int
put_column_slow(JsonWriter *self, Buf *b, PyObject *row, Py_ssize_t i, int debezium)
{
    PyObject *index = PyLong_FromSsize_t(i);
    if (index == NULL) {
        return -1;
    }
    PyObject *args[3] = {row, index, debezium ? Py_True : Py_False};
    PyObject *text = PyObject_Vectorcall(self->column, args, 3, NULL);
    Py_DECREF(index);
    if (text == NULL) {
        return -1;
    }
    if (!PyUnicode_Check(text)) {
        Py_DECREF(text);
        PyErr_SetString(PyExc_TypeError, "a column's JSON must be str");
        return -1;
    }
    const unsigned char *s;
    Py_ssize_t n;
    int result = str_utf8(text, &s, &n);
    if (result == 0) {
        result = buf_put(b, (const char *)s, n);
    }
    Py_DECREF(text);
    return result;
}

/* The bytes, or the UTF-8 of the str, a raw value holds: 0, or 1 when it is
 * neither (or a str without UTF-8). */
static int
raw_text(PyObject *raw, const unsigned char **s, Py_ssize_t *n, int *is_str)
{
    if (PyBytes_CheckExact(raw)) {
        *s = (const unsigned char *)PyBytes_AS_STRING(raw);
        *n = PyBytes_GET_SIZE(raw);
        *is_str = 0;
        return 0;
    }
    if (PyUnicode_CheckExact(raw)) {
        *is_str = 1;
        return str_utf8(raw, s, n);
    }
    return 1;
}

/* One column's value, per its code: 0 written, 1 not certain (nothing
 * written), -1 error. */
static int
put_value(Buf *b, int code, PyObject *raw, PyObject *convert)
{
    const unsigned char *s;
    Py_ssize_t n;
    int is_str;
    if (code == J_BOOL_ANY && (raw == Py_True || raw == Py_False)) {
        return raw == Py_True ? PUT_LITERAL(b, "true") : PUT_LITERAL(b, "false");
    }
    if (raw_text(raw, &s, &n, &is_str)) {
        return 1;
    }
    switch (code) {
    case J_INT_TEXT:
        return plain_int(s, n) ? buf_put(b, (const char *)s, n) : 1;
    case J_STR_UTF8:
        /* bytes.decode: a str is refused (TypeError), the Python code says so */
        return is_str ? 1 : put_string(b, s, n, 1);
    case J_STR_KEEP:
        return is_str ? put_string(b, s, n, 0) : 1;
    case J_BOOL_TEXT:
    case J_BOOL_ANY:
        if (n == 1 && s[0] == 't') {
            return PUT_LITERAL(b, "true");
        }
        if (n == 1 && s[0] == 'f') {
            return PUT_LITERAL(b, "false");
        }
        return 1;
    case J_FLOAT: {
        /* The converter's own float (float(text), float4's shortest form):
         * its result is the value, written as json writes a float. */
        PyObject *value = PyObject_CallOneArg(convert, raw);
        if (value == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                return -1; /* KeyboardInterrupt and the like go through */
            }
            PyErr_Clear(); /* bad input: the Python code raises what the reference raises */
            return 1;
        }
        if (!PyFloat_CheckExact(value)) {
            Py_DECREF(value);
            return 1;
        }
        int result = put_float(b, PyFloat_AS_DOUBLE(value));
        Py_DECREF(value);
        return result;
    }
    case J_NUMERIC_TEXT:
        /* values._json_text_exact: the text itself, once Decimal reads it */
        return plain_numeric(s, n) ? put_string(b, s, n, 0) : 1;
    case J_DATE_TEXT:
    case J_TIMESTAMP_TEXT:
    case J_TIMESTAMPTZ_TEXT:
        return put_datetime_text(b, s, n, code);
    case J_UUID_TEXT:
        return put_uuid_text(b, s, n);
    case J_JSON_TEXT: {
        if (!json_certain(s, n)) {
            return 1;
        }
        if (PUT_LITERAL(b, "{\"$json\":") < 0 || put_string(b, s, n, 0) < 0) {
            return -1;
        }
        return PUT_LITERAL(b, "}");
    }
    case J_BYTEA_TEXT:
        if (n < 2 || s[0] != '\\' || s[1] != 'x') {
            return 1;
        }
        return put_base64(b, s + 2, n - 2, 1);
    case J_BYTEA_HEX:
        return is_str ? put_base64(b, s, n, 1) : 1;
    }
    if (is_str) {
        return 1; /* the binary readers take bytes */
    }
    switch (code) {
    case J_INT2_BIN:
        return n == 2 ? buf_put_i64(b, (int16_t)(((unsigned int)s[0] << 8) | s[1])) : 1;
    case J_INT4_BIN:
        return n == 4 ? buf_put_i64(b, read_i32(s)) : 1;
    case J_INT8_BIN:
        return n == 8 ? buf_put_i64(b, read_i64(s)) : 1;
    case J_OID_BIN:
        return n == 4 ? buf_put_i64(b, (int64_t)(uint32_t)read_i32(s)) : 1;
    case J_BOOL_BIN:
        if (n != 1) {
            return 1;
        }
        return s[0] ? PUT_LITERAL(b, "true") : PUT_LITERAL(b, "false");
    case J_NUMERIC_BIN:
        return put_numeric_bin(b, s, n);
    case J_DATE_BIN:
    case J_TIMESTAMP_BIN:
    case J_TIMESTAMPTZ_BIN:
        return put_datetime_bin(b, s, n, code);
    case J_UUID_BIN:
        return n == 16 ? put_uuid(b, s) : 1;
    case J_JSONB_BIN:
        if (n < 1 || s[0] != 1) {
            return 1;
        }
        s++;
        n--;
        /* fall through */
    case J_JSON_BIN:
        if (!json_certain(s, n)) {
            return 1;
        }
        if (PUT_LITERAL(b, "{\"$json\":") < 0 || put_string(b, s, n, 0) < 0) {
            return -1;
        }
        return PUT_LITERAL(b, "}");
    case J_BYTEA_BIN:
        return put_base64(b, s, n, 0);
    }
    return 1;
}

/* The plan of `layout`: its cached (codes, keys), made on first use. A new
 * reference, or NULL with an exception set. */
static PyObject *
plan_of(JsonWriter *self, PyObject *layout)
{
    static SlotCache plan_slot;
    PyObject *plan = replicant_slot(layout, str_json_plan, &plan_slot);
    if (plan == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return NULL;
        }
        PyErr_Clear();
    }
    if (plan == NULL || plan == Py_None) {
        Py_XDECREF(plan);
        plan = PyObject_CallOneArg(self->make_plan, layout);
    }
    return plan;
}

/* A row's JSON object: 0, 1 (give up: the Python code writes the whole), -1. */
static int
put_row(JsonWriter *self, Buf *b, PyObject *row, int debezium)
{
    if (Py_TYPE(row) != (PyTypeObject *)self->row_type) {
        return 1;
    }
    PyObject *layout, *raw_values;
    replicant_row_parts(row, &layout, &raw_values); /* a RowCore's own fields */
    if (layout == NULL || raw_values == NULL) {
        return 1; /* not set up: the Python code says what is wrong */
    }
    Py_INCREF(layout);
    PyObject *plan = plan_of(self, layout);
    PyObject *convert = NULL;
    PyObject *raw = NULL;
    int result = -1;
    if (plan == NULL) {
        goto done;
    }
    result = 1;
    if (!PyTuple_Check(plan) || PyTuple_GET_SIZE(plan) != 3) {
        goto done;
    }
    PyObject *codes = PyTuple_GET_ITEM(plan, 0);
    PyObject *keys = PyTuple_GET_ITEM(plan, 1);
    convert = Py_NewRef(PyTuple_GET_ITEM(plan, 2));
    if (!PyBytes_Check(codes) || !PyTuple_Check(keys) || !PyTuple_Check(convert)) {
        goto done; /* names JSON cannot write as one object (repeated, not UTF-8) */
    }
    raw = Py_NewRef(raw_values);
    Py_ssize_t count = PyBytes_GET_SIZE(codes);
    if (!PyList_Check(raw) || PyList_GET_SIZE(raw) != count || PyTuple_GET_SIZE(keys) != count
        || PyTuple_GET_SIZE(convert) != count) {
        goto done;
    }
    const unsigned char *code = (const unsigned char *)PyBytes_AS_STRING(codes);
    if (count == 0) {
        result = PUT_LITERAL(b, "{}");
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *key = PyTuple_GET_ITEM(keys, i);
        if (!PyBytes_Check(key)) {
            goto done;
        }
        if (buf_put(b, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)) < 0) {
            result = -1;
            goto done;
        }
        /* The list may change size while the Python code runs: read it anew. */
        if (PyList_GET_SIZE(raw) != count) {
            goto done;
        }
        PyObject *value = PyList_GET_ITEM(raw, i);
        int written;
        if (value == Py_None) {
            written = PUT_LITERAL(b, "null");
        }
        else if (value == self->unchanged) {
            written = debezium ? PUT_LITERAL(b, "\"__debezium_unavailable_value\"")
                               : PUT_LITERAL(b, "{\"$unchanged\":true}");
        }
        else if (code[i] == J_FALLBACK) {
            written = 1;
        }
        else {
            Py_INCREF(value);
            written = put_value(b, code[i], value, PyTuple_GET_ITEM(convert, i));
            Py_DECREF(value);
        }
        if (written == 1) {
            written = put_column_slow(self, b, row, i, debezium);
        }
        if (written != 0) {
            result = written;
            goto done;
        }
    }
    result = PUT_LITERAL(b, "}");
done:
    Py_DECREF(layout);
    Py_XDECREF(plan);
    Py_XDECREF(convert);
    Py_XDECREF(raw);
    return result;
}

/* ,"schema":...,"table":... of a relation, cached: a borrowed bytes, or
 * NULL (with an exception, or none: give up). */
static PyObject *
relation_part(JsonWriter *self, PyObject *relation)
{
    size_t slot = ((uintptr_t)relation >> 4) % RELATION_SLOTS;
    if (self->relations[slot] == relation) {
        return self->parts[slot];
    }
    PyObject *schema = PyObject_GetAttr(relation, str_schema);
    PyObject *table = schema ? PyObject_GetAttr(relation, str_table) : NULL;
    PyObject *part = NULL;
    if (table == NULL) {
        goto done;
    }
    const unsigned char *s, *t;
    Py_ssize_t sn, tn;
    if (!PyUnicode_CheckExact(schema) || !PyUnicode_CheckExact(table) || str_utf8(schema, &s, &sn)
        || str_utf8(table, &t, &tn)) {
        goto done;
    }
    Buf b;
    buf_init(&b);
    if (PUT_LITERAL(&b, ",\"schema\":") == 0 && put_string(&b, s, sn, 0) == 0
        && PUT_LITERAL(&b, ",\"table\":") == 0 && put_string(&b, t, tn, 0) == 0) {
        part = PyBytes_FromStringAndSize(b.data, b.len);
    }
    buf_free(&b);
    if (part != NULL) {
        Py_XSETREF(self->relations[slot], Py_NewRef(relation));
        Py_XSETREF(self->parts[slot], part);
    }
done:
    Py_XDECREF(schema);
    Py_XDECREF(table);
    return part;
}

/* "X/Y" of an LSN, or str() of anything else as a JSON string: 0, 1, -1. */
static int
put_lsn(JsonWriter *self, Buf *b, PyObject *lsn)
{
    if (Py_TYPE(lsn) != (PyTypeObject *)self->lsn_type) {
        return 1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(lsn);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 1;
    }
    char text[20];
    int n = 0;
    text[n++] = '"';
    hex_upper(text, &n, (uint32_t)(v >> 32));
    text[n++] = '/';
    hex_upper(text, &n, (uint32_t)(v & 0xFFFFFFFFu));
    text[n++] = '"';
    return buf_put(b, text, n);
}

/* An xid: null or an int: 0, 1, -1. */
static int
put_xid(Buf *b, PyObject *xid)
{
    if (xid == Py_None) {
        return PUT_LITERAL(b, "null");
    }
    if (!PyLong_CheckExact(xid)) {
        return 1;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(xid, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (!overflow) {
        return buf_put_i64(b, (int64_t)v);
    }
    PyObject *text = PyObject_Str(xid);
    if (text == NULL) {
        return -1;
    }
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(text, &n);
    int result = s == NULL ? -1 : buf_put(b, s, n);
    Py_DECREF(text);
    return result;
}

/* A row event's line: 0, 1 (give up), -1. */
static int
put_event(JsonWriter *self, Buf *b, PyObject *event, int kind, int newline)
{
    PyObject *lsn = NULL, *xid = NULL, *relation = NULL, *new = NULL, *old = NULL;
    int result = -1;
    /* One cache per kind and field: the kinds' types differ. */
    static SlotCache slots[4][5];
    lsn = replicant_slot(event, str_lsn, &slots[kind][0]);
    xid = lsn ? replicant_slot(event, str_xid, &slots[kind][1]) : NULL;
    relation = xid ? replicant_slot(event, str_relation, &slots[kind][2]) : NULL;
    if (relation == NULL) {
        goto done;
    }
    if (kind != 3 && (new = replicant_slot(event, str_new, &slots[kind][3])) == NULL) {
        goto done;
    }
    if (kind != 1 && (old = replicant_slot(event, str_old, &slots[kind][4])) == NULL) {
        goto done;
    }
    static const char *heads[] = {NULL, "{\"kind\":\"insert\",\"lsn\":",
                                  "{\"kind\":\"update\",\"lsn\":",
                                  "{\"kind\":\"delete\",\"lsn\":"};
    if (buf_put(b, heads[kind], (Py_ssize_t)strlen(heads[kind])) < 0) {
        goto done;
    }
    if ((result = put_lsn(self, b, lsn)) != 0) {
        goto done;
    }
    if ((result = PUT_LITERAL(b, ",\"xid\":")) != 0 || (result = put_xid(b, xid)) != 0) {
        goto done;
    }
    PyObject *part = relation_part(self, relation);
    if (part == NULL) {
        result = PyErr_Occurred() ? -1 : 1;
        goto done;
    }
    if ((result = buf_put(b, PyBytes_AS_STRING(part), PyBytes_GET_SIZE(part))) != 0) {
        goto done;
    }
    if (new != NULL) {
        if ((result = PUT_LITERAL(b, ",\"new\":")) != 0
            || (result = put_row(self, b, new, 0)) != 0) {
            goto done;
        }
    }
    if (old != NULL) {
        if ((result = PUT_LITERAL(b, ",\"old\":")) != 0) {
            goto done;
        }
        result = old == Py_None && kind == 2 ? PUT_LITERAL(b, "null") : put_row(self, b, old, 0);
        if (result != 0) {
            goto done;
        }
    }
    result = newline ? PUT_LITERAL(b, "}\n") : PUT_LITERAL(b, "}");
done:
    Py_XDECREF(lsn);
    Py_XDECREF(xid);
    Py_XDECREF(relation);
    Py_XDECREF(new);
    Py_XDECREF(old);
    return result;
}

/* One field of a Begin or Commit as Event.to_dict writes it: an LSN, None,
 * an int, a datetime: 0, 1 (anything else, or a failure: give up), -1. */
static int
put_field(JsonWriter *self, Buf *b, PyObject *value)
{
    if (value == Py_None) {
        return PUT_LITERAL(b, "null");
    }
    if (Py_TYPE(value) == (PyTypeObject *)self->lsn_type) {
        return put_lsn(self, b, value);
    }
    if (PyLong_CheckExact(value)) {
        return put_xid(b, value);
    }
    if (Py_TYPE(value) != (PyTypeObject *)self->datetime_type) {
        return 1;
    }
    char digits[32];
    int written = replicant_isoformat_utc(value, digits);
    if (written > 0) { /* the usual commit time: UTC, straight into the line */
        return put_quoted(b, digits, written);
    }
    PyObject *text = PyObject_CallOneArg(self->isoformat, value);
    if (text == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return -1;
        }
        PyErr_Clear(); /* the Python code raises it, in the reference's order */
        return 1;
    }
    int result = 1;
    const unsigned char *s;
    Py_ssize_t n;
    if (PyUnicode_CheckExact(text) && str_utf8(text, &s, &n) == 0) {
        result = put_string(b, s, n, 0);
    }
    Py_DECREF(text);
    return result;
}

/* A Begin's or Commit's line: 0, 1 (give up), -1. */
static int
put_frame(JsonWriter *self, Buf *b, PyObject *event, int begin)
{
    PyObject *names[4] = {str_lsn, str_xid, begin ? str_final_lsn : str_commit_lsn,
                          str_commit_time};
    static const char *keys[2][4] = {
        {"{\"kind\":\"commit\",\"lsn\":", ",\"xid\":", ",\"commit_lsn\":", ",\"commit_time\":"},
        {"{\"kind\":\"begin\",\"lsn\":", ",\"xid\":", ",\"final_lsn\":", ",\"commit_time\":"},
    };
    for (int k = 0; k < 4; k++) {
        if (buf_put(b, keys[begin][k], (Py_ssize_t)strlen(keys[begin][k])) < 0) {
            return -1;
        }
        static SlotCache slots[2][4];
        PyObject *value = replicant_slot(event, names[k], &slots[begin][k]);
        if (value == NULL) {
            return -1;
        }
        int result = put_field(self, b, value);
        Py_DECREF(value);
        if (result != 0) {
            return result;
        }
    }
    return PUT_LITERAL(b, "}\n");
}

static PyObject *
writer_call(JsonWriter *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "json_line() takes exactly one event");
        return NULL;
    }
    PyObject *event = args[0];
    PyObject *type = (PyObject *)Py_TYPE(event);
    int kind = type == self->insert_type ? 1
               : type == self->update_type ? 2
               : type == self->delete_type ? 3
                                           : 0;
    int frame = type == self->begin_type ? 1 : type == self->commit_type ? 0 : -1;
    if (kind == 0 && frame < 0) {
        return PyObject_CallOneArg(self->line_other, event);
    }
    Buf b;
    buf_init(&b);
    PyObject *result = NULL;
    int done = kind ? put_event(self, &b, event, kind, 1) : put_frame(self, &b, event, frame);
    if (done == 0) {
        result = PyBytes_FromStringAndSize(b.data, b.len);
    }
    else if (done == 1) {
        result = PyObject_CallOneArg(self->line_exact, event);
    }
    buf_free(&b);
    return result;
}

PyDoc_STRVAR(writer_value_doc,
"value(event, /)\n"
"--\n\n"
"An Insert's, Update's or Delete's line without its newline (the\n"
"replicant envelope's record); None for any other event.");

static PyObject *
writer_value(JsonWriter *self, PyObject *event)
{
    PyObject *type = (PyObject *)Py_TYPE(event);
    int kind = type == self->insert_type ? 1
               : type == self->update_type ? 2
               : type == self->delete_type ? 3
                                           : 0;
    if (kind == 0) {
        Py_RETURN_NONE;
    }
    Buf b;
    buf_init(&b);
    PyObject *result = NULL;
    int done = put_event(self, &b, event, kind, 0);
    if (done == 0) {
        result = PyBytes_FromStringAndSize(b.data, b.len);
    }
    else if (done == 1) {
        PyObject *line = PyObject_CallOneArg(self->line_exact, event);
        if (line != NULL) {
            result = PyBytes_FromStringAndSize(PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line) - 1);
            Py_DECREF(line);
        }
    }
    buf_free(&b);
    return result;
}

PyDoc_STRVAR(writer_row_doc,
"row(row, debezium=False, /)\n"
"--\n\n"
"The UTF-8 JSON object of ``row.to_dict()``, as json.dumps writes it\n"
"(ensure_ascii=False, compact). With ``debezium``, an unchanged TOASTed\n"
"value is written as \"__debezium_unavailable_value\" (envelopes.py's\n"
"_unavailable). Raises what the reference raises.");

static PyObject *
writer_row(JsonWriter *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "row() takes a row and an optional debezium flag");
        return NULL;
    }
    int debezium = 0;
    if (nargs == 2 && (debezium = PyObject_IsTrue(args[1])) < 0) {
        return NULL;
    }
    Buf b;
    buf_init(&b);
    PyObject *result = NULL;
    int done = put_row(self, &b, args[0], debezium);
    if (done == 0) {
        result = PyBytes_FromStringAndSize(b.data, b.len);
    }
    else if (done == 1) {
        PyObject *call[2] = {args[0], debezium ? Py_True : Py_False};
        result = PyObject_Vectorcall(self->row_slow, call, 2, NULL);
    }
    buf_free(&b);
    return result;
}

PyDoc_STRVAR(writer_debezium_doc,
"debezium(event, transaction, txid, ts_ms, read=False, /)\n"
"--\n\n"
"The Debezium record of an Insert, Update or Delete, as envelopes.py's\n"
"DebeziumEnvelope writes it: ``transaction`` is the bytes of the source\n"
"block up to the event's LSN, ``txid`` the transaction's id (or None),\n"
"``ts_ms`` the record's time; with ``read``, an Insert is written as a\n"
"snapshot read (op \"r\"). None where the Python code must write it\n"
"(another event, an LSN or a name this code does not write).");

static PyObject *
writer_debezium(JsonWriter *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 4 || nargs > 5 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "debezium() takes an event, bytes, a txid, ts_ms and a read flag");
        return NULL;
    }
    int read = 0;
    if (nargs == 5 && (read = PyObject_IsTrue(args[4])) < 0) {
        return NULL;
    }
    PyObject *event = args[0];
    PyObject *type = (PyObject *)Py_TYPE(event);
    int kind = type == self->insert_type ? 1
               : type == self->update_type ? 2
               : type == self->delete_type ? 3
                                           : 0;
    if (kind == 0) {
        Py_RETURN_NONE;
    }
    PyObject *lsn = NULL, *relation = NULL, *new = NULL, *old = NULL, *result = NULL;
    Buf b;
    buf_init(&b);
    int done = -1;
    lsn = PyObject_GetAttr(event, str_lsn);
    relation = lsn ? PyObject_GetAttr(event, str_relation) : NULL;
    if (relation == NULL) {
        goto finish;
    }
    if (kind != 3 && (new = PyObject_GetAttr(event, str_new)) == NULL) {
        goto finish;
    }
    if (kind != 1 && (old = PyObject_GetAttr(event, str_old)) == NULL) {
        goto finish;
    }
    done = 1;
    if (Py_TYPE(lsn) != (PyTypeObject *)self->lsn_type) {
        goto finish;
    }
    unsigned long long position = PyLong_AsUnsignedLongLong(lsn);
    if (position == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        goto finish;
    }
    /* before (the old row, unchanged values as Debezium's placeholder), after */
    if ((done = PUT_LITERAL(&b, "{\"before\":")) != 0) {
        goto finish;
    }
    done = old == NULL || old == Py_None ? PUT_LITERAL(&b, "null") : put_row(self, &b, old, 1);
    if (done != 0 || (done = PUT_LITERAL(&b, ",\"after\":")) != 0) {
        goto finish;
    }
    done = new == NULL ? PUT_LITERAL(&b, "null") : put_row(self, &b, new, kind == 2);
    if (done != 0 || (done = PUT_LITERAL(&b, ",\"source\":")) != 0) {
        goto finish;
    }
    if ((done = buf_put(&b, PyBytes_AS_STRING(args[1]), PyBytes_GET_SIZE(args[1]))) != 0
        || (done = buf_put_i64(&b, (int64_t)position)) != 0
        || (done = PUT_LITERAL(&b, "\\\"]\"")) != 0) {
        goto finish;
    }
    PyObject *part = relation_part(self, relation);
    if (part == NULL) {
        done = PyErr_Occurred() ? -1 : 1;
        goto finish;
    }
    if ((done = buf_put(&b, PyBytes_AS_STRING(part), PyBytes_GET_SIZE(part))) != 0
        || (done = PUT_LITERAL(&b, ",\"txId\":")) != 0 || (done = put_xid(&b, args[2])) != 0
        || (done = PUT_LITERAL(&b, ",\"lsn\":")) != 0
        || (done = buf_put_i64(&b, (int64_t)position)) != 0
        || (done = PUT_LITERAL(&b, ",\"xmin\":null},\"op\":\"")) != 0) {
        goto finish;
    }
    static const char ops[] = " cud";
    if ((done = buf_put(&b, read && kind == 1 ? "r" : ops + kind, 1)) != 0 || (done = PUT_LITERAL(&b, "\",\"ts_ms\":")) != 0) {
        goto finish;
    }
    if (!PyLong_CheckExact(args[3])) {
        done = 1;
        goto finish;
    }
    long long ms = PyLong_AsLongLong(args[3]);
    if (ms == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        done = 1;
        goto finish;
    }
    if ((done = buf_put_i64(&b, (int64_t)ms)) != 0
        || (done = PUT_LITERAL(&b, ",\"transaction\":null}")) != 0) {
        goto finish;
    }
finish:
    if (done == 0) {
        result = PyBytes_FromStringAndSize(b.data, b.len);
    }
    else if (done == 1) {
        result = Py_NewRef(Py_None);
    }
    buf_free(&b);
    Py_XDECREF(lsn);
    Py_XDECREF(relation);
    Py_XDECREF(new);
    Py_XDECREF(old);
    return result;
}

static int
writer_traverse(JsonWriter *self, visitproc visit, void *arg)
{
    Py_VISIT(self->make_plan);
    Py_VISIT(self->column);
    Py_VISIT(self->row_slow);
    Py_VISIT(self->line_exact);
    Py_VISIT(self->line_other);
    Py_VISIT(self->row_type);
    Py_VISIT(self->lsn_type);
    Py_VISIT(self->insert_type);
    Py_VISIT(self->update_type);
    Py_VISIT(self->delete_type);
    Py_VISIT(self->unchanged);
    Py_VISIT(self->begin_type);
    Py_VISIT(self->commit_type);
    Py_VISIT(self->datetime_type);
    Py_VISIT(self->isoformat);
    for (int k = 0; k < RELATION_SLOTS; k++) {
        Py_VISIT(self->relations[k]);
        Py_VISIT(self->parts[k]);
    }
    return 0;
}

static int
writer_clear(JsonWriter *self)
{
    Py_CLEAR(self->make_plan);
    Py_CLEAR(self->column);
    Py_CLEAR(self->row_slow);
    Py_CLEAR(self->line_exact);
    Py_CLEAR(self->line_other);
    Py_CLEAR(self->row_type);
    Py_CLEAR(self->lsn_type);
    Py_CLEAR(self->insert_type);
    Py_CLEAR(self->update_type);
    Py_CLEAR(self->delete_type);
    Py_CLEAR(self->unchanged);
    Py_CLEAR(self->begin_type);
    Py_CLEAR(self->commit_type);
    Py_CLEAR(self->datetime_type);
    Py_CLEAR(self->isoformat);
    for (int k = 0; k < RELATION_SLOTS; k++) {
        Py_CLEAR(self->relations[k]);
        Py_CLEAR(self->parts[k]);
    }
    return 0;
}

static void
writer_dealloc(JsonWriter *self)
{
    PyObject_GC_UnTrack(self);
    writer_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
writer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *items[15];
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "JsonWriter() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "JsonWriter", 15, 15, &items[0], &items[1], &items[2],
                           &items[3], &items[4], &items[5], &items[6], &items[7], &items[8],
                           &items[9], &items[10], &items[11], &items[12], &items[13],
                           &items[14])) {
        return NULL;
    }
    for (int k = 5; k < 14; k++) {
        if (k == 10) {
            continue; /* unchanged */
        }
        if (!PyType_Check(items[k])) {
            PyErr_SetString(PyExc_TypeError, "JsonWriter() needs the row, LSN and event types");
            return NULL;
        }
    }
    JsonWriter *self = (JsonWriter *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->make_plan = Py_NewRef(items[0]);
    self->column = Py_NewRef(items[1]);
    self->row_slow = Py_NewRef(items[2]);
    self->line_exact = Py_NewRef(items[3]);
    self->line_other = Py_NewRef(items[4]);
    self->row_type = Py_NewRef(items[5]);
    self->lsn_type = Py_NewRef(items[6]);
    self->insert_type = Py_NewRef(items[7]);
    self->update_type = Py_NewRef(items[8]);
    self->delete_type = Py_NewRef(items[9]);
    self->unchanged = Py_NewRef(items[10]);
    self->begin_type = Py_NewRef(items[11]);
    self->commit_type = Py_NewRef(items[12]);
    self->datetime_type = Py_NewRef(items[13]);
    self->isoformat = Py_NewRef(items[14]);
    self->vectorcall = (vectorcallfunc)writer_call;
    return (PyObject *)self;
}

static PyObject *
writer_repr(JsonWriter *self)
{
    /* What it is, the same in every process (the API reference shows it). */
    return PyUnicode_FromString("<compiled json_line(event) -> bytes>");
}

static PyMethodDef writer_methods[] = {
    {"row", (PyCFunction)(void (*)(void))writer_row, METH_FASTCALL, writer_row_doc},
    {"value", (PyCFunction)writer_value, METH_O, writer_value_doc},
    {"debezium", (PyCFunction)(void (*)(void))writer_debezium, METH_FASTCALL,
     writer_debezium_doc},
    {NULL},
};

PyDoc_STRVAR(writer_doc,
"JsonWriter(make_plan, column, row_slow, line_exact, line_other, row_type,\n"
"           lsn_type, insert_type, update_type, delete_type, unchanged,\n"
"           begin_type, commit_type, datetime_type, isoformat)\n"
"--\n\n"
"Called with an event: formatting.json_line's bytes. Inserts, Updates and\n"
"Deletes are written here from their rows' values as received, Begins and\n"
"Commits from their fields (times with ``isoformat``); every other event\n"
"is ``line_other(event)``. ``make_plan(layout)`` gives (and\n"
"caches on the layout) a row layout's plan: (codes, keys, converters);\n"
"``column(row, i, debezium)`` the JSON text of a column this code is not\n"
"certain of; ``row_slow(row, debezium)`` and ``line_exact(event)`` the\n"
"whole row or line where it cannot be written here at all.");

static PyTypeObject JsonWriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "replicant._speedups.JsonWriter",
    .tp_basicsize = sizeof(JsonWriter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = writer_doc,
    .tp_new = writer_new,
    .tp_dealloc = (destructor)writer_dealloc,
    .tp_repr = (reprfunc)writer_repr,
    .tp_traverse = (traverseproc)writer_traverse,
    .tp_clear = (inquiry)writer_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(JsonWriter, vectorcall),
    .tp_methods = writer_methods,
};

int
replicant_json_exec(PyObject *module)
{
    struct {
        PyObject **slot;
        const char *text;
    } names[] = {
        {&str_layout, "_layout"}, {&str_raw, "_raw"},       {&str_json_plan, "_json_plan"},
        {&str_lsn, "lsn"},        {&str_xid, "xid"},        {&str_relation, "relation"},
        {&str_new, "new"},        {&str_old, "old"},        {&str_schema, "schema"},
        {&str_table, "table"},    {&str_final_lsn, "final_lsn"}, {&str_commit_lsn, "commit_lsn"},
        {&str_commit_time, "commit_time"},
    };
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
        if (*names[k].slot == NULL) {
            *names[k].slot = PyUnicode_InternFromString(names[k].text);
            if (*names[k].slot == NULL) {
                return -1;
            }
        }
    }
    if (PyType_Ready(&JsonWriterType) < 0) {
        return -1;
    }
    Py_INCREF(&JsonWriterType);
    if (PyModule_AddObject(module, "JsonWriter", (PyObject *)&JsonWriterType) < 0) {
        Py_DECREF(&JsonWriterType);
        return -1;
    }
    return 0;
}
