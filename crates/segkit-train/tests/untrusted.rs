//! Untrusted files: the `.pth` reader, the safetensors and checkpoint readers and TOML configs
//! take arbitrary bytes and text without a panic, an unbounded allocation or a stack overflow;
//! crafted files that claim huge sizes or nest without end are errors.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use segkit_train::RunConfig;
use segkit_train::checkpoint::{Checkpoint, read_header_metadata};
use segkit_train::torchfile::{read_pth, read_state_dict};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A file of its own for each call, so parallel cases do not share one.
fn temp_file(bytes: &[u8]) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let p = std::env::temp_dir().join(format!(
        "segkit-untrusted-{}-{}.bin",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Every reader on `bytes`; none may panic. Returns whether each failed.
fn read_all(bytes: &[u8]) -> [bool; 4] {
    let p = temp_file(bytes);
    let r = [
        read_pth(&p).is_err(),
        read_state_dict(&p).is_err(),
        Checkpoint::load(&p).is_err(),
        read_header_metadata(&p).is_err(),
    ];
    let _ = std::fs::remove_file(&p);
    r
}

/// A zip archive of stored entries, as `torch.save` writes them.
fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let (mut out, mut central) = (Vec::new(), Vec::new());
    for (name, data) in entries {
        let offset = out.len() as u32;
        let crc = crc32(data);
        let mut local = vec![0x50, 0x4b, 0x03, 0x04, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        local.extend(crc.to_le_bytes());
        local.extend((data.len() as u32).to_le_bytes());
        local.extend((data.len() as u32).to_le_bytes());
        local.extend((name.len() as u16).to_le_bytes());
        local.extend(0u16.to_le_bytes());
        local.extend(name.as_bytes());
        out.extend(&local);
        out.extend(*data);
        let mut c = vec![0x50, 0x4b, 0x01, 0x02, 20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        c.extend(crc.to_le_bytes());
        c.extend((data.len() as u32).to_le_bytes());
        c.extend((data.len() as u32).to_le_bytes());
        c.extend((name.len() as u16).to_le_bytes());
        c.extend([0u8; 12]);
        c.extend(offset.to_le_bytes());
        c.extend(name.as_bytes());
        central.extend(c);
    }
    let dir_at = out.len() as u32;
    out.extend(&central);
    out.extend([0x50, 0x4b, 0x05, 0x06, 0, 0, 0, 0]);
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(dir_at.to_le_bytes());
    out.extend([0, 0]);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Pickle opcodes for a unicode string.
fn s(text: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend((text.len() as u32).to_le_bytes());
    v.extend(text.as_bytes());
    v
}

fn int(n: i32) -> Vec<u8> {
    let mut v = vec![b'J'];
    v.extend(n.to_le_bytes());
    v
}

/// A state dict `{name: tensor}` whose tensor has `shape` and `strides` over a 4-byte storage.
fn pth_with_tensor(shape: &[i32], strides: &[i32]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}'];
    p.extend(s("w"));
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.push(b'(');
    p.extend(s("storage"));
    p.extend(b"ctorch\nFloatStorage\n");
    p.extend(s("0"));
    p.extend(s("cpu"));
    p.extend(int(1));
    p.extend(b"tQ");
    p.extend(int(0));
    p.push(b'(');
    shape.iter().for_each(|&d| p.extend(int(d)));
    p.extend(b"t(");
    strides.iter().for_each(|&d| p.extend(int(d)));
    p.extend(b"ttRs.");
    zip(&[("archive/data.pkl", &p), ("archive/data/0", &1.5f32.to_le_bytes())])
}

fn pth_with_pickle(pickle: &[u8]) -> Vec<u8> {
    zip(&[("archive/data.pkl", pickle)])
}

/// Each crafted file is an error whose message says what is wrong. The first one is read
/// correctly, so the zip and pickle writers above are what the reader understands.
#[test]
fn crafted_pth_files_are_errors() {
    let ok = temp_file(&pth_with_tensor(&[1], &[1]));
    assert_eq!(read_pth(&ok).unwrap()["w"].values, vec![1.5]);
    let _ = std::fs::remove_file(ok);

    let mut memo_bomb = vec![0x80, 2, b']'];
    for _ in 0..64 {
        memo_bomb.extend([b'q', 0, b'h', 0, 0x86]);
    }
    memo_bomb.push(b'.');
    let mut nest_bomb = vec![0x80, 2];
    nest_bomb.extend(std::iter::repeat_n(b'(', 200_000));
    nest_bomb.extend(std::iter::repeat_n(b't', 200_000));
    nest_bomb.push(b'.');
    let check = |what: &str, bytes: Vec<u8>, says: &str| {
        let p = temp_file(&bytes);
        let err = read_pth(&p).err().unwrap_or_else(|| panic!("{what}: read")).to_string();
        let _ = std::fs::remove_file(&p);
        assert!(err.contains(says), "{what}: expected `{says}` in: {err}");
    };
    check("10^12 elements over 4 bytes", pth_with_tensor(&[1_000_000, 1_000_000], &[1_000_000, 1]), "does not fit");
    check("a stride past the storage", pth_with_tensor(&[2], &[7]), "does not fit");
    check("zero strides", pth_with_tensor(&[1 << 30], &[0]), "does not fit");
    check("a shape that overflows", pth_with_tensor(&[i32::MAX, i32::MAX, i32::MAX], &[0, 0, 0]), "does not fit");
    check("memo copies doubling", pth_with_pickle(&memo_bomb), "crafted");
    check("200000 nested tuples", pth_with_pickle(&nest_bomb), "crafted");
}

/// A safetensors header that claims 10^12 elements is an error, not an allocation.
#[test]
fn crafted_safetensors_headers_are_errors() {
    let header = br#"{"model.w":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend(1.5f32.to_le_bytes());
    assert_eq!(read_all(&bytes)[..3], [true, true, true]);
    let mut huge = (u64::MAX - 7).to_le_bytes().to_vec();
    huge.extend(b"{}");
    assert_eq!(read_all(&huge), [true; 4]);
}

/// A run's name becomes a folder under train.out_dir: one that would leave it is an error.
#[test]
fn run_names_stay_inside_the_output_folder() {
    for bad in ["../escape", "a/b", "/abs", "..", ".", "", "a\\\\b"] {
        let err = RunConfig::quickstart(&[format!("name={bad:?}")]).err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("single name")), "{bad:?}: {err:?}");
    }
    assert!(RunConfig::quickstart(&["name=\"fcn8s-camvid-2\"".into()]).is_ok());
}

/// The fixtures with bytes overwritten at random places: deeper into the parsers than noise.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8).prop_map(move |edits| {
        let mut b = base.clone();
        for (i, v) in edits {
            let at = i.index(b.len());
            b[at] = v;
        }
        b
    })
}

