//! Debian's riscv64 busybox-static under `virtkit emu user` and under
//! qemu-riscv64-static: shell scripts with loops and pipelines and the
//! common tools, on the same inputs; stdout and exit status must be
//! byte-identical.

mod emu_common;
use emu_common::*;
use std::path::{Path, PathBuf};

fn busybox() -> PathBuf {
    guest::busybox(guest::Arch::Riscv64).expect("fetch Debian's riscv64 busybox-static")
}

/// Deterministic inputs: a text file, a binary file and a small tree.
fn fixtures(dir: &Path) {
    let words = [
        "alpha", "beta", "gamma", "delta", "foo", "bar", "epsilon", "zeta", "eta", "theta",
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut text = String::new();
    for i in 0..5000 {
        let r = next();
        text.push_str(&format!(
            "{} {} {} {}\n",
            i,
            words[(r % 10) as usize],
            words[((r >> 8) % 10) as usize],
            r % 1000
        ));
    }
    std::fs::write(dir.join("lines.txt"), text).unwrap();
    let mut data = Vec::with_capacity(1 << 20);
    while data.len() < 1 << 20 {
        let r = next();
        // Compressible but not trivial: short runs over a small alphabet.
        let n = (r % 7 + 1) as usize;
        data.extend(std::iter::repeat_n((r >> 8) as u8 % 16, n));
    }
    data.truncate(1 << 20);
    std::fs::write(dir.join("data.bin"), data).unwrap();
    for (p, c) in [
        ("tree/a/one.txt", "one\n"),
        ("tree/a/two.txt", "two\ntwo\n"),
        ("tree/b/c/three.dat", "3"),
        ("tree/b/four.txt", "four four four four\n"),
        ("tree/top.txt", ""),
    ] {
        let f = dir.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, c).unwrap();
    }
}

const SCRIPTS: &[(&str, &str)] = &[
    (
        "loops",
        r#"i=0; s=0; while [ $i -lt 3000 ]; do i=$((i+1)); s=$(( (s + i*i) % 100003 )); done; echo $i $s
for w in one two three; do echo $w; done | tr a-z A-Z
f() { echo "f:$1:$#"; return 3; }; f $(echo hi there); echo rc=$?
x=$(seq 1 100 | tail -1); echo x=$x; case $x in 1*) echo starts-with-1;; esac
cat <<END
heredoc $x $((x * 2))
END
printf '%05d|%-4s|%x\n' 42 ab 255
test -f lines.txt && echo file; [ -d tree ] && echo dir; [ 3 -gt 4 ] || echo not-greater"#,
    ),
    (
        "pipelines",
        r#"cat lines.txt | cut -d' ' -f2 | sort | uniq -c | sort -rn | head -5
cut -d' ' -f3 lines.txt | sort -u | wc -l
sort -k4,4n -k1,1n lines.txt | head -3; sort -t' ' -k2,2 -s lines.txt | tail -2
seq 1 20000 | grep 7 | wc -l; yes abc | head -3; cat lines.txt | tac | head -2"#,
    ),
    (
        "hashes",
        "sha256sum data.bin lines.txt; md5sum data.bin lines.txt; sha1sum lines.txt; \
         sha512sum data.bin; cksum lines.txt",
    ),
    (
        "gzip",
        // -n leaves the name and time stamp out, so the compressed bytes
        // themselves can be compared.
        r#"gzip -6 < data.bin > d.gz; gzip -9 < lines.txt > l.gz; md5sum d.gz l.gz
gzip -1 -n -c lines.txt | md5sum; gzip -n -c data.bin | wc -c; gzip -d < l.gz | md5sum
gzip -dc d.gz | md5sum; cp lines.txt z.txt; gzip -n z.txt; ls z.txt*; gunzip z.txt.gz; cmp z.txt lines.txt
gunzip -c d.gz | cmp - data.bin && echo same; zcat l.gz | tail -2; gzip -t d.gz && echo ok
echo garbage > bad.gz; gunzip -t bad.gz; echo bad=$?"#,
    ),
    (
        "bzip2",
        "bzip2 -c lines.txt > l.bz2; md5sum l.bz2; bzip2 -dc l.bz2 | md5sum; bzcat l.bz2 | head -1",
    ),
    (
        "tar",
        r#"tar cf t.tar tree; tar tf t.tar | sort; mkdir x; tar xf t.tar -C x; find x -type f | sort
cat x/tree/a/two.txt; tar czf t.tgz tree && tar tzf t.tgz | wc -l; tar xOf t.tar tree/b/four.txt"#,
    ),
    (
        "text",
        r#"awk '{n[$2]++} END {for (k in n) print k, n[k]}' lines.txt | sort
awk -F' ' '$4 > 990 {s += $4; c++} END {printf "%d %d %.3f\n", c, s, s / c}' lines.txt
sed -n '10,14p' lines.txt; sed 's/a/A/g; s/^\([0-9]*\) /<\1> /' lines.txt | head -4
sed -e '/foo/d' lines.txt | wc -l; grep -c foo lines.txt; grep -n '^12' lines.txt | head -3
grep -v e lines.txt | wc -l; grep -E 'foo (bar|zeta)' lines.txt | tail -2
grep -q nothing-here lines.txt; echo grep=$?"#,
    ),
    (
        "status",
        r#"false; echo $?; sh -c 'exit 37'; echo $?; sh -c 'kill -TERM $$'; echo $?
(exit 5); echo $?; trap 'echo trapped' USR1; kill -USR1 $$; echo after-trap
sleep 0.05 & wait $!; echo waited=$?; exit 9"#,
    ),
];

