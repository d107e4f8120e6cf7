//! Batches on worker threads, ahead of the device.
//!
//! Batch `k` of an epoch always holds the same samples with the same augmentation (seeded by run
//! seed, epoch and position), whatever the number of workers: workers build batches out of order
//! and the consumer puts them back in order. A loader started at batch `k` (resume) yields
//! exactly what an uninterrupted one would from `k` on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use burn::prelude::*;
use burn::tensor::TensorData;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::error::{DataError, Result};
use crate::layout::{Dataset, SampleRef};
use crate::synth::mix_seed;
use crate::transform::{AugmentConfig, Prepared, Window, sample_seed, train_transform};

/// A batch in host memory.
#[derive(Debug, Clone)]
pub struct HostBatch {
    /// `[B, C, H, W]` row-major.
    pub images: Vec<f32>,
    /// `[B, H', W']` row-major.
    pub labels: Vec<u8>,
    pub batch: usize,
    pub channels: usize,
    pub in_hw: (usize, usize),
    pub out_hw: (usize, usize),
    /// `[B, H', W']`: the U-Net border weights of each label tile, when the loader computes them.
    pub border: Option<Vec<f32>>,
}

impl HostBatch {
    /// Stacks prepared samples, which must share their sizes.
    pub fn stack(items: Vec<Prepared>, channels: usize) -> std::result::Result<HostBatch, String> {
        let first = items.first().ok_or("empty batch")?;
        let (in_hw, out_hw) = (first.in_hw, first.out_hw);
        if let Some(odd) = items.iter().find(|p| p.in_hw != in_hw || p.out_hw != out_hw) {
            return Err(format!(
                "samples of one batch differ in size ({}x{} vs {}x{}): set augment.crop, or batch_size = 1",
                in_hw.1, in_hw.0, odd.in_hw.1, odd.in_hw.0
            ));
        }
        let batch = items.len();
        let mut images = Vec::with_capacity(batch * channels * in_hw.0 * in_hw.1);
        let mut labels = Vec::with_capacity(batch * out_hw.0 * out_hw.1);
        for p in items {
            images.extend_from_slice(&p.image);
            labels.extend_from_slice(&p.labels);
        }
        Ok(HostBatch { images, labels, batch, channels, in_hw, out_hw, border: None })
    }

    /// Computes the border weights of every label tile (`crate::regions::border_weights`).
    pub fn add_border_weights(&mut self, b: &BorderSpec, ignore: u8) {
        let (h, w) = self.out_hw;
        let weights = self
            .labels
            .chunks(h * w)
            .flat_map(|tile| crate::regions::border_weights(tile, w, h, b.cell_class, ignore, b.w0, b.sigma))
            .collect();
        self.border = Some(weights);
    }

    /// The border weights as a `[B, H', W']` tensor on `device`, if computed.
    pub fn border_to_device(&self, device: &Device) -> Option<Tensor<3>> {
        let b = self.border.as_ref()?;
        Some(Tensor::<3>::from_data(TensorData::new(b.clone(), [self.batch, self.out_hw.0, self.out_hw.1]), device))
    }

    /// The Batcher's job: `[B, C, H, W]` float and `[B, H', W']` int tensors on `device`.
    pub fn to_device(&self, device: &Device) -> (Tensor<4>, Tensor<3, Int>) {
        let (b, c) = (self.batch, self.channels);
        let images =
            Tensor::<4>::from_data(TensorData::new(self.images.clone(), [b, c, self.in_hw.0, self.in_hw.1]), device);
        let labels: Vec<i32> = self.labels.iter().map(|&v| v as i32).collect();
        let targets = Tensor::<3, Int>::from_data(TensorData::new(labels, [b, self.out_hw.0, self.out_hw.1]), device);
        (images, targets)
    }
}

/// The U-Net paper's border weights (`crate::regions`): which class the cells are, and w0, sigma.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BorderSpec {
    pub cell_class: u8,
    pub w0: f32,
    pub sigma: f32,
}

