/* Tiny freestanding runtime for the riscv crate's test programs: _start,
 * write/exit system calls, hex output. Built with -nostdlib -static. */
typedef unsigned long u64;
typedef long i64;
typedef unsigned int u32;
typedef int i32;

static long sys3(long n, long a, long b, long c) {
    register long a0 asm("a0") = a;
    register long a1 asm("a1") = b;
    register long a2 asm("a2") = c;
    register long a7 asm("a7") = n;
    asm volatile("ecall" : "+r"(a0) : "r"(a1), "r"(a2), "r"(a7) : "memory");
    return a0;
}
static char obuf[4096];
static int olen;
static void flush(void) { sys3(64, 1, (long)obuf, olen); olen = 0; }
static void putch(char c) { if (olen == (int)sizeof obuf) flush(); obuf[olen++] = c; }
static void puts_(const char *s) { while (*s) putch(*s++); }
static void hex(u64 v) { for (int i = 60; i >= 0; i -= 4) putch("0123456789abcdef"[(v >> i) & 15]); }
static void dec(u64 v) { char b[24]; int n = 0; do { b[n++] = '0' + v % 10; v /= 10; } while (v); while (n) putch(b[--n]); }
static void exit_(int c) { flush(); sys3(93, c, 0, 0); for (;;) {} }
static u64 fnv(u64 h, u64 v) { for (int i = 0; i < 8; i++) { h ^= (v >> (8 * i)) & 0xff; h *= 0x100000001b3ul; } return h; }
static int streq(const char *a, const char *b) { while (*a && *a == *b) { a++; b++; } return *a == *b; }

int main(int argc, char **argv);
void start_c(long *sp) { exit_(main((int)sp[0], (char **)(sp + 1))); }
asm(".globl _start\n_start:\n .option push\n .option norelax\n la gp, __global_pointer$\n .option pop\n mv a0, sp\n call start_c\n");
void *memset(void *d, int c, unsigned long n) { volatile char *p = d; while (n--) *p++ = c; return d; }
void *memcpy(void *d, const void *s, unsigned long n) { volatile char *p = d; const char *q = s; while (n--) *p++ = *q++; return d; }
