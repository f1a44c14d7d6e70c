"""Miniatures of the "other" group's data: CIFAR-100's two official archives byte for byte, pickle
payloads, and ImageNet's 16-shot list with each validation layout.

The python archive's files are written opcode by opcode as Python 2's cPickle (protocol 2)
wrote them: strings as BINSTRING, the array through ``numpy.core.multiarray._reconstruct`` and
``numpy.dtype`` with numpy's Python-2 state tuples. (Python 3 would pickle ``bytes`` through
``_codecs.encode``, which the real files never contain.)
"""

from __future__ import annotations

import io
import struct
import tarfile
from pathlib import Path

import numpy as np

PER_CLASS_TRAIN, PER_CLASS_TEST = 6, 2
FINE_NAMES = [f"fine{c:03d}" for c in range(100)]
COARSE_NAMES = [f"coarse{c:02d}" for c in range(20)]


def miniature(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{"train"|"test": (images (N, 32, 32, 3) uint8, fine, coarse)}``, classes interleaved as in CIFAR."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, per_class in (("train", PER_CLASS_TRAIN), ("test", PER_CLASS_TEST)):
        fine = rng.permutation(np.repeat(np.arange(100), per_class))
        images = rng.integers(0, 256, (len(fine), 32, 32, 3), dtype=np.uint8)
        out[split] = (images, fine, fine // 5)
    return out


def rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, 3072): the R plane, then G, then B, each row-major."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


# --- a Python 2 cPickle writer, protocol 2 ---------------------------------------------------


def _string(value: bytes) -> bytes:
    if len(value) < 256:
        return b"U" + bytes([len(value)]) + value  # SHORT_BINSTRING
    return b"T" + struct.pack("<i", len(value)) + value  # BINSTRING


def _int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])  # BININT1
    return b"J" + struct.pack("<i", value)  # BININT


def _value(value) -> bytes:
    if isinstance(value, bytes):
        return _string(value)
    if isinstance(value, int):
        return _int(value)
    if isinstance(value, list):
        return b"](" + b"".join(_value(v) for v in value) + b"e"  # EMPTY_LIST MARK ... APPENDS
    if isinstance(value, np.ndarray):
        return _array(value)
    raise TypeError(type(value))


def _array(array: np.ndarray) -> bytes:
    """What cPickle wrote for a C-contiguous uint8 array under numpy 1.x."""
    assert array.dtype == np.uint8
    dims = b"(" + b"".join(_int(d) for d in array.shape) + b"t"  # MARK ... TUPLE
    dtype = (
        b"cnumpy\ndtype\n" + _string(b"u1") + _int(0) + _int(1) + b"\x87R"  # TUPLE3 REDUCE
        b"(" + _int(3) + _string(b"|") + b"NNN" + b"J\xff\xff\xff\xffJ\xff\xff\xff\xff" + _int(0) + b"tb"  # BUILD
    )
    return (
        b"cnumpy.core.multiarray\n_reconstruct\n"
        + b"cnumpy\nndarray\n"
        + _int(0)
        + b"\x85"  # TUPLE1
        + _string(b"b")
        + b"\x87R"  # TUPLE3 REDUCE
        + b"("
        + _int(1)
        + dims
        + dtype
        + b"\x89"  # NEWFALSE (not Fortran order)
        + _string(array.tobytes())
        + b"tb"  # TUPLE BUILD
    )


def py2_pickle(record: dict[bytes, object]) -> bytes:
    items = b"".join(_string(k) + _value(v) for k, v in record.items())
    return b"\x80\x02}(" + items + b"u."  # PROTO 2, EMPTY_DICT, MARK ... SETITEMS, STOP


def python_members(data=None) -> dict[str, bytes]:
    data = data or miniature()
    members = {}
    for split, (images, fine, coarse) in data.items():
        members[split] = py2_pickle(
            {
                b"filenames": [f"img_{i}.png".encode() for i in range(len(fine))],
                b"batch_label": f"{split}ing batch 1 of 1".encode(),
                b"fine_labels": [int(x) for x in fine],
                b"coarse_labels": [int(x) for x in coarse],
                b"data": rows(images),
            }
        )
    members["meta"] = py2_pickle(
        {
            b"fine_label_names": [n.encode() for n in FINE_NAMES],
            b"coarse_label_names": [n.encode() for n in COARSE_NAMES],
        }
    )
    return members


def binary_members(data=None) -> dict[str, bytes]:
    data = data or miniature()
    members = {}
    for split, (images, fine, coarse) in data.items():
        records = np.concatenate([coarse[:, None], fine[:, None], rows(images)], axis=1).astype(np.uint8)
        members[f"{split}.bin"] = records.tobytes()
    members["fine_label_names.txt"] = ("\n".join(FINE_NAMES) + "\n").encode()
    members["coarse_label_names.txt"] = ("\n".join(COARSE_NAMES) + "\n").encode()
    return members


