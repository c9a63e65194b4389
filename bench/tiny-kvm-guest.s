# The tiny x86-64 guest of bench/kvm.sh, bench/kvm-nested.sh and
# scripts/startup-order.sh: entered in long mode at _start (physical
# 2 MiB), it writes a line to the 16550 at 0x3f8 and resets the machine
# through the i8042 (what each monitor costs without a kernel to boot).
# Build: as --64 -o hello.o tiny-kvm-guest.s
#        ld -static -nostdlib -Ttext=0x200000 -o hello hello.o
.intel_syntax noprefix
.code64
.globl _start
_start:
    lea rsi, [rip + msg]
1:  mov al, [rsi]
    test al, al
    jz 2f
    mov dx, 0x3f8
    out dx, al
    inc rsi
    jmp 1b
2:  mov al, 0xfe
    out 0x64, al
    jmp 2b
msg: .asciz "hello from a tiny KVM guest\n"
.section .note.GNU-stack, "", @progbits
