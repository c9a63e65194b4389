//! The i8042 answers the commands Linux's i8042 and atkbd drivers send at
//! boot (a controller that stays silent costs a Linux guest a timeout of
//! 10,000 status reads per command), and its reset line ends the run.

mod common;

use common::*;
use x86_machine::StopReason;

/// Sends controller commands and keyboard bytes, polling the status
/// port for each answer (a bounded poll: 0x1ff stands for "no answer").
const I8042_GUEST: &str = r#"
_start:
    mov al, 0x20
    call cmd
    call rd
    lea rdi, [rip + s_ctr]
    call kv
    # Write the CTR: keyboard interrupt off (the guest polls), then read it.
    mov al, 0x60
    call cmd
    in al, 0x64
    movzx eax, al
    and eax, 0x08
    lea rdi, [rip + s_cmdbit]
    call kv
    mov al, 0x04
    out 0x60, al
    mov al, 0x20
    call cmd
    call rd
    lea rdi, [rip + s_ctr2]
    call kv
    mov al, 0xa7
    call cmd
    mov al, 0x20
    call cmd
    call rd
    lea rdi, [rip + s_auxdis]
    call kv
    mov al, 0xaa
    call cmd
    call rd
    lea rdi, [rip + s_selftest]
    call kv
    mov al, 0xab
    call cmd
    call rd
    lea rdi, [rip + s_kbdtest]
    call kv
    mov al, 0xa9
    call cmd
    call rd
    lea rdi, [rip + s_auxtest]
    call kv
    # A keyboard command: identify (ack, then the two id bytes).
    mov al, 0xf2
    out 0x60, al
    call rd
    lea rdi, [rip + s_ack]
    call kv
    call rd
    lea rdi, [rip + s_id1]
    call kv
    call rd
    lea rdi, [rip + s_id2]
    call kv
    # Nothing more to read.
    call rd
    lea rdi, [rip + s_empty]
    call kv
    call reset
cmd:
    out 0x64, al
    ret
rd:
    mov ecx, 20000
rd_poll:
    in al, 0x64
    test al, 1
    jnz rd_data
    dec ecx
    jnz rd_poll
    mov eax, 0x1ff
    ret
rd_data:
    in al, 0x60
    movzx eax, al
    ret
s_ctr: .asciz "ctr"
s_cmdbit: .asciz "cmdbit"
s_ctr2: .asciz "ctr2"
s_auxdis: .asciz "auxdis"
s_selftest: .asciz "selftest"
s_kbdtest: .asciz "kbdtest"
s_auxtest: .asciz "auxtest"
s_ack: .asciz "ack"
s_id1: .asciz "id1"
s_id2: .asciz "id2"
s_empty: .asciz "empty"
"#;

#[test]
fn i8042_answers_the_linux_probe() {
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path(), "i8042", I8042_GUEST);
    let out = Capture::default();
    let outcome = run(config(&guest, &out));
    let text = out.text();
    assert_eq!(outcome.reason, StopReason::Reset, "{text}");
    // Keyboard interrupt on, system flag, translation: as firmware leaves it.
    assert_eq!(value(&text, "ctr"), 0x45, "{text}");
    // After a command that takes a parameter, the status says so.
    assert_eq!(value(&text, "cmdbit"), 0x08, "{text}");
    assert_eq!(value(&text, "ctr2"), 0x04, "{text}");
    assert_eq!(value(&text, "auxdis"), 0x24, "{text}");
    assert_eq!(value(&text, "selftest"), 0x55, "{text}");
    assert_eq!(value(&text, "kbdtest"), 0x00, "{text}");
    // No mouse: the aux port's clock line reads stuck high.
    assert_eq!(value(&text, "auxtest"), 0x02, "{text}");
    assert_eq!(value(&text, "ack"), 0xfa, "{text}");
    assert_eq!(value(&text, "id1"), 0xab, "{text}");
    assert_eq!(value(&text, "id2"), 0x83, "{text}");
    assert_eq!(value(&text, "empty"), 0x1ff, "{text}");
}

/// Ctrl+Alt+Del reaches a guest that takes keyboard interrupts: eight
/// bytes (make and break codes, translated to set 1), one IRQ 1 each.
#[test]
fn ctrl_alt_del_reaches_the_keyboard_interrupt() {
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path(), "kbd", &keyboard_guest(8));
    let out = Capture::default();
    let m = x86_machine::start(config(&guest, &out)).unwrap();
    wait_until(&out, "ready\n");
    m.send_ctrl_alt_del().unwrap();
    let o = m.wait().unwrap();
    assert_eq!(o.reason, StopReason::Reset, "{}", out.text());
    assert_eq!(out.text(), format!("ready\n{CTRL_ALT_DEL_LINES}"));
    // A stopped machine takes no keys.
    assert!(matches!(
        m.send_ctrl_alt_del().unwrap_err(),
        x86_machine::Error::NotRunning(_)
    ));
}

/// Keys sent to a paused machine wait in the controller; a snapshot
/// taken then keeps them, and the restored machine raises IRQ 1 for them
/// (the interrupt raised during the pause is not in the vCPU state the
/// pause saved).
#[test]
fn ctrl_alt_del_sent_while_paused_survives_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let guest = build_guest(dir.path(), "kbd", &keyboard_guest(8));
    let (state, memory) = (dir.path().join("state"), dir.path().join("memory"));
    let out = Capture::default();
    let m = x86_machine::start(config(&guest, &out)).unwrap();
    wait_until(&out, "ready\n");
    m.pause().unwrap();
    m.send_ctrl_alt_del().unwrap();
    m.snapshot(&state, &memory).unwrap();
    m.stop(StopReason::Quit);
    assert_eq!(m.wait().unwrap().reason, StopReason::Quit);
    assert_eq!(out.text(), "ready\n");

    let out2 = Capture::default();
    let m2 = x86_machine::restore(config(&guest, &out2), &state, &memory, false).unwrap();
    let o = m2.wait().unwrap();
    assert_eq!(o.reason, StopReason::Reset, "{}", out2.text());
    assert_eq!(out2.text(), CTRL_ALT_DEL_LINES);
}

fn wait_until(out: &Capture, what: &str) {
    let start = std::time::Instant::now();
    while !out.text().contains(what) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "no {what:?} in {}",
            out.text()
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
