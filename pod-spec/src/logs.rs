//! The apps' output as recorded on the host (`<pod dir>/logs/<app>.log`, rotated to
//! `<app>.log.1` ... `<app>.log.<max_files-1>`), and the header of guest-init's output
//! connections in a VM.
//!
//! # Record format: podman's / CRI's `k8s-file`
//!
//! One record per line: `<timestamp> <stream> <tag> <bytes>\n`, where
//! - `<timestamp>` is RFC 3339 UTC with nanoseconds, always 30 bytes
//!   (`2026-12-03T11:13:18.123456789Z`), so records sort and compare as strings;
//! - `<stream>` is `stdout` or `stderr`;
//! - `<tag>` is `F` when the app's output had a newline after `<bytes>`, `P` when it did not
//!   (the read ended mid-line, or the line was longer than [`MAX_RECORD_DATA`]);
//! - `<bytes>` are the app's bytes as written, never containing `\n`, at most
//!   [`MAX_RECORD_DATA`] of them.
//!
//! So the output is recovered exactly (binary included): each record's bytes, plus `\n` for `F`.
//! A record `... stderr F ark: dropped N bytes ...` marks output that could not be logged
//! (a full disk); see [`dropped_marker`].

use serde::{Deserialize, Serialize};

use crate::manifest::Stage1Options;

/// Longest run of output bytes in one record; longer lines are split into `P` records.
pub const MAX_RECORD_DATA: usize = 16 * 1024;
/// Longest record line a reader accepts (timestamp, stream, tag, separators, data, newline).
pub const MAX_RECORD_LINE: usize = MAX_RECORD_DATA + 64;
/// Length of a record's timestamp.
pub const TIMESTAMP_LEN: usize = 30;

/// `stage1.options` key: an app's log rotates past this many bytes (decimal integer).
pub const OPTION_MAX_SIZE: &str = "log.max-size";
/// `stage1.options` key: how many files an app's log keeps, the live one included (2..=16).
pub const OPTION_MAX_FILES: &str = "log.max-files";
pub const DEFAULT_MAX_SIZE: u64 = 8 << 20;
pub const DEFAULT_MAX_FILES: u32 = 3;
/// Smallest cap: a record must fit in one file.
pub const MIN_MAX_SIZE: u64 = 2 * MAX_RECORD_LINE as u64;
pub const MAX_MAX_FILES: u32 = 16;

/// Which of an app's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// How big an app's log may grow: at most `max_files` files of at most `max_size` bytes each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    pub max_size: u64,
    pub max_files: u32,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_size: DEFAULT_MAX_SIZE,
            max_files: DEFAULT_MAX_FILES,
        }
    }
}

impl LogLimits {
    /// The limits the manifest's stage1 options ask for; absent keys take the defaults.
    pub fn from_options(o: &Stage1Options) -> Result<Self, String> {
        let mut l = LogLimits::default();
        if let Some(v) = o.other.get(OPTION_MAX_SIZE) {
            l.max_size = v
                .parse::<u64>()
                .ok()
                .filter(|s| *s >= MIN_MAX_SIZE)
                .ok_or_else(|| {
                    format!("{OPTION_MAX_SIZE}={v:?}: want a byte count of at least {MIN_MAX_SIZE}")
                })?;
        }
        if let Some(v) = o.other.get(OPTION_MAX_FILES) {
            l.max_files = v
                .parse::<u32>()
                .ok()
                .filter(|n| (2..=MAX_MAX_FILES).contains(n))
                .ok_or_else(|| format!("{OPTION_MAX_FILES}={v:?}: want 2 to {MAX_MAX_FILES}"))?;
        }
        Ok(l)
    }
}

/// A file of an app's log: 0 is the live one, `<app>.log`; n is `<app>.log.<n>` (older).
pub fn log_file_name(app: &str, n: u32) -> String {
    match n {
        0 => format!("{app}.log"),
        n => format!("{app}.log.{n}"),
    }
}

/// Formats nanoseconds since the Unix epoch as a record timestamp ([`TIMESTAMP_LEN`] bytes).
pub fn format_timestamp(unix_nanos: u128) -> String {
    let secs = u64::try_from(unix_nanos / 1_000_000_000).unwrap_or(u64::MAX / 1000);
    let (date, hms) = crate::civil_utc(secs);
    format!("{date}T{hms}.{:09}Z", unix_nanos % 1_000_000_000)
}

