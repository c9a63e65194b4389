/* A CoreMark-like compute kernel: linked-list walking and sorting, integer
   matrix multiply, a string-scanning state machine and CRC-16, all
   mixed in one loop. argv[1] = iterations. Prints a checksum. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N 32
#define LIST 200

struct node { struct node *next; int32_t key, val; };

static uint16_t crc16(uint16_t crc, uint32_t data) {
    for (int i = 0; i < 32; i++) {
        uint16_t x = (crc ^ (uint16_t)(data >> i)) & 1;
        crc >>= 1;
        if (x) crc ^= 0xa001;
    }
    return crc;
}

static struct node *sort_list(struct node *head, int by_key) {
    /* Merge sort on a singly linked list. */
    int insize = 1;
    for (;;) {
        struct node *p = head, *tail = NULL;
        head = NULL;
        int merges = 0;
        while (p) {
            merges++;
            struct node *q = p;
            int psize = 0;
            for (int i = 0; i < insize && q; i++) { psize++; q = q->next; }
            int qsize = insize;
            while (psize > 0 || (qsize > 0 && q)) {
                struct node *e;
                if (psize == 0) { e = q; q = q->next; qsize--; }
                else if (qsize == 0 || !q) { e = p; p = p->next; psize--; }
                else if ((by_key ? p->key - q->key : p->val - q->val) <= 0) { e = p; p = p->next; psize--; }
                else { e = q; q = q->next; qsize--; }
                if (tail) tail->next = e; else head = e;
                tail = e;
            }
            p = q;
        }
        tail->next = NULL;
        if (merges <= 1) return head;
        insize *= 2;
    }
}

static int state_machine(const char *s, int *counts) {
    enum { START, INT, FLOAT, EXP, INVALID } st = START;
    int transitions = 0;
    for (; *s; s++) {
        char c = *s;
        if (c == ',') { counts[st]++; st = START; transitions++; continue; }
        switch (st) {
        case START: st = (c >= '0' && c <= '9') || c == '-' ? INT : c == '.' ? FLOAT : INVALID; break;
        case INT: if (c == '.') st = FLOAT; else if (c == 'e' || c == 'E') st = EXP; else if (c < '0' || c > '9') st = INVALID; break;
        case FLOAT: if (c == 'e' || c == 'E') st = EXP; else if (c < '0' || c > '9') st = INVALID; break;
        case EXP: if ((c < '0' || c > '9') && c != '-') st = INVALID; break;
        default: break;
        }
        transitions++;
    }
    return transitions;
}

int main(int argc, char **argv) {
    long iters = argc > 1 ? atol(argv[1]) : 100;
    static int32_t A[N][N], B[N][N], C[N][N];
    static struct node pool[LIST];
    static const char *inputs[] = {"5012,1234,-874,+122,", "35.54400,.1234500,-110.700,+0.64400,",
                                   "5.500e+3,-.123e-2,-87e+832,+0.6e-12,", "T0.3e-1F,-T.T++Tq,1T3.4e4z,34.0e-T^,"};
    uint16_t crc = 0;
    uint32_t seed = 0x1234;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            seed = seed * 1103515245u + 12345u;
            A[i][j] = (int32_t)(seed >> 16) % 100 - 50;
            seed = seed * 1103515245u + 12345u;
            B[i][j] = (int32_t)(seed >> 16) % 100 - 50;
        }
    for (long it = 0; it < iters; it++) {
        /* list */
        for (int i = 0; i < LIST; i++) {
            seed = seed * 1103515245u + 12345u;
            pool[i].key = (int32_t)((seed >> 8) & 0xffff);
            pool[i].val = (int32_t)(i ^ (seed >> 20));
            pool[i].next = i + 1 < LIST ? &pool[i + 1] : NULL;
        }
        struct node *h = sort_list(&pool[0], 1);
        h = sort_list(h, 0);
        for (struct node *p = h; p; p = p->next) crc = crc16(crc, (uint32_t)p->key);
        /* matrix */
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) {
                int32_t s = 0;
                for (int k = 0; k < N; k++) s += A[i][k] * B[k][j];
                C[i][j] = s;
            }
        for (int i = 0; i < N; i++) crc = crc16(crc, (uint32_t)C[i][(i + it) % N]);
        A[it % N][(it / N) % N] ^= (int32_t)crc;
        /* state machine */
        int counts[5] = {0};
        for (int k = 0; k < 4; k++) crc = crc16(crc, (uint32_t)state_machine(inputs[k], counts));
        for (int k = 0; k < 5; k++) crc = crc16(crc, (uint32_t)counts[k]);
    }
    printf("iterations=%ld crc=%04x\n", iters, crc);
    return 0;
}
