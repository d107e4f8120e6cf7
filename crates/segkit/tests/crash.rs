//! Crash-proof training as a user meets it: `segkit train` processes killed at many points
//! (SIGKILL, and aborts inside file writes), a full disk, corrupt checkpoints given to every
//! command. docs/RELIABILITY.md lists the promises these tests check.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use segkit_train::checkpoint::Checkpoint;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("segkit-crash-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A tiny quick-start run on the CPU: 3 epochs of 8 steps, validation every epoch, a
/// checkpoint after every step.
fn tiny_args(out: &Path, name: &str) -> Vec<String> {
    let mut a: Vec<String> = ["train", "--device", "cpu"].iter().map(|s| s.to_string()).collect();
    for kv in [
        "data.synth_size=16",
        "data.synth_train=32",
        "data.synth_val=4",
        "augment.crop=16",
        "model.depth=2",
        "model.base_width=4",
        "train.batch_size=4",
        "train.epochs=3",
        "train.val_every=1",
        "train.workers=2",
        "train.grid_images=2",
        "train.checkpoint_every=1",
    ] {
        a.extend(["--set".to_string(), kv.to_string()]);
    }
    a.extend(["--set".into(), format!("train.out_dir={:?}", out.display().to_string())]);
    a.extend(["--set".into(), format!("name={name}")]);
    a
}

fn segkit(args: &[String], fault: Option<&str>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_segkit"));
    c.args(args).stdin(Stdio::null());
    match fault {
        Some(f) => c.env("SEGKIT_FAULT", f),
        None => c.env_remove("SEGKIT_FAULT"),
    };
    c
}

/// metrics.csv without its last column (elapsed seconds, the one thing a resume may change).
fn metrics_without_time(dir: &Path) -> Vec<String> {
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap_or_default();
    csv.lines().map(|l| l.rsplit_once(',').map_or(l, |(head, _)| head).to_string()).collect()
}

fn step_of(dir: &Path) -> usize {
    Checkpoint::read_meta(&dir.join("last.safetensors")).map_or(0, |(_, _, s)| s.step)
}

fn finished(o: &Output) -> bool {
    o.status.success() && text(o).contains("done: ")
}

/// The uninterrupted run everything is compared with.
fn reference(out: &Path) -> (Vec<String>, Checkpoint) {
    let o = segkit(&tiny_args(out, "reference"), None).output().unwrap();
    assert!(finished(&o), "{}", text(&o));
    let dir = out.join("reference");
    (metrics_without_time(&dir), Checkpoint::load(&dir.join("last.safetensors")).unwrap())
}