/// Now, as a record timestamp.
pub fn now_timestamp() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format_timestamp(nanos)
}

/// One record, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub timestamp: &'a str,
    pub stream: Stream,
    /// A newline followed the data in the app's output.
    pub full_line: bool,
    pub data: &'a [u8],
}

impl Record<'_> {
    /// The app's bytes this record stands for.
    pub fn output(&self) -> impl Iterator<Item = &u8> {
        self.data.iter().chain(self.full_line.then_some(&b'\n'))
    }
}

/// Appends the records for `data` (one chunk of the app's output) to `out`.
pub fn encode_records(out: &mut Vec<u8>, timestamp: &str, stream: Stream, data: &[u8]) {
    let mut rest = data;
    while !rest.is_empty() {
        let line_end = rest.iter().position(|b| *b == b'\n');
        let (take, full) = match line_end {
            Some(i) if i <= MAX_RECORD_DATA => (i, true),
            _ => (rest.len().min(MAX_RECORD_DATA), false),
        };
        out.extend_from_slice(timestamp.as_bytes());
        out.push(b' ');
        out.extend_from_slice(stream.as_str().as_bytes());
        out.extend_from_slice(if full { b" F " } else { b" P " });
        out.extend_from_slice(&rest[..take]);
        out.push(b'\n');
        rest = &rest[take + usize::from(full)..];
    }
}

/// The record saying `bytes` of output were not logged, and why.
pub fn dropped_marker(bytes: u64, why: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let text = format!("ark: dropped {bytes} bytes of this app's output from its log: {why}\n");
    encode_records(&mut out, &now_timestamp(), Stream::Stderr, text.as_bytes());
    out
}

