//! Reading PyTorch `.pth` files (the zip format of `torch.save` since PyTorch 1.6) without
//! PyTorch: a zip central-directory reader for stored entries and a pickle machine for the subset
//! of opcodes state dicts use. Tensors come back as f32 by name, so that torchvision's VGG16 and
//! pytorch-fcn's FCN weights load directly.
//!
//! Only data is interpreted: `GLOBAL`s are recorded by name and the only callables "called" are
//! the tensor rebuilders and `OrderedDict`; nothing in the file is executed.

use std::collections::BTreeMap;
use std::path::Path;

use crate::TrainError;
use crate::params::HostTensor;

fn u16le(b: &[u8], at: usize) -> Option<usize> {
    b.get(at..at.checked_add(2)?).map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
}
fn u32le(b: &[u8], at: usize) -> Option<usize> {
    b.get(at..at.checked_add(4)?).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
}
fn u64le(b: &[u8], at: usize) -> Option<usize> {
    b.get(at..at.checked_add(8)?).map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")) as usize)
}

/// The stored (uncompressed) entries of a zip archive, by name.
fn zip_entries(b: &[u8]) -> Result<BTreeMap<String, &[u8]>, String> {
    let eocd =
        (0..b.len().saturating_sub(21)).rev().take(70_000).find(|&i| b[i..].starts_with(&[0x50, 0x4b, 0x05, 0x06]));
    let eocd = eocd.ok_or("not a zip archive (no end of central directory): is this a .pth from PyTorch >= 1.6?")?;
    let mut count = u16le(b, eocd + 10).ok_or("truncated zip directory")?;
    let mut dir = u32le(b, eocd + 16).ok_or("truncated zip directory")?;
    if (count == 0xFFFF || dir == 0xFFFF_FFFF) && eocd >= 20 && b[eocd - 20..].starts_with(&[0x50, 0x4b, 0x06, 0x07]) {
        let rec = u64le(b, eocd - 12).ok_or("truncated zip64 locator")?;
        count = u64le(b, rec.saturating_add(32)).ok_or("truncated zip64 directory")?;
        dir = u64le(b, rec.saturating_add(48)).ok_or("truncated zip64 directory")?;
    }
    let mut out = BTreeMap::new();
    let mut p = dir;
    for _ in 0..count {
        if !b.get(p..).is_some_and(|s| s.starts_with(&[0x50, 0x4b, 0x01, 0x02])) {
            return Err("corrupt zip central directory".into());
        }
        let method = u16le(b, p + 10).ok_or("truncated entry")?;
        let mut size = u32le(b, p + 24).ok_or("truncated entry")?;
        let (n, e, c) = (u16le(b, p + 28).ok_or("x")?, u16le(b, p + 30).ok_or("x")?, u16le(b, p + 32).ok_or("x")?);
        let mut local = u32le(b, p + 42).ok_or("truncated entry")?;
        let name = String::from_utf8_lossy(b.get(p + 46..p + 46 + n).ok_or("truncated name")?).into_owned();
        // Zip64 sizes and offsets live in the extra field (id 1), in this order, when maxed out.
        let mut x = p + 46 + n;
        while x + 4 <= p + 46 + n + e {
            let (id, len) = (u16le(b, x).ok_or("x")?, u16le(b, x + 2).ok_or("x")?);
            if id == 1 {
                let mut q = x + 4;
                if u32le(b, p + 24) == Some(0xFFFF_FFFF) {
                    size = u64le(b, q).ok_or("zip64")?;
                    q += 8;
                }
                if u32le(b, p + 20) == Some(0xFFFF_FFFF) {
                    q += 8;
                }
                if u32le(b, p + 42) == Some(0xFFFF_FFFF) {
                    local = u64le(b, q).ok_or("zip64")?;
                }
            }
            x += 4 + len;
        }
        if method != 0 {
            return Err(format!("entry {name} is compressed (method {method}); torch.save writes stored entries"));
        }
        let past_end = || format!("entry {name} runs past the end of the file");
        let header = local.checked_add(30).ok_or_else(past_end)?;
        let start = header
            + u16le(b, local.saturating_add(26)).ok_or_else(past_end)?
            + u16le(b, local.saturating_add(28)).ok_or_else(past_end)?;
        let data = b.get(start..start.checked_add(size).ok_or_else(past_end)?).ok_or_else(past_end)?;
        out.insert(name, data);
        p += 46 + n + e + c;
    }
    Ok(out)
}