/// $PATH of the guest shells: the host's usual directories (where qemu's
/// shell would otherwise find GNU tools, see `qemu_applet_dir`).
const HOST_PATH: &str = "/usr/bin:/bin";

fn run_script(bb: &Path, name: &str, script: &str) {
    let a = scratch(&format!("bb-{name}-virtkit"));
    let b = scratch(&format!("bb-{name}-qemu"));
    fixtures(&a);
    fixtures(&b);
    let qemu_path = format!("{}:{HOST_PATH}", qemu_applet_dir(bb).display());
    let ours = emu_env(
        &[],
        bb,
        &["sh", "-c", script],
        Some(&a),
        None,
        &[("PATH", HOST_PATH)],
    );
    let peer = qemu_env(
        &[],
        bb,
        &["sh", "-c", script],
        Some(&b),
        None,
        &[("PATH", &qemu_path)],
    );
    assert!(
        !peer.stdout.is_empty(),
        "{name}: qemu printed nothing: {}",
        peer.stderr
    );
    assert_same(&format!("busybox {name}"), &ours, &peer);
}

#[test]
fn busybox_scripts_match_qemu() {
    let bb = busybox();
    for (name, script) in SCRIPTS {
        run_script(&bb, name, script);
    }
}

/// The file tools, in a second test so the two run in parallel.
const FILE_SCRIPTS: &[(&str, &str)] = &[(
    "files",
    r#"find tree | sort; find tree -name '*.txt' -type f | sort; find tree -size -2c -type f
wc lines.txt data.bin; wc -l lines.txt; wc -c data.bin; wc -w < lines.txt; wc -L lines.txt
od -A x -t x1 -N 64 data.bin; od -c tree/a/two.txt; od -A d -t d2 -j 1000 -N 32 data.bin
od -t x8 -N 16 lines.txt; od -A x -t x1z -N 64 data.bin; echo od-z=$?
expr 12345 \* 6789; expr length hello; expr 7 % 3; expr abc : 'a\(.\)'; expr 3 \< 2; echo expr=$?
dd if=data.bin bs=4096 skip=3 count=5 2>/dev/null | md5sum; dd if=lines.txt bs=1 count=10 2>/dev/null
dd if=data.bin of=part bs=1000 skip=7 count=3 2>/dev/null; wc -c part; dd if=lines.txt bs=7 skip=2 count=2 2>/dev/null | od -c
cp -r tree t2 && diff -r tree t2 && echo copied; mv t2/top.txt t2/moved; ls t2 | sort; rm -r t2; ls
ln -s lines.txt link; readlink link; basename /a/b/c.txt .txt; dirname /a/b/c.txt
tail -c 100 data.bin | md5sum; head -c 3000 lines.txt | tail -n 2; stat -c '%s %F' lines.txt link"#,
)];

#[test]
fn busybox_file_tools_match_qemu() {
    let bb = busybox();
    for (name, script) in FILE_SCRIPTS {
        run_script(&bb, name, script);
    }
}

#[test]
fn busybox_reads_stdin_and_runs_applets_by_name() {
    let bb = busybox();
    let input: Vec<u8> = (0..20000u32)
        .flat_map(|i| format!("{}\n", i * 7919 % 10007).into_bytes())
        .collect();
    for args in [
        &["sort", "-n"][..],
        &["md5sum"][..],
        &["wc", "-l"][..],
        &["gzip", "-c"][..],
    ] {
        let ours = emu(&[], &bb, args, None, Some(&input));
        let peer = qemu(&[], &bb, args, None, Some(&input));
        assert_same(&format!("busybox {args:?}"), &ours, &peer);
    }
}

/// The threshold a flag chose is passed on through exec, even the default:
/// a VIRTKIT_JIT_THRESHOLD in the environment (which the exec'd program,
/// and the emulator process that runs it, inherit) does not override it.
#[test]
fn exec_passes_the_jit_threshold_flag_on_over_the_environment() {
    let bb = busybox();
    let b = bb.to_str().unwrap();
    let script = format!("echo parent; {b} echo child");
    let ours = emu_env(
        &["--jit-threshold=64"],
        &bb,
        &["sh", "-c", &script],
        None,
        None,
        &[("VIRTKIT_JIT_THRESHOLD", "not-a-number")],
    );
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        "parent\nchild\n",
        "{ours:?}"
    );
    assert_eq!(ours.code, Some(0), "{ours:?}");
}
