//! The checks of `cargo xtask dist --check`, each shown to pass on good
//! input and to fail on bad, without the minutes of a release build.

use std::fs;
use std::process::Command;

use super::*;

/// A minimal ELF64 image: the file header and the given program headers,
/// followed by a dynamic section holding `dynamic` (tag, value) entries.
fn elf(program_types: &[u32], dynamic: &[(u64, u64)]) -> Vec<u8> {
    let phoff = 64usize;
    let dynamic_at = phoff + 56 * program_types.len();
    let mut image = vec![0u8; dynamic_at + 16 * dynamic.len()];
    image[..6].copy_from_slice(b"\x7fELF\x02\x01");
    image[0x20..0x28].copy_from_slice(&(phoff as u64).to_le_bytes());
    image[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
    image[0x38..0x3a].copy_from_slice(&(program_types.len() as u16).to_le_bytes());
    for (index, kind) in program_types.iter().enumerate() {
        let header = phoff + 56 * index;
        image[header..header + 4].copy_from_slice(&kind.to_le_bytes());
        image[header + 8..header + 16].copy_from_slice(&(dynamic_at as u64).to_le_bytes());
        let size = (16 * dynamic.len()) as u64;
        image[header + 32..header + 40].copy_from_slice(&size.to_le_bytes());
    }
    for (index, (tag, value)) in dynamic.iter().enumerate() {
        let entry = dynamic_at + 16 * index;
        image[entry..entry + 8].copy_from_slice(&tag.to_le_bytes());
        image[entry + 8..entry + 16].copy_from_slice(&value.to_le_bytes());
    }
    image
}

#[test]
fn static_check_tells_static_from_dynamic() {
    // This test binary is built with crt-static like the release (static-pie:
    // a dynamic section, but no interpreter and no needed library).
    let own = fs::read(std::env::current_exe().unwrap()).unwrap();
    assert_eq!(not_static(&own).unwrap(), None);

    const DT_FLAGS: u64 = 30;
    let static_pie = elf(&[PT_DYNAMIC], &[(DT_FLAGS, 8), (0, 0)]);
    assert_eq!(not_static(&static_pie).unwrap(), None);

    let interp = elf(&[1, PT_INTERP], &[]);
    assert!(not_static(&interp).unwrap().unwrap().contains("PT_INTERP"));

    let needs = elf(&[PT_DYNAMIC], &[(DT_FLAGS, 8), (DT_NEEDED, 1), (0, 0)]);
    assert!(not_static(&needs).unwrap().unwrap().contains("DT_NEEDED"));

    assert!(not_static(b"#!/bin/sh\n").is_err());
    let mut truncated = elf(&[PT_DYNAMIC], &[(0, 0)]);
    truncated.truncate(80);
    assert!(not_static(&truncated).is_err());
}

#[test]
fn sums_are_sha256sum_compatible_and_catch_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<&str> = BINARIES.iter().map(|(name, _)| *name).collect();
    for name in &names {
        fs::write(dir.path().join(name), "abc").unwrap();
    }
    write_sums(dir.path(), &names).unwrap();
    let sums = fs::read_to_string(dir.path().join("SHA256SUMS")).unwrap();
    assert!(sums.starts_with(
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  hpktainer\n"
    ));
    verify_sums(dir.path()).unwrap();

    fs::write(dir.path().join("hpk-bubble"), "abd").unwrap();
    let err = verify_sums(dir.path()).unwrap_err().to_string();
    assert!(err.contains("hpk-bubble"), "{err}");

    fs::write(dir.path().join("SHA256SUMS"), sums.lines().next().unwrap()).unwrap();
    assert!(
        verify_sums(dir.path()).is_err(),
        "a binary missing from the sums"
    );
}

#[test]
fn version_check_wants_name_and_version() {
    let run = |script: &str| Command::new("sh").args(["-c", script]).output().unwrap();
    let version = env!("CARGO_PKG_VERSION");
    check_version("hpktainer", &run(&format!("echo hpktainer {version}"))).unwrap();
    assert!(check_version("hpktainer", &run(&format!("echo hpk-bubble {version}"))).is_err());
    assert!(check_version("hpktainer", &run("echo hpktainer 0.0.0-other")).is_err());
    let failing = format!("echo hpktainer {version}; exit 1");
    assert!(check_version("hpktainer", &run(&failing)).is_err());
}

/// Needs `man` (package man-db, in TEST_TOOLS).
#[test]
fn man_pages_and_completions_of_the_real_commands_pass_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man");
    write_man_pages(&man).unwrap();
    assert_eq!(verify_man_pages(&man).unwrap(), expected_man_pages().len());
    for page in [
        "hpktainer-run.1",
        "hpk-net-daemon-client.1",
        "hpk-bubble-start.1",
    ] {
        assert!(
            expected_man_pages().iter().any(|name| name == page),
            "{page}"
        );
    }
    assert!(!man.join("hpktainer-help.1").exists());

    let completions = dir.path().join("completions");
    write_completions(&completions).unwrap();
    verify_completions(&completions).unwrap();

    fs::write(completions.join("hpk-bubble.bash"), "if then fi\n").unwrap();
    assert!(verify_completions(&completions).is_err(), "broken bash");
    fs::remove_file(completions.join("_hpktainer")).unwrap();
    assert!(
        verify_completions(&completions).is_err(),
        "missing zsh file"
    );
}

#[test]
fn a_man_page_with_a_troff_warning_fails() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("bad.1");
    fs::write(
        &page,
        ".TH BAD 1\n.SH NAME\nbad \\- page\n.SH X\n\\[nosuchglyph]\n",
    )
    .unwrap();
    let err = render_man_page(&page).unwrap_err().to_string();
    assert!(err.contains("nosuchglyph"), "{err}");
    assert!(render_man_page(&dir.path().join("missing.1")).is_err());
}
