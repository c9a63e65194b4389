/* Sv39: S-mode with an identity gigapage for the program and a 4 KiB page
 * mapping virtual 0x40000000 to a data page; a load page fault on an
 * unmapped address; a remapped PTE seen after sfence.vma. */
#include "common.h"

static u64 root[512] __attribute__((aligned(4096)));
static u64 l1[512] __attribute__((aligned(4096)));
static u64 l0[512] __attribute__((aligned(4096)));
static volatile u64 page_a[512] __attribute__((aligned(4096)));
static volatile u64 page_b[512] __attribute__((aligned(4096)));

#define PTE_V 1
#define PTE_R 2
#define PTE_W 4
#define PTE_X 8
#define PTE_A 0x40
#define PTE_D 0x80
#define PPN(pa) (((u64)(pa) >> 12) << 10)
#define VA 0x40000000ul

static volatile u64 faults, fault_addr, fault_cause;

void strap(struct frame *f) {
    fault_cause = csrr(scause);
    fault_addr = csrr(stval);
    faults++;
    f->epc += 4; /* skip the faulting (uncompressed) load */
}

void mtrap(struct frame *f) {
    u64 cause = csrr(mcause);
    if (cause == 9) exit(f->x[10]); /* ecall from S: exit with a0 */
    puts_("unexpected M trap ");
    puthex(cause);
    putc_(' ');
    puthex(csrr(mtval));
    putc_('\n');
    exit(90);
}

static void s_exit(u64 code) {
    register u64 a0 asm("a0") = code;
    asm volatile("ecall" ::"r"(a0));
}

static u64 load(u64 va) {
    u64 v;
    asm volatile(".option push; .option norvc; ld %0, 0(%1); .option pop" : "=r"(v) : "r"(va) : "memory");
    return v;
}

void s_code(void) {
    csrw(stvec, (u64)strap_entry);
    csrw(satp, (8ull << 60) | ((u64)root >> 12));
    asm volatile("sfence.vma");
    CHECK(load(VA) == 0x1111, 1);
    CHECK(load(VA + 8) == 0x2222, 2);
    /* Store through the mapping, read physically (identity gigapage). */
    *(volatile u64 *)(VA + 16) = 0x3333;
    CHECK(page_a[2] == 0x3333, 3);
    /* Unmapped: load page fault (13) with stval = the address. */
    CHECK(load(VA + 0x1000) == 0 || 1, 4);
    CHECK(faults == 1 && fault_cause == 13 && fault_addr == VA + 0x1000, 5);
    /* Remap VA to page_b; after sfence.vma the new mapping is used. */
    l0[0] = PPN(page_b) | PTE_V | PTE_R | PTE_W | PTE_A | PTE_D;
    asm volatile("sfence.vma");
    CHECK(load(VA) == 0xbbbb, 6);
    /* Read-only page: store page fault (15). */
    l0[0] = PPN(page_b) | PTE_V | PTE_R | PTE_A;
    asm volatile("sfence.vma");
    asm volatile(".option push; .option norvc; sd zero, 0(%0); .option pop" ::"r"(VA) : "memory");
    CHECK(faults == 2 && fault_cause == 15, 7);
    CHECK(page_b[0] == 0xbbbb, 8);
    puts_("sv39: ok\n");
    s_exit(0);
}

int main(void) {
    page_a[0] = 0x1111;
    page_a[1] = 0x2222;
    page_b[0] = 0xbbbb;
    /* VPN2 = 2 (0x80000000): identity gigapage, RWX. */
    root[2] = PPN(0x80000000ul) | PTE_V | PTE_R | PTE_W | PTE_X | PTE_A | PTE_D;
    /* VPN2 = 1 (0x40000000): pointer to l1 -> l0 -> page_a. */
    root[1] = PPN(l1) | PTE_V;
    l1[0] = PPN(l0) | PTE_V;
    l0[0] = PPN(page_a) | PTE_V | PTE_R | PTE_W | PTE_A | PTE_D;
    pmp_open();
    csrw(medeleg, (1 << 13) | (1 << 15) | (1 << 12));
    enter_mode(1, s_code);
    return 1;
}
