"""Image classification datasets as whole in-memory tensors, and batching by tensor indexing.

Every dataset loads to a :class:`Dataset`: its uint8 pixels of shape (N, C, H, W), the
:class:`Normalize` that turns them into float32 inputs normalised per channel with the train
split's mean and standard deviation (train inputs have mean 0 and standard deviation 1 per
channel), and int64 class labels of shape (N,). :class:`Batches` normalise each batch as it
is cut, so a run holds one byte per pixel (a quarter of float32), never a float copy of the
whole dataset.

Datasets are looked up by name in :data:`DATASETS`. ``digits`` (the 8x8 digits scikit-learn
bundles, shipped inside this package) needs no files. ``mnist``, ``fashion-mnist`` and
``cifar10`` read the files of their standard distributions from a data directory: the
``data_dir`` argument, else the ``INCOP_DATA_DIR`` environment variable, else
``~/.cache/incop/data``. With ``download=True`` missing files are fetched from the canonical
sources and checked against their published MD5 sums.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import logging
import math
import os
import pickle
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from incop.core.registry import Registry
from incop.errors import DataError, UserError

if TYPE_CHECKING:
    import numpy as np
    import torch


log = logging.getLogger(__name__)

ENV_VAR = "INCOP_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache/incop/data"


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset's inputs and outputs."""

    name: str
    channels: int
    image_size: int  # height == width, pixels
    num_classes: int


#: Inputs and outputs of each built-in dataset, known before its files are read, so a run's
#: saved config alone rebuilds its model.
DATASET_INFO: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("digits", channels=1, image_size=8, num_classes=10),
        DatasetInfo("mnist", channels=1, image_size=28, num_classes=10),
        DatasetInfo("fashion-mnist", channels=1, image_size=28, num_classes=10),
        DatasetInfo("cifar10", channels=3, image_size=32, num_classes=10),
    )
}


@dataclass(frozen=True)
class Normalize:
    """Pixels to model inputs: ``(pixels / scale - mean) / std`` per channel, in float32.

    ``scale``: the pixels' full range (255, or 16 for ``digits``); ``mean``, ``std``: float32
    of shape (C,), the train split's statistics of ``pixels / scale`` (a constant channel
    gets std 1). The same elementwise operations whole or per batch, so a batch's inputs are
    bitwise those of the whole tensor normalised at once.
    """

    scale: float
    mean: torch.Tensor
    std: torch.Tensor

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """float32 inputs of the shape of ``pixels`` (B, C, H, W), on its device."""
        import torch

        shape = (1, -1, 1, 1)
        mean = self.mean.to(pixels.device).view(shape)
        std = self.std.to(pixels.device).view(shape)
        return pixels.to(torch.float32).div_(self.scale).sub_(mean).div_(std)

    @classmethod
    def fit(cls, pixels: np.ndarray, scale: int) -> Normalize:
        """The statistics of uint8 ``pixels`` (N, C, H, W), exact: from integer sums of each
        channel's values and squares, rounded once to float32 (on the built-in datasets the
        same values as a float32 mean and std of the whole tensor, without its 4 bytes a
        pixel, and the same at every thread count)."""
        import numpy as np
        import torch

        n = pixels.shape[0] * pixels.shape[2] * pixels.shape[3]
        counts = np.zeros((pixels.shape[1], 256), dtype=np.int64)
        for start in range(0, len(pixels), _CHUNK_ROWS):
            chunk = pixels[start : start + _CHUNK_ROWS]
            for c in range(pixels.shape[1]):
                counts[c] += np.bincount(chunk[:, c].ravel(), minlength=256)
        values = np.arange(256, dtype=np.int64)
        means, stds = [], []
        for c in range(pixels.shape[1]):
            total = int(counts[c] @ values)
            squares = int(counts[c] @ (values * values))
            mean = Fraction(total, n * scale)
            var = (Fraction(squares) - Fraction(total * total, n)) / max(n - 1, 1) / scale**2
            means.append(float(mean))
            stds.append(math.sqrt(var) if var else 1.0)
        return cls(
            float(scale),
            torch.tensor(means, dtype=torch.float32),
            torch.tensor(stds, dtype=torch.float32),
        )


#: Rows of pixels read at a time where a whole-dataset pass would otherwise copy it.
_CHUNK_ROWS = 4096


