# Start-up code of the bare-metal test programs (spike board, M-mode).
# Each hart gets a 16 KiB stack; hart 0 runs main(hartid), the others
# run secondary(hartid) (a weak default parks them in WFI).

    .section .text.init
    .globl _start
_start:
    csrr a0, mhartid
    la sp, stacks_end
    slli t0, a0, 14
    sub sp, sp, t0
    la t0, mtrap_entry
    csrw mtvec, t0
    bnez a0, 1f
    call main
    j exit
1:  call secondary
    j exit

    .weak secondary
secondary:
2:  wfi
    j 2b

# Trap entries: save every register in a frame on the current stack, call
# the C handler with the frame (handlers may change regs and epc), return.
.macro TRAP_ENTRY name, handler, epc, xret
    .align 4
    .globl \name
\name:
    addi sp, sp, -272
    .irp r,1,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    sd x\r, (\r*8)(sp)
    .endr
    csrr t0, \epc
    sd t0, 256(sp)
    mv a0, sp
    call \handler
    ld t0, 256(sp)
    csrw \epc, t0
    .irp r,1,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    ld x\r, (\r*8)(sp)
    .endr
    addi sp, sp, 272
    \xret
.endm

    TRAP_ENTRY mtrap_entry, mtrap, mepc, mret
    TRAP_ENTRY strap_entry, strap, sepc, sret

    .weak strap
strap:
    li a0, 0xbad5
    j exit

    .bss
    .align 12
stacks:
    .space 16384 * 4
stacks_end:

    .text
    .weak mtrap
mtrap:
    li a0, 0xbad4
    j exit
