/* IPv4/Ethernet helpers for the network test guests (see inet.h). */
#include "inet.h"

u16 csum(const u8 *p, u32 len)
{
    u32 s = 0;
    for (; len > 1; len -= 2, p += 2)
        s += (u32)((p[0] << 8) | p[1]);
    if (len)
        s += (u32)(p[0] << 8);
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (u16)~s;
}

bool parse_ip(const char *s, u8 out[4])
{
    if (!s)
        return false;
    for (int i = 0; i < 4; i++) {
        u32 v = 0;
        int digits = 0;
        while (*s >= '0' && *s <= '9' && digits < 3) {
            v = v * 10 + (u32)(*s++ - '0');
            digits++;
        }
        if (!digits || v > 255)
            return false;
        out[i] = (u8)v;
        if (i < 3 && *s++ != '.')
            return false;
    }
    return *s == 0 || *s == ' ';
}