@dataclass
class Dataset:
    """A train/test split held as tensors.

    ``train_pixels``: uint8 (N, C, H, W); ``normalize`` makes them float32 inputs.
    ``train_y``: int64 (N,), class indices in ``[0, info.num_classes)``.
    ``test_pixels``: uint8 (M, C, H, W), normalised with the train statistics.
    ``test_y``: int64 (M,).
    """

    info: DatasetInfo
    train_pixels: torch.Tensor
    train_y: torch.Tensor
    test_pixels: torch.Tensor
    test_y: torch.Tensor
    normalize: Normalize

    @property
    def train_x(self) -> torch.Tensor:
        """The train inputs, float32 (N, C, H, W): a new normalised copy of the whole split."""
        return self.normalize(self.train_pixels)

    @property
    def test_x(self) -> torch.Tensor:
        """The test inputs, float32 (M, C, H, W): a new normalised copy of the whole split."""
        return self.normalize(self.test_pixels)


class Batches:
    """Iterable of ``(inputs, targets)`` batches made by tensor indexing.

    ``x`` has shape (N, ...) and ``y`` shape (N,); each batch holds ``batch_size`` examples (the
    last one fewer unless ``drop_last``). Both tensors are moved to ``device`` once, here, so
    batches are cut on the device. With ``shuffle`` the order of an epoch is a pure function of
    ``(seed, epoch)``: call :meth:`set_epoch` before iterating to get a new order, and the same
    epoch number again to reproduce it (e.g. when resuming).

    ``shard=(rank, ranks)``: this rank's contiguous part of every batch (sizes differing by at
    most one), so ``batch_size`` stays the global batch of a data-parallel run. ``even``:
    every rank yields the same number of batches (DDP waits for all ranks at every step), so
    a last batch too small to give each rank an example is left out. ``normalize``: applied
    to each batch's inputs as it is cut (uint8 pixels held, float32 inputs yielded).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        device: str | torch.device | None = None,
        shard: tuple[int, int] = (0, 1),
        even: bool = False,
        normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch size must be an integer of at least 1, got {batch_size!r}")
        rank, ranks = shard
        if not 0 <= rank < ranks:
            raise ValueError(f"shard: rank {rank} is not in 0..{ranks - 1}")
        self.x = x.to(device) if device is not None else x
        self.y = y.to(self.x.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.shard = shard
        self.even = even
        self.normalize = normalize
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle order of epoch ``epoch`` (no effect without ``shuffle``)."""
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        import torch

        n = self.num_examples
        if not self.shuffle:
            return torch.arange(n, device=self.x.device)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(n, generator=generator).to(self.x.device)

    def _parts(self) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` in the epoch's order of each batch this rank yields."""
        rank, ranks = self.shard
        full, rest = divmod(self.num_examples, self.batch_size)
        sizes = [self.batch_size] * full + ([rest] if rest and not self.drop_last else [])
        start = 0
        for size in sizes:
            # torch.tensor_split's parts: the first size % ranks are one longer.
            base, longer = divmod(size, ranks)
            first = start + rank * base + min(rank, longer)
            length = base + (rank < longer)
            if length and not (self.even and size < ranks):
                yield first, first + length
            start += size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        for start, stop in self._parts():
            idx = order[start:stop]
            # index_select: one gather, where advanced indexing takes a slower general path.
            x = self.x.index_select(0, idx)
            yield self.normalize(x) if self.normalize else x, self.y.index_select(0, idx)

    def __len__(self) -> int:
        """Number of batches per epoch (on this rank)."""
        return sum(1 for _ in self._parts())

    @property
    def num_examples(self) -> int:
        """Number of examples N (including any that ``drop_last`` leaves out)."""
        return len(self.x)

    def sample(self, n: int, seed: int, batch_size: int | None = None) -> Batches:
        """A fixed subset of ``min(n, N)`` examples drawn at random with ``seed``, unshuffled.

        Used as the probe set; ``batch_size`` defaults to this object's.
        """
        import torch

        if n < 1:
            raise UserError(f"sample size must be at least 1, got {n}")
        generator = torch.Generator().manual_seed(seed)
        idx = torch.randperm(self.num_examples, generator=generator)[:n].to(self.x.device)
        return Batches(
            self.x[idx], self.y[idx], batch_size or self.batch_size, normalize=self.normalize
        )


def validation_split(
    labels: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, val)`` of a split of ``labels`` (shape (N,)) stratified by class:
    from each class, ``round(fraction * n_c)`` of its examples, drawn with ``seed``, go to
    validation (at least one, and never all, of a class with two or more examples). Both
    index tensors are sorted, int64, disjoint and together cover 0..N-1."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    empty = torch.zeros(0, dtype=torch.int64)
    train, val = [empty], [empty]
    for cls in torch.unique(labels):
        members = (labels == cls).nonzero().squeeze(1)
        members = members[torch.randperm(len(members), generator=generator)]
        count = round(fraction * len(members))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        val.append(members[:count])
        train.append(members[count:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


Loader = Callable[[Path | None, bool], Dataset]
DATASETS: Registry[Loader] = Registry("dataset")


def data_root(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``data_dir``, else ``$INCOP_DATA_DIR``, else ``~/.cache/incop/data``."""
    chosen = data_dir if data_dir is not None else os.environ.get(ENV_VAR) or DEFAULT_DATA_DIR
    return Path(chosen).expanduser()


def load_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, download: bool = False
) -> Dataset:
    """Load dataset ``name`` (one of ``DATASETS.names()``); ``data_dir`` as in :func:`data_root`.

    Raises UserError for an unknown name, DataError for missing or corrupt files.
    """
    loader = DATASETS.get(name)
    return loader(Path(data_dir).expanduser() if data_dir is not None else None, download)


def _to_dataset(
    info: DatasetInfo,
    source: str | Path,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    scale: int,
) -> Dataset:
    """Check raw uint8 (N, C, H, W) images and (N,) labels; pixels span 0..``scale``."""
    import numpy as np
    import torch

    expected = (info.channels, info.image_size, info.image_size)
    for split, (x, y) in (("train", train), ("test", test)):
        if x.dtype != np.uint8:
            raise DataError(f"{source}: {split} images are {x.dtype}, expected uint8")
        if x.shape[1:] != expected:
            raise DataError(
                f"{source}: {split} images have shape {x.shape[1:]}, expected {expected}"
            )
        if len(x) != len(y):
            raise DataError(f"{source}: {split} split has {len(x)} images but {len(y)} labels")
        if len(y) and not 0 <= y.min() <= y.max() < info.num_classes:
            raise DataError(
                f"{source}: {split} labels span {y.min()}..{y.max()}, "
                f"expected 0..{info.num_classes - 1}"
            )
    return Dataset(
        info,
        _tensor(train[0]),
        torch.from_numpy(np.asarray(train[1], dtype=np.int64)),
        _tensor(test[0]),
        torch.from_numpy(np.asarray(test[1], dtype=np.int64)),
        Normalize.fit(train[0], scale),
    )


def _tensor(pixels: np.ndarray) -> torch.Tensor:
    """A contiguous torch copy of ``pixels``: the arrays read from files are views of
    read-only buffers, which torch must not share."""
    import numpy as np
    import torch

    return torch.from_numpy(np.array(pixels, order="C", copy=True))


#: The 8x8 digits shipped inside the package (provenance: embedded/README.md) and the SHA-256
#: of that file, checked on every load.
DIGITS_FILE = Path(__file__).parent / "embedded" / "digits.npz"
DIGITS_SHA256 = "afeff255a47165fe70d4cac161b706df47ca17e411a71ac94f90c070b14d52bd"


@DATASETS.register("digits")
def _load_digits(data_dir: Path | None, download: bool) -> Dataset:
    """The 1797 8x8 digits (pixels 0..16) with a fixed stratified 80/20 split (1437 / 360).

    The images, labels and split are those of scikit-learn's ``load_digits`` and
    ``train_test_split(test_size=0.2, stratify=labels, random_state=0)``, stored once in the
    package, so neither scikit-learn nor a download is needed. The split is part of the
    dataset's definition, so it ignores the run's seed."""
    import numpy as np

    if hashlib.sha256(DIGITS_FILE.read_bytes()).hexdigest() != DIGITS_SHA256:
        raise DataError(f"{DIGITS_FILE}: does not match its checksum; reinstall incop")
    with np.load(DIGITS_FILE) as arrays:
        x, y = arrays["images"][:, None], arrays["labels"]
        train, test = arrays["train"], arrays["test"]
    return _to_dataset(
        DATASET_INFO["digits"], "digits", (x[train], y[train]), (x[test], y[test]), scale=16
    )


# --- files and downloads ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Remote:
    """Where to download a dataset's files: base URLs tried in order, and file name -> MD5."""

    mirrors: tuple[str, ...]
    md5: dict[str, str]


_REMOTES: dict[str, _Remote] = {
    "mnist": _Remote(
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": _Remote(
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "cifar10": _Remote(
        ("https://www.cs.toronto.edu/~kriz/",),
        {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    ),
}


def _fetch(url: str, dest: Path) -> None:
    """Write the body of ``url`` to ``dest`` (the only network access; tests replace it)."""
    with urllib.request.urlopen(url, timeout=60) as response, dest.open("wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _download(dataset: str, file_name: str, folder: Path) -> None:
    """Fetch ``file_name`` into ``folder`` from the first mirror that serves it intact.

    The file appears under its final name only once its MD5 matches, so an interrupted or
    corrupted download never leaves a file that a later load would trust.
    """
    remote = _REMOTES[dataset]
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    for mirror in remote.mirrors:
        url = mirror + file_name
        log.info("downloading %s to %s", url, folder)
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{file_name}.", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _fetch(url, tmp)
            digest = _md5(tmp)
            if digest != remote.md5[file_name]:
                raise DataError(f"MD5 {digest} does not match the expected {remote.md5[file_name]}")
            tmp.replace(folder / file_name)
            return
        except (OSError, http.client.HTTPException, DataError) as err:
            errors.append(f"{url}: {err}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(f"could not download {dataset} file {file_name}:\n  " + "\n  ".join(errors))


def _not_found(dataset: str, files: list[str], searched: list[Path], target: Path) -> DataError:
    urls = [_REMOTES[dataset].mirrors[0] + name for name in _REMOTES[dataset].md5]
    return DataError(
        f"{dataset} files not found: expected {', '.join(files)} in one of these folders:\n"
        + "".join(f"  {folder}\n" for folder in searched)
        + "Point --data-dir (or the INCOP_DATA_DIR environment variable) at the folder that"
        " holds them, pass --download (download=True) to fetch them into"
        f" {target}, or fetch them by hand from {', '.join(urls)}"
    )


def _read(path: Path) -> bytes:
    """The bytes of ``path``, decompressed if it ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"{path}: cannot be read, truncated or corrupt ({err}); delete it and fetch it again"
        ) from err


# --- MNIST and Fashion-MNIST (IDX files) ------------------------------------------------------

_IDX_FILES = {  # file name without .gz -> number of dimensions
    "train-images-idx3-ubyte": 3,
    "train-labels-idx1-ubyte": 1,
    "t10k-images-idx3-ubyte": 3,
    "t10k-labels-idx1-ubyte": 1,
}


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped if ``path`` ends in .gz).

    Returns a uint8 array: shape (N,) for labels (``ndim=1``), (N, H, W) for images (``ndim=3``).
    """
    import numpy as np

    raw = _read(path)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:  # two zero bytes, then type code 0x08 (unsigned byte)
        expected = 0x800 + ndim
        raise DataError(f"{path}: bad IDX magic number 0x{magic:08X}, expected 0x{expected:08X}")
    if magic & 0xFF != ndim:
        raise DataError(f"{path}: IDX file has {magic & 0xFF} dimensions, expected {ndim}")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    if 0 in shape:
        raise DataError(f"{path}: the IDX header gives shape {shape}, which holds no item")
    size, available = math.prod(shape), len(raw) - header
    if available != size:
        problem = "shorter" if available < size else "longer"
        raise DataError(
            f"{path}: data is {problem} than the header says ({available} bytes for shape "
            f"{shape}, which needs {size}); the file is truncated or corrupt"
        )
    return np.frombuffer(raw, np.uint8, count=size, offset=header).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    return next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)


def _register_idx(name: str, torchvision_folder: str) -> None:
    """Register an MNIST-like dataset (its :data:`DATASET_INFO`) stored in the four IDX files."""
    info = DATASET_INFO[name]

    @DATASETS.register(name)
    def load(data_dir: Path | None, download: bool) -> Dataset:
        root = data_root(data_dir)
        # The dataset-named folder goes first: it cannot hold another dataset's same-named files.
        searched = [root / torchvision_folder / "raw", root, root / "raw"]
        folder = next((f for f in searched if all(_find_idx(f, s) for s in _IDX_FILES)), None)
        if folder is None:
            if not download:
                names = [f"{stem}.gz" for stem in _IDX_FILES]
                raise _not_found(name, names, searched, searched[0])
            folder = searched[0]
            for stem in _IDX_FILES:
                if _find_idx(folder, stem) is None:
                    _download(name, f"{stem}.gz", folder)
        train_x, train_y, test_x, test_y = (
            _read_idx(_find_idx(folder, stem), ndim) for stem, ndim in _IDX_FILES.items()
        )
        return _to_dataset(
            info, folder, (train_x[:, None], train_y), (test_x[:, None], test_y), scale=255
        )


_register_idx("mnist", "MNIST")
_register_idx("fashion-mnist", "FashionMNIST")


# --- CIFAR-10 (pickled batches, extracted or in the tarball) ----------------------------------

_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TAR = "cifar-10-python.tar.gz"
_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_BATCHES = [*_CIFAR_TRAIN, "test_batch"]


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a data file must not run code."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how Python 3's protocol 2 stores bytes
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _parse_cifar_batch(where: str, blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 32, 32) uint8 images and (N,) labels from one pickled CIFAR-10 batch."""
    import numpy as np

    try:
        batch = _ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as err:  # garbage input can fail inside unpickling in almost any way
        raise DataError(f"{where}: not a readable CIFAR-10 batch pickle ({err})") from err
    if not isinstance(batch, dict) or not {b"data", b"labels"} <= batch.keys():
        raise DataError(f"{where}: not a CIFAR-10 batch (needs a dict with b'data' and b'labels')")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{where}: data is {data.dtype} of shape {data.shape}, expected uint8 (N, 3072)"
        )
    if labels.shape != (len(data),):
        raise DataError(f"{where}: {len(data)} images but labels of shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_blobs(source: Path) -> Iterator[tuple[str, bytes]]:
    """(where, bytes) of each batch in ``_CIFAR_BATCHES`` order, from a folder or the tarball."""
    if source.is_dir():
        for name in _CIFAR_BATCHES:
            yield str(source / name), _read(source / name)
        return
    try:
        with tarfile.open(source, "r:gz") as tar:
            for name in _CIFAR_BATCHES:
                member = f"{_CIFAR_DIR}/{name}"
                try:
                    stream = tar.extractfile(member)
                except KeyError:
                    stream = None
                if stream is None:
                    raise DataError(f"{source}: no file {member} in the archive")
                yield f"{source}:{member}", stream.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"{source}: cannot be read, truncated or corrupt ({err}); delete it and fetch it again"
        ) from err


@DATASETS.register("cifar10")
def _load_cifar10(data_dir: Path | None, download: bool) -> Dataset:
    """CIFAR-10: 50000 train and 10000 test 3x32x32 images, 10 classes, pixels 0..255."""
    import numpy as np

    root = data_root(data_dir)
    bases = [root, root / "raw", root / "CIFAR10"]
    searched = [folder for base in bases for folder in (base, base / _CIFAR_DIR)]
    # An extracted folder is read before a tarball: it skips decompression.
    candidates = [f for f in searched if all((f / n).is_file() for n in _CIFAR_BATCHES)]
    candidates += [base / _CIFAR_TAR for base in bases if (base / _CIFAR_TAR).is_file()]
    if candidates:
        source = candidates[0]
    elif download:
        _download("cifar10", _CIFAR_TAR, root)
        source = root / _CIFAR_TAR
    else:
        expected = [_CIFAR_TAR, f"{_CIFAR_DIR}/ with {', '.join(_CIFAR_BATCHES)}"]
        raise _not_found("cifar10", expected, searched, root)
    batches = [_parse_cifar_batch(where, blob) for where, blob in _cifar_blobs(source)]
    train_x, train_y = (np.concatenate(parts) for parts in zip(*batches[:-1], strict=True))
    return _to_dataset(DATASET_INFO["cifar10"], source, (train_x, train_y), batches[-1], scale=255)
