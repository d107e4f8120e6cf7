//! `RUST_LOG=error|warn|info|debug|trace`: the log lines of Burn and cubecl on stderr, for
//! looking at what the GPU runtime decided (cubecl's "Supported CMMA sizes" at `debug` says
//! whether the device has tensor cores it can use; bench/gpu.sh reads it). Unset: nothing.
//!
//! A few lines instead of `env_logger`: one level for every target is all this needs.

struct Stderr(log::LevelFilter);

impl log::Log for Stderr {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.0
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("[{} {}] {}", record.level(), record.target(), record.args());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger when `RUST_LOG` names a level (a value it cannot read is ignored: logging
/// is a diagnostic, never a reason to stop).
pub fn from_env() {
    let Some(level) = std::env::var("RUST_LOG").ok().and_then(|v| v.trim().parse::<log::LevelFilter>().ok()) else {
        return;
    };
    if log::set_boxed_logger(Box::new(Stderr(level))).is_ok() {
        log::set_max_level(level);
    }
}
