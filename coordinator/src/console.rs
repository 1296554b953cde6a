//! The terminal's one writer. While the live view ([`crate::progress`]) redraws its lines,
//! every other line the coordinator prints (notes, warnings, tracing) goes above them through
//! `say!`, so that a redraw never tears or overwrites it; otherwise lines go straight to
//! stderr.

use std::fmt::Display;
use std::io::{self, Write};
use std::sync::Mutex;

use indicatif::MultiProgress;

/// The live view drawing on the terminal, while there is one.
static LIVE: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// Prints `line` on stderr, above the live view's lines when one is drawn.
pub fn print_line(line: impl Display) {
    let live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    match &*live {
        // A terminal gone away (EIO) leaves nothing to print on, as for eprintln.
        Some(view) => drop(view.println(line.to_string())),
        // Not eprintln!, which panics when stderr is gone (a closed terminal after SIGHUP).
        None => drop(writeln!(io::stderr(), "{line}")),
    }
}

/// `say!("...", args)`: [`print_line`] with `format!` arguments.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::console::print_line(format_args!($($arg)*))
    };
}
pub(crate) use say;

/// Routes [`say!`] above `view`'s lines from now on, until the guard is dropped.
pub(crate) fn draw_above(view: &MultiProgress) -> LiveGuard {
    *LIVE.lock().unwrap_or_else(|p| p.into_inner()) = Some(view.clone());
    LiveGuard
}

/// While held, [`say!`] prints above the live view; dropping it sends lines to stderr again.
pub(crate) struct LiveGuard;

impl Drop for LiveGuard {
    fn drop(&mut self) {
        *LIVE.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// An [`io::Write`] for `tracing_subscriber`'s writer: each event's text, written in one or
/// more pieces, becomes one [`print_line`] when the writer is dropped.
#[derive(Default)]
pub struct EventWriter(Vec<u8>);

impl io::Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            print_line(String::from_utf8_lossy(&self.0).trim_end_matches('\n'));
        }
    }
}
