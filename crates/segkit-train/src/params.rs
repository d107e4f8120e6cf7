//! Parameters by path: read every float tensor of a module as `(path, shape, values)`, and load
//! such a set back by path. Checkpoints, `init_from` and export are built on these two.
//!
//! Paths are the module field names joined by dots (`vgg.conv1_1.weight`, `down.0.conv1.bias`);
//! the variant of [`segkit_models::SegModel`] is not part of the path.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::TensorData;

/// One tensor in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

pub fn to_f32<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().expect("converted to f32")
}

pub fn to_i64<const D: usize>(t: Tensor<D, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().try_into_vec::<i64>().expect("converted to i64")
}

#[derive(Default)]
struct Path(Vec<String>);

impl Path {
    fn enter(&mut self, name: &str, container: &str) {
        if !container.starts_with("Enum:") {
            self.0.push(name.to_string());
        }
    }
    fn exit(&mut self, container: &str) {
        if !container.starts_with("Enum:") {
            self.0.pop();
        }
    }
    fn get(&self) -> String {
        self.0.join(".")
    }
}

struct Collect {
    path: Path,
    out: BTreeMap<String, HostTensor>,
    trainable_only: bool,
    /// Only paths for which this holds are read (and copied to the host).
    keep: fn(&str) -> bool,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _name: &str, container: &str) {
        self.path.exit(container);
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        if self.trainable_only && !t.is_require_grad() {
            return;
        }
        let path = self.path.get();
        if !(self.keep)(&path) {
            return;
        }
        let shape = t.dims().to_vec();
        self.out.insert(path, HostTensor { shape, values: to_f32(t.inner()) });
    }
}

/// Every float tensor of `module` (parameters and batch-norm running statistics) by path.
pub fn collect<M: Module>(module: &M) -> BTreeMap<String, HostTensor> {
    collect_where(module, |_| true)
}

/// The float tensors of `module` whose path satisfies `keep`; the others are not copied.
pub fn collect_where<M: Module>(module: &M, keep: fn(&str) -> bool) -> BTreeMap<String, HostTensor> {
    let mut v = Collect { path: Path::default(), out: BTreeMap::new(), trainable_only: false, keep };
    module.visit(&mut v);
    v.out
}

/// The paths of `module`'s trainable tensors (frozen ones, such as fixed bilinear upsamplers
/// and batch-norm running statistics, are left out).
pub fn trainable_paths<M: Module>(module: &M) -> Vec<String> {
    struct Trainable(Path, Vec<String>);
    impl ModuleVisitor for Trainable {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.0.enter(name, container);
        }
        fn exit_module(&mut self, _name: &str, container: &str) {
            self.0.exit(container);
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.val().is_require_grad() {
                self.1.push(self.0.get());
            }
        }
    }
    let mut v = Trainable(Path::default(), Vec::new());
    module.visit(&mut v);
    v.1
}

/// Every parameter's gradient in `grads` (from `loss.backward()`), by path.
pub fn gradients<M: Module>(module: &M, grads: &burn::tensor::Gradients) -> Vec<(String, Vec<f32>)> {
    struct Grads<'a>(&'a burn::tensor::Gradients, Path, Vec<(String, Vec<f32>)>);
    impl ModuleVisitor for Grads<'_> {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.1.enter(name, container);
        }
        fn exit_module(&mut self, _name: &str, container: &str) {
            self.1.exit(container);
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = param.val().grad(self.0) {
                self.2.push((self.1.get(), to_f32(g)));
            }
        }
    }
    let mut v = Grads(grads, Path::default(), Vec::new());
    module.visit(&mut v);
    v.2
}

/// Whether every gradient in `grads` is finite: one reduction per tensor, one number read back
/// (a NaN or infinity anywhere makes the total non-finite).
pub fn gradients_finite<M: Module>(module: &M, grads: &burn::optim::GradientsParams) -> bool {
    struct Total<'a>(&'a burn::optim::GradientsParams, Option<Tensor<1>>);
    impl ModuleVisitor for Total<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(param.id) {
                let s = g.abs().sum();
                self.1 = Some(match self.1.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    let mut v = Total(grads, None);
    module.visit(&mut v);
    v.1.is_none_or(|t| to_f32(t)[0].is_finite())
}

/// `grads` with every gradient of `module`'s parameters multiplied by `factor` (mixed
/// precision's unscaling, `amp`).
pub fn scale_gradients<M: Module>(
    module: &M,
    grads: burn::optim::GradientsParams,
    factor: f64,
) -> burn::optim::GradientsParams {
    struct Scale(burn::optim::GradientsParams, f64);
    impl ModuleVisitor for Scale {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.remove::<D>(param.id) {
                self.0.register::<D>(param.id, g.mul_scalar(self.1));
            }
        }
    }
    let mut v = Scale(grads, factor);
    module.visit(&mut v);
    v.0
}

/// The paths and shapes of `module`'s float tensors, without reading values.
pub fn shapes<M: Module>(module: &M) -> BTreeMap<String, Vec<usize>> {
    struct Shapes(Path, BTreeMap<String, Vec<usize>>);
    impl ModuleVisitor for Shapes {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.0.enter(name, container);
        }
        fn exit_module(&mut self, _name: &str, container: &str) {
            self.0.exit(container);
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.1.insert(self.0.get(), param.lazy_shape().dims::<D>().to_vec());
        }
    }
    let mut v = Shapes(Path::default(), BTreeMap::new());
    module.visit(&mut v);
    v.1
}

/// What [`load`] did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    /// In the module but not in the source.
    pub missing: Vec<String>,
    /// In both, with different shapes: `(path, module shape, source shape)`.
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

struct Load<'a> {
    path: Path,
    source: &'a BTreeMap<String, HostTensor>,
    report: LoadReport,
}

impl ModuleMapper for Load<'_> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _name: &str, container: &str) {
        self.path.exit(container);
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.get();
        let Some(src) = self.source.get(&path) else {
            self.report.missing.push(path);
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.dims().to_vec();
        if shape != src.shape {
            self.report.mismatched.push((path, shape, src.shape.clone()));
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let require_grad = tensor.is_require_grad();
        // The tensor's own device, so a parameter of an autodiff model stays one.
        let mut t = Tensor::<D>::from_data(TensorData::new(src.values.clone(), shape), &tensor.device());
        if require_grad {
            t = t.require_grad();
        }
        self.report.loaded.push(path);
        Param::from_mapped_value(id, t, mapper)
    }
}

/// Replaces the tensors of `module` found in `source` (same path, same shape). What is missing
/// or mismatched is reported, not loaded; the caller decides whether that is an error.
pub fn load<M: Module>(module: M, source: &BTreeMap<String, HostTensor>) -> (M, LoadReport) {
    let mut l = Load { path: Path::default(), source, report: LoadReport::default() };
    let module = module.map(&mut l);
    (module, l.report)
}
