//! Streaming record readers: a JSON array (`[ {...}, {...} ]`), JSON Lines, or plain text (one document per
//! line), read through a fixed-size buffer so that a file of any size is never held in memory whole.
//!
//! serde_json can stream concatenated values but not the elements of one top-level array, so the array
//! framing is scanned here byte by byte (strings, escapes and nesting tracked); each element's bytes are then
//! handed to serde_json. Positions are tracked as 1-based line and byte column, and an element's parse error
//! is mapped back to its absolute position in the file.

use crate::error::{DataError, Result};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// How a file's records are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// One top-level JSON array of records.
    JsonArray,
    /// One JSON value per line (blank lines ignored).
    JsonLines,
    /// One document per line (`.txt`; blank lines ignored), read as `{"text": line}`.
    Text,
}

/// The raw bytes of one record and where it starts.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// 0-based index of the record in its file.
    pub index: u64,
    pub line: u64,
    pub column: u64,
    pub kind: FileKind,
    pub bytes: Vec<u8>,
}

impl RawRecord {
    /// Validates UTF-8 and parses the record (text lines become `{"text": ...}`); errors carry the file,
    /// absolute line and column.
    pub fn parse(&self, path: &Path) -> Result<serde_json::Value> {
        if let Err(e) = std::str::from_utf8(&self.bytes) {
            let (line, column) = self.position_of(e.valid_up_to());
            return Err(DataError::Utf8 {
                path: path.to_path_buf(),
                line,
                column,
                index: self.index,
            });
        }
        if self.kind == FileKind::Text {
            let text = String::from_utf8_lossy(&self.bytes).into_owned();
            let mut map = serde_json::Map::new();
            map.insert("text".into(), serde_json::Value::String(text));
            return Ok(serde_json::Value::Object(map));
        }
        serde_json::from_slice(&self.bytes).map_err(|e| {
            let (l, c) = (e.line() as u64, e.column() as u64);
            let line = self.line + l.saturating_sub(1);
            let column = if l <= 1 {
                self.column + c.saturating_sub(1)
            } else {
                c
            };
            let mut msg = e.to_string();
            if let Some(p) = msg.rfind(" at line ") {
                msg.truncate(p);
            }
            DataError::Json {
                path: path.to_path_buf(),
                line,
                column,
                msg: format!("{msg} (record {})", self.index),
            }
        })
    }

    /// Absolute (line, column) of byte `off` of this record.
    fn position_of(&self, off: usize) -> (u64, u64) {
        let before = &self.bytes[..off];
        match before.iter().rposition(|&b| b == b'\n') {
            Some(nl) => {
                let lines = before.iter().filter(|&&b| b == b'\n').count() as u64;
                (self.line + lines, (off - nl) as u64)
            }
            None => (self.line, self.column + off as u64),
        }
    }
}

/// A buffered byte source that tracks line and column.
struct Bytes {
    file: File,
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    line: u64,
    col: u64,
}

const BUF: usize = 1 << 16;

impl Bytes {
    fn fill(&mut self) -> std::io::Result<bool> {
        if self.pos < self.len {
            return Ok(true);
        }
        self.len = loop {
            match self.file.read(&mut self.buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        self.pos = 0;
        Ok(self.len > 0)
    }

    fn peek(&mut self) -> std::io::Result<Option<u8>> {
        Ok(if self.fill()? {
            Some(self.buf[self.pos])
        } else {
            None
        })
    }

    fn bump(&mut self) -> std::io::Result<Option<u8>> {
        let b = self.peek()?;
        if let Some(b) = b {
            self.pos += 1;
            if b == b'\n' {
                self.line += 1;
                self.col = 1;
            } else {
                self.col += 1;
            }
        }
        Ok(b)
    }

    /// Appends bytes up to (not including) the next `\n` to `out`, consuming the newline. False at EOF
    /// with nothing read.
    fn read_line(&mut self, out: &mut Vec<u8>) -> std::io::Result<bool> {
        let mut any = false;
        while self.fill()? {
            any = true;
            let chunk = &self.buf[self.pos..self.len];
            match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    out.extend_from_slice(&chunk[..i]);
                    self.pos += i + 1;
                    self.line += 1;
                    self.col = 1;
                    return Ok(true);
                }
                None => {
                    out.extend_from_slice(chunk);
                    self.pos = self.len;
                }
            }
        }
        Ok(any)
    }

    fn skip_ws(&mut self) -> std::io::Result<()> {
        while let Some(b) = self.peek()? {
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                self.bump()?;
            } else {
                break;
            }
        }
        Ok(())
    }
}

#[derive(Debug, PartialEq)]
enum State {
    Start,
    InArray,
    Done,
}

/// Iterates over the raw records of one file, streaming.
pub struct RecordReader {
    path: PathBuf,
    kind: FileKind,
    src: Bytes,
    index: u64,
    state: State,
}

impl std::fmt::Debug for RecordReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordReader")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .field("index", &self.index)
            .finish()
    }
}

