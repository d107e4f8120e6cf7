//! Picking the device: a real GPU through wgpu when there is one, else Burn's CPU backend.
//!
//! Device names (`train.device`, `--device`), each with the shader compiler cubecl uses on it:
//! - `cpu`: Burn's flex backend.
//! - `wgpu`: wgpu's default adapter on the graphics API it prefers (Vulkan on Linux and Windows,
//!   Metal on macOS), with cubecl's **WGSL** compiler (naga translates WGSL to the API's shader
//!   language): the portable path.
//! - `vulkan`: pinned to Vulkan, a discrete GPU first, with cubecl's **SPIR-V** compiler (Vulkan
//!   1.3 features, cooperative matrices on NVIDIA): the fast path on Linux.
//! - `opengl`: pinned to OpenGL, WGSL translated to GLSL by naga; for machines without Vulkan.
//! - `auto`: a discrete or integrated GPU through wgpu with the fastest compiler (SPIR-V on
//!   Vulkan), else the CPU. Software adapters (lavapipe, llvmpipe) are never chosen by `auto`:
//!   flex is much faster than they are.
//!
//! On a software adapter (lavapipe, llvmpipe) autotune keeps the first candidate kernel that
//! runs, in Burn's priority order, instead of timing them all
//! (`cubecl_runtime::tune::set_first_that_runs`, patches/README.md): each candidate costs that
//! driver seconds to minutes of LLVM compilation, and timings of a CPU emulating a GPU pick
//! nothing worth having. On real GPUs autotune is Burn's own.
//!
//! Invariant: the compiler choice and the autotune mode are process-wide and read when a device
//! is first used (`cubecl_wgpu::vulkan::set_wgsl_on_vulkan` and the switch above, segkit patches
//! of cubecl), so a process opens one GPU device name; the CLI and the GPU tests open exactly one.

use burn::prelude::*;
use burn::tensor::DeviceKind;
use burn::tensor::wgpu::{WgpuBackend, wgpu};

use crate::TrainError;

/// The device names `select` accepts.
pub const NAMES: [&str; 5] = ["auto", "cpu", "wgpu", "vulkan", "opengl"];

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

/// Whether `device` computes in f16: Burn says it supports the dtype and a tiny f16 computation
/// compiles and runs. Burn's answer alone is not enough: on OpenGL it says yes, and then WGSL
/// with `enable f16` fails to compile there ("the `f16` extension is not supported in the
/// current environment", wgpu's GL backend). The probe's failure is caught like [`works`]'s.
pub fn computes_f16(device: &Device) -> bool {
    use burn::tensor::DType;
    if matches!(device.clone().inner().as_dispatch(), burn::backend::DispatchDevice::Flex(_)) {
        return false;
    }
    if !device.supports_dtype(DType::F16) {
        return false;
    }
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let d = device.clone();
    let ok = std::panic::catch_unwind(move || {
        let t = Tensor::<1>::from_floats([1.5, 2.0], &d).cast(DType::F16);
        (t.clone() * t).cast(DType::F32).sum().into_scalar::<f32>() == 6.25
    })
    .unwrap_or(false);
    std::panic::set_hook(hook);
    ok
}

fn cpu() -> (Device, String) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let isa = segkit_models::cpu_conv::kernel_isa();
    (Device::flex(), format!("CPU (Burn flex backend, {threads} threads, {isa} kernels)"))
}

/// The wgpu device on OpenGL (default adapter). Burn has no lazy constructor for it, so it is
/// initialised once per process and kept: a runtime cannot be registered twice.
fn opengl() -> Option<Device> {
    static GL: std::sync::OnceLock<Option<Device>> = std::sync::OnceLock::new();
    GL.get_or_init(|| {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let made = std::panic::catch_unwind(|| {
            Device::wgpu_options().graphics_api(WgpuBackend::Gl).device_kind(DeviceKind::DefaultDevice).init()
        });
        std::panic::set_hook(hook);
        made.ok().and_then(Result::ok)
    })
    .clone()
}

