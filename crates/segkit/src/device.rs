//! Opening a GPU safely, and only one that computes right.
//!
//! A GPU driver can crash the process (SIGSEGV) while compiling compute kernels, which no error
//! handling can catch, and it can compute wrong values without any error at all (Debian 12's
//! OpenGL driver gave every FCN a wrong weight gradient: docs/GPU.md). So before a command uses a
//! GPU, a child `segkit` process opens it, runs a tiny training step and then the selftest's
//! checks for the models the command will run, against the CPU (`segkit_train::adapter_check`),
//! unless a verdict for that adapter, driver, segkit build and model kind is remembered. Only if
//! the child survives and the checks pass does this process use the device; `--trust-device`
//! skips the checks, at the user's risk.
//!
//! The child reports on stdout, one finding a line, for `vet` to read as they come:
//! `DEVICE desc`, `ADAPTER describe`, `CACHED kind pass|fail checked_at`, `CHECKING kind n`,
//! `PASS|FAIL name seconds detail`, `VERDICT kind pass|fail seconds`, `NOTKEPT why` (the
//! verdict could not be cached). Exit 0: usable;
//! [`REFUSED`]: a check failed.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::prelude::*;
use segkit_models::{ModelConfig, ModelKind, SegModel};
use segkit_train::adapter_check::{self, Cache, Progress, Purpose};
use segkit_train::device::{AdapterInfo, Api};

/// The probe's exit status when the adapter computed wrong values.
const REFUSED: i32 = 3;

/// What a command is about to use a device for: the adapter check runs these kinds' checks.
#[derive(Debug, Clone)]
pub struct Use {
    pub kinds: Vec<ModelKind>,
    pub purpose: Purpose,
    /// `--trust-device`: use the adapter without checking it.
    pub trust: bool,
}

impl Use {
    pub fn train(kinds: impl IntoIterator<Item = ModelKind>, trust: bool) -> Use {
        Use { kinds: dedup(kinds), purpose: Purpose::Train, trust }
    }

    /// Inference with `kinds`; every kind when the command cannot tell yet which it will run.
    pub fn infer(kinds: impl IntoIterator<Item = ModelKind>, trust: bool) -> Use {
        let kinds = dedup(kinds);
        let kinds = if kinds.is_empty() { ModelKind::ALL.to_vec() } else { kinds };
        Use { kinds, purpose: Purpose::Infer, trust }
    }

    /// No model: only the probe's tiny step (`bench --conv`).
    pub fn none(trust: bool) -> Use {
        Use { kinds: Vec::new(), purpose: Purpose::Infer, trust }
    }
}

fn dedup(kinds: impl IntoIterator<Item = ModelKind>) -> Vec<ModelKind> {
    let mut v: Vec<ModelKind> = Vec::new();
    for k in kinds {
        if !v.contains(&k) {
            v.push(k);
        }
    }
    v
}

/// The hidden `__probe-device` command's arguments.
#[derive(clap::Args)]
pub struct ProbeArgs {
    name: String,
    /// `train` or `infer`: which checks to run.
    #[arg(long, default_value = "infer")]
    purpose: String,
    /// Comma-separated model kinds to check (none: only the tiny step).
    #[arg(long, default_value = "")]
    kinds: String,
    /// Report remembered verdicts, run no check.
    #[arg(long)]
    trust: bool,
}

/// The adapter behind a device name, as `vet` and the probe name it, and the name its verdicts
/// are kept under: `auto` trains with SPIR-V on a Vulkan adapter, which is what `vulkan` runs.
fn adapter_of(name: &str) -> (Option<AdapterInfo>, String) {
    if name == "auto" {
        let a = segkit_train::device::auto_adapter();
        let key = if a.as_ref().is_some_and(|a| a.api == "Vulkan") { "vulkan" } else { "wgpu" };
        return (a, key.to_string());
    }
    (Api::of(name).and_then(segkit_train::device::adapter_for), name.to_string())
}

