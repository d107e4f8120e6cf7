//! `segkit config show`: the complete resolved config with each key's documentation.

use std::path::PathBuf;

use anyhow::{Context, Result};
use segkit_models::ModelKind;
use segkit_train::RunConfig;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the complete resolved config, a comment above each key: of a config file, of a run
    /// directory (its stored config.toml), or with --model, that model's default recipe.
    Show(ShowArgs),
}

#[derive(clap::Args)]
pub struct ShowArgs {
    /// A config file or a run directory; none: the recipe of --model (default unet).
    path: Option<PathBuf>,
    /// unet, fcn8s, fcn16s, fcn32s or fcn8s-atonce.
    #[arg(long)]
    model: Option<String>,
    /// Override a key before printing, as `segkit train --set`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

pub fn run(c: Command) -> Result<i32> {
    let Command::Show(a) = c;
    let mut overrides = Vec::new();
    if let Some(m) = &a.model {
        let kind = ModelKind::parse(m)
            .with_context(|| format!("--model {m}: expected unet, fcn8s, fcn16s, fcn32s or fcn8s-atonce"))?;
        overrides.push(format!("model.model={:?}", kind.name()));
    }
    overrides.extend(a.set.iter().cloned());
    let cfg = match &a.path {
        Some(dir) if dir.is_dir() => RunConfig::load_stored(&dir.join("config.toml"), &overrides)?,
        Some(file) => RunConfig::load(file, &overrides)?,
        None => {
            let kind = a.model.as_deref().and_then(ModelKind::parse).unwrap_or(ModelKind::Unet);
            // The recipe needs a dataset; --data sets it when training.
            overrides.push("data.root=\"DATASET (--data)\"".into());
            RunConfig::recipe(kind, &overrides)?
        }
    };
    print!("{}", cfg.annotated_toml());
    Ok(0)
}
