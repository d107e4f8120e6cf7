//! The binary as a user runs it: outputs, exit statuses, error messages.

use std::path::PathBuf;
use std::process::{Command, Output};

fn segkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_segkit")).args(args).output().expect("running segkit")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("segkit-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn summary_json_has_the_reference_figures() {
    let o = segkit(&["summary", "--model", "fcn8s", "--size", "512", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["parameters"], 134_489_759);
    assert_eq!(v["output_shape"], serde_json::json!([1, 21, 512, 512]));
    assert!((v["forward_gflop"].as_f64().unwrap() - 380.7).abs() < 0.05);
    assert!(v["trainable_parameters"].as_u64().unwrap() < 134_489_759);
}

#[test]
fn invalid_input_is_an_error_with_exit_status() {
    let o = segkit(&["summary", "--model", "unet", "--size", "573"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("572 or 588"), "{}", text(&o));
    let o = segkit(&["summary", "--model", "fcn64s"]);
    assert_eq!(o.status.code(), Some(2));
    let o = segkit(&["train", "--set", "train.lr=-1", "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("train.lr"), "{}", text(&o));
    // Zero sizes and counts are errors naming the value, not panics in the kernels. Clap's usage
    // errors exit with 2 as well.
    for (args, says) in [
        (&["bench", "--conv", "8", "--size", "0", "--device", "cpu"][..], "bad size `0`"),
        (&["bench", "--conv", "0", "--size", "8", "--device", "cpu"][..], "--conv"),
        (&["bench", "--model", "unet", "--size", "188", "--batch", "0", "--device", "cpu"][..], "--batch"),
        (&["bench", "--model", "fcn8s", "--size", "32", "--steps", "0", "--device", "cpu"][..], "--steps"),
        (&["summary", "--model", "fcn8s", "--size", "0x32"][..], "bad size `0x32`"),
    ] {
        let o = segkit(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(says) && !text(&o).contains("panicked"), "{args:?}: {}", text(&o));
    }
}

#[test]
fn synth_then_check() {
    let dir = scratch("synth");
    let o = segkit(&["data", "synth", "--out", dir.to_str().unwrap(), "--count", "6", "--size", "32"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = segkit(&["data", "check", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("split train: 6 pairs") && t.contains("split val: 1 pairs") && t.contains("palette PNG"), "{t}");
    assert!(t.contains("no problems found"), "{t}");
    // A stray mask: reported, exit status 1.
    std::fs::copy(dir.join("train/masks/synth000000.png"), dir.join("train/masks/stray.png")).unwrap();
    let o = segkit(&["data", "check", dir.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["problems"][0].as_str().unwrap().contains("stray.png"));
}

/// An explicitly requested GPU that cannot be used is an error (exit 2) that says what was
/// found: no adapter, or the detected adapter and driver when its driver crashes (Mesa 25.0's
/// lavapipe does, docs/GPU.md); never a segfault of segkit itself. Where the driver works, the
/// probe passes and a two-step run finishes.
#[test]
fn an_unusable_gpu_is_an_error_naming_the_driver() {
    let out = scratch("gpu-error");
    let dir = format!("train.out_dir={:?}", out.display().to_string());
    let o = segkit(&["train", "--device", "vulkan", "--set", "train.max_steps=2", "--set", &dir]);
    let t = text(&o);
    match o.status.code() {
        Some(0) => assert!(t.contains("device: GPU through Vulkan"), "{t}"),
        Some(2) => assert!(
            t.contains("no Vulkan adapter could be opened")
                || (t.contains("crashed while compiling a test kernel; detected adapter:") && t.contains("Vulkan")),
            "{t}"
        ),
        other => panic!("exit {other:?}: {t}"),
    }
    let o = segkit(&["selftest", "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("selftest compares a GPU with the CPU"));
}
