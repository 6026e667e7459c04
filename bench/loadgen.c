/*
 * lsbench: the lsproxy benchmark's feeder and consumer load generator.
 *
 * One thread, one epoll loop, so the feeder's clock and the consumers' clock
 * are the same and the credit between them is a plain variable.
 *
 * Feeder (what the records come from), by --mode:
 *   proxy   a Live Stream look-alike on an inherited listening socket
 *           (--upstream-fd): the proxy under test connects to it, gets
 *           200 + gzip + chunked, then records;
 *   nchan   HTTP POSTs to an Nchan publisher location (one message per batch
 *           of records, never more than 20,000 messages/s);
 *   direct  no feeder: the consumers read the simulator themselves.
 * and by --feed:
 *   replay  pre-compressed batches from the corpus (replay.gz), as fast as
 *           the credit allows: the feeder stays at most --lead records ahead
 *           of the slowest consumer (saturation without loss);
 *   live    records rendered now, at --rate records/s, each stamped with its
 *           write time ("benchTs", CLOCK_REALTIME ns), compressed at
 *           --live-level (proxy) or sent as is (nchan).
 *
 * Consumers: -n steady consumers GET --path on --target; --sample of them
 * (evenly spread) are decoded fully (gzip inflated, every record checked:
 * CRLF, hitIdLow -> seq continuity, benchTs -> latency). The others count
 * bytes (identity: also records, by counting LF); a gzip one is verified at
 * the end by its gzip trailer (CRC-32 and length of everything sent).
 * --churn adds short-lived consumers over the window.
 *
 * Timeline: connect all, settle, feed [warmup, window t0..t1], stop feeding,
 * drain (until every steady consumer has everything), end the server side
 * (--end-pid: SIGTERM, or --end-delete: DELETE the Nchan channel), wait for
 * the streams to end, print one JSON object (--out or stdout). Progress
 * events go to stderr as "EVENT <name> <monotonic s>".
 *
 * Build: gcc -O2 -o lsbench loadgen.c -lz
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#define SEQ_BASE 1152921504606846976ULL
#define TS_PLACEHOLDER 1000000000000000000ULL
#define RBUF_SIZE (256 * 1024)
#define ZOUT_SIZE (256 * 1024)
#define LHEAD 160
#define HEAD_MAX 16384
#define MAX_WATCH 4
#define MAX_LAT_SAMPLES (8u << 20)
#define MAX_PUB_PER_S 20000.0

/* ------------------------------------------------------------------ utils */

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static uint64_t real_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}
static double thread_cpu(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static double self_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}
static void die(const char *msg) {
    fprintf(stderr, "lsbench: %s (%s)\n", msg, strerror(errno));
    exit(2);
}
static void event(const char *name) {
    fprintf(stderr, "EVENT %s %.6f\n", name, mono());
    fflush(stderr);
}
static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

typedef struct {
    char *p;
    size_t off, len, cap;
} outbuf_t;
static void ob_append(outbuf_t *b, const void *d, size_t n) {
    if (b->off && b->off == b->len) b->off = b->len = 0;
    if (b->len + n > b->cap) {
        if (b->off) {
            memmove(b->p, b->p + b->off, b->len - b->off);
            b->len -= b->off;
            b->off = 0;
        }
        if (b->len + n > b->cap) {
            b->cap = (b->len + n) * 2 + 65536;
            b->p = realloc(b->p, b->cap);
            if (!b->p) die("out of memory");
        }
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
}
static size_t ob_pending(outbuf_t *b) { return b->len - b->off; }
/* 1: all sent, 0: would block, -1: error */
static int ob_flush(outbuf_t *b, int fd) {
    while (ob_pending(b)) {
        ssize_t k = send(fd, b->p + b->off, ob_pending(b), MSG_NOSIGNAL);
        if (k > 0) {
            b->off += k;
            continue;
        }
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        if (k < 0 && errno == EINTR) continue;
        return -1;
    }
    b->off = b->len = 0;
    return 1;
}

/* ----------------------------------------------------------------- corpus */

typedef struct {
    uint64_t off;
    uint32_t len, seq_off, ts_off, pad;
} recidx_t;
typedef struct {
    uint64_t c_off, u_off;
    uint32_t c_len, u_len, nrec, crc, first, pad;
} batch_t;

static void *map_file(const char *dir, const char *name, size_t *len) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDONLY);
    if (fd < 0) die(path);
    struct stat st;
    fstat(fd, &st);
    *len = st.st_size;
    void *p = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    if (p == MAP_FAILED) die("mmap");
    close(fd);
    return p;
}

static const char *base_data;
static const recidx_t *base_idx;
static size_t base_n;
static const char *replay_gz;
static const batch_t *replay_idx;
static size_t replay_nb, replay_records;

static void put19(char *dst, uint64_t v) {
    for (int i = 18; i >= 0; i--) {
        dst[i] = '0' + v % 10;
        v /= 10;
    }
}

/* Render record `seq` (unique hitIdLow) stamped `ts` into `out`; returns its length (with CRLF). */
static size_t render(char *out, uint64_t seq, uint64_t ts) {
    const recidx_t *r = &base_idx[seq % base_n];
    memcpy(out, base_data + r->off, r->len);
    put19(out + r->seq_off, SEQ_BASE + seq);
    put19(out + r->ts_off, ts);
    return r->len;
}

/* ---------------------------------------------------------------- options */

enum { MODE_PROXY, MODE_NCHAN, MODE_DIRECT };
enum { FEED_NONE, FEED_REPLAY, FEED_LIVE };

static struct {
    int mode, feed;
    char target_host[64];
    int target_port;
    char path[1024];
    int gzip;
    char extra_headers[2048];
    int n, sample;
    const char *corpus;
    int upstream_fd;
    char pub_host[64];
    int pub_port;
    char pub_path[512];
    double rate;
    uint64_t feed_limit;
    int64_t lead;
    int live_level;
    double settle, warmup, duration, drain, end_wait, connect_timeout;
    int end_pid, end_delete;
    int watch[MAX_WATCH], nwatch;
    int retry_ms;
    int churn;
    int churn_hold_ms, churn_ids;
    char churn_path[1024];
    const char *out;
    int max_inflight;
    int pub_batches, pub_pipeline;
    double tick_ms;
} O;
static char run_error[256];

/* -------------------------------------------------------------- consumers */

enum { S_NEW, S_WAIT, S_CONNECTING, S_SENDING, S_HEAD, S_BODY, S_DONE };
enum { CS_SIZE, CS_EXT, CS_DATA, CS_DATA_CR, CS_DATA_LF, CS_TRAILER };
enum { T_CONSUMER = 1, T_UPLISTEN, T_UPSTREAM, T_PUB };

typedef struct {
    int type;
} tag_t;

typedef struct {
    tag_t tag;
    int idx, fd, state, churn, sampled;
    int bytes_only; /* non-sampled identity: body discarded in the kernel (MSG_TRUNC), bytes counted */
    double wake_at, close_at, t_get;
    char *req;
    int req_len, req_sent;
    char *head;
    int head_len;
    int status, gz, chunked, until_close;
    int64_t clen;
    int cs;
    uint64_t chunk_left;
    int trailer_line;
    /* counters */
    uint64_t wire, payload, ubytes, records, empty;
    uint64_t w0_payload, w0_ubytes, w0_records, w1_payload, w1_ubytes, w1_records;
    int64_t next_seq;
    uint64_t gaps, dups, bad, badterm;
    z_stream *zs;
    int zend, zerr, members;
    uint8_t tail8[8];
    int tail_n;
    char lhead[LHEAD];
    int lhead_len;
    uint64_t line_bytes;
    char last;
    int got_200, clean_end, unexpected_eof, attempts, ended;
    double t_last_data;
} conn_t;

static conn_t *C;
static int nconn; /* steady + churn */
static int ep;
static char *rbuf, *zout;

static struct {
    int phase;
    double t_start, t_connected, t_feed, t0, t1, t_drained, t_end_sent, t_done;
    int in_window, after_window, ending;
    uint64_t status_counts[600];
    uint64_t connects_started, refused_retries, connect_errors;
    int inflight;
    /* latency */
    uint64_t *lat;
    uint64_t nlat, lat_dropped;
    /* churn */
    int churn_next;
    uint64_t churn_started, churn_closed_rst, churn_closed_fin, churn_got_data;
    /* self cpu */
    double cpu_t0, cpu_t1, feeder_cpu, feeder_cpu_w0, feeder_cpu_w1;
} G;

/* ------------------------------------------------------------------ feeder */

