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
//! - a check that fails (wrong values, an error) fails the test, always;
//! - no adapter or a driver crash: with `CI=true` (or `SEGKIT_GPU_TESTS=require`) a failure, so
//!   that CI cannot go green without a working driver; elsewhere a loud skip that says why and
//!   how to install the driver;
//! - checks that do not finish within `SEGKIT_GPU_TEST_TIMEOUT` seconds (300; both compilers'
//!   checks take about a minute each on 2 cores with cold caches): a failure under `CI=true` or
//!   `SEGKIT_GPU_TESTS=require`, elsewhere a loud report of the checks that passed so far.
//!
//! Autotune and fusion are as in the shipped binary: `device::select` switches autotune to its
//! first-candidate mode on a software adapter, exactly as it does for `segkit train`.
//!
//! `--device opengl` (WGSL through naga's GLSL backend) is tested only on request
//! (`cargo test --release -- --ignored gpu_path_on_opengl`): Mesa 25.0's llvmpipe crashes in its
//! GLSL compiler on one of Burn's autotune candidates after minutes of compiling (docs/GPU.md).

use segkit_train::device::{Api, adapter_for, works};
use segkit_train::selftest;

/// How long one API's checks may take before they count as hung (about a minute each on 2 cores
/// with cold caches, most of it lavapipe compiling kernels); `SEGKIT_GPU_TEST_TIMEOUT` seconds.
fn time_limit() -> std::time::Duration {
    let s = std::env::var("SEGKIT_GPU_TEST_TIMEOUT").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    std::time::Duration::from_secs(s)
}

/// Straight to stderr, past the test harness's capture: a skipped GPU test must be seen in CI's
/// log even though the test passes.
fn say(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn child(api: &str) {
    use std::io::Read;
    let exe = std::env::current_exe().expect("test binary path");
    let mut proc = std::process::Command::new(exe)
        .args(["--exact", "gpu_checks_in_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("SEGKIT_TEST_GPU", api)
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
    let driver = Api::of(api).and_then(adapter_for).map_or("no adapter".to_string(), |a| a.describe());
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
        assert!(!text.contains("FAIL "), "{why}");
        say(&format!("GPU tests on {api} did not finish: {why}"));
        return;
    };
    match status.code() {
        Some(0) if text.contains("NO-ADAPTER") => not_run(format!(
            "no {api} adapter; run scripts/install-vulkan-cpu.sh (Mesa's lavapipe and llvmpipe) to run the GPU tests"
        )),
        Some(0) => say(&format!("{api} GPU tests passed on {driver}:\n{text}")),
        Some(code) => panic!("the {api} GPU tests failed (exit {code}) on {driver}:\n{text}"),
        None => not_run(format!(
            "the {api} driver ({driver}) crashed (killed by a signal; docs/GPU.md lists the known driver \
             bugs). Checks that ran before the crash:\n{text}"
        )),
    }
}

#[test]
fn gpu_path_on_vulkan_spirv() {
    child("vulkan");
}

#[test]
fn gpu_path_on_wgpu_wgsl() {
    child("wgpu");
}

#[test]
#[ignore = "llvmpipe's GLSL compiler crashes on a Burn kernel (docs/GPU.md); run on request"]
fn gpu_path_on_opengl() {
    child("opengl");
}

#[test]
#[ignore = "run in a child process by gpu_path_on_*"]
fn gpu_checks_in_child() {
    let api = std::env::var("SEGKIT_TEST_GPU").expect("SEGKIT_TEST_GPU names the device");
    let opened = segkit_train::device::select(&api);
    let Ok((device, _)) = opened else {
        println!("NO-ADAPTER");
        return;
    };
    assert!(works(&device));
    let scratch = std::env::temp_dir().join(format!("segkit-gpu-test-{api}-{}", std::process::id()));
    let results = selftest::run(&api, &scratch, &mut |r| {
        println!("{} {} {:.1}s {}", if r.passed { "PASS" } else { "FAIL" }, r.name, r.seconds, r.detail)
    })
    .expect("the selftest runs");
    let _ = std::fs::remove_dir_all(&scratch);
    let failed: Vec<_> = results.iter().filter(|r| !r.passed).map(|r| r.name.as_str()).collect();
    assert!(failed.is_empty(), "failed checks: {failed:?}");
    // Every model kind and every training check ran.
    assert_eq!(results.len(), 2 * selftest::model_cases().len() + 5, "{results:?}");
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