impl RecordReader {
    /// Opens `path`; the framing comes from the extension (`.jsonl`, `.txt`) or, for `.json`, from the first
    /// non-blank byte (`[` array, `{` JSON Lines).
    pub fn open(path: &Path) -> Result<RecordReader> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let mut src = Bytes {
            file,
            buf: vec![0u8; BUF].into_boxed_slice(),
            pos: 0,
            len: 0,
            line: 1,
            col: 1,
        };
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        // A UTF-8 byte order mark is not part of the data.
        if src.fill().map_err(|e| DataError::io(path, e))?
            && src.buf[..src.len].starts_with(b"\xEF\xBB\xBF")
        {
            src.pos = 3;
        }
        let kind = match ext.as_str() {
            "jsonl" | "ndjson" => FileKind::JsonLines,
            "txt" | "text" => FileKind::Text,
            "json" => {
                src.skip_ws().map_err(|e| DataError::io(path, e))?;
                match src.peek().map_err(|e| DataError::io(path, e))? {
                    Some(b'{') => FileKind::JsonLines,
                    _ => FileKind::JsonArray,
                }
            }
            other => {
                return Err(DataError::Config(format!(
                    "{}: unsupported file type `.{other}` (supported: .json, .jsonl, .txt)",
                    path.display()
                )))
            }
        };
        Ok(RecordReader {
            path: path.to_path_buf(),
            kind,
            src,
            index: 0,
            state: State::Start,
        })
    }

    pub fn kind(&self) -> FileKind {
        self.kind
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn syntax(&self, msg: impl Into<String>) -> DataError {
        DataError::Json {
            path: self.path.clone(),
            line: self.src.line,
            column: self.src.col,
            msg: msg.into(),
        }
    }

    fn next_line_record(&mut self) -> Result<Option<RawRecord>> {
        loop {
            let line = self.src.line;
            let mut bytes = Vec::new();
            let got = self
                .src
                .read_line(&mut bytes)
                .map_err(|e| DataError::io(&self.path, e))?;
            if !got {
                self.state = State::Done;
                return Ok(None);
            }
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
            if bytes.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let index = self.index;
            self.index += 1;
            return Ok(Some(RawRecord {
                index,
                line,
                column: 1,
                kind: self.kind,
                bytes,
            }));
        }
    }

    fn next_array_element(&mut self) -> Result<Option<RawRecord>> {
        let io = |e, p: &Path| DataError::io(p, e);
        if self.state == State::Start {
            self.src.skip_ws().map_err(|e| io(e, &self.path))?;
            match self.src.bump().map_err(|e| io(e, &self.path))? {
                Some(b'[') => self.state = State::InArray,
                Some(_) => return Err(self.syntax("expected `[` (a JSON array of records)")),
                None => return Err(self.syntax("empty file, expected a JSON array")),
            }
            self.src.skip_ws().map_err(|e| io(e, &self.path))?;
            if self.src.peek().map_err(|e| io(e, &self.path))? == Some(b']') {
                self.src.bump().map_err(|e| io(e, &self.path))?;
                return self.finish();
            }
        } else {
            // After an element: `,` then the next element, or `]`.
            self.src.skip_ws().map_err(|e| io(e, &self.path))?;
            match self.src.peek().map_err(|e| io(e, &self.path))? {
                Some(b',') => {
                    self.src.bump().map_err(|e| io(e, &self.path))?;
                    self.src.skip_ws().map_err(|e| io(e, &self.path))?;
                    if self.src.peek().map_err(|e| io(e, &self.path))? == Some(b']') {
                        return Err(self.syntax("trailing comma before `]`"));
                    }
                }
                Some(b']') => {
                    self.src.bump().map_err(|e| io(e, &self.path))?;
                    return self.finish();
                }
                Some(c) => {
                    return Err(self.syntax(format!(
                        "expected `,` or `]` after record {}, found `{}`",
                        self.index - 1,
                        c as char
                    )))
                }
                None => return Err(self.syntax("unexpected end of file, expected `,` or `]`")),
            }
        }
        self.read_element().map(Some)
    }

    fn finish(&mut self) -> Result<Option<RawRecord>> {
        self.src
            .skip_ws()
            .map_err(|e| DataError::io(&self.path, e))?;
        if self
            .src
            .peek()
            .map_err(|e| DataError::io(&self.path, e))?
            .is_some()
        {
            return Err(self.syntax("unexpected data after the closing `]`"));
        }
        self.state = State::Done;
        Ok(None)
    }

    /// Reads one element's bytes, tracking strings and nesting; stops after the closing bracket of a
    /// container or before the delimiter that ends a scalar.
    fn read_element(&mut self) -> Result<RawRecord> {
        let (line, column) = (self.src.line, self.src.col);
        let mut out = Vec::with_capacity(512);
        let (mut depth, mut in_str, mut esc) = (0usize, false, false);
        loop {
            let Some(b) = self.src.peek().map_err(|e| DataError::io(&self.path, e))? else {
                return Err(DataError::Json {
                    path: self.path.clone(),
                    line,
                    column,
                    msg: format!(
                        "unexpected end of file inside record {} (unterminated {})",
                        self.index,
                        if in_str { "string" } else { "array or object" }
                    ),
                });
            };
            if in_str {
                if esc {
                    esc = false;
                } else if b == b'\\' {
                    esc = true;
                } else if b == b'"' {
                    in_str = false;
                    if depth == 0 {
                        out.push(b);
                        self.src.bump().map_err(|e| DataError::io(&self.path, e))?;
                        break;
                    }
                }
            } else {
                match b {
                    b'"' => in_str = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        if depth == 0 {
                            if out.is_empty() {
                                return Err(self.syntax(format!("unexpected `{}`", b as char)));
                            }
                            break;
                        }
                        depth -= 1;
                        if depth == 0 {
                            out.push(b);
                            self.src.bump().map_err(|e| DataError::io(&self.path, e))?;
                            break;
                        }
                    }
                    b',' | b' ' | b'\t' | b'\n' | b'\r' if depth == 0 => break,
                    _ => {}
                }
            }
            out.push(b);
            self.src.bump().map_err(|e| DataError::io(&self.path, e))?;
        }
        let index = self.index;
        self.index += 1;
        Ok(RawRecord {
            index,
            line,
            column,
            kind: self.kind,
            bytes: out,
        })
    }
}

