//! The `meshgate` binary: parses the command line and hands over to [`bridge::cli`].
use clap::Parser;

fn main() {
    let cli = bridge::cli::Cli::parse();
    if cli.is_serve() {
        malloc::tune_for_a_server();
    }
    bridge::init_logging(cli.is_serve());
    std::process::exit(bridge::cli::run(cli));
}

/// glibc's allocator, tuned for a long-running server (`serve`, `protect`).
///
/// By default glibc gives each thread that contends for the heap its own arena (up to 8 per core)
/// and keeps what is freed inside them: a node whose replicated document is rebuilt at every
/// epoch change or grows with revocations kept its peak in RSS for good (issue 8's soak: 55 → 81
/// MB in 10 minutes with a bounded document; issue 3's 5-node benchmark: ~85% of a node's RSS in
/// per-thread arenas). Two changes, measured in `bench/soak.sh` and `bench/mesh.sh`:
///
/// - at most one arena per core (`M_ARENA_MAX`), unless the operator set `MALLOC_ARENA_MAX`;
/// - a background thread hands freed memory back to the kernel (`malloc_trim`) every
///   [`TRIM_EVERY`](malloc::TRIM_EVERY).
///
/// Other C libraries (musl) and other systems are left as they are.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod malloc {
    use std::time::Duration;

    /// How often freed memory is returned to the kernel.
    pub const TRIM_EVERY: Duration = Duration::from_secs(20);

    pub fn tune_for_a_server() {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            let arenas = libc::c_int::try_from(cores.max(2)).unwrap_or(libc::c_int::MAX);
            // SAFETY: mallopt only sets a glibc tunable; it is called before any other thread
            // exists and takes plain integers.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, arenas);
            }
        }
        let spawned = std::thread::Builder::new().name("malloc-trim".into()).spawn(|| {
            loop {
                std::thread::sleep(TRIM_EVERY);
                // SAFETY: malloc_trim is thread-safe (it takes each arena's lock in turn) and
                // only releases memory that is free.
                unsafe {
                    libc::malloc_trim(0);
                }
            }
        });
        if let Err(e) = spawned {
            eprintln!("meshgate: could not start the malloc-trim thread: {e}");
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod malloc {
    pub fn tune_for_a_server() {}
}
