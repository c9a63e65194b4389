/* Integer and floating-point corner cases, printed as raw bits so the
   output can be compared byte for byte with qemu-riscv64. */
#include <fenv.h>
#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static volatile int64_t vi[] = {0, 1, -1, 2, -2, 7, -7, INT64_MAX, INT64_MIN, 0x5555555555555555LL,
                                (int64_t)0xdeadbeefcafebabeULL, INT32_MAX, INT32_MIN, 0x80000000LL, 13};
#define NI (sizeof vi / sizeof vi[0])
static volatile double vd[] = {0.0, -0.0, 1.0, -1.0, 0.5, 1.5, 2.5, -2.5, 1e300, -1e300, 1e-310,
                               3.0, 0.1, 2.0 / 3.0, 1e19, -1e19, 9.3e18, 4294967296.5, -0.75};
#define ND (sizeof vd / sizeof vd[0])

static uint64_t dbits(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }
static uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static int flags(void) {
    int f = fetestexcept(FE_ALL_EXCEPT);
    feclearexcept(FE_ALL_EXCEPT);
    return f;
}

int main(void) {
    unsigned h = 0;
    /* Integer: division semantics of RISC-V (no traps). */
    for (unsigned i = 0; i < NI; i++)
        for (unsigned j = 0; j < NI; j++) {
            int64_t a = vi[i], b = vi[j];
            int64_t q, r;
            uint64_t qu, ru;
            int32_t qw, rw;
            __asm__ volatile("div %0,%1,%2" : "=r"(q) : "r"(a), "r"(b));
            __asm__ volatile("rem %0,%1,%2" : "=r"(r) : "r"(a), "r"(b));
            __asm__ volatile("divu %0,%1,%2" : "=r"(qu) : "r"(a), "r"(b));
            __asm__ volatile("remu %0,%1,%2" : "=r"(ru) : "r"(a), "r"(b));
            __asm__ volatile("divw %0,%1,%2" : "=r"(qw) : "r"(a), "r"(b));
            __asm__ volatile("remw %0,%1,%2" : "=r"(rw) : "r"(a), "r"(b));
            int64_t mh, mhu, mhsu;
            __asm__ volatile("mulh %0,%1,%2" : "=r"(mh) : "r"(a), "r"(b));
            __asm__ volatile("mulhu %0,%1,%2" : "=r"(mhu) : "r"(a), "r"(b));
            __asm__ volatile("mulhsu %0,%1,%2" : "=r"(mhsu) : "r"(a), "r"(b));
            printf("i %u %u %" PRIx64 " %" PRIx64 " %" PRIx64 " %" PRIx64 " %x %x %" PRIx64 " %" PRIx64 " %" PRIx64 " %" PRIx64 "\n",
                   i, j, q, r, qu, ru, qw, rw, mh, mhu, mhsu, (uint64_t)(a * b));
            printf("s %u %u %" PRIx64 " %" PRIx64 " %" PRIx64 " %x\n", i, j, (uint64_t)a << (b & 63),
                   (uint64_t)a >> (b & 63), (uint64_t)(a >> (b & 63)), (int32_t)a << (b & 31));
        }
    /* Floating point in every rounding mode, with the exception flags. */
    const int modes[] = {FE_TONEAREST, FE_TOWARDZERO, FE_DOWNWARD, FE_UPWARD};
    for (unsigned m = 0; m < 4; m++) {
        fesetround(modes[m]);
        flags();
        for (unsigned i = 0; i < ND; i++) {
            for (unsigned j = 0; j < ND; j++) {
                double a = vd[i], b = vd[j];
                double s = a + b, d = a - b, p = a * b, q = a / b;
                int f1 = flags();
                double fm = fma(a, b, 1.0 / 3.0);
                int f2 = flags();
                float sf = (float)a * (float)b;
                int f3 = flags();
                printf("f %u %u %u %016" PRIx64 " %016" PRIx64 " %016" PRIx64 " %016" PRIx64 " %x %016" PRIx64 " %x %08x %x\n", m, i,
                       j, dbits(s), dbits(d), dbits(p), dbits(q), f1, dbits(fm), f2, fbits(sf), f3);
                printf("c %u %u %u %d%d%d%d %016" PRIx64 " %016" PRIx64 " %x\n", m, i, j, a < b, a <= b, a == b,
                       a != b, dbits(fmin(a, b)), dbits(fmax(a, b)), flags());
            }
            double a = vd[i];
            double sq = sqrt(a);
            int fs = flags();
            int64_t l;
            uint64_t lu;
            int32_t w;
            uint32_t wu;
            __asm__ volatile("fcvt.l.d %0,%1" : "=r"(l) : "f"(a));
            __asm__ volatile("fcvt.lu.d %0,%1" : "=r"(lu) : "f"(a));
            __asm__ volatile("fcvt.w.d %0,%1" : "=r"(w) : "f"(a));
            __asm__ volatile("fcvt.wu.d %0,%1" : "=r"(wu) : "f"(a));
            int fc = flags();
            long cl;
            __asm__ volatile("fclass.d %0,%1" : "=r"(cl) : "f"(a));
            printf("u %u %u %016" PRIx64 " %x %" PRIx64 " %" PRIx64 " %x %x %x %lx %08x %016" PRIx64 " %016" PRIx64 " %x\n", m, i,
                   dbits(sq), fs, l, lu, w, wu, fc, cl, fbits((float)a), dbits((double)vi[i % NI]),
                   dbits((double)(uint64_t)vi[i % NI]), flags());
        }
    }
    fesetround(FE_TONEAREST);
    /* NaNs: canonical NaN results, sign injection, NaN boxing of floats. */
    double nan = __builtin_nan(""), snan = __builtin_nans("");
    double r1 = nan + 1.0, r2 = snan * 2.0, r3 = 0.0 / 0.0 * (h + 1), r4 = sqrt(-1.0 - h);
    printf("nan %016" PRIx64 " %016" PRIx64 " %016" PRIx64 " %016" PRIx64 " %x\n", dbits(r1), dbits(r2), dbits(r3), dbits(r4),
           flags());
    printf("minmax %016" PRIx64 " %016" PRIx64 " %016" PRIx64 " %x\n", dbits(fmin(nan, 1.0)), dbits(fmax(snan, 2.0)),
           dbits(fmin(-0.0, 0.0)), flags());
    uint64_t boxed;
    float f = 1.5f;
    __asm__ volatile("fmv.x.d %0,%1" : "=r"(boxed) : "f"(f));
    printf("box %016" PRIx64 "\n", boxed);
    double notboxed;
    uint64_t raw = 0x000000003fc00000ULL;
    __asm__ volatile("fmv.d.x %0,%1" : "=f"(notboxed) : "r"(raw));
    float fb;
    __asm__ volatile("fmv.s %0,%1" : "=f"(fb) : "f"(notboxed));
    printf("unboxed %08x\n", fbits(fb + 0.0f));
    printf("copysign %016" PRIx64 " %016" PRIx64 "\n", dbits(copysign(3.0, -0.0)), dbits(copysign(nan, -1.0)));
    printf("lrint %ld %ld %ld\n", lrint(2.5), lrint(-3.5), lrint(1e30));
    printf("flags %x\n", flags());
    return 0;
}
