//! Bounded reads of the files a config names (the config itself, CA bundles): regular files only.
//!
//! A path in a config can name anything: `/dev/zero` would be read for ever, `/dev/stdin`
//! or a FIFO with no writer would block start-up or a reload (on the signal-handling task),
//! and a huge file would be read whole into memory. So every read opens without blocking,
//! refuses what is not a regular file before reading a byte, and reads at most a limit.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::Path;

/// The most a config file may hold (1 MiB): far beyond any real one (thousands of upstreams).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The most a PEM file (CA bundle) may hold (4 MiB): Mozilla's whole bundle is ~220 KiB.
pub const MAX_PEM_BYTES: u64 = 4 << 20;

/// The whole of `path`, if it is a regular file of at most `limit` bytes. The error is one
/// line saying why not, for a message such as "`<file>`: ca_file `<path>`: cannot read: ...".
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let file = open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(format!("it is {}, not a regular file", kind(&meta)));
    }
    if meta.len() > limit {
        return Err(format!(
            "it is {} bytes, more than the {limit} allowed",
            meta.len()
        ));
    }
    let mut data = Vec::new();
    // `take` as well as the size check: the file may grow while it is read.
    file.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(|e| e.to_string())?;
    if data.len() as u64 > limit {
        return Err(format!("it holds more than the {limit} bytes allowed"));
    }
    Ok(data)
}

/// [`read_limited`] for text.
pub fn read_text(path: &Path, limit: u64) -> Result<String, String> {
    String::from_utf8(read_limited(path, limit)?).map_err(|_| "it is not UTF-8 text".to_string())
}

/// Open for reading without blocking: a FIFO with no writer, or a device, would otherwise
/// block in `open` itself, before its type could be checked.
fn open(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY;
        options.custom_flags(flags.bits() as i32);
    }
    #[cfg(not(target_os = "linux"))]
    {
        // No portable non-blocking open: check the type first (a swap between the check and
        // the open can still block there).
        let meta = std::fs::metadata(path)?;
        if !meta.is_file() {
            return Err(std::io::Error::other(format!(
                "it is {}, not a regular file",
                kind(&meta)
            )));
        }
    }
    options.open(path)
}

/// What a non-regular file is, in words.
fn kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if meta.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::PathBuf;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A fresh scratch folder for this test process.
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("portcullis-file-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    /// `read_limited` on another thread, so a read that blocks fails the test instead of
    /// hanging it.
    fn read_within(path: PathBuf, limit: u64) -> Result<Vec<u8>, String> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(read_limited(&path, limit));
        });
        rx.recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("the read blocked"))
    }

    #[test]
    fn reads_regular_files_up_to_the_limit() {
        let dir = scratch("regular");
        let cases: &[(&str, usize, u64, Result<usize, &str>)] = &[
            // (name, size, limit, Ok(bytes read) or Err(part of the message))
            ("empty", 0, 10, Ok(0)),
            ("small", 5, 10, Ok(5)),
            ("exact", 10, 10, Ok(10)),
            (
                "over",
                11,
                10,
                Err("it is 11 bytes, more than the 10 allowed"),
            ),
            ("big", 100_000, 1000, Err("100000 bytes")),
        ];
        for &(name, size, limit, ref want) in cases {
            let path = dir.join(name);
            std::fs::write(&path, vec![b'x'; size]).expect("write");
            let got = read_within(path, limit);
            match (got, want) {
                (Ok(data), Ok(n)) => assert_eq!(data.len(), *n, "{name}"),
                (Err(e), Err(part)) => assert!(e.contains(part), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn refuses_what_is_not_a_regular_file_without_blocking() {
        let dir = scratch("special");
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(made.success(), "mkfifo {}", fifo.display());
        let cases: Vec<(PathBuf, &str)> = vec![
            (fifo, "a FIFO"),
            (PathBuf::from("/dev/zero"), "a device"),
            (PathBuf::from("/dev/null"), "a device"),
            (dir.clone(), "a directory"),
            (dir.join("missing"), "No such file"),
        ];
        for (path, want) in cases {
            let shown = path.display().to_string();
            let e = read_within(path, MAX_PEM_BYTES).expect_err(&shown);
            assert!(e.contains(want), "{shown}: {e}");
            assert!(!e.contains('\n'), "{shown}: {e}");
        }
    }

    #[test]
    fn text_must_be_utf8() {
        let dir = scratch("text");
        let path = dir.join("latin1");
        std::fs::write(&path, b"caf\xe9").expect("write");
        assert_eq!(
            read_text(&path, 100),
            Err("it is not UTF-8 text".to_string())
        );
        std::fs::write(&path, "café").expect("write");
        assert_eq!(read_text(&path, 100), Ok("café".to_string()));
    }
}
