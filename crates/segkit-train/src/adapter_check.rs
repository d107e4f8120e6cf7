//! The GPU checked against the CPU before a run uses it, and the verdict remembered.
//!
//! segkit runs on whatever GPU and driver a user has, and a wrong kernel on some driver is not an
//! exotic case: on Debian 12's own OpenGL driver (Mesa 22.3's llvmpipe) every FCN trained with a
//! wrong conv1_2 weight gradient while its losses looked fine (docs/GPU.md). So the first time a
//! command uses an adapter for a model kind, the CLI's device probe (a child process, so that a
//! driver crash cannot take the run with it) runs the selftest's checks of that kind at tiny
//! sizes: the forward check of each of the kind's cases, and for training their gradient checks.
//! An adapter that fails one is refused.
//!
//! The verdict is kept in the user's cache folder ([`Cache::default_location`]) under its
//! [`Key`]: the device name (which picks the shader compiler), the adapter with its driver and
//! driver version, the segkit build ([`segkit_build`]) and the model kind. A later run with the
//! same key starts at once, pass or fail; `segkit selftest` rewrites the verdicts of every kind
//! from its own results.
//!
//! Invariant: a verdict answers only the exact key it was made for, and only for the checks it
//! holds (an inference verdict, made of forward checks alone, does not answer for training).
//! A new driver, a rebuilt segkit or another compiler means a new check.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use burn::prelude::*;
use segkit_models::ModelKind;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::selftest::{self, CheckResult};

/// What the adapter is about to be used for: training needs correct gradients, inference only
/// correct forward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Train,
    Infer,
}

impl Purpose {
    fn gradients(self) -> bool {
        self == Purpose::Train
    }

    pub fn describe(self) -> &'static str {
        match self {
            Purpose::Train => "training",
            Purpose::Infer => "inference",
        }
    }
}

/// What a verdict is valid for; any field that differs makes it a different verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    /// The device name (`wgpu`, `vulkan`, `opengl`, `auto`), which picks the shader compiler.
    pub device: String,
    /// The adapter, driver and driver version as the graphics API reports them
    /// (`device::AdapterInfo::describe`).
    pub adapter: String,
    /// The segkit build ([`segkit_build`]).
    pub segkit: String,
    /// The model kind (`fcn8s`, `unet`, ...).
    pub kind: String,
    /// The GPU convolution path (`--gpu-conv`: `gemm` or `burn`): different kernels, a different
    /// verdict. Entries written before it existed have none and match no key.
    #[serde(default)]
    pub gpu_conv: String,
}

impl Key {
    /// The key for this segkit build ([`segkit_build`]).
    pub fn new(device: &str, adapter: &str, kind: ModelKind) -> Key {
        Key {
            device: device.into(),
            adapter: adapter.into(),
            segkit: segkit_build(),
            kind: kind.name().into(),
            gpu_conv: segkit_models::conv::gpu_conv().name().into(),
        }
    }
}

/// One check as remembered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredCheck {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// A verdict: the checks run for one key, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub key: Key,
    pub checks: Vec<StoredCheck>,
    /// Seconds since the Unix epoch.
    pub checked_at: u64,
}

impl Entry {
    /// Whether this entry holds every check in `names`.
    fn covers(&self, names: &[String]) -> bool {
        names.iter().all(|n| self.checks.iter().any(|c| &c.name == n))
    }
}

