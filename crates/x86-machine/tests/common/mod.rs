//! Small x86-64 guests built by the tests: GNU as (Intel syntax) and ld
//! with a linker script that puts the program at physical 2 MiB, plus
//! helpers to run them on /dev/kvm and collect their serial output.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use x86_machine::{MachineConfig, Outcome};

/// Serial helpers every guest includes: `putc` (al), `puts` (rdi: NUL
/// terminated), `hex` (rax, 16 digits), `kv` (rdi: name, rax: value,
/// prints "name=HEX\n"), `reset` (i8042 0xfe).
pub const LIB: &str = r#"
putc:
    push rdx
    mov dx, 0x3f8
    out dx, al
    pop rdx
    ret
puts:
    mov al, [rdi]
    test al, al
    jz 2f
    call putc
    inc rdi
    jmp puts
2:  ret
hex:
    push rbx
    push rcx
    mov rbx, rax
    mov rcx, 16
3:  rol rbx, 4
    mov al, bl
    and al, 0xf
    cmp al, 10
    jb 4f
    add al, 'a' - 10 - '0'
4:  add al, '0'
    call putc
    dec rcx
    jnz 3b
    pop rcx
    pop rbx
    ret
kv:
    push rax
    call puts
    mov al, '='
    call putc
    pop rax
    call hex
    mov al, 10
    call putc
    ret
reset:
    mov al, 0xfe
    out 0x64, al
    jmp reset
"#;

const LINKER_SCRIPT: &str = "ENTRY(_start)
SECTIONS {
  . = 0x200000;
  .text : { *(.text*) }
  .rodata : { *(.rodata*) }
  .data : { *(.data*) }
  .bss : { *(.bss*) *(COMMON) }
}
";

/// Assembles `body` (Intel syntax; `_start` is its entry) with [`LIB`]
/// into an ELF64 file in `dir`.
pub fn build_guest(dir: &Path, name: &str, body: &str) -> PathBuf {
    let src = dir.join(format!("{name}.s"));
    let obj = dir.join(format!("{name}.o"));
    let ld = dir.join("guest.ld");
    let elf = dir.join(name);
    std::fs::write(
        &src,
        format!(".intel_syntax noprefix\n.code64\n.text\n.globl _start\n{body}\n{LIB}\n"),
    )
    .unwrap();
    std::fs::write(&ld, LINKER_SCRIPT).unwrap();
    let st = std::process::Command::new("as")
        .args(["--64", "-o"])
        .arg(&obj)
        .arg(&src)
        .status()
        .expect("GNU as (binutils) is needed to build the test guests");
    assert!(st.success(), "as failed on {}", src.display());
    let st = std::process::Command::new("ld")
        .args([
            "-static",
            "-nostdlib",
            "--no-warn-rwx-segments",
            "-z",
            "max-page-size=4096",
            "-T",
        ])
        .arg(&ld)
        .arg("-o")
        .arg(&elf)
        .arg(&obj)
        .status()
        .expect("ld (binutils) is needed to build the test guests");
    assert!(st.success(), "ld failed on {}", obj.display());
    elf
}

/// A writer the test can read back.
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A configuration for `kernel` (opened: read straight into guest RAM,
/// as the CLI does) with 1 vCPU and 16 MiB, serial to `out`.
pub fn config(kernel: &Path, out: &Capture) -> MachineConfig {
    MachineConfig {
        kvm_path: x86_machine::DEFAULT_KVM_PATH.into(),
        vcpus: 1,
        mem_size: 16 << 20,
        kernel: x86_machine::BootFile::open(kernel).unwrap(),
        kernel_name: kernel.display().to_string(),
        initrd: None,
        cmdline: String::new(),
        disks: Vec::new(),
        rng: false,
        virtio_console: None,
        nics: Vec::new(),
        output: Box::new(out.clone()),
        input: None,
        timeout: Some(Duration::from_secs(30)),
    }
}

pub fn run(cfg: MachineConfig) -> Outcome {
    x86_machine::run(cfg).expect("the machine runs")
}

/// The value of `name=HEX` lines in the output.
pub fn value(out: &str, name: &str) -> u64 {
    let prefix = format!("{name}=");
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name}= in the guest's output:\n{out}"));
    u64::from_str_radix(line.trim(), 16).unwrap()
}

