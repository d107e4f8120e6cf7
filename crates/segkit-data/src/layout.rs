//! Dataset layouts: paired folders, PASCAL VOC, YOLO segmentation exports and the built-in
//! synthetic set. [`Dataset::open`] finds the files and pairs them; loading happens per sample.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::classes::{ClassSet, read_class_names, read_yaml_names};
use crate::error::{DataError, Result};
use crate::image_io::{ImageBuf, read_image};
use crate::mask::{MaskEncoding, read_labels};
use crate::synth::{synth_classes, synth_sample};
use crate::yolo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    /// Detect from the folder.
    Auto,
    /// An image folder and a mask folder matched by file stem.
    Paired,
    /// PASCAL VOC: JPEGImages/, SegmentationClass(PNG)/, ImageSets/Segmentation/.
    Voc,
    /// YOLO segmentation labels: images/, labels/, data.yaml.
    Yolo,
    /// The built-in synthetic shapes; needs no files.
    Synthetic,
}

impl DataFormat {
    /// The value of `data.format` that selects this layout.
    pub fn key(self) -> &'static str {
        match self {
            DataFormat::Auto => "auto",
            DataFormat::Paired => "paired",
            DataFormat::Voc => "voc",
            DataFormat::Yolo => "yolo",
            DataFormat::Synthetic => "synthetic",
        }
    }
}

impl std::fmt::Display for DataFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DataFormat::Auto => "auto",
            DataFormat::Paired => "paired folders",
            DataFormat::Voc => "PASCAL VOC",
            DataFormat::Yolo => "YOLO segmentation",
            DataFormat::Synthetic => "synthetic",
        })
    }
}

/// The `[data]` section of a run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// auto (detected), paired, voc, yolo or synthetic.
    pub format: DataFormat,
    /// Dataset folder, relative to the config file; unused for synthetic data.
    pub root: String,
    /// The split to train on.
    pub train_split: String,
    /// The split to validate on.
    pub val_split: String,
    /// When the dataset has a single split, the last `val_fraction` of it (in file order) is
    /// held out for validation.
    pub val_fraction: f64,
    /// Mask file stem = image stem + this (Carvana: "_mask").
    pub mask_suffix: String,
    /// auto, index, palette, binary or rgb (auto: detected per mask).
    pub mask_encoding: MaskEncoding,
    /// Class names; empty: from the dataset (class_names.txt, data.yaml) or numbered.
    pub class_names: Vec<String>,
    /// Number of classes when no names are given anywhere (0: from the names).
    pub num_classes: usize,
    /// Label that counts nowhere (void): 255 in VOC, 11 in CamVid.
    pub ignore_index: u8,
    /// YOLO: -1 prepends a "background" class 0 and shifts the label ids by one; a class id
    /// keeps the ids and fills uncovered pixels with that class.
    pub yolo_background: i64,
    /// Synthetic data: image side in pixels.
    pub synth_size: usize,
    /// Synthetic data: training images.
    pub synth_train: usize,
    /// Synthetic data: validation images.
    pub synth_val: usize,
    /// Synthetic data: seed of the shapes.
    pub seed: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            format: DataFormat::Synthetic,
            root: String::new(),
            train_split: "train".into(),
            val_split: "val".into(),
            val_fraction: 0.2,
            mask_suffix: String::new(),
            mask_encoding: MaskEncoding::Auto,
            class_names: Vec::new(),
            num_classes: 0,
            ignore_index: 255,
            yolo_background: -1,
            synth_size: 64,
            synth_train: 256,
            synth_val: 64,
            seed: 42,
        }
    }
}

/// Where a sample's mask comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum MaskSource {
    File(PathBuf),
    /// A YOLO label file, rasterised at load time.
    Polygons(PathBuf),
    /// Synthetic sample number.
    Synthetic(u64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SampleRef {
    pub id: String,
    pub image: Option<PathBuf>,
    pub mask: MaskSource,
}

#[derive(Debug, Clone)]
pub struct Split {
    pub name: String,
    pub samples: Vec<SampleRef>,
    /// Files that could not be paired, as messages naming them.
    pub orphans: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub format: DataFormat,
    pub root: PathBuf,
    pub classes: ClassSet,
    pub encoding: MaskEncoding,
    pub splits: Vec<Split>,
    /// Where the class names came from, for reports.
    pub class_source: String,
    config: DataConfig,
    /// YOLO ids are shifted by this when rasterised.
    yolo_shift: u8,
    yolo_fill: u8,
}

const IMAGE_EXT: [&str; 7] = ["png", "jpg", "jpeg", "tif", "tiff", "bmp", "webp"];

fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXT.contains(&e.to_ascii_lowercase().as_str()))
}

