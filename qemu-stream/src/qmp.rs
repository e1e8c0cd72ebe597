//! A QEMU Machine Protocol client over a unix socket, for the gateway
//! (which drives the QEMUs of a migration it relays) and the tests: the
//! greeting and capability negotiation, commands and their replies, with
//! asynchronous events kept with their timestamps. [`parse`] classifies
//! one line of the protocol (no I/O); [`Qmp`] wraps it around a blocking
//! socket (call it from a blocking thread in async code).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A QMP exchange that failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP sent a line that is not JSON: {line:?}")]
    NotJson {
        line: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("QMP sent a message of unknown shape: {0}")]
    Shape(String),
    #[error("{who}: QMP socket {} did not accept within {timeout:?} (did QEMU start?)", path.display())]
    Connect {
        who: String,
        path: PathBuf,
        timeout: Duration,
        #[source]
        source: std::io::Error,
    },
    #[error("{who}: {doing} on the QMP socket")]
    Io {
        who: String,
        doing: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{who}: QEMU closed its QMP socket (did it exit?)")]
    Closed { who: String },
    #[error("{who}: {command} failed: {class}: {desc}")]
    Command {
        who: String,
        command: String,
        class: String,
        desc: String,
    },
    #[error("{who}: expected {expected}, got {got}")]
    Unexpected {
        who: String,
        expected: &'static str,
        got: String,
    },
}

/// One message from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `{"QMP": {...}}`, sent once on connect.
    Greeting,
    /// `{"return": ...}`: a command succeeded.
    Return(Value),
    /// `{"error": {"class": ..., "desc": ...}}`: a command failed.
    Error { class: String, desc: String },
    /// `{"event": NAME, ...}`: something happened (not a reply).
    Event(Event),
}

/// An asynchronous event and when QEMU emitted it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    /// Wall-clock time (microseconds since the Unix epoch) of the event's
    /// `timestamp`, when it had one.
    pub at_us: Option<u64>,
    pub data: Value,
}

/// Classifies one line QEMU sent.
pub fn parse(line: &str) -> Result<Message, QmpError> {
    let v: Value = serde_json::from_str(line).map_err(|source| QmpError::NotJson {
        line: line.to_string(),
        source,
    })?;
    if v.get("QMP").is_some() {
        return Ok(Message::Greeting);
    }
    if let Some(r) = v.get("return") {
        return Ok(Message::Return(r.clone()));
    }
    if let Some(e) = v.get("error") {
        let field = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
        return Ok(Message::Error {
            class: field("class"),
            desc: field("desc"),
        });
    }
    if let Some(name) = v.get("event").and_then(Value::as_str) {
        let ts = v.get("timestamp");
        let part = |k: &str| ts.and_then(|t| t.get(k)).and_then(Value::as_u64);
        let at_us = match (part("seconds"), part("microseconds")) {
            (Some(s), Some(us)) => Some(s * 1_000_000 + us),
            _ => None,
        };
        return Ok(Message::Event(Event {
            name: name.to_string(),
            at_us,
            data: v.get("data").cloned().unwrap_or(Value::Null),
        }));
    }
    Err(QmpError::Shape(line.to_string()))
}

/// A negotiated QMP session.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// For error messages: which QEMU this is.
    who: String,
    /// Events received so far, oldest first.
    events: Vec<Event>,
}

impl Qmp {
    /// Connects to `path` (retrying until QEMU has created it, up to
    /// `timeout`), reads the greeting and leaves negotiation mode.
    pub fn connect(path: &Path, who: &str, timeout: Duration) -> Result<Self, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(source) if Instant::now() >= deadline => {
                    return Err(QmpError::Connect {
                        who: who.to_string(),
                        path: path.to_path_buf(),
                        timeout,
                        source,
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let io = |doing: &str| {
            let (who, doing) = (who.to_string(), doing.to_string());
            move |source| QmpError::Io { who, doing, source }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io("setting the read timeout"))?;
        let writer = stream.try_clone().map_err(io("cloning the socket"))?;
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
            who: who.to_string(),
            events: Vec::new(),
        };
        match q.read()? {
            Message::Greeting => {}
            other => {
                return Err(QmpError::Unexpected {
                    who: who.to_string(),
                    expected: "the QMP greeting",
                    got: format!("{other:?}"),
                })
            }
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Message, QmpError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| QmpError::Io {
                who: self.who.clone(),
                doing: "reading".into(),
                source,
            })?;
        if n == 0 {
            return Err(QmpError::Closed {
                who: self.who.clone(),
            });
        }
        parse(line.trim_end())
    }

    /// Runs `command` with `arguments`; returns its `return` value, or an
    /// error carrying QEMU's description.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": command });
        if arguments.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = arguments;
        }
        let mut text = msg.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .map_err(|source| QmpError::Io {
                who: self.who.clone(),
                doing: format!("sending {command}"),
                source,
            })?;
        loop {
            match self.read()? {
                Message::Return(v) => return Ok(v),
                Message::Error { class, desc } => {
                    return Err(QmpError::Command {
                        who: self.who.clone(),
                        command: command.to_string(),
                        class,
                        desc,
                    })
                }
                Message::Event(e) => self.events.push(e),
                Message::Greeting => {
                    return Err(QmpError::Unexpected {
                        who: self.who.clone(),
                        expected: "a reply",
                        got: "a second QMP greeting".into(),
                    })
                }
            }
        }
    }
}

impl Qmp {
    /// The last event called `name` received so far (events arrive with
    /// command replies: run a command to collect newer ones).
    pub fn last_event(&self, name: &str) -> Option<&Event> {
        self.events.iter().rev().find(|e| e.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_protocol_messages() {
        assert_eq!(
            parse(r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}"#).unwrap(),
            Message::Greeting
        );
        assert_eq!(
            parse(r#"{"return": {}}"#).unwrap(),
            Message::Return(json!({}))
        );
        assert_eq!(
            parse(r#"{"error": {"class": "GenericError", "desc": "Parameter 'x' is unexpected"}}"#)
                .unwrap(),
            Message::Error {
                class: "GenericError".into(),
                desc: "Parameter 'x' is unexpected".into()
            }
        );
        assert_eq!(
            parse(r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "MIGRATION", "data": {"status": "setup"}}"#)
                .unwrap(),
            Message::Event(Event {
                name: "MIGRATION".into(),
                at_us: Some(1_000_002),
                data: json!({"status": "setup"})
            })
        );
        let Message::Event(e) = parse(r#"{"event": "RESUME"}"#).unwrap() else {
            panic!("not an event")
        };
        assert_eq!((e.name.as_str(), e.at_us), ("RESUME", None));
    }

    #[test]
    fn rejects_what_is_not_qmp() {
        assert!(parse("not json").is_err());
        assert!(parse(r#"{"something": 1}"#).is_err());
    }
}