impl Iterator for RecordReader {
    type Item = Result<RawRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.state == State::Done {
            return None;
        }
        let r = match self.kind {
            FileKind::JsonArray => self.next_array_element(),
            FileKind::JsonLines | FileKind::Text => self.next_line_record(),
        };
        match r {
            Ok(Some(rec)) => Some(Ok(rec)),
            Ok(None) => None,
            Err(e) => {
                // Framing errors cannot be resynchronised: stop after reporting.
                self.state = State::Done;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p)
            .unwrap()
            .write_all(content)
            .unwrap();
        p
    }

    fn values(p: &Path) -> Vec<serde_json::Value> {
        RecordReader::open(p)
            .unwrap()
            .map(|r| r.unwrap().parse(p).unwrap())
            .collect()
    }

    #[test]
    fn array_elements_match_serde_json_whole_file_parse() {
        let dir = tempfile::tempdir().unwrap();
        let text = br#"
 [ {"a": "x,]}\"[{", "b": [1, {"c": null}]}, 3 , "s\\" ,
  [true,false] , {"u": "\u00e9\ud83d\ude00 \u4e2d"}, -1.5e3, null ]
 "#;
        let p = file(dir.path(), "a.json", text);
        let whole: Vec<serde_json::Value> = serde_json::from_slice(text).unwrap();
        assert_eq!(values(&p), whole);
        let p = file(dir.path(), "e.json", b" [ ] ");
        assert!(values(&p).is_empty());
    }

    #[test]
    fn jsonl_and_text_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(dir.path(), "a.jsonl", b"{\"a\":1}\r\n\n  \n{\"a\":2}");
        assert_eq!(
            values(&p),
            vec![serde_json::json!({"a":1}), serde_json::json!({"a":2})]
        );
        let p = file(
            dir.path(),
            "a.txt",
            "doc one\n\ndoc two\u{4e2d}\n".as_bytes(),
        );
        let v = values(&p);
        assert_eq!(v[1]["text"], "doc two\u{4e2d}");
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        // Missing colon inside record 1, on line 3 column 9.
        let p = file(dir.path(), "bad.json", b"[\n {\"a\": 1},\n {\"a\" 2}\n]");
        let recs: Vec<_> = RecordReader::open(&p).unwrap().collect();
        let err = recs[1].as_ref().unwrap().parse(&p).unwrap_err();
        let oracle = serde_json::from_slice::<serde_json::Value>(b"[\n {\"a\": 1},\n {\"a\" 2}\n]")
            .unwrap_err();
        match &err {
            DataError::Json { line, column, .. } => {
                assert_eq!(
                    (*line, *column),
                    (oracle.line() as u64, oracle.column() as u64)
                )
            }
            e => panic!("{e}"),
        }
        assert!(err.to_string().contains("bad.json:3:"), "{err}");
        // Framing error: missing comma between records.
        let p = file(dir.path(), "frame.json", b"[{\"a\":1}\n {\"a\":2}]");
        let err = RecordReader::open(&p).unwrap().nth(1).unwrap().unwrap_err();
        assert!(err.to_string().contains("frame.json:2:2"), "{err}");
        // Invalid UTF-8 on line 2.
        let p = file(dir.path(), "u.jsonl", b"{\"a\":\"ok\"}\n{\"a\":\"\xff\"}\n");
        let recs: Vec<_> = RecordReader::open(&p).unwrap().collect();
        let err = recs[1].as_ref().unwrap().parse(&p).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::Utf8 {
                    line: 2,
                    column: 7,
                    index: 1,
                    ..
                }
            ),
            "{err}"
        );
        // Unterminated array.
        let p = file(dir.path(), "t.json", b"[{\"a\":1}, {\"a\":");
        assert!(RecordReader::open(&p).unwrap().any(|r| r.is_err()));
    }
}