/// A pickle value. Scalars other than ints are kept for `Debug` output only.
#[derive(Debug, Clone)]
#[allow(dead_code)]
enum V {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<V>),
    List(Vec<V>),
    Dict(Vec<(V, V)>),
    Global(String, String),
    Storage { key: String, dtype: String },
    Tensor { key: String, dtype: String, offset: usize, shape: Vec<usize>, strides: Vec<usize> },
    Mark,
    Other(String),
}

fn as_usize_vec(v: &V) -> Option<Vec<usize>> {
    match v {
        V::Tuple(items) | V::List(items) => {
            items.iter().map(|i| if let V::Int(n) = i { usize::try_from(*n).ok() } else { None }).collect()
        }
        _ => None,
    }
}

/// How deep pickle values may nest: a state dict needs 4 or 5 levels; the limit keeps the
/// recursive walks (and drops) of a crafted file's values off the end of the stack.
const MAX_DEPTH: usize = 32;

/// Nesting depth of `v` (1 for a scalar); values never nest deeper than `MAX_DEPTH + 1`.
fn depth(v: &V) -> usize {
    match v {
        V::Tuple(items) | V::List(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        V::Dict(items) => 1 + items.iter().map(|(k, v)| depth(k).max(depth(v))).max().unwrap_or(0),
        _ => 1,
    }
}

/// Values in `v`, counting containers and scalars alike.
fn size(v: &V) -> usize {
    match v {
        V::Tuple(items) | V::List(items) => 1 + items.iter().map(size).sum::<usize>(),
        V::Dict(items) => 1 + items.iter().map(|(k, v)| size(k) + size(v)).sum::<usize>(),
        _ => 1,
    }
}

/// An error when putting `v` into a container would nest values deeper than `MAX_DEPTH`.
fn nestable(v: &V) -> Result<(), String> {
    if depth(v) >= MAX_DEPTH {
        return Err(format!("pickle values nest deeper than {MAX_DEPTH} levels (a crafted file?)"));
    }
    Ok(())
}

/// Runs the pickle in `data` and returns its top value.
///
/// Python shares a memoised value; this reader copies it, so a crafted pickle could double its
/// values with every few bytes. Copies are therefore budgeted (a few values per byte of pickle,
/// far above what a state dict uses), and nesting is limited: arbitrary bytes give an error,
/// never an unbounded allocation or a stack overflow.
fn unpickle(data: &[u8]) -> Result<V, String> {
    let mut budget = 1_000_000usize.saturating_add(data.len().saturating_mul(8));
    let mut copy = |v: &V| -> Result<V, String> {
        budget = budget.checked_sub(size(v)).ok_or("pickle memo copies exceed the size budget (a crafted file?)")?;
        Ok(v.clone())
    };
    let mut stack: Vec<V> = Vec::new();
    let mut memo: BTreeMap<usize, V> = BTreeMap::new();
    let mut i = 0;
    let take = |i: &mut usize, n: usize| -> Result<&[u8], String> {
        let s = data.get(*i..*i + n).ok_or("pickle ends early")?;
        *i += n;
        Ok(s)
    };
    let pop = |stack: &mut Vec<V>| stack.pop().ok_or_else(|| "pickle stack underflow".to_string());
    let pop_mark = |stack: &mut Vec<V>| -> Result<Vec<V>, String> {
        let m = stack.iter().rposition(|v| matches!(v, V::Mark)).ok_or("pickle MARK missing")?;
        let items = stack.split_off(m + 1);
        stack.pop();
        Ok(items)
    };
    loop {
        let op = *take(&mut i, 1)?.first().expect("one byte");
        match op {
            0x80 => {
                take(&mut i, 1)?;
            }
            0x95 => {
                take(&mut i, 8)?;
            }
            b'.' => return pop(&mut stack),
            b'}' => stack.push(V::Dict(Vec::new())),
            b']' => stack.push(V::List(Vec::new())),
            b')' => stack.push(V::Tuple(Vec::new())),
            b'N' => stack.push(V::None),
            0x88 => stack.push(V::Bool(true)),
            0x89 => stack.push(V::Bool(false)),
            b'(' => stack.push(V::Mark),
            b'K' => stack.push(V::Int(take(&mut i, 1)?[0] as i64)),
            b'M' => stack.push(V::Int(u16le(take(&mut i, 2)?, 0).expect("2 bytes") as i64)),
            b'J' => {
                let s = take(&mut i, 4)?;
                stack.push(V::Int(i32::from_le_bytes([s[0], s[1], s[2], s[3]]) as i64));
            }
            0x8a => {
                let n = take(&mut i, 1)?[0] as usize;
                let s = take(&mut i, n)?;
                let mut v: i64 = 0;
                for (k, &byte) in s.iter().enumerate().take(8) {
                    v |= (byte as i64) << (8 * k);
                }
                if n > 0 && n < 8 && s[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(V::Int(v));
            }
            b'G' => {
                let s = take(&mut i, 8)?;
                stack.push(V::Float(f64::from_be_bytes(s.try_into().expect("8 bytes"))));
            }
            b'X' | b'T' => {
                let n = u32le(take(&mut i, 4)?, 0).expect("4 bytes");
                stack.push(V::Str(String::from_utf8_lossy(take(&mut i, n)?).into_owned()));
            }
            0x8c | b'U' => {
                let n = take(&mut i, 1)?[0] as usize;
                stack.push(V::Str(String::from_utf8_lossy(take(&mut i, n)?).into_owned()));
            }
            b'c' => {
                let mut line = || -> Result<String, String> {
                    let end = data[i..].iter().position(|&c| c == b'\n').ok_or("unterminated GLOBAL")?;
                    let s = String::from_utf8_lossy(&data[i..i + end]).into_owned();
                    i += end + 1;
                    Ok(s)
                };
                let (m, n) = (line()?, line()?);
                stack.push(V::Global(m, n));
            }
            0x93 => {
                let (n, m) = (pop(&mut stack)?, pop(&mut stack)?);
                match (m, n) {
                    (V::Str(m), V::Str(n)) => stack.push(V::Global(m, n)),
                    _ => return Err("STACK_GLOBAL without names".into()),
                }
            }
            b'q' => {
                let k = take(&mut i, 1)?[0] as usize;
                memo.insert(k, copy(stack.last().ok_or("BINPUT on empty stack")?)?);
            }
            b'r' => {
                let k = u32le(take(&mut i, 4)?, 0).expect("4 bytes");
                memo.insert(k, copy(stack.last().ok_or("LONG_BINPUT on empty stack")?)?);
            }
            0x94 => {
                let k = memo.len();
                memo.insert(k, copy(stack.last().ok_or("MEMOIZE on empty stack")?)?);
            }
            b'h' => {
                let k = take(&mut i, 1)?[0] as usize;
                stack.push(copy(memo.get(&k).ok_or("BINGET of an unknown memo")?)?);
            }
            b'j' => {
                let k = u32le(take(&mut i, 4)?, 0).expect("4 bytes");
                stack.push(copy(memo.get(&k).ok_or("LONG_BINGET of an unknown memo")?)?);
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                items.iter().try_for_each(nestable)?;
                stack.push(V::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let at = stack.len().checked_sub(n).ok_or("pickle stack underflow")?;
                let items = stack.split_off(at);
                items.iter().try_for_each(nestable)?;
                stack.push(V::Tuple(items));
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                let V::Tuple(parts) = pid else { return Err("unexpected persistent id".into()) };
                match (parts.get(1), parts.get(2)) {
                    (Some(V::Global(_, dtype)), Some(V::Str(key))) => {
                        stack.push(V::Storage { key: key.clone(), dtype: dtype.clone() })
                    }
                    _ => return Err("persistent id is not a storage".into()),
                }
            }
            b'R' => {
                let (args, f) = (pop(&mut stack)?, pop(&mut stack)?);
                let V::Tuple(args) = args else { return Err("REDUCE without an argument tuple".into()) };
                let v = match f {
                    V::Global(m, n) if m == "torch._utils" && n == "_rebuild_tensor_v2" => match (
                        args.first(),
                        args.get(1),
                        args.get(2).and_then(as_usize_vec),
                        args.get(3).and_then(as_usize_vec),
                    ) {
                        (Some(V::Storage { key, dtype }), Some(V::Int(off)), Some(shape), Some(strides)) => {
                            V::Tensor { key: key.clone(), dtype: dtype.clone(), offset: *off as usize, shape, strides }
                        }
                        _ => return Err("malformed _rebuild_tensor_v2".into()),
                    },
                    V::Global(m, n) if m == "torch._utils" && n == "_rebuild_parameter" => {
                        args.into_iter().next().ok_or("empty _rebuild_parameter")?
                    }
                    V::Global(m, n) if m == "collections" && n == "OrderedDict" => V::Dict(Vec::new()),
                    V::Global(m, n) => V::Other(format!("{m}.{n}")),
                    _ => V::Other("call".into()),
                };
                stack.push(v);
            }
            b'b' => {
                // BUILD: object state (an OrderedDict's `_metadata`); not needed.
                pop(&mut stack)?;
            }
            b's' => {
                let (v, k) = (pop(&mut stack)?, pop(&mut stack)?);
                nestable(&k)?;
                nestable(&v)?;
                if let Some(V::Dict(d)) = stack.last_mut() {
                    d.push((k, v));
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                items.iter().try_for_each(nestable)?;
                if let Some(V::Dict(d)) = stack.last_mut() {
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        d.push((k, v));
                    }
                }
            }
            b'a' => {
                let v = pop(&mut stack)?;
                nestable(&v)?;
                if let Some(V::List(l)) = stack.last_mut() {
                    l.push(v);
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                items.iter().try_for_each(nestable)?;
                if let Some(V::List(l)) = stack.last_mut() {
                    l.extend(items);
                }
            }
            other => return Err(format!("unsupported pickle opcode 0x{other:02x} at byte {}", i - 1)),
        }
    }
}

fn element(dtype: &str, bytes: &[u8], index: usize) -> Option<f32> {
    let at = |n: usize| bytes.get(index * n..index * n + n);
    Some(match dtype {
        "FloatStorage" => f32::from_le_bytes(at(4)?.try_into().ok()?),
        "DoubleStorage" => f64::from_le_bytes(at(8)?.try_into().ok()?) as f32,
        "HalfStorage" => half::f16::from_le_bytes(at(2)?.try_into().ok()?).to_f32(),
        "BFloat16Storage" => half::bf16::from_le_bytes(at(2)?.try_into().ok()?).to_f32(),
        _ => return None,
    })
}

/// The element count of a tensor view, checked against its storage: every index the view
/// reaches lies inside the storage's bytes, so a header that claims 10^12 elements is an error,
/// not a 4 TB allocation.
fn tensor_extent(
    name: &str,
    dtype: &str,
    offset: usize,
    shape: &[usize],
    strides: &[usize],
    storage_bytes: usize,
) -> Result<usize, String> {
    let elem = match dtype {
        "FloatStorage" => 4,
        "DoubleStorage" => 8,
        "HalfStorage" | "BFloat16Storage" => 2,
        other => return Err(format!("{name}: unsupported storage type {other}")),
    };
    if shape.len() != strides.len() {
        return Err(format!("{name}: shape {shape:?} and strides {strides:?} differ in length"));
    }
    let too_big = || format!("{name}: shape {shape:?} does not fit its storage of {storage_bytes} bytes");
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(too_big)?;
    if n == 0 {
        return Ok(0);
    }
    let mut last = offset;
    for (&d, &s) in shape.iter().zip(strides) {
        last = (d - 1).checked_mul(s).and_then(|x| last.checked_add(x)).ok_or_else(too_big)?;
    }
    // A view with zero strides repeats elements; a state dict of weights never does, and
    // allowing it would let a few bytes claim any size.
    let storage = storage_bytes / elem;
    if last >= storage || n > storage {
        return Err(too_big());
    }
    Ok(n)
}

/// The float tensors of a `.pth` state dict, by name. A checkpoint that wraps its state dict
/// (`{"model_state_dict": ...}` or `{"state_dict": ...}`) is unwrapped.
pub fn read_pth(path: &Path) -> Result<BTreeMap<String, HostTensor>, TrainError> {
    let bad = |m: String| TrainError::checkpoint(path, m);
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let entries = zip_entries(&bytes).map_err(bad)?;
    let (pkl_name, pkl) = entries
        .iter()
        .find(|(k, _)| k.ends_with("/data.pkl"))
        .ok_or_else(|| bad("no data.pkl in the archive".into()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let mut top = unpickle(pkl).map_err(|m| bad(format!("data.pkl: {m}")))?;
    for _ in 0..2 {
        let inner = match &top {
            V::Dict(items) => items.iter().find_map(|(k, v)| match (k, v) {
                (V::Str(k), V::Dict(_)) if k == "model_state_dict" || k == "state_dict" || k == "model" => {
                    Some(v.clone())
                }
                _ => None,
            }),
            _ => None,
        };
        match inner {
            Some(v) => top = v,
            None => break,
        }
    }
    let V::Dict(items) = top else { return Err(bad("the file does not hold a state dict".into())) };
    let mut out = BTreeMap::new();
    for (k, v) in items {
        let (V::Str(name), V::Tensor { key, dtype, offset, shape, strides }) = (k, v) else { continue };
        let data =
            entries.get(&format!("{prefix}data/{key}")).ok_or_else(|| bad(format!("{name}: storage {key} missing")))?;
        let n = tensor_extent(&name, &dtype, offset, &shape, &strides, data.len()).map_err(bad)?;
        let mut values = Vec::with_capacity(n);
        let mut idx = vec![0usize; shape.len()];
        for _ in 0..n {
            // In range: `tensor_extent` checked the last index.
            let pos = offset + idx.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>();
            values.push(
                element(&dtype, data, pos).ok_or_else(|| bad(format!("{name}: unsupported or truncated {dtype}")))?,
            );
            for d in (0..shape.len()).rev() {
                idx[d] += 1;
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        out.insert(name, HostTensor { shape, values });
    }
    if out.is_empty() {
        return Err(bad("no float tensors found in the state dict".into()));
    }
    Ok(out)
}

/// A state dict from `.pth` or `.safetensors`, by file content.
pub fn read_state_dict(path: &Path) -> Result<BTreeMap<String, HostTensor>, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    if bytes.starts_with(&[0x50, 0x4b, 0x03, 0x04]) {
        return read_pth(path);
    }
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        TrainError::checkpoint(path, format!("neither a PyTorch .pth (zip) nor a safetensors file ({e})"))
    })?;
    crate::checkpoint::verify_checksum(path, &bytes)?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let values =
            crate::checkpoint::read_f32(&view).map_err(|m| TrainError::checkpoint(path, format!("{name}: {m}")))?;
        out.insert(name, HostTensor { shape: view.shape().to_vec(), values });
    }
    Ok(out)
}