/// The soak: one run killed again and again, each time at a different kind of moment, and
/// resumed with `segkit train --resume` after every kill. Its metrics.csv and final checkpoint
/// must equal the uninterrupted run's exactly.
#[test]
fn a_run_killed_at_every_kind_of_moment_resumes_to_the_same_result() {
    let out = scratch("soak");
    let (want_metrics, want_final) = reference(&out);
    let dir = out.join("soak");
    let resume: Vec<String> = vec!["train".into(), "--resume".into(), dir.display().to_string()];

    // Kill points, relative to where each round starts (`k` is the step it resumes from).
    let plans: Vec<Box<dyn Fn(usize) -> String>> = vec![
        Box::new(|k| format!("abort-after-step={}", k + 2)),
        Box::new(|_| "abort-in-write=last.safetensors:2".into()),
        Box::new(|_| "abort-in-write=metrics.csv:1".into()),
        Box::new(|_| "abort-in-write=last.safetensors:1".into()),
        Box::new(|_| "abort-in-write=loss.png:1".into()),
        Box::new(|k| format!("abort-after-step={}", k + 1)),
        Box::new(|_| "abort-in-write=config.toml:1".into()),
    ];
    let (mut kills, mut planned) = (0, 0);
    let mut first = true;
    for plan in &plans {
        let k = step_of(&dir);
        let args = if first { tiny_args(&out, "soak") } else { resume.clone() };
        let fault = plan(k);
        let o = segkit(&args, Some(&fault)).output().unwrap();
        if finished(&o) {
            break;
        }
        assert!(o.status.code() != Some(0) && !text(&o).contains("panicked"), "{fault}: {}", text(&o));
        kills += 1;
        planned += 1;
        first = false;
    }
    // Real SIGKILLs at pseudo-random moments: once the resumed process has saved 1-3 new
    // checkpoints, after a further 0-15 ms (inside a step, a validation or a write).
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut sigkills = 0;
    for _ in 0..3 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let start = step_of(&dir);
        let target = start + 1 + (rng % 3) as usize;
        let extra = Duration::from_millis((rng >> 8) % 16);
        let mut child = segkit(&resume, None).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let t = Instant::now();
        while child.try_wait().unwrap().is_none() && step_of(&dir) < target && t.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(extra);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            sigkills += 1;
        }
        child.wait().unwrap();
    }
    kills += sigkills;
    eprintln!("soak: {planned} planned aborts, {sigkills} SIGKILLs, resumed to step {}", step_of(&dir));
    assert!(sigkills >= 1, "the run ended before any SIGKILL: make it longer");
    assert_eq!(planned, plans.len(), "every planned fault must kill a process before the run ends");
    let o = segkit(&resume, None).output().unwrap();
    // The run may have finished inside the SIGKILL rounds: resuming a finished run is then a
    // no-op that still succeeds.
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(metrics_without_time(&dir), want_metrics, "metrics.csv after {kills} kills");
    let got = Checkpoint::load(&dir.join("last.safetensors")).unwrap();
    assert_eq!(got.state.step, want_final.state.step);
    assert!(got.model == want_final.model, "final weights differ after {kills} kills");
    assert!(got.optim == want_final.optim, "final optimiser state differs after {kills} kills");
}

/// A full disk (here: the file-size limit, `ulimit -f`, with SIGXFSZ ignored, which needs no
/// root): the run stops with an error naming the file, leaves no partial file, keeps the
/// previous checkpoint intact, and resumes to the uninterrupted result once there is room.
#[test]
fn a_full_disk_stops_the_run_and_keeps_the_checkpoint() {
    let out = scratch("disk");
    let (want_metrics, _) = reference(&out);
    let o = segkit(&tiny_args(&out, "full"), Some("abort-after-step=2")).output().unwrap();
    assert!(!o.status.success());
    let dir = out.join("full");
    let before = std::fs::read(dir.join("last.safetensors")).unwrap();
    let limit_kb = before.len() / 1024 / 2;
    assert!(limit_kb >= 8, "the checkpoint ({} bytes) must exceed the config by far", before.len());
    let script = format!(
        "trap '' XFSZ; ulimit -f {limit_kb}; exec {:?} train --resume {:?}",
        env!("CARGO_BIN_EXE_segkit"),
        dir.display().to_string()
    );
    let o = Command::new("bash").args(["-c", &script]).env_remove("SEGKIT_FAULT").output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains(&format!("cannot write {}", dir.join("last.safetensors").display())), "{t}");
    assert!(t.contains("file-size limit") && !t.contains("panicked"), "{t}");
    assert_eq!(std::fs::read(dir.join("last.safetensors")).unwrap(), before, "the checkpoint changed");
    assert!(!dir.join("last.safetensors.tmp").exists(), "a partial file was left");
    let o = segkit(&["train".into(), "--resume".into(), dir.display().to_string()], None).output().unwrap();
    assert!(finished(&o), "{}", text(&o));
    assert_eq!(metrics_without_time(&dir), want_metrics);
}

