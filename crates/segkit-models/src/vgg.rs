//! The VGG16 trunk of FCN, built once and shared by FCN-32s, FCN-16s and FCN-8s.
//!
//! Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
//! ICLR 2015, with the fully connected layers recast as convolutions as in Long, Shelhamer &
//! Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015:
//! fc6 is a 7x7 convolution to 4096 channels without padding, fc7 a 1x1 convolution to 4096.
//!
//! Faithful to the reference `voc-fcn*s` nets: conv1_1 has padding 100 (so that any input size,
//! however small, survives the five poolings and fc6), and pooling rounds up (Caffe's rule,
//! `ceil_mode=True`). Field names are the reference layer names, so that Caffe/PyTorch weights
//! map by name. `base` and `fc` shrink the widths for tests and CPU runs; the defaults are VGG16's.
//!
//! Deviation, off by default: `batch_norm` puts a batch norm between each trunk convolution and
//! its ReLU, as torchvision's `vgg16_bn` does (`bn1_1` after `conv1_1`, ...; none on fc6/fc7).
//! It is not in the paper; it is what lets a from-scratch FCN learn in a CPU-sized budget.

use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::{Dropout, DropoutConfig};
use burn::prelude::*;

use crate::ModelError;
use crate::conv::conv2d_relu;
use crate::cpu_pool::max_pool2d;
use crate::geometry::CoordMap;
use crate::layers::{BatchNorm2d, conv, conv_bn_relu, max_pool};
use crate::trace::{Shape3, Tracer};

/// conv1_1's padding in the reference model.
pub const CONV1_1_PAD: usize = 100;

#[derive(Module, Debug)]
pub struct Vgg16 {
    pub conv1_1: Conv2d,
    pub bn1_1: Option<BatchNorm2d>,
    pub conv1_2: Conv2d,
    pub bn1_2: Option<BatchNorm2d>,
    pub pool1: MaxPool2d,
    pub conv2_1: Conv2d,
    pub bn2_1: Option<BatchNorm2d>,
    pub conv2_2: Conv2d,
    pub bn2_2: Option<BatchNorm2d>,
    pub pool2: MaxPool2d,
    pub conv3_1: Conv2d,
    pub bn3_1: Option<BatchNorm2d>,
    pub conv3_2: Conv2d,
    pub bn3_2: Option<BatchNorm2d>,
    pub conv3_3: Conv2d,
    pub bn3_3: Option<BatchNorm2d>,
    pub pool3: MaxPool2d,
    pub conv4_1: Conv2d,
    pub bn4_1: Option<BatchNorm2d>,
    pub conv4_2: Conv2d,
    pub bn4_2: Option<BatchNorm2d>,
    pub conv4_3: Conv2d,
    pub bn4_3: Option<BatchNorm2d>,
    pub pool4: MaxPool2d,
    pub conv5_1: Conv2d,
    pub bn5_1: Option<BatchNorm2d>,
    pub conv5_2: Conv2d,
    pub bn5_2: Option<BatchNorm2d>,
    pub conv5_3: Conv2d,
    pub bn5_3: Option<BatchNorm2d>,
    pub pool5: MaxPool2d,
    pub fc6: Conv2d,
    pub drop6: Dropout,
    pub fc7: Conv2d,
    pub drop7: Dropout,
}

/// The feature maps FCN taps: pool3 (stride 8), pool4 (stride 16) and fc7 (stride 32).
pub struct VggTaps<T> {
    pub pool3: T,
    pub pool4: T,
    pub fc7: T,
}

/// One trunk convolution: its reference name, the layer, and its batch norm when the trunk has them.
pub type TrunkConv<'a> = (&'static str, &'a Conv2d, Option<&'a BatchNorm2d>);

/// One stage: its convolutions, then its pooling and its name.
pub type Stage<'a> = (Vec<TrunkConv<'a>>, (&'static str, &'a MaxPool2d));

impl Vgg16 {
    /// `base` is conv1's width (64 in VGG16; stages use base, 2, 4, 8, 8 times it), `fc` the width
    /// of fc6/fc7 (4096), `dropout` their dropout probability (0.5), `batch_norm` whether each
    /// trunk convolution is followed by a batch norm (`vgg16_bn`; off in the paper).
    pub fn new(in_channels: usize, base: usize, fc: usize, dropout: f64, batch_norm: bool, device: &Device) -> Self {
        let [c1, c2, c3, c4, c5] = [base, 2 * base, 4 * base, 8 * base, 8 * base];
        let bn = |c: usize| batch_norm.then(|| BatchNorm2d::new(c, device));
        Self {
            conv1_1: conv(in_channels, c1, 3, CONV1_1_PAD, device),
            bn1_1: bn(c1),
            conv1_2: conv(c1, c1, 3, 1, device),
            bn1_2: bn(c1),
            pool1: max_pool(true),
            conv2_1: conv(c1, c2, 3, 1, device),
            bn2_1: bn(c2),
            conv2_2: conv(c2, c2, 3, 1, device),
            bn2_2: bn(c2),
            pool2: max_pool(true),
            conv3_1: conv(c2, c3, 3, 1, device),
            bn3_1: bn(c3),
            conv3_2: conv(c3, c3, 3, 1, device),
            bn3_2: bn(c3),
            conv3_3: conv(c3, c3, 3, 1, device),
            bn3_3: bn(c3),
            pool3: max_pool(true),
            conv4_1: conv(c3, c4, 3, 1, device),
            bn4_1: bn(c4),
            conv4_2: conv(c4, c4, 3, 1, device),
            bn4_2: bn(c4),
            conv4_3: conv(c4, c4, 3, 1, device),
            bn4_3: bn(c4),
            pool4: max_pool(true),
            conv5_1: conv(c4, c5, 3, 1, device),
            bn5_1: bn(c5),
            conv5_2: conv(c5, c5, 3, 1, device),
            bn5_2: bn(c5),
            conv5_3: conv(c5, c5, 3, 1, device),
            bn5_3: bn(c5),
            pool5: max_pool(true),
            fc6: conv(c5, fc, 7, 0, device),
            drop6: DropoutConfig::new(dropout).init(),
            fc7: conv(fc, fc, 1, 0, device),
            drop7: DropoutConfig::new(dropout).init(),
        }
    }

