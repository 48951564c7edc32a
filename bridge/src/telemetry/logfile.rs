//! The JSON log file: every log line `meshgate serve` writes also goes, as JSON, to
//! `logs/meshgate.log` in the data directory, rotated to `meshgate.log.1`, `.2`, … so the whole
//! log never exceeds `max_files × max_file_bytes`.
//!
//! The tracing layer ([`layer`]) formats a line and hands it to a bounded channel with a
//! non-blocking send; one writer thread appends and rotates. When the queue is full the line is
//! dropped and counted, so a slow or full disk never holds up a request.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use arc_swap::ArcSwapOption;
use tracing_subscriber::fmt::MakeWriter;

use super::{LogFileConfig, Stats, stats};
use crate::error::Error;

/// The directory under the data directory holding the log files.
pub const DIR: &str = "logs";
/// The current log file's name; rotated files get `.1`, `.2`, … appended.
pub const FILE: &str = "meshgate.log";

static SENDER: ArcSwapOption<SyncSender<Vec<u8>>> = ArcSwapOption::const_empty();
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Whether a log file is open (the file layer formats nothing otherwise).
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// The `MakeWriter` of the file layer: each formatted line becomes one non-blocking send.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sink;

/// One line on its way to the writer thread.
#[derive(Debug)]
pub struct SinkWriter;

impl<'a> MakeWriter<'a> for Sink {
    type Writer = SinkWriter;

    fn make_writer(&'a self) -> Self::Writer {
        SinkWriter
    }
}

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(sender) = SENDER.load().as_ref() {
            match sender.try_send(buf.to_vec()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => Stats::bump(&stats().log_lines_dropped),
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The open log file: lines flow to it until [`LogFile::close`] (or drop).
pub struct LogFile {
    thread: Option<std::thread::JoinHandle<()>>,
    sender: Arc<SyncSender<Vec<u8>>>,
    path: PathBuf,
}

impl LogFile {
    /// Opens (creating) `DATA_DIR/logs/meshgate.log` and starts the writer thread; from now on the
    /// file layer's lines go there.
    pub fn open(data_dir: &Path, config: &LogFileConfig) -> Result<Self, Error> {
        let dir = data_dir.join(DIR);
        let io = |action: String| move |source| Error::Io { action, source };
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("restrict {}", dir.display())))?;
        let path = dir.join(FILE);
        let file = open_append(&path).map_err(io(format!("open {}", path.display())))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let (sender, receiver) = std::sync::mpsc::sync_channel(config.queue_lines.max(1));
        let writer = Writer {
            path: path.clone(),
            file,
            size,
            max_file_bytes: config.max_file_bytes,
            max_files: config.max_files.max(1),
        };
        let thread = std::thread::Builder::new()
            .name("meshgate-logfile".into())
            .spawn(move || writer.run(receiver))
            .map_err(io("spawn the log file thread".into()))?;
        let sender = Arc::new(sender);
        SENDER.store(Some(sender.clone()));
        ACTIVE.store(true, Ordering::Relaxed);
        Ok(Self {
            thread: Some(thread),
            sender,
            path,
        })
    }

    /// The current log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops sending lines, writes what is queued and waits for the writer thread.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(thread) = self.thread.take() else { return };
        // Another log file opened since (a second server in one process) keeps the lines.
        let current = SENDER.load();
        if current.as_ref().is_some_and(|s| Arc::ptr_eq(s, &self.sender)) {
            ACTIVE.store(false, Ordering::Relaxed);
            SENDER.store(None);
        }
        drop(current);
        // The writer ends once every sender is gone: ours is swapped for a closed one.
        let (closed, _) = std::sync::mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.sender, Arc::new(closed)));
        let _ = thread.join();
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Writer {
    path: PathBuf,
    file: File,
    size: u64,
    max_file_bytes: u64,
    max_files: usize,
}

impl Writer {
    fn run(mut self, receiver: Receiver<Vec<u8>>) {
        while let Ok(line) = receiver.recv() {
            self.write(&line);
            // Write what else is queued, then flush once: a crash loses at most this batch.
            for line in receiver.try_iter().take(1024) {
                self.write(&line);
            }
            if self.file.flush().is_err() {
                Stats::bump(&stats().log_write_errors);
            }
        }
        let _ = self.file.sync_data();
    }

    fn write(&mut self, line: &[u8]) {
        let len = line.len() as u64;
        if len > self.max_file_bytes {
            // A line larger than a whole file would break the bound: counted, not written.
            Stats::bump(&stats().log_lines_dropped);
            return;
        }
        if self.size + len > self.max_file_bytes && self.rotate().is_err() {
            Stats::bump(&stats().log_write_errors);
            return;
        }
        match self.file.write_all(line) {
            Ok(()) => self.size += len,
            Err(_) => Stats::bump(&stats().log_write_errors),
        }
    }

    /// `meshgate.log.{n-1}` is dropped, `.i` becomes `.i+1`, the current file becomes `.1`, and
    /// a fresh file is opened.
    fn rotate(&mut self) -> std::io::Result<()> {
        let _ = self.file.flush();
        if self.max_files == 1 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let numbered = |i: usize| PathBuf::from(format!("{}.{i}", self.path.display()));
        let _ = std::fs::remove_file(numbered(self.max_files - 1));
        for i in (1..self.max_files - 1).rev() {
            let _ = std::fs::rename(numbered(i), numbered(i + 1));
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total_size(dir: &Path) -> (u64, usize) {
        let mut total = (0, 0);
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            total.0 += entry.metadata().unwrap().len();
            total.1 += 1;
        }
        total
    }

    #[test]
    fn rotation_bounds_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let mut writer = Writer {
            path: path.clone(),
            file: open_append(&path).unwrap(),
            size: 0,
            max_file_bytes: 4096,
            max_files: 3,
        };
        let line = format!("{{\"message\":\"{}\"}}\n", "x".repeat(100));
        for _ in 0..1_000 {
            writer.write(line.as_bytes());
        }
        let (bytes, files) = total_size(dir.path());
        assert_eq!(files, 3, "current + 2 rotated files");
        assert!(bytes <= 3 * 4096, "{bytes} bytes on disk");
        assert!(bytes > 2 * 4096, "{bytes} bytes: rotation lost more than it had to");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Every kept line is whole.
        for i in ["", ".1", ".2"] {
            let text = std::fs::read_to_string(format!("{}{i}", path.display())).unwrap();
            assert!(text.lines().all(|l| l == line.trim_end()), "{i}");
        }
    }

    #[test]
    fn one_file_is_truncated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let mut writer = Writer {
            path: path.clone(),
            file: open_append(&path).unwrap(),
            size: 0,
            max_file_bytes: 4096,
            max_files: 1,
        };
        for _ in 0..100 {
            writer.write(&[b'y'; 1000]);
        }
        let (bytes, files) = total_size(dir.path());
        assert_eq!(files, 1);
        assert!(bytes <= 4096);
    }
}
