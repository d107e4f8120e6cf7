//! ONNX export: a trained model as a standard ONNX graph that ONNX Runtime, TensorRT, OpenCV's
//! dnn module and browsers run without segkit.
//!
//! The graph is written layer by layer from the model's own modules, in the order of its
//! `forward`, with the reference layer names as node names and PyTorch state-dict names as
//! initializer names (`conv1_1.weight`, `score_fr.bias`, `down.0.conv1.weight`, ...). Ops:
//! Conv, Relu, MaxPool (ceil_mode for FCN), ConvTranspose, Add, Mul (the at-once FCN's skip
//! scaling), Concat, BatchNormalization (U-Net's batch-norm option), Shape/Slice/Sub/Div for the
//! crops, and ArgMax with `--argmax`. Dropout is an identity at inference and is left out.
//!
//! Shapes: batch, height and width are dynamic. The crops take their sizes from the maps they
//! align to (`Shape` then `Slice`), with the offsets derived by `segkit_models::geometry` as
//! constants, so an FCN runs at any size. An unpadded U-Net accepts the sizes of its size rule
//! (written into `input_size_rule`); other sizes make the runtime fail or misalign, as the
//! PyTorch model would.
//!
//! `half` stores the convolution kernels as float16 and casts them to float32 in the graph: half
//! the file, float32 arithmetic, runs on every runtime (most CPU runtimes have no float16
//! convolution). Biases and batch-norm tensors stay float32.
//!
//! Metadata (`metadata_props`): class names, palette, ignore index, the input normalisation as
//! numbers (`input_scale`, `input_mean`, `input_std`, `input_channel_order`; for `per-image`
//! normalisation, which has no constants, the rule in words in `input_normalization`), the size
//! rule, the architecture config and the segkit version, so a deployer needs nothing else.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::nn::pool::MaxPool2d;
use prost::Message;
use segkit_models::fcn::{Fcn, FcnVariant};
use segkit_models::layers::BatchNorm2d;
use segkit_models::unet::{DoubleConv, Unet};
use segkit_models::vgg::Vgg16;
use segkit_models::{ModelConfig, ModelKind, SegModel, nearest_valid_sizes, unet_output_size};

use super::checkpoint::ClassInfo;
use super::export::torch_name;
use super::onnx_proto::*;
use crate::config::RunConfig;
use crate::params::{self, HostTensor};
use crate::{TrainError, write_atomic};

/// The opset written unless asked otherwise.
pub const DEFAULT_OPSET: i64 = 17;
/// The opsets segkit writes: every op it uses has the same form in all of them (Slice with
/// input tensors since 10, MaxPool's ceil_mode since 10, ArgMax's select_last_index since 12).
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=21;

/// Options of [`export_onnx`].
#[derive(Debug, Clone, Copy)]
pub struct OnnxOptions {
    pub opset: i64,
    /// Weights stored as float16 (cast to float32 in the graph).
    pub half: bool,
    /// A second output, `mask`: the arg-max class per pixel, int64 `[N, H, W]`.
    pub argmax: bool,
}

impl Default for OnnxOptions {
    fn default() -> Self {
        Self { opset: DEFAULT_OPSET, half: false, argmax: false }
    }
}

/// What [`export_onnx`] wrote.
#[derive(Debug, Clone)]
pub struct OnnxSummary {
    pub nodes: usize,
    pub weights: usize,
    pub parameters: usize,
    pub bytes: usize,
    /// The size rule, as written into the metadata.
    pub input_size_rule: String,
}

/// The IR version that goes with an opset (onnx/helper.py's table): the oldest a runtime must
/// read, so that older runtimes still load the file.
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

/// Valid input sides: `min + step * k`, and how much smaller the output is (`out = in - shrink`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeRule {
    pub min: usize,
    pub step: usize,
    pub shrink: usize,
}

