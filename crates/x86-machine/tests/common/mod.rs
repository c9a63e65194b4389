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
