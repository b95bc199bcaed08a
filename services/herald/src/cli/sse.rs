//! A small incremental Server-Sent Events parser (the WHATWG event-stream format),
//! fed with the chunks of a reqwest byte stream. It runs on the caller's tokio
//! task, so the CLI needs no second runtime or SSE client crate.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `message` when absent, as the format says.
    pub event: String,
    pub data: String,
}

/// Longest line the parser buffers; a server that never ends a line is an error.
const MAX_LINE_BYTES: usize = 1024 * 1024;

#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
}

/// The server sent a line longer than [`MAX_LINE_BYTES`].
#[derive(Debug, PartialEq, Eq)]
pub struct LineTooLong;

impl std::fmt::Display for LineTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "event stream line longer than {MAX_LINE_BYTES} bytes")
    }
}

impl std::error::Error for LineTooLong {}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk and returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, LineTooLong> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(offset) = self.buffer[start..].iter().position(|&b| b == b'\n') {
            let end = start + offset;
            let mut line = &self.buffer[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = String::from_utf8_lossy(line).into_owned();
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
            start = end + 1;
        }
        self.buffer.drain(..start);
        if self.buffer.len() > MAX_LINE_BYTES {
            return Err(LineTooLong);
        }
        Ok(events)
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            let data = std::mem::take(&mut self.data);
            if !std::mem::take(&mut self.has_data) {
                return None;
            }
            return Some(SseEvent {
                event: if event.is_empty() {
                    "message".into()
                } else {
                    event
                },
                data,
            });
        }
        if line.starts_with(':') {
            // A comment: the server's keep-alive.
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            // `id` and `retry` do not matter to the CLI; unknown fields are ignored.
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_are_reassembled() {
        let mut parser = SseParser::new();
        assert!(parser.push(b"event: progress\nda").unwrap().is_empty());
        let events = parser.push(b"ta: {\"a\":1}\r\n\r\n").unwrap();
        assert_eq!(
            events,
            vec![SseEvent {
                event: "progress".into(),
                data: "{\"a\":1}".into()
            }]
        );
    }

    #[test]
    fn comments_are_keep_alives_and_dispatch_nothing() {
        let mut parser = SseParser::new();
        assert!(parser.push(b":\n\n: ping\n\n").unwrap().is_empty());
    }

    #[test]
    fn multi_line_data_is_joined_and_the_default_event_is_message() {
        let mut parser = SseParser::new();
        let events = parser.push(b"data: one\ndata:two\n\n").unwrap();
        assert_eq!(events[0].event, "message");
        assert_eq!(events[0].data, "one\ntwo");
    }

    #[test]
    fn an_endless_line_is_an_error() {
        let mut parser = SseParser::new();
        let chunk = vec![b'x'; MAX_LINE_BYTES + 1];
        assert_eq!(parser.push(&chunk), Err(LineTooLong));
    }
}
