//! The GPU code path on a CPU machine: `segkit_train::selftest` (every model kind's forward and
//! gradients, training steps, cross-device resume, predict, all against flex) on Mesa's software
//! adapters, one child process per graphics API: `vulkan` (cubecl's SPIR-V compiler, lavapipe)
//! and `opengl` (cubecl's WGSL compiler through naga, llvmpipe). `scripts/install-vulkan-cpu.sh`
//! installs both.
//!
//! Each API runs in a child process because a driver that crashes while compiling a kernel takes
//! its process down (SIGSEGV), and that must not take the whole test binary with it:
//! - a check that fails (wrong values, an error) fails the test, always;
//! - no adapter: a skip with the install command; with `CI=true` a failure, so that CI cannot go
//!   green without a software driver;
//! - a driver crash (the child killed by a signal): reported with the detected driver. Both of
//!   Mesa 25.0's software drivers crash on kernels that Burn's compilers emit (docs/GPU.md:
//!   cubecl 0.11.3's SPIR-V for shared memory is invalid on drivers without
//!   VK_KHR_workgroup_memory_explicit_layout; llvmpipe's GLSL compiler crashes on an autotune
//!   candidate). Those are upstream bugs, so a crash is a loud skip, not a failure, unless
//!   `SEGKIT_GPU_TESTS=require` asks for the GPU path to pass end to end.

use segkit_train::device::{Api, adapter_for, works};
use segkit_train::selftest;

/// How long one API's checks may take before they count as hung (kernel compilation on a software
/// driver is slow: minutes with a cold autotune cache); `SEGKIT_GPU_TEST_TIMEOUT` seconds.
fn time_limit() -> std::time::Duration {
    let s = std::env::var("SEGKIT_GPU_TEST_TIMEOUT").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
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
    let require = std::env::var("SEGKIT_GPU_TESTS").is_ok_and(|v| v == "require");
    let driver = Api::of(api).and_then(adapter_for).map_or("no adapter".to_string(), |a| a.describe());
    let Some(status) = status else {
        let why = format!(
            "the {api} checks on {driver} did not finish within {:?} (kernel compilation on a software \
             driver; SEGKIT_GPU_TEST_TIMEOUT raises the limit). Checks that ran:\n{text}",
            time_limit()
        );
        assert!(!require, "{why}");
        say(&format!("GPU tests on {api} did not finish: {why}"));
        return;
    };
    match status.code() {
        Some(0) if text.contains("NO-ADAPTER") => {
            let why = format!(
                "no {api} adapter; run scripts/install-vulkan-cpu.sh (Mesa's lavapipe and llvmpipe) to run the GPU tests"
            );
            assert!(!ci && !require, "{why} (CI=true: the GPU tests must run)");
            say(&format!("skipping the {api} GPU tests: {why}"));
        }
        Some(0) => say(&format!("{api} GPU tests passed on {driver}:\n{text}")),
        Some(code) => panic!("the {api} GPU tests failed (exit {code}) on {driver}:\n{text}"),
        None => {
            let why = format!(
                "the {api} driver ({driver}) crashed in a kernel compilation (killed by a signal); \
                 known upstream bugs, see docs/GPU.md. Checks that ran before the crash:\n{text}"
            );
            assert!(!require, "{why}");
            say(&format!("GPU tests on {api} did not finish: {why}"));
        }
    }
}

#[test]
fn gpu_path_on_vulkan_spirv() {
    child("vulkan");
}

#[test]
fn gpu_path_on_opengl_wgsl() {
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
}
