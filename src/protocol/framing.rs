//! Line framing with a size cap: a message is the bytes up to `\n`. A line
//! longer than the cap is read through and dropped, never buffered, so a
//! hostile client costs at most `max` bytes of memory.

use std::io;

use serde::Serialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// What one read of a line produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole line, without its `\n`.
    Line(Vec<u8>),
    /// A line longer than the cap; its bytes were discarded up to its `\n`.
    TooLong,
}

/// Reads lines of at most `max` bytes (the `\n` counts) from a buffered
/// reader. [`FrameReader::next`] is cancel-safe: a line read in part when
/// the future is dropped is kept and completed by the next call, so a
/// connection can wait for its next request inside `select!`.
#[derive(Debug)]
pub struct FrameReader<R> {
    reader: R,
    max: usize,
    line: Vec<u8>,
    too_long: bool,
}

impl<R: AsyncBufRead + Unpin> FrameReader<R> {
    /// Wraps `reader`.
    pub fn new(reader: R, max: usize) -> Self {
        FrameReader {
            reader,
            max,
            line: Vec::new(),
            too_long: false,
        }
    }

    /// The next line; `Ok(None)` at end of stream. A last line without `\n`
    /// still counts.
    ///
    /// # Errors
    /// The reader's I/O errors.
    pub async fn next(&mut self) -> io::Result<Option<Frame>> {
        loop {
            // The only await: everything after it runs to completion, so
            // dropping this future loses no byte.
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                let line = std::mem::take(&mut self.line);
                let too_long = std::mem::replace(&mut self.too_long, false);
                return Ok(match (too_long, line.is_empty()) {
                    (true, _) => Some(Frame::TooLong),
                    (false, true) => None,
                    (false, false) => Some(Frame::Line(line)),
                });
            }
            let (chunk, done) = match memchr_newline(available) {
                Some(i) => (&available[..i], i + 1),
                None => (available, available.len()),
            };
            let ended = done > chunk.len();
            if !self.too_long {
                if self.line.len() + chunk.len() + usize::from(ended) > self.max {
                    self.too_long = true;
                    self.line = Vec::new();
                } else {
                    self.line.extend_from_slice(chunk);
                }
            }
            self.reader.consume(done);
            if ended {
                let line = std::mem::take(&mut self.line);
                return Ok(Some(if std::mem::replace(&mut self.too_long, false) {
                    Frame::TooLong
                } else {
                    Frame::Line(line)
                }));
            }
        }
    }

    /// The wrapped reader.
    pub fn get_ref(&self) -> &R {
        &self.reader
    }
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// Writes `message` as one JSON line and flushes it.
pub async fn write_message<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    message: &T,
) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(message).map_err(io::Error::other)?;
    bytes.push(b'\n');
    writer.write_all(&bytes).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8], max: usize) -> Vec<Frame> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            // A tiny buffer so that lines straddle many fill_buf calls.
            let reader = tokio::io::BufReader::with_capacity(3, input);
            let mut frames = FrameReader::new(reader, max);
            let mut out = Vec::new();
            while let Some(frame) = frames.next().await.expect("read") {
                out.push(frame);
            }
            out
        })
    }

    #[test]
    fn splits_lines_and_keeps_a_last_unterminated_one() {
        assert_eq!(
            frames(b"ab\ncdef\ngh", 100),
            vec![
                Frame::Line(b"ab".to_vec()),
                Frame::Line(b"cdef".to_vec()),
                Frame::Line(b"gh".to_vec())
            ]
        );
    }

    #[test]
    fn a_line_over_the_cap_is_dropped_and_the_next_one_read() {
        assert_eq!(
            frames(b"0123456789\nok\n", 5),
            vec![Frame::TooLong, Frame::Line(b"ok".to_vec())]
        );
        // Exactly at the cap, newline included, is accepted.
        assert_eq!(frames(b"1234\n", 5), vec![Frame::Line(b"1234".to_vec())]);
        assert_eq!(frames(b"12345\n", 5), vec![Frame::TooLong]);
    }
}
