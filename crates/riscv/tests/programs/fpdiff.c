/* Differential test of F/D semantics: every operation over interesting
 * operands in all five rounding modes; prints one hash of (result bits,
 * fflags) per operation and rounding mode. With an argument, prints every
 * result instead (for diagnosing a mismatch). */
#include "rt.h"

static const u64 D[] = {
    0x0000000000000000, 0x8000000000000000, 0x3ff0000000000000, 0xbff0000000000000,
    0x3ff8000000000000, 0xc004000000000000, 0x3fe0000000000000, 0xbfe0000000000000,
    0x3fd5555555555555, 0x7fefffffffffffff, 0xffefffffffffffff, 0x0010000000000000,
    0x000fffffffffffff, 0x0000000000000001, 0x8000000000000001, 0x7ff0000000000000,
    0xfff0000000000000, 0x7ff8000000000000, 0x7ff0000000000001, 0xfff8000000001234,
    0x41e0000000000000, 0x41dfffffffc00000, 0xc1e0000000000000, 0xc1e0000000200000,
    0x41f0000000000000, 0x43e0000000000000, 0xc3e0000000000000, 0x43f0000000000000,
    0x41efffffffe00000, 0x3fdfffffffffffff, 0x4008000000000000, 0x3cb0000000000000,
    0x0008000000000000, 0x40fe240c9fbe76c9, 0x4340000000000001, 0xc3dfffffffffffff,
    0x3ff0000000000001, 0x7fe0000000000000, 0x0020000000000000, 0x3e9abcdef1234567,
};
static const u32 S[] = {
    0x00000000, 0x80000000, 0x3f800000, 0xbf800000, 0x3fc00000, 0xc0200000, 0x3f000000,
    0xbf000000, 0x3eaaaaab, 0x7f7fffff, 0xff7fffff, 0x00800000, 0x007fffff, 0x00000001,
    0x80000001, 0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001, 0xffc01234, 0x4f000000,
    0x4effffff, 0xcf000000, 0xcf000001, 0x4f800000, 0x5f000000, 0xdf000000, 0x5f800000,
    0x3effffff, 0x40400000, 0x34000000, 0x00400000, 0x47f12065, 0x4b800001, 0x3f800001,
    0x7f000000, 0x01000000, 0x33d6bf95, 0x4f7fffff, 0xbeffffff,
};
static const u64 I[] = {
    0, 1, (u64)-1, 2, 0x7fffffff, 0x80000000, 0xffffffff, 0x100000000, 0x7fffffffffffffff,
    0x8000000000000000, 0xffffffff80000000, 0x20000001, 0x1000001, 0x20000000000001,
    0xfffffffffffff801, 0x123456789abcdef, 0xfedcba9876543210, 0x7fffffffffffffc0, 0xffffffffffffffc1,
};
#define ND (sizeof D / sizeof D[0])
#define NS (sizeof S / sizeof S[0])
#define NI (sizeof I / sizeof I[0])

static int verbose;
static u64 h;
static void rec(u64 r) {
    u64 f;
    asm volatile("frflags %0" : "=r"(f));
    asm volatile("fsflags zero");
    if (verbose) { hex(r); putch(' '); hex(f); putch('\n'); }
    h = fnv(fnv(h, r), f);
}
static double d_(u64 v) { union { u64 u; double d; } x = { v }; return x.d; }
static u64 bd(double v) { union { double d; u64 u; } x = { v }; return x.u; }
static float f_(u32 v) { union { u32 u; float f; } x = { v }; return x.f; }
static u64 bf(float v) { union { float f; u32 u; } x = { v }; return x.u; }

#define BIN(T, name, insn) static u64 name(u64 a, u64 b) { T x = T##_(a), y = T##_(b), r; \
    asm volatile(insn " %0, %1, %2" : "=f"(r) : "f"(x), "f"(y)); return b##T(r); }
#define d__ d_
typedef double d; typedef float f;
static double d__x(u64 v) { return d_(v); }
#define TERN(T, name, insn) static u64 name(u64 a, u64 b, u64 c) { T x = T##_(a), y = T##_(b), z = T##_(c), r; \
    asm volatile(insn " %0, %1, %2, %3" : "=f"(r) : "f"(x), "f"(y), "f"(z)); return b##T(r); }
#define UN(T, name, insn) static u64 name(u64 a) { T x = T##_(a), r; \
    asm volatile(insn " %0, %1" : "=f"(r) : "f"(x)); return b##T(r); }
#define TOI(T, name, insn) static u64 name(u64 a) { T x = T##_(a); u64 r; \
    asm volatile(insn " %0, %1" : "=r"(r) : "f"(x)); return r; }
#define CMP(T, name, insn) static u64 name(u64 a, u64 b) { T x = T##_(a), y = T##_(b); u64 r; \
    asm volatile(insn " %0, %1, %2" : "=r"(r) : "f"(x), "f"(y)); return r; }
