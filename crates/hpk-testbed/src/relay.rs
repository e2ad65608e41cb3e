//! The relay server as the daemon's own tests start it: on bridge `br0` of
//! a test bubble, at MTU 1500, reporting ready on fd 3 for `Proc::spawn_ready`.

use std::path::Path;
use std::process::Command;

use crate::netns::Netns;

/// `DAEMON server` in `bubble` with its tap `tap` on `br0`, listening on
/// `socket`; callers add filters and knobs of their own.
pub fn server_command(bubble: &Netns, daemon: &Path, socket: &Path, tap: &str) -> Command {
    let mut command = bubble.command(daemon);
    command.arg("server").arg("--socket").arg(socket);
    command.args(["--tap", tap, "--bridge", "br0", "--mtu", "1500"]);
    command.args(["--ready-fd", "3"]);
    command
}
