//! `segkit data check` and `segkit data synth`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use segkit_data::check::check;
use segkit_data::image_io::{write_palette_png, write_png};
use segkit_data::synth::{synth_classes, synth_sample};
use segkit_data::{DataConfig, DataFormat, Dataset, MaskEncoding};
use segkit_train::RunConfig;

use crate::progress;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Read a whole dataset (a folder, or a run config) and report counts, sizes, mask encoding,
    /// class frequencies and every problem found. Exit status 1 when there are problems.
    Check(CheckArgs),
    /// Write the built-in synthetic data to disk as a paired-folders dataset.
    Synth(SynthArgs),
    /// Split a dataset that comes as one folder into train/val(/test): writes list files under
    /// DIR/splits/ (sample ids, one per line), moves nothing; training then uses them.
    Split(SplitArgs),
}

#[derive(clap::Args)]
pub struct SplitArgs {
    /// Dataset folder (image/mask folders or YOLO).
    dataset: PathBuf,
    /// Fraction for validation.
    #[arg(long, default_value_t = 0.2)]
    val: f64,
    /// Fraction for a test split (0: none).
    #[arg(long, default_value_t = 0.0)]
    test: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Replace existing split lists.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Dataset folder or run config (.toml).
    dataset: PathBuf,
    /// Force the layout: paired, voc, yolo.
    #[arg(long)]
    format: Option<String>,
    /// Mask encoding: auto, index, palette, binary, rgb.
    #[arg(long)]
    mask_encoding: Option<String>,
    /// The void label (VOC 255, CamVid 11).
    #[arg(long)]
    ignore_index: Option<u8>,
    /// Number of classes, when the dataset has no class_names.txt or data.yaml.
    #[arg(long)]
    num_classes: Option<usize>,
    /// Class names, comma-separated (e.g. CamVid's sky,building,...); overrides the dataset's.
    #[arg(long, value_delimiter = ',')]
    classes: Vec<String>,
    /// Read images with this many channels.
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct SynthArgs {
    /// Output folder (created).
    #[arg(long)]
    out: PathBuf,
    /// Training images.
    #[arg(long, default_value_t = 200)]
    count: usize,
    /// Validation images (default: a quarter of --count).
    #[arg(long)]
    val_count: Option<usize>,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn parse_enum<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).with_context(|| format!("bad {what} `{s}`"))
}

pub fn run(c: Command) -> Result<i32> {
    match c {
        Command::Check(a) => run_check(a),
        Command::Synth(a) => run_synth(a),
        Command::Split(a) => run_split(a),
    }
}

fn run_split(a: SplitArgs) -> Result<i32> {
    use segkit_data::layout::{SPLIT_LISTS, make_split_lists};
    let dir = a.dataset.join(SPLIT_LISTS);
    if dir.exists() && !a.force {
        anyhow::bail!("{}: split lists exist already; --force replaces them", dir.display());
    }
    let cfg = DataConfig { format: DataFormat::Auto, ..DataConfig::default() };
    // With --force the samples of the current splits (the old lists') are pooled and split again.
    let ds = Dataset::open(&cfg, &a.dataset)?;
    let non_empty: Vec<&str> = ds.splits.iter().filter(|s| !s.samples.is_empty()).map(|s| s.name.as_str()).collect();
    if non_empty.len() > 1 && !a.force {
        let names = non_empty;
        anyhow::bail!(
            "{}: already split ({}); --force pools and splits them again",
            a.dataset.display(),
            names.join(", ")
        );
    }
    let lists = make_split_lists(&ds, a.val, a.test, a.seed)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, ids) in &lists {
        let file = dir.join(format!("{name}.txt"));
        segkit_train::write_atomic(&file, ids.iter().map(|i| format!("{i}\n")).collect::<String>().as_bytes())?;
        println!("{}: {} samples", file.display(), ids.len());
    }
    println!(
        "training on {} now uses these splits (data.train_split = \"train\", data.val_split = \"val\")",
        a.dataset.display()
    );
    Ok(0)
}