impl SizeRule {
    pub fn of(m: &ModelConfig) -> SizeRule {
        if m.model != ModelKind::Unet {
            return SizeRule { min: 1, step: 1, shrink: 0 };
        }
        let valid = |s| nearest_valid_sizes(s, m.depth, m.padded).1.expect("a U-Net has valid sizes");
        let min = valid(1);
        let next = valid(min + 1);
        let shrink = min - unet_output_size(min, m.depth, m.padded).expect("valid");
        SizeRule { min, step: next - min, shrink }
    }

    pub fn describe(&self, m: &ModelConfig) -> String {
        if self.step == 1 {
            return "any height and width >= 1; the output has the input's size".to_string();
        }
        if self.shrink == 0 {
            return format!(
                "height and width each a multiple of {} (U-Net of depth {}, padded convolutions); the output has the \
                 input's size",
                self.step, m.depth
            );
        }
        let s = self.min + self.step * 572usize.saturating_sub(self.min).div_ceil(self.step);
        format!(
            "height and width each {} + {}k (k >= 0), so that every map entering a pooling is even (U-Net of depth {}); \
             the output is the input's centre, {} pixels smaller on each side; e.g. {s} gives {}",
            self.min,
            self.step,
            m.depth,
            self.shrink / 2,
            s - self.shrink
        )
    }
}

/// Writes `model` as ONNX to `out` (atomically).
pub fn export_onnx(
    model: &SegModel,
    config: &RunConfig,
    classes: &ClassInfo,
    out: &Path,
    o: &OnnxOptions,
) -> Result<OnnxSummary, TrainError> {
    let (bytes, mut summary) = to_onnx(model, config, classes, o)?;
    summary.bytes = bytes.len();
    write_atomic(out, &bytes)?;
    Ok(summary)
}

/// The ONNX file's bytes.
pub fn to_onnx(
    model: &SegModel,
    config: &RunConfig,
    classes: &ClassInfo,
    o: &OnnxOptions,
) -> Result<(Vec<u8>, OnnxSummary), TrainError> {
    if !OPSETS.contains(&o.opset) {
        return Err(TrainError::Config(format!(
            "opset {} is not written; choose {} to {} (default {DEFAULT_OPSET})",
            o.opset,
            OPSETS.start(),
            OPSETS.end()
        )));
    }
    let m = &config.model;
    let weights = params::collect(model);
    let mut g = Builder::new(&weights, o.half);
    let logits = match model {
        SegModel::Fcn(f) => g.fcn(f, "input")?,
        SegModel::Unet(u) => g.unet(u, "input")?,
    };
    let logits = g.node("Identity", "logits", &[&logits], vec![]);
    let unpadded_unet = m.model == ModelKind::Unet && !m.padded;
    let (oh, ow) = if unpadded_unet { ("out_height", "out_width") } else { ("height", "width") };
    let mut outputs = vec![value_info(&logits, data_type::FLOAT, &[dim("batch"), dim_n(m.classes), dim(oh), dim(ow)])];
    if o.argmax {
        let mask = g.node("ArgMax", "mask", &[&logits], vec![int("axis", 1), int("keepdims", 0)]);
        outputs.push(value_info(&mask, data_type::INT64, &[dim("batch"), dim(oh), dim(ow)]));
    }
    let rule = SizeRule::of(m);
    let rule_text = rule.describe(m);
    let graph = GraphProto {
        name: format!("segkit_{}", m.model.name().replace('-', "_")),
        doc_string: format!(
            "{} ({} classes). Input `input`: float32 [batch, {}, height, width], normalised as the metadata \
             says (input_normalization). Output `logits`: float32 [batch, {}, out_height, out_width]{}. Sizes: {rule_text}.",
            m.model,
            m.classes,
            m.in_channels,
            m.classes,
            if o.argmax { "; `mask`: int64 [batch, out_height, out_width], the arg-max class" } else { "" }
        ),
        input: vec![value_info(
            "input",
            data_type::FLOAT,
            &[dim("batch"), dim_n(m.in_channels), dim("height"), dim("width")],
        )],
        output: outputs,
        node: g.nodes,
        initializer: g.inits,
    };
    let nodes = graph.node.len();
    let model_proto = ModelProto {
        ir_version: ir_version(o.opset),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: o.opset }],
        producer_name: "segkit".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: String::new(),
        model_version: 1,
        doc_string: graph.doc_string.clone(),
        graph: Some(graph),
        metadata_props: metadata(config, classes, &rule, &rule_text, o)
            .into_iter()
            .map(|(key, value)| StringStringEntryProto { key, value })
            .collect(),
    };
    let parameters = weights.values().map(|t| t.values.len()).sum();
    let summary = OnnxSummary { nodes, weights: weights.len(), parameters, bytes: 0, input_size_rule: rule_text };
    Ok((model_proto.encode_to_vec(), summary))
}

