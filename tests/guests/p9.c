/*
 * p9: a virtio-9p driver and 9P2000.L client written from the virtio 1.x
 * spec (device ID 9: config space = le16 tag_len + tag, feature 0
 * VIRTIO_9P_MOUNT_TAG, one request queue whose chains carry a T-message
 * in device-readable buffers and room for the R-message in
 * device-writable ones) and the 9P2000.L message layouts (as Linux's
 * net/9p sends them). It runs against the virtio-9p device whose mount
 * tag is tag= (the first one without it).
 *
 * Parameters: tag=NAME (the mount tag to find), file=NAME (a file at the
 * share's root), len=N and crc=0xC (its length and CRC-32), link=NAME (a
 * symbolic link at the root pointing out of the share; walking through it
 * must stop at the link), msize=N (proposed, default 32768).
 *
 * Steps: config space; Tversion; Tattach; Twalk to the file, Tlopen,
 * Tread to the end (alternating a single reply buffer and Linux's
 * zero-copy layout: an 11-byte header buffer, then the data buffer),
 * checking length and CRC; Tclunk; Twalk ".." from the root (must stay at
 * the root), "../<file>" (found at the root again), a name with a '/' (an
 * error), through the link (stops at the link, a symlink qid), Treadlink
 * of the link; Tclunk of an unknown fid (an error). Prints "P9 OK" and
 * exits 0; 60..69 say which step failed.
 */
#include "virtio.h"

#define VIRTIO_ID_9P 9
#define VIRTIO_9P_MOUNT_TAG 0

#define RLERROR 7
#define TLOPEN 12
#define TREADLINK 22
#define TVERSION 100
#define TATTACH 104
#define TWALK 110
#define TREAD 116
#define TCLUNK 120
#define NOFID 0xffffffffu
#define QTDIR 0x80
#define QTSYMLINK 0x02

static struct vdev dev;
static struct vq q;
static u8 *req;   /* T-message under construction */
static u8 *hdr;   /* 11-byte reply header buffer (zero-copy layout) */
static u8 *rep;   /* reply buffer */
static u32 msize;
static u16 tag;
static u32 req_len;

static void put8(u8 v) { req[req_len++] = v; }
static void put16(u16 v) { put8((u8)v); put8((u8)(v >> 8)); }
static void put32(u32 v) { put16((u16)v); put16((u16)(v >> 16)); }
static void put64(u64 v) { put32((u32)v); put32((u32)(v >> 32)); }
static void puts9(const char *s, size_t n)
{
    put16((u16)n);
    memcpy(req + req_len, s, n);
    req_len += (u32)n;
}
static u16 get16(const u8 *p) { return (u16)(p[0] | p[1] << 8); }
static u32 get32(const u8 *p) { return (u32)get16(p) | (u32)get16(p + 2) << 16; }

static void begin(u8 type)
{
    req_len = 0;
    put32(0);
    put8(type);
    put16(++tag);
}

/* Sends the request; the reply lands in `rep` (`cap` bytes). Returns its
 * type, or 0 if it is malformed; *len is the reply length. */
static u8 rpc(u32 cap, u32 *len)
{
    for (int i = 0; i < 4; i++)
        req[i] = (u8)(req_len >> (8 * i));
    struct vbuf b[2] = {{(u64)req, req_len, false}, {(u64)rep, cap, true}};
    i64 used = vq_request(&dev, &q, b, 2);
    if (used < 7 || get32(rep) != (u64)used || get16(rep + 5) != tag) {
        rt_printf("p9: bad reply: used %ld size %u tag %u (want %u)\n", used, get32(rep), get16(rep + 5), tag);
        return 0;
    }
    *len = (u32)used;
    return rep[4];
}

static u32 lerror(void) { return rep[4] == RLERROR ? get32(rep + 7) : 0; }

/* Twalk fid -> newfid over `n` names (each a NUL-terminated string).
 * Returns the number of qids, or -errno; qids land at rep + 9. */
static int walk(u32 fid, u32 newfid, const char **names, int n)
{
    u32 len;
    begin(TWALK);
    put32(fid);
    put32(newfid);
    put16((u16)n);
    for (int i = 0; i < n; i++)
        puts9(names[i], strlen(names[i]));
    u8 t = rpc(512, &len);
    if (t == RLERROR)
        return -(int)lerror();
    if (t != TWALK + 1 || len != 9u + 13u * get16(rep + 7))
        return -1000;
    return get16(rep + 7);
}

static bool clunk(u32 fid)
{
    u32 len;
    begin(TCLUNK);
    put32(fid);
    return rpc(64, &len) == TCLUNK + 1;
}

/* A parameter value copied into a NUL-terminated buffer. */
static const char *param_str(const char *name, char *buf, size_t size)
{
    const char *v = rt_param(name);
    if (!v)
        return NULL;
    size_t n = rt_param_len(v);
    if (n >= size)
        n = size - 1;
    memcpy(buf, v, n);
    buf[n] = 0;
    return buf;
}