static struct {
    int up_fd;                 /* proxy mode: current upstream connection */
    tag_t up_tag, listen_tag, pub_tag;
    outbuf_t out;
    char reqhead[HEAD_MAX];
    int reqhead_len, head_done, up_ready, up_closed, upstream_accepts;
    char first_request[512];
    int pub_fd, pub_outstanding, pub_delete_sent, pub_delete_done;
    char pubresp[8192];
    int pubresp_len;
    int64_t pub_body_left;
    uint64_t pub_msgs, pub_errors, pub_status[600], pub_connects;
    double pub_sec_start;
    double pub_sec_count;
    uint64_t sent_records, sent_ubytes, sent_wire, batches;
    uint32_t crc; /* CRC-32 of the canonical stream sent so far */
    size_t next_batch;
    int feeding, stopped;
    double feed_t; /* live: time origin of the rate */
    z_stream zs;
    int zinit;
    char *scratch;
    size_t scratch_cap;
    uint64_t w0_sent, w1_sent;
    double credit_blocked, blocked_since, up_blocked, up_blocked_since;
    double last_min_calc;
    int64_t min_progress;
    uint64_t members_sent;
} F;

static void ep_add(int fd, void *ptr, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = ptr};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl add");
}
static void ep_mod(int fd, void *ptr, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = ptr};
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
}

/* Minimal progress of the steady consumers, in records; INT64_MAX when none count. */
static int64_t min_progress(void) {
    uint64_t s_rec = 0, s_pay = 0;
    for (int i = 0; i < O.n; i++) {
        conn_t *c = &C[i];
        if (c->gz && c->sampled) {
            s_rec += c->records;
            s_pay += c->payload;
        }
    }
    double ratio = s_pay ? (double)s_rec / s_pay : 0.0;
    int64_t m = INT64_MAX;
    for (int i = 0; i < O.n; i++) {
        conn_t *c = &C[i];
        if (c->state != S_HEAD && c->state != S_BODY) continue;
        int64_t p;
        if (c->bytes_only)
            p = F.sent_ubytes ? (int64_t)((double)c->ubytes * F.sent_records / F.sent_ubytes) : 0;
        else if (c->gz && !c->sampled)
            p = (int64_t)(c->payload * ratio);
        else
            p = (int64_t)c->records;
        if (p < m) m = p;
    }
    return m;
}

/* Hand `raw` (uncompressed canonical bytes: records with CRLF) or a compressed chunk to the
   transport. proxy: `wire` is the deflate data, sent as one HTTP chunk. nchan: `raw` posted. */
static void emit_proxy_chunk(const char *wire, size_t wlen) {
    char hdr[32];
    int h = snprintf(hdr, sizeof hdr, "%zx\r\n", wlen);
    ob_append(&F.out, hdr, h);
    ob_append(&F.out, wire, wlen);
    ob_append(&F.out, "\r\n", 2);
    F.sent_wire += wlen;
}
static void emit_nchan_post(const char *raw, size_t rlen) {
    /* the message is the records without the last CRLF: Nchan's separator adds "\r\n" */
    size_t body = rlen >= 2 ? rlen - 2 : rlen;
    char hdr[1024];
    int h = snprintf(hdr, sizeof hdr,
                     "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n",
                     O.pub_path, O.pub_host, O.pub_port, body);
    ob_append(&F.out, hdr, h);
    ob_append(&F.out, raw, body);
    F.pub_outstanding++;
    F.pub_msgs++;
    F.sent_wire += body;
    /* Nchan's 16-bit message tag: stay well under 32,767 messages per second */
    double now = mono();
    if (now - F.pub_sec_start >= 1.0) {
        F.pub_sec_start = now;
        F.pub_sec_count = 0;
    }
    F.pub_sec_count++;
}

static int feeder_fd(void) { return O.mode == MODE_PROXY ? F.up_fd : F.pub_fd; }

static int transport_idle(void) {
    if (ob_pending(&F.out)) return 0;
    if (O.mode == MODE_NCHAN &&
        (F.pub_outstanding >= O.pub_pipeline || F.pub_delete_sent || (F.pub_sec_count >= MAX_PUB_PER_S && mono() - F.pub_sec_start < 1.0)))
        return 0;
    if (O.mode == MODE_PROXY && (F.up_fd < 0 || !F.up_ready)) return 0;
    return 1;
}

static void flush_transport(void) {
    int fd = feeder_fd();
    if (fd < 0 || !ob_pending(&F.out)) return;
    int r = ob_flush(&F.out, fd);
    double now = mono();
    if (r == 0) {
        if (!F.up_blocked_since) F.up_blocked_since = now;
        ep_mod(fd, O.mode == MODE_PROXY ? (void *)&F.up_tag : (void *)&F.pub_tag, EPOLLIN | EPOLLOUT);
    } else {
        if (F.up_blocked_since) {
            if (G.in_window) F.up_blocked += now - F.up_blocked_since;
            F.up_blocked_since = 0;
        }
        if (r < 0) {
            fprintf(stderr, "lsbench: feeder transport write failed: %s\n", strerror(errno));
            F.out.off = F.out.len = 0;
            if (O.mode == MODE_PROXY) F.up_closed++;
        } else {
            ep_mod(fd, O.mode == MODE_PROXY ? (void *)&F.up_tag : (void *)&F.pub_tag, EPOLLIN);
        }
    }
}

static void ensure_scratch(size_t n) {
    if (F.scratch_cap < n) {
        F.scratch_cap = n * 2;
        F.scratch = realloc(F.scratch, F.scratch_cap);
    }
}

static void feed_step(void) {
    if (!F.feeding || F.stopped) return;
    double c0 = thread_cpu();
    double now = mono();
    for (int loops = 0; loops < 64; loops++) {
        if (!transport_idle()) break;
        if (O.feed_limit && F.sent_records >= O.feed_limit) break;
        if (O.feed == FEED_REPLAY) {
            const batch_t *b = &replay_idx[F.next_batch];
            int nb = 1;
            uint32_t nrec = b->nrec;
            if (O.mode == MODE_NCHAN && O.pub_batches > 1) {
                /* one Nchan message = pub_batches upstream batches (its per-second message cap) */
                nb = O.pub_batches;
                if (F.next_batch + nb > replay_nb) nb = replay_nb - F.next_batch;
                nrec = 0;
                for (int j = 0; j < nb; j++) nrec += b[j].nrec;
            }
            if (O.lead > 0 && O.n > 0) {
                int64_t ahead = (int64_t)(F.sent_records + nrec) - F.min_progress;
                if (now - F.last_min_calc > 0.0002 || ahead > O.lead) {
                    F.min_progress = min_progress();
                    F.last_min_calc = now;
                    ahead = (int64_t)(F.sent_records + nrec) - F.min_progress;
                }
                if (ahead > O.lead) {
                    if (!F.blocked_since) F.blocked_since = now;
                    break;
                }
            }
            if (F.blocked_since) {
                if (G.in_window) F.credit_blocked += now - F.blocked_since;
                F.blocked_since = 0;
            }
            if (O.mode == MODE_PROXY) {
                emit_proxy_chunk(replay_gz + b->c_off, b->c_len);
            } else {
                /* Nchan gets the same records uncompressed */
                size_t ulen = 0;
                for (int j = 0; j < nb; j++) ulen += b[j].u_len;
                ensure_scratch(ulen + 4096);
                size_t len = 0;
                for (int j = 0; j < nb; j++)
                    for (uint32_t k = 0; k < b[j].nrec; k++)
                        len += render(F.scratch + len, b[j].first + k, TS_PLACEHOLDER);
                emit_nchan_post(F.scratch, len);
            }
            for (int j = 0; j < nb; j++) {
                F.crc = crc32_combine(F.crc, b[j].crc, b[j].u_len);
                F.sent_ubytes += b[j].u_len;
            }
            F.sent_records += nrec;
            F.batches += nb;
            F.next_batch = (F.next_batch + nb) % replay_nb;
            if (F.next_batch == 0) F.members_sent++;
            flush_transport();
        } else { /* live */
            /* records are written on fixed ticks (--tick-ms): at 2,000/s and 1 ms, 2 per chunk */
            double tick = O.tick_ms / 1000.0;
            uint64_t due = (uint64_t)(floor((now - F.feed_t) / tick) * tick * O.rate + 1e-9);
            if (O.feed_limit && due > O.feed_limit) due = O.feed_limit;
            if (due <= F.sent_records) break;
            uint64_t k = due - F.sent_records;
            if (k > 2000) k = 2000;
            ensure_scratch(k * 4096 + 65536);
            size_t len = 0;
            uint64_t ts = real_ns();
            for (uint64_t i = 0; i < k; i++) len += render(F.scratch + len, F.sent_records + i, ts);
            F.crc = crc32(F.crc, (const Bytef *)F.scratch, len);
            if (O.mode == MODE_PROXY) {
                if (!F.zinit) {
                    memset(&F.zs, 0, sizeof F.zs);
                    if (deflateInit2(&F.zs, O.live_level, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY) != Z_OK) die("deflateInit2");
                    F.zinit = 1;
                }
                size_t cap = deflateBound(&F.zs, len) + 64;
                char *zbuf = malloc(cap);
                F.zs.next_in = (Bytef *)F.scratch;
                F.zs.avail_in = len;
                F.zs.next_out = (Bytef *)zbuf;
                F.zs.avail_out = cap;
                deflate(&F.zs, Z_SYNC_FLUSH);
                emit_proxy_chunk(zbuf, cap - F.zs.avail_out);
                free(zbuf);
            } else {
                emit_nchan_post(F.scratch, len);
            }
            F.sent_records += k;
            F.sent_ubytes += len;
            F.batches++;
            flush_transport();
        }
    }
    G.feeder_cpu += thread_cpu() - c0;
}

