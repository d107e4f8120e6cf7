//! `segkit compare`: several runs evaluated on the same split with the same code, as a table
//! (`report.md`, `report.csv`) and as pictures (`curves.png`, `per_class_iou.png`, `samples.png`).
//!
//! Mean IoU gets a bootstrap 95% interval over images (1000 resamples of the split's images,
//! each resample's matrices summed), so that differences within noise read as such.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use segkit_data::{Dataset, ImageBuf};

use crate::bench::peak_rss_mb;
use crate::config::RunConfig;
use crate::eval::{EvalOptions, evaluate, load_run};
use crate::metrics::{ConfusionMatrix, Scores};
use crate::plot::{self, Canvas, Series};
use crate::{TrainError, write_atomic};

/// One run's figures.
pub struct RunResult {
    pub name: String,
    pub dir: PathBuf,
    pub model: String,
    pub scores: Scores,
    pub miou_ci: (f64, f64),
    pub parameters: usize,
    pub gflop: f64,
    pub input_hw: (usize, usize),
    pub ms_per_image: f64,
    pub peak_memory_mb: f64,
    /// Step of the evaluated checkpoint (the best by validation mean IoU).
    pub evaluated_step: usize,
    pub train_steps: usize,
    pub train_seconds: f64,
    pub history: Vec<crate::checkpoint::MetricsRow>,
    pub predictions: Vec<Vec<u8>>,
    /// The ISBI 2012 challenge's pixel and Rand error, for two-class data.
    pub isbi: Option<crate::isbi::IsbiScores>,
}

pub struct Comparison {
    pub runs: Vec<RunResult>,
    pub classes: Vec<String>,
    pub colors: Vec<[u8; 3]>,
    pub split: String,
    pub images: usize,
    pub data: String,
    pub device: String,
    /// Image, ground truth of the sample images.
    pub samples: Vec<(ImageBuf, Vec<u8>)>,
    pub notes: Vec<String>,
}

/// Bootstrap 95% interval of the mean IoU over images.
pub fn bootstrap_miou(per_image: &[ConfusionMatrix], resamples: usize, seed: u64) -> (f64, f64) {
    if per_image.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = per_image[0].n;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut values: Vec<f64> = (0..resamples)
        .map(|_| {
            let mut cm = ConfusionMatrix::new(n);
            for _ in 0..per_image.len() {
                cm.merge(&per_image[rng.random_range(0..per_image.len())]);
            }
            cm.scores().mean_iou
        })
        .filter(|v| v.is_finite())
        .collect();
    values.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (at(0.025), at(0.975))
}

/// A run's name in reports: its directory's name, or for a checkpoint file inside a run
/// directory `RUN/STEM` (`unet-isbi2012-cpu/last`), so that two runs' `last.safetensors` differ.
fn run_name(path: &Path) -> String {
    let base = |p: &Path| p.file_name().map(|s| s.to_string_lossy().into_owned());
    if path.is_file() {
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(dir) = path.parent().filter(|d| d.join("config.toml").is_file()).and_then(base) {
            return format!("{dir}/{stem}");
        }
    }
    base(path).unwrap_or_else(|| path.display().to_string())
}

