//! `segkit export`: weights under PyTorch state-dict names (safetensors), or the whole model as an
//! ONNX graph, both with self-describing metadata.

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::prelude::*;
use segkit_train::model_file::open_model;
use segkit_train::onnx::{DEFAULT_OPSET, OnnxOptions, export_onnx};

#[derive(clap::Args)]
pub struct Args {
    /// A run directory (its best checkpoint), a checkpoint, an exported file, or a PyTorch state
    /// dict under the reference names.
    run: PathBuf,
    /// safetensors or onnx (default: from the extension of -o, else safetensors).
    #[arg(long)]
    format: Option<String>,
    /// Store the weights as f16 (ONNX: cast to f32 in the graph, so every runtime runs it).
    #[arg(long)]
    half: bool,
    /// ONNX: the opset to write (13 to 21).
    #[arg(long, default_value_t = DEFAULT_OPSET)]
    opset: i64,
    /// ONNX: a second output `mask`, the arg-max class per pixel (int64 [N, H, W]).
    #[arg(long)]
    argmax: bool,
    #[arg(short = 'o', long)]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<i32> {
    let by_extension = a.out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let format = a.format.clone().unwrap_or_else(|| match by_extension.as_deref() {
        Some("onnx") => "onnx".into(),
        _ => "safetensors".into(),
    });
    let onnx = match format.as_str() {
        "onnx" => true,
        "safetensors" => false,
        f => bail!("unknown format `{f}`: expected safetensors or onnx"),
    };
    if !onnx && (a.argmax || a.opset != DEFAULT_OPSET) {
        bail!("--argmax and --opset apply to --format onnx only");
    }
    let loaded = open_model(&a.run, &Device::flex())?;
    for note in &loaded.notes {
        eprintln!("note: {note}");
    }
    let source = format!("{} (step {})", loaded.checkpoint.display(), loaded.step);
    if onnx {
        let o = OnnxOptions { opset: a.opset, half: a.half, argmax: a.argmax };
        let s = export_onnx(&loaded.model, &loaded.config, &loaded.classes, &a.out, &o)?;
        println!(
            "wrote {} ONNX (opset {}, {} nodes, {} weight tensors, {:.1}M parameters as {}, {:.1} MB; outputs: logits{}) of {source} to {}",
            loaded.config.model.model,
            a.opset,
            s.nodes,
            s.weights,
            s.parameters as f64 / 1e6,
            if a.half { "f16" } else { "f32" },
            s.bytes as f64 / 1e6,
            if a.argmax { ", mask" } else { "" },
            a.out.display()
        );
        println!("input sizes: {}", s.input_size_rule);
        return Ok(0);
    }
    let n = segkit_train::export::export(&loaded.model, &loaded.config, &loaded.classes, &a.out, a.half)?;
    println!(
        "wrote {} tensors ({}, PyTorch state-dict names) of {source} to {}",
        n,
        if a.half { "f16" } else { "f32" },
        a.out.display()
    );
    Ok(0)
}
