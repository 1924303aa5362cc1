"""Where the public datasets come from: pinned URLs and SHA-256 checksums, and nothing else.

HER2ST (Andersson et al., *Nat. Commun.* 12, 6012, 2021) is read from the authors' repository
``almaan/her2st`` at one pinned commit. Each section ``S`` needs three files, stored in the cache under the
names below (the cache names are hyperst's; the URLs are upstream's):

====================================  =====================================================================
cache name                            upstream path under ``data/``
====================================  =====================================================================
``ST-cnts/<S>.tsv.gz``                ``ST-cnts/<S>.tsv.gz`` (spots x genes counts)
``ST-spotfiles/<S>_selection.tsv``    ``ST-spotfiles/<S>_selection.tsv`` (spot array and pixel positions)
``ST-imgs/<S>.jpg``                   ``ST-imgs/<P>/<S>/<original name>.jpg`` (H&E, ``P`` = patient)
====================================  =====================================================================

A file is only ever downloaded against a known checksum. Checksums are pinned for the sections whose bytes
hyperst's maintainers could verify; the others are listed (with their upstream image names) but refused
until their checksums are added to :data:`HER2ST_SHA256`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "HER2ST_BASE_URL",
    "HER2ST_COMMIT",
    "HER2ST_IMAGE_NAMES",
    "HER2ST_SHA256",
    "her2st_files",
    "her2st_registry",
    "her2st_url",
    "download_failed",
    "her2st_verified_sections",
]

#: Commit of https://github.com/almaan/her2st that every URL points to (2022-11-26, HEAD).
HER2ST_COMMIT = "85df7411b987a7dec3feff9718b869a7a82091ec"
HER2ST_BASE_URL = f"https://raw.githubusercontent.com/almaan/her2st/{HER2ST_COMMIT}/data/"

#: Upstream file name of each section's H&E JPEG, in ``data/ST-imgs/<patient>/<section>/`` (36 sections).
HER2ST_IMAGE_NAMES: dict[str, str] = {
    "A1": "9769_C1_HE_small.jpg",
    "A2": "9769_C2_HE_small.jpg",
    "A3": "9769_D1_HE_small.jpg",
    "A4": "9769_D2_HE_small.jpg",
    "A5": "9769_E1_HE_small.jpg",
    "A6": "9769_E2_HE_small.jpg",
    "B1": "BT10737_C1_HE.jpg",
    "B2": "BT10737_C2_HE.jpg",
    "B3": "BT10737_D1_HE.jpg",
    "B4": "BT10737_D2_HE.jpg",
    "B5": "BT10737_E1_HE.jpg",
    "B6": "BT10737_E2_HE.jpg",
    "C1": "5714_HE_BT_C1.jpg",
    "C2": "5714_HE_BT_C2.jpg",
    "C3": "5714_HE_BT_D1.jpg",
    "C4": "5714_HE_BT_D2.jpg",
    "C5": "5714_HE_BT_E1.jpg",
    "C6": "5714_HE_BT_E2.jpg",
    "D1": "10426_HE_BT_C1.jpg",
    "D2": "10426_HE_BT_C2.jpg",
    "D3": "10426_HE_BT_D1.jpg",
    "D4": "10426_HE_BT_D2.jpg",
    "D5": "10426_HE_BT_E1.jpg",
    "D6": "10426_HE_BT_E2.jpg",
    "E1": "HE_BT23567_D2.jpg",
    "E2": "HE_BT23567_E1.jpg",
    "E3": "HE_BT23567_E2.jpg",
    "F1": "HE_BT23810_D2.jpg",
    "F2": "HE_BT23810_E1.jpg",
    "F3": "HE_BT23810_E2.jpg",
    "G1": "HE_BT23903_C1a.jpg",
    "G2": "HE_BT23903_C2a.jpg",
    "G3": "HE_BT23903_D1a.jpg",
    "H1": "HE_BT24044_D2.jpg",
    "H2": "HE_BT24044_E1.jpg",
    "H3": "HE_BT24044_E2.jpg",
}

#: SHA-256 of every file hyperst may download, by cache name. The files were checked byte for byte against
#: the upstream repository at :data:`HER2ST_COMMIT`.
HER2ST_SHA256: dict[str, str] = {
    "ST-cnts/B4.tsv.gz": "e38231c2a38c9bc7e6d550eec0e527c1869ee0e525fc913e708d1323c34f5ebb",
    "ST-cnts/C2.tsv.gz": "c1c59ea6cffae36b9ecb561b8e2a97e3aa5f4085f748e991a0e330ed9d09773d",
    "ST-cnts/C3.tsv.gz": "e00c55a3eb9caac5d9c71b8906aae8be8b38f93e23938f4a0ebee17683ef6a2a",
    "ST-cnts/C4.tsv.gz": "33201f76d41d7131dc600a0f87d9a70383af3503e81698b4d11e6f2e8d73e9da",
    "ST-cnts/C5.tsv.gz": "c0f310315ca6110d74dbdf7011e5b42432ba0b8eb5f001824764911988f39338",
    "ST-cnts/C6.tsv.gz": "60478b0d2411501866685f41312c65c6591e499d64d5b719be8ee9bab25c9bc8",
    "ST-spotfiles/B4_selection.tsv": "192b46f3ca414c85753a01a4fb5760a697ca6c0a1aadb949c4687cc6efa9faa0",
    "ST-spotfiles/C2_selection.tsv": "235b5f4306b3b57c628ffc82c98c7109602474fbcc79a917b9c50517f99b6b1c",
    "ST-spotfiles/C3_selection.tsv": "7fd76c13370b7804ac3bb377b846d22485cf9223f9dd8dfc25be06e5aaf65755",
    "ST-spotfiles/C4_selection.tsv": "47e79f3b9dbfa3a8c18af9e948ba7ba4bf0a75ea1b4c292bc714ced7d0917d4c",
    "ST-spotfiles/C5_selection.tsv": "2114cc3b4da759772112897f1e247d5443c9f8c808e6a9a952eb4fda379a194c",
    "ST-spotfiles/C6_selection.tsv": "efdbbc6759c6af43baa966505c31705f09c087c1dccf1ea3e0d1db7b55717117",
    "ST-imgs/B4.jpg": "3cb165614ce2a13426381e450220dccac980cc9bda6a90fb041c28ca0e2c753d",
    "ST-imgs/C2.jpg": "26e2f73ae840cdd46c5bba405aae181f13a56a376b9848dff23f7a9c5de7f19e",
    "ST-imgs/C3.jpg": "0005a92674014d473040a28f0afca89ce5fa5c44019b479b638ceb3272ceb568",
    "ST-imgs/C4.jpg": "f40607eb1d5f0d125decd71c48b0c5d29cf6776ad92297fd185631208c82d6f2",
    "ST-imgs/C5.jpg": "34028ea41e376396b50c42b0a11a7e689c85be4a8022e668d0a09cc128c04c65",
    "ST-imgs/C6.jpg": "dddd87232589648861a9b6776dc1749be8306213f6589aeef0e805fb2b1ee263",
}


def her2st_files(section: str) -> dict[str, str]:
    """Cache names of a section's ``"counts"``, ``"spots"`` and ``"image"`` files."""
    return {
        "counts": f"ST-cnts/{section}.tsv.gz",
        "spots": f"ST-spotfiles/{section}_selection.tsv",
        "image": f"ST-imgs/{section}.jpg",
    }


