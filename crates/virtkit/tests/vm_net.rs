//! virtio-net on tap devices, in a network namespace the test makes (the
//! host's own interfaces are never touched): one boot with two cards, one
//! on a tap opened by name, one on a tap fd handed over as libvirt does;
//! the guest pings the host end of both and fetches a file over one
//! (checksum compared). `virtkit run`'s default user-mode network: DHCP
//! addresses, a fetch from the host through 10.0.2.2 and a -p forward into
//! the guest. Plus the command line's bad input.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const VIRTKIT: &str = env!("CARGO_BIN_EXE_virtkit");
/// A safety net against hangs, not a timing check.
const TIMEOUT: &str = "900";

fn describe(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run(cmd: &str, args: &[&str]) -> Output {
    let o = Command::new(cmd).args(args).output().unwrap();
    assert!(o.status.success(), "{cmd} {args:?}: {}", describe(&o));
    o
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vk-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A network namespace of this test, deleted (with its taps) on drop, and
/// the processes started in it.
struct Netns {
    name: String,
    children: Vec<Child>,
}

impl Netns {
    fn new() -> Netns {
        let name = format!("vk-test-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        Netns {
            name,
            children: Vec::new(),
        }
    }

    /// Runs `args` inside the namespace.
    fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// A persistent tap `dev` with host address `addr`/24, up.
    fn tap(&self, dev: &str, addr: &str) {
        self.exec(&["ip", "tuntap", "add", "dev", dev, "mode", "tap"]);
        self.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", dev]);
        self.exec(&["ip", "link", "set", dev, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn sha256(path: &Path) -> String {
    let o = run("sha256sum", &[path.to_str().unwrap()]);
    String::from_utf8_lossy(&o.stdout)[..64].to_string()
}

/// Opens the existing tap named in argv[1] the way libvirt does (IFF_TAP,
/// IFF_NO_PI, IFF_VNET_HDR), then runs the rest of argv with every "FD"
/// replaced by the descriptor number.
const OPEN_TAP_AND_EXEC: &str = r#"
import fcntl, os, struct, sys
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", sys.argv[1].encode(), 0x0002 | 0x1000 | 0x4000))
os.set_inheritable(fd, True)
args = [a.replace("FD", str(fd)) for a in sys.argv[2:]]
os.execv(args[0], args)
"#;

#[test]
fn tap_by_name_and_by_fd_ping_and_transfer() {
    let dir = tmpdir("tapnet");
    let mut ns = Netns::new();
    ns.exec(&["ip", "link", "set", "lo", "up"]);
    ns.tap("vktap0", "10.0.3.1");
    ns.tap("vktap1", "10.0.4.1");

    // 8 MiB the guest fetches from a server on the first tap's host end.
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let blob: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(www.join("blob"), &blob).unwrap();
    let want = sha256(&www.join("blob"));
    let mut server = ns
        .command(&[
            "python3",
            "-u",
            "-m",
            "http.server",
            "--bind",
            "10.0.3.1",
            "--directory",
            www.to_str().unwrap(),
            "8000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // It prints its banner once it listens.
    let mut banner = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut banner)
        .unwrap();
    ns.children.push(server);
    assert!(banner.contains("Serving HTTP"), "server: {banner:?}");

    // The guest finds each card by its MAC (probe order names them).
    let script = r#"
dev() { for d in /sys/class/net/*; do [ "$(cat $d/address)" = "$1" ] && basename $d; done; }
a=$(dev 52:54:00:00:00:10); b=$(dev 52:54:00:00:00:11)
echo "cards: $a $b"
ip link set "$a" up; ip link set "$b" up
ip addr add 10.0.3.15/24 dev "$a"; ip addr add 10.0.4.15/24 dev "$b"
ping -c 2 -W 5 10.0.3.1 >/dev/null && echo PING-NAME-OK
ping -c 2 -W 5 10.0.4.1 >/dev/null && echo PING-FD-OK
wget -qO /tmp/blob http://10.0.3.1:8000/blob && echo "SUM $(sha256sum /tmp/blob | cut -c1-64)"
"#;
    let assets = guest::default_riscv64().unwrap();
    let argv = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
    let initrd = dir.join("initrd.cpio");
    std::fs::write(
        &initrd,
        guest::run_initramfs(&assets.initramfs, &argv).unwrap(),
    )
    .unwrap();
    let o = ns
        .command(&[
            "python3",
            "-c",
            OPEN_TAP_AND_EXEC,
            "vktap1",
            VIRTKIT,
            "vm",
            "run",
            "--kernel",
            assets.kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            // Static addresses: no DHCP server on these taps.
            "--append",
            "console=ttyS0 quiet virtkit.dhcp=0",
            "--nic",
            "tap,ifname=vktap0,mac=52:54:00:00:00:10",
            "--nic",
            "tap,fd=FD,mac=52:54:00:00:00:11",
            "--timeout",
            TIMEOUT,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).replace('\r', "");
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert!(out.contains("PING-NAME-OK"), "{}", describe(&o));
    assert!(out.contains("PING-FD-OK"), "{}", describe(&o));
    assert!(out.contains(&format!("SUM {want}")), "{}", describe(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `virtkit ARGS` fails with status 1 and a message containing `want`.
fn refused(args: &[&str], want: &str) {
    let o = Command::new(VIRTKIT)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {}", describe(&o));
    assert!(err.contains(want), "{args:?}: {}", describe(&o));
    assert!(!err.contains("panicked"), "{}", describe(&o));
}

#[test]
fn bad_nics_are_refused_with_the_reason() {
    for (nic, want) in [
        ("bogus", "unknown network type \"bogus\""),
        ("tap", "a tap card needs ifname=NAME or fd=N"),
        ("user,hostfwd=tcp:1-", "hostfwd"),
        ("user,mac=ff:ff:ff:ff:ff:ff", "multicast"),
        (
            "tap,ifname=vk-nosuch0",
            "tap device vk-nosuch0 does not exist",
        ),
        // Descriptor 0 is /dev/null here (stdin).
        ("tap,fd=0", "fd 0 is not a tap device"),
        ("tap,fd=999", "fd 999 is not an open file descriptor"),
    ] {
        refused(&["vm", "run", "--kernel", "/bin/true", "--nic", nic], want);
    }
    // Seven cards, the rng and the console: one more than the slots.
    let mut many = vec!["vm", "run", "--kernel", "/bin/true"];
    for _ in 0..7 {
        many.extend(["--nic", "user"]);
    }
    refused(&many, "9 virtio devices requested");
    refused(&["run", "-p", "80", "--", "true"], "-p \"80\"");
    refused(
        &["run", "--net", "none", "-p", "8080:80", "--", "true"],
        "cannot be used with --net none",
    );
}

/// A TCP port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn run_has_user_networking_by_default() {
    // Guest to host: a server on the host's loopback, reached at 10.0.2.2.
    let dir = tmpdir("usernet");
    let payload: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.join("blob"), &payload).unwrap();
    let want = sha256(&dir.join("blob"));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http_port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut server = Command::new("python3")
        .args(["-u", "-m", "http.server", "--bind", "127.0.0.1"])
        .arg("--directory")
        .arg(&dir)
        .arg(http_port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut banner)
        .unwrap();

    // Host to guest: -p to a one-shot `nc -l` in the guest; the host
    // retries until the guest listens.
    let fwd_port = free_port();
    let script = format!(
        "ip -4 addr show eth0 | grep -o 'inet [0-9./]*'; ip route | grep default; cat /etc/resolv.conf; \
         echo SUM $(wget -qO- http://10.0.2.2:{http_port}/blob | sha256sum | cut -c1-64); \
         echo from-guest | nc -l -p 7777"
    );
    let vm = Command::new(VIRTKIT)
        .args(["run", "--timeout", TIMEOUT, "-p"])
        .arg(format!("{fwd_port}:7777"))
        .args(["--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut got = String::new();
    for _ in 0..3000 {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", fwd_port)) {
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
            got.clear();
            // Closing our end (the drop) lets the guest's nc finish.
            let _ = BufReader::new(s).read_line(&mut got);
            if got.contains("from-guest") {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let o = vm.wait_with_output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let out = String::from_utf8_lossy(&o.stdout).replace('\r', "");
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert_eq!(got, "from-guest\n", "{}", describe(&o));
    assert!(out.contains("inet 10.0.2.15/24"), "{}", describe(&o));
    assert!(out.contains("default via 10.0.2.2"), "{}", describe(&o));
    assert!(out.contains("nameserver 10.0.2.3"), "{}", describe(&o));
    assert!(out.contains(&format!("SUM {want}")), "{}", describe(&o));
    let _ = std::fs::remove_dir_all(&dir);
}
