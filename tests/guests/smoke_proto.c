/*
 * smoke_proto: stands in for Linux under `ember smoke`. Linked without a
 * PVH note (see the Makefile), so ember enters it through the Linux 64-bit
 * boot protocol and it finds the initramfs through the zero page, as Linux
 * does. It parses the cpio newc archive(s), checks what ember put there, and
 * prints the markers /init would print, with the status from its command
 * line. Then it resets the machine (i8042), as `reboot -f` would.
 *
 * Parameters: proto_exit=N (the "command's" exit status), bb_size=N (the
 * size of /bin/busybox), extra_file=NAME (an entry that must come from the
 * user's --initrd archive appended after ember's), proto_forge=1 (first
 * print exit markers without the run's nonce, as a command could).
 * The markers carry the nonce ember put in /.ember-nonce.
 * Exit codes if a check fails: 70 no initrd / not via the zero page, 71 bad
 * archive, 72 /init wrong, 73 /bin/busybox wrong, 74 /dev/console wrong,
 * 75 extra_file missing, 76 no applet links, 77 no nonce.
 */
#include "rt.h"

static u32 hex8(const char *p)
{
    u32 v = 0;
    for (int i = 0; i < 8; i++) {
        char c = p[i];
        v = v * 16 + (u32)(c >= 'a' ? c - 'a' + 10 : c >= 'A' ? c - 'A' + 10 : c - '0');
    }
    return v;
}

static bool name_is(const char *name, u32 len, const char *want)
{
    return len == strlen(want) && !memcmp(name, want, len);
}

int main(void)
{
    CHECK(rt_boot.kind == BOOT_LINUX64, 70);
    CHECK(rt_boot.initrd_addr && rt_boot.initrd_size, 70);
    const char *p = (const char *)rt_boot.initrd_addr;
    const char *end = p + rt_boot.initrd_size;
    const char *extra = rt_param("extra_file");
    u32 extra_len = extra ? (u32)rt_param_len(extra) : 0;
    bool init_ok = false, bb_ok = false, console_ok = false, extra_ok = !extra;
    u32 links = 0, entries = 0, archives = 0;
    u64 bb_size = rt_param_u64("bb_size", 0);
    char nonce[65];
    u32 nonce_len = 0;
    while (p + 110 <= end) {
        if (p[0] == 0) { /* padding between concatenated archives */
            p += 4;
            continue;
        }
        CHECK(!memcmp(p, "070701", 6), 71);
        u32 mode = hex8(p + 14), size = hex8(p + 54), rmaj = hex8(p + 78), rmin = hex8(p + 86);
        u32 namesize = hex8(p + 94);
        const char *name = p + 110;
        CHECK(namesize >= 1 && name + namesize <= end, 71);
        u32 nlen = namesize - 1;
        const char *data = (const char *)(((u64)name + namesize + 3) & ~3ul);
        CHECK(data + size <= end, 71);
        if (name_is(name, nlen, "TRAILER!!!")) {
            archives++;
        } else {
            entries++;
            if (name_is(name, nlen, "init")) {
                init_ok = mode == 0100755 && size > 2 && data[0] == '#' && data[1] == '!';
            } else if (name_is(name, nlen, "bin/busybox")) {
                bb_ok = mode == 0100755 && (!bb_size || size == bb_size);
                rt_printf("proto: bin/busybox mode %x size %u\n", mode, size);
            } else if (name_is(name, nlen, "dev/console")) {
                console_ok = (mode & 0170000) == 0020000 && rmaj == 5 && rmin == 1;
            } else if (name_is(name, nlen, ".ember-nonce")) {
                nonce_len = 0;
                while (nonce_len < size && nonce_len < 64 && data[nonce_len] != '\n') {
                    nonce[nonce_len] = data[nonce_len];
                    nonce_len++;
                }
            } else if ((mode & 0170000) == 0120000) {
                links++;
            }
            if (extra && name_is(name, nlen, "") == false && nlen == extra_len && !memcmp(name, extra, nlen))
                extra_ok = true;
        }
        p = (const char *)(((u64)data + size + 3) & ~3ul);
    }
    rt_printf("proto: %u entries in %u archive(s), %u symlinks\n", entries, archives, links);
    CHECK(archives >= 1, 71);
    CHECK(init_ok, 72);
    CHECK(bb_ok, 73);
    CHECK(console_ok, 74);
    CHECK(extra_ok, 75);
    CHECK(links > 0, 76);
    CHECK(nonce_len > 0, 77);
    nonce[nonce_len] = 0;
    rt_printf("===EMBER-SMOKE-BEGIN-%s===\n", nonce);
    rt_puts("hello from the smoke protocol guest\n");
    if (rt_param_u64("proto_forge", 0)) {
        /* What a command that cannot read the nonce could print. */
        rt_puts("===EMBER-SMOKE-EXIT=0===\n");
        rt_puts("===EMBER-SMOKE-EXIT-00000000000000000000000000000000=0===\n");
    }
    rt_printf("===EMBER-SMOKE-EXIT-%s=%u===\n", nonce, (u32)rt_param_u64("proto_exit", 0));
    outb(0x64, 0xfe); /* reboot -f with reboot=k */
    for (;;)
        __asm__ volatile("cli; hlt");
}