static void pub_send_delete(void) {
    char hdr[1024];
    int h = snprintf(hdr, sizeof hdr, "DELETE %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Length: 0\r\n\r\n", O.pub_path,
                     O.pub_host, O.pub_port);
    ob_append(&F.out, hdr, h);
    F.pub_outstanding++;
    F.pub_delete_sent = 1;
    flush_transport();
}

static int find_header(const char *head, int len, const char *name, char *val, int vlen) {
    int nl = strlen(name);
    for (int i = 0; i + nl < len; i++) {
        if ((i == 0 || head[i - 1] == '\n') && strncasecmp(head + i, name, nl) == 0 && head[i + nl] == ':') {
            int j = i + nl + 1;
            while (j < len && (head[j] == ' ' || head[j] == '\t')) j++;
            int k = 0;
            while (j < len && head[j] != '\r' && head[j] != '\n' && k < vlen - 1) val[k++] = head[j++];
            val[k] = 0;
            return 1;
        }
    }
    return 0;
}

static void pub_connect(void) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(O.pub_port)};
    inet_pton(AF_INET, O.pub_host, &sa.sin_addr);
    for (int tries = 0;; tries++) {
        F.pub_fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(F.pub_fd, (struct sockaddr *)&sa, sizeof sa) == 0) break;
        close(F.pub_fd);
        if (tries > 100) die("connect to the publisher");
        usleep(50000);
    }
    int one = 1;
    setsockopt(F.pub_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    set_nonblock(F.pub_fd);
    ep_add(F.pub_fd, &F.pub_tag, EPOLLIN);
    F.pub_connects++;
}

static void pub_readable(void) {
    for (;;) {
        ssize_t k = recv(F.pub_fd, F.pubresp + F.pubresp_len, sizeof F.pubresp - F.pubresp_len - 1, 0);
        if (k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            /* nginx ends keep-alive connections after keepalive_requests: reconnect */
            epoll_ctl(ep, EPOLL_CTL_DEL, F.pub_fd, NULL);
            close(F.pub_fd);
            F.pub_errors += F.pub_outstanding;
            F.out.off = F.out.len = 0;
            F.pubresp_len = 0;
            F.pub_body_left = 0;
            F.pub_outstanding = 0;
            if (F.pub_delete_sent) {
                F.pub_delete_done = 1;
                F.pub_fd = -1;
                return;
            }
            pub_connect();
            return;
        }
        if (k < 0) return;
        F.pubresp_len += k;
        /* consume complete responses */
        for (;;) {
            if (F.pub_body_left > 0) {
                int64_t take = F.pub_body_left < F.pubresp_len ? F.pub_body_left : F.pubresp_len;
                memmove(F.pubresp, F.pubresp + take, F.pubresp_len - take);
                F.pubresp_len -= take;
                F.pub_body_left -= take;
                if (F.pub_body_left > 0) break;
                if (F.pub_outstanding > 0) F.pub_outstanding--;
                if (F.pub_delete_sent && !F.pub_outstanding) F.pub_delete_done = 1;
                continue;
            }
            F.pubresp[F.pubresp_len] = 0;
            char *end = strstr(F.pubresp, "\r\n\r\n");
            if (!end) break;
            int hl = end + 4 - F.pubresp;
            int status = atoi(F.pubresp + 9);
            if (status > 0 && status < 600) F.pub_status[status]++;
            if (status < 200 || status >= 300) F.pub_errors++;
            char v[64];
            int64_t cl = find_header(F.pubresp, hl, "content-length", v, sizeof v) ? atoll(v) : 0;
            memmove(F.pubresp, F.pubresp + hl, F.pubresp_len - hl);
            F.pubresp_len -= hl;
            F.pub_body_left = cl;
            if (cl == 0) {
                if (F.pub_outstanding > 0) F.pub_outstanding--;
                if (F.pub_delete_sent && !F.pub_outstanding) F.pub_delete_done = 1;
            }
        }
        if (F.pubresp_len >= (int)sizeof F.pubresp - 1) F.pubresp_len = 0;
    }
}

