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

/// A configuration for `kernel` with 1 vCPU and 16 MiB, serial to `out`.
pub fn config(kernel: &Path, out: &Capture) -> MachineConfig {
    MachineConfig {
        kvm_path: x86_machine::DEFAULT_KVM_PATH.into(),
        vcpus: 1,
        mem_size: 16 << 20,
        kernel: std::fs::read(kernel).unwrap(),
        kernel_name: kernel.display().to_string(),
        initrd: None,
        cmdline: String::new(),
        disks: Vec::new(),
        rng: false,
        virtio_console: None,
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
