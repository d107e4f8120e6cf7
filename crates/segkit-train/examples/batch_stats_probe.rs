//! How much of a run's validation error is batch norm's statistics: the first N validation
//! images evaluated with the checkpoint's running statistics, then each with its own batch
//! statistics (the model on an autodiff device, where batch norm normalises by the batch).
//! docs/RESULTS.md quotes it; it is a measurement, not a way to predict.
//!
//! `batch_stats_probe RUN_DIR_OR_CHECKPOINT DATA_ROOT N`
use burn::prelude::*;
use segkit_data::Dataset;
use segkit_train::eval::{evaluate, load_run};
use std::path::PathBuf;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let run = PathBuf::from(&args[1]);
    let root = PathBuf::from(&args[2]);
    let n: usize = args[3].parse().unwrap();
    for (name, device) in [("running", Device::flex()), ("batch", Device::flex().autodiff())] {
        let loaded = load_run(&run, &device).unwrap();
        let mut cfg = loaded.config.clone();
        cfg.data.root = root.display().to_string();
        let ds = Dataset::open(&cfg.data, &root).unwrap();
        let mut samples = ds.split("val").unwrap();
        samples.truncate(n);
        let pass = evaluate(&loaded.model, &cfg, &ds, &samples, &device, None, 0, false, &mut |_, _| {}).unwrap();
        let s = pass.cm.scores();
        print!("{name}: pixel acc {:.4} miou {:.4} loss {:.4}", s.pixel_acc, s.mean_iou, pass.loss);
        match pass.isbi.as_ref().map(|a| a.scores()) {
            Some(i) => println!(
                " ISBI pixel error {:.4} ({:.1}) Rand error {:.4} ({:.1})",
                i.pixel_error, i.pixel_threshold, i.rand_error, i.rand_threshold
            ),
            None => println!(),
        }
    }
}