/// The hidden `__probe-device NAME` command: open the device, run a tiny training step, then the
/// adapter check (see the module docs for what it prints).
pub fn probe_child(a: ProbeArgs) -> Result<i32> {
    let (device, desc) = segkit_train::device::select(&a.name)?;
    let mut cfg = ModelConfig::paper(ModelKind::Unet, 2);
    (cfg.base_width, cfg.depth, cfg.padded, cfg.in_channels) = (2, 1, true, 1);
    let ad = device.clone().autodiff();
    let model = SegModel::new(&cfg, &ad)?;
    let x = Tensor::<4>::ones([1, 1, 8, 8], &ad);
    let grads = model.forward(x).sum().backward();
    let _ = burn::optim::GradientsParams::from_grads(grads, &model);
    let _ = model.num_params();
    println!("DEVICE {desc}");
    // `auto` that settled on the CPU: nothing to check.
    if desc.starts_with("CPU") {
        return Ok(0);
    }
    let kinds: Vec<ModelKind> = a
        .kinds
        .split(',')
        .filter(|k| !k.is_empty())
        .map(|k| ModelKind::parse(k).with_context(|| format!("unknown model kind `{k}`")))
        .collect::<Result<_>>()?;
    let purpose = if a.purpose == "train" { Purpose::Train } else { Purpose::Infer };
    let (adapter, key_name) = adapter_of(&a.name);
    let adapter = adapter.map_or_else(|| desc.clone(), |a| a.describe());
    println!("ADAPTER {adapter}");
    let cache = Cache::default_location();
    if a.trust {
        // Nothing runs, but a remembered failure is worth saying.
        for &k in &kinds {
            let key = adapter_check::Key::new(&key_name, &adapter, k);
            if let Some(e) = cache.as_ref().and_then(|c| c.lookup(&key)) {
                print_cached(k, &e);
            }
        }
        return Ok(0);
    }
    let verdicts =
        adapter_check::check(&key_name, &device, &adapter, &kinds, purpose, cache.as_ref(), &mut |p| match p {
            Progress::Cached { kind, entry } => print_cached(kind, entry),
            Progress::NotKept(why) => println!("NOTKEPT {why}"),
            Progress::Checking { kind, checks } => println!("CHECKING {kind} {}", checks.len()),
            Progress::Result(r) => {
                println!("{} {} {:.1} {}", if r.passed { "PASS" } else { "FAIL" }, r.name, r.seconds, r.detail)
            }
        });
    for v in &verdicts {
        if !v.cached {
            println!("VERDICT {} {} {:.1}", v.kind, if v.passed() { "pass" } else { "fail" }, v.seconds);
        }
    }
    Ok(if verdicts.iter().all(|v| v.passed()) { 0 } else { REFUSED })
}

/// A remembered verdict as the probe reports it: the `CACHED` line and its failed checks.
fn print_cached(kind: ModelKind, e: &adapter_check::Entry) {
    let passed = e.checks.iter().all(|c| c.passed);
    println!("CACHED {kind} {} {}", if passed { "pass" } else { "fail" }, e.checked_at);
    for c in e.checks.iter().filter(|c| !c.passed) {
        println!("FAIL {} 0 {}", c.name, c.detail);
    }
}

/// What the probe child reported.
#[derive(Default)]
struct Report {
    device: String,
    adapter: String,
    /// Kinds answered from the cache: (kind, passed, checked_at).
    cached: Vec<(String, bool, u64)>,
    /// Failed checks: (name, detail).
    failed: Vec<(String, String)>,
    /// Kinds checked now: (kind, passed, seconds).
    checked: Vec<(String, bool, f64)>,
}

impl Report {
    fn read(&mut self, line: &str) {
        let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
        match tag {
            "DEVICE" => self.device = rest.to_string(),
            "ADAPTER" => self.adapter = rest.to_string(),
            "CACHED" => {
                let f: Vec<&str> = rest.split_whitespace().collect();
                if let [kind, verdict, at] = f[..] {
                    self.cached.push((kind.to_string(), verdict == "pass", at.parse().unwrap_or(0)));
                }
            }
            "FAIL" => {
                let mut f = rest.splitn(3, ' ');
                let name = f.next().unwrap_or("").to_string();
                let _seconds = f.next();
                self.failed.push((name, f.next().unwrap_or("").to_string()));
            }
            "VERDICT" => {
                let f: Vec<&str> = rest.split_whitespace().collect();
                if let [kind, verdict, s] = f[..] {
                    self.checked.push((kind.to_string(), verdict == "pass", s.parse().unwrap_or(0.0)));
                }
            }
            _ => {}
        }
    }
}

/// A Unix time as a UTC date and time, for messages.
fn utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm), valid for every date after 1970.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