fn stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Files in `dir` accepted by `keep`, sorted by name.
fn list(dir: &Path, keep: impl Fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let p = entry.path();
        if p.is_file() && keep(&p) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Pairs images and masks by stem (mask stem = image stem + suffix, or the same stem, or
/// + "_mask"); what does not pair is reported.
fn pair(images: Vec<PathBuf>, masks: Vec<PathBuf>, suffix: &str, polygons: bool) -> (Vec<SampleRef>, Vec<String>) {
    let mut by_stem: BTreeMap<String, PathBuf> = masks.into_iter().map(|m| (stem(&m), m)).collect();
    let mut samples = Vec::new();
    let mut orphans = Vec::new();
    for img in images {
        let s = stem(&img);
        let key =
            [format!("{s}{suffix}"), s.clone(), format!("{s}_mask")].into_iter().find(|k| by_stem.contains_key(k));
        match key.and_then(|k| by_stem.remove(&k)) {
            Some(m) => {
                let mask = if polygons { MaskSource::Polygons(m) } else { MaskSource::File(m) };
                samples.push(SampleRef { id: s, image: Some(img), mask });
            }
            None => orphans.push(format!("{}: image without mask", img.display())),
        }
    }
    for m in by_stem.into_values() {
        orphans.push(format!("{}: mask without image", m.display()));
    }
    (samples, orphans)
}

impl Dataset {
    /// Finds the dataset described by `config`; `root` is the resolved dataset folder.
    pub fn open(config: &DataConfig, root: &Path) -> Result<Dataset> {
        let format = match config.format {
            DataFormat::Auto => detect_format(root)?,
            f => f,
        };
        let mut ds = Dataset {
            format,
            root: root.to_path_buf(),
            classes: ClassSet::numbered(0, config.ignore_index),
            encoding: config.mask_encoding,
            splits: Vec::new(),
            class_source: "config".into(),
            config: config.clone(),
            yolo_shift: 0,
            yolo_fill: 0,
        };
        if format != DataFormat::Synthetic && !root.is_dir() {
            return Err(DataError::layout(root, "dataset folder not found"));
        }
        let mut names = config.class_names.clone();
        match format {
            DataFormat::Synthetic => {
                ds.classes = synth_classes();
                ds.class_source = "built-in synthetic classes".into();
                let n = [
                    (config.train_split.clone(), config.synth_train, 0u64),
                    (config.val_split.clone(), config.synth_val, 1 << 32),
                ];
                for (name, count, offset) in n {
                    let samples = (0..count as u64)
                        .map(|i| SampleRef {
                            id: format!("synth{:06}", offset + i),
                            image: None,
                            mask: MaskSource::Synthetic(offset + i),
                        })
                        .collect();
                    ds.splits.push(Split { name, samples, orphans: Vec::new() });
                }
                return Ok(ds);
            }
            DataFormat::Paired => ds.splits = paired_splits(root, &config.mask_suffix)?,
            DataFormat::Voc => {
                ds.splits = voc_splits(root)?;
                if names.is_empty() && !root.join("class_names.txt").exists() {
                    names = VOC_CLASSES.iter().map(|s| s.to_string()).collect();
                    ds.class_source = "the 20 PASCAL VOC classes and background".into();
                }
            }
            DataFormat::Yolo => {
                ds.splits = yolo_splits(root)?;
                let yaml = root.join("data.yaml");
                if names.is_empty() && yaml.exists() {
                    names = read_yaml_names(&yaml)?;
                    ds.class_source = yaml.display().to_string();
                }
                if config.yolo_background < 0 {
                    names.insert(0, "background".into());
                    ds.yolo_shift = 1;
                } else {
                    ds.yolo_fill = config.yolo_background as u8;
                }
            }
            DataFormat::Auto => unreachable!("resolved above"),
        }
        if names.is_empty() {
            let file = root.join("class_names.txt");
            if file.exists() {
                names = read_class_names(&file)?;
                ds.class_source = file.display().to_string();
            }
        }
        // The SegNet layout of CamVid (train/trainannot, val/valannot) carries no class list; its
        // 11 classes and void = 11 are a fixed convention, used when nothing else is given.
        let segnet_camvid = format == DataFormat::Paired && root.join("trainannot").is_dir() && config.num_classes == 0;
        if names.is_empty() && segnet_camvid {
            ds.classes = crate::classes::camvid_classes();
            if config.ignore_index != 255 {
                ds.classes.ignore_index = config.ignore_index;
            }
            ds.class_source = "CamVid's 11 classes, void 11 (SegNet layout detected)".into();
        } else if !names.is_empty() {
            ds.classes = ClassSet::new(names, config.ignore_index);
        } else if config.num_classes > 0 {
            ds.classes = ClassSet::numbered(config.num_classes, config.ignore_index);
            ds.class_source = format!("{} numbered classes (data.num_classes)", config.num_classes);
        } else if let Some((n, how)) = infer_classes(&ds.splits, config.mask_encoding, config.ignore_index) {
            ds.classes = ClassSet::numbered(n, config.ignore_index);
            ds.class_source = how;
        } else {
            return Err(DataError::layout(
                root,
                format!(
                    "no class names found: add class_names.txt to the dataset, set data.class_names or data.num_classes \
                     in the config, or pass --classes a,b,... or --num-classes N to `segkit data check`{}",
                    layout_hint(root, format, config.format)
                ),
            ));
        }
        if ds.splits.iter().all(|s| s.samples.is_empty()) {
            let hint = layout_hint(root, format, config.format);
            return Err(DataError::layout(root, format!("no image/mask pairs found ({format} layout){hint}")));
        }
        if matches!(format, DataFormat::Paired | DataFormat::Yolo) && root.join(SPLIT_LISTS).is_dir() {
            ds.splits = apply_split_lists(root, std::mem::take(&mut ds.splits))?;
        }
        Ok(ds)
    }

    /// The samples of split `name`. A dataset with one split serves the train and val splits
    /// from it: the last `val_fraction` (in file order) is val, the rest train.
    pub fn split(&self, name: &str) -> Result<Vec<SampleRef>> {
        if let Some(s) = self.splits.iter().find(|s| s.name == name) {
            return Ok(s.samples.clone());
        }
        if name == "val" {
            if let Some(s) = self.splits.iter().find(|s| s.name == "valid") {
                return Ok(s.samples.clone());
            }
        }
        if self.splits.len() == 1 && (name == self.config.train_split || name == self.config.val_split) {
            let all = &self.splits[0].samples;
            let n_val = ((all.len() as f64 * self.config.val_fraction).ceil() as usize)
                .clamp(1, all.len().saturating_sub(1).max(1));
            let cut = all.len() - n_val;
            return Ok(if name == self.config.train_split { all[..cut].to_vec() } else { all[cut..].to_vec() });
        }
        let have: Vec<&str> = self.splits.iter().map(|s| s.name.as_str()).collect();
        Err(DataError::layout(&self.root, format!("no split `{name}` (this dataset has: {})", have.join(", "))))
    }

    /// Loads one sample: image with `channels` channels and class-index labels of the same size.
    pub fn load(&self, sample: &SampleRef, channels: usize) -> Result<(ImageBuf, Vec<u8>)> {
        if let MaskSource::Synthetic(i) = sample.mask {
            return Ok(synth_sample(self.config.seed, i, self.config.synth_size, channels));
        }
        let image_path = sample.image.as_ref().expect("file samples have an image");
        let img = read_image(image_path, channels)?;
        let (w, h, labels) = match &sample.mask {
            MaskSource::File(p) => {
                let (w, h, l) = read_labels(p, self.encoding, &self.classes)?;
                (w, h, l)
            }
            MaskSource::Polygons(p) => {
                let n_yolo = self.classes.len() - self.yolo_shift as usize;
                // An image without a label file has no objects, as YOLO reads it.
                let mut polys = if p.exists() { yolo::read_labels(p, n_yolo)? } else { Vec::new() };
                for poly in &mut polys {
                    poly.class += self.yolo_shift;
                }
                (img.width, img.height, yolo::rasterize(&polys, img.width, img.height, self.yolo_fill))
            }
            MaskSource::Synthetic(_) => unreachable!(),
        };
        if (w, h) != (img.width, img.height) {
            let path = match &sample.mask {
                MaskSource::File(p) | MaskSource::Polygons(p) => p.clone(),
                MaskSource::Synthetic(_) => image_path.clone(),
            };
            return Err(DataError::SizeMismatch {
                path,
                image_w: img.width as u32,
                image_h: img.height as u32,
                mask_w: w as u32,
                mask_h: h as u32,
            });
        }
        Ok((img, labels))
    }
}

/// The number of classes from the masks themselves, when nothing names them: binary masks have
/// two; index and palette masks have the largest label (other than `ignore`) plus one, over the
/// first few masks. `None` for colour masks, which need a colour table.
fn infer_classes(splits: &[Split], encoding: MaskEncoding, ignore: u8) -> Option<(usize, String)> {
    let masks: Vec<&PathBuf> = splits
        .iter()
        .flat_map(|s| &s.samples)
        .filter_map(|s| if let MaskSource::File(p) = &s.mask { Some(p) } else { None })
        .take(16)
        .collect();
    let mut max = None::<u16>;
    let mut binary = true;
    for p in &masks {
        let raw = crate::mask::read_raw_mask(p).ok()?;
        let enc = if encoding == MaskEncoding::Auto { crate::mask::detect_encoding(&raw) } else { encoding };
        let values: Vec<u16> = match (&raw, enc) {
            (_, MaskEncoding::Binary) => continue,
            (crate::mask::RawMask::Gray { data, .. }, _) => data.clone(),
            (crate::mask::RawMask::Indexed { data, .. }, _) => data.iter().map(|&v| v as u16).collect(),
            (crate::mask::RawMask::Rgb { .. }, _) => return None,
        };
        // An all-background mask fits a binary dataset as well as an indexed one.
        if values.iter().all(|&v| v == 0 || v == 255) && encoding != MaskEncoding::Index {
            continue;
        }
        binary = false;
        let m = values.into_iter().filter(|&v| v != ignore as u16).max();
        max = max.max(m);
    }
    if masks.is_empty() {
        return None;
    }
    if binary {
        return Some((2, "2 classes: the masks are binary {0, 255} (add class_names.txt to name them)".into()));
    }
    let n = max? as usize + 1;
    (n <= 255).then(|| (n, format!("{n} numbered classes inferred from the largest label in the first {} masks (add class_names.txt to name them)", masks.len())))
}

pub const VOC_CLASSES: [&str; 21] = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// When the config forced `format` on a folder that holds another layout: which, and how to use
/// it (appended to the error); empty otherwise.
fn layout_hint(root: &Path, format: DataFormat, configured: DataFormat) -> String {
    match detect_format(root) {
        Ok(found) if found != format && configured != DataFormat::Auto => format!(
            "; the folder looks like the {found} layout: set data.format = \"{}\" (or \"auto\"), or train with --data {}",
            found.key(),
            root.display()
        ),
        _ => String::new(),
    }
}

/// The folder of split lists `segkit data split` writes: `train.txt`, `val.txt`, `test.txt`, one
/// sample id (the file stem) per line. When it exists, its lists are the dataset's splits.
pub const SPLIT_LISTS: &str = "splits";

/// The samples of `splits`, regrouped by the list files in `root/splits/`. An id that no sample
/// has, or that two samples share, is an error naming the list file.
fn apply_split_lists(root: &Path, splits: Vec<Split>) -> Result<Vec<Split>> {
    let dir = root.join(SPLIT_LISTS);
    let mut by_id: BTreeMap<String, SampleRef> = BTreeMap::new();
    let mut orphans = Vec::new();
    for s in splits {
        orphans.extend(s.orphans);
        for sample in s.samples {
            let id = sample.id.clone();
            if by_id.insert(id.clone(), sample).is_some() {
                return Err(DataError::layout(
                    &dir,
                    format!(
                        "two samples are called `{id}` (in different folders): split lists name samples by file stem, so stems must be unique"
                    ),
                ));
            }
        }
    }
    let mut lists: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| DataError::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    lists.sort();
    let mut out = Vec::new();
    for file in lists {
        let name = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        let text = std::fs::read_to_string(&file).map_err(|e| DataError::io(&file, e))?;
        let mut samples = Vec::new();
        for (i, id) in text.lines().map(str::trim).enumerate().filter(|(_, l)| !l.is_empty()) {
            let s = by_id
                .get(id)
                .ok_or_else(|| DataError::layout(&file, format!("line {}: no sample `{id}` in the dataset", i + 1)))?;
            samples.push(s.clone());
        }
        out.push(Split { name, samples, orphans: std::mem::take(&mut orphans) });
    }
    if out.is_empty() {
        return Err(DataError::layout(&dir, "no .txt split lists in it (run `segkit data split` again)"));
    }
    Ok(out)
}

/// Split lists for a dataset that comes as one folder: every sample, shuffled with `seed`, then
/// `val` and `test` fractions taken off (at least one each when asked for), the rest train.
/// Returns `(name, ids)` in the order train, val, test.
pub fn make_split_lists(ds: &Dataset, val: f64, test: f64, seed: u64) -> Result<Vec<(String, Vec<String>)>> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    if !(0.0..1.0).contains(&val) || !(0.0..1.0).contains(&test) || val + test >= 1.0 {
        return Err(DataError::layout(
            &ds.root,
            format!("--val {val} and --test {test}: fractions in [0, 1) that leave some training data"),
        ));
    }
    let mut ids: Vec<String> = ds.splits.iter().flat_map(|s| s.samples.iter().map(|x| x.id.clone())).collect();
    ids.sort();
    ids.dedup();
    ids.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let n = ids.len();
    let take = |f: f64| if f > 0.0 { ((n as f64 * f).round() as usize).max(1) } else { 0 };
    let (n_val, n_test) = (take(val), take(test));
    if n_val + n_test >= n {
        return Err(DataError::layout(
            &ds.root,
            format!("{n} samples: too few to split off {n_val} for val and {n_test} for test"),
        ));
    }
    let test_ids = ids.split_off(n - n_test);
    let val_ids = ids.split_off(ids.len() - n_val);
    let mut out = vec![("train".to_string(), ids), ("val".to_string(), val_ids)];
    if n_test > 0 {
        out.push(("test".to_string(), test_ids));
    }
    for (_, list) in &mut out {
        list.sort();
    }
    Ok(out)
}

/// Which layout a folder holds.
pub fn detect_format(root: &Path) -> Result<DataFormat> {
    if !root.is_dir() {
        return Err(DataError::layout(root, "dataset folder not found"));
    }
    if root.join("JPEGImages").is_dir() {
        return Ok(DataFormat::Voc);
    }
    let has_txt =
        |d: PathBuf| d.is_dir() && list(&d, |p| p.extension().is_some_and(|e| e == "txt")).is_ok_and(|v| !v.is_empty());
    if root.join("data.yaml").is_file()
        || has_txt(root.join("labels"))
        || ["train", "valid", "val"].iter().any(|s| has_txt(root.join(s).join("labels")))
    {
        return Ok(DataFormat::Yolo);
    }
    if !paired_candidates(root, "").is_empty() {
        return Ok(DataFormat::Paired);
    }
    Err(DataError::layout(
        root,
        "cannot tell the layout: expected image/label, images/masks, train/trainannot (+ val/valannot), \
         JPEGImages/SegmentationClass (VOC) or images/labels with data.yaml (YOLO); --format forces one",
    ))
}

const SPLITS: [&str; 4] = ["train", "val", "valid", "test"];

/// (split name, image folder, mask folder) triples found under `root`.
fn paired_candidates(root: &Path, _suffix: &str) -> Vec<(String, PathBuf, PathBuf)> {
    let mut out = Vec::new();
    for s in SPLITS {
        let img = root.join(s);
        for m in [format!("{s}annot"), format!("{s}_masks"), format!("{s}_labels"), format!("{s}label")] {
            if img.is_dir() && root.join(&m).is_dir() {
                out.push((s.to_string(), img.clone(), root.join(&m)));
                break;
            }
        }
        for (i, m) in [("images", "masks"), ("image", "label"), ("images", "labels"), ("img", "mask")] {
            if root.join(s).join(i).is_dir() && root.join(s).join(m).is_dir() {
                out.push((s.to_string(), root.join(s).join(i), root.join(s).join(m)));
                break;
            }
        }
    }
    if out.is_empty() {
        for (i, m) in [
            ("image", "label"),
            ("images", "masks"),
            ("images", "labels"),
            ("img", "mask"),
            ("imgs", "masks"),
            ("image", "mask"),
        ] {
            if root.join(i).is_dir() && root.join(m).is_dir() {
                out.push(("all".to_string(), root.join(i), root.join(m)));
                break;
            }
        }
    }
    out
}

fn paired_splits(root: &Path, suffix: &str) -> Result<Vec<Split>> {
    let cands = paired_candidates(root, suffix);
    if cands.is_empty() {
        return Err(DataError::layout(
            root,
            "no image/mask folder pair found (e.g. image/ + label/, train/ + trainannot/)",
        ));
    }
    cands
        .into_iter()
        .map(|(name, img_dir, mask_dir)| {
            let (samples, orphans) = pair(list(&img_dir, is_image)?, list(&mask_dir, is_image)?, suffix, false);
            Ok(Split { name, samples, orphans })
        })
        .collect()
}

fn voc_splits(root: &Path) -> Result<Vec<Split>> {
    let mask_dir = ["SegmentationClass", "SegmentationClassPNG"]
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.is_dir())
        .ok_or_else(|| DataError::layout(root, "VOC layout without SegmentationClass/ or SegmentationClassPNG/"))?;
    let img_dir = root.join("JPEGImages");
    let sets = root.join("ImageSets").join("Segmentation");
    let mut splits = Vec::new();
    for s in ["train", "val", "trainval", "test"] {
        let file = sets.join(format!("{s}.txt"));
        if !file.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&file).map_err(|e| DataError::io(&file, e))?;
        let mut samples = Vec::new();
        let mut orphans = Vec::new();
        for (i, id) in text.lines().map(str::trim).enumerate().filter(|(_, l)| !l.is_empty()) {
            let img = IMAGE_EXT.iter().map(|e| img_dir.join(format!("{id}.{e}"))).find(|p| p.is_file());
            let mask = mask_dir.join(format!("{id}.png"));
            match (img, mask.is_file()) {
                (Some(img), true) => {
                    samples.push(SampleRef { id: id.into(), image: Some(img), mask: MaskSource::File(mask) })
                }
                (None, _) => orphans.push(format!("{}:{}: image {id} not found in JPEGImages/", file.display(), i + 1)),
                (_, false) => orphans.push(format!("{}:{}: mask {} not found", file.display(), i + 1, mask.display())),
            }
        }
        splits.push(Split { name: s.into(), samples, orphans });
    }
    if splits.is_empty() {
        let (samples, orphans) = pair(list(&img_dir, is_image)?, list(&mask_dir, is_image)?, "", false);
        // Without ImageSets, JPEGImages may hold many unlabelled images: only masks define samples.
        let orphans = orphans.into_iter().filter(|o| !o.ends_with("image without mask")).collect();
        splits.push(Split { name: "all".into(), samples, orphans });
    }
    Ok(splits)
}

