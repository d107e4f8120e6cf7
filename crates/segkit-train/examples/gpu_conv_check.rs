//! One 3x3 convolution layer on a GPU device against Burn's CPU backend, shape by shape: the
//! forward pass, the input gradient and the weight gradient, each within 1e-3 of the largest CPU
//! entry. What found the smallest shape on which Mesa 22.3's OpenGL llvmpipe computes a wrong
//! weight gradient (docs/GPU.md, section 3); run it on any driver to locate a wrong kernel.
//!
//! ```sh
//! $CARGO_TARGET_DIR/release/examples/gpu_conv_check opengl            # the built-in sweep
//! $CARGO_TARGET_DIR/release/examples/gpu_conv_check wgpu 2 2 2 222 1  # one shape: B Cin Cout H pad
//! ```
//!
//! The device names are segkit's (`wgpu`, `vulkan`, `opengl`); the autotune mode is the one
//! `segkit train` uses on that adapter (`device::select`). Exit status 1 when a shape fails.

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use segkit_train::selftest::rel_diff;

#[derive(Clone, Copy, Debug)]
struct Shape {
    batch: usize,
    cin: usize,
    cout: usize,
    size: usize,
    pad: usize,
}

/// Forward, input-gradient and weight-gradient deviations on `gpu` against flex.
fn deviations(s: Shape, gpu: &Device) -> [f64; 3] {
    let mut rng = StdRng::seed_from_u64(3);
    let mut draw = |n: usize| (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect::<Vec<f32>>();
    let x = draw(s.batch * s.cin * s.size * s.size);
    let w = draw(s.cout * s.cin * 9);
    let out = s.size + 2 * s.pad - 2;
    let dy = draw(s.batch * s.cout * out * out);
    let run = |d: &Device| {
        let d = d.clone().autodiff();
        let xt =
            Tensor::<4>::from_data(TensorData::new(x.clone(), [s.batch, s.cin, s.size, s.size]), &d).require_grad();
        let wt = Tensor::<4>::from_data(TensorData::new(w.clone(), [s.cout, s.cin, 3, 3]), &d).require_grad();
        let dyt = Tensor::<4>::from_data(TensorData::new(dy.clone(), [s.batch, s.cout, out, out]), &d);
        let y = conv2d(xt.clone(), wt.clone(), None, ConvOptions::new([1, 1], [s.pad, s.pad], [1, 1], 1));
        let grads = (y.clone() * dyt).sum().backward();
        let v = |t: Tensor<4>| t.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 values");
        (v(y.inner()), v(xt.grad(&grads).expect("input gradient")), v(wt.grad(&grads).expect("weight gradient")))
    };
    let (a, b) = (run(&Device::flex()), run(gpu));
    [rel_diff(&b.0, &a.0), rel_diff(&b.1, &a.1), rel_diff(&b.2, &a.2)]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(name) = args.first() else {
        eprintln!("usage: gpu_conv_check wgpu|vulkan|opengl [BATCH CIN COUT SIZE PAD]");
        std::process::exit(2);
    };
    let (gpu, desc) = match segkit_train::device::select(name) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    println!("{desc}");
    let shapes: Vec<Shape> = if args.len() == 6 {
        let n: Vec<usize> = match args[1..].iter().map(|a| a.parse()).collect() {
            Ok(n) => n,
            Err(e) => {
                eprintln!("error: BATCH CIN COUT SIZE PAD must be whole numbers: {e}");
                std::process::exit(2);
            }
        };
        vec![Shape { batch: n[0], cin: n[1], cout: n[2], size: n[3], pad: n[4] }]
    } else {
        // conv1_2 of the selftest's FCN (base width 2, batch 2, 24x24 input padded by 100 in
        // conv1_1) first, then sizes down and up from it, then the channel and batch counts.
        let mut v = vec![Shape { batch: 2, cin: 2, cout: 2, size: 222, pad: 1 }];
        for size in [8, 16, 32, 64, 96, 128, 160, 181, 182, 192, 224, 256, 362, 363, 512] {
            v.push(Shape { batch: 2, cin: 2, cout: 2, size, pad: 1 });
        }
        for (batch, cin, cout) in [(1, 2, 2), (2, 1, 1), (1, 1, 1), (4, 2, 2), (2, 8, 8), (2, 3, 2)] {
            v.push(Shape { batch, cin, cout, size: 222, pad: 1 });
        }
        v.push(Shape { batch: 2, cin: 3, cout: 2, size: 24, pad: 100 });
        v
    };
    let mut failed = Vec::new();
    println!(
        "{:>5} {:>4} {:>4} {:>5} {:>4}  {:>9} {:>9} {:>9}",
        "batch", "cin", "cout", "size", "pad", "forward", "dgrad", "wgrad"
    );
    for s in shapes {
        let [f, dx, dw] = deviations(s, &gpu);
        let bad = [f, dx, dw].iter().any(|d| !(*d <= 1e-3));
        println!(
            "{:>5} {:>4} {:>4} {:>5} {:>4}  {f:>9.2e} {dx:>9.2e} {dw:>9.2e}{}",
            s.batch,
            s.cin,
            s.cout,
            s.size,
            s.pad,
            if bad { "  FAIL" } else { "" }
        );
        if bad {
            failed.push(s);
        }
    }
    match failed.iter().min_by_key(|s| s.batch * s.cin * s.cout * s.size * s.size) {
        Some(s) => {
            println!("{} shapes fail; the smallest: {s:?}", failed.len());
            std::process::exit(1);
        }
        None => println!("every shape passes (limit 1e-3 of the largest CPU entry)"),
    }
}
