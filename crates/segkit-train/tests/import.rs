//! PyTorch interop: `.pth` reading, torchvision VGG16 -> FCN trunk, pytorch-fcn FCN-8s -> segkit,
//! checked against outputs PyTorch computed (fixtures from scripts/make_torch_fixtures.py).

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use segkit_models::{ModelConfig, ModelKind, SegModel};
use segkit_train::checkpoint::write_safetensors;
use segkit_train::eval::load_run;
use segkit_train::import::{import_fcn, import_vgg16, load_backbone};
use segkit_train::params::{HostTensor, collect, to_f32};
use segkit_train::torchfile::{read_pth, read_state_dict};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("segkit-import-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn pth_reads_like_safetensors() {
    let pth = read_pth(&fixture("vgg16_tiny.pth")).unwrap();
    let st = read_state_dict(&fixture("vgg16_tiny.safetensors")).unwrap();
    assert_eq!(pth.len(), 32, "13 convolutions and 3 linear layers, weight and bias each");
    assert_eq!(pth, st);
    assert_eq!(pth["classifier.0.weight"].shape, vec![4, 392]);
}

#[test]
fn vgg16_becomes_the_fcn_trunk() {
    let dir = scratch("vgg");
    let out = dir.join("trunk.safetensors");
    let (n, base, fc) = import_vgg16(&fixture("vgg16_tiny.pth"), &out).unwrap();
    assert_eq!((n, base, fc), (30, 1, 4));
    let mut cfg = ModelConfig::paper(ModelKind::Fcn8s, 3);
    (cfg.base_width, cfg.fc_width) = (1, 4);
    let model = SegModel::new(&cfg, &Device::flex()).unwrap();
    let (model, loaded) = load_backbone(model, &out).unwrap();
    assert_eq!(loaded, 30);
    let w = collect(&model);
    let src = read_pth(&fixture("vgg16_tiny.pth")).unwrap();
    assert_eq!(w["vgg.conv3_2.weight"].values, src["features.12.weight"].values);
    // fc6 is classifier.0 reshaped: same values, [4, 8, 7, 7].
    assert_eq!(w["vgg.fc6.weight"].shape, vec![4, 8, 7, 7]);
    assert_eq!(w["vgg.fc6.weight"].values, src["classifier.0.weight"].values);
    assert_eq!(w["vgg.fc7.weight"].shape, vec![4, 4, 1, 1]);
    // The torchvision file loads directly too; a model of another width is a clear error.
    let model = SegModel::new(&cfg, &Device::flex()).unwrap();
    assert_eq!(load_backbone(model, &fixture("vgg16_tiny.pth")).unwrap().1, 30);
    cfg.base_width = 2;
    let err = load_backbone(SegModel::new(&cfg, &Device::flex()).unwrap(), &out).err().unwrap().to_string();
    assert!(err.contains("conv1_1") && err.contains("base_width"), "{err}");
}