/// A corrupt or foreign file given to each command that reads checkpoints is an error naming
/// the file and what is wrong, never a panic; `--resume` falls back to the checkpoint before
/// the newest when the newest is unreadable, and says so.
#[test]
fn corrupt_checkpoints_are_errors_naming_the_file() {
    let out = scratch("corrupt");
    let o = segkit(&tiny_args(&out, "good"), None).output().unwrap();
    assert!(finished(&o), "{}", text(&o));
    let good = out.join("good").join("last.safetensors");
    let bytes = std::fs::read(&good).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize + 8;
    let mut flipped = bytes.clone();
    flipped[header + (bytes.len() - header) / 2] ^= 0x10;
    // A digit of the training state in the metadata: the header still parses, the checksum
    // catches it.
    let mut meta_flipped = bytes.clone();
    let key = bytes.windows(11).position(|w| w == b"optim_steps").unwrap();
    let at = key + bytes[key..].iter().position(u8::is_ascii_digit).unwrap();
    meta_flipped[at] = b'0' + (meta_flipped[at] - b'0' + 1) % 10;
    let files: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", bytes[..bytes.len() / 2].to_vec(), "truncated"),
        ("flipped", flipped, "corrupt"),
        ("meta-flipped", meta_flipped, "corrupt"),
        ("empty", vec![], "not a safetensors file"),
        ("noise", (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect(), "not a safetensors file"),
    ];
    let img_dir = out.join("images");
    let o = Command::new(env!("CARGO_BIN_EXE_segkit"))
        .args(["data", "synth", "--out", img_dir.to_str().unwrap(), "--count", "1", "--size", "16"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let check = |what: &str, args: Vec<String>, file: &Path, says: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_segkit")).args(&args).output().unwrap();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{what}: {args:?}: {t}");
        assert!(t.contains(&file.display().to_string()), "{what}: the error must name {}: {t}", file.display());
        assert!(t.contains(says) && !t.contains("panicked"), "{what}: expected `{says}`: {t}");
    };
    for (what, content, says) in &files {
        let f = out.join(format!("{what}.safetensors"));
        std::fs::write(&f, content).unwrap();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
        let fs = f.display().to_string();
        check(what, s(&["eval", &fs, "--device", "cpu"]), &f, says);
        let pred = out.join("pred").display().to_string();
        check(what, s(&["predict", &fs, img_dir.to_str().unwrap(), "--out", &pred, "--device", "cpu"]), &f, says);
        let exp = out.join("exp.safetensors").display().to_string();
        check(what, s(&["export", &fs, "-o", &exp]), &f, says);
        let cmp = out.join("cmp").display().to_string();
        check(what, s(&["compare", &fs, "--out", &cmp, "--device", "cpu"]), &f, says);
        let mut init = tiny_args(&out, &format!("init-{what}"));
        init.extend(["--set".into(), format!("train.init_from={fs:?}")]);
        check(what, init, &f, says);
        // --resume with only an unreadable last checkpoint.
        let run = out.join(format!("resume-{what}"));
        std::fs::create_dir_all(&run).unwrap();
        std::fs::copy(out.join("good").join("config.toml"), run.join("config.toml")).unwrap();
        std::fs::write(run.join("last.safetensors"), content).unwrap();
        check(what, s(&["train", "--resume", &run.display().to_string()]), &run.join("last.safetensors"), says);
    }

    // The newest checkpoint unreadable, the one before it fine: the run resumes from that one,
    // saying so, and keeps the unreadable file.
    let o = segkit(&tiny_args(&out, "fallback"), Some("abort-after-step=6")).output().unwrap();
    assert!(!o.status.success());
    let dir = out.join("fallback");
    assert!(dir.join("last.previous.safetensors").is_file());
    let last = std::fs::read(dir.join("last.safetensors")).unwrap();
    std::fs::write(dir.join("last.safetensors"), &last[..last.len() - 100]).unwrap();
    let o = segkit(&["train".into(), "--resume".into(), dir.display().to_string()], None).output().unwrap();
    let t = text(&o);
    assert!(finished(&o), "{t}");
    assert!(t.contains("resuming from the checkpoint before it") && t.contains("(step 4)"), "{t}");
    eprintln!("{}", t.lines().find(|l| l.contains("corrupt") || l.contains("truncated")).unwrap_or(""));
    assert!(dir.join("last.unreadable.safetensors").is_file());
    let (want, _) = reference(&scratch("corrupt-ref"));
    assert_eq!(metrics_without_time(&dir), want, "the fallback resume must still reproduce the run");
}
