//! Small guests on /dev/kvm check what the monitor set up for them: the
//! 64-bit entry state, the zero page (e820, command line, initrd), CPUID,
//! serial output, port and MMIO exits, and reset through the i8042.

mod common;

use common::*;
use x86_machine::StopReason;

/// Reports the entry state and the zero page, then resets.
const ENTRY_GUEST: &str = r#"
_start:
    mov r15, rsi
    mov r14, rsp
    pushfq
    pop r13
    lea rdi, [rip + s_rsi]
    mov rax, r15
    call kv
    lea rdi, [rip + s_rsp]
    mov rax, r14
    call kv
    lea rdi, [rip + s_rflags]
    mov rax, r13
    call kv
    lea rdi, [rip + s_cs]
    mov ax, cs
    movzx eax, ax
    call kv
    lea rdi, [rip + s_ss]
    mov ax, ss
    movzx eax, ax
    call kv
    lea rdi, [rip + s_cr0]
    mov rax, cr0
    call kv
    lea rdi, [rip + s_cr3]
    mov rax, cr3
    call kv
    lea rdi, [rip + s_cr4]
    mov rax, cr4
    call kv
    mov ecx, 0xc0000080
    rdmsr
    shl rdx, 32
    or rax, rdx
    lea rdi, [rip + s_efer]
    call kv
    mov eax, 1
    cpuid
    mov eax, ebx
    shr eax, 24
    lea rdi, [rip + s_apic]
    call kv
    mov eax, 1
    cpuid
    mov eax, ecx
    shr eax, 31
    lea rdi, [rip + s_hv]
    call kv
    mov eax, 1
    cpuid
    mov eax, ecx
    shr eax, 24
    and eax, 1
    lea rdi, [rip + s_tscdl]
    call kv
    # The zero page.
    movzx eax, word ptr [r15 + 0x1fe]
    lea rdi, [rip + s_bootflag]
    call kv
    mov eax, dword ptr [r15 + 0x202]
    lea rdi, [rip + s_header]
    call kv
    movzx eax, byte ptr [r15 + 0x210]
    lea rdi, [rip + s_loader]
    call kv
    mov eax, dword ptr [r15 + 0x218]
    lea rdi, [rip + s_rd_image]
    call kv
    mov eax, dword ptr [r15 + 0x21c]
    lea rdi, [rip + s_rd_size]
    call kv
    mov eax, dword ptr [r15 + 0x238]
    lea rdi, [rip + s_cmdsize]
    call kv
    movzx eax, byte ptr [r15 + 0x1e8]
    lea rdi, [rip + s_e820n]
    call kv
    # e820 entries: 20 bytes each at 0x2d0.
    lea rbx, [r15 + 0x2d0]
    movzx r12d, byte ptr [r15 + 0x1e8]
e820_loop:
    test r12, r12
    jz e820_done
    lea rdi, [rip + s_e820]
    call puts
    mov rax, [rbx]
    call hex
    mov al, ' '
    call putc
    mov rax, [rbx + 8]
    call hex
    mov al, ' '
    call putc
    mov eax, [rbx + 16]
    call hex
    mov al, 10
    call putc
    add rbx, 20
    dec r12
    jmp e820_loop
e820_done:
    # The command line, between brackets.
    lea rdi, [rip + s_cmdline]
    call puts
    mov edi, dword ptr [r15 + 0x228]
    call puts
    mov al, ']'
    call putc
    mov al, 10
    call putc
    # The initrd's first 8 bytes, if any.
    mov eax, dword ptr [r15 + 0x218]
    test eax, eax
    jz no_initrd
    mov rax, [rax]
    lea rdi, [rip + s_rd_head]
    call kv
no_initrd:
    call reset

.section .rodata
s_rsi: .asciz "rsi"
s_rsp: .asciz "rsp"
s_rflags: .asciz "rflags"
s_cs: .asciz "cs"
s_ss: .asciz "ss"
s_cr0: .asciz "cr0"
s_cr3: .asciz "cr3"
s_cr4: .asciz "cr4"
s_efer: .asciz "efer"
s_apic: .asciz "apic"
s_hv: .asciz "hypervisor"
s_tscdl: .asciz "tsc_deadline"
s_bootflag: .asciz "boot_flag"
s_header: .asciz "header"
s_loader: .asciz "loader"
s_rd_image: .asciz "ramdisk_image"
s_rd_size: .asciz "ramdisk_size"
s_cmdsize: .asciz "cmdline_size"
s_e820n: .asciz "e820_entries"
s_e820: .asciz "e820 "
s_cmdline: .asciz "cmdline=["
s_rd_head: .asciz "initrd_head"
.text
"#;