fn checkpoint_bytes() -> Vec<u8> {
    use segkit_train::checkpoint::{ClassInfo, TrainState};
    use segkit_train::params::HostTensor;
    use std::collections::BTreeMap;
    let ck = Checkpoint {
        model: BTreeMap::from([("w".to_string(), HostTensor { shape: vec![2, 3], values: vec![0.5; 6] })]),
        optim: BTreeMap::from([("w/m".to_string(), HostTensor { shape: vec![6], values: vec![0.25; 6] })]),
        config: segkit_train::config::QUICKSTART.to_string(),
        classes: ClassInfo {
            names: vec!["a".into(), "b".into()],
            colors: vec![[0, 0, 0], [9, 9, 9]],
            ignore_index: 255,
        },
        state: TrainState { step: 3, ..Default::default() },
    };
    let p = temp_file(b"");
    ck.save(&p, None).unwrap();
    let b = std::fs::read(&p).unwrap();
    let _ = std::fs::remove_file(p);
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn readers_never_panic_on_noise(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        read_all(&bytes);
    }

    #[test]
    fn readers_never_panic_on_a_damaged_pth(bytes in mutated(std::fs::read(fixture("vgg16_tiny.pth")).unwrap())) {
        read_all(&bytes);
    }

    /// A damaged checkpoint is an error or, where the damage missed everything the checksum
    /// covers (the header's padding), the same checkpoint.
    #[test]
    fn a_damaged_checkpoint_is_an_error_or_unchanged(bytes in mutated(checkpoint_bytes())) {
        let p = temp_file(&bytes);
        let got = Checkpoint::load(&p);
        let _ = std::fs::remove_file(&p);
        if let Ok(ck) = got {
            prop_assert_eq!(ck.model["w"].values.clone(), vec![0.5; 6]);
            prop_assert_eq!(ck.optim["w/m"].values.clone(), vec![0.25; 6]);
            prop_assert_eq!(ck.state.step, 3);
        }
    }

    #[test]
    fn configs_never_panic(text in "([a-z_.\\[\\]=\"0-9 \\n-]|model|train|data|augment|lr|name){0,200}") {
        let _ = RunConfig::parse(&text, "fuzz", &[], Path::new("."));
        let _ = RunConfig::parse_stored(&text, "fuzz", &[]);
        let _ = RunConfig::quickstart(&[text]);
    }
}
