//! `segkit import`: published PyTorch weights into segkit.

use std::path::PathBuf;

use anyhow::{Result, bail};
use segkit_models::ModelKind;
use segkit_train::import::{import_fcn, import_vgg16};

#[derive(clap::Args)]
pub struct Args {
    /// vgg16 (torchvision ImageNet VGG16 -> FCN trunk), or fcn32s / fcn16s / fcn8s / fcn8s-atonce
    /// (pytorch-fcn state dicts, e.g. fcn8s_from_caffe.pth).
    kind: String,
    /// A PyTorch .pth state dict, or a .safetensors file with the same names.
    file: PathBuf,
    /// Output file (.safetensors).
    #[arg(short = 'o', long)]
    out: PathBuf,
    /// FCN: class names, comma-separated (default: the 21 VOC classes for 21-class models).
    #[arg(long, value_delimiter = ',')]
    classes: Vec<String>,
}

pub fn run(a: Args) -> Result<i32> {
    if a.kind == "vgg16" {
        let (n, base, fc) = import_vgg16(&a.file, &a.out)?;
        println!("wrote {n} trunk tensors (conv1_1 ... fc7; base width {base}, fc width {fc}) to {}", a.out.display());
        println!(
            "use it with: --set train.backbone_weights={:?} --set augment.normalize=\"imagenet\"",
            a.out.display().to_string()
        );
        return Ok(0);
    }
    let Some(kind) = ModelKind::parse(&a.kind).filter(|k| k.is_fcn()) else {
        bail!("unknown kind `{}`: expected vgg16, fcn32s, fcn16s, fcn8s or fcn8s-atonce", a.kind);
    };
    let names = (!a.classes.is_empty()).then(|| a.classes.clone());
    let n = import_fcn(kind, &a.file, &a.out, names)?;
    println!(
        "wrote {kind} ({n} tensors, Caffe BGR input normalisation) to {}; segkit eval/predict take it",
        a.out.display()
    );
    Ok(0)
}