def write_archive(root: Path, kind: str, packed: bool, members: dict[str, bytes] | None = None) -> Path:
    """``root/cifar-100-<kind>.tar.gz`` (``packed``) or the folder ``root/cifar-100-<kind>/``."""
    members = members or (python_members() if kind == "python" else binary_members())
    top = f"cifar-100-{kind}"
    root.mkdir(parents=True, exist_ok=True)
    if not packed:
        for name, data in members.items():
            (root / top).mkdir(exist_ok=True)
            (root / top / name).write_bytes(data)
        return root / top
    path = root / f"{top}.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def payload_pickle(marker: Path, how: str) -> bytes:
    """A train file whose loading would create ``marker`` (by ``os.system`` or ``builtins.eval``)."""
    command = f"touch {marker}".encode()
    if how == "os.system":
        call = b"cos\nsystem\n" + _string(command) + b"\x85R"
    elif how == "posix.system":
        call = b"cposix\nsystem\n" + _string(command) + b"\x85R"
    elif how == "__reduce__":  # the classic payload, pickled by Python 3 (protocol 4, STACK_GLOBAL)
        import os
        import pickle

        class Payload:
            def __reduce__(self):
                return os.system, (command.decode(),)

        return pickle.dumps({b"data": Payload()}, protocol=4)
    else:
        code = f"__import__('pathlib').Path({str(marker)!r}).touch()".encode()
        call = b"c__builtin__\neval\n" + _string(code) + b"\x85R"
    return b"\x80\x02}(" + _string(b"data") + call + b"u."


# --- ImageNet-1k: NOAH's 16-shot list and the validation layouts -------------------------------

VAL_LABELS = (7, 0, 999)  # the classes of ILSVRC2012_val_00000001..3.JPEG
VAL_LAYOUTS = ("tree", "kaggle", "list-wnid", "list-index", "devkit")


def _jpeg(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(path, format="JPEG")


def devkit_ids(wnids) -> list[str]:
    """A devkit-like ILSVRC2012_ID order: id i is ``wnids[999 - (i - 1)]`` (not the sorted order)."""
    return list(reversed(wnids))


def write_meta_mat(path: Path, wnids) -> None:
    """The devkit's ``meta.mat``: a ``synsets`` struct array, the 1000 leaves first, then inner nodes."""
    from scipy.io import savemat

    entries = [(i, w, 0) for i, w in enumerate(devkit_ids(wnids), start=1)]
    entries += [(1001, "n00001740", 5), (1002, "n00002137", 3)]
    synsets = np.array(entries, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"synsets": synsets})


def write_imagenet(root: Path, wnids, val: str = "tree") -> Path:
    """NOAH's 16-shot list (three images) and three val images in layout ``val`` (``kaggle``: Kaggle's
    ``ILSVRC/Data/CLS-LOC/{train,val}`` with ``LOC_val_solution.csv`` beside ``ILSVRC/``)."""
    imagenet = root / "imagenet"
    (imagenet / "annotations").mkdir(parents=True)
    images = imagenet / "ILSVRC/Data/CLS-LOC" if val == "kaggle" else imagenet
    lines = []
    for label in (0, 1, 999):
        rel = f"{wnids[label]}/{wnids[label]}_1.JPEG"
        _jpeg(images / "train" / rel, label % 256)
        lines.append(f"{rel} {label}")
    (imagenet / "annotations" / "train_meta.list.num_shot_16.seed_0").write_text("\n".join(lines) + "\n")
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, len(VAL_LABELS) + 1)]
    for name, label in zip(names, VAL_LABELS, strict=True):
        folder = images / "val" / wnids[label] if val == "tree" else images / "val"
        _jpeg(folder / name, label % 256)
    if val == "kaggle":
        rows = [
            f"{n.removesuffix('.JPEG')},{wnids[c]} 1 2 5 5 {wnids[c]} 0 0 3 3"
            for n, c in zip(names, VAL_LABELS, strict=True)
        ]
        (imagenet / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    elif val in ("list-wnid", "list-index"):
        labels = [wnids[c] if val == "list-wnid" else str(c) for c in VAL_LABELS]
        (imagenet / "val.txt").write_text("".join(f"{n} {lab}\n" for n, lab in zip(names, labels, strict=True)))
    elif val == "devkit":
        data = imagenet / "ILSVRC2012_devkit_t12" / "data"
        write_meta_mat(data / "meta.mat", wnids)
        ids = [devkit_ids(wnids).index(wnids[c]) + 1 for c in VAL_LABELS]
        (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in ids))
    return imagenet
