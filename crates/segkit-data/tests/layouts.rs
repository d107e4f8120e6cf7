//! Every supported layout, generated in a temporary folder, opened, checked and loaded.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use segkit_data::check::check;
use segkit_data::image_io::{ImageBuf, write_palette_png, write_png};
use segkit_data::mask::decode_png;
use segkit_data::{AugmentConfig, DataConfig, DataError, DataFormat, Dataset, LoaderSpec, MaskEncoding, Window};

/// A fresh empty folder under the system temp dir, unique per test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("segkit-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rgb(w: usize, h: usize, v: u8) -> ImageBuf {
    ImageBuf { width: w, height: h, channels: 3, data: vec![v; w * h * 3] }
}

fn gray(w: usize, h: usize, f: impl Fn(usize, usize) -> u8) -> ImageBuf {
    let mut data = Vec::new();
    for y in 0..h {
        for x in 0..w {
            data.push(f(x, y));
        }
    }
    ImageBuf { width: w, height: h, channels: 1, data }
}

fn mkdirs(root: &Path, dirs: &[&str]) {
    for d in dirs {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
}

fn auto() -> DataConfig {
    DataConfig { format: DataFormat::Auto, ..DataConfig::default() }
}

#[test]
fn camvid_style_paired_folders() {
    let root = scratch("camvid");
    mkdirs(&root, &["train", "trainannot", "val", "valannot"]);
    for (split, n) in [("train", 3), ("val", 2)] {
        for i in 0..n {
            write_png(&root.join(split).join(format!("f{i}.png")), &rgb(8, 6, 100)).unwrap();
            // Class-index masks 0..3 with a void band of 11 (CamVid's void).
            let m = gray(8, 6, |x, _| if x == 7 { 11 } else { (x % 4) as u8 });
            write_png(&root.join(format!("{split}annot")).join(format!("f{i}.png")), &m).unwrap();
        }
    }
    // An image without a mask is reported, not fatal.
    write_png(&root.join("train").join("lonely.png"), &rgb(8, 6, 1)).unwrap();
    let cfg = DataConfig { ignore_index: 11, num_classes: 4, ..auto() };
    let ds = Dataset::open(&cfg, &root).unwrap();
    assert_eq!(ds.format, DataFormat::Paired);
    assert_eq!(ds.split("train").unwrap().len(), 3);
    assert_eq!(ds.split("val").unwrap().len(), 2);
    let (img, labels) = ds.load(&ds.split("val").unwrap()[0], 3).unwrap();
    assert_eq!((img.width, img.height, labels.len()), (8, 6, 48));
    assert_eq!(&labels[..8], &[0, 1, 2, 3, 0, 1, 2, 11]);
    let report = check(&ds, 3, |_, _| {});
    assert_eq!(report.splits[0].pairs, 3);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].contains("lonely.png") && report.problems[0].contains("without mask"));
    assert_eq!(report.splits[0].encodings.keys().next().unwrap(), &MaskEncoding::Index.to_string());
    // Void (index 11) is counted separately from the 4 classes.
    assert_eq!(report.splits[0].class_pixels[4], 3 * 6);
    // Without any class information, the SegNet layout is taken for CamVid: 11 classes, void 11.
    let ds = Dataset::open(&auto(), &root).unwrap();
    assert_eq!((ds.classes.len(), ds.classes.ignore_index), (11, 11));
    assert!(ds.class_source.contains("CamVid"));
}

#[test]
fn isbi_style_binary_masks_and_size_mismatch() {
    let root = scratch("isbi");
    mkdirs(&root, &["image", "label"]);
    for i in 0..4 {
        write_png(&root.join("image").join(format!("{i:02}.png")), &gray(10, 10, |x, _| x as u8 * 20)).unwrap();
        write_png(&root.join("label").join(format!("{i:02}.png")), &gray(10, 10, |x, _| if x < 5 { 0 } else { 255 }))
            .unwrap();
    }
    // A mask of the wrong size.
    write_png(&root.join("label").join("03.png"), &gray(9, 10, |_, _| 0)).unwrap();
    // Unnamed binary masks are two classes.
    let ds = Dataset::open(&auto(), &root).unwrap();
    assert_eq!(ds.classes.len(), 2);
    assert!(ds.class_source.contains("binary"), "{}", ds.class_source);
    let cfg = DataConfig { class_names: vec!["membrane".into(), "cell".into()], val_fraction: 0.25, ..auto() };
    let ds = Dataset::open(&cfg, &root).unwrap();
    // One split: the last quarter is held out for validation.
    assert_eq!(ds.split("train").unwrap().len(), 3);
    let val = ds.split("val").unwrap();
    assert_eq!(val.len(), 1);
    let (_, labels) = ds.load(&ds.split("train").unwrap()[0], 1).unwrap();
    assert_eq!(&labels[..10], &[0, 0, 0, 0, 0, 1, 1, 1, 1, 1]);
    match ds.load(&val[0], 1) {
        Err(DataError::SizeMismatch { path, .. }) => assert!(path.ends_with("03.png")),
        other => panic!("expected a size mismatch, got {other:?}"),
    }
    let report = check(&ds, 1, |_, _| {});
    assert!(
        report.problems.iter().any(|p| p.contains("03.png") && p.contains("10x10") && p.contains("9x10")),
        "{:?}",
        report.problems
    );
    assert!(report.splits[0].encodings.contains_key(&MaskEncoding::Binary.to_string()));
}

