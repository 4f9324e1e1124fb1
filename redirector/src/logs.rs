//! aya-log records from the programs, forwarded to `tracing` (target `ebpf`).

use aya_log::EbpfLogger;

/// A `log::Log` that re-emits aya-log records as tracing events.
pub struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "ebpf", "{msg}"),
            log::Level::Warn => tracing::warn!(target: "ebpf", "{msg}"),
            log::Level::Info => tracing::info!(target: "ebpf", "{msg}"),
            log::Level::Debug => tracing::debug!(target: "ebpf", "{msg}"),
            log::Level::Trace => tracing::trace!(target: "ebpf", "{msg}"),
        }
    }

    fn flush(&self) {}
}

/// Reads the log ring buffer of the programs of `program_id` (fresh or adopted) and
/// forwards records until the task is dropped.
pub async fn forward(program_id: u32) -> Result<(), String> {
    let logger = EbpfLogger::init_from_id_with_logger(program_id, TracingLog)
        .map_err(|e| format!("cannot open the eBPF log buffer of program {program_id}: {e}"))?;
    // SAFETY: the logger owns the ring buffer's fd and keeps it open, unchanged, for as
    // long as the AsyncFd holds the logger.
    let mut fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }
    .map_err(|e| format!("cannot poll the eBPF log buffer: {e}"))?;
    loop {
        let mut guard = fd
            .readable_mut()
            .await
            .map_err(|e| format!("polling the eBPF log buffer: {e}"))?;
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
