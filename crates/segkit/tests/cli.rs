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
/// found, never a segfault or a panic of segkit. The Vulkan loader is pointed at a driver file
/// that does not exist, so that the test sees no adapter on any machine (tests/wgpu.rs runs the
/// GPU path itself, on a real driver).
#[test]
fn an_unusable_gpu_is_an_error_naming_the_driver() {
    let out = scratch("gpu-error");
    let dir = format!("train.out_dir={:?}", out.display().to_string());
    let missing = out.join("no-such-icd.json");
    // `vulkan` is pinned to Vulkan; `wgpu` would go on to OpenGL, which the loader does not cover.
    for device in ["vulkan"] {
        let o = Command::new(env!("CARGO_BIN_EXE_segkit"))
            .args(["train", "--device", device, "--set", "train.max_steps=2", "--set", &dir])
            .env("VK_DRIVER_FILES", &missing)
            .env("VK_ICD_FILENAMES", &missing)
            .output()
            .unwrap();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{device}: {t}");
        assert!(t.contains("adapter could be opened") && t.contains("install a GPU driver"), "{device}: {t}");
    }
    let o = segkit(&["selftest", "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("selftest compares a GPU with the CPU"));
}

/// `SEGKIT_GEMM_ISA` reaches the patched gemm dispatch (the device line asks the same function
/// it does), and a value the dispatch would ignore is refused before anything runs.
#[test]
fn the_gemm_isa_cap_is_honoured_or_refused() {
    let bench = |isa: &str| {
        Command::new(env!("CARGO_BIN_EXE_segkit"))
            .args(["bench", "--model", "unet", "--base-width", "4", "--size", "188", "--device", "cpu"])
            .args(["--mode", "infer", "--steps", "1", "--warmup", "0"])
            .env("SEGKIT_GEMM_ISA", isa)
            .output()
            .unwrap()
    };
    let o = bench("avx2");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    if cfg!(target_arch = "x86_64") && std::arch::is_x86_feature_detected!("fma") {
        assert!(t.contains("AVX2+FMA kernels"), "{t}");
    }
    let o = bench("avx-512");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("SEGKIT_GEMM_ISA=\"avx-512\": expected `avx2`"), "{}", text(&o));
}

/// A Roboflow-style YOLO export as users bring it: `train/` and `valid/` with `images/` and
/// polygon `labels/`, a `test/` split, and a `data.yaml` naming the classes.
fn roboflow_export(dir: &std::path::Path, names: &[&str]) {
    use segkit_data::ImageBuf;
    use segkit_data::image_io::write_png;
    for (split, n) in [("train", 8), ("valid", 3), ("test", 2)] {
        std::fs::create_dir_all(dir.join(split).join("images")).unwrap();
        std::fs::create_dir_all(dir.join(split).join("labels")).unwrap();
        for i in 0..n {
            let (w, h) = (48, 40);
            let mut img = ImageBuf::new(w, h, 3);
            for (k, v) in img.data.iter_mut().enumerate() {
                *v = ((k * 7 + i * 31) % 97) as u8;
            }
            write_png(&dir.join(split).join("images").join(format!("img{i}.png")), &img).unwrap();
            // One polygon per class, each a quadrilateral in normalised coordinates.
            let labels: String = (0..names.len())
                .map(|c| {
                    let o = 0.1 + 0.4 * c as f64 / names.len() as f64;
                    format!("{c} {o} {o} {} {o} {} {} {o} {}\n", o + 0.3, o + 0.35, o + 0.4, o + 0.3)
                })
                .collect();
            std::fs::write(dir.join(split).join("labels").join(format!("img{i}.txt")), labels).unwrap();
        }
    }
    let names = names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ");
    std::fs::write(
        dir.join("data.yaml"),
        format!("train: ../train/images\nval: ../valid/images\ntest: ../test/images\nnc: 2\nnames: [{names}]\n"),
    )
    .unwrap();
}

/// `segkit train --data DIR/data.yaml --model KIND --epochs 1` trains with nothing else: the
/// layout, splits, classes and their names come from the export (one class and several), for
/// the U-Net and FCN-8s recipes; the run's stored config records the resolved class count.
#[test]
fn own_data_in_one_command() {
    for (names, model) in [(&["crack"][..], "unet"), (&["crack", "hole"][..], "fcn8s")] {
        let out = scratch(&format!("own-data-{model}"));
        let data = out.join("export");
        roboflow_export(&data, names);
        let runs = format!("train.out_dir={:?}", out.join("runs").display().to_string());
        let yaml = data.join("data.yaml");
        let train = |extra: &[&str]| {
            let mut args =
                vec!["train", "--data", yaml.to_str().unwrap(), "--model", model, "--epochs", "1", "--device", "cpu"];
            args.extend_from_slice(&["--set", &runs]);
            args.extend_from_slice(extra);
            segkit(&args)
        };
        // The U-Net's border weights need two classes (cells and what separates them).
        let border = ["--set", "train.border_weights=true"];
        if names.len() > 1 {
            let o = train(&border);
            assert_eq!(o.status.code(), Some(2), "{}", text(&o));
            assert!(text(&o).contains("train.border_weights needs two-class"), "{}", text(&o));
        }
        let o = train(if names.len() == 1 { &border } else { &[] });
        let t = text(&o);
        assert!(o.status.success(), "{model}: {t}");
        if names.len() == 1 {
            assert!(t.contains("border weights: w0 10 sigma 5 px between cells of class 1 (crack)"), "{t}");
            // Two-class data: eval adds the ISBI challenge's pixel and Rand errors.
            let o = segkit(&["eval", out.join("runs").join(model).to_str().unwrap(), "--device", "cpu"]);
            let t = text(&o);
            assert!(o.status.success() && t.contains("pixel error") && t.contains("Rand error"), "{t}");
            // --tta averages the run's training symmetries and keeps the plain eval.json.
            let plain = std::fs::read_to_string(out.join("runs").join(model).join("eval.json")).unwrap();
            let stored = out.join("runs").join(model).join("config.toml");
            let cfg = segkit_train::RunConfig::load_stored(&stored, &[]).unwrap();
            let views = segkit_train::tta::views(&cfg.augment).len();
            let o = segkit(&["eval", out.join("runs").join(model).to_str().unwrap(), "--device", "cpu", "--tta"]);
            let t = text(&o);
            assert!(o.status.success() && t.contains(&format!("the mean of {views} views")), "{t}");
            let tta = std::fs::read_to_string(out.join("runs").join(model).join("eval_tta.json")).unwrap();
            assert!(tta.contains(&format!("\"tta_views\": {views}")) && tta.contains("rand_error"), "{tta}");
            assert_eq!(std::fs::read_to_string(out.join("runs").join(model).join("eval.json")).unwrap(), plain);
            // --bn-recalibrate (the U-Net recipe has batch norm) writes its own report.
            let run = out.join("runs").join(model);
            let o = segkit(&["eval", run.to_str().unwrap(), "--device", "cpu", "--bn-recalibrate", "2"]);
            let t = text(&o);
            assert!(o.status.success() && t.contains("batch-norm statistics recalibrated on 2 training images"), "{t}");
            let bn = std::fs::read_to_string(run.join("eval_bn.json")).unwrap();
            assert!(bn.contains("\"bn_recalibrated\": 2") && !bn.contains("tta_views"), "{bn}");
            // Another split has its own report too: the validation one stays as it was.
            let o = segkit(&["eval", run.to_str().unwrap(), "--device", "cpu", "--split", "train"]);
            assert!(o.status.success(), "{}", text(&o));
            let train = std::fs::read_to_string(run.join("eval_train.json")).unwrap();
            assert!(train.contains("\"split\": \"train\""), "{train}");
            assert_eq!(std::fs::read_to_string(run.join("eval.json")).unwrap(), plain);
        }
        assert!(t.contains(&format!("{} classes from", names.len() + 1)) && t.contains("background"), "{t}");
        let stored = std::fs::read_to_string(out.join("runs").join(model).join("config.toml")).unwrap();
        assert!(stored.contains(&format!("classes = {}", names.len() + 1)), "{stored}");
        assert!(
            stored.contains("in_channels = 3") && t.contains("3 input channels, from the first training image"),
            "{t}"
        );
        assert!(stored.contains(&format!("model = \"{model}\"")), "{stored}");

        // The run as deployers take it: ONNX with a mask output, read back; bad options named.
        let run = out.join("runs").join(model);
        let onnx = out.join("model.onnx");
        let o = segkit(&["export", run.to_str().unwrap(), "-o", onnx.to_str().unwrap(), "--argmax"]);
        assert!(o.status.success() && text(&o).contains("outputs: logits, mask"), "{}", text(&o));
        let info = segkit_train::onnx::read_onnx(&onnx).unwrap();
        assert_eq!((info.outputs.as_slice(), info.opset), (&["logits".to_string(), "mask".to_string()][..], 17));
        assert_eq!(info.metadata["class_names"].matches(',').count(), names.len(), "{}", info.metadata["class_names"]);
        let o = segkit(&["export", run.to_str().unwrap(), "-o", "x.bin", "--format", "tflite"]);
        assert!(!o.status.success() && text(&o).contains("unknown format `tflite`"), "{}", text(&o));
        let o = segkit(&["export", run.to_str().unwrap(), "-o", "x.safetensors", "--argmax"]);
        assert!(!o.status.success() && text(&o).contains("--format onnx only"), "{}", text(&o));
        // --save-logits: the network's input and output next to the mask.
        let image = std::fs::read_dir(data.join("valid").join("images")).unwrap().next().unwrap().unwrap().path();
        let pred = out.join("pred");
        let o = segkit(&[
            "predict",
            run.to_str().unwrap(),
            image.to_str().unwrap(),
            "--out",
            pred.to_str().unwrap(),
            "--save-logits",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let stem = image.file_stem().unwrap().to_string_lossy().into_owned();
        for suffix in ["_input.npy", "_logits.npy", "_mask.png"] {
            assert!(pred.join(format!("{stem}{suffix}")).is_file(), "{stem}{suffix} missing");
        }
    }
    // A config that forces another layout on the export: the error says which layout it is.
    let dir = scratch("own-data-layout");
    roboflow_export(&dir, &["crack"]);
    let root = format!("data.root={:?}", dir.display().to_string());
    let o = segkit(&["train", "--set", "data.format=paired", "--set", &root, "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("looks like the YOLO segmentation layout: set data.format = \"yolo\""), "{}", text(&o));
    let img = dir.join("train").join("images").join("img0.png");
    let o = segkit(&["train", "--data", img.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("expected a dataset folder or a YOLO data.yaml"), "{}", text(&o));
    let o = segkit(&["train", "--data", "/nonexistent/data.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("--data /nonexistent/data.yaml: no such folder"), "{}", text(&o));
}

/// `segkit data split` on a one-folder dataset writes train/val/test lists (seeded, complete,
/// disjoint), moves nothing, and training then reads its splits from them; a second split needs
/// --force; an id that is not in the dataset is an error naming the list file and line.
#[test]
fn data_split_writes_lists_that_training_uses() {
    let dir = scratch("split");
    let o =
        segkit(&["data", "synth", "--out", dir.to_str().unwrap(), "--count", "20", "--val-count", "0", "--size", "32"]);
    assert!(o.status.success(), "{}", text(&o));
    let ds = dir.to_str().unwrap();
    let o = segkit(&["data", "split", ds, "--val", "0.2", "--test", "0.1", "--seed", "3"]);
    assert!(o.status.success(), "{}", text(&o));
    let read = |n: &str| std::fs::read_to_string(dir.join("splits").join(format!("{n}.txt"))).unwrap();
    let (train, val, test) = (read("train"), read("val"), read("test"));
    let count = |t: &str| t.lines().count();
    assert_eq!((count(&train), count(&val), count(&test)), (14, 4, 2));
    let mut all: Vec<&str> = train.lines().chain(val.lines()).chain(test.lines()).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 20, "every sample once");
    let again = segkit(&["data", "split", ds]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again).contains("--force"), "{}", text(&again));
    let runs = format!("train.out_dir={:?}", dir.join("runs").display().to_string());
    let o = segkit(&[
        "train", "--data", ds, "--model", "unet", "--epochs", "1", "--size", "32", "--device", "cpu", "--set", &runs,
    ]);
    assert!(o.status.success() && text(&o).contains("14 training / 4 validation images"), "{}", text(&o));
    std::fs::write(dir.join("splits").join("val.txt"), "nosuchimage\n").unwrap();
    let o = segkit(&["data", "check", ds]);
    assert!(text(&o).contains("val.txt") && text(&o).contains("line 1: no sample `nosuchimage`"), "{}", text(&o));
}

/// `segkit config show` prints the complete config with each key documented: of a recipe, of a
/// config file that lists only a few keys, and of a run directory.
#[test]
fn config_show_documents_every_key() {
    let o = segkit(&["config", "show", "--model", "unet"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("# Base learning rate") && t.contains("lr = 0.001") && t.contains("# recipe: "), "{t}");
    let dir = scratch("config-show");
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("small.toml");
    std::fs::write(&f, "[model]\nmodel = \"fcn16s\"\n\n[data]\nroot = \"/data\"\n\n[train]\nlr = 0.05\n").unwrap();
    let o = segkit(&["config", "show", f.to_str().unwrap()]);
    let t = text(&o);
    assert!(
        o.status.success()
            && t.contains("model = \"fcn16s\"")
            && t.contains("lr = 0.05")
            && t.contains("fc_width = 1024"),
        "{t}"
    );
    std::fs::write(&f, "[train]\nval_limt = 3\n").unwrap();
    let o = segkit(&["config", "show", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("did you mean `val_limit`?"), "{}", text(&o));
}