fn metadata(
    config: &RunConfig,
    classes: &ClassInfo,
    rule: &SizeRule,
    rule_text: &str,
    o: &OnnxOptions,
) -> Vec<(String, String)> {
    let m = &config.model;
    let norm = config.augment.normalize;
    let fixed = norm.fixed_params(m.in_channels);
    let c = m.in_channels.min(3);
    let order = match (m.in_channels, fixed.is_some_and(|p| p.bgr)) {
        (1, _) => "grey",
        (_, true) => "BGR",
        _ => "RGB",
    };
    let mut out = vec![
        ("segkit_version", env!("CARGO_PKG_VERSION").to_string()),
        ("model", m.model.name().to_string()),
        ("architecture", serde_json::to_string(m).expect("serialisable")),
        ("class_names", json(&classes.names)),
        ("palette", json(&classes.colors)),
        ("ignore_index", classes.ignore_index.to_string()),
        ("normalize", serde_json::to_value(norm).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()),
        ("input_layout", format!("NCHW float32, {} channel(s)", m.in_channels)),
        ("input_channel_order", order.to_string()),
    ];
    let extra = if m.in_channels > 3 { "; the three numbers of mean/std repeat for extra channels" } else { "" };
    match fixed {
        Some(p) => out.extend([
            ("input_scale", p.scale.to_string()),
            ("input_mean", json(&p.mean[..c].to_vec())),
            ("input_std", json(&p.std[..c].to_vec())),
            (
                "input_normalization",
                format!(
                    "input[c] = (pixel[c] * input_scale - input_mean[c]) / input_std[c], pixel values 0-255, channels \
                     in input_channel_order ({order}){extra}"
                ),
            ),
        ]),
        // No constants to write: each image brings its own.
        None => out.push((
            "input_normalization",
            format!(
                "per image: input[c] = (pixel[c] - mean[c]) / max(std[c], {}), pixel values 0-255, channels in \
                 input_channel_order ({order}), mean[c] and std[c] the mean and population standard deviation of \
                 channel c over the whole image, taken before padding or tiling",
                segkit_data::transform::PER_IMAGE_MIN_STD
            ),
        )),
    }
    out.extend([
        ("input_size_rule", rule_text.to_string()),
        ("input_size_min", rule.min.to_string()),
        ("input_size_step", rule.step.to_string()),
        ("output_shrink", rule.shrink.to_string()),
        ("outputs", if o.argmax { "logits, mask" } else { "logits" }.to_string()),
        ("weights_dtype", if o.half { "float16 (cast to float32 in the graph)" } else { "float32" }.to_string()),
    ]);
    if m.model == ModelKind::Unet && !m.padded {
        out.push((
            "tiling",
            "overlap-tile (the U-Net paper): pad the image by output_shrink/2 on each side, mirrored, and take output tiles \
             on a grid of input_size_step"
                .to_string(),
        ));
    }
    out.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serialisable")
}

fn dim(name: &str) -> tensor_shape_proto::Dimension {
    tensor_shape_proto::Dimension { value: Some(tensor_shape_proto::dimension::Value::DimParam(name.into())) }
}