static void up_accept(void) {
    for (;;) {
        int fd = accept4(O.upstream_fd, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0) return;
        F.upstream_accepts++;
        if (F.up_fd >= 0) {
            epoll_ctl(ep, EPOLL_CTL_DEL, F.up_fd, NULL);
            close(F.up_fd);
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        F.up_fd = fd;
        F.reqhead_len = 0;
        F.head_done = 0;
        F.up_ready = 0;
        F.out.off = F.out.len = 0;
        if (F.zinit) {
            deflateEnd(&F.zs);
            F.zinit = 0;
        }
        ep_add(fd, &F.up_tag, EPOLLIN);
        event("UPSTREAM_ACCEPTED");
    }
}

static void up_readable(void) {
    char buf[16384];
    for (;;) {
        ssize_t k = recv(F.up_fd, buf, sizeof buf, 0);
        if (k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            epoll_ctl(ep, EPOLL_CTL_DEL, F.up_fd, NULL);
            close(F.up_fd);
            F.up_fd = -1;
            F.up_ready = 0;
            F.up_closed++;
            event("UPSTREAM_CLOSED");
            return;
        }
        if (k < 0) return;
        if (F.head_done) continue; /* discard */
        int room = HEAD_MAX - 1 - F.reqhead_len;
        if (k > room) k = room;
        memcpy(F.reqhead + F.reqhead_len, buf, k);
        F.reqhead_len += k;
        F.reqhead[F.reqhead_len] = 0;
        if (strstr(F.reqhead, "\r\n\r\n")) {
            F.head_done = 1;
            char *eol = strstr(F.reqhead, "\r\n");
            int l = eol - F.reqhead;
            if (l > (int)sizeof F.first_request - 1) l = sizeof F.first_request - 1;
            memcpy(F.first_request, F.reqhead, l);
            F.first_request[l] = 0;
            const char *resp =
                "HTTP/1.1 200 OK\r\nServer: lsbench-feeder\r\nContent-Type: application/json\r\n"
                "Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n";
            ob_append(&F.out, resp, strlen(resp));
            flush_transport();
            F.up_ready = 1;
            /* a reconnecting proxy starts a new gzip member: live re-inits, replay restarts */
            F.next_batch = 0;
            event("UPSTREAM_STREAMING");
        }
    }
}

/* -------------------------------------------------------- consumer engine */

static void lat_add(uint64_t ns) {
    if (G.nlat < MAX_LAT_SAMPLES)
        G.lat[G.nlat++] = ns;
    else
        G.lat_dropped++;
}

static int64_t parse_after(const char *h, int len, const char *key, int *ok) {
    const char *p = memmem(h, len, key, strlen(key));
    *ok = 0;
    if (!p) return 0;
    p += strlen(key);
    const char *e = h + len;
    uint64_t v = 0;
    int digits = 0;
    while (p < e && *p >= '0' && *p <= '9' && digits < 20) {
        v = v * 10 + (*p - '0');
        p++;
        digits++;
    }
    if (!digits || p >= e) return 0; /* value must be complete within the head */
    *ok = 1;
    return (int64_t)v;
}

static void on_record(conn_t *c, uint64_t line_len, char lastch, uint64_t now_ns) {
    /* line_len excludes the LF */
    if (line_len == 1 && lastch == '\r') {
        c->empty++;
        return;
    }
    if (line_len == 0 || lastch != '\r') c->badterm++;
    c->records++;
    int ok1, ok2;
    int64_t low = parse_after(c->lhead, c->lhead_len, "\"hitIdLow\":", &ok1);
    if (c->lhead_len < 1 || c->lhead[0] != '{' || !ok1 || (uint64_t)low < SEQ_BASE) {
        c->bad++;
        return;
    }
    int64_t seq = low - SEQ_BASE;
    if (O.mode != MODE_DIRECT) {
        int64_t want = c->next_seq;
        int64_t modulo = (O.feed == FEED_REPLAY) ? (int64_t)replay_records : 0;
        if (want < 0) {
            c->next_seq = seq + 1;
        } else {
            int64_t w = modulo ? want % modulo : want;
            if (seq == w) {
                c->next_seq = want + 1;
            } else {
                int64_t diff = seq - w;
                if (modulo) diff = ((diff % modulo) + modulo) % modulo;
                if (diff > 0 && (!modulo || diff < modulo / 2)) {
                    c->gaps += diff;
                    c->next_seq = want + diff + 1;
                } else {
                    c->dups++;
                }
            }
        }
    } else {
        c->next_seq = seq + 1;
    }
    int64_t ts = parse_after(c->lhead, c->lhead_len, "\"benchTs\":", &ok2);
    if (ok2 && (uint64_t)ts != TS_PLACEHOLDER && G.in_window && !c->churn) {
        int64_t d = (int64_t)now_ns - ts;
        lat_add(d > 0 ? (uint64_t)d : 0);
    }
}

static void scan_lines(conn_t *c, const char *p, size_t n, uint64_t now_ns) {
    while (n) {
        const char *nl = memchr(p, '\n', n);
        size_t seg = nl ? (size_t)(nl - p) : n;
        if (c->lhead_len < LHEAD) {
            size_t take = LHEAD - c->lhead_len;
            if (take > seg) take = seg;
            memcpy(c->lhead + c->lhead_len, p, take);
            c->lhead_len += take;
        }
        if (seg) c->last = p[seg - 1];
        c->line_bytes += seg;
        if (!nl) return;
        on_record(c, c->line_bytes, c->line_bytes ? c->last : 0, now_ns);
        c->lhead_len = 0;
        c->line_bytes = 0;
        c->last = 0;
        p = nl + 1;
        n -= seg + 1;
    }
}

static void on_payload(conn_t *c, const char *p, size_t n, uint64_t now_ns) {
    if (!n) return;
    c->payload += n;
    if (c->bytes_only) {
        c->ubytes += n;
        return;
    }
    if (n >= 8) {
        memcpy(c->tail8, p + n - 8, 8);
        c->tail_n = 8;
    } else {
        int keep = 8 - (int)n;
        memmove(c->tail8, c->tail8 + n, keep);
        memcpy(c->tail8 + keep, p, n);
        c->tail_n = c->tail_n + (int)n > 8 ? 8 : c->tail_n + (int)n;
    }
    if (!c->gz) {
        c->ubytes += n;
        if (c->sampled) {
            scan_lines(c, p, n, now_ns);
        } else {
            const char *q = p, *e = p + n;
            while ((q = memchr(q, '\n', e - q))) {
                c->records++;
                q++;
            }
        }
        return;
    }
    if (!c->sampled || c->zerr) return;
    if (!c->zs) {
        c->zs = calloc(1, sizeof(z_stream));
        if (inflateInit2(c->zs, 31) != Z_OK) die("inflateInit2");
    }
    z_stream *z = c->zs;
    z->next_in = (Bytef *)p;
    z->avail_in = n;
    while (z->avail_in) {
        if (c->zend) {
            /* another gzip member follows */
            inflateReset(z);
            c->zend = 0;
        }
        z->next_out = (Bytef *)zout;
        z->avail_out = ZOUT_SIZE;
        int r = inflate(z, Z_NO_FLUSH);
        size_t got = ZOUT_SIZE - z->avail_out;
        c->ubytes += got;
        scan_lines(c, zout, got, now_ns);
        if (r == Z_STREAM_END) {
            c->zend = 1;
            c->members++;
        } else if (r == Z_BUF_ERROR) {
            if (got == 0) break;
        } else if (r != Z_OK) {
            c->zerr = 1;
            fprintf(stderr, "lsbench: consumer %d: inflate error %d (%s)\n", c->idx, r, z->msg ? z->msg : "");
            return;
        }
    }
}

static void conn_close(conn_t *c, int rst) {
    if (c->fd >= 0) {
        if (rst) {
            struct linger lg = {1, 0};
            setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    if (c->state == S_CONNECTING) G.inflight--;
    free(c->head);
    c->head = NULL;
    c->state = S_DONE;
}

/* Reset response state for a new attempt on the same slot (direct mode retries). */
static void conn_reset_response(conn_t *c) {
    c->head_len = 0;
    c->status = c->gz = c->chunked = c->until_close = 0;
    c->clen = -1;
    c->cs = CS_SIZE;
    c->chunk_left = 0;
    c->trailer_line = 0;
    c->lhead_len = 0;
    c->line_bytes = 0;
    if (c->zs) {
        inflateReset(c->zs);
        c->zend = 0;
    }
}

static void schedule_retry(conn_t *c) {
    double now = mono();
    if (O.retry_ms > 0 && !G.after_window && !c->churn) {
        c->state = S_WAIT;
        c->wake_at = now + O.retry_ms / 1000.0;
    }
}

static void body_done(conn_t *c) {
    /* a complete response */
    if (c->status == 200) {
        c->clean_end = 1;
        conn_close(c, 0);
        return;
    }
    conn_close(c, 0);
    schedule_retry(c);
}

static void on_eof(conn_t *c) {
    if (c->state == S_BODY && c->until_close) {
        body_done(c);
        return;
    }
    if (!c->churn && !G.ending && O.mode != MODE_DIRECT) c->unexpected_eof++;
    if (!c->churn && O.mode == MODE_DIRECT && c->status == 200) c->unexpected_eof++;
    conn_close(c, 0);
    schedule_retry(c);
}

static void start_connect(conn_t *c) {
    conn_reset_response(c);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(O.target_port)};
    inet_pton(AF_INET, O.target_host, &sa.sin_addr);
    c->fd = fd;
    c->state = S_CONNECTING;
    c->attempts++;
    G.connects_started++;
    G.inflight++;
    int r = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    if (r < 0 && errno != EINPROGRESS) {
        G.connect_errors++;
        conn_close(c, 0);
        c->state = S_WAIT;
        c->wake_at = mono() + 0.05;
        return;
    }
    ep_add(fd, c, EPOLLOUT);
}

static void build_request(conn_t *c) {
    char buf[4096];
    const char *path = c->churn ? O.churn_path : O.path;
    char pathbuf[1200];
    if (c->churn && O.churn_ids > 0) {
        snprintf(pathbuf, sizeof pathbuf, "%s%sconsumer=churn-%d", path, strchr(path, '?') ? "&" : "?",
                 c->idx % O.churn_ids);
        path = pathbuf;
    }
    int len = snprintf(buf, sizeof buf, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: lsbench\r\n%s%s\r\n", path,
                       O.target_host, O.target_port, c->gz ? "Accept-Encoding: gzip\r\n" : "", O.extra_headers);
    free(c->req);
    c->req = malloc(len);
    memcpy(c->req, buf, len);
    c->req_len = len;
    c->req_sent = 0;
}

static void conn_writable(conn_t *c) {
    if (c->state == S_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        G.inflight--;
        if (err) {
            epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
            close(c->fd);
            c->fd = -1;
            if (err == ECONNREFUSED) G.refused_retries++;
            else G.connect_errors++;
            c->state = S_WAIT;
            c->wake_at = mono() + 0.05;
            return;
        }
        c->state = S_SENDING;
        c->gz = O.gzip || c->churn;
        build_request(c);
    }
    if (c->state == S_SENDING) {
        while (c->req_sent < c->req_len) {
            ssize_t k = send(c->fd, c->req + c->req_sent, c->req_len - c->req_sent, MSG_NOSIGNAL);
            if (k > 0) {
                c->req_sent += k;
                continue;
            }
            if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
            on_eof(c);
            return;
        }
        c->state = S_HEAD;
        c->t_get = mono();
        c->head = malloc(HEAD_MAX);
        c->head_len = 0;
        ep_mod(c->fd, c, EPOLLIN);
        if (c->churn) c->close_at = c->t_get + O.churn_hold_ms / 1000.0;
    }
}

/* Body bytes after the head, through the framing. */
static void on_body(conn_t *c, const char *p, size_t n, uint64_t now_ns) {
    if (!c->chunked) {
        if (c->clen >= 0) {
            size_t take = (int64_t)n < c->clen ? n : (size_t)c->clen;
            if (c->status == 200) on_payload(c, p, take, now_ns);
            c->clen -= take;
            if (c->clen == 0) body_done(c);
            return;
        }
        on_payload(c, p, n, now_ns); /* until close */
        return;
    }
    while (n && c->state == S_BODY) {
        switch (c->cs) {
        case CS_SIZE: {
            char ch = *p;
            if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F')) {
                int d = ch <= '9' ? ch - '0' : (ch | 32) - 'a' + 10;
                c->chunk_left = c->chunk_left * 16 + d;
            } else if (ch == '\n') {
                if (c->chunk_left == 0) {
                    c->cs = CS_TRAILER;
                    c->trailer_line = 0;
                } else {
                    c->cs = CS_DATA;
                }
            } else if (ch == ';') {
                c->cs = CS_EXT;
            }
            p++;
            n--;
            break;
        }
        case CS_EXT:
            if (*p == '\n') c->cs = c->chunk_left ? CS_DATA : CS_TRAILER;
            p++;
            n--;
            break;
        case CS_DATA: {
            size_t take = c->chunk_left < n ? c->chunk_left : n;
            if (c->status == 200) on_payload(c, p, take, now_ns);
            p += take;
            n -= take;
            c->chunk_left -= take;
            if (!c->chunk_left) c->cs = CS_DATA_CR;
            break;
        }
        case CS_DATA_CR:
            c->cs = (*p == '\r') ? CS_DATA_LF : CS_SIZE;
            if (*p == '\n') c->cs = CS_SIZE;
            p++;
            n--;
            break;
        case CS_DATA_LF:
            c->cs = CS_SIZE;
            p++;
            n--;
            break;
        case CS_TRAILER:
            if (*p == '\n') {
                if (c->trailer_line == 0) {
                    body_done(c);
                    return;
                }
                c->trailer_line = 0;
            } else if (*p != '\r') {
                c->trailer_line++;
            }
            p++;
            n--;
            break;
        }
    }
}

static void on_head(conn_t *c, uint64_t now_ns) {
    char *end = memmem(c->head, c->head_len, "\r\n\r\n", 4);
    if (!end) {
        if (c->head_len >= HEAD_MAX - 1) on_eof(c);
        return;
    }
    int hl = end + 4 - c->head;
    c->status = (c->head_len > 12) ? atoi(c->head + 9) : 0;
    if (c->status > 0 && c->status < 600) G.status_counts[c->status]++;
    char v[256];
    c->chunked = find_header(c->head, hl, "transfer-encoding", v, sizeof v) && strcasestr(v, "chunked");
    c->gz = find_header(c->head, hl, "content-encoding", v, sizeof v) && strcasestr(v, "gzip");
    c->clen = find_header(c->head, hl, "content-length", v, sizeof v) ? atoll(v) : -1;
    c->until_close = !c->chunked && c->clen < 0;
    c->bytes_only = !c->sampled && !c->gz && !c->churn && O.mode != MODE_DIRECT;
    if (c->status == 200) {
        c->got_200 = 1;
        if (c->churn) G.churn_got_data++;
    }
    c->state = S_BODY;
    c->cs = CS_SIZE;
    c->chunk_left = 0;
    int rest = c->head_len - hl;
    char *tmp = NULL;
    if (rest > 0) {
        tmp = malloc(rest);
        memcpy(tmp, c->head + hl, rest);
    }
    free(c->head);
    c->head = NULL;
    if (!c->chunked && c->clen == 0) {
        body_done(c);
    } else if (rest > 0) {
        on_body(c, tmp, rest, now_ns);
    }
    free(tmp);
}

static void conn_readable(conn_t *c) {
    if (c->bytes_only && c->state == S_BODY && c->status == 200 && !c->gz) {
        /* discard body bytes without copying them; parse only the chunk framing */
        size_t want = 0;
        if (!c->chunked && c->until_close) want = 4u << 20;
        else if (c->chunked && c->cs == CS_DATA && c->chunk_left) want = c->chunk_left;
        if (want) {
            ssize_t k = recv(c->fd, NULL, want, MSG_TRUNC | MSG_DONTWAIT);
            if (k == 0) {
                on_eof(c);
                return;
            }
            if (k < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
                on_eof(c);
                return;
            }
            c->wire += k;
            c->payload += k;
            c->ubytes += k;
            c->t_last_data = mono();
            if (c->chunked) {
                c->chunk_left -= k;
                if (!c->chunk_left) c->cs = CS_DATA_CR;
            }
            return;
        }
        /* chunk header: read a little, so that the next chunk's data is discarded */
        ssize_t k = recv(c->fd, rbuf, 64, 0);
        if (k == 0) {
            on_eof(c);
            return;
        }
        if (k < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
            on_eof(c);
            return;
        }
        c->wire += k;
        c->t_last_data = mono();
        on_body(c, rbuf, k, real_ns());
        return;
    }
    ssize_t k = recv(c->fd, rbuf, RBUF_SIZE, 0);
    if (k == 0) {
        on_eof(c);
        return;
    }
    if (k < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
        on_eof(c);
        return;
    }
    uint64_t now_ns = real_ns();
    c->wire += k;
    c->t_last_data = mono();
    if (c->state == S_HEAD) {
        int room = HEAD_MAX - 1 - c->head_len;
        int take = k < room ? (int)k : room;
        memcpy(c->head + c->head_len, rbuf, take);
        c->head_len += take;
        c->head[c->head_len] = 0;
        on_head(c, now_ns);
        if (take < k && c->state == S_BODY) on_body(c, rbuf + take, k - take, now_ns);
        return;
    }
    if (c->state == S_BODY) on_body(c, rbuf, k, now_ns);
}

/* ------------------------------------------------------------------ watch */

typedef struct {
    long long ticks, uticks, sticks;
    long rss_kb, hwm_kb;
} pstat_t;

static int proc_alive(int pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int alive = 1;
    if (fgets(buf, sizeof buf, f)) {
        char *p = strrchr(buf, ')');
        if (p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X')) alive = 0;
    }
    fclose(f);
    return alive;
}

static pstat_t read_pid(int pid) {
    pstat_t s = {-1, -1, -1, -1, -1};
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (f) {
        if (fgets(buf, sizeof buf, f)) {
            char *p = strrchr(buf, ')');
            if (p) {
                unsigned long ut = 0, st = 0;
                /* fields after ")": state(3) ... utime(14) stime(15) */
                int field = 2;
                char *tok = strtok(p + 2, " ");
                while (tok) {
                    field++;
                    if (field == 14) ut = strtoul(tok, NULL, 10);
                    if (field == 15) {
                        st = strtoul(tok, NULL, 10);
                        break;
                    }
                    tok = strtok(NULL, " ");
                }
                s.ticks = ut + st;
                s.uticks = ut;
                s.sticks = st;
            }
        }
        fclose(f);
    }
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    f = fopen(path, "r");
    if (f) {
        while (fgets(buf, sizeof buf, f)) {
            if (!strncmp(buf, "VmRSS:", 6)) s.rss_kb = atol(buf + 6);
            if (!strncmp(buf, "VmHWM:", 6)) s.hwm_kb = atol(buf + 6);
        }
        fclose(f);
    }
    return s;
}

enum { SN_PRE, SN_CONNECTED, SN_T0, SN_T1, SN_END, SN_COUNT };
static const char *snap_names[SN_COUNT] = {"pre_connect", "connected", "t0", "t1", "end"};
static pstat_t snaps[MAX_WATCH][SN_COUNT];
static double snap_time[SN_COUNT];
static void snapshot(int which) {
    snap_time[which] = mono();
    for (int i = 0; i < O.nwatch; i++) snaps[i][which] = read_pid(O.watch[i]);
}

/* ---------------------------------------------------------------- phases */

enum { P_UPSTREAM, P_CONNECT, P_SETTLE, P_FEED, P_DRAIN, P_END, P_OUT };

/* steady consumers whose GET went out at least once */
static int steady_established(void) {
    int k = 0;
    for (int i = 0; i < O.n; i++)
        if (C[i].t_get > 0) k++;
    return k;
}

static int drained(void) {
    double now = mono();
    for (int i = 0; i < O.n; i++) {
        conn_t *c = &C[i];
        if (c->state == S_DONE) continue;
        if (c->bytes_only) {
            if (c->ubytes < F.sent_ubytes) return 0;
        } else if (c->gz && !c->sampled) {
            if (now - c->t_last_data < 0.3) return 0;
        } else if (c->records < F.sent_records) {
            return 0;
        }
    }
    return 1;
}

static int all_steady_done(void) {
    for (int i = 0; i < O.n; i++)
        if (C[i].state != S_DONE && C[i].state != S_WAIT && C[i].state != S_NEW) return 0;
    return 1;
}

static void timers(double now) {
    /* start / retry connections, bounded in flight */
    for (int i = 0; i < nconn && G.inflight < O.max_inflight; i++) {
        conn_t *c = &C[i];
        if (c->churn) continue;
        if (c->state == S_NEW && G.phase >= P_CONNECT) start_connect(c);
        else if (c->state == S_WAIT && now >= c->wake_at && !G.after_window &&
                 (G.phase == P_CONNECT || O.mode == MODE_DIRECT))
            start_connect(c);
    }
    /* churn */
    if (O.churn && G.in_window) {
        double period = O.duration / O.churn;
        while (G.churn_next < O.churn && now >= G.t0 + G.churn_next * period && G.inflight < O.max_inflight) {
            conn_t *c = &C[O.n + G.churn_next];
            G.churn_next++;
            G.churn_started++;
            start_connect(c);
        }
    }
    if (O.churn) {
        for (int i = O.n; i < nconn; i++) {
            conn_t *c = &C[i];
            if (c->state >= S_HEAD && c->state != S_DONE && c->close_at && now >= c->close_at) {
                int rst = (i % 2) == 0; /* half die hard (RST), half close cleanly */
                if (rst) G.churn_closed_rst++;
                else G.churn_closed_fin++;
                conn_close(c, rst);
            }
        }
    }
}

static void snapshot_window(int which) {
    for (int i = 0; i < nconn; i++) {
        conn_t *c = &C[i];
        if (which == 0) {
            c->w0_payload = c->payload;
            c->w0_ubytes = c->ubytes;
            c->w0_records = c->records;
        } else {
            c->w1_payload = c->payload;
            c->w1_ubytes = c->ubytes;
            c->w1_records = c->records;
        }
    }
}

/* ----------------------------------------------------------------- output */

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void output(void) {
    FILE *o = O.out ? fopen(O.out, "w") : stdout;
    if (!o) die("open --out");
    double window = G.t1 - G.t0;
    const char *modes[] = {"proxy", "nchan", "direct"};
    const char *feeds[] = {"none", "replay", "live"};
    fprintf(o, "{\n \"error\": \"%s\",\n", run_error);
    fprintf(o, " \"mode\": \"%s\", \"feed\": \"%s\", \"n\": %d, \"sample\": %d, \"gzip\": %d, \"rate\": %.1f,\n",
            modes[O.mode], feeds[O.feed], O.n, O.sample, O.gzip, O.rate);
    fprintf(o,
            " \"timeline\": {\"connect_s\": %.3f, \"settle_s\": %.3f, \"warmup_s\": %.3f, \"window_s\": %.4f, "
            "\"drain_s\": %.3f, \"end_s\": %.3f},\n",
            G.t_connected - G.t_start, G.t_feed - G.t_connected, G.t0 - G.t_feed, window,
            G.t_drained ? G.t_drained - G.t1 : -1.0, G.t_done - (G.t_end_sent ? G.t_end_sent : G.t_done));

    /* consumers, window aggregates */
    uint64_t exp_total = F.sent_records;
    uint32_t exp_isize = (uint32_t)(F.sent_ubytes & 0xffffffffu);
    double s_rec = 0, s_pay = 0;
    for (int i = 0; i < O.n; i++)
        if (C[i].gz && C[i].sampled) {
            s_rec += C[i].records;
            s_pay += C[i].payload;
        }
    double agg_ratio = s_pay ? s_rec / s_pay : 0;
    double agg_uratio = 0;
    {
        double u = 0, pl = 0;
        for (int i = 0; i < O.n; i++)
            if (C[i].gz && C[i].sampled) {
                u += C[i].ubytes;
                pl += C[i].payload;
            }
        agg_uratio = pl ? u / pl : 0;
    }
    double w_rec = 0, w_rec_exact = 0, w_rec_est = 0, w_ubytes = 0, w_payload = 0, w_wire_total = 0;
    double pc_min = -1, pc_max = 0;
    uint64_t v_ok = 0, v_mismatch = 0, v_unverified = 0, gaps = 0, dups = 0, bad = 0, badterm = 0, uneof = 0, zerr = 0,
             empty = 0, got200 = 0, clean = 0, attempts = 0, with_data = 0, est_by_agg = 0;
    for (int i = 0; i < O.n; i++) {
        conn_t *c = &C[i];
        double rec, ub;
        double pw = (double)(c->w1_payload - c->w0_payload);
        int verified = 0;
        if (O.mode != MODE_DIRECT && c->bytes_only) {
            verified = c->clean_end && c->ubytes == F.sent_ubytes;
            if (verified) v_ok++;
            else if (c->clean_end) v_mismatch++;
            else v_unverified++;
        } else if (O.mode != MODE_DIRECT) {
            if (!c->gz || c->sampled) {
                verified = c->clean_end && c->records == exp_total && !c->gaps && !c->dups && !c->bad &&
                           !c->badterm && (!c->gz || (c->members >= 1 && !c->zerr));
                if (verified) v_ok++;
                else if (c->clean_end) v_mismatch++;
                else v_unverified++;
            } else {
                uint32_t crc = 0, isize = 0;
                if (c->tail_n == 8) {
                    crc = c->tail8[0] | c->tail8[1] << 8 | c->tail8[2] << 16 | (uint32_t)c->tail8[3] << 24;
                    isize = c->tail8[4] | c->tail8[5] << 8 | c->tail8[6] << 16 | (uint32_t)c->tail8[7] << 24;
                }
                if (!c->clean_end) v_unverified++;
                else if (crc == F.crc && isize == exp_isize) {
                    v_ok++;
                    verified = 1;
                } else v_mismatch++;
            }
        }
        if (c->bytes_only) {
            ub = (double)(c->w1_ubytes - c->w0_ubytes);
            rec = F.sent_ubytes ? ub * F.sent_records / F.sent_ubytes : 0;
            w_rec_est += rec;
        } else if (c->gz && !c->sampled) {
            double ratio = (verified && c->payload) ? (double)exp_total / c->payload : agg_ratio;
            double uratio = (verified && c->payload) ? (double)F.sent_ubytes / c->payload : agg_uratio;
            if (!verified) est_by_agg++;
            rec = pw * ratio;
            ub = pw * uratio;
            w_rec_est += rec;
        } else {
            rec = (double)(c->w1_records - c->w0_records);
            ub = (double)(c->w1_ubytes - c->w0_ubytes);
            w_rec_exact += rec;
        }
        w_rec += rec;
        w_ubytes += ub;
        w_payload += pw;
        w_wire_total += c->wire;
        if (pc_min < 0 || rec < pc_min) pc_min = rec;
        if (rec > pc_max) pc_max = rec;
        gaps += c->gaps;
        dups += c->dups;
        bad += c->bad;
        badterm += c->badterm;
        uneof += c->unexpected_eof;
        zerr += c->zerr;
        empty += c->empty;
        got200 += c->got_200;
        clean += c->clean_end;
        attempts += c->attempts;
        with_data += c->payload > 0;
    }
    fprintf(o,
            " \"consumers\": {\"steady\": %d, \"got_200\": %llu, \"with_data\": %llu, \"clean_end\": %llu, "
            "\"attempts\": %llu,\n",
            O.n, (unsigned long long)got200, (unsigned long long)with_data, (unsigned long long)clean,
            (unsigned long long)attempts);
    fprintf(o,
            "  \"window\": {\"records\": %.1f, \"records_exact\": %.1f, \"records_estimated\": %.1f, "
            "\"ubytes\": %.1f, \"payload_bytes\": %.1f, \"per_consumer_min\": %.1f, \"per_consumer_max\": %.1f, "
            "\"estimated_by_sample_ratio\": %llu},\n",
            w_rec, w_rec_exact, w_rec_est, w_ubytes, w_payload, pc_min < 0 ? 0 : pc_min, pc_max,
            (unsigned long long)est_by_agg);
    fprintf(o,
            "  \"verify\": {\"expected_records\": %llu, \"ok\": %llu, \"mismatch\": %llu, \"unverified\": %llu, "
            "\"gaps\": %llu, \"dups\": %llu, \"bad_records\": %llu, \"bad_terminators\": %llu, "
            "\"empty_records\": %llu, \"unexpected_eof\": %llu, \"inflate_errors\": %llu},\n",
            (unsigned long long)exp_total, (unsigned long long)v_ok, (unsigned long long)v_mismatch,
            (unsigned long long)v_unverified, (unsigned long long)gaps, (unsigned long long)dups,
            (unsigned long long)bad, (unsigned long long)badterm, (unsigned long long)empty,
            (unsigned long long)uneof, (unsigned long long)zerr);
    fprintf(o, "  \"wire_bytes_total\": %.0f,\n", w_wire_total);
    double churn_payload = 0, churn_ubytes_max = 0;
    for (int i = O.n; i < nconn; i++) {
        churn_payload += C[i].payload;
        if (C[i].payload > churn_ubytes_max) churn_ubytes_max = C[i].payload;
    }
    fprintf(o, "  \"churn_payload_bytes\": %.0f, \"churn_payload_max\": %.0f,\n", churn_payload, churn_ubytes_max);
    fprintf(o, "  \"statuses\": {");
    int first = 1;
    for (int s = 0; s < 600; s++)
        if (G.status_counts[s]) {
            fprintf(o, "%s\"%d\": %llu", first ? "" : ", ", s, (unsigned long long)G.status_counts[s]);
            first = 0;
        }
    fprintf(o, "},\n");
    fprintf(o,
            "  \"connects_started\": %llu, \"refused_retries\": %llu, \"connect_errors\": %llu,\n"
            "  \"churn\": {\"planned\": %d, \"started\": %llu, \"got_200\": %llu, \"closed_rst\": %llu, "
            "\"closed_fin\": %llu}\n },\n",
            (unsigned long long)G.connects_started, (unsigned long long)G.refused_retries,
            (unsigned long long)G.connect_errors, O.churn, (unsigned long long)G.churn_started,
            (unsigned long long)G.churn_got_data, (unsigned long long)G.churn_closed_rst,
            (unsigned long long)G.churn_closed_fin);

    /* feeder */
    fprintf(o,
            " \"feeder\": {\"records_sent\": %llu, \"ubytes_sent\": %llu, \"wire_bytes_sent\": %llu, "
            "\"batches\": %llu, \"records_window\": %llu, \"upstream_accepts\": %d, \"upstream_closed\": %d, "
            "\"upstream_request\": \"",
            (unsigned long long)F.sent_records, (unsigned long long)F.sent_ubytes, (unsigned long long)F.sent_wire,
            (unsigned long long)F.batches, (unsigned long long)(F.w1_sent - F.w0_sent), F.upstream_accepts,
            F.up_closed);
    for (const char *p = F.first_request; *p; p++)
        if (*p != '"' && *p != '\\') fputc(*p, o);
    fprintf(o,
            "\", \"credit_blocked_s\": %.3f, \"transport_blocked_s\": %.3f, \"pub_msgs\": %llu, "
            "\"pub_errors\": %llu, \"pub_connects\": %llu, \"replay_loops\": %llu, \"crc\": %u},\n",
            F.credit_blocked, F.up_blocked, (unsigned long long)F.pub_msgs, (unsigned long long)F.pub_errors,
            (unsigned long long)F.pub_connects,
            (unsigned long long)F.members_sent, F.crc);

    /* latency */
    uint64_t p50 = 0, p90 = 0, p99 = 0, p999 = 0, mx = 0;
    if (G.nlat) {
        qsort(G.lat, G.nlat, sizeof(uint64_t), cmp_u64);
        p50 = G.lat[(size_t)(G.nlat * 0.50)];
        p90 = G.lat[(size_t)(G.nlat * 0.90)];
        p99 = G.lat[(size_t)(G.nlat * 0.99)];
        p999 = G.lat[(size_t)(G.nlat * 0.999)];
        mx = G.lat[G.nlat - 1];
    }
    fprintf(o,
            " \"latency_ns\": {\"count\": %llu, \"p50\": %llu, \"p90\": %llu, \"p99\": %llu, \"p999\": %llu, "
            "\"max\": %llu, \"dropped\": %llu},\n",
            (unsigned long long)G.nlat, (unsigned long long)p50, (unsigned long long)p90, (unsigned long long)p99,
            (unsigned long long)p999, (unsigned long long)mx, (unsigned long long)G.lat_dropped);

    /* watched processes */
    fprintf(o, " \"clk_tck\": %ld,\n \"watch\": [", sysconf(_SC_CLK_TCK));
    for (int w = 0; w < O.nwatch; w++) {
        fprintf(o, "%s\n  {\"pid\": %d", w ? "," : "", O.watch[w]);
        for (int s = 0; s < SN_COUNT; s++)
            fprintf(o,
                    ", \"%s\": {\"ticks\": %lld, \"uticks\": %lld, \"sticks\": %lld, \"rss_kb\": %ld, "
                    "\"hwm_kb\": %ld, \"t\": %.4f}",
                    snap_names[s], snaps[w][s].ticks, snaps[w][s].uticks, snaps[w][s].sticks, snaps[w][s].rss_kb,
                    snaps[w][s].hwm_kb,
                    snap_time[s] ? snap_time[s] - G.t_start : -1.0);
        fprintf(o, "}");
    }
    fprintf(o, "],\n");
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    fprintf(o,
            " \"loadgen\": {\"cpu_s_window\": %.4f, \"feeder_cpu_s_window\": %.4f, \"cpu_s_total\": %.4f, "
            "\"maxrss_kb\": %ld}\n}\n",
            G.cpu_t1 - G.cpu_t0, G.feeder_cpu_w1 - G.feeder_cpu_w0, self_cpu(), ru.ru_maxrss);
    if (o != stdout) fclose(o);
}

/* ------------------------------------------------------------------- main */

static void parse_hostport(const char *s, char *host, int *port) {
    const char *c = strrchr(s, ':');
    if (!c) {
        fprintf(stderr, "lsbench: expected HOST:PORT, got %s\n", s);
        exit(2);
    }
    snprintf(host, 64, "%.*s", (int)(c - s), s);
    *port = atoi(c + 1);
}

static void usage(void) {
    fprintf(stderr,
            "usage: lsbench --mode proxy|nchan|direct --target H:P --path P [--gzip] -n N [--sample K]\n"
            "  [--corpus DIR] [--feed replay|live] [--rate R] [--feed-limit N] [--lead L] [--live-level L]\n"
            "  [--upstream-fd FD] [--publish H:P --pub-path P] [--header 'K: V']...\n"
            "  [--settle S] [--warmup S] [--duration S] [--drain S] [--end-wait S] [--connect-timeout S]\n"
            "  [--end-pid PID | --end-delete] [--watch PID]... [--retry-ms MS]\n"
            "  [--churn C --churn-hold-ms MS --churn-ids K --churn-path P] [--max-inflight N] [--out FILE]\n");
    exit(2);
}

int main(int argc, char **argv) {
    memset(&O, 0, sizeof O);
    O.mode = MODE_PROXY;
    O.feed = FEED_NONE;
    O.upstream_fd = -1;
    O.lead = 4096;
    O.live_level = 1;
    O.settle = 0.5;
    O.warmup = 1;
    O.duration = 5;
    O.drain = 15;
    O.end_wait = 10;
    O.connect_timeout = 20;
    O.sample = -1;
    O.max_inflight = 256;
    O.churn_hold_ms = 500;
    O.pub_batches = 4;
    O.pub_pipeline = 16;
    O.tick_ms = 1.0;
    static struct option lo[] = {{"mode", 1, 0, 'm'},        {"target", 1, 0, 't'},       {"path", 1, 0, 'p'},
                                 {"gzip", 0, 0, 'g'},        {"n", 1, 0, 'n'},            {"sample", 1, 0, 's'},
                                 {"corpus", 1, 0, 'c'},      {"feed", 1, 0, 'f'},         {"rate", 1, 0, 'r'},
                                 {"feed-limit", 1, 0, 'L'},  {"lead", 1, 0, 'l'},         {"live-level", 1, 0, 'v'},
                                 {"upstream-fd", 1, 0, 'u'}, {"publish", 1, 0, 'P'},      {"pub-path", 1, 0, 'Q'},
                                 {"header", 1, 0, 'H'},      {"settle", 1, 0, 'S'},       {"warmup", 1, 0, 'W'},
                                 {"duration", 1, 0, 'D'},    {"drain", 1, 0, 'R'},        {"end-wait", 1, 0, 'E'},
                                 {"end-pid", 1, 0, 'k'},     {"end-delete", 0, 0, 'x'},   {"watch", 1, 0, 'w'},
                                 {"retry-ms", 1, 0, 'y'},    {"churn", 1, 0, 'C'},        {"churn-hold-ms", 1, 0, 'h'},
                                 {"churn-ids", 1, 0, 'i'},   {"churn-path", 1, 0, 'j'},   {"out", 1, 0, 'o'},
                                 {"max-inflight", 1, 0, 'M'}, {"connect-timeout", 1, 0, 'T'}, {"pub-batches", 1, 0, 'B'}, {"pub-pipeline", 1, 0, 'K'}, {"tick-ms", 1, 0, 'Z'},
                                 {0, 0, 0, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "n:", lo, NULL)) != -1) {
        switch (opt) {
        case 'm':
            O.mode = !strcmp(optarg, "proxy") ? MODE_PROXY : !strcmp(optarg, "nchan") ? MODE_NCHAN : MODE_DIRECT;
            break;
        case 't': parse_hostport(optarg, O.target_host, &O.target_port); break;
        case 'p': snprintf(O.path, sizeof O.path, "%s", optarg); break;
        case 'g': O.gzip = 1; break;
        case 'n': O.n = atoi(optarg); break;
        case 's': O.sample = atoi(optarg); break;
        case 'c': O.corpus = optarg; break;
        case 'f': O.feed = !strcmp(optarg, "replay") ? FEED_REPLAY : !strcmp(optarg, "live") ? FEED_LIVE : FEED_NONE; break;
        case 'r': O.rate = atof(optarg); break;
        case 'L': O.feed_limit = strtoull(optarg, NULL, 10); break;
        case 'l': O.lead = atoll(optarg); break;
        case 'v': O.live_level = atoi(optarg); break;
        case 'u': O.upstream_fd = atoi(optarg); break;
        case 'P': parse_hostport(optarg, O.pub_host, &O.pub_port); break;
        case 'Q': snprintf(O.pub_path, sizeof O.pub_path, "%s", optarg); break;
        case 'H': {
            size_t l = strlen(O.extra_headers);
            snprintf(O.extra_headers + l, sizeof O.extra_headers - l, "%s\r\n", optarg);
            break;
        }
        case 'S': O.settle = atof(optarg); break;
        case 'W': O.warmup = atof(optarg); break;
        case 'D': O.duration = atof(optarg); break;
        case 'R': O.drain = atof(optarg); break;
        case 'E': O.end_wait = atof(optarg); break;
        case 'k': O.end_pid = atoi(optarg); break;
        case 'x': O.end_delete = 1; break;
        case 'w':
            if (O.nwatch < MAX_WATCH) O.watch[O.nwatch++] = atoi(optarg);
            break;
        case 'y': O.retry_ms = atoi(optarg); break;
        case 'C': O.churn = atoi(optarg); break;
        case 'h': O.churn_hold_ms = atoi(optarg); break;
        case 'i': O.churn_ids = atoi(optarg); break;
        case 'j': snprintf(O.churn_path, sizeof O.churn_path, "%s", optarg); break;
        case 'o': O.out = optarg; break;
        case 'M': O.max_inflight = atoi(optarg); break;
        case 'T': O.connect_timeout = atof(optarg); break;
        case 'B': O.pub_batches = atoi(optarg); break;
        case 'K': O.pub_pipeline = atoi(optarg); break;
        case 'Z': O.tick_ms = atof(optarg); break;
        default: usage();
        }
    }
    if (!O.target_port || (!O.path[0] && O.n)) usage();
    if (!O.churn_path[0]) snprintf(O.churn_path, sizeof O.churn_path, "%s", O.path);
    if (O.sample < 0 || O.sample > O.n) O.sample = O.n;
    if (O.feed != FEED_NONE && !O.corpus) usage();
    if (O.duration <= 0 || O.duration > 600 || O.warmup < 0 || O.warmup > 120) usage(); /* bounded runs */
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);

    if (O.corpus) {
        size_t l;
        base_data = map_file(O.corpus, "base.bin", &l);
        base_idx = map_file(O.corpus, "base.idx", &l);
        base_n = l / sizeof(recidx_t);
        replay_gz = map_file(O.corpus, "replay.gz", &l);
        replay_idx = map_file(O.corpus, "replay.idx", &l);
        replay_nb = l / sizeof(batch_t);
        for (size_t i = 0; i < replay_nb; i++) replay_records += replay_idx[i].nrec;
    }
    rbuf = malloc(RBUF_SIZE);
    zout = malloc(ZOUT_SIZE);
    G.lat = malloc(sizeof(uint64_t) * MAX_LAT_SAMPLES);
    nconn = O.n + O.churn;
    C = calloc(nconn ? nconn : 1, sizeof(conn_t));
    int stride = O.sample ? O.n / O.sample : 0;
    for (int i = 0; i < nconn; i++) {
        C[i].tag.type = T_CONSUMER;
        C[i].idx = i;
        C[i].fd = -1;
        C[i].state = S_NEW;
        C[i].next_seq = (O.mode == MODE_DIRECT) ? -1 : 0;
        C[i].churn = i >= O.n;
        C[i].sampled = !C[i].churn && stride && (i % stride == 0) && (i / stride < O.sample);
        C[i].gz = O.gzip;
        C[i].clen = -1;
        if (C[i].churn) C[i].next_seq = -1;
    }
    ep = epoll_create1(0);
    F.up_fd = -1;
    F.pub_fd = -1;
    F.up_tag.type = T_UPSTREAM;
    F.listen_tag.type = T_UPLISTEN;
    F.pub_tag.type = T_PUB;

    G.t_start = mono();
    G.phase = P_CONNECT;
    if (O.mode == MODE_PROXY) {
        if (O.upstream_fd < 0) usage();
        set_nonblock(O.upstream_fd);
        ep_add(O.upstream_fd, &F.listen_tag, EPOLLIN);
        G.phase = P_UPSTREAM;
    } else if (O.mode == MODE_NCHAN) {
        pub_connect();
    }
    event("START");
    if (G.phase == P_CONNECT) snapshot(SN_PRE);

    struct epoll_event evs[512];
    double connect_deadline = G.t_start + O.connect_timeout;
    double last_timers = 0;
    while (G.phase != P_OUT) {
        double now = mono();
        switch (G.phase) {
        case P_UPSTREAM:
            if (F.up_ready) {
                snapshot(SN_PRE);
                G.phase = P_CONNECT;
                connect_deadline = now + O.connect_timeout;
            } else if (now > G.t_start + 30 || (O.end_pid && (int)(now * 10) % 2 == 0 && !proc_alive(O.end_pid))) {
                snprintf(run_error, sizeof run_error, "%s",
                         now > G.t_start + 30 ? "no upstream connection within 30 s" : "the proxy exited");
                fprintf(stderr, "lsbench: %s\n", run_error);
                G.phase = P_OUT;
            }
            break;
        case P_CONNECT:
            if (steady_established() >= O.n || now > connect_deadline) {
                if (steady_established() < O.n)
                    fprintf(stderr, "lsbench: only %d of %d consumers established\n", steady_established(), O.n);
                G.t_connected = now;
                event("CONNECTED");
                G.phase = P_SETTLE;
            }
            break;
        case P_SETTLE:
            if (now >= G.t_connected + O.settle) {
                snapshot(SN_CONNECTED);
                G.t_feed = now;
                F.feed_t = now;
                F.feeding = O.feed != FEED_NONE;
                G.phase = P_FEED;
                event("FEED");
            }
            break;
        case P_FEED:
            if (!G.in_window && !G.after_window && now >= G.t_feed + O.warmup) {
                G.t0 = now;
                G.in_window = 1;
                snapshot_window(0);
                F.w0_sent = F.sent_records;
                G.cpu_t0 = self_cpu();
                G.feeder_cpu_w0 = G.feeder_cpu;
                snapshot(SN_T0);
                event("T0");
            }
            if (G.in_window && now >= G.t0 + O.duration) {
                G.t1 = now;
                snapshot_window(1);
                F.w1_sent = F.sent_records;
                G.cpu_t1 = self_cpu();
                G.feeder_cpu_w1 = G.feeder_cpu;
                snapshot(SN_T1);
                if (F.blocked_since) F.credit_blocked += now - F.blocked_since;
                if (F.up_blocked_since) F.up_blocked += now - F.up_blocked_since;
                G.in_window = 0;
                G.after_window = 1;
                F.stopped = 1;
                event("T1");
                G.phase = P_DRAIN;
                if (O.churn)
                    for (int i = O.n; i < nconn; i++)
                        if (C[i].state != S_DONE && C[i].state != S_NEW) conn_close(&C[i], 0);
            }
            break;
        case P_DRAIN:
            if (O.mode == MODE_DIRECT || drained() || now > G.t1 + O.drain) {
                G.t_drained = now;
                event(drained() ? "DRAINED" : "DRAIN_TIMEOUT");
                snapshot(SN_END);
                G.ending = 1;
                G.t_end_sent = now;
                if (O.end_pid) {
                    kill(O.end_pid, SIGTERM);
                } else if (O.end_delete && F.pub_fd >= 0) {
                    /* wait for an outstanding publish first */
                    double until = now + 2;
                    while ((F.pub_outstanding || ob_pending(&F.out)) && F.pub_fd >= 0 && mono() < until) {
                        int k = epoll_wait(ep, evs, 1, 5);
                        (void)k;
                        flush_transport();
                        pub_readable();
                    }
                    if (F.pub_fd >= 0) pub_send_delete();
                } else {
                    for (int i = 0; i < nconn; i++)
                        if (C[i].state != S_DONE) conn_close(&C[i], 0);
                }
                event("END_SENT");
                G.phase = P_END;
            }
            break;
        case P_END:
            if (all_steady_done() || now > G.t_end_sent + O.end_wait) {
                for (int i = 0; i < nconn; i++)
                    if (C[i].state != S_DONE) conn_close(&C[i], 0);
                G.t_done = now;
                event("DONE");
                G.phase = P_OUT;
            }
            break;
        }
        if (G.phase == P_OUT) break;
        static double last_alive;
        if (O.end_pid && !G.ending && G.phase != P_UPSTREAM && now - last_alive > 0.1 &&
            (last_alive = now, !proc_alive(O.end_pid))) {
            snprintf(run_error, sizeof run_error, "the proxy exited during the run");
            fprintf(stderr, "lsbench: %s\n", run_error);
            break;
        }

        int k = epoll_wait(ep, evs, 512, 1);
        for (int i = 0; i < k; i++) {
            tag_t *t = evs[i].data.ptr;
            uint32_t e = evs[i].events;
            if (t->type == T_CONSUMER) {
                conn_t *c = (conn_t *)t;
                if (c->state == S_DONE || c->fd < 0) continue;
                if (e & (EPOLLOUT)) conn_writable(c);
                else if (c->state == S_CONNECTING && (e & (EPOLLERR | EPOLLHUP))) conn_writable(c);
                if (c->fd >= 0 && (e & (EPOLLIN | EPOLLHUP | EPOLLERR)) && c->state >= S_HEAD && c->state != S_DONE)
                    conn_readable(c);
            } else if (t->type == T_UPLISTEN) {
                up_accept();
            } else if (t->type == T_UPSTREAM) {
                if (e & EPOLLOUT) flush_transport();
                if (F.up_fd >= 0 && (e & (EPOLLIN | EPOLLHUP | EPOLLERR))) up_readable();
            } else if (t->type == T_PUB) {
                if (F.pub_fd < 0) continue;
                if (e & EPOLLOUT) flush_transport();
                if (e & (EPOLLIN | EPOLLHUP | EPOLLERR)) pub_readable();
            }
        }
        feed_step();
        now = mono();
        if (now - last_timers > 0.001) {
            timers(now);
            last_timers = now;
        }
    }
    output();
    return 0;
}
