//! `segkit data check`: read a whole dataset and report what is there and what is wrong.

use std::collections::BTreeMap;

use crate::image_io;
use crate::layout::{Dataset, MaskSource};
use crate::mask::{MaskEncoding, detect_encoding, read_raw_mask, to_labels};

#[derive(Debug, Clone, serde::Serialize)]
pub struct SplitReport {
    pub name: String,
    pub pairs: usize,
    /// (width, height) -> count.
    pub sizes: BTreeMap<String, usize>,
    /// Detected mask encodings -> count.
    pub encodings: BTreeMap<String, usize>,
    /// Pixels per class; the last entry counts void.
    pub class_pixels: Vec<u64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    pub format: String,
    pub root: String,
    pub classes: Vec<String>,
    /// Where the class names came from.
    pub class_source: String,
    pub ignore_index: u8,
    pub splits: Vec<SplitReport>,
    /// Every problem, each naming its file (and line).
    pub problems: Vec<String>,
}

impl CheckReport {
    pub fn has_errors(&self) -> bool {
        !self.problems.is_empty()
    }
}

/// Reads every image and mask of `ds` (`channels`: how images will be read).
pub fn check(ds: &Dataset, channels: usize, mut progress: impl FnMut(usize, usize)) -> CheckReport {
    let n_classes = ds.classes.len();
    let mut problems = Vec::new();
    let mut splits = Vec::new();
    let total: usize = ds.splits.iter().map(|s| s.samples.len()).sum();
    let mut done = 0;
    for split in &ds.splits {
        problems.extend(split.orphans.iter().cloned());
        let mut rep = SplitReport {
            name: split.name.clone(),
            pairs: split.samples.len(),
            sizes: BTreeMap::new(),
            encodings: BTreeMap::new(),
            class_pixels: vec![0; n_classes + 1],
        };
        for s in &split.samples {
            done += 1;
            progress(done, total);
            let size = match &s.image {
                Some(p) => match image_io::read_image(p, channels) {
                    Ok(img) => Some((img.width, img.height)),
                    Err(e) => {
                        problems.push(e.to_string());
                        None
                    }
                },
                None => None,
            };
            let labels = match &s.mask {
                MaskSource::File(p) => match read_raw_mask(p) {
                    Ok(raw) => {
                        let enc = if ds.encoding == MaskEncoding::Auto { detect_encoding(&raw) } else { ds.encoding };
                        *rep.encodings.entry(enc.to_string()).or_default() += 1;
                        let (w, h) = raw.size();
                        if let Some((iw, ih)) = size {
                            if (iw, ih) != (w, h) {
                                problems.push(format!("{}: image is {iw}x{ih} but its mask is {w}x{h}", p.display()));
                            }
                        }
                        match to_labels(&raw, enc, &ds.classes) {
                            Ok(l) => Some(l),
                            Err(m) => {
                                problems.push(format!("{}: {m}", p.display()));
                                None
                            }
                        }
                    }
                    Err(e) => {
                        problems.push(e.to_string());
                        None
                    }
                },
                MaskSource::Polygons(_) | MaskSource::Synthetic(_) => {
                    *rep.encodings
                        .entry(match s.mask {
                            MaskSource::Polygons(_) => "YOLO polygons".to_string(),
                            _ => "synthetic".to_string(),
                        })
                        .or_default() += 1;
                    match ds.load(s, channels) {
                        Ok((_, l)) => Some(l),
                        Err(e) => {
                            problems.push(e.to_string());
                            None
                        }
                    }
                }
            };
            let size = size.or_else(|| {
                matches!(s.mask, MaskSource::Synthetic(_)).then(|| {
                    let n = labels.as_ref().map_or(0, |l| (l.len() as f64).sqrt() as usize);
                    (n, n)
                })
            });
            if let Some((w, h)) = size {
                *rep.sizes.entry(format!("{w}x{h}")).or_default() += 1;
            }
            if let Some(l) = labels {
                for v in l {
                    let i = if (v as usize) < n_classes { v as usize } else { n_classes };
                    rep.class_pixels[i] += 1;
                }
            }
        }
        splits.push(rep);
    }
    CheckReport {
        format: ds.format.to_string(),
        root: ds.root.display().to_string(),
        classes: ds.classes.names.clone(),
        class_source: ds.class_source.clone(),
        ignore_index: ds.classes.ignore_index,
        splits,
        problems,
    }
}
