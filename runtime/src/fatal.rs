//! The runtime's last words before it ends the process.
//!
//! `eprintln!` is not enough here: under a test harness (or any program that
//! captures a thread's output) the message goes into a buffer that dies with
//! the abort, and a wrong byte caught by verification would end the process
//! without a word. These writes go straight to file descriptor 2.

use std::fmt::Write as _;

/// Writes `msg` and a newline to file descriptor 2, bypassing any capture of
/// the thread's output, then aborts the process. It allocates nothing, as it
/// may run in a signal handler that interrupted malloc.
pub(crate) fn abort_with(msg: std::fmt::Arguments<'_>) -> ! {
    let mut line = Line { buf: [0; 1024], len: 0 };
    let _ = line.write_fmt(msg);
    write_stderr(line.ended());
    std::process::abort();
}

/// A message on the stack, cut short at its capacity (the end of a message
/// past 1 KiB is worth less than not allocating).
struct Line {
    buf: [u8; 1024],
    len: usize,
}

impl Line {
    /// The message with its newline, the last byte given up for it if full.
    fn ended(&mut self) -> &[u8] {
        self.len = self.len.min(self.buf.len() - 1);
        self.buf[self.len] = b'\n';
        self.len += 1;
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// A panic payload's message, as far as it is a string.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload.downcast_ref::<&str>().copied().or_else(|| payload.downcast_ref::<String>().map(String::as_str)).unwrap_or("(a panic without a message)")
}

fn write_stderr(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writes from a live slice; fd 2 may be closed, and then the
        // write fails and the message is lost, as it would be anyway.
        let n = unsafe { libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test harness captures this thread's output, as it does for the
    /// runtime's threads a test starts: the message must still reach fd 2.
    #[test]
    fn the_last_words_reach_stderr_past_the_harness_capture() {
        let mut fds = [0; 2];
        // SAFETY: a pipe into a two-element array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child only moves the pipe onto fd 2, formats into the
        // stack and aborts; it touches no lock another thread could hold.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: as above.
            unsafe { libc::dup2(fds[1], 2) };
            abort_with(format_args!("farmem: last words {}", 42));
        }
        assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
        // SAFETY: the parent's copy of the write end, closed so that read ends.
        unsafe { libc::close(fds[1]) };
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            // SAFETY: reads into a live buffer.
            let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGABRT, "status {status:#x}");
        assert_eq!(String::from_utf8_lossy(&out), "farmem: last words 42\n");
    }

    #[test]
    fn a_message_longer_than_the_line_is_cut_and_still_ends_the_line() {
        let mut line = Line { buf: [0; 1024], len: 0 };
        let _ = line.write_fmt(format_args!("{}", "x".repeat(2000)));
        let out = line.ended();
        assert_eq!(out.len(), 1024);
        assert_eq!(out[1022..], *b"x\n");
        let mut short = Line { buf: [0; 1024], len: 0 };
        let _ = short.write_fmt(format_args!("ab"));
        assert_eq!(short.ended(), b"ab\n");
    }

    #[test]
    fn panic_messages_are_read_from_both_payload_kinds() {
        let a = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        let b = std::panic::catch_unwind(|| panic!("formatted {}", 7)).unwrap_err();
        assert_eq!(panic_message(a.as_ref()), "plain");
        assert_eq!(panic_message(b.as_ref()), "formatted 7");
    }
}
