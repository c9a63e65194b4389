//! Booting Debian's riscv64 kernel (the `guest` crate's default guest) with
//! `virtkit run` and `virtkit vm run`: built-in SBI and OpenSBI, 1, 2 and 4
//! harts, exit statuses, disks (raw and qcow2 overlays with snapshots,
//! checked on the host with debugfs and qemu-img), an SMP stress, and bad
//! input. Each boot serves several assertions to keep the suite short.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const VIRTKIT: &str = env!("CARGO_BIN_EXE_virtkit");
const OPENSBI: &str = "/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin";
const OPENSBI_JUMP: &str = "/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.bin";
/// A safety net: no boot here takes more than a few minutes even on a
/// loaded machine; a hang must fail the test, not stall CI.
const TIMEOUT: &str = "900";

fn virtkit(args: &[&str]) -> Output {
    Command::new(VIRTKIT)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The guest's output as lines without the tty's carriage returns.
fn lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect()
}

fn describe(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vk-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sh(cmd: &str, args: &[&str]) -> Output {
    let o = Command::new(cmd).args(args).output().unwrap();
    assert!(o.status.success(), "{cmd} {args:?}: {}", describe(&o));
    o
}

/// Kernel and a command initrd for `virtkit vm run`.
fn vm_assets(dir: &Path, argv: &[&str]) -> (String, String) {
    let assets = guest::default_riscv64().unwrap();
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let initrd = guest::run_initramfs(&assets.initramfs, &argv).unwrap();
    let path = dir.join("initrd.cpio");
    std::fs::write(&path, initrd).unwrap();
    (
        assets.kernel.display().to_string(),
        path.display().to_string(),
    )
}

#[test]
fn run_one_hart_exit_status_and_cpu_count() {
    let o = virtkit(&[
        "run",
        "--timeout",
        TIMEOUT,
        "--",
        "sh",
        "-c",
        "nproc; grep -c ^processor /proc/cpuinfo; uname -m; exit 7",
    ]);
    assert_eq!(o.status.code(), Some(7), "{}", describe(&o));
    let l = lines(&o);
    assert!(
        l.windows(3).any(|w| w == ["1", "1", "riscv64"]),
        "{}",
        describe(&o)
    );
}

#[test]
fn run_four_harts_stress_is_correct_round_after_round() {
    // Per round: four sha256sum in parallel (one per hart) over 4 MiB of
    // generated data, plus a shell arithmetic loop; all checked in the guest
    // against values computed on the host.
    let expect = {
        let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        let f = std::env::temp_dir().join(format!("vk-stress-{}", std::process::id()));
        std::fs::write(&f, &data).unwrap();
        let o = sh("sha256sum", &[f.to_str().unwrap()]);
        let _ = std::fs::remove_file(&f);
        String::from_utf8_lossy(&o.stdout)[..64].to_string()
    };
    let script = format!(
        r#"
nproc; grep -c ^processor /proc/cpuinfo
# 4 MiB of bytes i % 251 (awk writes them once; the rounds hash them).
awk 'BEGIN {{ for (i = 0; i < 251; i++) printf "%c", i }}' > /tmp/p 2>/dev/null
i=0; : > /tmp/data
while [ $(stat -c %s /tmp/data) -lt 4194304 ]; do cat /tmp/p /tmp/p /tmp/p /tmp/p >> /tmp/data; cat /tmp/data /tmp/data > /tmp/d2 2>/dev/null; mv /tmp/d2 /tmp/data; done
head -c 4194304 /tmp/data > /tmp/d4; mv /tmp/d4 /tmp/data
good=0
for round in $(seq 20); do
  for j in 1 2 3 4; do sha256sum /tmp/data > /tmp/h$j & done
  n=0; k=0; while [ $k -lt 3000 ]; do n=$((n + k)); k=$((k + 1)); done
  wait
  ok=1
  for j in 1 2 3 4; do [ "$(cut -c1-64 /tmp/h$j)" = {expect} ] || ok=0; done
  echo "round $round ok=$ok loop=$n"
  [ $ok = 1 ] && [ $n = 4498500 ] && good=$((good + 1))
done
# The verdict leaves through the exit status as well: 0 when the guest saw
# four harts and all twenty rounds were right.
[ "$(nproc)" = 4 ] && [ "$(grep -c ^processor /proc/cpuinfo)" = 4 ] && [ "$good" = 20 ]
"#
    );
    let o = virtkit(&[
        "run",
        "--cpus",
        "4",
        "--timeout",
        TIMEOUT,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    // The exit status carries the verdict, and every round's line must be
    // on the console (output lost at the command's exit was a bug: the
    // hang-up of the terminal threw away what the UART had not sent).
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let l = lines(&o);
    assert!(l.windows(2).any(|w| w == ["4", "4"]), "{}", describe(&o));
    for round in 1..=20 {
        let want = format!("round {round} ok=1 loop=4498500");
        assert!(l.contains(&want), "missing {want:?}\n{}", describe(&o));
    }
}

#[test]
fn opensbi_firmware_boots_the_same_kernel_on_two_harts() {
    let dir = tmpdir("opensbi");
    let (kernel, initrd) = vm_assets(
        &dir,
        &[
            "sh",
            "-c",
            // The hart count is printed and also leaves through the exit
            // status (10 * nproc + cpuinfo entries).
            "nproc; grep -c ^processor /proc/cpuinfo; \
             exit $(( $(nproc) * 10 + $(grep -c ^processor /proc/cpuinfo) ))",
        ],
    );
    // Interpreted (--no-jit): the other boots run translated code, so this
    // one keeps the interpreter's whole system path (M-mode firmware, two
    // harts, Linux) under test.
    let o = virtkit(&[
        "vm",
        "run",
        "--no-jit",
        "--arch",
        "riscv64",
        "--cpus",
        "2",
        "--firmware",
        OPENSBI,
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--append",
        "console=ttyS0 quiet",
        "--timeout",
        TIMEOUT,
    ]);
    assert_eq!(o.status.code(), Some(22), "{}", describe(&o));
    let l = lines(&o);
    assert!(l.iter().any(|x| x.contains("OpenSBI")), "{}", describe(&o));
    assert!(l.windows(2).any(|w| w == ["2", "2"]), "{}", describe(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn opensbi_fw_jump_finds_the_kernel_and_device_tree_where_it_expects_them() {
    // fw_jump has the kernel's address built in (RAM + 2 MiB) and passes
    // the kernel its own copy of the device tree (RAM + 34 MiB): its banner
    // shows both, and the guest runs the command.
    let dir = tmpdir("fwjump");
    let (kernel, initrd) = vm_assets(&dir, &["sh", "-c", "echo nproc=$(nproc); exit 5"]);
    let o = virtkit(&[
        "vm",
        "run",
        "--firmware",
        OPENSBI_JUMP,
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--append",
        "console=ttyS0 quiet",
        "--timeout",
        TIMEOUT,
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", describe(&o));
    let l = lines(&o);
    let banner = |key: &str, value: &str| {
        l.iter()
            .any(|x| x.starts_with(key) && x.trim_end().ends_with(value))
    };
    assert!(
        banner("Domain0 Next Address", "0x0000000080200000"),
        "{}",
        describe(&o)
    );
    assert!(
        banner("Domain0 Next Arg1", "0x0000000082200000"),
        "{}",
        describe(&o)
    );
    assert!(l.iter().any(|x| x == "nproc=1"), "{}", describe(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn virtio_console_is_hvc0_both_ways() {
    // console=hvc0 last: the kernel's console, the command's terminal (the
    // init's cttyhack follows /dev/console) and the host's keystrokes all
    // go to the virtio console; the UART still prints.
    let dir = tmpdir("hvc");
    let script = "grep -qx 0x0003 /sys/bus/virtio/devices/*/device || exit 3; \
                  [ \"$(tty)\" = /dev/hvc0 ] || exit 4; \
                  echo hello-hvc > /dev/hvc0; echo hello-uart > /dev/ttyS0; \
                  read -r line; echo \"got:$line\"; [ \"$line\" = typed-line ]";
    let (kernel, initrd) = vm_assets(&dir, &["sh", "-c", script]);
    let mut child = Command::new(VIRTKIT)
        .args([
            "vm",
            "run",
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--append",
            "console=ttyS0 console=hvc0 quiet",
            "--timeout",
            TIMEOUT,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Type only once the guest listens (it printed hello-uart's whole line,
    // after hello-hvc's): as on a serial line, bytes sent before the driver
    // set the port up are lost, and the terminal's echo of the typed line
    // must not land inside a line still being sent.
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take().unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if stdin.is_some()
            && String::from_utf8_lossy(&out)
                .replace('\r', "")
                .contains("hello-uart\n")
        {
            let mut s = stdin.take().unwrap();
            s.write_all(b"typed-line\n").unwrap();
        }
    }
    drop(stdin);
    let mut o = child.wait_with_output().unwrap();
    o.stdout = out;
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let l = lines(&o);
    for want in ["hello-hvc", "hello-uart", "got:typed-line"] {
        assert!(l.iter().any(|x| x == want), "{want}: {}", describe(&o));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn debugfs_cat(image: &Path, file: &str) -> Option<String> {
    let o = Command::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(image)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr);
    (!err.contains("File not found")).then_some(s)
}

fn sha256(path: &Path) -> String {
    String::from_utf8_lossy(&sh("sha256sum", &[path.to_str().unwrap()]).stdout)[..64].to_string()
}

#[test]
fn disks_raw_and_qcow2_overlay_persist_and_snapshots_restore() {
    let dir = tmpdir("disks");
    let raw = dir.join("raw.img");
    let base_raw = dir.join("base-raw.img");
    let base = dir.join("base.qcow2");
    let overlay = dir.join("overlay.qcow2");
    for img in [&raw, &base_raw] {
        sh("truncate", &["-s", "64M", img.to_str().unwrap()]);
        sh("mkfs.ext4", &["-q", "-F", img.to_str().unwrap()]);
    }
    let note = dir.join("note.txt");
    std::fs::write(&note, "from the base\n").unwrap();
    sh(
        "debugfs",
        &[
            "-w",
            "-R",
            &format!("write {} base.txt", note.display()),
            base_raw.to_str().unwrap(),
        ],
    );
    sh(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            base_raw.to_str().unwrap(),
            base.to_str().unwrap(),
        ],
    );
    sh(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            base.to_str().unwrap(),
            "-F",
            "qcow2",
            overlay.to_str().unwrap(),
        ],
    );
    sh(
        "qemu-img",
        &["snapshot", "-c", "before", overlay.to_str().unwrap()],
    );
    let base_sum = sha256(&base);

    // The first disk is /dev/vda (mounted at /mnt by the init), the second
    // /dev/vdb.
    let script = "echo written-to-raw > /mnt/a.txt; mkdir -p /m2; mount -t ext4 /dev/vdb /m2; \
                  cat /m2/base.txt; echo written-to-overlay > /m2/b.txt; \
                  dd if=/dev/urandom of=/m2/big bs=1M count=8 2>/dev/null; sha256sum /m2/big > /m2/big.sum; \
                  umount /m2; sync; exit 0";
    let (kernel, initrd) = vm_assets(&dir, &["sh", "-c", script]);
    let o = virtkit(&[
        "vm",
        "run",
        "--cpus",
        "2",
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--append",
        "console=ttyS0 quiet",
        "--disk",
        raw.to_str().unwrap(),
        "--disk",
        overlay.to_str().unwrap(),
        "--timeout",
        TIMEOUT,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert!(
        lines(&o).iter().any(|l| l == "from the base"),
        "{}",
        describe(&o)
    );

    assert_eq!(
        debugfs_cat(&raw, "a.txt").as_deref(),
        Some("written-to-raw\n")
    );
    sh("qemu-img", &["check", "-q", overlay.to_str().unwrap()]);
    let flat = dir.join("flat.img");
    sh(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            overlay.to_str().unwrap(),
            flat.to_str().unwrap(),
        ],
    );
    assert_eq!(
        debugfs_cat(&flat, "b.txt").as_deref(),
        Some("written-to-overlay\n")
    );
    assert_eq!(
        debugfs_cat(&flat, "base.txt").as_deref(),
        Some("from the base\n")
    );
    // The 8 MiB file came through intact: its checksum, computed in the
    // guest, matches the host's.
    let big = dir.join("big");
    sh(
        "debugfs",
        &[
            "-R",
            &format!("dump big {}", big.display()),
            flat.to_str().unwrap(),
        ],
    );
    let sum = debugfs_cat(&flat, "big.sum").unwrap();
    assert_eq!(&sum[..64], sha256(&big), "8 MiB file corrupted");
    assert_eq!(sha256(&base), base_sum, "the base image changed");

    sh(
        "qemu-img",
        &["snapshot", "-a", "before", overlay.to_str().unwrap()],
    );
    std::fs::remove_file(&flat).unwrap();
    sh(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            overlay.to_str().unwrap(),
            flat.to_str().unwrap(),
        ],
    );
    assert_eq!(
        debugfs_cat(&flat, "b.txt"),
        None,
        "snapshot did not restore"
    );
    assert_eq!(
        debugfs_cat(&flat, "base.txt").as_deref(),
        Some("from the base\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tmpdir("bad");
    let assets = guest::default_riscv64().unwrap();
    let kernel = assets.kernel.display().to_string();
    let check = |args: &[&str], code: i32, needle: &str| {
        let o = virtkit(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", describe(&o));
        assert!(
            err.contains(needle),
            "{args:?}: want {needle:?}: {}",
            describe(&o)
        );
    };
    check(
        &["vm", "run", "--kernel", "/nonexistent/Image"],
        1,
        "/nonexistent/Image",
    );
    check(&["vm", "run", "--kernel", "/bin/true"], 1, "x86-64");
    check(
        &["vm", "run", "--kernel", "/etc/passwd"],
        1,
        "not a RISC-V Linux kernel",
    );
    check(
        &["vm", "run", "--kernel", &kernel, "--mem", "16M"],
        1,
        "not enough memory",
    );
    check(
        &["vm", "run", "--kernel", &kernel, "--mem", "1K"],
        1,
        "out of range",
    );
    check(
        &["vm", "run", "--kernel", &kernel, "--cpus", "0"],
        1,
        "harts",
    );
    check(
        &["vm", "run", "--arch", "x86_64", "--kernel", &kernel],
        1,
        "riscv64",
    );
    let empty = dir.join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    check(
        &[
            "vm",
            "run",
            "--kernel",
            &kernel,
            "--disk",
            empty.to_str().unwrap(),
        ],
        1,
        "not a disk image",
    );
    check(
        &["run", "--disk", dir.to_str().unwrap(), "--", "true"],
        1,
        "directory",
    );
    let bad_qcow = dir.join("bad.qcow2");
    let mut hdr = b"QFI\xfb".to_vec();
    hdr.extend_from_slice(&[0xff; 508]);
    std::fs::write(&bad_qcow, hdr).unwrap();
    let o = virtkit(&[
        "vm",
        "run",
        "--kernel",
        &kernel,
        "--disk",
        bad_qcow.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("bad.qcow2"),
        "{}",
        describe(&o)
    );
    // A kernel that panics (no root filesystem, no initrd) ends the run,
    // with the built-in SBI and under OpenSBI (there the kernel's reset
    // goes through SBI SRST to the firmware, whose sifive_test driver
    // writes 16 bits: a panicking guest used to hang until the timeout).
    for firmware in ["builtin", OPENSBI] {
        let o = virtkit(&[
            "vm",
            "run",
            "--firmware",
            firmware,
            "--kernel",
            &kernel,
            "--append",
            "console=ttyS0 root=/dev/nonexistent",
            "--timeout",
            TIMEOUT,
        ]);
        assert_eq!(o.status.code(), Some(1), "{firmware}: {}", describe(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("Kernel panic"),
            "{firmware}: {}",
            describe(&o)
        );
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("reset"),
            "{firmware}: {}",
            describe(&o)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
