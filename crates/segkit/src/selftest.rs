//! `segkit selftest`: the GPU path checked against the CPU, a pass/fail line per check.
//!
//! The checks run in a child `segkit` process, so that a GPU driver that crashes while compiling
//! a kernel (no error handling can catch a SIGSEGV) ends with a message naming the driver and the
//! check that was running, not with a dead terminal.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use segkit_train::selftest::{self, CheckResult};

/// Burn's version is pinned in the workspace Cargo.toml; cubecl and wgpu are the ones it pins.
const STACK: &str = "Burn 0.22.1, cubecl 0.11.3, wgpu 30.0.2";

#[derive(clap::Args)]
pub struct Args {
    /// The GPU to check against the CPU: auto (the first real GPU, with the compiler `--device auto`
    /// trains with), wgpu (WGSL compiler), vulkan (SPIR-V compiler) or opengl.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Internal: run the checks in this process (the parent reads their lines).
    #[arg(long, hide = true)]
    child: bool,
}

fn line(r: &CheckResult) -> String {
    format!("{} {:<24} {:>6.1} s  {}", if r.passed { "PASS" } else { "FAIL" }, r.name, r.seconds, r.detail)
}

pub fn run(a: Args) -> Result<i32> {
    if a.child {
        let scratch = std::env::temp_dir().join(format!("segkit-selftest-{}", std::process::id()));
        let results = selftest::run(&a.device, &scratch, &mut |r| println!("{}", line(r)))?;
        let _ = std::fs::remove_dir_all(&scratch);
        // The verdicts `train`, `eval` and the rest consult before they use this adapter,
        // rewritten from these results (a failure too: the selftest is how a user checks again).
        let adapter = segkit_train::device::Api::of(&a.device).and_then(segkit_train::device::adapter_for);
        if let (Some(ad), Some(cache)) = (adapter, segkit_train::adapter_check::Cache::default_location()) {
            let entries = segkit_train::adapter_check::entries_from_selftest(&a.device, &ad.describe(), &results);
            if let Err(e) = cache.store(&entries) {
                eprintln!("warning: the verdicts could not be remembered ({e}); later runs check the adapter again");
            }
        }
        return Ok(if results.iter().all(|r| r.passed) { 0 } else { 1 });
    }
    let name = match a.device.as_str() {
        "auto" => {
            let chosen = crate::device::vet("auto", &crate::device::Use::none(false))?;
            if chosen == "cpu" {
                bail!("--device auto found no GPU to check; name one (--device wgpu, vulkan or opengl)");
            }
            // What `auto` trains with: SPIR-V on a Vulkan adapter, else wgpu's own choice.
            let vulkan = segkit_train::device::adapter_for(segkit_train::device::Api::Vulkan);
            if vulkan.is_some_and(|a| !a.is_software()) { "vulkan" } else { "wgpu" }.to_string()
        }
        "cpu" => bail!("selftest compares a GPU with the CPU: use --device auto, wgpu, vulkan or opengl"),
        other => other.to_string(),
    };
    let api = segkit_train::device::Api::of(&name)
        .with_context(|| format!("unknown device `{name}`: expected auto, wgpu, vulkan or opengl"))?;
    match segkit_train::device::adapter_for(api) {
        Some(ad) => println!("device {name}: {}", ad.describe()),
        None => println!("device {name}: no adapter reported by wgpu"),
    }
    println!("segkit {}, {STACK}", env!("CARGO_PKG_VERSION"));
    let gpu_conv = segkit_models::conv::gpu_conv().name();
    println!("convolutions on the GPU: {gpu_conv} (--gpu-conv; auto: gemm on a hardware GPU, burn on a software adapter)");

    let exe = std::env::current_exe().context("finding the segkit executable")?;
    let mut child = Command::new(exe)
        .args(["selftest", "--child", "--device", &name, "--gpu-conv", gpu_conv])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the selftest")?;
    let (mut passed, mut failed) = (0, 0);
    let mut last = None;
    for l in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let l = l.context("reading the selftest's output")?;
        if l.starts_with("PASS") {
            passed += 1;
        } else if l.starts_with("FAIL") {
            failed += 1;
        }
        if let Some(n) = l.split_whitespace().nth(1) {
            last = Some(n.to_string());
        }
        println!("{l}");
    }
    let status = child.wait().context("waiting for the selftest")?;
    match status.code() {
        Some(0) | Some(1) => {
            println!("{passed} passed, {failed} failed");
            Ok(if failed == 0 && passed > 0 { 0 } else { 1 })
        }
        Some(code) => bail!("the selftest stopped with exit code {code} after {passed} passed, {failed} failed"),
        None => bail!(
            "the GPU driver crashed (killed by a signal) {} ({passed} passed, {failed} failed); {}",
            last.map_or("during the first check".to_string(), |l| format!("after check {l}")),
            crate::device::crash_message(&name)
        ),
    }
}
