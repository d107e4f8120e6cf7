//! TensorBoard event files in the run directory (`events.out.tfevents.TIME.HOST.PID.segkit`), so
//! that `tensorboard --logdir checkpoints` shows segkit runs as it shows PyTorch Lightning's and
//! mmsegmentation's: scalars per logged step and per validation, and the validation sample grid.
//!
//! The format, from TensorFlow's `tensorflow/core/util/event.proto`, `summary.proto` and
//! `lib/io/record_writer.cc`: a file is a sequence of TFRecords, each `u64 length (LE)`,
//! `u32 masked CRC-32C of the length`, the bytes of one serialised `Event`, `u32 masked CRC-32C of
//! the bytes`; the mask is `((crc >> 15) | (crc << 17)) + 0xa282ead8`. The first event carries
//! `file_version = "brain.Event:2"`. The messages below are written out by hand from the field
//! numbers (prost is already built for ONNX export), and CRC-32C is a 1 KiB table.
//!
//! Resume: a resumed run writes a new file whose second event is a `SessionLog` START at the
//! first step it will compute. TensorBoard then drops every event of earlier files at that step
//! or later (what PyTorch's `SummaryWriter(purge_step=...)` does), so the steps a killed run
//! computed after its last checkpoint, and computes again after the resume, show once.
//!
//! Invariant, and the one exception to "every file is written to a temporary name and renamed"
//! (lib.rs): an event file is an append-only stream, flushed after every event. A kill can leave
//! a truncated last record, which TensorBoard's reader skips as incomplete; no file is ever
//! appended to after a restart.

use std::io::Write;
use std::path::{Path, PathBuf};

use prost::{Message, Oneof};

use crate::TrainError;

#[derive(Clone, PartialEq, Message)]
pub struct EventProto {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "What", tags = "3, 5, 7")]
    pub what: Option<What>,
}

#[derive(Clone, PartialEq, Oneof)]
pub enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(SummaryProto),
    #[prost(message, tag = "7")]
    SessionLog(SessionLogProto),
}

#[derive(Clone, PartialEq, Message)]
pub struct SessionLogProto {
    /// 1: START.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct SummaryProto {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<ValueProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueProto {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(oneof = "Payload", tags = "2, 4")]
    pub payload: Option<Payload>,
}

#[derive(Clone, PartialEq, Oneof)]
pub enum Payload {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    #[prost(message, tag = "4")]
    Image(ImageProto),
}

#[derive(Clone, PartialEq, Message)]
pub struct ImageProto {
    #[prost(int32, tag = "1")]
    pub height: i32,
    #[prost(int32, tag = "2")]
    pub width: i32,
    /// 3: RGB.
    #[prost(int32, tag = "3")]
    pub colorspace: i32,
    #[prost(bytes = "vec", tag = "4")]
    pub encoded_image_string: Vec<u8>,
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord frames use.
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8))
}

fn masked(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord around `data`.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked(crc32c(&len)).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked(crc32c(data)).to_le_bytes());
    out
}

/// An event file being written.
pub struct EventWriter {
    path: PathBuf,
    file: std::fs::File,
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let name: String = name.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    if name.is_empty() { "localhost".into() } else { name }
}

impl EventWriter {
    /// A new event file in `dir`; `resumed_at`: the first step a resumed run computes (a
    /// `SessionLog` START there makes TensorBoard drop earlier files' events from it on).
    pub fn create(dir: &Path, resumed_at: Option<usize>) -> Result<EventWriter, TrainError> {
        let t = now();
        // Two files in one second (a quick resume) must not collide: the first free suffix.
        let stem = format!("events.out.tfevents.{}.{}.{}", t as u64, hostname(), std::process::id());
        let path = (0..)
            .map(|i| dir.join(if i == 0 { format!("{stem}.segkit") } else { format!("{stem}.{i}.segkit") }))
            .find(|p| !p.exists())
            .expect("an unused file name");
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::Write { path: path.clone(), error: e })?;
        let mut w = EventWriter { path, file };
        w.write(EventProto { wall_time: t, step: 0, what: Some(What::FileVersion("brain.Event:2".into())) })?;
        if let Some(step) = resumed_at {
            let start = What::SessionLog(SessionLogProto { status: 1 });
            w.write(EventProto { wall_time: t, step: step as i64, what: Some(start) })?;
        }
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, event: EventProto) -> Result<(), TrainError> {
        let bytes = record(&event.encode_to_vec());
        let path = &self.path;
        self.file
            .write_all(&bytes)
            .and_then(|()| self.file.flush())
            .map_err(|e| TrainError::Write { path: path.clone(), error: e })
    }

    /// Scalars at `step`, one event; non-finite values are left out (TensorBoard would draw them
    /// as gaps at best).
    pub fn scalars(&mut self, step: usize, values: &[(&str, f64)]) -> Result<(), TrainError> {
        let value: Vec<ValueProto> = values
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(tag, v)| ValueProto { tag: tag.to_string(), payload: Some(Payload::SimpleValue(*v as f32)) })
            .collect();
        if value.is_empty() {
            return Ok(());
        }
        self.write(EventProto { wall_time: now(), step: step as i64, what: Some(What::Summary(SummaryProto { value })) })
    }

    /// An RGB PNG image at `step`.
    pub fn image(&mut self, step: usize, tag: &str, png: Vec<u8>, width: usize, height: usize) -> Result<(), TrainError> {
        let image = ImageProto { height: height as i32, width: width as i32, colorspace: 3, encoded_image_string: png };
        let value = vec![ValueProto { tag: tag.into(), payload: Some(Payload::Image(image)) }];
        self.write(EventProto { wall_time: now(), step: step as i64, what: Some(What::Summary(SummaryProto { value })) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRC-32C's check value and RFC 3720's test vector, and a record that frames itself.
    #[test]
    fn crc32c_and_framing_match_the_references() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        let r = record(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(u64::from_le_bytes(r[..8].try_into().unwrap()), 3);
        assert_eq!(u32::from_le_bytes(r[8..12].try_into().unwrap()), masked(crc32c(&3u64.to_le_bytes())));
        assert_eq!(&r[12..15], b"abc");
    }

    /// A file's records decode back to the events written, in order.
    #[test]
    fn events_read_back() {
        let dir = std::env::temp_dir().join(format!("segkit-tb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = EventWriter::create(&dir, Some(7)).unwrap();
        w.scalars(7, &[("train/loss", 0.5), ("skipped", f64::NAN)]).unwrap();
        let bytes = std::fs::read(w.path()).unwrap();
        let mut events = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            let data = &bytes[at + 12..at + 12 + len];
            assert_eq!(u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap()), masked(crc32c(data)));
            events.push(EventProto::decode(data).unwrap());
            at += 16 + len;
        }
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].what, Some(What::FileVersion("brain.Event:2".into())));
        assert_eq!((events[1].step, events[1].what.clone()), (7, Some(What::SessionLog(SessionLogProto { status: 1 }))));
        let Some(What::Summary(s)) = &events[2].what else { panic!("{:?}", events[2]) };
        assert_eq!(s.value, vec![ValueProto { tag: "train/loss".into(), payload: Some(Payload::SimpleValue(0.5)) }]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