/// The segkit build a verdict was made by: the version and the executable's size and
/// modification time, so that a rebuilt binary (a changed kernel under the same version number)
/// checks again.
pub fn segkit_build() -> String {
    let version = env!("CARGO_PKG_VERSION");
    let exe = std::env::current_exe().and_then(std::fs::metadata);
    match exe {
        Ok(m) => {
            let mtime = m.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
            format!("{version} (executable {} bytes, modified {mtime})", m.len())
        }
        Err(_) => version.to_string(),
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The file of remembered verdicts: `adapter-checks.json`, a JSON list of [`Entry`].
#[derive(Debug, Clone)]
pub struct Cache {
    path: PathBuf,
}

/// At most this many verdicts are kept (the newest), so that the file stays small across driver
/// and segkit updates.
const MAX_ENTRIES: usize = 256;

impl Cache {
    /// The cache in `dir`.
    pub fn in_dir(dir: &Path) -> Cache {
        Cache { path: dir.join("adapter-checks.json") }
    }

    /// `$SEGKIT_CACHE_DIR`, else `$XDG_CACHE_HOME/segkit`, else `$HOME/.cache/segkit`; `None`
    /// when none is set (then every run checks its adapter).
    pub fn default_location() -> Option<Cache> {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let dir = var("SEGKIT_CACHE_DIR")
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("segkit")))
            .or_else(|| var("HOME").map(|d| d.join(".cache").join("segkit")))?;
        Some(Cache::in_dir(&dir))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every remembered verdict. A missing file is an empty cache; an unreadable or damaged one
    /// is too (it is rewritten at the next store): a cache can only save time, never stop a run.
    pub fn entries(&self) -> Vec<Entry> {
        std::fs::read(&self.path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// The verdict for `key`, if one is remembered.
    pub fn lookup(&self, key: &Key) -> Option<Entry> {
        self.entries().into_iter().find(|e| &e.key == key)
    }

    /// Remembers `new`, replacing the verdicts with the same keys; written atomically.
    pub fn store(&self, new: &[Entry]) -> Result<(), TrainError> {
        if new.is_empty() {
            return Ok(());
        }
        let mut all: Vec<Entry> = self.entries().into_iter().filter(|e| !new.iter().any(|n| n.key == e.key)).collect();
        all.extend(new.iter().cloned());
        all.sort_by_key(|e| std::cmp::Reverse(e.checked_at));
        all.truncate(MAX_ENTRIES);
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| TrainError::write(dir, e))?;
        }
        let bytes = serde_json::to_vec_pretty(&all).map_err(|e| TrainError::Config(e.to_string()))?;
        crate::write_atomic(&self.path, &bytes)
    }
}

/// What [`check`] tells its caller as it goes.
pub enum Progress<'a> {
    /// A remembered verdict answers for `kind`; nothing is run.
    Cached { kind: ModelKind, entry: &'a Entry },
    /// The checks of `kind` start (compiling kernels on a cold driver can take seconds).
    Checking { kind: ModelKind, checks: &'a [String] },
    /// One check ended.
    Result(&'a CheckResult),
    /// The verdict could not be written to the cache (the message names the file); the checks
    /// stand, and the next run checks again.
    NotKept(String),
}

/// The verdict for one model kind.
#[derive(Debug, Clone)]
pub struct KindVerdict {
    pub kind: ModelKind,
    pub checks: Vec<StoredCheck>,
    /// Remembered from an earlier run (`checked_at`), or run now.
    pub cached: bool,
    pub checked_at: u64,
    /// Seconds the checks took (0 when cached).
    pub seconds: f64,
}

impl KindVerdict {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    pub fn failures(&self) -> impl Iterator<Item = &StoredCheck> {
        self.checks.iter().filter(|c| !c.passed)
    }
}

/// The checks `purpose` needs for `kind` on the GPU `gpu` (opened as `device_name`), answered
/// from `cache` where it holds them and run (then stored) where it does not. With `cache` `None`
/// every check runs and nothing is stored.
pub fn check(
    device_name: &str,
    gpu: &Device,
    adapter: &str,
    kinds: &[ModelKind],
    purpose: Purpose,
    cache: Option<&Cache>,
    report: &mut dyn FnMut(Progress<'_>),
) -> Vec<KindVerdict> {
    let mut verdicts = Vec::new();
    for &kind in kinds {
        let key = Key::new(device_name, adapter, kind);
        let names = selftest::check_names(kind, purpose.gradients());
        if let Some(entry) = cache.and_then(|c| c.lookup(&key)).filter(|e| e.covers(&names)) {
            report(Progress::Cached { kind, entry: &entry });
            let checks = entry.checks.iter().filter(|c| names.contains(&c.name)).cloned().collect();
            verdicts.push(KindVerdict { kind, checks, cached: true, checked_at: entry.checked_at, seconds: 0.0 });
            continue;
        }
        report(Progress::Checking { kind, checks: &names });
        let t0 = Instant::now();
        let mut results = Vec::new();
        selftest::check_kind(kind, gpu, purpose.gradients(), &mut |r| {
            report(Progress::Result(&r));
            results.push(r);
        });
        let checks: Vec<StoredCheck> = results.iter().map(stored).collect();
        let entry = Entry { key, checks: checks.clone(), checked_at: now() };
        // A cache only saves time: a folder that cannot be written never stops the run.
        if let Some(Err(e)) = cache.map(|c| c.store(std::slice::from_ref(&entry))) {
            report(Progress::NotKept(e.to_string()));
        }
        verdicts.push(KindVerdict {
            kind,
            checks,
            cached: false,
            checked_at: entry.checked_at,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    verdicts
}

fn stored(r: &CheckResult) -> StoredCheck {
    StoredCheck { name: r.name.clone(), passed: r.passed, detail: r.detail.clone() }
}

/// The verdicts a full selftest run gives, one per model kind whose checks all ran: what
/// `segkit selftest` stores, replacing whatever was remembered for those keys.
pub fn entries_from_selftest(device_name: &str, adapter: &str, results: &[CheckResult]) -> Vec<Entry> {
    let at = now();
    ModelKind::ALL
        .into_iter()
        .filter_map(|kind| {
            let names = selftest::check_names(kind, true);
            let checks: Vec<StoredCheck> = results.iter().filter(|r| names.contains(&r.name)).map(stored).collect();
            let entry = Entry { key: Key::new(device_name, adapter, kind), checks, checked_at: at };
            entry.covers(&names).then_some(entry)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("segkit-adapter-check-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn key(adapter: &str, kind: &str) -> Key {
        Key::new("vulkan", adapter, ModelKind::parse(kind).expect("a model kind"))
    }

    fn entry(key: Key, passed: bool, at: u64) -> Entry {
        let checks = vec![StoredCheck { name: "forward/unet".into(), passed, detail: String::new() }];
        Entry { key, checks, checked_at: at }
    }

    /// A verdict answers its own key only: another driver version, device name (compiler), segkit
    /// build or model kind finds nothing, and a store replaces the old verdict of the same key.
    #[test]
    fn a_verdict_answers_exactly_its_key() {
        let dir = scratch("key");
        let cache = Cache::in_dir(&dir);
        assert!(cache.lookup(&key("llvmpipe, driver Mesa 22.3.6", "fcn8s")).is_none());
        let k = key("llvmpipe, driver Mesa 22.3.6", "fcn8s");
        cache.store(&[entry(k.clone(), false, 1)]).unwrap();
        assert!(!cache.lookup(&k).unwrap().checks[0].passed);
        let check = |other: Key| assert!(cache.lookup(&other).is_none(), "{other:?} must not be answered");
        check(key("llvmpipe, driver Mesa 25.0.7", "fcn8s"));
        check(key("llvmpipe, driver Mesa 22.3.6", "unet"));
        check(Key { device: "wgpu".into(), ..k.clone() });
        check(Key { segkit: "0.1.0 (another build)".into(), ..k.clone() });
        check(Key { gpu_conv: "burn".into(), ..k.clone() });
        cache.store(&[entry(k.clone(), true, 2)]).unwrap();
        assert_eq!(cache.entries().len(), 1);
        assert!(cache.lookup(&k).unwrap().checks[0].passed);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A damaged cache file is an empty cache, and the next store rewrites it whole.
    #[test]
    fn a_damaged_cache_is_empty_and_rewritten() {
        let dir = scratch("damaged");
        std::fs::create_dir_all(&dir).unwrap();
        let cache = Cache::in_dir(&dir);
        std::fs::write(cache.path(), b"{ not json").unwrap();
        assert!(cache.entries().is_empty());
        cache.store(&[entry(key("a", "unet"), true, 5)]).unwrap();
        assert_eq!(cache.entries().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A cache folder that cannot be written is reported, not an error: the checks still answer.
    #[test]
    fn an_unwritable_cache_is_reported_and_the_checks_still_answer() {
        let dir = scratch("unwritable");
        std::fs::create_dir_all(&dir).unwrap();
        // A file where the cache folder should be: nothing can be created under it.
        let blocker = dir.join("not-a-folder");
        std::fs::write(&blocker, b"").unwrap();
        let cache = Cache::in_dir(&blocker);
        let mut not_kept = Vec::new();
        let v = check("cpu", &Device::flex(), "the CPU", &[ModelKind::Unet], Purpose::Infer, Some(&cache), &mut |p| {
            if let Progress::NotKept(m) = p {
                not_kept.push(m)
            }
        });
        assert!(v[0].passed() && !v[0].cached, "{v:?}");
        assert_eq!(not_kept.len(), 1, "{not_kept:?}");
        assert!(not_kept[0].contains("not-a-folder"), "the message names the path: {not_kept:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The newest verdicts are kept when there are too many.
    #[test]
    fn the_cache_keeps_the_newest_verdicts() {
        let dir = scratch("bounded");
        let cache = Cache::in_dir(&dir);
        let many: Vec<Entry> =
            (0..MAX_ENTRIES as u64 + 10).map(|i| entry(key(&format!("gpu {i}"), "unet"), true, i)).collect();
        cache.store(&many).unwrap();
        let kept = cache.entries();
        assert_eq!(kept.len(), MAX_ENTRIES);
        assert!(kept.iter().all(|e| e.checked_at >= 10));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// On the CPU against itself every check passes; the first call runs them and stores the
    /// verdict, the second answers from the cache without running anything, and an inference
    /// verdict does not answer for training (it holds no gradient checks).
    #[test]
    fn checks_run_once_then_come_from_the_cache() {
        let dir = scratch("flow");
        let cache = Cache::in_dir(&dir);
        let cpu = Device::flex();
        let run = |purpose, ran: &mut Vec<String>| {
            check("cpu", &cpu, "the CPU", &[ModelKind::Unet], purpose, Some(&cache), &mut |p| {
                if let Progress::Result(r) = p {
                    ran.push(r.name.clone())
                }
            })
        };
        let mut ran = Vec::new();
        let v = run(Purpose::Infer, &mut ran);
        assert_eq!(ran, selftest::check_names(ModelKind::Unet, false));
        assert!(v[0].passed() && !v[0].cached);
        ran.clear();
        let v = run(Purpose::Infer, &mut ran);
        assert!(ran.is_empty() && v[0].cached && v[0].passed());
        let v = run(Purpose::Train, &mut ran);
        assert_eq!(ran, selftest::check_names(ModelKind::Unet, true));
        assert!(v[0].passed() && !v[0].cached);
        ran.clear();
        let v = run(Purpose::Infer, &mut ran);
        assert!(ran.is_empty() && v[0].cached, "a training verdict answers for inference too");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