def her2st_url(fname: str) -> str:
    """Upstream URL, at :data:`HER2ST_COMMIT`, of the file stored in the cache as ``fname``."""
    folder, name = fname.split("/", 1)
    if folder == "ST-imgs":
        section = name.removesuffix(".jpg")
        return f"{HER2ST_BASE_URL}ST-imgs/{section[0]}/{section}/{HER2ST_IMAGE_NAMES[section]}"
    return f"{HER2ST_BASE_URL}{fname}"


def her2st_verified_sections() -> list[str]:
    """Sections whose three files all have a pinned checksum, sorted."""
    return sorted(s for s in HER2ST_IMAGE_NAMES if all(f in HER2ST_SHA256 for f in her2st_files(s).values()))


def her2st_registry() -> tuple[dict[str, str], dict[str, str]]:
    """Build the pooch ``registry`` (cache name to ``"sha256:<hex>"``) and ``urls`` (cache name to URL)."""
    registry = {fname: f"sha256:{digest}" for fname, digest in HER2ST_SHA256.items()}
    urls = {fname: her2st_url(fname) for fname in HER2ST_SHA256}
    return registry, urls


def download_failed(err: Exception, *, dataset: str, fname: str, cache: Path, files: Iterable[str]) -> OSError:
    """Build the ``ConnectionError`` of a failed download: where the cache is and what makes it work offline."""
    wanted = ", ".join(f"`{f}`" for f in files)
    msg = (
        f"Could not download `{fname}` of {dataset} ({type(err).__name__}: {err}). The files are read from the "
        f"cache `{cache}`: to work offline, place {wanted} there (laid out as named; they are checked against their "
        "pinned SHA-256), pass `cache_dir=` naming a folder that holds them, or set `HYPERST_DATA_DIR`."
    )
    return ConnectionError(msg)
