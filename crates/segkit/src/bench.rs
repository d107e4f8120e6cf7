//! `segkit bench`: timed training or inference steps; figures for docs/BENCHMARKS.md.

use anyhow::{Result, bail};
use segkit_models::{ModelConfig, ModelKind};
use segkit_train::amp::Precision;
use segkit_train::bench::{self, Mode};
use segkit_train::device;

use crate::progress;
use crate::summary::parse_size;

#[derive(clap::Args)]
pub struct Args {
    /// fcn32s, fcn16s, fcn8s, fcn8s-atonce or unet.
    #[arg(long, default_value = "")]
    model: String,
    /// Input size, H or HxW.
    #[arg(long)]
    size: String,
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    batch: usize,
    /// Classes (default 21 for FCN, 2 for U-Net).
    #[arg(long, value_parser = at_least_one)]
    classes: Option<usize>,
    /// Input channels (default 3 for FCN, 1 for U-Net).
    #[arg(long, value_parser = at_least_one)]
    in_channels: Option<usize>,
    /// Width of the first level (64 = the paper's model).
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    base_width: usize,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Use the GPU without checking it against the CPU first, even if it failed the check
    /// before: at your own risk, its results may be wrong.
    #[arg(long)]
    trust_device: bool,
    /// Timed steps.
    #[arg(long, default_value_t = 10, value_parser = at_least_one)]
    steps: usize,
    /// Untimed warm-up steps (autotune, kernel compilation).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// f32 or f16-mixed (f16 compute with f32 master weights and a loss scale, as
    /// `train.precision`; inference runs f16 activations). The CPU runs f32.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16-mixed"])]
    precision: String,
    /// train (forward + loss + backward + SGD update) or infer.
    #[arg(long, default_value = "train")]
    mode: String,
    /// Print the figures as one JSON object on the last line.
    #[arg(long)]
    json: bool,
    /// Instead of a model: one 3x3 convolution with this many channels in and out, at --size,
    /// against the matrix product of the same FLOPs.
    #[arg(long, value_name = "CHANNELS", value_parser = at_least_one)]
    conv: Option<usize>,
    /// Use Burn's own convolution and max pooling (forward and gradients) on the CPU instead of
    /// segkit's (segkit_models::cpu_conv, cpu_pool), to measure the difference in one binary.
    #[arg(long, alias = "burn-kernels")]
    burn_conv: bool,
    /// Keep segkit's CPU kernels but compute 3x3 layers with the direct convolution instead of
    /// Winograd F(2x2, 3x3) (segkit_models::cpu_winograd), to measure the difference.
    #[arg(long)]
    no_winograd: bool,
}

/// Counts and sizes on the command line: a zero would only reach the kernels as a panic.
fn at_least_one(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("expected a whole number: {e}")),
    }
}

pub fn run(a: Args) -> Result<i32> {
    segkit_models::cpu_conv::set_enabled(!a.burn_conv);
    segkit_models::cpu_winograd::set_enabled(!a.no_winograd);
    if let Some(c) = a.conv {
        let (h, _) = parse_size(&a.size)?;
        let (dev, desc) = device::select(&crate::device::vet(&a.device, &crate::device::Use::none(a.trust_device))?)?;
        let p = bench::conv_probe(&dev, a.batch, c, c, h, a.warmup, a.steps);
        println!("conv 3x3 {c}->{c} at {h}x{h}, batch {} on {desc}: {:.2} GFLOP per forward", a.batch, p.gflop);
        println!("conv forward            {:8.1} ms  {:6.1} GFLOP/s", p.conv_forward_ms, p.conv_forward_gflops);
        println!(
            "conv forward+backward   {:8.1} ms  {:6.1} GFLOP/s (3x forward FLOPs)",
            p.conv_train_ms, p.conv_train_gflops
        );
        let g = p.gflop;
        println!(
            "  segkit's forward      {:8.1} ms  {:6.1} GFLOP/s",
            p.conv_forward_segkit_ms,
            g / (p.conv_forward_segkit_ms / 1e3)
        );
        println!(
            "  segkit's conv layer   {:8.1} ms  {:6.1} GFLOP/s (forward+backward, cpu_conv.rs)",
            p.conv_train_segkit_ms,
            3.0 * g / (p.conv_train_segkit_ms / 1e3)
        );
        println!("  input gradient alone  {:8.1} ms  {:6.1} GFLOP/s", p.input_grad_ms, g / (p.input_grad_ms / 1e3));
        println!("  weight gradient alone {:8.1} ms  {:6.1} GFLOP/s", p.weight_grad_ms, g / (p.weight_grad_ms / 1e3));
        println!("matmul, same FLOPs      {:8.1} ms  {:6.1} GFLOP/s", p.matmul_ms, p.matmul_gflops);
        if a.json {
            println!("{}", serde_json::to_string(&p)?);
        }
        return Ok(0);
    }
    let Some(kind) = ModelKind::parse(&a.model) else { bail!("unknown model `{}`", a.model) };
    let mode = match a.mode.as_str() {
        "train" => Mode::Train,
        "infer" => Mode::Infer,
        m => bail!("unknown mode `{m}`: expected train or infer"),
    };
    let unet = kind == ModelKind::Unet;
    let mut cfg = ModelConfig::paper(kind, a.classes.unwrap_or(if unet { 2 } else { 21 }));
    if let Some(c) = a.in_channels {
        cfg.in_channels = c;
    }
    cfg.base_width = a.base_width;
    cfg.fc_width = 4096 * a.base_width / 64;
    let size = parse_size(&a.size)?;
    let usage = match mode {
        Mode::Train => crate::device::Use::train([kind], a.trust_device),
        Mode::Infer => crate::device::Use::infer([kind], a.trust_device),
    };
    let (dev, desc) = device::select(&crate::device::vet(&a.device, &usage)?)?;
    let bar = progress::bar((a.warmup + a.steps) as u64, "bench");
    let precision = if a.precision == "f16-mixed" { Precision::F16Mixed } else { Precision::F32 };
    let r = bench::run(&cfg, size, a.batch, mode, precision, a.warmup, a.steps, &dev, &desc, |d, _| {
        bar.set_position(d as u64)
    })?;
    bar.finish_and_clear();
    println!("{} {:?} batch {} at {}x{} on {}", r.model, r.mode, r.batch, r.height, r.width, r.device);
    println!("median        {:.1} ms/step over {} steps ({} warm-up)", r.ms_per_step, r.steps, r.warmup);
    println!("throughput    {:.2} images/s", r.images_per_s);
    println!("compute       {:.3} TFLOP/s ({:.1} GFLOP per step)", r.tflops, r.gflop_per_step);
    println!("peak memory   {:.0} MiB ({})", r.peak_memory_mb, r.memory_source);
    println!(
        "kernels       {} precision, convolutions: {}{}",
        r.precision,
        r.gpu_conv,
        if r.peak_im2col_mb > 0.0 { format!(" (largest im2col chunk {:.0} MiB)", r.peak_im2col_mb) } else { String::new() }
    );
    if let Some([f, b, o]) = r.phase_ms {
        println!(
            "phases        forward + loss {f:.1} ms, backward {b:.1} ms, optimiser {o:.1} ms (median, synchronised between)"
        );
    }
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(0)
}
