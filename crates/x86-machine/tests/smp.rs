//! SMP: the bootstrap vCPU wakes the others with INIT/SIPI, as Linux
//! does; each reports its APIC id (from the LAPIC and from CPUID) over
//! the serial port, the MP table lists them all.

mod common;

use common::*;
use x86_machine::StopReason;

/// The application processors start in real mode at 0x6000 (SIPI vector
/// 6); the trampoline (copied there by the BSP) enters long mode with the
/// monitor's GDT and page tables and jumps to `ap_main`.
const SMP_GUEST: &str = r#"
_start:
    # Copy the trampoline to 0x6000.
    lea rsi, [rip + tramp]
    mov rdi, 0x6000
    mov rcx, tramp_end - tramp
    rep movsb
    # The CPU count from CPUID leaf 1 (EBX[23:16]) and the MP table's
    # processor entries must agree.
    mov eax, 1
    cpuid
    shr ebx, 16
    and ebx, 0xff
    mov [rip + ncpus], rbx
    call count_mp_cpus
    lea rdi, [rip + s_mpcpus]
    call kv
    # Software-enable the LAPIC, then INIT and SIPI everyone else.
    mov rdi, 0xfee00000
    mov dword ptr [rdi + 0xf0], 0x1ff
    mov dword ptr [rdi + 0x310], 0
    mov dword ptr [rdi + 0x300], 0xc4500
    mov dword ptr [rdi + 0x300], 0xc4606
    mov dword ptr [rdi + 0x300], 0xc4606
    call report
    # Wait for the others.
    mov rbx, [rip + ncpus]
wait_aps:
    pause
    mov rax, [rip + arrived]
    cmp rax, rbx
    jb wait_aps
    lea rdi, [rip + s_all]
    call kv
    call reset

# Counts processor entries of the MP table (floating pointer at 0x9fc00).
count_mp_cpus:
    mov esi, dword ptr [0x9fc00 + 4]
    movzx ecx, word ptr [rsi + 34]
    add rsi, 44
    xor eax, eax
1:  test ecx, ecx
    jz 3f
    cmp byte ptr [rsi], 0
    jne 2f
    inc eax
    add rsi, 20
    dec ecx
    jmp 1b
2:  add rsi, 8
    dec ecx
    jmp 1b
3:  ret

# Prints "cpu lapic=N cpuid=N" under a spinlock; counts arrivals.
report:
    mov rsi, 1
1:  xchg [rip + spin], rsi
    test rsi, rsi
    jz 2f
    pause
    mov rsi, 1
    jmp 1b
2:  lea rdi, [rip + s_cpu]
    call puts
    mov rax, 0xfee00000
    mov eax, dword ptr [rax + 0x20]
    shr eax, 24
    call hex
    lea rdi, [rip + s_cpuid]
    call puts
    mov eax, 1
    cpuid
    mov eax, ebx
    shr eax, 24
    call hex
    mov al, 10
    call putc
    mov qword ptr [rip + spin], 0
    lock inc qword ptr [rip + arrived]
    ret

ap_main:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    # A stack per CPU: 4 KiB each, by APIC id.
    mov eax, 1
    cpuid
    shr ebx, 24
    shl rbx, 12
    lea rsp, [rip + stacks_top]
    sub rsp, rbx
    call report
1:  cli
    hlt
    jmp 1b

.code16
tramp:
    cli
    xor ax, ax
    mov ds, ax
    lgdt [0x6000 + gdtp - tramp]
    mov eax, cr4
    or eax, 0x20
    mov cr4, eax
    mov eax, 0x9000
    mov cr3, eax
    mov ecx, 0xc0000080
    rdmsr
    or eax, 0x100
    wrmsr
    mov eax, cr0
    or eax, 0x80000001
    mov cr0, eax
    .byte 0x66, 0xea
    .long ap_main
    .word 0x08
gdtp:
    .word 47
    .long 0x500
tramp_end:
.code64

.section .rodata
s_mpcpus: .asciz "mp_cpus"
s_cpu: .asciz "cpu lapic="
s_cpuid: .asciz " cpuid="
s_all: .asciz "arrived"
.data
.balign 8
spin: .quad 0
arrived: .quad 0
ncpus: .quad 0
.bss
.balign 4096
stacks: .skip 4096 * 8
stacks_top:
.text
"#;

#[test]
fn every_vcpu_reports_its_apic_id() {
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path(), "smp", SMP_GUEST);
    for cpus in [2usize, 4] {
        let out = Capture::default();
        let mut cfg = config(&guest, &out);
        cfg.vcpus = cpus;
        let outcome = run(cfg);
        let text = out.text();
        assert_eq!(outcome.reason, StopReason::Reset, "{cpus} vCPUs: {text}");
        assert_eq!(value(&text, "mp_cpus"), cpus as u64, "{text}");
        assert_eq!(value(&text, "arrived"), cpus as u64, "{text}");
        let mut ids: Vec<(u64, u64)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("cpu lapic="))
            .map(|l| {
                let (a, b) = l.split_once(" cpuid=").unwrap();
                (
                    u64::from_str_radix(a, 16).unwrap(),
                    u64::from_str_radix(b, 16).unwrap(),
                )
            })
            .collect();
        ids.sort();
        let want: Vec<(u64, u64)> = (0..cpus as u64).map(|i| (i, i)).collect();
        assert_eq!(ids, want, "{text}");
    }
}