fn yolo_splits(root: &Path) -> Result<Vec<Split>> {
    let mut cands: Vec<(String, PathBuf, PathBuf)> = Vec::new();
    for s in SPLITS {
        if root.join(s).join("images").is_dir() && root.join(s).join("labels").is_dir() {
            cands.push((s.into(), root.join(s).join("images"), root.join(s).join("labels")));
        } else if root.join("images").join(s).is_dir() && root.join("labels").join(s).is_dir() {
            cands.push((s.into(), root.join("images").join(s), root.join("labels").join(s)));
        }
    }
    if cands.is_empty() && root.join("images").is_dir() && root.join("labels").is_dir() {
        cands.push(("all".into(), root.join("images"), root.join("labels")));
    }
    if cands.is_empty() {
        return Err(DataError::layout(root, "YOLO layout without images/ and labels/ folders"));
    }
    cands
        .into_iter()
        .map(|(name, img_dir, lbl_dir)| {
            let labels = list(&lbl_dir, |p| p.extension().is_some_and(|e| e == "txt"))?;
            let (samples, orphans) = pair(list(&img_dir, is_image)?, labels, "", true);
            // An image without a label file is an image with no objects, as YOLO reads it.
            let mut samples = samples;
            let mut kept = Vec::new();
            for o in orphans {
                if let Some(img) = o.strip_suffix(": image without mask") {
                    let img = PathBuf::from(img);
                    let empty = lbl_dir.join(format!("{}.txt", stem(&img)));
                    samples.push(SampleRef { id: stem(&img), image: Some(img), mask: MaskSource::Polygons(empty) });
                } else {
                    kept.push(o);
                }
            }
            samples.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(Split { name, samples, orphans: kept })
        })
        .collect()
}
