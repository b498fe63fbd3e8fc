//! The one module with `unsafe` code: process set-up between fork and exec, which Rust's `pre_exec` marks
//! unsafe. Everything else that talks to the kernel directly goes through `rustix`'s safe wrappers.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;

pub use rustix::process::Signal;

/// Make the child started by `cmd` receive `signal` when the thread that started it exits (Linux
/// `PR_SET_PDEATHSIG`), so that children never outlive a parent killed with -9. Elsewhere a no-op.
pub fn die_with_parent(cmd: &mut Command, signal: Signal) {
    #[cfg(target_os = "linux")]
    // SAFETY: the closure runs in the child between fork and exec; it makes one prctl system call (through
    // rustix, without allocating or taking locks), which is async-signal-safe, and touches no parent memory.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(signal))?;
            Ok(())
        });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (cmd, signal);
}

/// Make the child started by `cmd` join the network namespace open as `ns` (e.g. `/run/netns/NAME`) before it
/// executes its program, as `ip netns exec` does but without a mount namespace of its own.
pub fn in_net_namespace(cmd: &mut Command, ns: std::fs::File) {
    // SAFETY: the closure runs in the child between fork and exec; it makes one setns system call (through
    // rustix, without allocating or taking locks), which is async-signal-safe. `ns` stays open inside the
    // closure until exec.
    unsafe {
        cmd.pre_exec(move || {
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&ns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            Ok(())
        });
    }
}

/// Send `signal` to process `pid`.
pub fn kill(pid: u32, signal: Signal) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    rustix::process::kill_process(pid, signal)?;
    Ok(())
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Bytes available to unprivileged users on the filesystem holding `path`.
pub fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}