/// The device name to use for `name`: `name` itself when its device survives the probe and
/// passes the adapter check for `usage` (or when it is the CPU); for `auto`, `cpu` when the GPU
/// driver crashes or computes wrong values. An explicitly requested GPU that crashes or computes
/// wrong values is an error that names the adapter, the failing check and the ways out.
pub fn vet(name: &str, usage: &Use) -> Result<String> {
    if name == "cpu" {
        return Ok(name.to_string());
    }
    let exe = std::env::current_exe().context("finding the segkit executable to probe the device")?;
    let kinds: Vec<&str> = usage.kinds.iter().map(|k| k.name()).collect();
    let purpose = if usage.purpose == Purpose::Train { "train" } else { "infer" };
    let mut cmd = Command::new(exe);
    cmd.args(["__probe-device", name, "--purpose", purpose, "--kinds", &kinds.join(",")]);
    // The child checks the convolution path this process will run.
    cmd.args(["--gpu-conv", segkit_models::conv::gpu_conv().name()]);
    if usage.trust {
        cmd.arg("--trust");
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("starting the device probe")?;
    let mut stderr = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut report = Report::default();
    let started = std::time::Instant::now();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.context("reading the device probe")?;
        if let Some(why) = line.strip_prefix("NOTKEPT ") {
            eprintln!("warning: the device check's verdict could not be kept ({why}); the next run checks again");
        }
        if let Some(rest) = line.strip_prefix("CHECKING ") {
            let kind = rest.split_whitespace().next().unwrap_or("?");
            let cache = Cache::default_location()
                .map_or("no cache folder: set SEGKIT_CACHE_DIR to keep it".to_string(), |c| {
                    c.path().display().to_string()
                });
            eprintln!(
                "checking {} against the CPU for {kind} {} (first use with this driver and segkit build; \
                 the verdict is kept in {cache})",
                report.adapter,
                usage.purpose.describe()
            );
        }
        report.read(&line);
    }
    let status = child.wait().context("waiting for the device probe")?;
    let stderr = err_reader.join().unwrap_or_default();
    for (kind, passed, s) in &report.checked {
        eprintln!(
            "device check for {kind}: {} in {s:.1} s (the probe took {:.1} s in all)",
            if *passed { "passed" } else { "FAILED" },
            started.elapsed().as_secs_f64()
        );
    }
    match status.code() {
        // `auto` that found no GPU: say so now rather than probe the adapters again here.
        Some(0) if name == "auto" && report.device.starts_with("CPU") => {
            // A software adapter (lavapipe) is never chosen: Burn's CPU backend is faster. Say
            // that one was seen, so that a user who expected a GPU knows what the system offers.
            match segkit_train::device::adapter_for(Api::Vulkan).filter(|a| a.is_software()) {
                Some(a) => eprintln!(
                    "--device auto: no GPU adapter found, only the software one ({}), which is slower \
                     than the CPU backend; using the CPU (--device vulkan or wgpu would use it)",
                    a.describe()
                ),
                None => eprintln!("--device auto: no GPU adapter found; using the CPU"),
            }
            Ok("cpu".to_string())
        }
        Some(0) => {
            if usage.trust {
                trusted_warning(name, &report);
            }
            Ok(name.to_string())
        }
        Some(REFUSED) if name == "auto" => {
            eprintln!(
                "--device auto: passing over {}, which computes wrong values ({}); using the CPU. \
                 `segkit selftest --device vulkan` shows every check; --device vulkan --trust-device uses it anyway, \
                 at your own risk",
                report.adapter,
                failures(&report)
            );
            Ok("cpu".to_string())
        }
        Some(REFUSED) => bail!("{}", refusal(name, usage, &report)),
        Some(_) if name == "auto" => Ok("cpu".to_string()),
        Some(_) => bail!("{}", stderr.trim().trim_start_matches("error: ")),
        None if name == "auto" => {
            eprintln!("the GPU driver crashed while compiling a test kernel; using the CPU (--device cpu)");
            Ok("cpu".to_string())
        }
        None => bail!("{}", crash_message(name)),
    }
}

fn failures(r: &Report) -> String {
    let v: Vec<String> = r.failed.iter().map(|(n, d)| format!("{n}: {d}")).collect();
    if v.is_empty() { "a check failed".to_string() } else { v.join("; ") }
}

/// `--trust-device`: the adapter is used unchecked; say so, and what is known against it.
fn trusted_warning(name: &str, r: &Report) {
    let bad: Vec<&(String, bool, u64)> = r.cached.iter().filter(|c| !c.1).collect();
    if bad.is_empty() {
        eprintln!(
            "warning: --trust-device: {} is used without checking it against the CPU; results are at your risk \
             (`segkit selftest --device {name}` checks it)",
            r.adapter
        );
    } else {
        eprintln!(
            "warning: --trust-device: using {} although it failed the check against the CPU on {} ({}); \
             its results may be wrong, at your own risk",
            r.adapter,
            utc(bad[0].2),
            failures(r)
        );
    }
}

