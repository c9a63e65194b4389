//! A virtio-blk request from a small guest: it drives the virtio-mmio
//! transport itself (feature negotiation, one split queue), kicks the
//! queue with a QueueNotify write (a KVM ioeventfd: no vCPU exit), and
//! waits in HLT for the completion interrupt (an irqfd through the
//! IOAPIC). A qcow2 file is behind the disk; qemu-img reads back what the
//! guest wrote.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::*;
use x86_machine::{Disk, StopReason};

const BLK_GUEST: &str = r#"
_start:
    # Mask the 8259s: interrupts come through the IOAPIC.
    mov al, 0xff
    out 0x21, al
    out 0xa1, al
    # IDT entry 0x30 -> irq_handler (64-bit interrupt gate).
    lea rax, [rip + irq_handler]
    lea rdi, [rip + idt + 0x30 * 16]
    mov word ptr [rdi], ax
    mov word ptr [rdi + 2], 0x08
    mov word ptr [rdi + 4], 0x8e00
    shr rax, 16
    mov word ptr [rdi + 6], ax
    shr rax, 16
    mov dword ptr [rdi + 8], eax
    mov dword ptr [rdi + 12], 0
    lidt [rip + idtr]
    # LAPIC on; IOAPIC pin 5 -> vector 0x30, level triggered, to APIC 0.
    mov rbx, 0xfee00000
    mov dword ptr [rbx + 0xf0], 0x1ff
    mov rbx, 0xfec00000
    mov dword ptr [rbx], 0x10 + 2 * 5 + 1
    mov dword ptr [rbx + 0x10], 0
    mov dword ptr [rbx], 0x10 + 2 * 5
    mov dword ptr [rbx + 0x10], 0x8030

    mov rbx, 0xd0000000
    mov eax, [rbx + 0x08]
    lea rdi, [rip + s_devid]
    call kv
    # Reset, ACKNOWLEDGE, DRIVER; accept VIRTIO_F_VERSION_1 only.
    mov dword ptr [rbx + 0x70], 0
    mov dword ptr [rbx + 0x70], 1
    mov dword ptr [rbx + 0x70], 3
    mov dword ptr [rbx + 0x24], 1
    mov dword ptr [rbx + 0x20], 1
    mov dword ptr [rbx + 0x24], 0
    mov dword ptr [rbx + 0x20], 0
    mov dword ptr [rbx + 0x70], 11
    mov eax, [rbx + 0x70]
    lea rdi, [rip + s_features_ok]
    call kv
    # Capacity (config space, sectors).
    mov rax, [rbx + 0x100]
    lea rdi, [rip + s_capacity]
    call kv
    # Queue 0: 8 entries.
    mov dword ptr [rbx + 0x30], 0
    mov dword ptr [rbx + 0x38], 8
    lea rax, [rip + desc]
    mov [rbx + 0x80], eax
    shr rax, 32
    mov [rbx + 0x84], eax
    lea rax, [rip + avail]
    mov [rbx + 0x90], eax
    shr rax, 32
    mov [rbx + 0x94], eax
    lea rax, [rip + used]
    mov [rbx + 0xa0], eax
    shr rax, 32
    mov [rbx + 0xa4], eax
    mov dword ptr [rbx + 0x44], 1
    mov dword ptr [rbx + 0x70], 15
    sti

    # Write sector 0 from wbuf.
    lea rax, [rip + hdr]
    mov dword ptr [rax], 1
    mov qword ptr [rax + 8], 0
    lea rsi, [rip + wbuf]
    mov r12d, 1
    call do_request
    movzx eax, byte ptr [rip + status]
    lea rdi, [rip + s_wstatus]
    call kv
    # Read sector 1 into rbuf.
    lea rax, [rip + hdr]
    mov dword ptr [rax], 0
    mov qword ptr [rax + 8], 1
    lea rsi, [rip + rbuf]
    mov r12d, 3
    call do_request
    movzx eax, byte ptr [rip + status]
    lea rdi, [rip + s_rstatus]
    call kv
    lea rdi, [rip + s_read]
    call puts
    lea rdi, [rip + rbuf]
    call puts
    mov al, 10
    call putc
    mov rax, [rip + irqs]
    lea rdi, [rip + s_irqs]
    call kv
    call reset

