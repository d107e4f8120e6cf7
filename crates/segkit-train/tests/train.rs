//! End-to-end training on tiny synthetic data on the CPU: the run directory, exact resume, eval
//! reproducing the best metrics, and the NaN guard.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::prelude::*;
use segkit_data::Dataset;
use segkit_train::RunConfig;
use segkit_train::eval::{evaluate, load_run};
use segkit_train::trainer::{Event, Observer, Outcome, TrainOptions, train};

/// Burn's device RNG (weight init, dropout) is per process: runs in one test binary take turns,
/// as two trainings in one process would have to.
static DEVICE_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("segkit-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tiny(out: &Path, extra: &[&str]) -> RunConfig {
    let mut o: Vec<String> = [
        "train.device=cpu",
        "data.synth_size=16",
        "data.synth_train=16",
        "data.synth_val=4",
        "augment.crop=16",
        "model.depth=2",
        "model.base_width=4",
        "train.batch_size=4",
        "train.epochs=2",
        "train.val_every=1",
        "train.workers=2",
        "train.grid_images=2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    o.push(format!("train.out_dir={:?}", out.display().to_string()));
    o.extend(extra.iter().map(|s| s.to_string()));
    RunConfig::quickstart(&o).unwrap()
}

/// Records losses; raises `stop` after step `stop_at`.
struct Record {
    losses: Vec<(usize, f32)>,
    stop: Arc<AtomicBool>,
    stop_at: usize,
}

impl Observer for Record {
    fn event(&mut self, e: Event<'_>) {
        if let Event::Step { step, loss, .. } = e {
            self.losses.push((step, loss));
            if step == self.stop_at {
                self.stop.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// metrics.csv without its last column (elapsed seconds, the one thing a resume may change).
fn metrics_without_time(dir: &Path) -> Vec<String> {
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    csv.lines().map(|l| l.rsplit_once(',').map_or(l, |(head, _)| head).to_string()).collect()
}

fn run(cfg: RunConfig, resume: Option<PathBuf>, stop_at: usize) -> (Outcome, Vec<(usize, f32)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut rec = Record { losses: Vec::new(), stop: stop.clone(), stop_at };
    let out = train(cfg, TrainOptions { resume, stop, resume_anyway: false }, &mut rec).unwrap();
    (out, rec.losses)
}

#[test]
fn resume_continues_exactly_and_eval_reproduces_best() {
    let _turn = DEVICE_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let out = scratch("resume");
    // Uninterrupted: 2 epochs of 4 steps.
    let (a, losses_a) = run(tiny(&out, &["name=a"]), None, usize::MAX);
    let Outcome::Finished { run_dir, steps, best_miou, .. } = a else { panic!("{a:?}") };
    assert_eq!(steps, 8);
    assert_eq!(losses_a.len(), 8);
    for f in [
        "config.toml",
        "last.safetensors",
        "best.safetensors",
        "metrics.csv",
        "loss.png",
        "miou.png",
        "val_samples.png",
    ] {
        assert!(run_dir.join(f).is_file(), "{f} missing");
    }
    let csv = std::fs::read_to_string(run_dir.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "header and one row per epoch:\n{csv}");

    // Stopped (Ctrl-C) after each step in turn, at every point of the step / validation /
    // checkpoint cycle: mid-epoch, at the last step of an epoch (before its validation), right
    // after a validation, and at the last step of the run. Each resumed run must reproduce the
    // uninterrupted one bit for bit: every step's loss, every metrics.csv column but the
    // elapsed time, and every tensor of the final checkpoint (weights, batch-norm statistics,
    // optimiser state).
    let reference = metrics_without_time(&run_dir);
    let final_a = segkit_train::checkpoint::Checkpoint::load(&run_dir.join("last.safetensors")).unwrap();
    for stop_at in 1..=7 {
        let name = format!("name=b{stop_at}");
        let (b, losses_b1) = run(tiny(&out, &[&name]), None, stop_at);
        let Outcome::Interrupted { run_dir: dir_b, step } = b else { panic!("{b:?}") };
        assert_eq!(step, stop_at);
        let cfg_b = RunConfig::load_stored(&dir_b.join("config.toml"), &[]).unwrap();
        let (b2, losses_b2) = run(cfg_b, Some(dir_b.clone()), usize::MAX);
        assert!(matches!(b2, Outcome::Finished { steps: 8, .. }), "{b2:?}");
        let resumed: Vec<(usize, u32)> =
            losses_b1.into_iter().chain(losses_b2).map(|(s, l)| (s, l.to_bits())).collect();
        let exact: Vec<(usize, u32)> = losses_a.iter().map(|&(s, l)| (s, l.to_bits())).collect();
        assert_eq!(resumed, exact, "stopped after step {stop_at}: losses differ");
        // metrics.csv's train_loss averages every step since the previous validation, across the
        // resume; the validation columns need batch-norm statistics restored exactly.
        assert_eq!(metrics_without_time(&dir_b), reference, "stopped after step {stop_at}: metrics.csv differs");
        let final_b = segkit_train::checkpoint::Checkpoint::load(&dir_b.join("last.safetensors")).unwrap();
        assert!(final_b.model == final_a.model, "stopped after step {stop_at}: final weights differ");
        assert!(final_b.optim == final_a.optim, "stopped after step {stop_at}: final optimiser state differs");
    }

    best_evaluates_to(&run_dir, best_miou);
}

/// Evaluating a run's best checkpoint over its val split reproduces the validation mean IoU
/// that chose it.
fn best_evaluates_to(run_dir: &Path, best_miou: f64) {
    let device = Device::flex();
    let loaded = load_run(run_dir, &device).unwrap();
    let ds = Dataset::open(&loaded.config.data, Path::new("")).unwrap();
    let val = ds.split("val").unwrap();
    let pass = evaluate(&loaded.model, &loaded.config, &ds, &val, &device, None, 0, false, &mut |_, _| {}).unwrap();
    assert!((pass.cm.scores().mean_iou - best_miou).abs() < 1e-9, "{} vs {best_miou}", pass.cm.scores().mean_iou);
}

/// `train.bn_recalibrate`: the training itself is untouched (every step's loss and every weight
/// as without it, bit for bit), only the batch-norm statistics differ; the best checkpoint
/// evaluates to the validation that chose it; a resume reproduces the run.
#[test]
fn recalibrated_validation_changes_only_the_statistics() {
    let _turn = DEVICE_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let out = scratch("recalibrate");
    let (plain, losses_plain) = run(tiny(&out, &["name=plain"]), None, usize::MAX);
    let (recal, losses_recal) = run(tiny(&out, &["name=recal", "train.bn_recalibrate=3"]), None, usize::MAX);
    let (Outcome::Finished { run_dir: dir_p, .. }, Outcome::Finished { run_dir: dir_r, best_miou, .. }) =
        (plain, recal)
    else {
        panic!("both runs finish");
    };
    let bits = |l: &[(usize, f32)]| l.iter().map(|&(s, v)| (s, v.to_bits())).collect::<Vec<_>>();
    assert_eq!(bits(&losses_recal), bits(&losses_plain), "recalibration changed the training losses");
    let load = |d: &Path| segkit_train::checkpoint::Checkpoint::load(&d.join("last.safetensors")).unwrap().model;
    let (p, r) = (load(&dir_p), load(&dir_r));
    let mut stats_differ = false;
    for (k, t) in &p {
        if k.contains("running_") {
            stats_differ |= t != &r[k];
        } else {
            assert!(t == &r[k], "{k}: recalibration changed a weight");
        }
    }
    assert!(stats_differ, "no batch-norm statistic changed: recalibration did not run");

    best_evaluates_to(&dir_r, best_miou);

    let (b, _) = run(tiny(&out, &["name=recal-b", "train.bn_recalibrate=3"]), None, 5);
    let Outcome::Interrupted { run_dir: dir_b, .. } = b else { panic!("{b:?}") };
    let cfg_b = RunConfig::load_stored(&dir_b.join("config.toml"), &[]).unwrap();
    let _ = run(cfg_b, Some(dir_b.clone()), usize::MAX);
    assert_eq!(metrics_without_time(&dir_b), metrics_without_time(&dir_r), "the resumed run validates differently");
    assert!(load(&dir_b) == r, "the resumed run's final checkpoint differs");
}

/// Counts skipped steps besides recording losses.
struct Skips(Record, Vec<usize>);
impl Observer for Skips {
    fn event(&mut self, e: Event<'_>) {
        if let Event::Skipped { step, .. } = e {
            self.1.push(step);
        }
        self.0.event(e);
    }
}

/// An absurd learning rate: the run stops at the first non-finite loss, naming the step and the
/// likely causes; the diverged model is not saved, so the last checkpoint is the last good one
/// and resumes. With `train.skip_nonfinite = 2` the bad steps are skipped, two of them, then
/// the run stops.
#[test]
fn exploding_loss_stops_with_advice_and_keeps_the_last_good_checkpoint() {
    let _turn = DEVICE_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let out = scratch("nan");
    let absurd = [
        "train.optimizer=\"sgd\"",
        "train.lr=1e30",
        "train.warmup_steps=0",
        "model.batch_norm=false",
        "train.checkpoint_every=1",
    ];
    let go = |extra: &[&str], resume: Option<PathBuf>| {
        let mut o: Vec<&str> = absurd.to_vec();
        o.extend(extra);
        let stop = Arc::new(AtomicBool::new(false));
        let mut obs = Skips(Record { losses: vec![], stop: stop.clone(), stop_at: 0 }, vec![]);
        let r = train(tiny(&out, &o), TrainOptions { resume, stop, resume_anyway: true }, &mut obs);
        (r, obs.0.losses, obs.1)
    };
    let (r, losses, skipped) = go(&["name=nan"], None);
    let msg = r.unwrap_err().to_string();
    let bad = losses.len() + 1;
    assert!(msg.contains(&format!("at step {bad}")) && msg.contains("train.lr"), "{msg}");
    assert!(skipped.is_empty());
    let dir = out.join("nan");
    let ck = segkit_train::checkpoint::Checkpoint::load(&dir.join("last.safetensors")).unwrap();
    assert_eq!(ck.state.step, bad - 1, "the checkpoint is the last good step's");
    assert!(ck.model.values().all(|t| t.values.iter().all(|v| v.is_finite())), "a diverged model was saved");
    assert!(msg.contains(&format!("The last good checkpoint (step {})", bad - 1)), "{msg}");
    // Resumable: the same divergence happens again at the same step.
    let (r, _, _) = go(&["name=nan"], Some(dir.clone()));
    assert!(r.unwrap_err().to_string().contains(&format!("at step {bad}")));

    let (r, losses, skipped) = go(&["name=skip", "train.skip_nonfinite=2"], None);
    let msg = r.unwrap_err().to_string();
    assert_eq!(skipped, vec![bad, bad + 1], "{msg}");
    assert_eq!(losses.len(), bad - 1);
    assert!(msg.contains(&format!("at step {}", bad + 2)), "{msg}");
}

/// `train.patience = 2` with a rate too small to change any prediction (and no batch norm, whose
/// statistics would): the first validation is
/// the best, the next two are not better, and the run ends there, early, with its best
/// checkpoint; a resume of it stays ended.
#[test]
fn early_stopping_after_patience_validations() {
    let _turn = DEVICE_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let out = scratch("patience");
    let cfg = tiny(
        &out,
        &[
            "name=p",
            "train.epochs=6",
            "train.patience=2",
            "train.lr=1e-12",
            "train.warmup_steps=0",
            "model.batch_norm=false",
        ],
    );
    let (o, losses) = run(cfg.clone(), None, usize::MAX);
    let Outcome::Finished { run_dir, steps, best_step, stopped_early, .. } = o else { panic!("{o:?}") };
    assert!(stopped_early);
    assert_eq!((steps, best_step, losses.len()), (12, 4, 12), "three validations of 4 steps each, the first the best");
    assert!(run_dir.join("best.safetensors").is_file());
    let (again, more) = run(cfg, Some(run_dir), usize::MAX);
    assert!(matches!(again, Outcome::Finished { steps: 12, stopped_early: true, .. }), "{again:?}");
    assert!(more.is_empty());
}

#[test]
fn empty_split_is_an_error() {
    let out = scratch("empty");
    let cfg = tiny(&out, &["name=empty", "data.synth_train=0"]);
    let stop = Arc::new(AtomicBool::new(false));
    let err = train(
        cfg,
        TrainOptions { resume: None, stop: stop.clone(), resume_anyway: false },
        &mut Record { losses: vec![], stop, stop_at: 0 },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("training split `train` has no samples"), "{err}");
}

#[test]
fn bad_config_names_the_key() {
    let err = RunConfig::quickstart(&["augment.crops=3".into()]).unwrap_err().to_string();
    assert!(err.contains("crops"), "{err}");
    let err = RunConfig::quickstart(&["model.model=\"fcn64s\"".into()]).unwrap_err().to_string();
    assert!(err.contains("fcn64s"), "{err}");
}

/// Two batches of 2 accumulated are one batch of 4: same losses, same weights.
#[test]
fn gradient_accumulation_matches_a_larger_batch() {
    let _turn = DEVICE_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let out = scratch("accum");
    let common = [
        "model.batch_norm=false",
        "train.optimizer=\"sgd\"",
        "train.lr=0.05",
        "train.warmup_steps=0",
        "train.schedule=\"constant\"",
        "train.epochs=1",
    ];
    let with = |name: &str, extra: &[&str]| {
        let mut o: Vec<&str> = common.to_vec();
        o.extend_from_slice(extra);
        o.push(name);
        tiny(&out, &o)
    };
    let (a, la) = run(with("name=big", &["train.batch_size=4", "train.accum_steps=1"]), None, usize::MAX);
    let (b, lb) = run(with("name=accum", &["train.batch_size=2", "train.accum_steps=2"]), None, usize::MAX);
    assert_eq!(la.len(), 4);
    assert_eq!(lb.len(), 4);
    for ((s, x), (_, y)) in la.iter().zip(&lb) {
        assert!((x - y).abs() < 1e-4, "step {s}: batch 4 loss {x}, accumulated {y}");
    }
    let weights = |o: Outcome| {
        let Outcome::Finished { run_dir, .. } = o else { panic!() };
        segkit_train::checkpoint::Checkpoint::load(&run_dir.join("last.safetensors")).unwrap().model
    };
    let (wa, wb) = (weights(a), weights(b));
    for (k, t) in &wa {
        let d = t.values.iter().zip(&wb[k].values).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(d < 1e-4, "{k} differs by {d}");
    }
}

/// Validation by steps: at every third step and at the end.
#[test]
fn validation_every_n_steps() {
    let _turn = DEVICE_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let out = scratch("valsteps");
    let (o, _) = run(tiny(&out, &["name=steps", "train.val_every=0", "train.val_every_steps=3"]), None, usize::MAX);
    let Outcome::Finished { run_dir, .. } = o else { panic!("{o:?}") };
    let csv = std::fs::read_to_string(run_dir.join("metrics.csv")).unwrap();
    let steps: Vec<&str> = csv.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(steps, vec!["3", "6", "8"], "{csv}");
}

/// `--resume` on a run directory that a live process is training into is refused, naming the
/// process, and nothing in the directory is touched; a lock left by a killed process is taken
/// over and the run continues.
#[test]
fn a_second_writer_is_refused_and_a_stale_lock_taken_over() {
    let _turn = DEVICE_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let out = scratch("lock");
    let (a, _) = run(tiny(&out, &["name=l"]), None, 2);
    let Outcome::Interrupted { run_dir, .. } = a else { panic!("{a:?}") };
    assert!(!run_dir.join("train.lock").exists(), "the lock is removed when the run stops");
    let config_before = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();

    let mut owner = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
    std::fs::write(run_dir.join("train.lock"), format!("{}\n", owner.id())).unwrap();
    let cfg = RunConfig::load_stored(&run_dir.join("config.toml"), &["train.epochs=3".into()]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut rec = Record { losses: vec![], stop: stop.clone(), stop_at: usize::MAX };
    let err = train(cfg.clone(), TrainOptions { resume: Some(run_dir.clone()), stop, resume_anyway: false }, &mut rec)
        .unwrap_err();
    assert!(err.to_string().contains(&format!("another segkit process (pid {})", owner.id())), "{err}");
    assert_eq!(std::fs::read_to_string(run_dir.join("config.toml")).unwrap(), config_before);

    owner.kill().unwrap();
    owner.wait().unwrap();
    let (b, losses) = run(cfg, Some(run_dir.clone()), usize::MAX);
    assert!(matches!(b, Outcome::Finished { .. }), "{b:?}");
    assert!(!losses.is_empty());
    assert!(!run_dir.join("train.lock").exists());
}

/// `--resume` with overrides that change the trajectory is refused with the list of changes;
/// `resume_anyway` continues with them; a longer run (epochs) is always allowed.
#[test]
fn resume_with_a_different_config_is_refused_unless_asked() {
    let _turn = DEVICE_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let out = scratch("reconfig");
    let (a, _) = run(tiny(&out, &["name=r"]), None, 2);
    let Outcome::Interrupted { run_dir, .. } = a else { panic!("{a:?}") };
    let stored = run_dir.join("config.toml");
    let resume = |over: &[&str], anyway: bool| {
        let cfg = RunConfig::load_stored(&stored, &over.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut rec = Record { losses: vec![], stop: stop.clone(), stop_at: 3 };
        train(cfg, TrainOptions { resume: Some(run_dir.clone()), stop, resume_anyway: anyway }, &mut rec)
    };
    let err = resume(&["train.batch_size=2", "train.seed=9"], false).unwrap_err().to_string();
    assert!(err.contains("train.batch_size: 4 -> 2") && err.contains("train.seed: 1 -> 9"), "{err}");
    assert!(err.contains("--resume-anyway"), "{err}");
    assert!(resume(&["train.epochs=3", "train.workers=1"], false).is_ok());
    assert!(resume(&["train.batch_size=2"], true).is_ok());
}

#[test]
fn an_fcn_run_from_before_trunk_batch_norm_resumes() {
    // Before `model.batch_norm` applied to FCNs, the default recipe stored `true` for them while
    // their trunk had none; such a run must still resume, with the model its checkpoint holds.
    let _turn = DEVICE_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let out = scratch("oldfcn");
    let fcn = ["name=f", "model.model=\"fcn32s\"", "model.batch_norm=false", "model.base_width=2", "model.fc_width=8"];
    let (a, _) = run(tiny(&out, &fcn), None, 2);
    let Outcome::Interrupted { run_dir, .. } = a else { panic!("{a:?}") };
    let stored = run_dir.join("config.toml");
    let text = std::fs::read_to_string(&stored).unwrap();
    assert!(text.contains("batch_norm = false"), "{text}");
    std::fs::write(&stored, text.replace("batch_norm = false", "batch_norm = true")).unwrap();
    let cfg = RunConfig::load_stored(&stored, &[]).unwrap();
    assert!(cfg.model.batch_norm);
    let (b, _) = run(cfg, Some(run_dir.clone()), usize::MAX);
    assert!(matches!(b, Outcome::Finished { steps: 8, .. }), "{b:?}");
}
