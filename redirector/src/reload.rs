//! When the configuration file is loaded again: on SIGHUP, or when the periodic check finds
//! new content. Both paths compare what they read with what was loaded last (applied or
//! refused), so one change is loaded once, whichever path sees it first, and the other does
//! nothing for the same content.
//!
//! The periodic check also waits until the new content has stayed the same for one whole
//! interval: a file caught half-written (`std::fs::write` truncates first, so a reader can
//! see it empty, which is a valid "all defaults" file) is never loaded unless its writer
//! stalls for a full interval. Writers should still replace the file atomically (write a
//! temporary file, then rename it over the old one), as kubelet does for ConfigMap volumes.

use std::path::Path;

/// What one read of the configuration file found: its bytes, or why it could not be read.
pub type Snapshot = Result<Vec<u8>, String>;

/// The largest configuration file read: what a ConfigMap can hold. A larger file is not
/// a configuration (a log, a device, a mistaken path) and is refused before it fills memory.
pub const MAX_BYTES: u64 = 1 << 20;

/// Reads the whole file once (at most [`MAX_BYTES`]).
pub fn read(path: &Path) -> Snapshot {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(format!(
            "it is larger than {MAX_BYTES} bytes, the most a configuration (a ConfigMap) \
             holds; check that --config names the configuration file"
        ));
    }
    Ok(bytes)
}

/// Decides, for each SIGHUP and each periodic check, whether the file is loaded again.
#[derive(Debug)]
pub struct Watch {
    /// The content loaded last, applied or refused.
    loaded: Snapshot,
    /// New content the periodic check saw once; loaded if the next check sees it again.
    pending: Option<Snapshot>,
}

impl Watch {
    /// Starts from the content loaded at start-up.
    pub fn new(loaded: Snapshot) -> Watch {
        Watch {
            loaded,
            pending: None,
        }
    }

    /// A periodic check that read `now`: returns the content to load, once it differs from
    /// what was loaded and has not changed since the previous check.
    pub fn poll(&mut self, now: Snapshot) -> Option<Snapshot> {
        if now == self.loaded {
            self.pending = None;
            return None;
        }
        if self.pending.as_ref() == Some(&now) {
            return Some(self.load(now));
        }
        self.pending = Some(now);
        None
    }

    /// A SIGHUP that read `now`: the operator says the file is ready, so new content is
    /// loaded at once; the same content as last time is not loaded again.
    pub fn hangup(&mut self, now: Snapshot) -> Option<Snapshot> {
        (now != self.loaded).then(|| self.load(now))
    }

    fn load(&mut self, now: Snapshot) -> Snapshot {
        self.pending = None;
        self.loaded = now.clone();
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Snapshot {
        Ok(s.as_bytes().to_vec())
    }

    #[test]
    fn the_poll_loads_a_change_once_it_has_settled() {
        let mut w = Watch::new(text("ports = [80]\n"));
        assert_eq!(w.poll(text("ports = [80]\n")), None);
        assert_eq!(w.poll(text("ports = [8080]\n")), None, "seen once: not yet");
        assert_eq!(
            w.poll(text("ports = [8080]\n")),
            Some(text("ports = [8080]\n"))
        );
        assert_eq!(w.poll(text("ports = [8080]\n")), None, "loaded once only");
    }

    #[test]
    fn a_half_written_file_is_never_loaded() {
        // fs::write truncates, then writes: one check sees the empty file, the next the
        // whole one. The empty file is a valid "all defaults" configuration: never load it.
        let mut w = Watch::new(text("ports = [80]\n"));
        assert_eq!(w.poll(text("")), None);
        assert_eq!(w.poll(text("ports = [80, 8080]\n")), None);
        assert_eq!(
            w.poll(text("ports = [80, 8080]\n")),
            Some(text("ports = [80, 8080]\n"))
        );
    }

    #[test]
    fn a_change_reverted_before_it_settled_loads_nothing() {
        let mut w = Watch::new(text("a"));
        assert_eq!(w.poll(text("b")), None);
        assert_eq!(w.poll(text("a")), None);
        assert_eq!(w.poll(text("a")), None);
    }

    #[test]
    fn sighup_first_then_the_poll_does_nothing() {
        let mut w = Watch::new(text("old"));
        assert_eq!(w.poll(text("new")), None, "the poll saw it once");
        assert_eq!(w.hangup(text("new")), Some(text("new")));
        assert_eq!(w.poll(text("new")), None);
        assert_eq!(w.poll(text("new")), None);
    }

    #[test]
    fn the_poll_first_then_sighup_does_nothing() {
        let mut w = Watch::new(text("old"));
        w.poll(text("new"));
        assert_eq!(w.poll(text("new")), Some(text("new")));
        assert_eq!(w.hangup(text("new")), None);
    }

    #[test]
    fn refused_content_is_not_loaded_again() {
        // The loaded content is recorded whether it was applied or refused.
        let mut w = Watch::new(text("good"));
        assert_eq!(w.hangup(text("bad")), Some(text("bad")));
        assert_eq!(w.hangup(text("bad")), None);
        assert_eq!(w.poll(text("bad")), None);
        assert_eq!(w.poll(text("bad")), None);
        assert_eq!(w.hangup(text("good")), Some(text("good")));
    }

    #[test]
    fn an_unreadable_file_is_a_change_like_any_other() {
        let mut w = Watch::new(text("good"));
        let gone: Snapshot = Err("No such file or directory (os error 2)".into());
        assert_eq!(w.poll(gone.clone()), None);
        assert_eq!(w.poll(gone.clone()), Some(gone.clone()));
        assert_eq!(w.poll(gone), None);
    }

    #[test]
    fn a_file_larger_than_a_config_map_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; (MAX_BYTES + 1) as usize]).unwrap();
        let e = read(&big).unwrap_err();
        assert!(e.contains("larger than 1048576 bytes"), "{e}");
        let fits = dir.path().join("fits.toml");
        std::fs::write(&fits, vec![b'#'; MAX_BYTES as usize]).unwrap();
        assert_eq!(read(&fits).unwrap().len() as u64, MAX_BYTES);
    }
}
