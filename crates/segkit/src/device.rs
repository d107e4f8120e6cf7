//! Opening a GPU safely. A GPU driver can crash the process (SIGSEGV) while compiling compute
//! kernels, which no error handling can catch: Mesa's llvmpipe does so on one of Burn's kernels,
//! and lavapipe did on cubecl 0.11.3's SPIR-V before `patches/cubecl-spirv` (docs/GPU.md). So before a GPU device is used, a child `segkit` process opens it and runs a
//! tiny training step; only if the child survives does this process use the device.

use std::process::Command;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::prelude::*;
use segkit_models::{ModelConfig, ModelKind, SegModel};

/// The hidden `__probe-device NAME` command: open the device and run a tiny training step.
pub fn probe_child(name: &str) -> Result<i32> {
    let (device, desc) = segkit_train::device::select(name)?;
    let mut cfg = ModelConfig::paper(ModelKind::Unet, 2);
    (cfg.base_width, cfg.depth, cfg.padded, cfg.in_channels) = (2, 1, true, 1);
    let ad = device.autodiff();
    let model = SegModel::new(&cfg, &ad)?;
    let x = Tensor::<4>::ones([1, 1, 8, 8], &ad);
    let grads = model.forward(x).sum().backward();
    let _ = burn::optim::GradientsParams::from_grads(grads, &model);
    let _ = model.num_params();
    println!("{desc}");
    Ok(0)
}

/// The device name to use for `name`: `name` itself when its device survives the probe (or
/// when it is the CPU); for `auto`, `cpu` when the GPU driver crashes. An explicitly requested
/// GPU whose driver crashes is an error.
pub fn vet(name: &str) -> Result<String> {
    if name == "cpu" {
        return Ok(name.to_string());
    }
    let exe = std::env::current_exe().context("finding the segkit executable to probe the device")?;
    let out = Command::new(exe).args(["__probe-device", name]).output().context("starting the device probe")?;
    match out.status.code() {
        // `auto` that found no GPU: say so now rather than probe the adapters again here.
        Some(0) if name == "auto" && String::from_utf8_lossy(&out.stdout).starts_with("CPU") => {
            // A software adapter (lavapipe) is never chosen: Burn's CPU backend is faster. Say
            // that one was seen, so that a user who expected a GPU knows what the system offers.
            match segkit_train::device::adapter_for(segkit_train::device::Api::Vulkan).filter(|a| a.is_software()) {
                Some(a) => eprintln!(
                    "--device auto: no GPU adapter found, only the software one ({}), which is slower \
                     than the CPU backend; using the CPU (--device vulkan or wgpu would use it)",
                    a.describe()
                ),
                None => eprintln!("--device auto: no GPU adapter found; using the CPU"),
            }
            Ok("cpu".to_string())
        }
        Some(0) => Ok(name.to_string()),
        Some(_) if name == "auto" => Ok("cpu".to_string()),
        Some(_) => bail!("{}", String::from_utf8_lossy(&out.stderr).trim().trim_start_matches("error: ")),
        None if name == "auto" => {
            eprintln!("the GPU driver crashed while compiling a test kernel; using the CPU (--device cpu)");
            Ok("cpu".to_string())
        }
        None => bail!("{}", crash_message(name)),
    }
}

/// What a crashed probe means, naming the adapter and driver that were detected.
pub fn crash_message(name: &str) -> String {
    let detected = segkit_train::device::Api::of(name).and_then(segkit_train::device::adapter_for);
    let Some(a) = detected else {
        return format!(
            "the {name} driver crashed while compiling a test kernel (no adapter could be identified); \
             use --device cpu, or another driver"
        );
    };
    let hint = if a.is_software() && a.api == "OpenGL" {
        " This is a known problem: Mesa 25.0's llvmpipe crashes in its GLSL compiler on one of Burn's \
         kernels (docs/GPU.md). Use --device wgpu or vulkan (Mesa's lavapipe runs both), or --device cpu, \
         which is faster than any software driver."
    } else if a.is_software() {
        " A software driver is slower than --device cpu anyway; segkit's kernels run on Mesa 24 or later \
         (scripts/install-vulkan-cpu.sh installs it), and `segkit selftest --device NAME` names the check \
         that crashes."
    } else {
        " Update the GPU driver, or use --device cpu; `segkit selftest --device NAME` names the check that \
         crashes."
    };
    format!("the {name} driver crashed while compiling a test kernel; detected adapter: {}.{hint}", a.describe())
}