/// Why an adapter is refused, and the ways out.
fn refusal(name: &str, usage: &Use, r: &Report) -> String {
    let when = match r.cached.iter().find(|c| !c.1) {
        Some((_, _, at)) => format!(
            "remembered from its check on {} (the verdict is kept until the driver or segkit changes; \
             `segkit selftest --device {name}` checks again)",
            utc(*at)
        ),
        None => "checked now".to_string(),
    };
    let other = match name {
        "vulkan" => "--device wgpu (cubecl's other shader compiler, WGSL)",
        "opengl" => "--device vulkan or wgpu (Vulkan; scripts/install-vulkan-cpu.sh installs Mesa's software one)",
        _ if r.adapter.contains("OpenGL") => {
            "--device vulkan (a Vulkan driver; wgpu fell back to OpenGL because there is none: \
             scripts/install-vulkan-cpu.sh installs Mesa's software one)"
        }
        _ => "--device vulkan (cubecl's SPIR-V compiler)",
    };
    // The one driver known to compute wrong values, with its cause (docs/GPU.md, section 3).
    let known = match segkit_train::device::mesa_major_in(&r.adapter) {
        Some(m) if m < 24 && r.adapter.contains("llvmpipe") => {
            " This is Mesa's llvmpipe before Mesa 24: it ends every loop of a kernel once 65,535 iterations \
             have run, silently, which cuts weight gradients short (docs/GPU.md, section 3); Mesa 24 or later \
             does not (scripts/install-vulkan-cpu.sh installs Mesa 25 on Debian 12), and --device cpu is \
             faster than any software driver."
        }
        _ => "",
    };
    format!(
        "refusing {name}: {} computes wrong values for {} ({when}): {}. The GPU is always checked against the \
         CPU before segkit uses it, and this one gave different results.{known} Ways out: --device cpu (always \
         correct); {other}; a driver update (docs/GPU.md lists the drivers known to fail); or --trust-device to \
         use it anyway, at your own risk: its results may be wrong",
        r.adapter,
        usage.purpose.describe(),
        failures(r)
    )
}

/// What a crashed probe means, naming the adapter and driver that were detected.
pub fn crash_message(name: &str) -> String {
    let detected = adapter_of(name).0;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_796_515_200 + 3_661), "2026-12-06 01:01 UTC");
    }

    /// The probe's lines as `vet` reads them: failures with details that hold spaces, cached
    /// verdicts with their time, and the seconds of checks run now.
    #[test]
    fn the_probe_report_is_read_line_by_line() {
        let mut r = Report::default();
        for l in [
            "DEVICE GPU through OpenGL/WGSL (default adapter)",
            "ADAPTER llvmpipe (LLVM 15.0.6, 256 bits), CPU adapter, OpenGL, driver 4.5 (Core Profile) Mesa 22.3.6",
            "CACHED unet pass 1796601600",
            "CHECKING fcn8s 2",
            "PASS forward/fcn8s 1.5 logits: 1.00e-7 relative (limit 1e-4)",
            "FAIL gradients/fcn8s 2.5 loss 1.1 vs 1.1 (0.00e0); 32 gradients, worst vgg.conv1_2.weight 1.03e0 relative",
            "VERDICT fcn8s fail 4.0",
        ] {
            r.read(l);
        }
        assert!(r.adapter.ends_with("Mesa 22.3.6") && r.device.starts_with("GPU through OpenGL"));
        assert_eq!(r.cached, vec![("unet".to_string(), true, 1_796_601_600)]);
        assert_eq!(r.failed.len(), 1);
        assert_eq!(r.failed[0].0, "gradients/fcn8s");
        assert!(r.failed[0].1.contains("worst vgg.conv1_2.weight 1.03e0"), "{:?}", r.failed);
        assert_eq!(r.checked, vec![("fcn8s".to_string(), false, 4.0)]);
        let msg = refusal("wgpu", &Use::train([ModelKind::Fcn8s], false), &r);
        for want in [
            "llvmpipe",
            "Mesa 22.3.6",
            "gradients/fcn8s",
            "--device cpu",
            "--device vulkan",
            "--trust-device",
            "checked now",
            "65,535 iterations",
        ] {
            assert!(msg.contains(want), "{want}: {msg}");
        }
    }
}