/// torchvision's `vgg16_bn` layout (batch norm after each convolution, so the convolutions sit at
/// other `features` indices) loads into an FCN whose trunk has batch norm; weights with and
/// without batch norm are refused by a model of the other kind, naming the key to change.
#[test]
fn vgg16_bn_loads_into_a_batch_norm_trunk() {
    let dir = scratch("vgg-bn");
    // The tiny fixture's convolutions and classifier, renumbered as vgg16_bn's, plus a batch norm
    // after each convolution whose tensors are recognisable numbers.
    let plain = read_pth(&fixture("vgg16_tiny.pth")).unwrap();
    let conv_at = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28];
    let bn_conv_at = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40];
    let mut tensors: Vec<(String, HostTensor)> = Vec::new();
    for (k, (&from, &to)) in conv_at.iter().zip(&bn_conv_at).enumerate() {
        for part in ["weight", "bias"] {
            tensors.push((format!("features.{to}.{part}"), plain[&format!("features.{from}.{part}")].clone()));
        }
        let c = plain[&format!("features.{from}.bias")].shape[0];
        for (j, part) in ["weight", "bias", "running_mean", "running_var"].into_iter().enumerate() {
            let v = (k * 10 + j + 1) as f32;
            tensors.push((format!("features.{}.{part}", to + 1), HostTensor { shape: vec![c], values: vec![v; c] }));
        }
    }
    for name in ["classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias"] {
        tensors.push((name.to_string(), plain[name].clone()));
    }
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.shape.clone(), t.values.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let bn_file = dir.join("vgg16_bn_tiny.safetensors");
    write_safetensors(&bn_file, &bytes, safetensors::tensor::Dtype::F32, Default::default()).unwrap();

    let mut cfg = ModelConfig::paper(ModelKind::Fcn8s, 3);
    (cfg.base_width, cfg.fc_width, cfg.batch_norm) = (1, 4, true);
    let (model, loaded) = load_backbone(SegModel::new(&cfg, &Device::flex()).unwrap(), &bn_file).unwrap();
    assert_eq!(loaded, 30 + 13 * 4, "30 convolution and fc tensors, 4 per batch norm");
    let w = collect(&model);
    assert_eq!(w["vgg.conv3_2.weight"].values, plain["features.12.weight"].values);
    // bn3_2 follows the 6th convolution (k = 5): gamma 51, beta 52, mean 53, variance 54.
    for (part, v) in [("gamma", 51.0), ("beta", 52.0), ("running_mean", 53.0), ("running_var", 54.0)] {
        assert_eq!(w[&format!("vgg.bn3_2.{part}")].values, vec![v; 4], "bn3_2.{part}");
    }

    // The other pairings are refused with the key that fixes them.
    let err = load_backbone(SegModel::new(&cfg, &Device::flex()).unwrap(), &fixture("vgg16_tiny.pth"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("vgg16_tiny.pth") && err.contains("model.batch_norm = false"), "{err}");
    cfg.batch_norm = false;
    let err = load_backbone(SegModel::new(&cfg, &Device::flex()).unwrap(), &bn_file).err().unwrap().to_string();
    assert!(err.contains("vgg16_bn_tiny") && err.contains("model.batch_norm = true"), "{err}");
}

#[test]
fn pytorch_fcn8s_gives_pytorchs_output() {
    let dir = scratch("fcn");
    let out = dir.join("fcn8s.safetensors");
    let names = Some(vec!["a".into(), "b".into(), "c".into()]);
    import_fcn(ModelKind::Fcn8s, &fixture("fcn8s_tiny.pth"), &out, names).unwrap();
    let device = Device::flex();
    let loaded = load_run(&out, &device).unwrap();
    assert_eq!(loaded.classes.names, vec!["a", "b", "c"]);
    let io: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("fcn8s_tiny_io.json")).unwrap()).unwrap();
    let flat = |v: &serde_json::Value| -> Vec<f32> {
        fn rec(v: &serde_json::Value, out: &mut Vec<f32>) {
            match v {
                serde_json::Value::Array(a) => a.iter().for_each(|x| rec(x, out)),
                x => out.push(x.as_f64().unwrap() as f32),
            }
        }
        let mut out = Vec::new();
        rec(v, &mut out);
        out
    };
    let x = Tensor::<4>::from_data(TensorData::new(flat(&io["input"]), [1, 3, 20, 24]), &device);
    let y = to_f32(loaded.model.forward(x));
    let want = flat(&io["output"]);
    assert_eq!(y.len(), want.len());
    for (i, (g, w)) in y.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "output[{i}]: {g} vs PyTorch {w}");
    }
}

#[test]
fn bad_files_are_errors_naming_the_file() {
    let dir = scratch("bad");
    let junk = dir.join("junk.pth");
    std::fs::write(&junk, b"PK\x03\x04 this is not really a zip").unwrap();
    let err = read_state_dict(&junk).unwrap_err().to_string();
    assert!(err.contains("junk.pth"), "{err}");
    let err = import_vgg16(&fixture("fcn8s_tiny.pth"), &dir.join("x.safetensors")).unwrap_err().to_string();
    assert!(err.contains("features.0.weight"), "{err}");
    let err = import_fcn(ModelKind::Fcn8s, &fixture("vgg16_tiny.pth"), &dir.join("y.safetensors"), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("score_fr"), "{err}");
}