#define FROMI(T, name, insn) static u64 name(u64 a) { T r; \
    asm volatile(insn " %0, %1" : "=f"(r) : "r"(a)); return b##T(r); }

BIN(d, add_d, "fadd.d") BIN(d, sub_d, "fsub.d") BIN(d, mul_d, "fmul.d") BIN(d, div_d, "fdiv.d")
BIN(d, min_d, "fmin.d") BIN(d, max_d, "fmax.d") BIN(d, sgnj_d, "fsgnj.d") BIN(d, sgnjn_d, "fsgnjn.d") BIN(d, sgnjx_d, "fsgnjx.d")
BIN(f, add_s, "fadd.s") BIN(f, sub_s, "fsub.s") BIN(f, mul_s, "fmul.s") BIN(f, div_s, "fdiv.s")
BIN(f, min_s, "fmin.s") BIN(f, max_s, "fmax.s") BIN(f, sgnj_s, "fsgnj.s") BIN(f, sgnjn_s, "fsgnjn.s") BIN(f, sgnjx_s, "fsgnjx.s")
TERN(d, madd_d, "fmadd.d") TERN(d, msub_d, "fmsub.d") TERN(d, nmadd_d, "fnmadd.d") TERN(d, nmsub_d, "fnmsub.d")
TERN(f, madd_s, "fmadd.s") TERN(f, msub_s, "fmsub.s") TERN(f, nmadd_s, "fnmadd.s") TERN(f, nmsub_s, "fnmsub.s")
UN(d, sqrt_d, "fsqrt.d") UN(f, sqrt_s, "fsqrt.s")
CMP(d, eq_d, "feq.d") CMP(d, lt_d, "flt.d") CMP(d, le_d, "fle.d")
CMP(f, eq_s, "feq.s") CMP(f, lt_s, "flt.s") CMP(f, le_s, "fle.s")
TOI(d, cvt_w_d, "fcvt.w.d") TOI(d, cvt_wu_d, "fcvt.wu.d") TOI(d, cvt_l_d, "fcvt.l.d") TOI(d, cvt_lu_d, "fcvt.lu.d")
TOI(f, cvt_w_s, "fcvt.w.s") TOI(f, cvt_wu_s, "fcvt.wu.s") TOI(f, cvt_l_s, "fcvt.l.s") TOI(f, cvt_lu_s, "fcvt.lu.s")
TOI(d, class_d, "fclass.d") TOI(f, class_s, "fclass.s") TOI(d, mvxd, "fmv.x.d") TOI(f, mvxw, "fmv.x.w")
FROMI(d, cvt_d_w, "fcvt.d.w") FROMI(d, cvt_d_wu, "fcvt.d.wu") FROMI(d, cvt_d_l, "fcvt.d.l") FROMI(d, cvt_d_lu, "fcvt.d.lu")
FROMI(f, cvt_s_w, "fcvt.s.w") FROMI(f, cvt_s_wu, "fcvt.s.wu") FROMI(f, cvt_s_l, "fcvt.s.l") FROMI(f, cvt_s_lu, "fcvt.s.lu")
static u64 cvt_s_d(u64 a) { double x = d_(a); float r; asm volatile("fcvt.s.d %0, %1" : "=f"(r) : "f"(x)); return bf(r); }
static u64 cvt_d_s(u64 a) { float x = f_(a); double r; asm volatile("fcvt.d.s %0, %1" : "=f"(r) : "f"(x)); return bd(r); }
/* A single read from a register that is not NaN-boxed is the canonical NaN. */
static u64 unboxed_add(u64 a) { double x = d_(a); float r, one = 1.0f; asm volatile("fadd.s %0, %1, %2" : "=f"(r) : "f"(x), "f"(one)); return bf(r); }

typedef u64 (*bin_t)(u64, u64);
typedef u64 (*un_t)(u64);
typedef u64 (*tern_t)(u64, u64, u64);
struct bin { const char *n; bin_t f; int dbl; };
struct un { const char *n; un_t f; int src; }; /* src: 0 = S, 1 = D, 2 = integers */
struct tern { const char *n; tern_t f; int dbl; };