#[test]
fn entry_state_and_zero_page() {
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path(), "entry", ENTRY_GUEST);
    let initrd = b"INITRD!!and some more bytes".to_vec();
    // The initrd from a file (read straight into guest RAM), then from
    // bytes: the guest sees the same.
    let rd_path = dir.path().join("initrd");
    std::fs::write(&rd_path, &initrd).unwrap();
    let mut texts = Vec::new();
    for from_file in [true, false] {
        let out = Capture::default();
        let mut cfg = config(&guest, &out);
        cfg.mem_size = 64 << 20;
        cfg.cmdline = "console=ttyS0 virtkit.test=42".into();
        cfg.initrd = Some(if from_file {
            x86_machine::BootFile::open(&rd_path).unwrap()
        } else {
            initrd.clone().into()
        });
        let outcome = run(cfg);
        assert_eq!(outcome.reason, StopReason::Reset, "{}", out.text());
        texts.push(out.text());
    }
    assert_eq!(texts[0], texts[1]);
    let text = texts.pop().unwrap();

    // Entry state: long mode with the monitor's GDT and page tables.
    assert_eq!(value(&text, "rsi"), 0x7000, "{text}");
    assert_eq!(value(&text, "rsp"), 0x8ff0);
    assert_eq!(value(&text, "rflags") & 0x200, 0, "interrupts off at entry");
    assert_eq!(value(&text, "cs"), 0x08);
    assert_eq!(value(&text, "ss"), 0x10);
    let cr0 = value(&text, "cr0");
    assert_eq!(cr0 & 0x8000_0001, 0x8000_0001, "PG and PE: {cr0:#x}");
    assert_eq!(value(&text, "cr3"), 0x9000);
    assert_ne!(value(&text, "cr4") & 0x20, 0, "PAE");
    assert_eq!(value(&text, "efer") & 0x500, 0x500, "LME and LMA");
    assert_eq!(value(&text, "apic"), 0);
    assert_eq!(value(&text, "hypervisor"), 1);
    // The LAPIC's TSC-deadline timer is announced wherever KVM has it
    // (KVM's supported CPUID leaves that bit to the monitor).
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let deadline = kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
    assert_eq!(value(&text, "tsc_deadline"), deadline as u64, "{text}");

    // The zero page.
    assert_eq!(value(&text, "boot_flag"), 0xaa55);
    assert_eq!(value(&text, "header"), 0x5372_6448);
    assert_eq!(value(&text, "loader"), 0xff);
    let rd = value(&text, "ramdisk_image");
    assert_eq!(value(&text, "ramdisk_size"), initrd.len() as u64);
    assert_eq!(rd % 4096, 0);
    assert!(rd + initrd.len() as u64 <= 64 << 20 && rd >= 0x20_0000);
    assert_eq!(
        value(&text, "initrd_head"),
        u64::from_le_bytes(initrd[..8].try_into().unwrap())
    );
    assert!(
        text.contains("cmdline=[console=ttyS0 virtkit.test=42]"),
        "{text}"
    );
    assert_eq!(value(&text, "cmdline_size"), 29);
    assert_eq!(value(&text, "e820_entries"), 3);
    let e820: Vec<&str> = text.lines().filter(|l| l.starts_with("e820 ")).collect();
    assert_eq!(
        e820,
        [
            "e820 0000000000000000 000000000009fc00 0000000000000001",
            "e820 000000000009fc00 0000000000060400 0000000000000002",
            "e820 0000000000100000 0000000003f00000 0000000000000001",
        ]
    );
}

/// Port and MMIO exits: a virtio-mmio register window (the rng's magic
/// and device id), MMIO nobody answers, an unclaimed port, a 16-bit
/// port write to the serial port's scratch register read back.
const EXITS_GUEST: &str = r#"
_start:
    mov rbx, 0xd0000000
    mov eax, [rbx]
    lea rdi, [rip + s_magic]
    call kv
    mov eax, [rbx + 8]
    lea rdi, [rip + s_devid]
    call kv
    mov rbx, 0xd0100000
    mov rax, [rbx]
    lea rdi, [rip + s_nobody]
    call kv
    mov dx, 0x510
    in al, dx
    movzx eax, al
    lea rdi, [rip + s_port]
    call kv
    mov dx, 0x3fe
    mov ax, 0x5aa5
    out dx, ax
    mov dx, 0x3ff
    in al, dx
    movzx eax, al
    lea rdi, [rip + s_scratch]
    call kv
    call reset
.section .rodata
s_magic: .asciz "magic"
s_devid: .asciz "devid"
s_nobody: .asciz "nobody"
s_port: .asciz "port"
s_scratch: .asciz "scratch"
.text
"#;

#[test]
fn port_and_mmio_exits() {
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path(), "exits", EXITS_GUEST);
    let out = Capture::default();
    let mut cfg = config(&guest, &out);
    cfg.rng = true;
    let outcome = run(cfg);
    let text = out.text();
    assert_eq!(outcome.reason, StopReason::Reset, "{text}");
    assert_eq!(value(&text, "magic"), 0x7472_6976, "\"virt\": {text}");
    assert_eq!(value(&text, "devid"), 4, "entropy device");
    assert_eq!(value(&text, "nobody"), u64::MAX);
    assert_eq!(value(&text, "port"), 0xff);
    // 0x5aa5 to 0x3fe covers 0x3fe (MSR, read-only) and 0x3ff (scratch).
    assert_eq!(value(&text, "scratch"), 0x5a);
    assert_eq!(outcome.unhandled_mmio, 1);
    assert!(outcome.unhandled_io >= 1);
}

/// A guest that dies: a triple fault (an exception with an empty IDT) is
/// reported with the guest's registers.
#[test]
fn triple_fault_is_reported_with_registers() {
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(
        dir.path(),
        "ud2",
        "_start:\n    mov rax, 0x1234abcd\n    ud2\n",
    );
    let out = Capture::default();
    let outcome = run(config(&guest, &out));
    match outcome.reason {
        StopReason::Fatal(m) => {
            assert!(m.contains("triple fault"), "{m}");
            assert!(m.contains("rax=0x1234abcd"), "{m}");
            assert!(m.contains("rip=0x"), "{m}");
        }
        other => panic!("expected a fatal stop, got {other:?}"),
    }
}

/// A guest that never stops is stopped by the timeout.
#[test]
fn timeout_stops_a_spinning_guest() {
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path(), "spin", "_start:\n    jmp _start\n");
    let out = Capture::default();
    let mut cfg = config(&guest, &out);
    cfg.timeout = Some(std::time::Duration::from_millis(300));
    assert_eq!(run(cfg).reason, StopReason::Timeout);
}
