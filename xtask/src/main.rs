//! `cargo xtask`: the project's tasks — test, demo, bench, dist, images, fuzz — as one program,
//! so a fresh machine needs nothing but cargo to run them.

mod bench;
mod demo;
mod dist;
mod fuzz;
mod images;
mod interrupt;
mod prereq;
#[cfg(test)]
mod readme_check;
mod reliability;
mod test;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <task> [options]

tasks:
  test [--reliability] [--no-install] [-- CARGO TEST ARGS]
                    build everything and run every test; privileged tests run
                    too when this is root with /dev/net/tun (else reported ignored);
                    then fuzzes the relay's frame decoder and source filter for
                    HPK_FUZZ_SECONDS each (30; 300 with --reliability);
                    ends with the reliability summary (kill points, kills,
                    concurrent runs, fuzz iterations, leaks found). --reliability
                    runs only the reliability suite, in its long form
  demo [--mtu-1500] [--no-install]
                    two bubbles on the embedded overlay testbed, a container in
                    each (hpktainer run), talking across VXLAN and to the outside
  bench [relay|fastpath|starts|hundred|all] [--duration S] [--repeats N] [--markdown]
                    every benchmark by default; relay: veth, relay plain, relay
                    with offloads at MTU 1450 and 65470 (throughput both ways,
                    round trip, CPU per GiB, peak RSS); fastpath: the veth path
                    as hpktainer wires it; starts: start overhead; hundred: a
                    hundred containers at once
  dist [--check] [--no-install]
                    static release executables (dist/x86_64, dist/aarch64 when
                    that target is installed) with SHA256SUMS, man pages and
                    shell completions; --check verifies them (not part of test)
  images [--push] [--platform LIST] [--archive]
                    with a Docker engine: both images with buildx (amd64, arm64),
                    tagged VERSION and latest under $REGISTRY; without one: the
                    hpktainer-base OCI archive for this host in dist/images/
  fuzz [SECONDS]    the fuzz targets alone, SECONDS each (default 30), for long
                    runs by hand; installs cargo-fuzz when missing
  help              this text
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("demo") => demo::run(&args[1..]),
        Some("dist") => dist::run(&args[1..]),
        Some("images") => images::run(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("help" | "--help" | "-h") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown task {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_path_buf()
}

/// The build target every binary is built for (see .cargo/config.toml).
pub const TARGET: &str = "x86_64-unknown-linux-gnu";
