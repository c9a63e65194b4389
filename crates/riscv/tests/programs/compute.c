/* A CoreMark-like compute kernel (integer, branches, memory): linked-list
 * sort and search, matrix multiply, a byte-driven state machine and CRC.
 * Prints a checksum; argv[1] (decimal) sets the iteration count. */
#include "rt.h"

#define N 256
struct node { struct node *next; i32 key; i32 val; };
static struct node pool[N];
static i32 ma[32][32], mb[32][32], mc[32][32];
static unsigned char text[4096];

static u32 crc16(u32 crc, u32 data) {
    for (int i = 0; i < 16; i++) {
        u32 x = (data ^ crc) & 1;
        data >>= 1;
        crc = x ? ((crc ^ 0x4002) >> 1) | 0x8000 : crc >> 1;
    }
    return crc & 0xffff;
}

static struct node *sort_list(struct node *list, int asc) {
    /* merge sort, as in CoreMark */
    int insize = 1;
    for (;;) {
        struct node *p = list, *tail = 0, *q, *e;
        int merges = 0;
        list = 0;
        while (p) {
            merges++;
            q = p;
            int psize = 0, qsize = insize;
            for (int i = 0; i < insize && q; i++) { psize++; q = q->next; }
            while (psize > 0 || (qsize > 0 && q)) {
                if (psize == 0) { e = q; q = q->next; qsize--; }
                else if (qsize == 0 || !q) { e = p; p = p->next; psize--; }
                else if (asc ? p->key <= q->key : p->val <= q->val) { e = p; p = p->next; psize--; }
                else { e = q; q = q->next; qsize--; }
                if (tail) tail->next = e; else list = e;
                tail = e;
            }
            p = q;
        }
        tail->next = 0;
        if (merges <= 1) return list;
        insize *= 2;
    }
}

static u32 state_machine(u32 seed) {
    u32 counts[8] = {0};
    int st = 0;
    for (unsigned i = 0; i < sizeof text; i++) {
        unsigned char c = text[i];
        switch (st) {
        case 0: st = c >= '0' && c <= '9' ? 1 : c == '-' || c == '+' ? 2 : c == '.' ? 3 : 7; break;
        case 1: st = c >= '0' && c <= '9' ? 1 : c == '.' ? 3 : c == 'e' ? 4 : c == ',' ? 0 : 7; break;
        case 2: st = c >= '0' && c <= '9' ? 1 : c == '.' ? 3 : 7; break;
        case 3: st = c >= '0' && c <= '9' ? 5 : 7; break;
        case 4: st = c == '-' || c == '+' || (c >= '0' && c <= '9') ? 6 : 7; break;
        case 5: st = c >= '0' && c <= '9' ? 5 : c == 'e' ? 4 : c == ',' ? 0 : 7; break;
        case 6: st = c >= '0' && c <= '9' ? 6 : c == ',' ? 0 : 7; break;
        default: st = c == ',' ? 0 : 7; break;
        }
        counts[st]++;
    }
    for (int i = 0; i < 8; i++) seed = crc16(seed, counts[i]);
    return seed;
}

int main(int argc, char **argv) {
    u64 iters = 20;
    if (argc > 1) { iters = 0; for (char *p = argv[1]; *p; p++) iters = iters * 10 + (*p - '0'); }
    u32 seed = 0x1234;
    for (int i = 0; i < N; i++) { pool[i].key = (i * 7919) % N; pool[i].val = (i * 104729) & 0x7fff; pool[i].next = i + 1 < N ? &pool[i + 1] : 0; }
    for (int i = 0; i < 32; i++) for (int j = 0; j < 32; j++) { ma[i][j] = (i * 31 + j * 17) % 97 - 48; mb[i][j] = (i ^ j) * 3 - 40; }
    for (unsigned i = 0; i < sizeof text; i++) { static const char s[] = "12,-3.5e7,+0.25,x9,4e+2,.5,77,abc,1.2.3,"; text[i] = s[i % (sizeof s - 1)]; }
    struct node *list = pool;
    u32 crc = 0;
    for (u64 it = 0; it < iters; it++) {
        list = sort_list(list, it & 1);
        i32 found = 0;
        for (struct node *p = list; p; p = p->next) if (p->key == (i32)(it % N)) { found = p->val; break; }
        crc = crc16(crc, (u32)found);
        for (int i = 0; i < 32; i++)
            for (int j = 0; j < 32; j++) {
                i32 acc = 0;
                for (int k = 0; k < 32; k++) acc += ma[i][k] * mb[k][j];
                mc[i][j] = acc + (i32)it;
            }
        crc = crc16(crc, (u32)mc[it % 32][(it * 7) % 32]);
        text[it % sizeof text] ^= 1;
        crc = crc16(crc, state_machine(seed));
        text[it % sizeof text] ^= 1;
        for (struct node *p = list; p; p = p->next) p->val = (p->val * 5 + (i32)crc) & 0x7fff;
    }
    puts_("iterations "); dec(iters); puts_(" crc "); hex(crc); putch('\n');
    return 0;
}