fn dim_n(n: usize) -> tensor_shape_proto::Dimension {
    tensor_shape_proto::Dimension { value: Some(tensor_shape_proto::dimension::Value::DimValue(n as i64)) }
}

fn value_info(name: &str, elem_type: i32, dims: &[tensor_shape_proto::Dimension]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type,
                shape: Some(TensorShapeProto { dim: dims.to_vec() }),
            })),
        }),
        doc_string: String::new(),
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: Some(attribute_type::INT), i: Some(v), ..Default::default() }
}

fn ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: Some(attribute_type::INTS),
        ints: v.iter().map(|&x| x as i64).collect(),
        ..Default::default()
    }
}

fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: Some(attribute_type::FLOAT), f: Some(v), ..Default::default() }
}

/// Collects nodes and initializers. Every node has one output, named like the node, so that a
/// graph viewer shows the reference layer names on the edges.
struct Builder<'a> {
    weights: &'a BTreeMap<String, HostTensor>,
    half: bool,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    names: HashSet<String>,
}

impl<'a> Builder<'a> {
    fn new(weights: &'a BTreeMap<String, HostTensor>, half: bool) -> Self {
        Self { weights, half, nodes: Vec::new(), inits: Vec::new(), names: HashSet::new() }
    }

    fn node(&mut self, op: &str, name: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        let fresh = self.names.insert(name.to_string());
        debug_assert!(fresh, "node name {name} used twice");
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.to_string()],
            name: name.to_string(),
            op_type: op.to_string(),
            attribute,
            ..Default::default()
        });
        name.to_string()
    }

    /// The parameter at segkit path `path` as an initializer under its PyTorch name; the value
    /// to use in the graph (a Cast's output when the weights are float16).
    fn weight(&mut self, path: &str) -> Result<String, TrainError> {
        let t = self
            .weights
            .get(path)
            .ok_or_else(|| TrainError::Config(format!("ONNX export: the model has no tensor `{path}`")))?;
        let name = torch_name(path);
        // Only the kernels go to float16: they are the bytes; biases and batch-norm statistics
        // are a few numbers each and keep float32's precision (a running variance in float16
        // costs more accuracy than it saves space).
        let half = self.half && t.shape.len() > 1;
        let (data_type, raw_data) = if half {
            (data_type::FLOAT16, t.values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect())
        } else {
            (data_type::FLOAT, t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        };
        self.inits.push(TensorProto {
            dims: t.shape.iter().map(|&d| d as i64).collect(),
            data_type,
            name: name.clone(),
            raw_data,
        });
        if !half {
            return Ok(name);
        }
        Ok(self.node("Cast", &format!("{name}_f32"), &[&name], vec![int("to", data_type::FLOAT as i64)]))
    }

    /// A constant int64 vector, written once per name.
    fn const_i64(&mut self, name: &str, v: &[i64]) -> String {
        if self.names.insert(name.to_string()) {
            self.inits.push(TensorProto {
                dims: vec![v.len() as i64],
                data_type: data_type::INT64,
                name: name.into(),
                raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            });
        }
        name.to_string()
    }

    /// A constant float32 scalar.
    fn const_f32(&mut self, name: &str, v: f32) -> String {
        self.names.insert(name.to_string());
        self.inits.push(TensorProto {
            dims: vec![],
            data_type: data_type::FLOAT,
            name: name.into(),
            raw_data: v.to_le_bytes().to_vec(),
        });
        name.to_string()
    }

    fn conv(&mut self, name: &str, path: &str, x: &str, c: &Conv2d) -> Result<String, TrainError> {
        let pads = match c.padding {
            PaddingConfig2d::Valid => [0; 4],
            PaddingConfig2d::Explicit(top, left, bottom, right) => [top, left, bottom, right],
            PaddingConfig2d::Same => {
                return Err(TrainError::Config(format!(
                    "ONNX export: {name} has `same` padding, which segkit does not use"
                )));
            }
        };
        let w = self.weight(&format!("{path}.weight"))?;
        let mut inputs = vec![x.to_string(), w];
        if c.bias.is_some() {
            inputs.push(self.weight(&format!("{path}.bias"))?);
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let attrs = vec![
            ints("kernel_shape", &c.kernel_size),
            ints("strides", &c.stride),
            ints("pads", &pads),
            ints("dilations", &c.dilation),
            int("group", c.groups as i64),
        ];
        Ok(self.node("Conv", name, &inputs, attrs))
    }

    fn deconv(&mut self, name: &str, path: &str, x: &str, c: &ConvTranspose2d) -> Result<String, TrainError> {
        let w = self.weight(&format!("{path}.weight"))?;
        let mut inputs = vec![x.to_string(), w];
        if c.bias.is_some() {
            inputs.push(self.weight(&format!("{path}.bias"))?);
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let [ph, pw] = c.padding;
        let mut attrs = vec![
            ints("kernel_shape", &c.kernel_size),
            ints("strides", &c.stride),
            ints("pads", &[ph, pw, ph, pw]),
            ints("dilations", &c.dilation),
            int("group", c.groups as i64),
        ];
        if c.padding_out != [0, 0] {
            attrs.push(ints("output_padding", &c.padding_out));
        }
        Ok(self.node("ConvTranspose", name, &inputs, attrs))
    }

    fn relu(&mut self, name: &str, x: &str) -> String {
        self.node("Relu", name, &[x], vec![])
    }

    fn max_pool(&mut self, name: &str, x: &str, p: &MaxPool2d) -> Result<String, TrainError> {
        let pads = match p.padding {
            PaddingConfig2d::Valid => [0; 4],
            PaddingConfig2d::Explicit(top, left, bottom, right) => [top, left, bottom, right],
            PaddingConfig2d::Same => {
                return Err(TrainError::Config(format!("ONNX export: {name} has `same` padding")));
            }
        };
        let attrs = vec![
            ints("kernel_shape", &p.kernel_size),
            ints("strides", &p.stride),
            ints("pads", &pads),
            int("ceil_mode", i64::from(p.ceil_mode)),
        ];
        Ok(self.node("MaxPool", name, &[x], attrs))
    }

    fn batch_norm(&mut self, name: &str, path: &str, x: &str, bn: &BatchNorm2d) -> Result<String, TrainError> {
        let inputs = [
            x.to_string(),
            self.weight(&format!("{path}.gamma"))?,
            self.weight(&format!("{path}.beta"))?,
            self.weight(&format!("{path}.running_mean"))?,
            self.weight(&format!("{path}.running_var"))?,
        ];
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        Ok(self.node("BatchNormalization", name, &inputs, vec![float("epsilon", bn.epsilon as f32)]))
    }

    /// `[H, W]` of `x`, as int64.
    fn spatial_size(&mut self, name: &str, x: &str) -> String {
        let shape = self.node("Shape", &format!("{name}_shape"), &[x], vec![]);
        let (two, four, zero) =
            (self.const_i64("const_2", &[2]), self.const_i64("const_4", &[4]), self.const_i64("const_0", &[0]));
        self.node("Slice", &format!("{name}_hw"), &[&shape, &two, &four, &zero], vec![])
    }

    /// `x` cropped to the height and width of `like`, starting at (`offset`, `offset`): the FCN
    /// crops, whose offsets are constants of the architecture.
    fn crop_at(&mut self, name: &str, x: &str, offset: usize, like: &str) -> String {
        let hw = self.spatial_size(name, like);
        let starts = self.const_i64(&format!("{name}_starts"), &[offset as i64, offset as i64]);
        let ends = self.node("Add", &format!("{name}_ends"), &[&hw, &starts], vec![]);
        let axes = self.const_i64("const_axes_hw", &[2, 3]);
        self.node("Slice", name, &[x, &starts, &ends, &axes], vec![])
    }

    /// `x` centre-cropped to the height and width of `like` (U-Net's skips): the start is
    /// `(X - h) / 2`, as in `layers::center_crop`.
    fn center_crop(&mut self, name: &str, x: &str, like: &str) -> String {
        let hw_x = self.spatial_size(&format!("{name}_from"), x);
        let hw = self.spatial_size(name, like);
        let diff = self.node("Sub", &format!("{name}_diff"), &[&hw_x, &hw], vec![]);
        let two = self.const_i64("const_2_2", &[2, 2]);
        let starts = self.node("Div", &format!("{name}_starts"), &[&diff, &two], vec![]);
        let ends = self.node("Add", &format!("{name}_ends"), &[&starts, &hw], vec![]);
        let axes = self.const_i64("const_axes_hw", &[2, 3]);
        self.node("Slice", name, &[x, &starts, &ends, &axes], vec![])
    }

    /// FCN, as `Fcn::forward` (`vgg::Vgg16::forward` for the trunk).
    fn fcn(&mut self, f: &Fcn, input: &str) -> Result<String, TrainError> {
        let mut x = input.to_string();
        let (mut pool3, mut pool4) = (String::new(), String::new());
        for (i, (convs, (pool_name, pool))) in f.vgg.stages().into_iter().enumerate() {
            for (name, c, bn) in convs {
                let mut y = self.conv(name, &format!("vgg.{name}"), &x, c)?;
                if let Some(bn) = bn {
                    let bn_name = Vgg16::bn_name(name);
                    y = self.batch_norm(&bn_name, &format!("vgg.{bn_name}"), &y, bn)?;
                }
                x = self.relu(&name.replace("conv", "relu"), &y);
            }
            x = self.max_pool(pool_name, &x, pool)?; // H/2^(i+1), rounded up
            match i {
                2 => pool3 = x.clone(),
                3 => pool4 = x.clone(),
                _ => {}
            }
        }
        let fc6 = self.conv("fc6", "vgg.fc6", &x, &f.vgg.fc6)?;
        let x = self.relu("relu6", &fc6); // drop6: identity at inference
        let fc7 = self.conv("fc7", "vgg.fc7", &x, &f.vgg.fc7)?;
        let x = self.relu("relu7", &fc7);
        let mut score = self.conv("score_fr", "score_fr", &x, &f.score_fr)?; // 1/32
        let at_once = f.variant == FcnVariant::Fcn8sAtOnce;
        if let (Some(up2), Some(sp4), Some(off)) = (&f.upscore2, &f.score_pool4, f.offsets.score_pool4) {
            let upscore2 = self.deconv("upscore2", "upscore2", &score, up2)?; // 1/16
            let p4 = if at_once {
                let s = self.const_f32("scale_pool4_factor", 0.01);
                self.node("Mul", "scale_pool4", &[&pool4, &s], vec![])
            } else {
                pool4.clone()
            };
            let s = self.conv("score_pool4", "score_pool4", &p4, sp4)?;
            let c = self.crop_at("score_pool4c", &s, off, &upscore2);
            score = self.node("Add", "fuse_pool4", &[&upscore2, &c], vec![]);
        }
        if let (Some(up), Some(sp3), Some(off)) = (&f.upscore_pool4, &f.score_pool3, f.offsets.score_pool3) {
            let upscore_pool4 = self.deconv("upscore_pool4", "upscore_pool4", &score, up)?; // 1/8
            let p3 = if at_once {
                let s = self.const_f32("scale_pool3_factor", 0.0001);
                self.node("Mul", "scale_pool3", &[&pool3, &s], vec![])
            } else {
                pool3.clone()
            };
            let s = self.conv("score_pool3", "score_pool3", &p3, sp3)?;
            let c = self.crop_at("score_pool3c", &s, off, &upscore_pool4);
            score = self.node("Add", "fuse_pool3", &[&upscore_pool4, &c], vec![]);
        }
        let (name, up) = match (&f.upscore, &f.upscore16, &f.upscore8) {
            (Some(u), _, _) => ("upscore", u),
            (_, Some(u), _) => ("upscore16", u),
            (_, _, Some(u)) => ("upscore8", u),
            _ => return Err(TrainError::Config("ONNX export: an FCN without a final upsampler".into())),
        };
        let out = self.deconv(name, name, &score, up)?; // full resolution, plus a margin
        Ok(self.crop_at("score", &out, f.offsets.final_crop, input)) // H x W
    }

    /// conv, (batch norm,) ReLU, twice, as `DoubleConv::forward`.
    fn double_conv(&mut self, prefix: &str, x: &str, b: &DoubleConv) -> Result<String, TrainError> {
        let mut y = x.to_string();
        for (k, conv, bn) in [(1, &b.conv1, &b.bn1), (2, &b.conv2, &b.bn2)] {
            let name = format!("{prefix}.conv{k}");
            y = self.conv(&name, &name, &y, conv)?;
            if let Some(bn) = bn {
                let name = format!("{prefix}.bn{k}");
                y = self.batch_norm(&name, &name, &y, bn)?;
            }
            y = self.relu(&format!("{prefix}.relu{k}"), &y);
        }
        Ok(y)
    }

    /// U-Net, as `Unet::forward`.
    fn unet(&mut self, u: &Unet, input: &str) -> Result<String, TrainError> {
        let mut x = input.to_string();
        let mut skips = Vec::new();
        for (i, block) in u.down.iter().enumerate() {
            let s = self.double_conv(&format!("down.{i}"), &x, block)?; // H - 4 (unpadded)
            x = self.max_pool(&format!("pool{}", i + 1), &s, &u.pool)?; // H / 2
            skips.push(s);
        }
        x = self.double_conv("bottom", &x, &u.bottom)?;
        for (i, ((upconv, block), skip)) in u.upconv.iter().zip(&u.up).zip(skips.into_iter().rev()).enumerate() {
            let up = self.deconv(&format!("upconv.{i}"), &format!("upconv.{i}"), &x, upconv)?; // 2H
            let c = self.center_crop(&format!("crop.{i}"), &skip, &up);
            let cat = self.node("Concat", &format!("concat.{i}"), &[&c, &up], vec![int("axis", 1)]);
            x = self.double_conv(&format!("up.{i}"), &cat, block)?; // 2H - 4 (unpadded)
        }
        self.conv("final", "final_conv", &x, &u.final_conv)
    }
}

/// An ONNX file as segkit reads it back (tests, `segkit export` summaries).
#[derive(Debug, Clone)]
pub struct OnnxInfo {
    pub ir_version: i64,
    pub opset: i64,
    /// Op type per node, in graph order.
    pub ops: Vec<String>,
    /// Name, dims and data type of every initializer, in file order.
    pub initializers: Vec<(String, Vec<i64>, i32)>,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub metadata: BTreeMap<String, String>,
}

/// Reads the structure of an ONNX file (not its weights' values).
pub fn read_onnx(path: &Path) -> Result<OnnxInfo, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let m = ModelProto::decode(bytes.as_slice())
        .map_err(|e| TrainError::checkpoint(path, format!("not an ONNX model ({e})")))?;
    let g = m.graph.ok_or_else(|| TrainError::checkpoint(path, "an ONNX model without a graph"))?;
    Ok(OnnxInfo {
        ir_version: m.ir_version,
        opset: m.opset_import.iter().find(|o| o.domain.is_empty()).map_or(0, |o| o.version),
        ops: g.node.iter().map(|n| n.op_type.clone()).collect(),
        initializers: g.initializer.iter().map(|t| (t.name.clone(), t.dims.clone(), t.data_type)).collect(),
        inputs: g.input.iter().map(|v| v.name.clone()).collect(),
        outputs: g.output.iter().map(|v| v.name.clone()).collect(),
        metadata: m.metadata_props.into_iter().map(|e| (e.key, e.value)).collect(),
    })
}