/// Evaluates `runs` on `split` of the first run's dataset (or `data_root`), on `device`.
pub fn compare(
    runs: &[PathBuf],
    data_root: Option<&Path>,
    split: &str,
    samples: usize,
    limit: usize,
    opts: EvalOptions,
    device: &Device,
    device_desc: &str,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Comparison, TrainError> {
    if runs.is_empty() {
        return Err(TrainError::Config("no runs to compare".into()));
    }
    let mut notes = Vec::new();
    if device_desc.starts_with("CPU") {
        notes.push("peak memory on the CPU is the process's peak RSS after evaluating each run, so it can only grow down the table".into());
    }
    // The data is the first run's (or `data_root`), opened once that run is loaded.
    let mut data: Option<(segkit_data::DataConfig, Dataset, Vec<segkit_data::SampleRef>)> = None;
    let mut out = Vec::new();
    let mut kept_samples = Vec::new();
    for dir in runs {
        let loaded = load_run(dir, device)?;
        if data.is_none() {
            let mut data_cfg = loaded.config.data.clone();
            if let Some(root) = data_root {
                data_cfg.root = root.display().to_string();
            }
            let ds = Dataset::open(&data_cfg, Path::new(&data_cfg.root))?;
            let mut split_samples = ds.split(split)?;
            if limit > 0 && split_samples.len() > limit {
                notes.push(format!("evaluated on the first {limit} of {} images of the split", split_samples.len()));
                split_samples.truncate(limit);
            }
            data = Some((data_cfg, ds, split_samples));
        }
        let (data_cfg, ds, split_samples) = data.as_ref().expect("opened above");
        if loaded.classes.names.len() != ds.classes.len() {
            return Err(TrainError::Config(format!(
                "{} has {} classes, the dataset {}: runs compared must share the classes",
                dir.display(),
                loaded.classes.names.len(),
                ds.classes.len()
            )));
        }
        let mut cfg: RunConfig = loaded.config.clone();
        cfg.data = data_cfg.clone();
        let name = run_name(dir);
        let mut model = loaded.model.clone();
        if opts.bn_recalibrate > 0 {
            let (m, used) = crate::bnstats::recalibrated_model(dir, &cfg, ds, opts.bn_recalibrate, device)?;
            if used > 0 {
                model = m;
                notes.push(format!("{name}: batch-norm statistics recalibrated on {used} training images"));
            }
        }
        let pass = evaluate(&model, &cfg, ds, split_samples, device, None, samples, opts.tta, &mut |d, t| {
            progress(&name, d, t)
        })?;
        if opts.tta {
            notes.push(format!(
                "{name}: test-time augmentation, the mean of {} views per image (its ms per image counts them all)",
                pass.views
            ));
        }
        let (h, w) = pass.input_hw;
        let summary = loaded.model.summary(&cfg.model, [cfg.model.in_channels, h, w])?;
        let peak = match device.memory_pool_usage() {
            Some(u) if !device_desc.starts_with("CPU") => u.bytes_reserved as f64 / (1024.0 * 1024.0),
            _ => peak_rss_mb().unwrap_or(f64::NAN),
        };
        // Training figures from the whole run (its last checkpoint), not from the evaluated one.
        let state = match dir.join("last.safetensors") {
            last if dir.is_dir() && last.is_file() => crate::checkpoint::Checkpoint::read_meta(&last)?.2,
            _ => loaded.state.clone(),
        };
        if kept_samples.is_empty() {
            kept_samples = pass.kept.iter().map(|(img, gt, _)| (img.clone(), gt.clone())).collect();
        }
        out.push(RunResult {
            name,
            dir: dir.clone(),
            model: cfg.model.model.name().to_string(),
            scores: pass.cm.scores(),
            miou_ci: bootstrap_miou(&pass.per_image, 1000, 7),
            parameters: summary.parameters,
            gflop: summary.forward_gflop,
            input_hw: (h, w),
            ms_per_image: pass.forward_s * 1e3 / split_samples.len().max(1) as f64,
            peak_memory_mb: peak,
            evaluated_step: loaded.state.step,
            train_steps: state.step,
            train_seconds: state.elapsed_s,
            history: state.history,
            predictions: pass.kept.into_iter().map(|(_, _, p)| p).collect(),
            isbi: pass.isbi.as_ref().map(|a| a.scores()),
        });
    }
    let (data_cfg, ds, split_samples) = data.expect("at least one run");
    Ok(Comparison {
        runs: out,
        classes: ds.classes.names.clone(),
        colors: ds.classes.colors.clone(),
        split: split.to_string(),
        images: split_samples.len(),
        data: if data_cfg.root.is_empty() { data_cfg.format.to_string() } else { data_cfg.root.clone() },
        device: device_desc.to_string(),
        samples: kept_samples,
        notes,
    })
}

fn f4(v: f64) -> String {
    if v.is_finite() { format!("{v:.4}") } else { "-".into() }
}

fn signed(v: f64) -> String {
    if v.is_finite() { format!("{v:+.4}") } else { "-".into() }
}

impl Comparison {
    /// Writes report.md, report.csv, curves.png, per_class_iou.png and samples.png into `out`.
    pub fn write(&self, out: &Path) -> Result<Vec<PathBuf>, TrainError> {
        std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
        let mut csv = String::from(
            "run,model,pixel_acc,mean_acc,mean_iou,mean_iou_ci_low,mean_iou_ci_high,fw_iou,mean_dice,parameters,gflop,input_h,input_w,ms_per_image,peak_memory_mb,evaluated_step,train_steps,train_seconds",
        );
        for c in &self.classes {
            let _ = write!(csv, ",iou_{c}");
        }
        let isbi = self.runs.iter().any(|r| r.isbi.is_some());
        if isbi {
            csv.push_str(concat!(
                ",isbi_pixel_error,isbi_pixel_threshold,isbi_pixel_error_at_half,isbi_misclassification",
                ",isbi_rand_error,isbi_rand_threshold,isbi_rand_error_at_half"
            ));
        }
        csv.push('\n');
        for r in &self.runs {
            let s = &r.scores;
            let _ = write!(
                csv,
                "{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{},{:.2},{},{},{:.2},{:.0},{},{},{:.0}",
                r.name,
                r.model,
                s.pixel_acc,
                s.mean_acc,
                s.mean_iou,
                r.miou_ci.0,
                r.miou_ci.1,
                s.fw_iou,
                s.mean_dice,
                r.parameters,
                r.gflop,
                r.input_hw.0,
                r.input_hw.1,
                r.ms_per_image,
                r.peak_memory_mb,
                r.evaluated_step,
                r.train_steps,
                r.train_seconds
            );
            for v in &s.class_iou {
                let _ = write!(csv, ",{}", v.map_or(String::new(), |v| format!("{v:.6}")));
            }
            match (&r.isbi, isbi) {
                (Some(i), _) => {
                    let _ = write!(
                        csv,
                        ",{:.6},{:.1},{:.6},{:.6},{:.6},{:.1},{:.6}",
                        i.pixel_error,
                        i.pixel_threshold,
                        i.pixel_error_at_half,
                        i.misclassification,
                        i.rand_error,
                        i.rand_threshold,
                        i.rand_error_at_half
                    );
                }
                (None, true) => csv.push_str(",,,,,,,"),
                (None, false) => {}
            }
            csv.push('\n');
        }
        let mut md = format!(
            "# Comparison\n\nData: `{}`, split `{}` ({} images), evaluated on {} with the same code for every run.\n\n",
            self.data, self.split, self.images, self.device
        );
        for n in &self.notes {
            let _ = writeln!(md, "Note: {n}.\n");
        }
        md.push_str("| run | model | pixel acc | mean acc | mean IoU (95% CI) | fw IoU | mean Dice | parameters | GFLOP (input) | ms/image | peak MiB | evaluated step | train steps | train time |\n");
        md.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
        for r in &self.runs {
            let s = &r.scores;
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} ({}-{}) | {} | {} | {} | {:.1} ({}x{}) | {:.1} | {:.0} | {} | {} | {:.0} s |",
                r.name,
                r.model,
                f4(s.pixel_acc),
                f4(s.mean_acc),
                f4(s.mean_iou),
                f4(r.miou_ci.0),
                f4(r.miou_ci.1),
                f4(s.fw_iou),
                f4(s.mean_dice),
                r.parameters,
                r.gflop,
                r.input_hw.0,
                r.input_hw.1,
                r.ms_per_image,
                r.peak_memory_mb,
                r.evaluated_step,
                r.train_steps,
                r.train_seconds
            );
        }
        if self.runs.len() > 1 {
            let base = &self.runs[0];
            let _ = writeln!(md, "\n## Differences against `{}`\n", base.name);
            md.push_str("| run | pixel acc | mean acc | mean IoU | fw IoU | mean Dice | within noise? |\n| --- | --- | --- | --- | --- | --- | --- |\n");
            for r in &self.runs[1..] {
                let (a, b) = (&r.scores, &base.scores);
                // Overlapping 95% intervals: the difference is not established on this split.
                let overlap = r.miou_ci.0 <= base.miou_ci.1 && base.miou_ci.0 <= r.miou_ci.1;
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    r.name,
                    signed(a.pixel_acc - b.pixel_acc),
                    signed(a.mean_acc - b.mean_acc),
                    signed(a.mean_iou - b.mean_iou),
                    signed(a.fw_iou - b.fw_iou),
                    signed(a.mean_dice - b.mean_dice),
                    if overlap { "yes: the mean-IoU intervals overlap" } else { "no" }
                );
            }
        }
        if self.runs.iter().any(|r| r.isbi.is_some()) {
            md.push_str(
                "\n## ISBI 2012 challenge figures\n\nAs the challenge defines them (`crate::isbi`): pixel error is 1 - \
                 the F-score of pixel similarity (cell pixels positive), Rand error 1 - the F-score of the \
                 foreground-restricted Rand index, each at the best threshold of the sweep on the cell \
                 probability and at 0.5, the network's decision. Misclassification is the fraction of wrong \
                 pixels at 0.5 (1 - pixel accuracy), not a challenge figure.\n\n\
                 | run | pixel error (threshold) | pixel error at 0.5 | misclassification | Rand error (threshold) | Rand error at 0.5 |\n\
                 | --- | --- | --- | --- | --- | --- |\n",
            );
            for r in &self.runs {
                if let Some(i) = &r.isbi {
                    let _ = writeln!(
                        md,
                        "| {} | {} ({:.1}) | {} | {} | {} ({:.1}) | {} |",
                        r.name,
                        f4(i.pixel_error),
                        i.pixel_threshold,
                        f4(i.pixel_error_at_half),
                        f4(i.misclassification),
                        f4(i.rand_error),
                        i.rand_threshold,
                        f4(i.rand_error_at_half)
                    );
                }
            }
        }
        md.push_str("\n## IoU per class\n\n| class |");
        for r in &self.runs {
            let _ = write!(md, " {} |", r.name);
        }
        md.push_str("\n| --- |");
        for _ in &self.runs {
            md.push_str(" --- |");
        }
        md.push('\n');
        for (k, c) in self.classes.iter().enumerate() {
            let _ = write!(md, "| {c} |");
            for r in &self.runs {
                let _ = write!(
                    md,
                    " {} |",
                    r.scores.class_iou.get(k).copied().flatten().map_or("-".into(), |v| format!("{v:.4}"))
                );
            }
            md.push('\n');
        }
        md.push_str("\n![curves](curves.png)\n\n![per-class IoU](per_class_iou.png)\n\n![samples](samples.png)\n");

        let mut written = Vec::new();
        let mut put = |name: &str, bytes: &[u8]| -> Result<(), TrainError> {
            let p = out.join(name);
            write_atomic(&p, bytes)?;
            written.push(p);
            Ok(())
        };
        put("report.md", md.as_bytes())?;
        put("report.csv", csv.as_bytes())?;
        put("curves.png", &self.curves().png_bytes())?;
        let series: Vec<(String, Vec<Option<f64>>)> =
            self.runs.iter().map(|r| (r.name.clone(), r.scores.class_iou.clone())).collect();
        put("per_class_iou.png", &plot::bar_chart("IoU per class", &self.classes, &series).png_bytes())?;
        if !self.samples.is_empty() {
            put("samples.png", &self.samples_grid().png_bytes())?;
        }
        Ok(written)
    }

    fn curves(&self) -> Canvas {
        let series = |f: fn(&crate::checkpoint::MetricsRow) -> f64| -> Vec<Series> {
            self.runs
                .iter()
                .enumerate()
                .map(|(i, r)| Series {
                    name: r.name.clone(),
                    color: plot::SERIES[i % plot::SERIES.len()],
                    points: r.history.iter().map(|h| (h.step as f64, f(h))).collect(),
                })
                .collect()
        };
        let top = plot::line_chart(
            "Validation mean IoU",
            "optimiser step",
            "mean IoU",
            &series(|h| h.mean_iou),
            Some((0.0, 1.0)),
        );
        let bottom = plot::line_chart("Training loss", "optimiser step", "loss", &series(|h| h.train_loss), None);
        let mut c = Canvas::new(top.width, top.height + bottom.height, [255, 255, 255]);
        for (img, y0) in [(&top, 0), (&bottom, top.height)] {
            for y in 0..img.height {
                let (s, d) = (y * img.width * 3, (y0 + y) * c.width * 3);
                c.rgb[d..d + img.width * 3].copy_from_slice(&img.rgb[s..s + img.width * 3]);
            }
        }
        c
    }

    fn samples_grid(&self) -> Canvas {
        let mut columns = vec!["image".to_string(), "ground truth".to_string()];
        columns.extend(self.runs.iter().map(|r| r.name.clone()));
        let rows: Vec<Vec<ImageBuf>> = self
            .samples
            .iter()
            .enumerate()
            .map(|(i, (img, gt))| {
                let mut row = vec![img.clone(), plot::colorize(gt, img.width, img.height, &self.colors)];
                for r in &self.runs {
                    if let Some(p) = r.predictions.get(i) {
                        row.push(plot::colorize(p, img.width, img.height, &self.colors));
                    }
                }
                row
            })
            .collect();
        let cell = self.samples[0].0.height.clamp(96, 200);
        let grid = plot::image_grid(&columns, &rows, cell);
        // A legend of the class colours under the grid.
        let legend_rows = self.classes.len().div_ceil(4);
        let mut c = Canvas::new(grid.width.max(4 * 150), grid.height + 14 * legend_rows + 10, [255, 255, 255]);
        for y in 0..grid.height {
            let (s, d) = (y * grid.width * 3, y * c.width * 3);
            c.rgb[d..d + grid.width * 3].copy_from_slice(&grid.rgb[s..s + grid.width * 3]);
        }
        for (k, name) in self.classes.iter().enumerate() {
            let (x, y) = (6 + (k % 4) * 150, grid.height + 4 + (k / 4) * 14);
            c.rect(x as isize, y as isize, 10, 10, self.colors.get(k).copied().unwrap_or([0, 0, 0]));
            c.text(x as isize + 14, y as isize + 2, name, [0, 0, 0], 1);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_interval_brackets_the_estimate() {
        let mut imgs = Vec::new();
        for k in 0..20u64 {
            let mut cm = ConfusionMatrix::new(2);
            cm.counts = vec![50 + k, 5, 3 + k % 4, 40];
            imgs.push(cm);
        }
        let mut all = ConfusionMatrix::new(2);
        for m in &imgs {
            all.merge(m);
        }
        let (lo, hi) = bootstrap_miou(&imgs, 500, 1);
        let est = all.scores().mean_iou;
        assert!(lo <= est && est <= hi && lo < hi, "{lo} {est} {hi}");
        // One image repeated: no spread.
        let (lo, hi) = bootstrap_miou(&imgs[..1], 100, 1);
        assert_eq!(lo, hi);
    }

    #[test]
    fn checkpoint_files_are_named_by_their_run() {
        let dir = std::env::temp_dir().join(format!("segkit-compare-names-{}", std::process::id()));
        let run = dir.join("fcn8s-run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("config.toml"), "").unwrap();
        std::fs::write(run.join("last.safetensors"), "").unwrap();
        std::fs::write(dir.join("model.safetensors"), "").unwrap();
        assert_eq!(run_name(&run), "fcn8s-run");
        assert_eq!(run_name(&run.join("last.safetensors")), "fcn8s-run/last");
        // A file that is not in a run directory keeps its own name.
        assert_eq!(run_name(&dir.join("model.safetensors")), "model.safetensors");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn run(name: &str, isbi: Option<crate::isbi::IsbiScores>) -> RunResult {
        let mut cm = ConfusionMatrix::new(2);
        cm.counts = vec![30, 10, 5, 55];
        RunResult {
            name: name.into(),
            dir: PathBuf::from(name),
            model: "unet".into(),
            scores: cm.scores(),
            miou_ci: (0.5, 0.7),
            parameters: 10,
            gflop: 1.0,
            input_hw: (8, 8),
            ms_per_image: 1.0,
            peak_memory_mb: 1.0,
            evaluated_step: 5,
            train_steps: 10,
            train_seconds: 2.0,
            history: Vec::new(),
            predictions: Vec::new(),
            isbi,
        }
    }

    /// The ISBI section and columns appear when a run has the challenge's figures, with a
    /// run that lacks them given empty cells, not shifted columns; without any, neither appears.
    #[test]
    fn reports_carry_the_isbi_figures_of_the_runs_that_have_them() {
        let scores = crate::isbi::IsbiScores {
            pixel_error: 0.0512,
            pixel_threshold: 0.4,
            pixel_error_at_half: 0.0531,
            misclassification: 0.0947,
            rand_error: 0.4447,
            rand_threshold: 0.9,
            rand_error_at_half: 0.6946,
            cell_class: 1,
            images: 5,
        };
        let check = |runs: Vec<RunResult>, md_has: &[&str], md_lacks: &[&str], csv_rows: &[&str]| {
            let out = std::env::temp_dir().join(format!("segkit-compare-isbi-{}-{}", std::process::id(), runs.len()));
            let cmp = Comparison {
                runs,
                classes: vec!["membrane".into(), "cell".into()],
                colors: vec![[0, 0, 0], [255, 255, 255]],
                split: "val".into(),
                images: 5,
                data: "isbi".into(),
                device: "CPU".into(),
                samples: Vec::new(),
                notes: Vec::new(),
            };
            cmp.write(&out).unwrap();
            let md = std::fs::read_to_string(out.join("report.md")).unwrap();
            let csv = std::fs::read_to_string(out.join("report.csv")).unwrap();
            for s in md_has {
                assert!(md.contains(s), "report.md lacks {s:?}:\n{md}");
            }
            for s in md_lacks {
                assert!(!md.contains(s), "report.md has {s:?}:\n{md}");
            }
            let lines: Vec<&str> = csv.lines().collect();
            let width = lines[0].split(',').count();
            assert!(lines.iter().all(|l| l.split(',').count() == width), "ragged csv:\n{csv}");
            for (line, tail) in lines.iter().zip(csv_rows) {
                assert!(line.ends_with(tail), "{line:?} should end with {tail:?}");
            }
            let _ = std::fs::remove_dir_all(&out);
        };
        check(
            vec![run("plain", Some(scores.clone())), run("other", None)],
            &["## ISBI 2012 challenge figures", "| plain | 0.0512 (0.4) | 0.0531 | 0.0947 | 0.4447 (0.9) | 0.6946 |"],
            &["| other | 0."],
            &[
                "isbi_misclassification,isbi_rand_error,isbi_rand_threshold,isbi_rand_error_at_half",
                ",0.051200,0.4,0.053100,0.094700,0.444700,0.9,0.694600",
                ",,,,,,,",
            ],
        );
        check(vec![run("a", None)], &["| a | unet |"], &["ISBI"], &["iou_cell"]);
    }
}
