/* A libc-free program: write(1, "tiny!\n", 6); exit(0). Built as a plain
   static executable and as static-PIE (position independent, no interpreter). */
.globl _start
_start:
    li a0, 1
    lla a1, msg
    li a2, 6
    li a7, 64
    ecall
    li a0, 0
    li a7, 93
    ecall
.data
msg: .ascii "tiny!\n"