    /// Channels of pool3, pool4 and fc7.
    pub fn tap_channels(&self) -> VggTaps<usize> {
        let out = |c: &Conv2d| c.weight.lazy_shape().dims::<4>()[0];
        VggTaps { pool3: out(&self.conv3_3), pool4: out(&self.conv4_3), fc7: out(&self.fc7) }
    }

    /// The five stages in order: their convolutions by reference name, then their pooling.
    pub fn stages(&self) -> [Stage<'_>; 5] {
        fn c<'a>(name: &'static str, conv: &'a Conv2d, bn: &'a Option<BatchNorm2d>) -> TrunkConv<'a> {
            (name, conv, bn.as_ref())
        }
        [
            (
                vec![c("conv1_1", &self.conv1_1, &self.bn1_1), c("conv1_2", &self.conv1_2, &self.bn1_2)],
                ("pool1", &self.pool1),
            ),
            (
                vec![c("conv2_1", &self.conv2_1, &self.bn2_1), c("conv2_2", &self.conv2_2, &self.bn2_2)],
                ("pool2", &self.pool2),
            ),
            (
                vec![
                    c("conv3_1", &self.conv3_1, &self.bn3_1),
                    c("conv3_2", &self.conv3_2, &self.bn3_2),
                    c("conv3_3", &self.conv3_3, &self.bn3_3),
                ],
                ("pool3", &self.pool3),
            ),
            (
                vec![
                    c("conv4_1", &self.conv4_1, &self.bn4_1),
                    c("conv4_2", &self.conv4_2, &self.bn4_2),
                    c("conv4_3", &self.conv4_3, &self.bn4_3),
                ],
                ("pool4", &self.pool4),
            ),
            (
                vec![
                    c("conv5_1", &self.conv5_1, &self.bn5_1),
                    c("conv5_2", &self.conv5_2, &self.bn5_2),
                    c("conv5_3", &self.conv5_3, &self.bn5_3),
                ],
                ("pool5", &self.pool5),
            ),
        ]
    }

    /// The batch-norm name paired with a trunk convolution's (`conv3_2` -> `bn3_2`).
    pub fn bn_name(conv_name: &str) -> String {
        conv_name.replacen("conv", "bn", 1)
    }

    pub fn forward(&self, x: Tensor<4>) -> VggTaps<Tensor<4>> {
        let mut x = x;
        let mut pool3 = None;
        let mut pool4 = None;
        for (i, (convs, (_, pool))) in self.stages().into_iter().enumerate() {
            for (_, c, bn) in convs {
                x = conv_bn_relu(c, bn, x);
            }
            x = max_pool2d(pool, x); // H/2^(i+1), rounded up
            match i {
                2 => pool3 = Some(x.clone()),
                3 => pool4 = Some(x.clone()),
                _ => {}
            }
        }
        let x = self.drop6.forward(conv2d_relu(&self.fc6, x)); // (H5 - 6) x (W5 - 6)
        let fc7 = self.drop7.forward(conv2d_relu(&self.fc7, x));
        VggTaps { pool3: pool3.expect("five stages"), pool4: pool4.expect("five stages"), fc7 }
    }

    /// Shapes of the taps for an input of shape `x`, recording every layer in `t`.
    pub fn trace(&self, t: &mut Tracer, x: Shape3) -> Result<VggTaps<Shape3>, ModelError> {
        let mut x = x;
        let mut taps = [x; 2];
        for (i, (convs, (pool_name, pool))) in self.stages().into_iter().enumerate() {
            for (name, c, bn) in convs {
                x = t.conv(name, c, x)?;
                if let Some(bn) = bn {
                    x = t.norm(&Self::bn_name(name), 2 * bn.gamma.lazy_shape().num_elements(), x);
                }
            }
            x = t.pool(pool_name, pool, x)?;
            if i == 2 || i == 3 {
                taps[i - 2] = x;
            }
        }
        let x = t.conv("fc6", &self.fc6, x)?;
        let fc7 = t.conv("fc7", &self.fc7, x)?;
        Ok(VggTaps { pool3: taps[0], pool4: taps[1], fc7 })
    }

    /// Coordinate maps of the taps, read off the layers' kernels, strides and paddings.
    pub fn coord_maps(&self) -> VggTaps<CoordMap> {
        let conv_map = |m: CoordMap, c: &Conv2d| {
            let pad = match c.padding {
                burn::nn::PaddingConfig2d::Explicit(top, ..) => top,
                _ => 0,
            };
            m.conv(c.kernel_size[0], c.stride[0], pad)
        };
        let mut m = CoordMap::IDENTITY;
        let mut taps = [m; 2];
        for (i, (convs, (_, pool))) in self.stages().into_iter().enumerate() {
            for (_, c, _) in convs {
                m = conv_map(m, c); // batch norm keeps the map
            }
            m = m.conv(pool.kernel_size[0], pool.stride[0], 0);
            if i == 2 || i == 3 {
                taps[i - 2] = m;
            }
        }
        let fc7 = conv_map(conv_map(m, &self.fc6), &self.fc7);
        VggTaps { pool3: taps[0], pool4: taps[1], fc7 }
    }
}
