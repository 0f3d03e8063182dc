"""Write a root filesystem as a one-layer OCI image archive, reproducibly.

OCI Image Format Specification v1.1: image layout (``oci-layout``,
``index.json``, ``blobs/sha256/``), image manifest, image config. The layer is a
gzip-compressed tar with entries sorted by path, numeric owners only, times
clamped to SOURCE_DATE_EPOCH and no gzip timestamp, so the same root filesystem
gives the same digest.

The image config carries Docker's ``Healthcheck`` field too: the OCI config has
none, and Docker and BuildKit read that extension from OCI configs; tools that
do not know it ignore it.
"""

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

# mount points whose contents belong to the host, never to the image
EMPTY_DIRS = ("dev", "proc", "sys")


@dataclass(frozen=True, slots=True)
class Blob:
    """Content-addressed bytes of the layout."""

    digest: str
    data: bytes

    @property
    def descriptor(self) -> dict[str, Any]:
        return {"digest": self.digest, "size": len(self.data)}


def canonical_json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def blob(data: bytes) -> Blob:
    return Blob("sha256:" + hashlib.sha256(data).hexdigest(), data)


def walk(root: Path) -> Iterator[Path]:
    """Every path below ``root`` in sorted order, parents first."""
    with os.scandir(root) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        path = Path(entry.path)
        yield path
        if entry.is_dir(follow_symlinks=False):
            if path.parent == root and entry.name in EMPTY_DIRS:
                continue
            yield from walk(path)


def write_layer_tar(root: Path, out: io.BufferedWriter, epoch: int) -> None:
    """The root filesystem as an uncompressed, normalised tar stream."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in walk(root):
            name = path.relative_to(root).as_posix()
            info = tar.gettarinfo(str(path), arcname=name)
            if info is None or info.ischr() or info.isblk() or info.isfifo():
                raise ValueError(f"/{name}: special files do not belong in a layer")
            info.uname = info.gname = ""
            info.mtime = min(int(info.mtime), epoch)
            if info.isreg():
                with path.open("rb") as file:
                    tar.addfile(info, file)
            else:
                tar.addfile(info)


def layer_blobs(root: Path, epoch: int, workdir: Path) -> tuple[str, Blob]:
    """(diff_id, compressed layer blob) of ``root``."""
    raw = workdir / "layer.tar"
    with raw.open("wb") as out:
        write_layer_tar(root, out, epoch)
    diff = hashlib.sha256()
    packed = io.BytesIO()
    with raw.open("rb") as src:
        with gzip.GzipFile(
            filename="", mode="wb", fileobj=packed, compresslevel=6, mtime=0
        ) as gz:
            for block in iter(lambda: src.read(1 << 20), b""):
                diff.update(block)
                gz.write(block)
    raw.unlink()
    return "sha256:" + diff.hexdigest(), blob(packed.getvalue())


def image_blobs(
    root: Path,
    *,
    config: Mapping[str, Any],
    annotations: Mapping[str, str],
    created: str,
    epoch: int,
    workdir: Path,
) -> tuple[Blob, list[Blob]]:
    """The manifest and every blob it names (config first, then the layer)."""
    diff_id, layer = layer_blobs(root, epoch, workdir)
    image_config = blob(
        canonical_json(
            {
                "architecture": "amd64",
                "os": "linux",
                "created": created,
                "config": dict(config),
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "history": [
                    {"created": created, "created_by": "deploy/image/build.py"}
                ],
            }
        )
    )
    manifest = blob(
        canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_MANIFEST,
                "config": {"mediaType": MEDIA_CONFIG, **image_config.descriptor},
                "layers": [{"mediaType": MEDIA_LAYER, **layer.descriptor}],
                "annotations": dict(annotations),
            }
        )
    )
    return manifest, [image_config, layer]


def add_member(tar: tarfile.TarFile, name: str, data: bytes | None, epoch: int) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = epoch
    if data is None:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
        return
    info.mode = 0o644
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_archive(
    root: Path,
    out: Path,
    *,
    config: Mapping[str, Any],
    annotations: Mapping[str, str],
    ref_name: str,
    created: str,
    epoch: int,
) -> str:
    """Write the OCI archive of ``root`` to ``out``; return the manifest digest."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        manifest, blobs = image_blobs(
            root,
            config=config,
            annotations=annotations,
            created=created,
            epoch=epoch,
            workdir=Path(tmp),
        )
        index = {
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [
                {
                    "mediaType": MEDIA_MANIFEST,
                    **manifest.descriptor,
                    "annotations": {"org.opencontainers.image.ref.name": ref_name},
                }
            ],
        }
        partial = Path(tmp) / out.name
        with tarfile.open(partial, mode="w", format=tarfile.PAX_FORMAT) as tar:
            add_member(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}', epoch)
            add_member(tar, "index.json", canonical_json(index), epoch)
            add_member(tar, "blobs", None, epoch)
            add_member(tar, "blobs/sha256", None, epoch)
            for item in sorted([manifest, *blobs], key=lambda b: b.digest):
                name = "blobs/sha256/" + item.digest.removeprefix("sha256:")
                add_member(tar, name, item.data, epoch)
        shutil.move(partial, out)
    return manifest.digest
