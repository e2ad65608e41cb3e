//! A minimal Apptainer sandbox image for tests: static busybox and apptainer's script layout.
//!
//! The image deliberately has no iproute2 of its own: whatever sets up a container's network
//! must work without one, as in any user's image. Busybox's `ip` applet is linked only so that
//! a test can check the result from inside (`ip -o link`, `ip -4 addr`).

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

/// Where Debian's busybox-static package puts its binary.
pub const BUSYBOX: &str = "/usr/bin/busybox";

/// The applets linked in `/bin`.
const APPLETS: &[&str] = &[
    "sh", "ip", "ping", "nc", "cat", "echo", "sleep", "ls", "dd", "wc", "head", "true", "false",
    "env", "grep", "kill", "readlink", "stat", "id", "hostname", "mkdir", "touch", "test",
    "arping",
];

const RUNSCRIPT: &str = "#!/bin/sh\n\
    # Runs its arguments, or a shell without any.\n\
    if [ $# -gt 0 ]; then exec \"$@\"; fi\n\
    exec /bin/sh\n";

const STARTSCRIPT: &str = "#!/bin/sh\n\
    # Runs its arguments, or nothing: the instance lives on without a script.\n\
    if [ $# -gt 0 ]; then exec \"$@\"; fi\n";

/// Sources the image's environment scripts, as apptainer's action scripts do.
const SOURCE_ENV: &str = "for script in /.singularity.d/env/*.sh; do\n\
    \x20   if [ -f \"$script\" ]; then . \"$script\"; fi\n\
    done\n";

/// Builds the image in `dir` (made if missing) and returns its path. Needs busybox-static
/// (`apt-get install busybox-static`; `cargo xtask test` installs it).
pub fn busybox_image(dir: &Path) -> io::Result<PathBuf> {
    for sub in ["bin", "proc", "sys", "dev", "tmp", "run", "etc", "root"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::copy(BUSYBOX, dir.join("bin/busybox")).map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("copy {BUSYBOX} ({err}); install it first: apt-get install busybox-static"),
        )
    })?;
    for applet in APPLETS {
        let link = dir.join("bin").join(applet);
        if fs::symlink_metadata(&link).is_err() {
            symlink("busybox", link)?;
        }
    }

    fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n\
        nobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;

    let scripts = dir.join(".singularity.d");
    fs::create_dir_all(scripts.join("actions"))?;
    fs::create_dir_all(scripts.join("env"))?;
    fs::write(
        scripts.join("env/90-environment.sh"),
        "#!/bin/sh\n# Image environment.\n",
    )?;
    executable(&scripts.join("runscript"), RUNSCRIPT)?;
    executable(&scripts.join("startscript"), STARTSCRIPT)?;
    let run = format!("#!/bin/sh\n{SOURCE_ENV}exec /.singularity.d/runscript \"$@\"\n");
    executable(&scripts.join("actions/run"), &run)?;
    executable(
        &scripts.join("actions/exec"),
        &format!("#!/bin/sh\n{SOURCE_ENV}exec \"$@\"\n"),
    )?;
    // `apptainer shell --shell X` reaches the script as SINGULARITY_SHELL.
    let shell = format!("#!/bin/sh\n{SOURCE_ENV}exec \"${{SINGULARITY_SHELL:-/bin/sh}}\" \"$@\"\n");
    executable(&scripts.join("actions/shell"), &shell)?;
    Ok(dir.to_path_buf())
}

fn executable(path: &Path, text: &str) -> io::Result<()> {
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
}
