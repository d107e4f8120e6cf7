//! `segkit`: train, evaluate and inspect FCN and U-Net segmentation models.
//!
//! A thin layer over the libraries: argument parsing, printing, progress bars and Ctrl-C. Only
//! this crate prints; one file per subcommand.

mod alloc;
mod bench;
mod compare;
mod config;
mod data;
mod device;
mod eval;
mod export;
mod import;
mod logging;
mod pipe;
mod predict;
mod progress;
mod selftest;
mod summary;
mod train;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "segkit", version, about = "Train FCN-32s/16s/8s and U-Net semantic segmentation from scratch (Burn)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How convolutions run on a GPU: `gemm`, im2col and Burn's tuned matrix multiply for the
    /// forward pass and both gradients, or `burn`, Burn's own convolution kernels; `auto` (the
    /// default): gemm on a hardware GPU, burn on a software adapter (docs/GPU.md, "Convolution
    /// kernels"). No effect on the CPU.
    #[arg(long, global = true, value_parser = ["auto", "gemm", "burn"])]
    gpu_conv: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Per-layer table, parameters and forward FLOPs of a model.
    Summary(summary::Args),
    /// Check a dataset, or write the built-in synthetic data to disk.
    #[command(subcommand)]
    Data(data::Command),
    /// The complete resolved config, each key documented.
    #[command(subcommand)]
    Config(config::Command),
    /// Train a model (no CONFIG: the quick start on built-in synthetic data).
    Train(train::Args),
    /// Masks, overlays and per-object JSON for images or folders.
    Predict(predict::Args),
    /// Write a run's model as safetensors (PyTorch state-dict names) or ONNX (any runtime).
    Export(export::Args),
    /// Evaluate runs side by side: report.md, report.csv, curves, per-class IoU, samples.
    Compare(compare::Args),
    /// Import PyTorch weights: torchvision VGG16 as the FCN trunk, or pytorch-fcn FCN models.
    Import(import::Args),
    /// Time training or inference steps (median ms/step, images/s, TFLOP/s, peak memory).
    Bench(bench::Args),
    /// Check the GPU path against the CPU: forward, gradients, training, resume and predict.
    Selftest(selftest::Args),
    /// Internal: open a device in a child process (see device.rs).
    #[command(name = "__probe-device", hide = true)]
    ProbeDevice(device::ProbeArgs),
    /// Evaluate a run's checkpoint on a split: the four FCN metrics, Dice and per-class IoU.
    Eval(eval::Args),
}

fn main() {
    // Before anything allocates a tensor or starts a thread (see alloc.rs).
    alloc::tune_for_tensors();
    pipe::exit_on_closed_stdout();
    logging::from_env();
    let cli = Cli::parse();
    if let Some(choice) = cli.gpu_conv.as_deref().and_then(segkit_models::conv::GpuConv::parse) {
        segkit_models::conv::set_gpu_conv(choice);
    }
    let result = match cli.command {
        Command::Summary(a) => summary::run(a),
        Command::Data(c) => data::run(c),
        Command::Train(a) => train::run(a),
        Command::Config(c) => config::run(c),
        Command::Eval(a) => eval::run(a),
        Command::ProbeDevice(a) => device::probe_child(a),
        Command::Bench(a) => bench::run(a),
        Command::Selftest(a) => selftest::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Export(a) => export::run(a),
        Command::Import(a) => import::run(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