int main(void)
{
    static char tagbuf[64], file[64], link[64];
    /* The 9P device whose mount tag is tag= (the first one without it):
     * the tag is in config space once MOUNT_TAG is negotiated. */
    const char *want_tag = rt_param("tag");
    u16 tlen = 0;
    for (int nth = 0;; nth++) {
        CHECK(vio_find(VIRTIO_ID_9P, nth, &dev), 60);
        CHECK(vio_negotiate(&dev, BIT(VIRTIO_9P_MOUNT_TAG)), 60);
        CHECK(dev.features & BIT(VIRTIO_9P_MOUNT_TAG), 60);
        tlen = vio_cfg16(&dev, 0);
        CHECK(tlen > 0 && tlen < sizeof(tagbuf), 61);
        for (u16 i = 0; i < tlen; i++)
            tagbuf[i] = (char)vio_cfg8(&dev, 2u + i);
        tagbuf[tlen] = 0;
        rt_printf("p9: mount tag [%s]\n", tagbuf);
        if (!want_tag || (rt_param_len(want_tag) == tlen && !strncmp(want_tag, tagbuf, tlen)))
            break;
        vio_reset(&dev);
    }
    CHECK(vio_queue(&dev, &q, 0, 0), 60);
    msize = (u32)rt_param_u64("msize", 32768);
    req = vio_alloc(512, 16);
    hdr = vio_alloc(11, 1);
    rep = vio_alloc(msize, 4096);
    vio_driver_ok(&dev);

    /* Tversion. */
    u32 len;
    begin(TVERSION);
    req[5] = req[6] = 0xff; /* NOTAG */
    tag = 0xffff;
    put32(msize);
    puts9("9P2000.L", 8);
    CHECK(rpc(msize, &len) == TVERSION + 1, 62);
    u32 agreed = get32(rep + 7);
    CHECK(get16(rep + 11) == 8 && !memcmp(rep + 13, "9P2000.L", 8), 62);
    CHECK(agreed >= 4096 && agreed <= msize, 62);
    msize = agreed;
    tag = 0;

    /* Tattach: fid 0 is the root. */
    begin(TATTACH);
    put32(0);
    put32(NOFID);
    puts9("root", 4);
    puts9("", 0);
    put32(0);
    CHECK(rpc(64, &len) == TATTACH + 1 && len == 20, 63);
    u8 root_qid[13];
    memcpy(root_qid, rep + 7, 13);
    CHECK(root_qid[0] & QTDIR, 63);

    /* The file, byte for byte. */
    CHECK(param_str("file", file, sizeof(file)), 64);
    const char *names[3] = {file};
    CHECK(walk(0, 1, names, 1) == 1, 64);
    u8 file_qid[13];
    memcpy(file_qid, rep + 9, 13);
    CHECK(file_qid[0] == 0, 64);
    begin(TLOPEN);
    put32(1);
    put32(0); /* O_RDONLY */
    CHECK(rpc(64, &len) == TLOPEN + 1 && len == 24, 64);
    u64 off = 0;
    u32 crc = 0;
    u64 want_len = rt_param_u64("len", 0);
    int reads = 0;
    for (;;) {
        u32 count = msize - 24;
        begin(TREAD);
        put32(1);
        put64(off);
        put32(count);
        for (int i = 0; i < 4; i++)
            req[i] = (u8)(req_len >> (8 * i));
        const u8 *h, *data;
        i64 used;
        if (reads++ % 2) {
            /* Zero-copy layout: header buffer, then the data buffer. */
            struct vbuf b[3] = {{(u64)req, req_len, false}, {(u64)hdr, 11, true}, {(u64)rep, count, true}};
            used = vq_request(&dev, &q, b, 3);
            h = hdr;
            data = rep;
        } else {
            struct vbuf b[2] = {{(u64)req, req_len, false}, {(u64)rep, count + 11, true}};
            used = vq_request(&dev, &q, b, 2);
            h = rep;
            data = rep + 11;
        }
        CHECK(used >= 11 && h[4] == TREAD + 1 && get16(h + 5) == tag, 65);
        u32 n = get32(h + 7);
        CHECK(used == 11 + (i64)n && n <= count, 65);
        if (n == 0)
            break;
        /* CRC-32 of the whole file, chunk by chunk (zlib's running form). */
        u32 c = ~crc;
        for (u32 i = 0; i < n; i++) {
            c ^= data[i];
            for (int k = 0; k < 8; k++)
                c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
        }
        crc = ~c;
        off += n;
    }
    rt_printf("p9: read %lu bytes in %d requests, crc %x\n", off, reads, crc);
    CHECK(off == want_len, 66);
    if (rt_param("crc"))
        CHECK(crc == (u32)rt_param_u64("crc", 0), 66);
    CHECK(clunk(1), 66);

    /* `..` from the root is the root. */
    names[0] = "..";
    CHECK(walk(0, 2, names, 1) == 1, 67);
    CHECK(!memcmp(rep + 9, root_qid, 13), 67);
    names[1] = "..";
    names[2] = file;
    CHECK(walk(0, 3, names, 3) == 3, 67);
    CHECK(!memcmp(rep + 9, root_qid, 13) && !memcmp(rep + 22, root_qid, 13), 67);
    CHECK(!memcmp(rep + 35, file_qid, 13), 67);
    /* A name with a slash is no path. */
    names[0] = "../etc";
    CHECK(walk(0, 4, names, 1) < 0, 67);
    rt_printf("p9: '..' stays at the root\n");

    /* Through a link out of the share: the walk stops at the link. */
    if (param_str("link", link, sizeof(link))) {
        names[0] = link;
        names[1] = "passwd";
        int n = walk(0, 5, names, 2);
        rt_printf("p9: walk %s/passwd: %d\n", link, n);
        CHECK(n == 1 || n < 0, 68);
        CHECK(walk(0, 5, names, 1) == 1 && rep[9] == QTSYMLINK, 68);
        begin(TREADLINK);
        put32(5);
        CHECK(rpc(512, &len) == TREADLINK + 1, 68);
        u16 tl = get16(rep + 7);
        CHECK(len == 9u + tl, 68);
        rep[9 + tl] = 0;
        rt_printf("p9: %s -> %s (not followed)\n", link, (char *)rep + 9);
    }

    /* An unknown fid. */
    begin(TCLUNK);
    put32(4242);
    CHECK(rpc(64, &len) == RLERROR && len == 11 && lerror() != 0, 69);

    rt_printf("P9 OK\n");
    return 0;
}