static const struct bin BINS[] = {
    {"fadd.d", add_d, 1}, {"fsub.d", sub_d, 1}, {"fmul.d", mul_d, 1}, {"fdiv.d", div_d, 1},
    {"fmin.d", min_d, 1}, {"fmax.d", max_d, 1}, {"fsgnj.d", sgnj_d, 1}, {"fsgnjn.d", sgnjn_d, 1},
    {"fsgnjx.d", sgnjx_d, 1}, {"feq.d", eq_d, 1}, {"flt.d", lt_d, 1}, {"fle.d", le_d, 1},
    {"fadd.s", add_s, 0}, {"fsub.s", sub_s, 0}, {"fmul.s", mul_s, 0}, {"fdiv.s", div_s, 0},
    {"fmin.s", min_s, 0}, {"fmax.s", max_s, 0}, {"fsgnj.s", sgnj_s, 0}, {"fsgnjn.s", sgnjn_s, 0},
    {"fsgnjx.s", sgnjx_s, 0}, {"feq.s", eq_s, 0}, {"flt.s", lt_s, 0}, {"fle.s", le_s, 0},
};
static const struct un UNS[] = {
    {"fsqrt.d", sqrt_d, 1}, {"fsqrt.s", sqrt_s, 0}, {"fcvt.w.d", cvt_w_d, 1}, {"fcvt.wu.d", cvt_wu_d, 1},
    {"fcvt.l.d", cvt_l_d, 1}, {"fcvt.lu.d", cvt_lu_d, 1}, {"fcvt.w.s", cvt_w_s, 0}, {"fcvt.wu.s", cvt_wu_s, 0},
    {"fcvt.l.s", cvt_l_s, 0}, {"fcvt.lu.s", cvt_lu_s, 0}, {"fclass.d", class_d, 1}, {"fclass.s", class_s, 0},
    {"fmv.x.d", mvxd, 1}, {"fmv.x.w", mvxw, 0}, {"fcvt.s.d", cvt_s_d, 1}, {"fcvt.d.s", cvt_d_s, 0},
    {"fadd.s-unboxed", unboxed_add, 1},
    {"fcvt.d.w", cvt_d_w, 2}, {"fcvt.d.wu", cvt_d_wu, 2}, {"fcvt.d.l", cvt_d_l, 2}, {"fcvt.d.lu", cvt_d_lu, 2},
    {"fcvt.s.w", cvt_s_w, 2}, {"fcvt.s.wu", cvt_s_wu, 2}, {"fcvt.s.l", cvt_s_l, 2}, {"fcvt.s.lu", cvt_s_lu, 2},
};
static const struct tern TERNS[] = {
    {"fmadd.d", madd_d, 1}, {"fmsub.d", msub_d, 1}, {"fnmadd.d", nmadd_d, 1}, {"fnmsub.d", nmsub_d, 1},
    {"fmadd.s", madd_s, 0}, {"fmsub.s", msub_s, 0}, {"fnmadd.s", nmadd_s, 0}, {"fnmsub.s", nmsub_s, 0},
};

static void head(const char *n, long rm) { puts_(n); puts_(" rm="); dec(rm); putch(' '); }

int main(int argc, char **argv) {
    verbose = argc > 1;
    for (long rm = 0; rm < 5; rm++) {
        asm volatile("fsrm %0" : : "r"(rm));
        asm volatile("fsflags zero");
        for (unsigned k = 0; k < sizeof BINS / sizeof BINS[0]; k++) {
            const struct bin *b = &BINS[k];
            h = 0xcbf29ce484222325ul;
            if (verbose) { head(b->n, rm); putch('\n'); }
            unsigned n = b->dbl ? ND : NS;
            for (unsigned i = 0; i < n; i++)
                for (unsigned j = 0; j < n; j++)
                    rec(b->dbl ? b->f(D[i], D[j]) : b->f(S[i], S[j]));
            head(b->n, rm); hex(h); putch('\n');
        }
        for (unsigned k = 0; k < sizeof UNS / sizeof UNS[0]; k++) {
            const struct un *u = &UNS[k];
            h = 0xcbf29ce484222325ul;
            if (verbose) { head(u->n, rm); putch('\n'); }
            unsigned n = u->src == 1 ? ND : u->src == 0 ? NS : NI;
            for (unsigned i = 0; i < n; i++)
                rec(u->f(u->src == 1 ? D[i] : u->src == 0 ? S[i] : I[i]));
            head(u->n, rm); hex(h); putch('\n');
        }
        for (unsigned k = 0; k < sizeof TERNS / sizeof TERNS[0]; k++) {
            const struct tern *t = &TERNS[k];
            h = 0xcbf29ce484222325ul;
            if (verbose) { head(t->n, rm); putch('\n'); }
            unsigned n = t->dbl ? ND : NS;
            for (unsigned i = 0; i < n; i++)
                for (unsigned j = 0; j < n; j++)
                    for (unsigned c = 0; c < n; c += 3)
                        rec(t->dbl ? t->f(D[i], D[j], D[c]) : t->f(S[i], S[j], S[c]));
            head(t->n, rm); hex(h); putch('\n');
        }
    }
    /* the fcsr itself */
    u64 fcsr;
    asm volatile("fsrm %0" : : "r"(3L));
    asm volatile("frcsr %0" : "=r"(fcsr));
    puts_("fcsr "); hex(fcsr); putch('\n');
    return 0;
}
