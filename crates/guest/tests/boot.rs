//! Boots the default guest (Debian's riscv64 kernel + our initramfs) under
//! the real peer, qemu-system-riscv64, and checks the init's protocol: the
//! command from the run archive runs, the virtio disk is mounted at /mnt,
//! and the exit status comes back through the sifive,test finisher.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Boots with `initrd` (and `disk` when given); types `input` at the first
/// shell prompt; returns (exit code, console output).
fn qemu(
    kernel: &Path,
    initrd: &Path,
    disk: Option<&Path>,
    input: Option<&str>,
) -> (Option<i32>, String) {
    let mut cmd = Command::new("qemu-system-riscv64");
    cmd.args([
        "-M",
        "virt",
        "-m",
        "512M",
        "-nographic",
        "-bios",
        "default",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", "console=ttyS0 quiet"]);
    if let Some(d) = disk {
        cmd.arg("-drive")
            .arg(format!("file={},format=raw,if=none,id=d", d.display()))
            .args(["-device", "virtio-blk-device,drive=d"]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-system-riscv64 is installed (qemu-system-misc)");
    let mut stdout = child.stdout.take().unwrap();
    let mut stdin = child.stdin.take();
    let input = input.map(str::to_string);
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => s.extend_from_slice(&buf[..n]),
            }
            if let Some(text) = &input {
                if stdin.is_some() && s.windows(4).any(|w| w == b"/ # ") {
                    let mut i = stdin.take().unwrap();
                    let _ = i.write_all(text.as_bytes());
                    // Keep the pipe open: EOF on the console would end the shell.
                    std::mem::forget(i);
                }
            }
        }
        String::from_utf8_lossy(&s).into_owned()
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "guest did not power off within 300 s:\n{}",
                reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status.code(), reader.join().unwrap())
}

#[test]
fn boots_runs_command_mounts_disk_and_returns_status() {
    let assets = guest::default_riscv64().unwrap();
    assert!(
        assets.modules.iter().any(|m| m == "virtio_blk"),
        "{:?}",
        assets.modules
    );
    assert!(
        assets.modules.iter().any(|m| m == "ext4"),
        "{:?}",
        assets.modules
    );
    let dir = tempfile::tempdir().unwrap();

    // An ext4 disk made on the host with a file in it.
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("hello"), "hello from the host\n").unwrap();
    let disk = dir.path().join("disk.raw");
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&src)
        .arg(&disk)
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());

    let script = "cat /mnt/hello; echo \"$GREETING\" > /mnt/out; echo \"args:$#:$1\"; \
                  grep -c virtio_blk /proc/modules; exit 7";
    let argv: Vec<String> = ["sh", "-c", script, "argv0", "arg one"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let env = vec![("GREETING".to_string(), "written in the guest".to_string())];
    let initrd = dir.path().join("initrd");
    std::fs::write(
        &initrd,
        guest::run_initramfs_with_env(&assets.initramfs, &argv, &env).unwrap(),
    )
    .unwrap();

    let (code, out) = qemu(&assets.kernel, &initrd, Some(&disk), None);
    assert!(out.contains("hello from the host"), "{out}");
    assert!(out.contains("args:1:arg one"), "{out}");
    assert_eq!(code, Some(7), "{out}");
    assert!(!out.contains("virtkit-init:"), "init complained:\n{out}");

    // The write reached the disk (read back with e2fsprogs' debugfs).
    let cat = Command::new("debugfs")
        .args(["-R", "cat /out"])
        .arg(&disk)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout),
        "written in the guest\n"
    );
}

#[test]
fn interactive_shell_without_command() {
    let assets = guest::default_riscv64().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd");
    std::fs::write(
        &initrd,
        guest::run_initramfs(&assets.initramfs, &[]).unwrap(),
    )
    .unwrap();
    let (code, out) = qemu(
        &assets.kernel,
        &initrd,
        None,
        Some("echo \"tty=$(tty) cpus=$(nproc)\"; exit 3\n"),
    );
    assert!(out.contains("tty=/dev/ttyS0 cpus=1"), "{out}");
    assert_eq!(code, Some(3), "{out}");
}