/// Parses one record line (without its `\n`); `None` if it is not one.
pub fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    if line.len() > MAX_RECORD_LINE || line.len() < TIMESTAMP_LEN + 10 {
        return None;
    }
    let (ts, rest) = line.split_at(TIMESTAMP_LEN);
    let timestamp = std::str::from_utf8(ts)
        .ok()
        .filter(|t| valid_timestamp(t))?;
    let (stream, rest) = if let Some(r) = rest.strip_prefix(b" stdout ") {
        (Stream::Stdout, r)
    } else {
        (Stream::Stderr, rest.strip_prefix(b" stderr ")?)
    };
    let (full_line, data) = match rest {
        [b'F', b' ', data @ ..] => (true, data),
        [b'P', b' ', data @ ..] => (false, data),
        _ => return None,
    };
    if data.len() > MAX_RECORD_DATA || data.contains(&b'\n') {
        return None;
    }
    Some(Record {
        timestamp,
        stream,
        full_line,
        data,
    })
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`, digits where digits go.
fn valid_timestamp(t: &str) -> bool {
    const SHAPE: &[u8; TIMESTAMP_LEN] = b"dddd-dd-ddTdd:dd:dd.dddddddddZ";
    t.len() == TIMESTAMP_LEN
        && t.bytes().zip(SHAPE).all(|(c, s)| match s {
            b'd' => c.is_ascii_digit(),
            s => c == *s,
        })
}

/// vsock port guest-init sends its apps' output to in a VM (host side: `<uds>_<port>`); the
/// ports: 1024 statuses and 1027 output (host listens), 1025 control and 1026 agent (guest listens).
pub const OUTPUT_PORT: u32 = 1027;
/// Largest output-connection header the host reads.
pub const MAX_OUTPUT_HEADER: u32 = 512;

/// What an output connection carries, sent first: a 4-byte big-endian length, then this as
/// JSON (at most [`MAX_OUTPUT_HEADER`] bytes). Then the stream's bytes as the app wrote them,
/// until guest-init shuts its side down; the host closes its side once every byte is written
/// out, which tells guest-init the output arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputHeader {
    pub app: String,
    pub stream: Stream,
}

impl OutputHeader {
    /// The length-prefixed header, ready to send.
    pub fn to_frame(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("header serializes");
        let len = u32::try_from(json.len()).expect("a header is small");
        let mut out = len.to_be_bytes().to_vec();
        out.extend(json);
        out
    }

    /// The header from its length prefix and body, validated against the size cap.
    pub fn read_from(r: &mut impl std::io::Read) -> Result<Self, String> {
        let mut len = [0u8; 4];
        r.read_exact(&mut len)
            .map_err(|e| format!("header length: {e}"))?;
        let len = u32::from_be_bytes(len);
        if len == 0 || len > MAX_OUTPUT_HEADER {
            return Err(format!(
                "header of {len} bytes (at most {MAX_OUTPUT_HEADER})"
            ));
        }
        let mut body = vec![0u8; len as usize];
        r.read_exact(&mut body)
            .map_err(|e| format!("header: {e}"))?;
        serde_json::from_slice(&body).map_err(|e| format!("header: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(log: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        for line in log.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let r = parse_record(line).expect("a record");
            match r.stream {
                Stream::Stdout => out.extend(r.output()),
                Stream::Stderr => err.extend(r.output()),
            }
        }
        (out, err)
    }

    #[test]
    fn records_round_trip_binary_output() {
        let ts = format_timestamp(1_700_000_000_123_456_789);
        assert_eq!(ts, "2023-11-14T22:13:20.123456789Z");
        let mut bin: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        bin.extend(std::iter::repeat_n(b'x', MAX_RECORD_DATA * 2 + 5));
        bin.extend(b"\n\n\rend");
        let mut log = Vec::new();
        encode_records(&mut log, &ts, Stream::Stdout, &bin);
        encode_records(&mut log, &ts, Stream::Stderr, b"err\n");
        assert_eq!(decode(&log), (bin, b"err\n".to_vec()));
        let first = log.split(|b| *b == b'\n').next().unwrap();
        assert!(first.starts_with(b"2023-11-14T22:13:20.123456789Z stdout F \x00\x01"));
    }

    #[test]
    fn garbage_is_not_a_record() {
        let ts = format_timestamp(0);
        for bad in [
            &b""[..],
            b"hello",
            format!("{ts} stdin F x").as_bytes(),
            format!("{ts} stdout X x").as_bytes(),
            format!("{}Z stdout F x", &ts[..29].replace('0', "a")).as_bytes(),
        ] {
            assert!(
                parse_record(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("{ts} stdout P {}", "y".repeat(MAX_RECORD_DATA + 1));
        assert!(parse_record(long.as_bytes()).is_none());
        assert!(parse_record(format!("{ts} stdout P ").as_bytes()).is_some());
    }

    #[test]
    fn limits_from_options() {
        let mut o = Stage1Options::default();
        assert_eq!(LogLimits::from_options(&o).unwrap(), LogLimits::default());
        o.other.insert(OPTION_MAX_SIZE.into(), "65536".into());
        o.other.insert(OPTION_MAX_FILES.into(), "2".into());
        assert_eq!(
            LogLimits::from_options(&o).unwrap(),
            LogLimits {
                max_size: 65536,
                max_files: 2
            }
        );
        for (k, v) in [
            (OPTION_MAX_SIZE, "10"),
            (OPTION_MAX_SIZE, "-1"),
            (OPTION_MAX_FILES, "1"),
            (OPTION_MAX_FILES, "99"),
        ] {
            let mut o = Stage1Options::default();
            o.other.insert(k.into(), v.into());
            assert!(LogLimits::from_options(&o).is_err(), "{k}={v}");
        }
    }

    #[test]
    fn output_header_caps_and_validates() {
        let h = OutputHeader {
            app: "web".into(),
            stream: Stream::Stderr,
        };
        let frame = h.to_frame();
        assert_eq!(OutputHeader::read_from(&mut &frame[..]).unwrap(), h);
        let huge = u32::MAX.to_be_bytes();
        assert!(OutputHeader::read_from(&mut &huge[..])
            .unwrap_err()
            .contains("at most"));
        let mut lie = 100u32.to_be_bytes().to_vec();
        lie.extend(b"{}");
        assert!(OutputHeader::read_from(&mut &lie[..]).is_err());
        let mut odd = 28u32.to_be_bytes().to_vec();
        odd.extend(br#"{"app":"a","stream":"stdin"}"#);
        assert!(OutputHeader::read_from(&mut &odd[..]).is_err());
    }
}
