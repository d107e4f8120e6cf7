//! The GPU code path on a CPU machine: `segkit_train::selftest` (every model kind's forward and
//! gradients, training steps, cross-device resume, predict, all against flex) on Mesa's software
//! Vulkan driver (lavapipe), once per shader compiler, one child process each:
//! - `vulkan`: cubecl's SPIR-V compiler (what `--device vulkan` and `auto` use on a real GPU);
//! - `wgpu`: cubecl's WGSL compiler, translated to SPIR-V by naga (`--device wgpu`).
//! `scripts/install-vulkan-cpu.sh` installs the driver. Both used to crash lavapipe through a
//! cubecl bug that `patches/cubecl-spirv` fixes (docs/GPU.md).
//!
//! Each API runs in a child process because a driver that crashes while compiling a kernel takes
//! its process down (SIGSEGV), and that must not take the whole test binary with it:
//! - a check that fails (wrong values, an error) fails the test on the drivers the suite installs,
//!   and under `CI=true` on any (see below for the others);
//! - no adapter or a driver crash: with `CI=true` (or `SEGKIT_GPU_TESTS=require`) a failure, so
//!   that CI cannot go green without a working driver; elsewhere a loud skip that says why and
//!   how to install the driver;
//! - checks that do not finish within `SEGKIT_GPU_TEST_TIMEOUT` seconds (300; both compilers'
//!   checks take about a minute each on 2 cores with cold caches): a failure under `CI=true` or
//!   `SEGKIT_GPU_TESTS=require`, elsewhere a loud report of the checks that passed so far.
//!
//! - wrong values on an adapter this suite did not install (a newcomer's own GPU, or Debian 12's
//!   own Mesa 22.3 OpenGL, which wgpu falls back to where there is no Vulkan): outside CI a loud
//!   report naming the adapter and the failing checks, not a test failure, because segkit is right
//!   there: its adapter check runs these same checks and refuses to train on that adapter
//!   (`tests/adapter_check.rs` in the CLI tests that refusal). The suite's own drivers
//!   (`installed_by_the_suite`: Mesa 24 or later, which `scripts/install-vulkan-cpu.sh` installs)
//!   must pass everywhere, and under `CI=true` every adapter must.
//!
//! Autotune and fusion are as in the shipped binary: `device::select` switches autotune to its
//! first-candidate mode on a software adapter, exactly as it does for `segkit train`.
//!
//! - `opengl`: WGSL translated to GLSL by naga, on Mesa's llvmpipe (`--device opengl`, and what
//!   `wgpu` falls back to where there is no Vulkan driver).

use segkit_train::device::{AdapterInfo, Api, adapter_for, works};
use segkit_train::selftest;

/// How long one API's checks may take before they count as hung (about a minute each on 2 cores
/// with cold caches, most of it lavapipe compiling kernels); `SEGKIT_GPU_TEST_TIMEOUT` seconds.
fn time_limit() -> std::time::Duration {
    let s = std::env::var("SEGKIT_GPU_TEST_TIMEOUT").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    std::time::Duration::from_secs(s)
}

/// Whether `a` is one of the drivers `scripts/install-vulkan-cpu.sh` installs: Mesa's software
/// adapters (lavapipe, llvmpipe) from Mesa 24 or later. A wrong value on one of them is segkit's
/// to fix; on another adapter, the adapter's (segkit refuses it).
fn installed_by_the_suite(a: &AdapterInfo) -> bool {
    a.is_software() && a.mesa_major().is_some_and(|m| m >= 24)
}

