//! ONNX export: every model kind and option written, read back, and checked for its op list,
//! initializer names and shapes, opset, inputs, outputs and metadata; bad input is an error that
//! names the file.
//!
//! The numbers are checked by onnxruntime, not here: with `SEGKIT_ONNX_OUT=DIR` these tests also
//! write each model and segkit's input/logits pairs at several sizes into DIR, and
//! `scripts/check_onnx.py --all DIR` runs them (`.ci/run` does both).

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::prelude::*;
use burn::tensor::TensorData;
use segkit_models::SegModel;
use segkit_train::RunConfig;
use segkit_train::checkpoint::ClassInfo;
use segkit_train::export::torch_name;
use segkit_train::model_file::open_model;
use segkit_train::onnx::{OnnxOptions, export_onnx, read_onnx};
use segkit_train::params::{self, HostTensor, to_f32};
use segkit_train::predict::write_npy;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("segkit-onnx-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(overrides: &[&str]) -> RunConfig {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    RunConfig::quickstart(&o).unwrap()
}

fn classes(n: usize) -> ClassInfo {
    ClassInfo {
        names: (0..n).map(|i| format!("class{i}")).collect(),
        colors: (0..n).map(|i| segkit_data::classes::voc_color(i as u8)).collect(),
        ignore_index: 255,
    }
}

/// A model whose every tensor holds small pseudo-random values (FCN's score layers start at
/// zero, which would make every logit equal); running variances stay positive.
fn random_model(cfg: &RunConfig, seed: u64) -> SegModel {
    let model = SegModel::new(&cfg.model, &Device::flex()).unwrap();
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let mut tensors: BTreeMap<String, HostTensor> = params::collect(&model);
    for (path, t) in tensors.iter_mut() {
        let fan_in: usize = t.shape.iter().skip(1).product::<usize>().max(1);
        let scale = (3.0 / fan_in as f32).sqrt();
        for v in t.values.iter_mut() {
            *v = if path.ends_with("running_var") {
                0.5 + next().abs()
            } else if path.ends_with("gamma") {
                1.0 + 0.2 * next()
            } else {
                scale * next()
            };
        }
    }
    params::load(model, &tensors).0
}

fn op_counts(ops: &[String]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for op in ops {
        *counts.entry(op.as_str()).or_default() += 1;
    }
    counts.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
}