fn run_check(a: CheckArgs) -> Result<i32> {
    let (cfg, root, channels) = if a.dataset.extension().is_some_and(|e| e == "toml") {
        let rc = RunConfig::load(&a.dataset, &[])?;
        let root = PathBuf::from(&rc.data.root);
        (rc.data, root, rc.model.in_channels)
    } else {
        let mut cfg = DataConfig { format: DataFormat::Auto, ..DataConfig::default() };
        if let Some(f) = &a.format {
            cfg.format = parse_enum("format", f)?;
        }
        if let Some(e) = &a.mask_encoding {
            cfg.mask_encoding = parse_enum::<MaskEncoding>("mask encoding", e)?;
        }
        if let Some(i) = a.ignore_index {
            cfg.ignore_index = i;
        }
        if let Some(n) = a.num_classes {
            cfg.num_classes = n;
        }
        cfg.class_names = a.classes.clone();
        (cfg, a.dataset.clone(), a.channels)
    };
    let ds = Dataset::open(&cfg, &root)?;
    let total: usize = ds.splits.iter().map(|s| s.samples.len()).sum();
    let bar = progress::bar(total as u64, "checking");
    let report = check(&ds, channels, |done, _| bar.set_position(done as u64));
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(i32::from(report.has_errors()));
    }
    println!(
        "{}: {} layout, {} classes, ignore index {}",
        report.root,
        report.format,
        report.classes.len(),
        report.ignore_index
    );
    println!("classes from: {}", report.class_source);
    for s in &report.splits {
        println!();
        println!("split {}: {} pairs", s.name, s.pairs);
        let sizes: Vec<String> = s.sizes.iter().map(|(k, v)| format!("{k} ({v})")).collect();
        println!("  image sizes:    {}", sizes.join(", "));
        let enc: Vec<String> = s.encodings.iter().map(|(k, v)| format!("{k} ({v})")).collect();
        println!("  mask encoding:  {}", enc.join(", "));
        let total: u64 = s.class_pixels.iter().sum();
        if total > 0 {
            println!("  class pixel frequency:");
            for (i, &n) in s.class_pixels.iter().enumerate() {
                let name = report.classes.get(i).cloned().unwrap_or_else(|| format!("void ({})", report.ignore_index));
                println!("    {:>3} {:<20} {:>7.3}%  {}", i.min(255), name, 100.0 * n as f64 / total as f64, n);
            }
        }
    }
    println!();
    if report.problems.is_empty() {
        println!("no problems found");
    } else {
        println!("{} problem(s):", report.problems.len());
        for p in &report.problems {
            println!("  {p}");
        }
    }
    Ok(i32::from(report.has_errors()))
}

fn run_synth(a: SynthArgs) -> Result<i32> {
    let classes = synth_classes();
    let val = a.val_count.unwrap_or(a.count / 4);
    for (split, count, offset) in [("train", a.count, 0u64), ("val", val, 1u64 << 32)] {
        let (img_dir, mask_dir) = (a.out.join(split).join("images"), a.out.join(split).join("masks"));
        for d in [&img_dir, &mask_dir] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let bar = progress::bar(count as u64, split);
        for i in 0..count as u64 {
            let (img, mask) = synth_sample(a.seed, offset + i, a.size, 3);
            let name = format!("synth{:06}.png", i);
            write_png(&img_dir.join(&name), &img)?;
            write_palette_png(&mask_dir.join(&name), img.width, img.height, &mask, &classes.colors)?;
            bar.inc(1);
        }
        bar.finish_and_clear();
    }
    let names = a.out.join("class_names.txt");
    std::fs::write(&names, classes.names.join("\n") + "\n").with_context(|| format!("writing {}", names.display()))?;
    println!(
        "wrote {} training and {} validation images ({}x{}, classes: {}) to {}",
        a.count,
        val,
        a.size,
        a.size,
        classes.names.join(", "),
        display(&a.out)
    );
    Ok(0)
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
