//! The adapter check through the binary (`segkit_train::adapter_check`, the CLI's device probe):
//! an adapter that computes a wrong gradient is refused with a message naming the adapter, the
//! failing check and the ways out; the verdict is remembered, honoured, invalidated by a change
//! of its key and refreshed by `segkit selftest`; `--trust-device` trains anyway.
//!
//! A bad adapter without a bad driver: `SEGKIT_FAULT=wrong-gpu-gradient` makes the checks see
//! the GPU side's first gradient wrong. The GPU here is Mesa's software Vulkan driver
//! (lavapipe), which `scripts/install-vulkan-cpu.sh` installs and `.ci/run` runs first: under
//! `CI=true` (or `SEGKIT_GPU_TESTS=require`) a missing driver fails the test, elsewhere it is a
//! loud skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use segkit_train::adapter_check::{Cache, Entry};
use segkit_train::device::{Api, adapter_for};

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("segkit-adapter-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Whether lavapipe is there; a skip (or, where the GPU path must be tested, a failure) if not.
fn lavapipe_or_skip() -> bool {
    if adapter_for(Api::Vulkan).is_some_and(|a| a.is_software()) {
        return true;
    }
    let require = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("SEGKIT_GPU_TESTS").is_ok_and(|v| v == "require");
    assert!(!require, "no lavapipe adapter (CI=true or SEGKIT_GPU_TESTS=require: the GPU tests must run)");
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipping the adapter-check test: no lavapipe adapter; run scripts/install-vulkan-cpu.sh"
    );
    false
}

/// `segkit ARGS` with its own cache folder and, with `fault`, the wrong-gradient hook.
fn segkit(cache: &Path, fault: bool, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_segkit"));
    c.args(args).env("SEGKIT_CACHE_DIR", cache);
    if fault {
        c.env("SEGKIT_FAULT", "wrong-gpu-gradient");
    } else {
        c.env_remove("SEGKIT_FAULT");
    }
    c.output().expect("running segkit")
}

/// A tiny U-Net run of one step on lavapipe (`extra` appended).
fn train(cache: &Path, out: &Path, fault: bool, extra: &[&str]) -> Output {
    let dir = format!("train.out_dir={:?}", out.display().to_string());
    let mut args = vec!["train", "--device", "vulkan", "--set", &dir];
    for s in [
        "data.synth_size=16",
        "data.synth_train=4",
        "data.synth_val=2",
        "augment.crop=16",
        "model.depth=2",
        "model.base_width=4",
        "train.batch_size=2",
        "train.epochs=0",
        "train.max_steps=1",
        "train.val_every=0",
        "train.val_every_steps=0",
        "train.grid_images=0",
        "train.workers=1",
    ] {
        args.extend(["--set", s]);
    }
    args.extend(extra);
    segkit(cache, fault, &args)
}

fn entries(cache: &Path) -> Vec<Entry> {
    Cache::in_dir(cache).entries()
}

fn unet_verdicts(cache: &Path) -> Vec<Entry> {
    entries(cache).into_iter().filter(|e| e.key.kind == "unet" && e.key.device == "vulkan").collect()
}

#[test]
fn a_wrong_adapter_is_refused_remembered_and_checked_again() {
    if !lavapipe_or_skip() {
        return;
    }
    let cache = scratch("cache");
    let out = scratch("runs");

    // A wrong gradient: refused, with the adapter, the failing check and every way out named.
    let o = train(&cache, &out, true, &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    for want in [
        "refusing vulkan",
        "llvmpipe",
        "gradients/unet",
        "checked now",
        "--device cpu",
        "--trust-device",
        "at your own risk",
    ] {
        assert!(t.contains(want), "`{want}` missing from:\n{t}");
    }
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(), "a refused run must not start: {t}");
    let v = unet_verdicts(&cache);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].checks.iter().any(|c| c.name == "gradients/unet" && !c.passed), "{v:?}");
    assert!(v[0].key.adapter.contains("llvmpipe") && !v[0].key.segkit.is_empty(), "{v:?}");

    // Remembered: refused again at once, without running a check, even with a correct driver.
    let o = train(&cache, &out, false, &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("remembered from its check on") && !t.contains("checking "), "{t}");

    // --trust-device: trains anyway, saying that it is at the user's risk.
    let o = train(&cache, &out, false, &["--trust-device"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("warning: --trust-device") && t.contains("although it failed"), "{t}");

    // Another segkit build (or driver) is another key: checked again, and passing this time.
    let mut all = entries(&cache);
    for e in &mut all {
        e.key.segkit = format!("{} (an older build)", e.key.segkit);
    }
    std::fs::write(Cache::in_dir(&cache).path(), serde_json::to_vec(&all).unwrap()).unwrap();
    let o = train(&cache, &out, false, &[]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("checking ") && t.contains("device check for unet: passed"), "{t}");
    let v = unet_verdicts(&cache);
    assert_eq!(v.len(), 2, "the old build's verdict and this one's: {v:?}");
    assert!(v.iter().any(|e| e.checks.iter().all(|c| c.passed) && !e.key.segkit.contains("older")), "{v:?}");
    // ... and answered from the cache from then on.
    let o = train(&cache, &out, false, &[]);
    let t = text(&o);
    assert!(o.status.success() && !t.contains("checking "), "{t}");

    // `segkit selftest` rewrites the verdict from its own results: a failure it finds is what
    // training then refuses on, and a later clean selftest lifts the refusal.
    let o = segkit(&cache, true, &["selftest", "--device", "vulkan"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = train(&cache, &out, false, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("remembered from its check on"), "{}", text(&o));
    let o = segkit(&cache, false, &["selftest", "--device", "vulkan"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = train(&cache, &out, false, &[]);
    let t = text(&o);
    assert!(o.status.success() && !t.contains("checking "), "{t}");

    let _ = std::fs::remove_dir_all(&cache);
    let _ = std::fs::remove_dir_all(&out);
}
