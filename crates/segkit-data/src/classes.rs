//! Class names, colours and the ignore (void) index.

use std::path::Path;

use crate::error::{DataError, Result};

/// The classes of a dataset. Labels are `u8` class indices; `ignore_index` marks pixels that
/// count neither in the loss nor in the metrics (255 in VOC, 11 in CamVid).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassSet {
    pub names: Vec<String>,
    pub colors: Vec<[u8; 3]>,
    pub ignore_index: u8,
}

impl ClassSet {
    /// `names` with VOC palette colours.
    pub fn new(names: Vec<String>, ignore_index: u8) -> Self {
        let colors = (0..names.len()).map(|i| voc_color(i as u8)).collect();
        ClassSet { names, colors, ignore_index }
    }

    /// Classes called `class0`, `class1`, ... when a dataset names none.
    pub fn numbered(n: usize, ignore_index: u8) -> Self {
        Self::new((0..n).map(|i| format!("class{i}")).collect(), ignore_index)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The colour a label is drawn in; void is drawn in white, unknown labels in magenta.
    pub fn color(&self, label: u8) -> [u8; 3] {
        if label == self.ignore_index {
            return [255, 255, 255];
        }
        self.colors.get(label as usize).copied().unwrap_or([255, 0, 255])
    }

    pub fn name(&self, label: u8) -> String {
        if label == self.ignore_index {
            return "void".into();
        }
        self.names.get(label as usize).cloned().unwrap_or_else(|| format!("class{label}"))
    }
}

/// The PASCAL VOC colour map (bit-interleaved), which also colours VOC's palette PNGs.
pub fn voc_color(i: u8) -> [u8; 3] {
    let (mut r, mut g, mut b) = (0u8, 0u8, 0u8);
    let mut c = i;
    for j in 0..8 {
        r |= ((c & 1) as u8) << (7 - j);
        g |= (((c >> 1) & 1) as u8) << (7 - j);
        b |= (((c >> 2) & 1) as u8) << (7 - j);
        c >>= 3;
    }
    [r, g, b]
}

/// Reads `class_names.txt`: one name per line, blank lines and `#` comments skipped.
pub fn read_class_names(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect())
}

/// Reads the class names of a YOLO `data.yaml`: `names: [a, b]`, a block list (`- a`), or a
/// mapping (`0: a`). Only the keys segkit needs are read, so no YAML library is pulled in.
pub fn read_yaml_names(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    parse_yaml_names(&text).map_err(|(line, msg)| DataError::Label { path: path.into(), line, msg })
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    s.trim_matches(|c| c == '\'' || c == '"').to_string()
}

pub fn parse_yaml_names(text: &str) -> std::result::Result<Vec<String>, (usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| l.trim_start().starts_with("names:") && !l.starts_with(' ')) else {
        return Err((0, "no `names:` key".into()));
    };
    let rest = lines[start].trim_start()["names:".len()..].trim();
    if rest.starts_with('[') {
        let Some(inner) = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) else {
            return Err((start + 1, "unterminated `[` list".into()));
        };
        return Ok(inner.split(',').map(unquote).filter(|s| !s.is_empty()).collect());
    }
    if !rest.is_empty() {
        return Err((start + 1, format!("unexpected value after `names:`: {rest}")));
    }
    let mut names: Vec<(usize, String)> = Vec::new();
    for (i, line) in lines.iter().enumerate().skip(start + 1) {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') && !line.starts_with('-') {
            break;
        }
        let item = line.trim();
        if let Some(v) = item.strip_prefix('-') {
            names.push((names.len(), unquote(v)));
        } else if let Some((k, v)) = item.split_once(':') {
            let k: usize = k.trim().parse().map_err(|_| (i + 1, format!("bad class index `{}`", k.trim())))?;
            names.push((k, unquote(v)));
        } else {
            return Err((i + 1, format!("cannot read `{item}` as a class name")));
        }
    }
    names.sort_by_key(|(k, _)| *k);
    for (i, (k, _)) in names.iter().enumerate() {
        if *k != i {
            return Err((start + 1, format!("class indices are not 0..{}", names.len())));
        }
    }
    Ok(names.into_iter().map(|(_, n)| n).collect())
}

/// CamVid's 11 classes in the SegNet ordering; 11 is void.
pub fn camvid_classes() -> ClassSet {
    let names = [
        "Sky",
        "Building",
        "Pole",
        "Road",
        "Pavement",
        "Tree",
        "SignSymbol",
        "Fence",
        "Car",
        "Pedestrian",
        "Bicyclist",
    ];
    ClassSet::new(names.iter().map(|s| s.to_string()).collect(), 11)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voc_palette() {
        assert_eq!(voc_color(0), [0, 0, 0]);
        assert_eq!(voc_color(1), [128, 0, 0]);
        assert_eq!(voc_color(15), [192, 128, 128]);
        assert_eq!(voc_color(255), [224, 224, 192]);
    }

    #[test]
    fn yaml_names() {
        let check = |text: &str, want: &[&str]| assert_eq!(parse_yaml_names(text).unwrap(), want);
        check("nc: 2\nnames: ['crack', \"hole\"]\n", &["crack", "hole"]);
        check("names:\n  - crack\n  - hole\ntrain: x\n", &["crack", "hole"]);
        check("names:\n  0: crack\n  1: hole\n", &["crack", "hole"]);
        assert!(parse_yaml_names("nc: 2\n").is_err());
        assert!(parse_yaml_names("names:\n  0: a\n  2: b\n").is_err());
    }
}
