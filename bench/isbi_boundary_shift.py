#!/usr/bin/env python3
"""How many pixels a one-pixel disagreement about where the membranes end costs on ISBI 2012.

Usage: bench/isbi_boundary_shift.py LABEL_DIR [FIRST LAST]
  bench/isbi_boundary_shift.py ../shared/datasets/isbi2012/label 20 24

Compares each ground-truth label (0 = membrane, 255 = cell; 8-bit grey PNG, as the dataset ships)
with itself after moving every membrane boundary by one pixel: the membranes dilated by one pixel
(4-neighbours), eroded by one pixel, or shifted by one pixel to the right. Prints the
misclassification (fraction of pixels that differ, pooled over the slices) and the challenge's
pixel error (1 - F-score of the cell pixels) of each. It puts segkit's figures in scale: a net
whose membranes are off by a pixel along every boundary scores this much without any other
mistake. Standard library only (the PNG decoder handles 8-bit grey, non-interlaced).
"""
import struct
import sys
import zlib
from pathlib import Path


def read_grey_png(path):
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        sys.exit(f"{path}: not a PNG file")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
    if header is None:
        sys.exit(f"{path}: no IHDR chunk")
    w, h, depth, colour, _, _, interlace = header
    if (depth, colour, interlace) != (8, 0, 0):
        sys.exit(f"{path}: only 8-bit grey non-interlaced PNGs are read (depth {depth}, colour type {colour})")
    raw, rows, prev = zlib.decompress(idat), [], bytearray(w)
    for y in range(h):
        f, line = raw[y * (w + 1)], bytearray(raw[y * (w + 1) + 1 : (y + 1) * (w + 1)])
        for x in range(w):
            a = line[x - 1] if x else 0
            b = prev[x]
            c = prev[x - 1] if x else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + ((a + b) >> 1)) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    return rows


def shifted(cell, how):
    """`cell` is a list of rows of booleans (True = cell); returns the moved version."""
    h, w = len(cell), len(cell[0])
    out = []
    for y in range(h):
        row = []
        for x in range(w):
            nb = [cell[yy][xx] for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)) if 0 <= yy < h and 0 <= xx < w]
            if how == "dilate":  # membranes grow: a cell pixel next to a membrane becomes membrane
                row.append(cell[y][x] and all(nb))
            elif how == "erode":  # membranes shrink
                row.append(cell[y][x] or any(nb))
            else:  # everything one pixel to the right
                row.append(cell[y][x - 1] if x else cell[y][x])
        out.append(row)
    return out


def main():
    if len(sys.argv) not in (2, 4):
        sys.exit(__doc__.split("\n\n")[1])
    root = Path(sys.argv[1])
    files = sorted(root.glob("*.png"))
    if len(sys.argv) == 4:
        first, last = int(sys.argv[2]), int(sys.argv[3])
        files = files[first : last + 1]
    if not files:
        sys.exit(f"{root}: no PNG labels")
    totals = {how: [0, 0, 0, 0] for how in ("dilate", "erode", "shift")}  # tp, fp, fn, wrong
    pixels = cells = 0
    for path in files:
        cell = [[v >= 128 for v in row] for row in read_grey_png(path)]
        pixels += len(cell) * len(cell[0])
        cells += sum(map(sum, cell))
        for how, t in totals.items():
            moved = shifted(cell, how)
            for truth_row, moved_row in zip(cell, moved):
                for truth, guess in zip(truth_row, moved_row):
                    t[0] += truth and guess
                    t[1] += guess and not truth
                    t[2] += truth and not guess
                    t[3] += truth != guess
    print(f"{len(files)} slices from {root}: {pixels} pixels, cell fraction {cells / pixels:.4f}")
    print("membranes moved by one pixel | misclassification | pixel error (1 - F)")
    for how, (tp, fp, fn, wrong) in totals.items():
        f = 2 * tp / (2 * tp + fp + fn)
        print(f"{how:>28} | {wrong / pixels:.4f} | {1 - f:.4f}")


if __name__ == "__main__":
    main()