/// `auto`, `cpu`, `wgpu`, `vulkan` or `opengl`, and a line saying what was chosen (with the
/// adapter's name and driver for a GPU).
pub fn select(name: &str) -> Result<(Device, String), TrainError> {
    // A cap the kernels would ignore is bad input, refused before anything runs.
    segkit_models::cpu_conv::IsaCap::from_env().map_err(TrainError::Config)?;
    // The adapter behind `name`, looked up once: enumerating adapters opens the graphics API.
    let adapter = Api::of(name).and_then(adapter_for);
    let software = adapter.as_ref().is_some_and(AdapterInfo::is_software);
    let with_adapter = |what: &str| match &adapter {
        Some(a) if software => {
            format!("{what}: {}; autotune keeps the first kernel that runs (software adapter)", a.describe())
        }
        Some(a) => format!("{what}: {}", a.describe()),
        None => what.to_string(),
    };
    // Before the device's first use, which is when cubecl reads it.
    cubecl_runtime::tune::set_first_that_runs(software);
    if name != "cpu" {
        // `--gpu-conv auto`: Burn's kernels on a software adapter, GEMMs on a real GPU.
        use segkit_models::conv::{gpu_conv, set_gpu_conv};
        set_gpu_conv(gpu_conv().resolve(software));
    }
    match name {
        "cpu" => Ok(cpu()),
        "wgpu" => {
            cubecl_wgpu::vulkan::set_wgsl_on_vulkan(true);
            let d = Device::wgpu(DeviceKind::DefaultDevice);
            if works(&d) {
                Ok((d, with_adapter("GPU through wgpu/WGSL (default adapter)")))
            } else {
                Err(TrainError::Device(format!("no wgpu adapter could be opened; {}", no_adapter_hint())))
            }
        }
        "vulkan" => {
            cubecl_wgpu::vulkan::set_wgsl_on_vulkan(false);
            for (kind, what) in
                [(DeviceKind::DiscreteGpu(0), "discrete GPU 0"), (DeviceKind::DefaultDevice, "default adapter")]
            {
                let d = Device::vulkan(kind);
                if works(&d) {
                    return Ok((d, with_adapter(&format!("GPU through Vulkan/SPIR-V ({what})"))));
                }
            }
            Err(TrainError::Device(format!("no Vulkan adapter could be opened; {}", no_adapter_hint())))
        }
        "opengl" => {
            if let Some(d) = opengl().filter(works) {
                return Ok((d, with_adapter("GPU through OpenGL/WGSL (default adapter)")));
            }
            Err(TrainError::Device(format!(
                "no OpenGL adapter could be opened (wgpu needs EGL and OpenGL 4.3 or ES 3.1); {}",
                no_adapter_hint()
            )))
        }
        "auto" => {
            // Only real GPUs: a software rasteriser (llvmpipe, lavapipe) is slower than flex.
            cubecl_wgpu::vulkan::set_wgsl_on_vulkan(false);
            for (kind, what) in
                [(DeviceKind::DiscreteGpu(0), "discrete GPU 0"), (DeviceKind::IntegratedGpu(0), "integrated GPU 0")]
            {
                let d = Device::wgpu(kind);
                if works(&d) {
                    return Ok((d, format!("GPU through wgpu ({what}; SPIR-V on Vulkan)")));
                }
            }
            let (d, what) = cpu();
            Ok((d, format!("{what}; no GPU adapter found")))
        }
        other => Err(TrainError::Device(format!("unknown device `{other}`: expected one of {}", NAMES.join(", ")))),
    }
}

fn no_adapter_hint() -> &'static str {
    "use --device cpu, or install a GPU driver (scripts/install-vulkan-cpu.sh installs Mesa's software \
     Vulkan and OpenGL, for testing)"
}

/// Which graphics API a device name goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Auto,
    Vulkan,
    OpenGl,
}

impl Api {
    /// The API behind a device name; `None` for the CPU and `auto`.
    pub fn of(device: &str) -> Option<Api> {
        match device {
            "wgpu" => Some(Api::Auto),
            "vulkan" => Some(Api::Vulkan),
            "opengl" => Some(Api::OpenGl),
            _ => None,
        }
    }
}