/// Straight to stderr, past the test harness's capture: a skipped GPU test must be seen in CI's
/// log even though the test passes.
fn say(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// The checks on `api` in a child test process, with `--gpu-conv` `conv` (auto: Burn's kernels on
/// the suite's software adapters; gemm: segkit's GEMM convolutions in every model check).
fn child(api: &str, conv: &str) {
    use std::io::Read;
    let exe = std::env::current_exe().expect("test binary path");
    let mut proc = std::process::Command::new(exe)
        .args(["--exact", "gpu_checks_in_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("SEGKIT_TEST_GPU", api)
        .env("SEGKIT_TEST_GPU_CONV", conv)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running the test binary");
    let (mut so, mut se) = (proc.stdout.take().unwrap(), proc.stderr.take().unwrap());
    let readers = (
        std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = so.read_to_end(&mut b);
            b
        }),
        std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = se.read_to_end(&mut b);
            b
        }),
    );
    let deadline = std::time::Instant::now() + time_limit();
    let status = loop {
        if let Some(st) = proc.try_wait().expect("waiting for the child") {
            break Some(st);
        }
        if std::time::Instant::now() > deadline {
            let _ = proc.kill();
            let _ = proc.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let out = (readers.0.join().unwrap(), readers.1.join().unwrap());
    let text = format!("{}{}", String::from_utf8_lossy(&out.0), String::from_utf8_lossy(&out.1));
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let require = ci || std::env::var("SEGKIT_GPU_TESTS").is_ok_and(|v| v == "require");
    let adapter = Api::of(api).and_then(adapter_for);
    let ours = adapter.as_ref().is_some_and(installed_by_the_suite);
    let driver = adapter.as_ref().map_or("no adapter".to_string(), |a| a.describe());
    // Not run is a failure where the GPU path must be tested, else a skip that says why.
    let not_run = |why: String| {
        assert!(!require, "{why} (CI=true or SEGKIT_GPU_TESTS=require: the GPU tests must run)");
        say(&format!("skipping the {api} GPU tests: {why}"));
    };
    let Some(status) = status else {
        // Wrong values would have failed before the limit: what is left is a hang or a driver far
        // slower than lavapipe on 2 cores (about a minute per compiler, docs/GPU.md).
        let why = format!(
            "the {api} checks on {driver} did not finish within {:?} (SEGKIT_GPU_TEST_TIMEOUT raises \
             the limit). Checks that passed or failed so far:\n{text}",
            time_limit()
        );
        assert!(!require, "{why}");
        // Wrong values before the limit fail the test on the suite's own drivers (see above).
        assert!(!ours || !text.contains("FAIL "), "{why}");
        say(&format!("GPU tests on {api} did not finish: {why}"));
        return;
    };
    match status.code() {
        Some(0) if text.contains("NO-ADAPTER") => not_run(format!(
            "no {api} adapter; run scripts/install-vulkan-cpu.sh (Mesa's lavapipe and llvmpipe) to run the GPU tests"
        )),
        Some(0) => say(&format!("{api} GPU tests (--gpu-conv {conv}) passed on {driver}:\n{text}")),
        // Wrong values on a driver the suite did not install: the adapter's failure, which segkit
        // handles by refusing to train on it. Reported, not failed, outside CI.
        Some(_) if !require && !ours && text.contains("FAIL ") => {
            let failed: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL ")).collect();
            say(&format!(
                "WARNING: the {api} checks find wrong values on {driver}, an adapter this test suite did not \
                 install:\n{}\nsegkit refuses to train on this adapter (its device check runs these checks first; \
                 `segkit selftest --device {api}` shows them all; docs/GPU.md lists the drivers known to fail). \
                 Not counted as a test failure outside CI; scripts/install-vulkan-cpu.sh installs the drivers the \
                 suite tests.",
                failed.join("\n")
            ));
        }
        Some(code) => panic!("the {api} GPU tests failed (exit {code}) on {driver}:\n{text}"),
        None => not_run(format!(
            "the {api} driver ({driver}) crashed (killed by a signal; docs/GPU.md lists the known driver \
             bugs). Checks that ran before the crash:\n{text}"
        )),
    }
}

#[test]
fn gpu_path_on_vulkan_spirv() {
    child("vulkan", "auto");
}

#[test]
fn gpu_path_on_vulkan_spirv_gemm_conv() {
    child("vulkan", "gemm");
}

#[test]
fn gpu_path_on_wgpu_wgsl() {
    child("wgpu", "auto");
}

#[test]
fn gpu_path_on_wgpu_wgsl_gemm_conv() {
    child("wgpu", "gemm");
}

/// WGSL translated to GLSL, on Mesa's llvmpipe (OpenGL): 17 of 17 checks pass with Mesa 25.0.7
/// from cold caches in about 40 s on 2 cores; Debian 12's own Mesa 22.3 fails the long-loop and
/// FCN gradient checks (docs/GPU.md, section 3), which outside CI is reported, not failed.
#[test]
fn gpu_path_on_opengl() {
    child("opengl", "auto");
}

#[test]
#[ignore = "run in a child process by gpu_path_on_*"]
fn gpu_checks_in_child() {
    let api = std::env::var("SEGKIT_TEST_GPU").expect("SEGKIT_TEST_GPU names the device");
    let conv = std::env::var("SEGKIT_TEST_GPU_CONV").unwrap_or_else(|_| "auto".into());
    let conv = segkit_models::conv::GpuConv::parse(&conv).expect("SEGKIT_TEST_GPU_CONV: auto, gemm or burn");
    segkit_models::conv::set_gpu_conv(conv);
    let opened = segkit_train::device::select(&api);
    let Ok((device, _)) = opened else {
        println!("NO-ADAPTER");
        return;
    };
    assert!(works(&device));
    // libtest has printed "test gpu_checks_in_child ... " without a newline: each result must
    // start its own line, for the parent to pick out the FAIL lines.
    println!();
    let scratch = std::env::temp_dir().join(format!("segkit-gpu-test-{api}-{}", std::process::id()));
    let results = selftest::run(&api, &scratch, &mut |r| {
        println!("{} {} {:.1}s {}", if r.passed { "PASS" } else { "FAIL" }, r.name, r.seconds, r.detail)
    })
    .expect("the selftest runs");
    let _ = std::fs::remove_dir_all(&scratch);
    let failed: Vec<_> = results.iter().filter(|r| !r.passed).map(|r| r.name.as_str()).collect();
    assert!(failed.is_empty(), "failed checks: {failed:?}");
    // Every model kind and every training check ran.
    assert_eq!(results.len(), selftest::check_count(), "{results:?}");
    // And the models' convolutions took the path asked for (auto: Burn's on a software adapter).
    let layer = segkit_models::layers::conv(2, 2, 3, 1, &device);
    let x = burn::tensor::Tensor::<4>::zeros([1, 2, 4, 4], &device);
    let software = Api::of(&api).and_then(adapter_for).is_some_and(|a| a.is_software());
    let want = conv.resolve(software) == segkit_models::conv::GpuConv::Gemm;
    assert_eq!(segkit_models::conv::takes_gemm(&layer, &x), want, "--gpu-conv {conv} on a software adapter: {software}");
}

/// Which adapters count as the suite's own: Mesa 24 or later's software drivers only.
#[test]
fn the_suites_own_adapters_are_recent_mesa_software_drivers() {
    let check = |name: &str, kind: &'static str, api: &'static str, driver: &str, info: &str, want: bool| {
        let a = AdapterInfo { api, name: name.into(), kind, driver: driver.into(), driver_info: info.into() };
        assert_eq!(installed_by_the_suite(&a), want, "{}", a.describe());
    };
    check("llvmpipe (LLVM 15.0.6, 256 bits)", "CPU", "Vulkan", "llvmpipe", "Mesa 25.0.7-2~bpo12+1 (LLVM 15.0.6)", true);
    check("llvmpipe (LLVM 15.0.6, 256 bits)", "CPU", "OpenGL", "", "4.5 (Core Profile) Mesa 25.0.7-2~bpo12+1", true);
    check("llvmpipe (LLVM 15.0.6, 256 bits)", "CPU", "OpenGL", "", "4.5 (Core Profile) Mesa 22.3.6", false);
    check("NVIDIA H100", "discrete GPU", "Vulkan", "NVIDIA", "580.95", false);
    check("AMD Radeon RX 7900 XT (RADV NAVI31)", "discrete GPU", "Vulkan", "radv", "Mesa 25.0.7", false);
    check("llvmpipe (LLVM 18.1.3, 256 bits)", "CPU", "Vulkan", "llvmpipe", "Mesa 24.2.8-1ubuntu1~24.04.1", true);
    assert_eq!(segkit_train::device::mesa_major_in("no version here"), None);
}

/// The comparisons themselves: a relative difference the GPU tests would accept, and ones they
/// would not (so that a broken comparison cannot let a wrong kernel through).
#[test]
fn rel_diff_is_relative_to_the_reference_scale() {
    let check = |a: &[f32], b: &[f32], want: f64| {
        let got = selftest::rel_diff(a, b);
        assert!((got - want).abs() < 1e-6 || (got.is_infinite() && want.is_infinite()), "{a:?} {b:?}: {got} != {want}");
    };
    check(&[1.0, 2.0], &[1.0, 2.0], 0.0);
    check(&[1.0, 2.1], &[1.0, 2.0], 0.05);
    check(&[0.0, 0.5], &[0.0, -1.0], 1.5);
    check(&[f32::NAN], &[1.0], f64::INFINITY);
    check(&[1.0], &[1.0, 2.0], f64::INFINITY);
    // A floor on the reference scale: rounding noise around an exact zero is not a wrong kernel,
    // but a deviation as large as the floor still is.
    let floored = |a: &[f32], b: &[f32], floor| selftest::rel_diff_floored(a, b, floor);
    assert!(floored(&[2e-9, -1e-9], &[-1e-9, 1e-9], 1e-4) < 1e-4);
    assert!(floored(&[2e-4, 0.0], &[0.0, 0.0], 1e-4) > 1.0);
    assert_eq!(floored(&[1.0, 2.1], &[1.0, 2.0], 1e-4), selftest::rel_diff(&[1.0, 2.1], &[1.0, 2.0]));
}
