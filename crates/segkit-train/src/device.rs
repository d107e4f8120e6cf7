//! Picking the device: a real GPU through wgpu when there is one, else Burn's CPU backend.

use burn::prelude::*;
use burn::tensor::DeviceKind;

use crate::TrainError;

/// Whether `device` runs a tiny computation. Creating a wgpu device without an adapter panics
/// inside the runtime, so the probe catches the panic (and keeps its message off the terminal).
pub fn works(device: &Device) -> bool {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let d = device.clone();
    let ok = std::panic::catch_unwind(move || {
        let t = Tensor::<1>::from_floats([1.0, 2.0], &d);
        t.sum().into_scalar::<f32>() == 3.0
    })
    .unwrap_or(false);
    std::panic::set_hook(hook);
    ok
}

fn cpu() -> (Device, String) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    (Device::flex(), format!("CPU (Burn flex backend, {threads} threads)"))
}

/// `auto`, `cpu`, `wgpu` or `vulkan`, and a line saying what was chosen.
pub fn select(name: &str) -> Result<(Device, String), TrainError> {
    match name {
        "cpu" => Ok(cpu()),
        "wgpu" => {
            let d = Device::wgpu(DeviceKind::DefaultDevice);
            if works(&d) {
                Ok((d, "GPU through wgpu (default adapter, WGSL/auto compiler)".into()))
            } else {
                Err(TrainError::Device("no wgpu adapter could be opened; use --device cpu".into()))
            }
        }
        "vulkan" => {
            for (kind, what) in
                [(DeviceKind::DiscreteGpu(0), "discrete GPU 0"), (DeviceKind::DefaultDevice, "default adapter")]
            {
                let d = Device::vulkan(kind);
                if works(&d) {
                    return Ok((d, format!("GPU through Vulkan/SPIR-V ({what})")));
                }
            }
            Err(TrainError::Device(
                "no Vulkan adapter could be opened (is a Vulkan driver installed?); use --device cpu".into(),
            ))
        }
        "auto" => {
            // Only real GPUs: a software rasteriser (llvmpipe, lavapipe) is slower than flex.
            for (kind, what) in
                [(DeviceKind::DiscreteGpu(0), "discrete GPU 0"), (DeviceKind::IntegratedGpu(0), "integrated GPU 0")]
            {
                let d = Device::wgpu(kind);
                if works(&d) {
                    return Ok((d, format!("GPU through wgpu ({what})")));
                }
            }
            let (d, what) = cpu();
            Ok((d, format!("{what}; no GPU adapter found")))
        }
        other => Err(TrainError::Device(format!("unknown device `{other}`: expected auto, cpu, wgpu or vulkan"))),
    }
}
