"""File systems that fail on purpose, for the storage-fault tests: a full disk (``ENOSPC``) or an I/O
error (``EIO``) in the middle of one file, or when one file is renamed into place.

``faulty://`` is the local file system and ``faults3://`` is S3 (s3fs, pointed at a moto server by the
usual ``AWS_*`` environment), both with the faults of :data:`FAULTS` injected: a write of a file whose
path matches a fault's pattern stores the first ``after`` bytes, then raises; creating such a file or
renaming onto it raises before anything is written or moved. Everything else is the real file system.
Both are registered with fsspec (which ``ObjectStoragePath`` uses for listings and renames) and
attached to Airflow's ``ObjectStoragePath`` (which opens files through its own store registry), so a
root such as
``ObjectStoragePath("faulty:///tmp/out")`` goes through the same code as a DAG run's.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


@dataclass
class Fault:
    pattern: str  # regular expression searched in the file's path (temporaries: ".{name}.*.tmp")
    after: int = 0  # bytes written before the write fails
    code: int = errno.ENOSPC
    on: str = "write"  # "write"; "create": opening it for writing fails; "rename": a rename onto it fails
    fired: int = 0

    def matches(self, path: str, on: str) -> bool:
        return self.on == on and re.search(self.pattern, path) is not None

    def error(self) -> OSError:
        self.fired += 1
        return OSError(self.code, os.strerror(self.code))


FAULTS: list[Fault] = []


@contextmanager
def injected(*faults: Fault) -> Iterator[list[Fault]]:
    """The faults are active inside the block only."""
    FAULTS.extend(faults)
    try:
        yield list(faults)
    finally:
        for fault in faults:
            FAULTS.remove(fault)


class FailingFile:
    """A file opened for writing that fails once ``fault.after`` bytes are written."""

    def __init__(self, inner: Any, fault: Fault) -> None:
        self.inner = inner
        self.fault = fault
        self.written = 0

    def write(self, data: bytes | str) -> int:
        room = self.fault.after - self.written
        if len(data) > room:
            if room > 0:
                self.inner.write(data[:room])
                self.written += room
            raise self.fault.error()
        self.written += len(data)
        return int(self.inner.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __enter__(self) -> FailingFile:
        return self

    def __exit__(self, *exc: object) -> Any:
        return self.inner.__exit__(*exc)


class _Faulty:
    """Mixin: the faults of :data:`FAULTS` on top of a real fsspec file system."""

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        writing = any(flag in mode for flag in "wxa")
        for fault in FAULTS:
            if writing and fault.matches(str(path), "create"):
                raise fault.error()
        handle = super().open(path, mode, **kwargs)  # type: ignore[misc]
        if writing:
            for fault in FAULTS:
                if fault.matches(str(path), "write"):
                    return FailingFile(handle, fault)
        return handle

    def mv(self, path1: str, path2: str, **kwargs: Any) -> Any:
        for fault in FAULTS:
            if fault.matches(str(path2), "rename"):
                raise fault.error()
        return super().mv(path1, path2, **kwargs)  # type: ignore[misc]


class FaultyLocalFileSystem(_Faulty, LocalFileSystem):
    protocol = ("faulty",)


def register() -> None:
    """Make ``faulty://`` (and ``faults3://`` when s3fs is installed) known to fsspec and Airflow."""
    from airflow.sdk.io import attach

    fsspec.register_implementation("faulty", FaultyLocalFileSystem, clobber=True)
    attach("faulty", fs=fsspec.filesystem("faulty"))
    try:
        from s3fs import S3FileSystem
    except ImportError:
        return

    class FaultyS3FileSystem(_Faulty, S3FileSystem):  # type: ignore[misc]
        protocol = ("faults3",)

    fsspec.register_implementation("faults3", FaultyS3FileSystem, clobber=True)


def attach_s3() -> None:
    """Attach ``faults3://`` to Airflow once the ``AWS_*`` environment points at a test server; again
    for each server: file systems made for an earlier one (fsspec's and Airflow's caches) are dropped."""
    from airflow.sdk.io import attach

    fsspec.get_filesystem_class("faults3").clear_instance_cache()
    fs = fsspec.filesystem("faults3")
    attach("faults3", fs=fs).fs = fs  # attach() hands back a store made earlier: point it here