/// Wraps `body` (its entry `_start` first) as a bzImage: a setup header
/// of boot protocol 2.15 with a 64-bit entry, and the flat payload that
/// loads at 1 MiB with `_start` at its 64-bit entry (+0x200).
pub fn build_bzimage(dir: &Path, name: &str, body: &str) -> PathBuf {
    let src = dir.join(format!("{name}.s"));
    let obj = dir.join(format!("{name}.o"));
    let ld = dir.join("bz.ld");
    let elf = dir.join(format!("{name}.elf"));
    let flat = dir.join(format!("{name}.bin"));
    std::fs::write(
        &src,
        format!(".intel_syntax noprefix\n.code64\n.text\n.globl _start\n{body}\n{LIB}\n"),
    )
    .unwrap();
    std::fs::write(
        &ld,
        "ENTRY(_start)\nSECTIONS {\n  . = 0x100000;\n  .text : { . = 0x200; *(.text*) *(.rodata*) *(.data*) }\n}\n",
    )
    .unwrap();
    let ok = |c: &mut std::process::Command| assert!(c.status().unwrap().success(), "{c:?}");
    ok(std::process::Command::new("as")
        .args(["--64", "-o"])
        .arg(&obj)
        .arg(&src));
    ok(std::process::Command::new("ld")
        .args(["-static", "-nostdlib", "--no-warn-rwx-segments", "-T"])
        .arg(&ld)
        .arg("-o")
        .arg(&elf)
        .arg(&obj));
    ok(std::process::Command::new("objcopy")
        .args(["-O", "binary"])
        .arg(&elf)
        .arg(&flat));
    let mut payload = std::fs::read(&flat).unwrap();
    payload.resize(payload.len().next_multiple_of(16), 0);
    let mut img = vec![0u8; 5 * 512];
    let put = |img: &mut Vec<u8>, off: usize, v: &[u8]| img[off..off + v.len()].copy_from_slice(v);
    put(&mut img, 0x1f1, &[4]); // setup_sects
    put(
        &mut img,
        0x1f4,
        &((payload.len() / 16) as u32).to_le_bytes(),
    ); // syssize
    put(&mut img, 0x1fe, &0xaa55u16.to_le_bytes());
    put(&mut img, 0x202, b"HdrS");
    put(&mut img, 0x206, &0x020fu16.to_le_bytes()); // protocol 2.15
    put(&mut img, 0x211, &[1]); // LOADED_HIGH
    put(&mut img, 0x214, &0x10_0000u32.to_le_bytes()); // code32_start
    put(&mut img, 0x22c, &0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(&mut img, 0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
    put(&mut img, 0x236, &1u16.to_le_bytes()); // XLF_KERNEL_64
    put(&mut img, 0x238, &2047u32.to_le_bytes()); // cmdline_size
    put(&mut img, 0x260, &(0x10_0000u32).to_le_bytes()); // init_size
    img.extend_from_slice(&payload);
    let out = dir.join(name);
    std::fs::write(&out, img).unwrap();
    out
}

/// The ARP guest for a network card in virtio slot `slot` (the slots
/// before it hold other devices): the card's registers and IOAPIC pin
/// follow from the slot.
pub fn net_guest(slot: u32) -> String {
    format!(
        ".equ NET_BASE, {:#x}\n.equ NET_PIN, {}\n{NET_GUEST}",
        0xd000_0000u32 + slot * 0x1000,
        5 + slot
    )
}

const NET_GUEST: &str = r#"
_start:
    mov al, 0xff
    out 0x21, al
    out 0xa1, al
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
    # LAPIC on; IOAPIC pin NET_PIN -> vector 0x30, level triggered, to APIC 0.
    mov rbx, 0xfee00000
    mov dword ptr [rbx + 0xf0], 0x1ff
    mov rbx, 0xfec00000
    mov dword ptr [rbx], 0x10 + 2 * NET_PIN + 1
    mov dword ptr [rbx + 0x10], 0
    mov dword ptr [rbx], 0x10 + 2 * NET_PIN
    mov dword ptr [rbx + 0x10], 0x8030

    mov rbx, NET_BASE
    mov eax, [rbx + 0x08]
    lea rdi, [rip + s_devid]
    call kv
    # Reset, ACKNOWLEDGE, DRIVER; accept VIRTIO_F_VERSION_1 only (no
    # mergeable buffers: one receive chain per packet).
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
    # The MAC address in the configuration space.
    mov eax, [rbx + 0x100]
    movzx ecx, word ptr [rbx + 0x104]
    shl rcx, 32
    or rax, rcx
    lea rdi, [rip + s_mac]
    call kv
    # Queue 0 (receive) and 1 (transmit): 8 entries each.
    xor r8d, r8d
    lea r9, [rip + rx_desc]
    call setup_queue
    mov r8d, 1
    lea r9, [rip + tx_desc]
    call setup_queue
    mov dword ptr [rbx + 0x70], 15
    sti

    # One 2 KiB receive buffer, device-writable.
    lea rdi, [rip + rx_desc]
    lea rax, [rip + rxbuf]
    mov [rdi], rax
    mov dword ptr [rdi + 8], 2048
    mov word ptr [rdi + 12], 2
    mov word ptr [rdi + 14], 0
    lea rdi, [rip + rx_desc + 128]
    mov word ptr [rdi + 4], 0
    mov word ptr [rdi + 2], 1
    mov dword ptr [rbx + 0x50], 0

    # The ARP request: a 12-byte vnet header and a 42-byte frame.
    lea rdi, [rip + tx_desc]
    lea rax, [rip + txpkt]
    mov [rdi], rax
    mov dword ptr [rdi + 8], txpkt_end - txpkt
    mov word ptr [rdi + 12], 0
    mov word ptr [rdi + 14], 0
    lea rdi, [rip + tx_desc + 128]
    mov word ptr [rdi + 4], 0
    mov word ptr [rdi + 2], 1
    mov dword ptr [rbx + 0x50], 1

    # Wait for the reply in the receive queue's used ring.
1:  cli
    movzx eax, word ptr [rip + rx_desc + 256 + 2]
    test eax, eax
    jnz 2f
    sti
    hlt
    jmp 1b
2:  sti
    mov eax, [rip + rx_desc + 256 + 8]
    lea rdi, [rip + s_rxlen]
    call kv
    movzx eax, word ptr [rip + rxbuf + 12 + 12]
    xchg al, ah
    lea rdi, [rip + s_ethertype]
    call kv
    movzx eax, word ptr [rip + rxbuf + 12 + 20]
    xchg al, ah
    lea rdi, [rip + s_arpop]
    call kv
    mov eax, [rip + rxbuf + 12 + 28]
    bswap eax
    lea rdi, [rip + s_sender_ip]
    call kv
    mov eax, [rip + rxbuf + 12 + 38]
    bswap eax
    lea rdi, [rip + s_target_ip]
    call kv
    # The transmitted chain came back too.
3:  movzx eax, word ptr [rip + tx_desc + 256 + 2]
    test eax, eax
    jz 3b
    lea rdi, [rip + s_tx_used]
    call kv
    mov rax, [rip + irqs]
    lea rdi, [rip + s_irqs]
    call kv
    call reset

# Queue r8d with its descriptor table at r9 (avail +128, used +256).
setup_queue:
    mov [rbx + 0x30], r8d
    mov dword ptr [rbx + 0x38], 8
    mov rax, r9
    mov [rbx + 0x80], eax
    shr rax, 32
    mov [rbx + 0x84], eax
    lea rax, [r9 + 128]
    mov [rbx + 0x90], eax
    shr rax, 32
    mov [rbx + 0x94], eax
    lea rax, [r9 + 256]
    mov [rbx + 0xa0], eax
    shr rax, 32
    mov [rbx + 0xa4], eax
    mov dword ptr [rbx + 0x44], 1
    ret

irq_handler:
    push rax
    push rbx
    mov rbx, NET_BASE
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
s_mac: .asciz "mac"
s_rxlen: .asciz "rxlen"
s_ethertype: .asciz "ethertype"
s_arpop: .asciz "arpop"
s_sender_ip: .asciz "sender_ip"
s_target_ip: .asciz "target_ip"
s_tx_used: .asciz "tx_used"
s_irqs: .asciz "irqs"
.data
.balign 16
idtr: .word 256 * 16 - 1
      .quad idt
.balign 16
txpkt:
    .fill 12, 1, 0
    .byte 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
    .byte 0x52, 0x54, 0x00, 0x12, 0x34, 0x56
    .byte 0x08, 0x06
    .byte 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01
    .byte 0x52, 0x54, 0x00, 0x12, 0x34, 0x56
    .byte 10, 0, 2, 15
    .byte 0, 0, 0, 0, 0, 0
    .byte 10, 0, 2, 2
txpkt_end:
.bss
.balign 4096
idt: .skip 4096
rx_desc: .skip 512
tx_desc: .skip 512
rxbuf: .skip 2048
.balign 8
irqs: .skip 8
.text
"#;

/// Checks what the ARP guest printed: the card, its MAC address, and the
/// gateway's ARP reply.
pub fn check_net_guest(text: &str) {
    assert_eq!(value(text, "devid"), 1, "network device: {text}");
    assert_eq!(value(text, "status"), 11, "FEATURES_OK kept: {text}");
    // 52:54:00:12:34:56, read as a little-endian 48-bit number.
    assert_eq!(value(text, "mac"), 0x5634_1200_5452, "{text}");
    assert!(value(text, "rxlen") >= 12 + 42, "{text}");
    assert_eq!(value(text, "ethertype"), 0x0806, "an ARP frame: {text}");
    assert_eq!(value(text, "arpop"), 2, "an ARP reply: {text}");
    assert_eq!(
        value(text, "sender_ip"),
        0x0a00_0202,
        "from 10.0.2.2: {text}"
    );
    assert_eq!(
        value(text, "target_ip"),
        0x0a00_020f,
        "to 10.0.2.15: {text}"
    );
    assert_eq!(value(text, "tx_used"), 1, "{text}");
}

/// Counts on the serial port (`n=HEX` lines, 1 to `count`), one line per
/// LAPIC timer tick of `tick_ns` (it waits in HLT for each), then prints
/// r13 (set once at the start) and resets.
pub fn counter_guest(count: u64, tick_ns: u32) -> String {
    format!(
        r#"
_start:
    mov al, 0xff
    out 0x21, al
    out 0xa1, al
    lea rax, [rip + timer]
    lea rdi, [rip + idt + 0x40 * 16]
    mov word ptr [rdi], ax
    mov word ptr [rdi + 2], 0x08
    mov word ptr [rdi + 4], 0x8e00
    shr rax, 16
    mov word ptr [rdi + 6], ax
    shr rax, 16
    mov dword ptr [rdi + 8], eax
    mov dword ptr [rdi + 12], 0
    lidt [rip + idtr]
    # LAPIC on; its timer periodic on vector 0x40, divide by 1 (KVM's
    # LAPIC bus runs at 1 GHz: a count is a nanosecond).
    mov rbx, 0xfee00000
    mov dword ptr [rbx + 0xf0], 0x1ff
    mov dword ptr [rbx + 0x3e0], 0xb
    mov dword ptr [rbx + 0x320], 0x20040
    mov dword ptr [rbx + 0x380], {tick_ns}
    mov r13, 0x1122334455667788
    xor r12d, r12d
    sti
1:  inc r12
    mov rax, r12
    lea rdi, [rip + s_n]
    call kv
    cmp r12, {count}
    jae 2f
    hlt
    jmp 1b
2:  mov rax, r13
    lea rdi, [rip + s_r13]
    call kv
    call reset

timer:
    push rax
    lock inc qword ptr [rip + ticks]
    mov rax, 0xfee00000
    mov dword ptr [rax + 0xb0], 0
    pop rax
    iretq

.section .rodata
s_n: .asciz "n"
s_r13: .asciz "r13"
.data
.balign 16
idtr: .word 256 * 16 - 1
      .quad idt
.bss
.balign 4096
idt: .skip 4096
.balign 8
ticks: .skip 8
.text
"#
    )
}

/// What [`counter_guest`] prints from start to end.
pub fn counter_expected(count: u64) -> String {
    let mut s = String::new();
    for n in 1..=count {
        s.push_str(&format!("n={n:016x}\n"));
    }
    s.push_str("r13=1122334455667788\n");
    s
}

/// Takes keyboard interrupts: IRQ 1 through the IOAPIC (pin 1, vector
/// 0x41; the 8259s masked), the i8042's keyboard interrupt enabled with
/// translation (CTR 0x45). Prints "ready", then for each byte it reads
/// from port 0x60 on an interrupt a line "k=HEX"; after `count` bytes it
/// resets through the i8042.
pub fn keyboard_guest(count: u64) -> String {
    format!(
        r#"
_start:
    mov al, 0xff
    out 0x21, al
    out 0xa1, al
    lea rax, [rip + kbd]
    lea rdi, [rip + idt + 0x41 * 16]
    mov word ptr [rdi], ax
    mov word ptr [rdi + 2], 0x08
    mov word ptr [rdi + 4], 0x8e00
    shr rax, 16
    mov word ptr [rdi + 6], ax
    shr rax, 16
    mov dword ptr [rdi + 8], eax
    mov dword ptr [rdi + 12], 0
    lidt [rip + idtr]
    mov rbx, 0xfee00000
    mov dword ptr [rbx + 0xf0], 0x1ff
    # IOAPIC redirection entry 1: vector 0x41, fixed, edge, APIC 0.
    mov rbx, 0xfec00000
    mov dword ptr [rbx], 0x13
    mov dword ptr [rbx + 0x10], 0
    mov dword ptr [rbx], 0x12
    mov dword ptr [rbx + 0x10], 0x41
    # i8042 control register: keyboard interrupt, system flag, translation.
    mov al, 0x60
    out 0x64, al
    mov al, 0x45
    out 0x60, al
    lea rdi, [rip + s_ready]
    call puts
    sti
1:  hlt
    jmp 1b

kbd:
    push rax
    push rdi
    in al, 0x64
    test al, 1
    jz 9f
    in al, 0x60
    movzx eax, al
    lea rdi, [rip + s_k]
    call kv
    inc qword ptr [rip + seen]
    cmp qword ptr [rip + seen], {count}
    jb 9f
    call reset
9:  mov rax, 0xfee00000
    mov dword ptr [rax + 0xb0], 0
    pop rdi
    pop rax
    iretq

.section .rodata
s_ready: .asciz "ready\n"
s_k: .asciz "k"
.data
.balign 16
idtr: .word 256 * 16 - 1
      .quad idt
.bss
.balign 4096
idt: .skip 4096
.balign 8
seen: .skip 8
.text
"#
    )
}

/// What [`keyboard_guest`] prints for Ctrl+Alt+Del pressed and released
/// (set 1: the controller translates).
pub const CTRL_ALT_DEL_LINES: &str = "k=000000000000001d\nk=0000000000000038\n\
k=00000000000000e0\nk=0000000000000053\nk=00000000000000e0\nk=00000000000000d3\n\
k=00000000000000b8\nk=000000000000009d\n";
