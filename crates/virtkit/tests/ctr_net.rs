//! Podman runs a container through `virtkit-runc` with a network: the
//! runtime only joins the network namespace Podman made, so Podman's own
//! networking must just work. One container on slirp4netns (rootless-style
//! user-mode networking, entirely inside the container's namespace and the
//! host's loopback; the default netavark bridge would add a bridge and
//! firewall rules to the host's own network, which tests never touch):
//! `-p` publishes its busybox httpd and the host fetches through it; the
//! container fetches from a host server on 127.0.0.1 through slirp4netns's
//! 10.0.2.2 (`allow_host_loopback=true`).
//!
//! As in ctr_podman.rs: a private store (vfs), cgroupfs, file events and
//! explicit `--ulimit`s (Podman's defaults exceed this machine's limits).

mod ctr_support;

use ctr_support::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Output, Stdio};

struct Podman {
    dir: std::path::PathBuf,
}

impl Podman {
    fn new() -> Podman {
        let dir = std::env::temp_dir().join(format!("virtkit-podman-net-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Podman { dir }
    }

    fn podman(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args([
                "--storage-driver=vfs",
                "--cgroup-manager=cgroupfs",
                "--events-backend=file",
                "--runtime",
            ])
            .arg(runc_bin())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("podman is installed")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.podman(&["system", "reset", "--force"]);
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.join("storage"))
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server this test started, killed on drop.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET / from 127.0.0.1:`port`, retried until the reply contains `want`
/// (the container's server may not listen yet).
fn http_get(port: u16, want: &str) -> String {
    let mut got = String::new();
    for _ in 0..200 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
            let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            got = String::from_utf8_lossy(&buf).into_owned();
            if got.contains(want) {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    got
}

const IMAGE: &str = "localhost/virtkit-busybox:net";

#[test]
fn podman_container_with_network_publishes_and_reaches_the_host() {
    let p = Podman::new();
    let rootfs = p.dir.join("rootfs");
    build_rootfs(&rootfs);
    std::fs::create_dir_all(rootfs.join("www")).unwrap();
    std::fs::write(rootfs.join("www/index.html"), "served-by-container\n").unwrap();
    let tar = p.dir.join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    ok(&p.podman(&["import", tar.to_str().unwrap(), IMAGE]));

    // The host's server on its loopback, for the container to reach.
    let www = p.dir.join("host-www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("file"), "served-by-host\n").unwrap();
    let host_port = free_port();
    let mut child = Command::new("python3")
        .args([
            "-u",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(&www)
        .arg(host_port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut banner)
        .unwrap();
    let _server = Server(child);
    assert!(banner.contains("Serving HTTP"), "{banner:?}");

    let published = free_port();
    let id = ok(&p.podman(&[
        "run",
        "-d",
        "--network=slirp4netns:allow_host_loopback=true",
        "-p",
        &format!("127.0.0.1:{published}:80"),
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]));
    let id = id.trim().to_string();
    // The runtime really ran it: virtkit-runc's state knows the container.
    let inspect = ok(&p.podman(&["inspect", "--format", "{{.OCIRuntime}}", &id]));
    assert!(inspect.contains("virtkit-runc"), "{inspect}");

    // Host to container through -p.
    let got = http_get(published, "served-by-container");
    assert!(got.contains("served-by-container"), "{got:?}");

    // Container to host through slirp4netns's gateway; and the container
    // has a real interface (not just lo).
    let out = ok(&p.podman(&[
        "exec",
        &id,
        "sh",
        "-c",
        &format!(
            "ls /sys/class/net | grep -vx lo | head -1; wget -qO- http://10.0.2.2:{host_port}/file"
        ),
    ]));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.len() == 2 && !lines[0].is_empty() && lines[1] == "served-by-host",
        "{out:?}"
    );
    ok(&p.podman(&["rm", "--force", "--time", "0", &id]));
}