# One request: header, 512-byte buffer at rsi (descriptor flags r12d),
# status byte; returns when the used ring shows it done.
do_request:
    lea rdi, [rip + desc]
    lea rax, [rip + hdr]
    mov [rdi], rax
    mov dword ptr [rdi + 8], 16
    mov word ptr [rdi + 12], 1
    mov word ptr [rdi + 14], 1
    mov [rdi + 16], rsi
    mov dword ptr [rdi + 24], 512
    mov word ptr [rdi + 28], r12w
    mov word ptr [rdi + 30], 2
    lea rax, [rip + status]
    mov byte ptr [rax], 0xff
    mov [rdi + 32], rax
    mov dword ptr [rdi + 40], 1
    mov word ptr [rdi + 44], 2
    mov word ptr [rdi + 46], 0
    lea rdi, [rip + avail]
    movzx eax, word ptr [rdi + 2]
    mov ecx, eax
    and ecx, 7
    mov word ptr [rdi + 4 + rcx * 2], 0
    inc eax
    mov word ptr [rdi + 2], ax
    mov r13d, eax
    mov dword ptr [rbx + 0x50], 0
1:  cli
    lea rdi, [rip + used]
    movzx eax, word ptr [rdi + 2]
    cmp eax, r13d
    jae 2f
    sti
    hlt
    jmp 1b
2:  sti
    ret

irq_handler:
    push rax
    push rbx
    mov rbx, 0xd0000000
    mov eax, [rbx + 0x60]
    mov [rbx + 0x64], eax
    lock inc qword ptr [rip + irqs]
    mov rbx, 0xfee00000
    mov dword ptr [rbx + 0xb0], 0
    pop rbx
    pop rax
    iretq

.section .rodata
s_devid: .asciz "devid"
s_features_ok: .asciz "status"
s_capacity: .asciz "capacity"
s_wstatus: .asciz "write_status"
s_rstatus: .asciz "read_status"
s_read: .asciz "read="
s_irqs: .asciz "irqs"
.data
.balign 16
idtr: .word 256 * 16 - 1
      .quad idt
.balign 512
wbuf: .ascii "GUEST WROTE THIS"
      .fill 496, 1, 0x47
.bss
.balign 4096
idt: .skip 4096
desc: .skip 128
avail: .skip 32
used: .skip 128
hdr: .skip 16
.balign 512
rbuf: .skip 513
status: .skip 1
.balign 8
irqs: .skip 8
.text
"#;

#[test]
fn virtio_blk_write_and_read_on_qcow2_with_irqfd_completion() {
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path(), "blk", BLK_GUEST);
    // A 1 MiB disk whose sector 1 the host fills, converted to qcow2 by
    // qemu-img (the peer).
    let raw = dir.path().join("disk.raw");
    let mut data = vec![0u8; 1 << 20];
    let msg = b"written by host!";
    data[512..512 + msg.len()].copy_from_slice(msg);
    std::fs::write(&raw, &data).unwrap();
    let qcow = dir.path().join("disk.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow)
        .status()
        .expect("qemu-img (qemu-utils) is needed");
    assert!(st.success());

    let img = image::open(
        &qcow,
        &image::OpenOptions {
            read_only: false,
            format: Some(image::Format::Qcow2),
            ..Default::default()
        },
    )
    .unwrap();
    let out = Capture::default();
    let mut cfg = config(&guest, &out);
    cfg.disks = vec![Disk::new(Arc::new(img), false)];
    cfg.cmdline = "console=ttyS0".into();
    let outcome = run(cfg);
    let text = out.text();
    assert_eq!(outcome.reason, StopReason::Reset, "{text}");
    assert_eq!(value(&text, "devid"), 2, "block device: {text}");
    assert_eq!(value(&text, "status"), 11, "FEATURES_OK kept: {text}");
    assert_eq!(value(&text, "capacity"), 2048);
    assert_eq!(value(&text, "write_status"), 0, "VIRTIO_BLK_S_OK: {text}");
    assert_eq!(value(&text, "read_status"), 0);
    assert!(text.contains("read=written by host!\n"), "{text}");
    // Each completion signals the irqfd, but KVM injects once for
    // signals that arrive before its injection work runs (the guest sees
    // the first request done in the used ring, sends the second, and both
    // signals can land together on a loaded host): one interrupt or two.
    let irqs = value(&text, "irqs");
    assert!(
        (1..=2).contains(&irqs),
        "interrupts for two requests: {text}"
    );
    // Both kicks went through the ioeventfd, not a vCPU exit; nothing
    // outside the device was touched.
    assert_eq!(outcome.notify_exits, 0);
    assert_eq!(outcome.unhandled_mmio, 0);

    // qemu-img reads what the guest wrote.
    let back = dir.path().join("back.raw");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&qcow)
        .arg(&back)
        .status()
        .unwrap();
    assert!(st.success());
    let back = std::fs::read(&back).unwrap();
    assert_eq!(&back[..16], b"GUEST WROTE THIS");
    assert!(back[16..512].iter().all(|&b| b == b'G'));
    assert_eq!(&back[512..512 + msg.len()], msg);
}