/// Exports the model of `overrides` with `o`, reads it back and compares its op counts with
/// `ops`; checks initializer names and shapes against the model's parameters. Writes the file
/// and input/logits pairs at `sizes` into `SEGKIT_ONNX_OUT` when that is set.
fn check(name: &str, overrides: &[&str], o: OnnxOptions, ops: &str, sizes: &[(usize, usize)]) {
    let cfg = config(overrides);
    let model = random_model(&cfg, name.len() as u64);
    let dir = scratch(name);
    let file = dir.join(format!("{name}.onnx"));
    let summary = export_onnx(&model, &cfg, &classes(cfg.model.classes), &file, &o).unwrap();
    let info = read_onnx(&file).unwrap();
    assert_eq!(op_counts(&info.ops), ops, "{name}: op counts");
    assert_eq!(info.opset, o.opset, "{name}: opset");
    assert_eq!(info.ops.len(), summary.nodes);
    assert_eq!(info.inputs, ["input"], "{name}: inputs");
    let outputs: &[&str] = if o.argmax { &["logits", "mask"] } else { &["logits"] };
    assert_eq!(info.outputs, outputs, "{name}: outputs");

    // Every parameter is an initializer under its PyTorch name and shape; the rest are the
    // crops' int64 constants (and the at-once FCN's scale factors).
    let expected: BTreeMap<String, Vec<i64>> = params::shapes(&model)
        .into_iter()
        .map(|(k, s)| (torch_name(&k), s.into_iter().map(|d| d as i64).collect()))
        .collect();
    let half_kernel = |dims: &Vec<i64>| o.half && dims.len() > 1;
    let mut found = 0;
    for (init, dims, dtype) in &info.initializers {
        match expected.get(init) {
            Some(shape) => {
                assert_eq!(dims, shape, "{name}: shape of {init}");
                assert_eq!(*dtype, if half_kernel(dims) { 10 } else { 1 }, "{name}: data type of {init}");
                found += 1;
            }
            None => assert!(
                (*dtype == 7 && (init.starts_with("const_") || init.ends_with("_starts")))
                    || (*dtype == 1 && init.ends_with("_factor")),
                "{name}: unexpected initializer {init} ({dtype})"
            ),
        }
    }
    assert_eq!(found, expected.len(), "{name}: every parameter is an initializer");
    // Per-image normalisation has no constants to write, only its rule in words.
    let per_image = cfg.augment.normalize == segkit_data::Normalize::PerImage;
    let constants: &[&str] = if per_image { &[] } else { &["input_mean", "input_std", "input_scale"] };
    for key in
        ["class_names", "palette", "input_normalization", "input_size_rule", "segkit_version"].iter().chain(constants)
    {
        assert!(info.metadata.contains_key(*key), "{name}: metadata `{key}` missing");
    }
    if per_image {
        assert!(!info.metadata.contains_key("input_mean"), "{name}: a per-image model has no fixed mean");
        assert!(info.metadata["input_normalization"].starts_with("per image"), "{name}: the rule in words");
        assert_eq!(info.metadata["normalize"], "per-image");
    }
    let arch: segkit_models::ModelConfig = serde_json::from_str(&info.metadata["architecture"]).unwrap();
    assert_eq!(arch, cfg.model, "{name}: the architecture in the metadata");

    // The graph, interpreted, gives segkit's logits at every size.
    let bytes = std::fs::read(&file).unwrap();
    let out_dir = std::env::var_os("SEGKIT_ONNX_OUT").map(PathBuf::from);
    if let Some(out) = &out_dir {
        std::fs::create_dir_all(out).unwrap();
        std::fs::copy(&file, out.join(format!("{name}.onnx"))).unwrap();
    }
    for &(h, w) in sizes {
        let (input, logits) = run(&model, cfg.model.in_channels, h, w, h * 31 + w);
        let x = Tensor::<4>::from_data(
            TensorData::new(input.values.clone(), [1, cfg.model.in_channels, h, w]),
            &Device::flex(),
        );
        let (got, mask) = interp::run(&bytes, x);
        assert_eq!(got.dims().to_vec(), logits.shape, "{name} at {h}x{w}: output shape");
        let got = to_f32(got);
        let range = logits.values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = got.iter().zip(&logits.values).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let tol = if o.half { 5e-3 * range.max(1.0) } else { 1e-5 * range.max(1.0) };
        assert!(diff <= tol, "{name} at {h}x{w}: the graph differs from forward by {diff} (tolerance {tol})");
        if let Some(mask) = mask {
            let c = cfg.model.classes;
            let hw = got.len() / c;
            let want: Vec<i64> = (0..hw)
                .map(|p| (0..c).max_by(|&a, &b| got[a * hw + p].total_cmp(&got[b * hw + p])).unwrap() as i64)
                .collect();
            assert_eq!(mask, want, "{name}: the mask output is the arg-max of the logits");
        }
        if let Some(out) = &out_dir {
            write_npy(&out.join(format!("{name}.{h}x{w}_input.npy")), &input).unwrap();
            write_npy(&out.join(format!("{name}.{h}x{w}_logits.npy")), &logits).unwrap();
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// segkit's forward pass on a pseudo-random `[1, c, h, w]` input.
fn run(model: &SegModel, c: usize, h: usize, w: usize, seed: usize) -> (HostTensor, HostTensor) {
    let values: Vec<f32> =
        (0..c * h * w).map(|i| (((i * 7919 + seed * 104729) % 2003) as f32 / 1001.0) - 1.0).collect();
    let x = Tensor::<4>::from_data(TensorData::new(values.clone(), [1, c, h, w]), &Device::flex());
    let y = model.forward(x);
    let shape = y.dims().to_vec();
    (HostTensor { shape: vec![1, c, h, w], values }, HostTensor { shape, values: to_f32(y) })
}

const FCN: [&str; 5] =
    ["model.base_width=2", "model.fc_width=8", "model.classes=3", "model.in_channels=3", "model.batch_norm=false"];
const FCN_OPS_32: &str = "Add 1, Conv 16, ConvTranspose 1, Identity 1, MaxPool 5, Relu 15, Shape 1, Slice 2";
const FCN_OPS_16: &str = "Add 3, Conv 17, ConvTranspose 2, Identity 1, MaxPool 5, Relu 15, Shape 2, Slice 4";
const FCN_OPS_8: &str = "Add 5, Conv 18, ConvTranspose 3, Identity 1, MaxPool 5, Relu 15, Shape 3, Slice 6";
/// Three sizes, odd ones among them, so that ceil-mode pooling and the dynamic crops are used.
const FCN_SIZES: [(usize, usize); 3] = [(32, 32), (45, 61), (17, 24)];

fn with<'a>(base: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(more).copied().collect()
}

#[test]
fn fcn_variants() {
    let o = OnnxOptions::default();
    check("fcn32s", &with(&FCN, &["model.model=\"fcn32s\""]), o, FCN_OPS_32, &FCN_SIZES);
    check("fcn16s", &with(&FCN, &["model.model=\"fcn16s\""]), o, FCN_OPS_16, &FCN_SIZES);
    check("fcn8s", &with(&FCN, &["model.model=\"fcn8s\""]), o, FCN_OPS_8, &FCN_SIZES);
    let at_once = "Add 5, Conv 18, ConvTranspose 3, Identity 1, MaxPool 5, Mul 2, Relu 15, Shape 3, Slice 6";
    check("fcn8s-atonce", &with(&FCN, &["model.model=\"fcn8s-atonce\""]), o, at_once, &FCN_SIZES);
}

#[test]
fn fcn_options() {
    let fcn8s = with(&FCN, &["model.model=\"fcn8s\""]);
    let argmax = OnnxOptions { argmax: true, ..Default::default() };
    check("fcn8s-argmax", &fcn8s, argmax, &FCN_OPS_8.replace("Add 5", "Add 5, ArgMax 1"), &FCN_SIZES[..1]);
    // Half: one Cast per kernel (13 + 2 + 3 convolutions, 3 upsamplers); biases stay float32.
    let half = OnnxOptions { half: true, ..Default::default() };
    check("fcn8s-half", &fcn8s, half, &FCN_OPS_8.replace("Add 5", "Add 5, Cast 21"), &FCN_SIZES[..1]);
    // vgg16_bn-style trunk: a BatchNormalization between each of the 13 convolutions and its ReLU.
    let fcn8s_bn = with(&FCN, &["model.model=\"fcn8s\"", "model.batch_norm=true"]);
    check(
        "fcn8s-bn",
        &fcn8s_bn,
        OnnxOptions::default(),
        &FCN_OPS_8.replace("Add 5, ", "Add 5, BatchNormalization 13, "),
        &FCN_SIZES[..2],
    );
    for opset in [13, 21] {
        let o = OnnxOptions { opset, ..Default::default() };
        check(
            &format!("fcn32s-opset{opset}"),
            &with(&FCN, &["model.model=\"fcn32s\""]),
            o,
            FCN_OPS_32,
            &FCN_SIZES[..1],
        );
    }
}

const UNET: [&str; 5] =
    ["model.model=\"unet\"", "model.depth=2", "model.base_width=4", "model.classes=2", "model.in_channels=1"];
const UNET_OPS: &str =
    "Add 2, Concat 2, Conv 11, ConvTranspose 2, Div 2, Identity 1, MaxPool 2, Relu 10, Shape 4, Slice 6, Sub 2";

#[test]
fn unet_variants() {
    let o = OnnxOptions::default();
    // Unpadded depth 2: valid sides are 44 + 4k, the output 40 smaller.
    let unpadded = with(&UNET, &["model.padded=false", "model.batch_norm=false"]);
    check("unet", &unpadded, o, UNET_OPS, &[(44, 44), (48, 60), (68, 52)]);
    let padded = with(&UNET, &["model.padded=true", "model.batch_norm=false"]);
    check("unet-padded", &padded, o, UNET_OPS, &[(16, 16), (20, 36)]);
    let bn = with(&UNET, &["model.padded=true", "model.batch_norm=true"]);
    let bn_ops = UNET_OPS.replace("Add 2, ", "Add 2, BatchNormalization 10, ");
    check("unet-bn", &bn, o, &bn_ops, &[(24, 24)]);
    let half = OnnxOptions { half: true, ..Default::default() };
    check("unet-bn-half", &bn, half, &bn_ops.replacen("10, ", "10, Cast 13, ", 1), &[(24, 24)]);
    let unet3 = with(&UNET, &["model.padded=false", "model.batch_norm=false", "model.depth=3", "model.in_channels=3"]);
    let ops3 =
        "Add 3, Concat 3, Conv 15, ConvTranspose 3, Div 3, Identity 1, MaxPool 3, Relu 14, Shape 6, Slice 9, Sub 3";
    check("unet-depth3-rgb", &unet3, o, ops3, &[(92, 92)]);
    let per_image = with(&unpadded, &["augment.normalize=\"per-image\""]);
    check("unet-per-image", &per_image, o, UNET_OPS, &[(44, 44)]);
}

/// The size rule in the metadata is the model's: the paper's U-Net takes 188 + 16k and gives an
/// output 184 smaller (572 -> 388).
#[test]
fn size_rule_metadata() {
    let dir = scratch("rule");
    let cfg = config(&[
        "model.model=\"unet\"",
        "model.depth=4",
        "model.base_width=1",
        "model.padded=false",
        "model.batch_norm=false",
    ]);
    let model = SegModel::new(&cfg.model, &Device::flex()).unwrap();
    let file = dir.join("unet.onnx");
    export_onnx(&model, &cfg, &classes(cfg.model.classes), &file, &OnnxOptions::default()).unwrap();
    let meta = read_onnx(&file).unwrap().metadata;
    assert_eq!(
        (meta["input_size_min"].as_str(), meta["input_size_step"].as_str(), meta["output_shrink"].as_str()),
        ("188", "16", "184")
    );
    assert!(meta["input_size_rule"].contains("572 gives 388"), "{}", meta["input_size_rule"]);
    let _ = std::fs::remove_dir_all(dir);
}

fn error_of(r: Result<impl Sized, segkit_train::TrainError>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// Bad input: an unwritable path, an opset segkit does not write, a checkpoint of an unknown
/// format version, a truncated file. Each error names the file; nothing half-written is left.
#[test]
fn bad_input_is_a_clear_error() {
    let dir = scratch("bad");
    let cfg = config(&with(&FCN, &["model.model=\"fcn32s\""]));
    let model = SegModel::new(&cfg.model, &Device::flex()).unwrap();
    let cls = classes(cfg.model.classes);

    let blocker = dir.join("not-a-folder");
    std::fs::write(&blocker, b"x").unwrap();
    let target = blocker.join("model.onnx");
    let e = error_of(export_onnx(&model, &cfg, &cls, &target, &OnnxOptions::default()));
    assert!(e.contains("cannot write") && e.contains("not-a-folder/model.onnx"), "{e}");

    let e =
        error_of(export_onnx(&model, &cfg, &cls, &dir.join("m.onnx"), &OnnxOptions { opset: 9, ..Default::default() }));
    assert!(e.contains("opset 9") && e.contains("13 to 21"), "{e}");
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["not-a-folder"], "nothing half-written");

    // A checkpoint from a future segkit.
    let future = dir.join("future.safetensors");
    let meta = std::collections::HashMap::from([("format".to_string(), "segkit-checkpoint-9".to_string())]);
    let t: Vec<(String, Vec<usize>, Vec<u8>)> = vec![("x".into(), vec![1], 1f32.to_le_bytes().to_vec())];
    segkit_train::checkpoint::write_safetensors(&future, &t, safetensors::tensor::Dtype::F32, meta).unwrap();
    let e = error_of(open_model(&future, &Device::flex()));
    assert!(e.contains("future.safetensors") && e.contains("segkit-checkpoint-9"), "{e}");

    // A truncated export.
    let export = dir.join("export.safetensors");
    segkit_train::export::export(&model, &cfg, &cls, &export, false).unwrap();
    let bytes = std::fs::read(&export).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = error_of(open_model(&cut, &Device::flex()));
    assert!(e.contains("cut.safetensors"), "{e}");

    // Not an ONNX file.
    let e = error_of(read_onnx(&cut));
    assert!(e.contains("cut.safetensors") && e.contains("not an ONNX model"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `open_model` takes a bare state dict under the reference names and infers the architecture.
#[test]
fn open_model_takes_a_state_dict() {
    let dir = scratch("sd");
    let cfg = config(&with(&FCN, &["model.model=\"fcn16s\""]));
    let model = random_model(&cfg, 5);
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = params::collect(&model)
        .into_iter()
        .map(|(k, t)| (torch_name(&k), t.shape, t.values.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let file = dir.join("fcn16s_state_dict.safetensors");
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    segkit_train::checkpoint::write_safetensors(&file, &tensors, safetensors::tensor::Dtype::F32, meta).unwrap();
    let loaded = open_model(&file, &Device::flex()).unwrap();
    assert_eq!(loaded.source, segkit_train::model_file::Source::StateDict);
    assert_eq!(loaded.config.model.model, segkit_models::ModelKind::Fcn16s);
    assert_eq!((loaded.config.model.base_width, loaded.config.model.fc_width), (2, 8));
    let (a, b) = (run(&model, 3, 20, 20, 1).1, run(&loaded.model, 3, 20, 20, 1).1);
    assert_eq!(a.values, b.values, "the same weights give the same logits");
    assert!(!loaded.notes.is_empty(), "what was assumed is said");
    let _ = std::fs::remove_dir_all(dir);
}

/// A small ONNX interpreter over Burn's functional ops, for the ops segkit writes: the graph's
/// wiring, attributes, crops and constants are checked against `SegModel::forward` on every
/// `cargo test`, with or without onnxruntime (which checks the ops' ONNX semantics in CI).
mod interp {
    use std::collections::HashMap;

    use burn::backend::ops::{ConvOptions, ConvTransposeOptions, MaxPoolOptions};
    use burn::prelude::*;
    use burn::tensor::TensorData;
    use burn::tensor::module::{conv_transpose2d, conv2d, max_pool2d};
    use prost::Message;
    use segkit_train::model_file::onnx_proto::{AttributeProto, ModelProto, NodeProto, TensorProto};

    #[derive(Clone)]
    enum V {
        /// Float tensors, kept 4-D (weights of lower rank padded with leading 1s, shapes kept).
        F(Tensor<4>, Vec<usize>),
        I(Vec<i64>),
        /// ArgMax output.
        Mask(Vec<i64>),
    }

    fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
        n.attribute.iter().find(|a| a.name == name)
    }
    fn ints(n: &NodeProto, name: &str) -> Vec<usize> {
        attr(n, name).map(|a| a.ints.iter().map(|&v| v as usize).collect()).unwrap_or_default()
    }
    fn int(n: &NodeProto, name: &str, default: i64) -> i64 {
        attr(n, name).and_then(|a| a.i).unwrap_or(default)
    }
    fn pair(v: &[usize], default: usize) -> [usize; 2] {
        [*v.first().unwrap_or(&default), *v.get(1).unwrap_or(&default)]
    }

    fn tensor(t: &TensorProto, device: &Device) -> V {
        let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        match t.data_type {
            7 => V::I(t.raw_data.chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()),
            1 | 10 => {
                let values: Vec<f32> = if t.data_type == 1 {
                    t.raw_data.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
                } else {
                    t.raw_data.chunks(2).map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect()
                };
                let mut s4 = vec![1usize; 4usize.saturating_sub(shape.len())];
                s4.extend(&shape);
                let s4: [usize; 4] = s4.try_into().unwrap();
                V::F(Tensor::<4>::from_data(TensorData::new(values, s4), device), shape)
            }
            d => panic!("initializer {} of data type {d}", t.name),
        }
    }

    fn f(v: &V) -> Tensor<4> {
        match v {
            V::F(t, _) => t.clone(),
            _ => panic!("expected a float tensor"),
        }
    }
    fn vec1(v: &V) -> Tensor<1> {
        match v {
            V::F(t, s) => t.clone().reshape([s.iter().product::<usize>()]),
            _ => panic!("expected a float tensor"),
        }
    }
    fn i(v: &V) -> Vec<i64> {
        match v {
            V::I(x) => x.clone(),
            _ => panic!("expected an int64 tensor"),
        }
    }

    /// Runs the ONNX file's graph on `x`: its outputs, in order (logits; the mask when present).
    pub fn run(bytes: &[u8], x: Tensor<4>) -> (Tensor<4>, Option<Vec<i64>>) {
        let device = x.device();
        let m = ModelProto::decode(bytes).unwrap();
        let g = m.graph.unwrap();
        let mut env: HashMap<String, V> = HashMap::new();
        for t in &g.initializer {
            env.insert(t.name.clone(), tensor(t, &device));
        }
        let x_dims = x.dims().to_vec();
        env.insert("input".into(), V::F(x, x_dims));
        for n in &g.node {
            let a = |k: usize| env[&n.input[k]].clone();
            let full = |t: Tensor<4>| {
                let d = t.dims().to_vec();
                V::F(t, d)
            };
            let out = match n.op_type.as_str() {
                "Conv" => {
                    let p = ints(n, "pads");
                    let o = ConvOptions::new(
                        pair(&ints(n, "strides"), 1),
                        [p[0], p[1]],
                        pair(&ints(n, "dilations"), 1),
                        int(n, "group", 1) as usize,
                    );
                    assert_eq!((p[0], p[1]), (p[2], p[3]), "symmetric pads");
                    let b = (n.input.len() > 2).then(|| vec1(&a(2)));
                    full(conv2d(f(&a(0)), f(&a(1)), b, o))
                }
                "ConvTranspose" => {
                    let p = ints(n, "pads");
                    let o = ConvTransposeOptions::new(
                        pair(&ints(n, "strides"), 1),
                        [p[0], p[1]],
                        pair(&ints(n, "output_padding"), 0),
                        pair(&ints(n, "dilations"), 1),
                        int(n, "group", 1) as usize,
                    );
                    let b = (n.input.len() > 2).then(|| vec1(&a(2)));
                    full(conv_transpose2d(f(&a(0)), f(&a(1)), b, o))
                }
                "MaxPool" => {
                    let o = MaxPoolOptions::new(pair(&ints(n, "kernel_shape"), 1))
                        .with_stride(pair(&ints(n, "strides"), 1))
                        .with_ceil_mode(int(n, "ceil_mode", 0) == 1);
                    full(max_pool2d(f(&a(0)), o))
                }
                "Relu" => full(burn::tensor::activation::relu(f(&a(0)))),
                "Identity" => a(0),
                "Cast" => a(0),
                "BatchNormalization" => {
                    let eps = attr(n, "epsilon").and_then(|a| a.f).unwrap_or(1e-5) as f64;
                    let c = |k: usize| vec1(&a(k)).reshape([1, -1, 1, 1]);
                    let x = f(&a(0));
                    let y = (x - c(3)) / c(4).add_scalar(eps).sqrt() * c(1) + c(2);
                    full(y)
                }
                "Add" | "Sub" | "Div" | "Mul" => match (a(0), a(1)) {
                    (V::I(x), V::I(y)) => V::I(
                        x.iter()
                            .zip(&y)
                            .map(|(p, q)| match n.op_type.as_str() {
                                "Add" => p + q,
                                "Sub" => p - q,
                                "Div" => p.div_euclid(*q),
                                _ => p * q,
                            })
                            .collect(),
                    ),
                    (V::F(x, _), V::F(y, _)) => full(match n.op_type.as_str() {
                        "Add" => x + y,
                        "Mul" => x * y,
                        op => panic!("{op} on floats"),
                    }),
                    _ => panic!("{}: mixed operand types", n.name),
                },
                "Shape" => V::I(f(&a(0)).dims().iter().map(|&d| d as i64).collect()),
                "Concat" => {
                    assert_eq!(int(n, "axis", 0), 1);
                    full(Tensor::cat(n.input.iter().map(|k| f(&env[k])).collect(), 1))
                }
                "Slice" => {
                    let (starts, ends, axes) = (i(&a(1)), i(&a(2)), i(&a(3)));
                    match a(0) {
                        V::I(v) => V::I(v[starts[0] as usize..(ends[0] as usize).min(v.len())].to_vec()),
                        V::F(mut t, _) => {
                            for k in 0..axes.len() {
                                let axis = axes[k] as usize;
                                let len = t.dims()[axis];
                                let (s, e) = (starts[k] as usize, (ends[k] as usize).min(len));
                                t = t.narrow(axis, s, e - s);
                            }
                            full(t)
                        }
                        V::Mask(_) => panic!("slice of a mask"),
                    }
                }
                "ArgMax" => {
                    let t = f(&a(0));
                    let [b, _, h, w] = t.dims();
                    V::Mask(segkit_train::params::to_i64(t.argmax(1).reshape([b, h, w])))
                }
                op => panic!("op {op} ({}) not interpreted", n.name),
            };
            env.insert(n.output[0].clone(), out);
        }
        let logits = f(&env[&g.output[0].name]);
        let mask = g.output.get(1).map(|o| match &env[&o.name] {
            V::Mask(m) => m.clone(),
            _ => panic!("mask is not an ArgMax output"),
        });
        (logits, mask)
    }
}
