//! The decisions `virtkit img` leaves to `image::ops`: measure over an
//! image's extents, create's backing checks, check-repair-recheck.

mod lib_util;

use image::ops::{check, create, measure};
use image::{BlockBackend, CreateOptions, Format, OpenOptions, Repair, Sharing};
use lib_util::*;

fn qcow2_opts(size: Option<u64>) -> CreateOptions {
    CreateOptions {
        format: Format::Qcow2,
        size,
        ..Default::default()
    }
}

#[test]
fn measure_image_matches_qemu_img() {
    let dir = TempDir::new("ops-measure");
    let p = dir.path("a.qcow2");
    image::create(&p, &qcow2_opts(Some(64 << 20))).unwrap();
    let img = image::open(&p, &OpenOptions::default()).unwrap();
    img.write_at(&vec![7u8; 3 << 20], 1 << 20).unwrap();
    img.write_at(&[1u8; 512], 40 << 20).unwrap();
    img.flush().unwrap();
    drop(img);
    let img = image::open(
        &p,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let target = measure::MeasureTarget::from_create_options(&qcow2_opts(None));
    let m = measure::measure_image(&target, &img).unwrap();
    let out = qemu_img_ok(&[
        "measure",
        "-U",
        "--output=json",
        "-O",
        "qcow2",
        p.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m.required, v["required"].as_u64().unwrap(), "{out}");
    assert_eq!(m.fully_allocated, v["fully-allocated"].as_u64().unwrap());
    assert_eq!(m.bitmaps, v["bitmaps"].as_u64());
}

#[test]
fn create_backing_checks() {
    let dir = TempDir::new("ops-create");
    let base = dir.path("base.raw");
    image::create(
        &base,
        &CreateOptions {
            format: Format::Raw,
            size: Some(3 << 20),
            ..Default::default()
        },
    )
    .unwrap();
    let top = dir.path("top.qcow2");
    // Raw images have no backing file.
    let mut o = CreateOptions {
        format: Format::Raw,
        backing_file: Some("base.raw".into()),
        backing_format: Some(Format::Raw),
        ..Default::default()
    };
    assert!(matches!(
        create::prepare(&top, &mut o, true),
        Err(create::CreateError::BackingNotSupported(Format::Raw))
    ));
    let mut o = qcow2_opts(None);
    o.backing_file = Some("base.raw".into());
    assert!(matches!(
        create::prepare(&top, &mut o, true),
        Err(create::CreateError::NoBackingFormat { .. })
    ));
    // The size comes from the backing file, found next to the new image.
    o.backing_format = Some(Format::Raw);
    assert_eq!(create::prepare(&top, &mut o, true).unwrap(), 3 << 20);
    let mut o = qcow2_opts(None);
    o.backing_file = Some("missing.raw".into());
    o.backing_format = Some(Format::Raw);
    assert!(matches!(
        create::prepare(&top, &mut o, true),
        Err(create::CreateError::BackingOpen { .. })
    ));
    // -u: the backing file is not opened, so a size is needed.
    assert!(matches!(
        create::prepare(&top, &mut o, false),
        Err(create::CreateError::NoSize)
    ));
    // convert -B probes a missing backing format.
    let mut o = qcow2_opts(None);
    o.backing_file = Some("base.raw".into());
    create::prepare_convert_backing(&top, &mut o).unwrap();
    assert_eq!(o.backing_format, Some(Format::Raw));
}

#[test]
fn check_repairs_leak_then_rechecks() {
    let dir = TempDir::new("ops-check");
    let raw = dir.path("leak.raw");
    std::fs::write(&raw, vec![9u8; 1 << 20]).unwrap();
    let leaky = dir.path("leaky.qcow2");
    qemu_img_ok(&[
        "convert",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        leaky.to_str().unwrap(),
    ]);
    // Clear the first L1 entry (header bytes 40..48 hold the L1 offset): the
    // L2 table and data clusters it pointed to become leaks.
    let hdr = std::fs::read(&leaky).unwrap();
    let l1 = u64::from_be_bytes(hdr[40..48].try_into().unwrap());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&leaky)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 8], l1).unwrap();
    drop(f);
    let run = check::check(&leaky, None, Sharing::Tool, Repair::None).unwrap();
    assert!(run.first.leaks > 0, "{run:?}");
    assert!(run.recheck.is_none());
    let run = check::check(&leaky, None, Sharing::Tool, Repair::Leaks).unwrap();
    let again = run.recheck.as_ref().expect("a repair is re-checked");
    assert_eq!(again.leaks, 0);
    assert_eq!(again.leaks_fixed, run.first.leaks_fixed);
    assert!(again.leaks_fixed > 0);
    assert_eq!(run.result(), again);
    assert_qemu_check_clean(&leaky);
    // Raw images have nothing to check.
    assert!(matches!(
        check::check(&raw, None, Sharing::Tool, Repair::None),
        Err(check::CheckError::Unsupported)
    ));
}
