//! `segkit summary`: the per-layer table and the totals.

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use segkit_models::{ModelConfig, ModelKind, SegModel};

#[derive(clap::Args)]
pub struct Args {
    /// fcn32s, fcn16s, fcn8s, fcn8s-atonce or unet.
    #[arg(long)]
    model: String,
    /// Number of classes (default: 21 for FCN, as PASCAL VOC; 2 for U-Net).
    #[arg(long)]
    classes: Option<usize>,
    /// Input channels (default: 3 for FCN, 1 for U-Net).
    #[arg(long)]
    in_channels: Option<usize>,
    /// Input size, H or HxW (default: 500 for FCN, 572 for U-Net).
    #[arg(long)]
    size: Option<String>,
    /// Width of the first level (64 in the papers).
    #[arg(long, default_value_t = 64)]
    base_width: usize,
    /// U-Net: "same" convolutions instead of the paper's unpadded ones.
    #[arg(long)]
    padded: bool,
    /// Batch norm after each convolution (U-Net) or each VGG trunk convolution (FCN).
    #[arg(long)]
    batch_norm: bool,
    /// U-Net depth (number of poolings).
    #[arg(long, default_value_t = 4)]
    depth: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn parse_size(s: &str) -> Result<(usize, usize)> {
    let parse = |v: &str| match v.trim().parse::<usize>() {
        Ok(0) => bail!("bad size `{s}`: sizes are at least 1 pixel"),
        r => r.with_context(|| format!("bad size `{s}`: expected H or HxW")),
    };
    match s.split_once(['x', 'X']) {
        Some((h, w)) => Ok((parse(h)?, parse(w)?)),
        None => {
            let v = parse(s)?;
            Ok((v, v))
        }
    }
}

pub fn run(a: Args) -> Result<i32> {
    let Some(kind) = ModelKind::parse(&a.model) else {
        bail!("unknown model `{}`: expected one of fcn32s, fcn16s, fcn8s, fcn8s-atonce, unet", a.model);
    };
    let unet = kind == ModelKind::Unet;
    let mut cfg = ModelConfig::paper(kind, a.classes.unwrap_or(if unet { 2 } else { 21 }));
    if let Some(c) = a.in_channels {
        cfg.in_channels = c;
    }
    cfg.base_width = a.base_width;
    cfg.padded = a.padded;
    cfg.batch_norm = a.batch_norm;
    cfg.depth = a.depth;
    let (h, w) = parse_size(a.size.as_deref().unwrap_or(if unet { "572" } else { "500" }))?;
    // Parameters are counted without allocating them: the model is built lazily on the CPU.
    let device = Device::flex();
    let model = SegModel::new(&cfg, &device)?;
    let s = model.summary(&cfg, [cfg.in_channels, h, w])?;
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(0);
    }
    println!("{} ({} classes, {} input channels), input {}x{}", kind, cfg.classes, cfg.in_channels, h, w);
    println!("{:<16} {:<10} {:>22} {:>14} {:>12}", "layer", "kind", "output (C x H x W)", "parameters", "GFLOP");
    for l in &s.layers {
        let shape = format!("{} x {} x {}", l.output[0], l.output[1], l.output[2]);
        let flops = if l.flops > 0 { format!("{:.3}", l.flops as f64 / 1e9) } else { String::new() };
        let params = if l.params > 0 { group(l.params) } else { String::new() };
        println!("{:<16} {:<10} {:>22} {:>14} {:>12}", l.name, l.kind, shape, params, flops);
    }
    println!();
    println!("output shape          {:?}", s.output_shape);
    println!("parameters            {}", group(s.parameters));
    println!("trainable parameters  {}", group(s.trainable_parameters));
    println!("forward GFLOP         {:.1} (one image; multiply-add = 2 FLOP)", s.forward_gflop);
    Ok(0)
}

/// 134489759 -> "134,489,759".
pub fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