/// One adapter as the graphics API reports it: enough to name a driver in an error message.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterInfo {
    pub api: &'static str,
    pub name: String,
    pub kind: &'static str,
    pub driver: String,
    pub driver_info: String,
}

impl AdapterInfo {
    /// "llvmpipe (LLVM 15.0.6, 256 bits), CPU adapter, Vulkan, driver llvmpipe (Mesa 25.0.7)".
    pub fn describe(&self) -> String {
        let driver = match (self.driver.is_empty(), self.driver_info.is_empty()) {
            (false, false) => format!(", driver {} ({})", self.driver, self.driver_info),
            (false, true) => format!(", driver {}", self.driver),
            (true, false) => format!(", driver {}", self.driver_info),
            (true, true) => String::new(),
        };
        format!("{}, {} adapter, {}{driver}", self.name, self.kind, self.api)
    }

    /// Whether this is Mesa's software rasteriser (lavapipe on Vulkan, llvmpipe on OpenGL).
    pub fn is_software(&self) -> bool {
        self.kind == "CPU" || self.name.contains("llvmpipe")
    }

    /// The major Mesa version of the driver ("... Mesa 25.0.7 ..." or "(Mesa 22.3.6)"), if it
    /// is Mesa's.
    pub fn mesa_major(&self) -> Option<u32> {
        mesa_major_in(&self.describe())
    }
}

/// The major version after "Mesa " in an adapter's description, if there is one.
pub fn mesa_major_in(text: &str) -> Option<u32> {
    let at = text.find("Mesa ")? + "Mesa ".len();
    text[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The adapters of one graphics API (`VULKAN` or `GL`) as wgpu reports them, without compiling
/// any kernel, so that no driver bug in a shader compiler can crash this.
fn adapters_on(backend: wgpu::Backends) -> Vec<AdapterInfo> {
    let api = if backend == wgpu::Backends::GL { "OpenGL" } else { "Vulkan" };
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: backend,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    block_on(instance.enumerate_adapters(backend))
        .into_iter()
        .map(|a| {
            let i = a.get_info();
            AdapterInfo {
                api,
                name: i.name,
                kind: match i.device_type {
                    wgpu::DeviceType::DiscreteGpu => "discrete GPU",
                    wgpu::DeviceType::IntegratedGpu => "integrated GPU",
                    wgpu::DeviceType::VirtualGpu => "virtual GPU",
                    wgpu::DeviceType::Cpu => "CPU",
                    wgpu::DeviceType::Other => "other",
                },
                driver: i.driver,
                driver_info: i.driver_info,
            }
        })
        .collect()
}

/// The adapter a device name opens, as far as it can be told without opening it: a discrete GPU
/// when there is one, else the first adapter on that API (for `Auto`: Vulkan, else OpenGL).
/// Only the APIs needed are asked.
pub fn adapter_for(api: Api) -> Option<AdapterInfo> {
    let on = match api {
        Api::Vulkan => adapters_on(wgpu::Backends::VULKAN),
        Api::OpenGl => adapters_on(wgpu::Backends::GL),
        Api::Auto => Some(adapters_on(wgpu::Backends::VULKAN))
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| adapters_on(wgpu::Backends::GL)),
    };
    on.iter().find(|a| a.kind == "discrete GPU").or(on.first()).cloned()
}

/// The adapter `auto` trains on when it picks a GPU: the first real (not software) adapter,
/// a discrete GPU first, on Vulkan, else on OpenGL.
pub fn auto_adapter() -> Option<AdapterInfo> {
    let real = |v: Vec<AdapterInfo>| {
        let v: Vec<AdapterInfo> = v.into_iter().filter(|a| !a.is_software()).collect();
        v.iter().find(|a| a.kind == "discrete GPU").or(v.first()).cloned()
    };
    real(adapters_on(wgpu::Backends::VULKAN)).or_else(|| real(adapters_on(wgpu::Backends::GL)))
}

/// Runs a future that native wgpu resolves at once (adapter enumeration) on this thread.
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}
