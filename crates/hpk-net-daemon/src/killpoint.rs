//! Kill points for the crash tests: places where a test build stops itself
//! so a test can SIGKILL it (or a process beside it) at a known moment.
//!
//! Compiled in only with the `kill-points` feature, which `cargo xtask test`
//! turns on when it builds the binaries; release and dist builds never have
//! it, and without it [`reached`] is an empty inline function. With it, each
//! point writes `reached kill point <name>` to stderr and, when
//! `HPKTAINER_KILL_POINT` names that point, stops the whole process with
//! SIGSTOP. The test sees the stopped state in `/proc/PID/stat`, kills
//! whichever process it means to, and sends SIGCONT to any it lets go on.
//!
//! A stopped process changes nothing, so the moment a test kills at is
//! exactly the point's place in the code, whatever the machine's load.

/// The variable naming the point to stop at.
pub const ENV: &str = "HPKTAINER_KILL_POINT";

/// Every point, in the order a container's life reaches them.
pub const POINTS: &[&str] = &[
    BEFORE_ALLOCATION,
    AFTER_ALLOCATION,
    AFTER_RELAY_STARTED,
    AFTER_APPTAINER_STARTED,
    MID_TRANSFER,
    DURING_GC,
];

/// hpktainer has written its record (phase allocating) and holds the state
/// lock, but has not asked host-local for an address.
pub const BEFORE_ALLOCATION: &str = "before-allocation";
/// The address is leased and recorded; no relay yet.
pub const AFTER_ALLOCATION: &str = "after-allocation";
/// The relay answers on its socket and the record says running.
pub const AFTER_RELAY_STARTED: &str = "after-relay-started";
/// apptainer has been started and hpktainer is about to supervise it.
pub const AFTER_APPTAINER_STARTED: &str = "after-apptainer-started";
/// The relay server has passed [`MID_TRANSFER_BYTES`] from the container
/// to the bridge since it started.
pub const MID_TRANSFER: &str = "mid-transfer";
/// Reclamation has judged a record dead and deleted its lease, but not yet
/// removed its socket directory and record. `gc` reclaims, and so does every
/// `run` before it allocates, so a run passes here too when a dead record exists.
pub const DURING_GC: &str = "during-gc";

/// How far a transfer gets before the relay stops at [`MID_TRANSFER`].
pub const MID_TRANSFER_BYTES: u64 = 256 * 1024;

/// Marks `point` as reached: logs it and, when armed for it, stops here.
#[inline]
pub fn reached(point: &str) {
    #[cfg(feature = "kill-points")]
    enabled::reached(point);
    #[cfg(not(feature = "kill-points"))]
    let _ = point;
}

/// Whether this build has kill points compiled in.
pub const fn compiled_in() -> bool {
    cfg!(feature = "kill-points")
}

/// Whether the process is armed for `point` (always false without the feature).
pub fn armed_for(point: &str) -> bool {
    compiled_in() && std::env::var(ENV).is_ok_and(|armed| armed == point)
}

#[cfg(feature = "kill-points")]
mod enabled {
    use std::io::Write;

    pub fn reached(point: &str) {
        debug_assert!(super::POINTS.contains(&point), "unknown kill point {point}");
        // One write, so lines from concurrent processes sharing stderr stay whole.
        let line = format!("reached kill point {point}\n");
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
        if super::armed_for(point) {
            // SAFETY: raise has no memory-safety preconditions; SIGSTOP
            // cannot be caught, so the whole process stops here.
            unsafe { libc::raise(libc::SIGSTOP) };
        }
    }
}

/// Stops the relay server at [`MID_TRANSFER`] once the container has sent
/// [`MID_TRANSFER_BYTES`]: a watcher beside the relay, so the per-frame path
/// carries no kill point of its own. Returns at once unless armed for it.
pub async fn watch_transfer(stats: std::sync::Arc<crate::stats::Stats>) {
    if !armed_for(MID_TRANSFER) {
        return;
    }
    loop {
        if stats.snapshot().socket_to_tap.bytes >= MID_TRANSFER_BYTES {
            reached(MID_TRANSFER);
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}