/// Everything a training loader needs.
#[derive(Clone)]
pub struct LoaderSpec {
    pub dataset: Arc<Dataset>,
    pub samples: Arc<Vec<SampleRef>>,
    pub augment: AugmentConfig,
    /// `None`: whole images.
    pub window: Option<Window>,
    /// Mirror the context outside the image (U-Net), else zero it.
    pub mirror: bool,
    pub channels: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub workers: usize,
    /// Batches built ahead of the consumer.
    pub prefetch: usize,
    /// Compute the U-Net border weights of every label tile (`train.border_weights`).
    pub border: Option<BorderSpec>,
}

impl LoaderSpec {
    /// Full batches per epoch (a last partial batch is dropped, so every step sees B images).
    pub fn batches_per_epoch(&self) -> usize {
        (self.samples.len() / self.batch_size).max(usize::from(!self.samples.is_empty()))
    }

    /// The sample order of `epoch`.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.samples.len()).collect();
        idx.shuffle(&mut StdRng::seed_from_u64(mix_seed(self.seed, epoch ^ 0x5EED)));
        idx
    }

    /// Builds batch `k` of `epoch` on the calling thread.
    pub fn build(&self, epoch: u64, order: &[usize], k: usize) -> Result<HostBatch> {
        let bs = self.batch_size.min(order.len());
        let mut items = Vec::with_capacity(bs);
        for pos in k * bs..(k + 1) * bs {
            let sample = &self.samples[order[pos % order.len()]];
            let (img, labels) = self.dataset.load(sample, self.channels)?;
            let seed = sample_seed(self.seed, epoch, pos as u64);
            items.push(train_transform(
                img,
                labels,
                &self.augment,
                self.window,
                self.mirror,
                self.dataset.classes.ignore_index,
                seed,
            ));
        }
        let mut batch = HostBatch::stack(items, self.channels).map_err(DataError::Config)?;
        if let Some(b) = &self.border {
            batch.add_border_weights(b, self.dataset.classes.ignore_index);
        }
        Ok(batch)
    }

    /// Starts workers for `epoch`, yielding batches `start..batches_per_epoch()` in order.
    pub fn epoch(&self, epoch: u64, start: usize) -> EpochLoader {
        let n = self.batches_per_epoch();
        let order = Arc::new(self.order(epoch));
        let next = Arc::new(AtomicUsize::new(start));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = sync_channel(self.prefetch.max(1));
        let tx = Arc::new(Mutex::new(tx));
        let workers = (0..self.workers.max(1))
            .map(|_| {
                let (spec, order, next, stop, tx) =
                    (self.clone(), order.clone(), next.clone(), stop.clone(), tx.clone());
                std::thread::spawn(move || {
                    loop {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= n {
                            return;
                        }
                        let batch = spec.build(epoch, &order, k);
                        let sender = tx.lock().expect("loader channel").clone();
                        if sender.send((k, batch)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        EpochLoader { rx, pending: BTreeMap::new(), next: start, end: n, stop, workers }
    }
}

/// Yields one epoch's batches in order; stops its workers when dropped.
pub struct EpochLoader {
    rx: Receiver<(usize, Result<HostBatch>)>,
    pending: BTreeMap<usize, Result<HostBatch>>,
    next: usize,
    end: usize,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Iterator for EpochLoader {
    type Item = (usize, Result<HostBatch>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        loop {
            if let Some(b) = self.pending.remove(&self.next) {
                self.next += 1;
                return Some((self.next - 1, b));
            }
            match self.rx.recv() {
                Ok((k, b)) => {
                    self.pending.insert(k, b);
                }
                Err(_) => return None,
            }
        }
    }
}

impl Drop for EpochLoader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Drain so that workers blocked on a full channel can see the stop flag.
        while self.rx.try_recv().is_ok() {}
        for w in self.workers.drain(..) {
            while !w.is_finished() {
                while self.rx.try_recv().is_ok() {}
                std::thread::yield_now();
            }
            let _ = w.join();
        }
    }
}