#[test]
fn voc_palette_masks_keep_indices() {
    let root = scratch("voc");
    mkdirs(&root, &["JPEGImages", "SegmentationClassPNG", "ImageSets/Segmentation"]);
    let colors: Vec<[u8; 3]> = (0..21u8).map(segkit_data::classes::voc_color).collect();
    for id in ["a", "b"] {
        let img = image::RgbImage::from_pixel(6, 4, image::Rgb([10, 20, 30]));
        img.save(root.join("JPEGImages").join(format!("{id}.jpg"))).unwrap();
        let labels: Vec<u8> = (0..24).map(|i| if i % 6 == 5 { 255 } else { (i % 3) as u8 * 7 }).collect();
        write_palette_png(&root.join("SegmentationClassPNG").join(format!("{id}.png")), 6, 4, &labels, &colors)
            .unwrap();
    }
    std::fs::write(root.join("ImageSets/Segmentation/train.txt"), "a\n").unwrap();
    std::fs::write(root.join("ImageSets/Segmentation/val.txt"), "b\nmissing\n").unwrap();
    let ds = Dataset::open(&auto(), &root).unwrap();
    assert_eq!(ds.format, DataFormat::Voc);
    assert_eq!(ds.classes.len(), 21);
    let (_, labels) = ds.load(&ds.split("train").unwrap()[0], 3).unwrap();
    assert_eq!(&labels[..6], &[0, 7, 14, 0, 7, 255]);
    let report = check(&ds, 3, |_, _| {});
    assert!(report.problems.iter().any(|p| p.contains("val.txt:2") && p.contains("missing")), "{:?}", report.problems);
}

#[test]
fn yolo_polygons_are_rasterised() {
    let root = scratch("yolo");
    mkdirs(&root, &["train/images", "train/labels"]);
    std::fs::write(root.join("data.yaml"), "names: ['crack', 'hole']\nnc: 2\n").unwrap();
    write_png(&root.join("train/images/x.png"), &rgb(10, 10, 50)).unwrap();
    // A square over the left half (class 0 = crack), then a later polygon (hole) over it.
    std::fs::write(root.join("train/labels/x.txt"), "0 0 0 0.5 0 0.5 1 0 1\n1 0 0 0.2 0 0.2 0.2 0 0.2\n").unwrap();
    write_png(&root.join("train/images/y.png"), &rgb(10, 10, 50)).unwrap();
    std::fs::write(root.join("train/labels/y.txt"), "0 0.1 0.1 0.2\n5 0 0 1 0 1 1\n").unwrap();
    let ds = Dataset::open(&auto(), &root).unwrap();
    assert_eq!(ds.format, DataFormat::Yolo);
    assert_eq!(ds.classes.names, vec!["background", "crack", "hole"]);
    let train = ds.split("train").unwrap();
    let (_, labels) = ds.load(&train[0], 3).unwrap();
    assert_eq!(labels[0], 2, "later lines win");
    assert_eq!(labels[5 * 10 + 3], 1);
    assert_eq!(labels[5 * 10 + 8], 0, "uncovered pixels are background");
    let err = ds.load(&train[1], 3).unwrap_err().to_string();
    assert!(err.contains("y.txt:1"), "{err}");
    let report = check(&ds, 3, |_, _| {});
    assert!(report.problems.iter().any(|p| p.contains("y.txt:1")), "{:?}", report.problems);
}

#[test]
fn undetectable_folder_is_a_clear_error() {
    let root = scratch("empty");
    let err = Dataset::open(&auto(), &root).unwrap_err().to_string();
    assert!(err.contains("cannot tell the layout"), "{err}");
    let err = Dataset::open(&auto(), &root.join("nope")).unwrap_err().to_string();
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn loader_is_deterministic_and_resumable() {
    let cfg = DataConfig { synth_train: 12, synth_val: 2, synth_size: 24, ..DataConfig::default() };
    let ds = Arc::new(Dataset::open(&cfg, Path::new("")).unwrap());
    let samples = Arc::new(ds.split("train").unwrap());
    let spec = |workers| LoaderSpec {
        dataset: ds.clone(),
        samples: samples.clone(),
        augment: AugmentConfig {
            crop: 16,
            scale_min: 0.8,
            scale_max: 1.2,
            brightness: 0.1,
            ..AugmentConfig::default()
        },
        window: Some(Window { input: 16, output: 16 }),
        mirror: false,
        channels: 3,
        batch_size: 4,
        seed: 5,
        border: None,
        workers,
        prefetch: 2,
    };
    let all = |s: &LoaderSpec, start| s.epoch(1, start).map(|(k, b)| (k, b.unwrap().labels)).collect::<Vec<_>>();
    let one = all(&spec(1), 0);
    assert_eq!(one.len(), 3);
    assert_eq!(one, all(&spec(3), 0), "same batches whatever the number of workers");
    assert_eq!(&one[1..], &all(&spec(2), 1)[..], "a loader started at batch 1 continues exactly");
    let (x, y) = spec(1).build(1, &spec(1).order(1), 0).unwrap().to_device(&burn::prelude::Device::flex());
    assert_eq!((x.dims(), y.dims()), ([4, 3, 16, 16], [4, 16, 16]));
    assert_ne!(all(&spec(1), 0), spec(1).epoch(2, 0).map(|(k, b)| (k, b.unwrap().labels)).collect::<Vec<_>>());
}

#[test]
fn garbage_png_is_an_error() {
    assert!(decode_png(b"not a png").is_err());
    assert!(decode_png(&[]).is_err());
}
