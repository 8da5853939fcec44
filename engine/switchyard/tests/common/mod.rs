//! What the tests that run `switchyard serve` as a process share.

#![allow(dead_code)] // each test binary uses its own part

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

/// Starts `switchyard serve` in `cwd` with `args`; returns the child.
pub fn spawn_serve(cwd: &Path, args: &[&str], soft_files: Option<u64>) -> std::process::Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    command
        .current_dir(cwd)
        .arg("serve")
        .args(args)
        .env("SWITCHYARD_GRPC_LISTEN", "127.0.0.1:0")
        .env("SWITCHYARD_METRICS_ENABLED", "false")
        .env("SWITCHYARD_DASHBOARD_ENABLED", "false")
        .env("SWITCHYARD_STORE_DURABILITY", "flush")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(soft) = soft_files {
        use std::os::unix::process::CommandExt;
        // SAFETY: only getrlimit/setrlimit run between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let mut limit = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
                limit.rlim_cur = soft.min(limit.rlim_max);
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                Ok(())
            });
        }
    }
    command.spawn().unwrap()
}

/// Reads the address the server prints first; keeps draining its stdout afterwards, so the
/// server never writes to a closed pipe.
pub fn listening(child: &mut std::process::Child) -> String {
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("switchyard listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    addr
}

/// Stops the server with SIGTERM; it must exit successfully.
pub fn stop(mut child: std::process::Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}
