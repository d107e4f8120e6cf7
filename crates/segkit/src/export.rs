//! `segkit export`: weights under PyTorch state-dict names, with self-describing metadata.

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::prelude::*;
use segkit_train::eval::load_run;
use segkit_train::export::export;

#[derive(clap::Args)]
pub struct Args {
    /// A run directory (its best checkpoint) or a checkpoint file.
    run: PathBuf,
    /// Only safetensors is written.
    #[arg(long, default_value = "safetensors")]
    format: String,
    /// Store f16 instead of f32.
    #[arg(long)]
    half: bool,
    #[arg(short = 'o', long)]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<i32> {
    if a.format != "safetensors" {
        bail!("unknown format `{}`: only safetensors is supported", a.format);
    }
    let loaded = load_run(&a.run, &Device::flex())?;
    let n = export(&loaded.model, &loaded.config, &loaded.classes, &a.out, a.half)?;
    println!(
        "wrote {} tensors ({}, {}) of {} (step {}) to {}",
        n,
        if a.half { "f16" } else { "f32" },
        "PyTorch state-dict names",
        loaded.checkpoint.display(),
        loaded.step,
        a.out.display()
    );
    Ok(0)
}
